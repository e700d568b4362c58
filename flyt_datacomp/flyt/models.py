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
    """s = sum_k phi_k z_k with z_k = (x_k - mean_k) / std_k (a bias would cancel in the batch softmax).

    ``pairwise``: also a weight per product of two inputs, each product standardised over the pool
    too, s = sum_k phi_k z_k + sum_{k<l} phi_kl (z_k z_l - m_kl) / s_kl: a term can then say "this AND
    that" (a product is large only where both inputs are), which no weighting of the inputs alone can.
    The model stores every statistic, so scoring the pool later applies exactly training's transform.
    """

    kind = "m-flyt"

    def __init__(self, input_names: Sequence[str], mean: Sequence[float], std: Sequence[float], *,
                 pair_mean: Sequence[float] | None = None, pair_std: Sequence[float] | None = None):
        super().__init__()
        if not input_names:
            raise FlytInputError("an M-FLYT mixing model needs at least one input score")
        if len(set(input_names)) != len(input_names):
            raise FlytInputError(f"M-FLYT input names must be distinct, got {list(input_names)}")
        self.input_names = list(input_names)
        k = len(self.input_names)
        self.pairs = [(i, j) for i in range(k) for j in range(i + 1, k)] if pair_mean is not None else []
        self.register_buffer("mean", _statistic(mean, k, "mean", self.input_names, positive=False))
        self.register_buffer("std", _statistic(std, k, "std", self.input_names, positive=True))
        if pair_mean is not None:
            names = self.term_names[k:]
            self.register_buffer("pair_mean", _statistic(pair_mean, len(names), "pair mean", names, positive=False))
            self.register_buffer("pair_std", _statistic(pair_std, len(names), "pair std", names, positive=True))
        self.weight = nn.Parameter(torch.zeros(k + len(self.pairs)))

    @property
    def pairwise(self) -> bool:
        return hasattr(self, "pair_mean")

    @property
    def term_names(self) -> list[str]:
        """The name of each weight's term: the inputs, then ``a*b`` for each product."""
        names = self.input_names
        return names + [f"{names[i]}*{names[j]}" for i, j in self.pairs]

    @classmethod
    def from_pool_features(cls, input_names: Sequence[str], features: np.ndarray, *,
                           pairwise: bool = False) -> MixingModel:
        """Standardisation statistics computed over the whole pool's feature table (N x k), and over
        the products of the standardised inputs when ``pairwise``."""
        features = np.asarray(features, dtype=np.float64)
        mean, std = features.mean(axis=0), features.std(axis=0)
        if not pairwise:
            return cls(input_names, mean, std)
        z = (features - mean) / np.where(std > 0, std, 1.0)
        k = features.shape[1]
        products = np.stack([z[:, i] * z[:, j] for i in range(k) for j in range(i + 1, k)], axis=1) if k > 1 \
            else np.zeros((len(z), 0))
        return cls(input_names, mean, std, pair_mean=products.mean(axis=0), pair_std=products.std(axis=0))

    def config(self) -> dict[str, Any]:
        out = {"input_names": self.input_names, "mean": self.mean.tolist(), "std": self.std.tolist()}
        if self.pairwise:
            out.update(pair_mean=self.pair_mean.tolist(), pair_std=self.pair_std.tolist())
        return out

    def standardize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def terms(self, x: torch.Tensor) -> torch.Tensor:
        """The model's terms for inputs ``x`` (n, k): the standardised inputs, then the standardised products."""
        if x.shape[-1] != len(self.input_names):
            raise FlytInputError(
                f"M-FLYT model expects {len(self.input_names)} input scores {self.input_names}, got {x.shape[-1]}"
            )
        z = self.standardize(x)
        if not self.pairs:
            return z
        i, j = (torch.tensor(idx, device=x.device) for idx in zip(*self.pairs))
        products = (z[..., i] * z[..., j] - self.pair_mean.to(x.dtype)) / self.pair_std.to(x.dtype)
        return torch.cat([z, products], dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.terms(x) @ self.weight.to(x.dtype)

    def mixing_weights(self) -> dict[str, float]:
        """``{term: weight on the standardised term}`` (the paper's Table 2, left; products as ``a*b``)."""
        return {n: float(w) for n, w in zip(self.term_names, self.weight.detach().cpu().tolist())}


def _statistic(values: Sequence[float] | None, k: int, what: str, names: Sequence[str], *, positive: bool) -> torch.Tensor:
    """One standardisation statistic per term, checked: finite, and positive for a std."""
    t = torch.as_tensor(np.asarray(values if values is not None else [], dtype=np.float64))
    if t.shape != (k,):
        raise FlytInputError(f"M-FLYT {what} must have one value per term ({k}), got shape {tuple(t.shape)}")
    bad = [n for n, v in zip(names, t.tolist()) if not math.isfinite(v) or (positive and v <= 0)]
    if bad:
        raise FlytInputError(f"M-FLYT terms need a finite{', positive' if positive else ''} {what} over the pool; "
                             f"bad: {bad}")
    return t.float()


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
        model = MixingModel(config["input_names"], config["mean"], config["std"], pair_mean=config.get("pair_mean"),
                            pair_std=config.get("pair_std"))
    else:
        model = GLUHead(config["embed_dim"], config["hidden_dim"], cosine_init=False)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise FlytInputError(f"scoring model checkpoint {path} does not match its config: {str(exc).splitlines()[0]}") from None
    meta = payload.get("meta", {})
    return model, meta if isinstance(meta, dict) else {}
