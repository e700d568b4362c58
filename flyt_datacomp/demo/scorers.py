"""The two small scorer CLIPs of the demo pool and the embeddings/scores they produce.

DataComp ships OpenAI's CLIP ViT-B/32 and ViT-L/14 embeddings and similarity scores with its pool.
The demo pool imitates them with two tiny open_clip models trained from scratch for a few seconds:
``b32`` (the smaller one: embed 64, ResNet width 16) and ``l14`` (embed 96, ResNet width 24, text
width 96; on seed 0 a bit better, not on every seed).

They are trained on clean (image, caption) pairs rendered from the *downstream-train* digits, a
split disjoint from the pool-source digits (which fill the pool) and from the test digits (which
score the result). Like OpenAI's CLIP on DataComp, they never saw the pool itself, and their
scores are informative but imperfect: the default 50 steps each stop them early on purpose (on the
default 20,000 pool, seed 0, AUC of correct vs wrong+clutter: b32 0.75, l14 0.79; trained to
convergence both exceed 0.98 and the scores would leave a filter nothing to learn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..clip_models import create_clip, named_tiny_configs, tiny_clip_config, tokenizer
from .digits import CANVAS, CAPTION_TEMPLATES, DigitBank, all_captions, caption_index, draw_placement, render_digits

# Pixel normalisation of the scorers: black stays 0, so the (mostly black) background carries no
# signal and the digits dominate a fresh model's features.
PIXEL_MEAN = named_tiny_configs()["tiny-resnet"]["image_mean"]
PIXEL_STD = named_tiny_configs()["tiny-resnet"]["image_std"]


@dataclass(frozen=True)
class ScorerSpec:
    """One scorer: its name (``b32``/``l14``), model config and the offset of its seed."""

    name: str
    config: dict[str, Any]
    seed_offset: int


# Small ModifiedResNet image towers: a tiny ViT (patch 8) learns these digits slowly and its
# contrastive training sits at the uniform solution (loss ln 256) for hundreds of steps; a conv
# tower learns them in a few dozen steps. "b32" is the smaller model, "l14" the wider one.
B32_CONFIG = named_tiny_configs()["tiny-resnet"]
L14_CONFIG = tiny_clip_config(
    embed_dim=96,
    vision_cfg={"layers": [1, 1, 1, 1], "width": 24, "head_width": 32},
    text_cfg={"width": 96, "heads": 3, "layers": 2},
    image_mean=PIXEL_MEAN, image_std=PIXEL_STD,
)
SCORERS = (ScorerSpec("b32", B32_CONFIG, 101), ScorerSpec("l14", L14_CONFIG, 202))


def to_tensor(grey: np.ndarray) -> torch.Tensor:
    """Grey canvases (n, 32, 32) in [0, 1] (float) or [0, 255] (uint8) to normalised RGB tensors."""
    x = torch.from_numpy(np.ascontiguousarray(grey)).float()
    if grey.dtype == np.uint8:
        x = x / 255.0
    x = x.unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr(step: int, steps: int, lr: float, warmup_frac: float = 0.1) -> float:
    warmup = max(1, int(round(steps * warmup_frac)))
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train_scorer(config: dict[str, Any], bank: DigitBank, *, steps: int, seed: int, **training: Any):
    """Train a CLIP from scratch on fresh clean renders of ``bank`` for ``steps`` steps (the v3 scorers).

    Each step draws a batch of digits of the bank at random sizes/positions/intensities with a
    random caption template naming the true digit; :func:`train_clip` trains, with ``training``'s
    keywords.
    """

    def draw(rng: np.random.Generator, n: int):
        which = rng.integers(0, len(bank), size=n)
        images = render_digits(bank, which, draw_placement(rng, n))
        template = rng.integers(0, len(CAPTION_TEMPLATES), size=n)
        labels = bank.labels[which]
        return images, caption_index(labels, template), labels

    return train_clip(config, all_captions(), draw, steps=steps, seed=seed, **training)


def train_mixed_scorer(config: dict[str, Any], renderer, *, steps: int, seed: int, **training: Any):
    """Train a CLIP from scratch on fresh clean renders of every domain (the v4 scorers).

    Each step draws a batch of examples, each of a domain chosen uniformly among
    :data:`~flyt_datacomp.demo.domains.DOMAINS` (digits from ``renderer``'s bank: the
    downstream-train scans, never the pool's), captioned with a random template of its domain
    naming what it shows: a broad, clean, task-agnostic mix, as DataComp's scorer CLIPs were trained
    on the web. Training as :func:`train_clip`, which takes ``training``'s keywords.
    """
    from .domains import DOMAINS, caption_table, caption_templates

    table = caption_table()

    def draw(rng: np.random.Generator, n: int):
        which = rng.integers(0, len(DOMAINS), size=n)
        images = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
        ids = np.zeros(n, dtype=np.int64)
        keys = np.zeros(n, dtype=np.int64)
        for d, domain in enumerate(DOMAINS):
            idx = np.flatnonzero(which == d)
            if len(idx) == 0:
                continue
            imgs, labels, _ = renderer.draw(rng, domain, len(idx))
            template = rng.integers(0, len(caption_templates(domain)), size=len(idx))
            images[idx] = imgs
            ids[idx] = table.index(domain, labels, template)
            keys[idx] = 1000 * d + labels
        return images, ids, keys

    return train_clip(config, list(table.captions), draw, steps=steps, seed=seed, **training)


def train_clip(
    config: dict[str, Any],
    captions: Sequence[str],
    draw,
    *,
    steps: int,
    seed: int,
    batch_size: int = 256,
    lr: float = 2e-3,
    weight_decay: float = 0.1,
    progress: bool = False,
    desc: str = "scorer",
    soft_targets: bool = False,
):
    """Train a CLIP from scratch for ``steps`` steps on batches ``draw(rng, batch_size)`` returns:
    (grey canvases (n, 32, 32) in [0, 1], indices into ``captions``, class keys).

    Standard symmetric CLIP loss with a learned temperature (``soft_targets`` instead spreads each
    target over the batch's pairs of the same class key); AdamW (betas 0.9/0.98, eps 1e-6, weight
    decay on >=2-dim weights only) with 10% linear warmup then cosine decay. Returns the model in
    eval mode.
    """
    from ..progress import progress_bar

    rng = np.random.default_rng(seed)
    model = create_clip(config, seed=seed)
    model.train()
    tokens = tokenizer(config)(list(captions))
    # Only a few dozen of the 49,408 BPE tokens ever occur: train a compact copy of their rows
    # (dense gradients and AdamW over the full table would cost most of each step) and write
    # them back afterwards. The remapping keeps the order of token ids, so the end-of-text
    # token stays the largest id, as open_clip's argmax pooling needs.
    full_embedding = model.token_embedding
    used = torch.unique(tokens)
    remap = torch.zeros(int(full_embedding.num_embeddings), dtype=torch.long)
    remap[used] = torch.arange(len(used))
    compact = torch.nn.Embedding(len(used), full_embedding.embedding_dim)
    with torch.no_grad():
        compact.weight.copy_(full_embedding.weight[used])
    model.token_embedding = compact
    tokens = remap[tokens]
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.98), eps=1e-6,
    )
    labels = torch.arange(batch_size)
    bar = progress_bar(range(steps), desc=f"demo: train {desc}", disable=not progress, leave=False)
    for step in bar:
        canvases, caption_ids, keys = draw(rng, batch_size)
        images = to_tensor(canvases)
        text = tokens[torch.from_numpy(np.asarray(caption_ids))]
        for group in opt.param_groups:
            group["lr"] = _lr(step, steps, lr)
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(text, normalize=True)
        logits = model.logit_scale.exp() * img @ txt.T
        if soft_targets:
            key = torch.from_numpy(np.asarray(keys))
            same = (key[:, None] == key[None, :]).float()
            target = same / same.sum(1, keepdim=True)
            loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        else:
            loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 10 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{float(loss.item()):.3f}")
    with torch.no_grad():
        full_embedding.weight[used] = compact.weight
    model.token_embedding = full_embedding
    model.eval()
    return model


@torch.no_grad()
def embed_images(model, images: np.ndarray, batch_size: int = 1000) -> np.ndarray:
    """L2-normalised float32 image embeddings of grey canvases (n, 32, 32)."""
    out = [
        model.encode_image(to_tensor(images[i : i + batch_size]), normalize=True)
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(out).numpy().astype(np.float32)


@torch.no_grad()
def embed_texts(model, config: dict[str, Any], texts: Sequence[str]) -> np.ndarray:
    """L2-normalised float32 text embeddings; each distinct text is encoded once."""
    unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
    tokens = tokenizer(config)(list(unique))
    emb = torch.cat([model.encode_text(tokens[i : i + 1000], normalize=True) for i in range(0, len(unique), 1000)])
    return emb.numpy().astype(np.float32)[inverse.reshape(-1)]


def zero_shot_accuracy(model, config: dict[str, Any], images: np.ndarray, labels: np.ndarray,
                       classnames: Sequence[str], templates: Sequence[str]) -> float:
    """Zero-shot top-1 accuracy (mean of the templates' class embeddings), for diagnostics."""
    img = torch.from_numpy(embed_images(model, images))
    cls = []
    for name in classnames:
        t = torch.from_numpy(embed_texts(model, config, [tpl.format(name) for tpl in templates])).mean(0)
        cls.append(t / t.norm())
    pred = (img @ torch.stack(cls).T).argmax(1).numpy()
    return float((pred == np.asarray(labels)).mean())
