"""FLYT's own objective on held-out downstream examples: the validation split and the validation gain.

**The split.** With ``validation_fraction`` f > 0 the downstream set is split by a hash of each
sample's shard file name and key (:func:`is_validation`): stable across runs, machines, seeds,
worker counts and shard order, and independent of the data. The held-out share is never trained on
(the training stream skips it before decoding); up to ``validation_size`` of its examples form the
validation set.

**The objective.** FLYT trains the scoring model to lower the downstream loss after one reference
step on the batch it weights. On held-out examples V, for a reference state theta (with its Adam
state) and K fixed upstream probe batches b (drawn once, by their own seed, from the pool's stream),

    J(w; theta) = mean_b  L_V( AdamW(theta, grad_theta L_up(theta; b, w_b)) )

with L_V a downstream loss on V (``validation_loss``: by default the loss of the model's own zero-shot
classifier, :class:`ZeroShotLoss`, so that runs with different training losses meet one objective; or
the run's own), over R fixed draws of the class prompts, and the step's learning rate the base
``reference_lr``. The *validation gain* of a scoring model is
``J(uniform) - J(softmax of its scores)``: how much more one reference step on its weighting lowers
the held-out loss than a step on the unweighted batch. Positive means the scores help; the per-probe
differences give its standard error. The trainer judges every checkpoint at one fixed theta, the
reference's state at the start of FLYT, so that the gains of different checkpoints compare (at the
reference's current state the gain shrinks as the reference learns, whatever the scores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import FlytInputError
from ..tars import iter_tar, list_shards, where
from .adamw import AdamState, AdamWConfig, adamw_step
from .bilevel import LOGIT_SCALE, encode_images, encode_pairs, encode_texts
from .decode import decode_images
from .losses import DownstreamLoss, weighted_clip_loss

_HASH_SCALE = float(2**64)


def is_validation(url: str, key: str, fraction: float) -> bool:
    """Whether a downstream sample (its shard ``url`` and ``key``) is in the held-out share
    ``fraction``: decided by a hash of the shard's file name and the key alone."""
    if fraction <= 0:
        return False
    name = f"{os.path.basename(str(url).rstrip('/'))}/{key}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "little") / _HASH_SCALE < fraction


@dataclasses.dataclass
class ValidationSet:
    """The held-out downstream examples, the fixed probe batches and the fixed prompt draws."""

    images: Tensor  # (n, 3, H, W)
    labels: Tensor  # (n,)
    prompts: list[Tensor]  # R token tensors, each (num_classes, context)
    probes: list[dict[str, Any]]  # K upstream batches: images, texts, features, pool positions (moved when used)

    @property
    def size(self) -> int:
        return int(self.labels.shape[0])


def load_heldout(downstream_dir: str, fraction: float, *, transform: Callable, num_classes: int,
                 limit: int) -> tuple[Tensor, Tensor]:
    """The held-out downstream examples (at most ``limit``, in shard and key order): images, labels."""
    data, labels, wheres = [], [], []
    for url in list_shards(downstream_dir):
        for s in iter_tar(url, extensions=("jpg", "cls")):
            if "jpg" not in s or "cls" not in s or not is_validation(url, s["__key__"], fraction):
                continue
            try:
                label = int(s["cls"].decode("utf-8").strip())
            except (UnicodeDecodeError, ValueError):
                raise FlytInputError(f"label of {where(s)} is not an integer: {s['cls'][:40]!r}") from None
            if not 0 <= label < num_classes:
                raise FlytInputError(f"label of {where(s)} is {label}, out of range for {num_classes} classes")
            data.append(s["jpg"])
            labels.append(label)
            wheres.append(where(s))
            if len(labels) >= limit:
                break
        if len(labels) >= limit:
            break
    if not labels:
        raise FlytInputError(f"the validation split of {downstream_dir} is empty: no sample falls in its held-out "
                             f"share {fraction:g}; raise `validation_fraction`", params=["validation_fraction"])
    return decode_images(data, transform, wheres), torch.tensor(labels, dtype=torch.long)


class ZeroShotLoss(DownstreamLoss):
    """The loss of the model's own zero-shot classifier: cross entropy of its logits, the model's
    temperature (``logit_scale``) times the cosine of image and class prompt. What the held-out
    examples are judged by, whatever loss a run trains with (``validation_loss`` zero_shot): runs that
    train with different downstream losses then meet one objective."""

    name = "zero_shot"

    def forward(self, image_features, labels, class_features, logit_scale):
        return F.cross_entropy(logit_scale * F.normalize(image_features.float(), dim=-1)
                               @ F.normalize(class_features.float(), dim=-1).T, labels)


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def reference_step(model: nn.Module, theta: Mapping[str, Tensor], adam: AdamState, cfg: AdamWConfig,
                   images: Tensor, texts: Tensor, weights: Tensor, *, micro_batch_size: int | None = None) -> dict:
    """theta_plus = AdamW(theta, grad_theta L_up(theta; batch, weights)), no graph kept (micro-batched
    like the bilevel step: embeddings first, then a re-forward with the embedding gradients)."""
    chunks = _chunks(images.shape[0], micro_batch_size)
    with torch.no_grad():
        parts = [encode_pairs(model, theta, images[c], texts[c]) for c in chunks]
    e_img = torch.cat([p[0] for p in parts]).requires_grad_(True)
    e_txt = torch.cat([p[1] for p in parts]).requires_grad_(True)
    log_tau = theta[LOGIT_SCALE].detach().clone().requires_grad_(True)
    up = weighted_clip_loss(e_img, e_txt, log_tau.exp(), weights.detach())
    g_img, g_txt, g_tau = torch.autograd.grad(up, [e_img, e_txt, log_tau])
    grads = {k: torch.zeros_like(v) for k, v in theta.items()}
    for c in chunks:
        leaves = {k: v.detach().requires_grad_(True) for k, v in theta.items()}
        img, txt = encode_pairs(model, leaves, images[c], texts[c])
        got = torch.autograd.grad((img, txt), list(leaves.values()), (g_img[c].to(img.dtype), g_txt[c].to(txt.dtype)),
                                  allow_unused=True)
        for (k, _), gr in zip(leaves.items(), got):
            if gr is not None:
                grads[k] = grads[k] + gr
    grads[LOGIT_SCALE] = grads[LOGIT_SCALE] + g_tau
    with torch.no_grad():
        return adamw_step(theta, grads, adam, cfg)[0]


@torch.no_grad()
def heldout_loss(model: nn.Module, theta: Mapping[str, Tensor], loss: DownstreamLoss, data: ValidationSet, *,
                 micro_batch_size: int | None = None) -> float:
    """L_V at ``theta``: the downstream loss on the held-out examples, averaged over the prompt draws."""
    img = torch.cat([encode_images(model, theta, data.images[c]) for c in _chunks(data.size, micro_batch_size)])
    scale = theta[LOGIT_SCALE].exp()
    values = [float(loss(img, data.labels, encode_texts(model, theta, tokens), scale)) for tokens in data.prompts]
    return math.fsum(values) / len(values)


def validation_gain(model: nn.Module, theta: Mapping[str, Tensor], adam: AdamState, cfg: AdamWConfig,
                    loss: DownstreamLoss, data: ValidationSet, probe_scores: Sequence[Tensor], *,
                    micro_batch_size: int | None = None) -> dict[str, float]:
    """``val_loss`` J(weights; theta), ``val_uniform`` J(uniform; theta), ``val_gain`` their difference
    and ``val_gain_se`` its standard error over the probe batches (``probe_scores``: the scoring
    model's scores of each probe batch)."""
    weighted, uniform = [], []
    device = theta[LOGIT_SCALE].device
    for probe, scores in zip(data.probes, probe_scores):
        images, texts = probe["images"].to(device), probe["texts"].to(device)
        n = images.shape[0]
        for w, out in ((torch.softmax(scores.detach().double(), 0), weighted),
                       (torch.full((n,), 1.0 / n, dtype=torch.float64, device=images.device), uniform)):
            theta_plus = reference_step(model, theta, adam, cfg, images, texts, w, micro_batch_size=micro_batch_size)
            out.append(heldout_loss(model, theta_plus, loss, data, micro_batch_size=micro_batch_size))
    diff = np.asarray(uniform) - np.asarray(weighted)
    se = float(diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else float("nan")
    return {"val_loss": float(np.mean(weighted)), "val_uniform": float(np.mean(uniform)),
            "val_gain": float(diff.mean()), "val_gain_se": se}
