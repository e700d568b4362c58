"""FLYT scoring models and their checkpoints.

* :class:`MixingModel` (M-FLYT): a linear score over k named input scores, each standardised
  with the pool's mean and std, which the model stores so that scoring the pool later applies
  exactly the same transform.
* :class:`GLUHead` (E-FLYT): an FFN-GLU over the concatenated, L2-normalised image and text
  embeddings of a frozen CLIP (or the pool's npz embeddings).

A scoring-model checkpoint is a plain dict saved with ``torch.save``: ``kind``, ``config``,
``state_dict``, ``version`` and free-form ``meta``; :func:`load_scoring_model` rebuilds the model.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import __version__, torch_io
from ..errors import FlytInputError
from .features import FeatureSpec, iter_features


class MixingModel(nn.Module):
    """s = sum_k phi_k * (x_k - mean_k) / std_k  (a bias would cancel in the batch softmax)."""

    kind = "m-flyt"

    def __init__(self, input_names: Sequence[str], mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if not input_names:
            raise FlytInputError("an M-FLYT mixing model needs at least one input score")
        if len(set(input_names)) != len(input_names):
            raise FlytInputError(f"M-FLYT input names must be distinct, got {list(input_names)}")
        mean_t = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        std_t = torch.as_tensor(np.asarray(std, dtype=np.float64))
        if mean_t.shape != (len(input_names),) or std_t.shape != (len(input_names),):
            raise FlytInputError("M-FLYT mean/std must have one value per input")
        if not (torch.isfinite(mean_t).all() and torch.isfinite(std_t).all() and (std_t > 0).all()):
            bad = [n for n, s in zip(input_names, std_t.tolist()) if not (s > 0 and math.isfinite(s))]
            raise FlytInputError(f"M-FLYT inputs need a finite, positive std over the pool; bad: {bad}")
        self.input_names = list(input_names)
        self.register_buffer("mean", mean_t.float())
        self.register_buffer("std", std_t.float())
        self.weight = nn.Parameter(torch.zeros(len(input_names)))

    @classmethod
    def from_pool_features(cls, input_names: Sequence[str], features: np.ndarray) -> MixingModel:
        """Standardisation statistics computed over the whole pool's feature table (N x k)."""
        features = np.asarray(features, dtype=np.float64)
        return cls(input_names, features.mean(axis=0), features.std(axis=0))

    def config(self) -> dict[str, Any]:
        return {"input_names": self.input_names, "mean": self.mean.tolist(), "std": self.std.tolist()}

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != len(self.input_names):
            raise FlytInputError(
                f"M-FLYT model expects {len(self.input_names)} input scores {self.input_names}, got {x.shape[-1]}"
            )
        return self.standardize(x) @ self.weight.to(x.dtype)

    def mixing_weights(self) -> dict[str, float]:
        """``{input name: weight on the standardised input}`` (the paper's Table 2, left)."""
        return {n: float(w) for n, w in zip(self.input_names, self.weight.detach().cpu().tolist())}


class GLUHead(nn.Module):
    """E-FLYT scoring head: ``s = U (silu(W x) * (V x)) + b`` with x = [img/|img|, txt/|txt|].

    ``cosine_init=True`` starts close to the CLIP cosine similarity: the first ``dim`` hidden
    units gate on the image half and multiply the text half, so for small inputs
    ``silu(c*a)*b*2/c ~ a*b`` and the sum over units is <img, txt>; the other units start small.
    """

    kind = "e-flyt"

    def __init__(self, embed_dim: int, hidden_dim: int | None = None, *, cosine_init: bool = False, seed: int = 0):
        super().__init__()
        hidden_dim = hidden_dim or 2 * embed_dim
        if cosine_init and hidden_dim < embed_dim:
            raise FlytInputError(f"cosine_init needs hidden_dim >= embed_dim ({hidden_dim} < {embed_dim})")
        self.embed_dim, self.hidden_dim, self.cosine_init = embed_dim, hidden_dim, cosine_init
        gen = torch.Generator().manual_seed(seed)
        self.gate = nn.Linear(2 * embed_dim, hidden_dim, bias=False)
        self.value = nn.Linear(2 * embed_dim, hidden_dim, bias=False)
        self.out = nn.Linear(hidden_dim, 1)
        with torch.no_grad():
            for lin in (self.gate, self.value, self.out):
                bound = 1 / math.sqrt(lin.in_features)
                lin.weight.copy_(torch.empty_like(lin.weight).uniform_(-bound, bound, generator=gen))
            self.out.bias.zero_()
            if cosine_init:
                c = 0.5
                for lin in (self.gate, self.value, self.out):
                    lin.weight.mul_(1e-3)
                eye = torch.eye(embed_dim)
                self.gate.weight[:embed_dim, :embed_dim] = c * eye
                self.value.weight[:embed_dim, embed_dim:] = eye
                self.out.weight[0, :embed_dim] = 2.0 / c

    def config(self) -> dict[str, Any]:
        return {"embed_dim": self.embed_dim, "hidden_dim": self.hidden_dim, "cosine_init": self.cosine_init}

    def forward(self, image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> torch.Tensor:
        x = torch.cat([F.normalize(image_embeddings, dim=-1), F.normalize(text_embeddings, dim=-1)], dim=-1)
        x = x.to(self.gate.weight.dtype)
        return self.out(F.silu(self.gate(x)) * self.value(x)).squeeze(-1)


SCORING_MODELS = {MixingModel.kind: MixingModel, GLUHead.kind: GLUHead}


def score_features(model: nn.Module, features: torch.Tensor | tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """A scoring model's scores for features as :meth:`FeatureTable.gather` returns them."""
    return model(*features) if isinstance(features, tuple) else model(features)


@torch.no_grad()
def score_pool(pool, model: nn.Module, spec: FeatureSpec) -> np.ndarray:
    """Apply a scoring model to every pool example, one metadata shard at a time (float64 scores,
    pool order). The features come from :func:`~flyt_datacomp.flyt.features.iter_features`, the
    reader training used, so the model scores each example exactly as it saw it in training."""
    model.eval()
    parts = []
    for shard, table in iter_features(pool, spec, desc="scoring the pool"):
        if isinstance(model, GLUHead) and table.dim != model.embed_dim:
            raise FlytInputError(
                f"{spec.origin} expects {model.embed_dim}-dim embeddings but {spec.npz_keys[0]} in "
                f"{shard.npz} has {table.dim}"
            )
        parts.append(score_features(model, table.gather()).double().numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


# what each kind's config must hold to rebuild the model
_CONFIG_FIELDS = {MixingModel.kind: ("input_names", "mean", "std"), GLUHead.kind: ("embed_dim", "hidden_dim")}


def save_scoring_model(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any] | None = None) -> None:
    """Save a scoring model atomically as a self-describing checkpoint (plain values only)."""
    payload = {
        "kind": model.kind,
        "config": model.config(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "version": __version__,
        "meta": meta or {},
    }
    torch_io.save(payload, path)


def _check_tensors(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Every entry of a checkpoint's state dict is a dense tensor of real numbers (torch would load
    complex ones into the model's real weights with only a warning)."""
    for key, value in state.items():
        torch_io.real_tensor(value, f"scoring model checkpoint {path}: {key}")


def load_scoring_model(path: str | os.PathLike) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a scoring model from :func:`save_scoring_model`'s file; returns (model, meta)."""
    payload = torch_io.load(path, "scoring model checkpoint")
    kind = payload.get("kind") if isinstance(payload, dict) else None
    if kind not in SCORING_MODELS:
        raise FlytInputError(
            f"{path} is not a flyt-datacomp scoring model checkpoint: it has no 'kind' of "
            f"{' or '.join(SCORING_MODELS)} (found {kind!r}); scoring models are the scoring_model.pt "
            "files that `flyt-datacomp train` writes"
        )
    config, state = payload.get("config"), payload.get("state_dict")
    if not isinstance(config, dict) or not isinstance(state, dict):
        raise FlytInputError(f"scoring model checkpoint {path} lacks its 'config' or 'state_dict' entry")
    missing = [f for f in _CONFIG_FIELDS[kind] if f not in config]
    if missing:
        raise FlytInputError(
            f"scoring model checkpoint {path} ({kind}) lacks config field(s) {', '.join(missing)}; "
            f"a {kind} model needs {', '.join(_CONFIG_FIELDS[kind])}"
        )
    _check_tensors(path, state)
    if kind == MixingModel.kind:
        model = MixingModel(config["input_names"], config["mean"], config["std"])
    else:
        model = GLUHead(config["embed_dim"], config["hidden_dim"], cosine_init=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FlytInputError(f"scoring model checkpoint {path} does not match its config: {str(exc).splitlines()[0]}") from None
    meta = payload.get("meta", {})
    return model, meta if isinstance(meta, dict) else {}
