"""NormSim (Wang et al.): how close an example's image is to a target set, from the same CLIP.

    NormSim_p(i) = || G u_i ||_p,   NormSim_inf(i) = max_t g_t . u_i,   NormSim_2(i) = sqrt(sum_t (g_t . u_i)^2)

over target image embeddings g_t (rows of G, L2-normalised here) and the example's image embedding
u_i from the pool's npz. Image only. The usual target is ImageNet-1k train: DataComp publishes its
L/14 embeddings as ``in1k_clip_vit_l14_{0..4}.pt`` (key ``image_features``); a ``.npy`` of shape
(T, d) works too, and TARGET may be a glob (``in1k_clip_vit_l14_*.pt``). The product is taken in
blocks of rows x targets, so memory stays bounded by the block however large either side is.
"""

from __future__ import annotations

import glob
import os
import zipfile
from typing import Any

import numpy as np

from ...errors import FlytInputError, quote
from ...io import atomic_path
from .base import FitContext, Option, Provider, register_provider

ROW_CHUNK = 4096
TARGET_CHUNK = 16384


def embedding_matrix(arr: Any, where: str) -> np.ndarray:
    """``arr`` as a float32 ``(T, d)`` matrix of finite real numbers with at least one row and column,
    else one error naming ``where`` (an empty file, text, objects, complex numbers, NaN)."""
    arr = np.asarray(arr) if not isinstance(arr, np.ndarray) else arr
    if arr.dtype.kind not in "iuf":
        what = {"U": "text", "S": "bytes", "O": "Python objects", "c": "complex numbers", "b": "booleans"}.get(
            arr.dtype.kind, f"{arr.dtype} values")
        raise FlytInputError(f"{where} holds {what}, not embeddings (real numbers)")
    if arr.ndim != 2:
        raise FlytInputError(f"{where} must be 2-D (T, d), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise FlytInputError(f"{where} is empty (shape {arr.shape}): it needs at least one embedding")
    out = np.asarray(arr, dtype=np.float32)
    bad = ~np.isfinite(out)
    if bad.any():
        row = int(np.flatnonzero(bad.any(axis=1))[0])
        raise FlytInputError(f"{where} holds {int(bad.sum())} non-finite values (the first in row {row})")
    return out


def read_npy(path: str, what: str, key: str | None = None) -> np.ndarray:
    """An array of a .npy file (or key ``key`` of a .npz), read without unpickling; a truncated or
    damaged file, or one holding objects, is one error naming it."""
    try:
        if key is None:
            return np.load(path, allow_pickle=False)
        with np.load(path, allow_pickle=False) as z:
            if key not in z.files:
                raise FlytInputError(f"{what} {path} has no key {key!r} (keys: {', '.join(z.files) or 'none'})")
            return z[key]
    except FlytInputError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise FlytInputError(f"cannot read {what} {path}: {exc}") from None


def _tensor_values(obj: Any, where: str) -> np.ndarray:
    """A loaded tensor of real numbers as a float32 numpy array (else one error naming ``where``)."""
    import torch

    from ...torch_io import real_tensor

    return real_tensor(obj, where).detach().to("cpu", torch.float32).numpy()


def load_target_embeddings(pattern: str) -> np.ndarray:
    """Target embeddings (T, d) float32, L2-normalised, from .npy or DataComp .pt files (a glob)."""
    paths = sorted(glob.glob(os.path.expanduser(pattern))) or ([pattern] if os.path.exists(pattern) else [])
    if not paths:
        raise FlytInputError(f"target embeddings {quote(pattern)} not found (a .npy of shape (T, d), or DataComp's "
                             "in1k_clip_vit_l14_*.pt files with key image_features)")
    parts = []
    for path in paths:
        if path.endswith(".pt"):
            from ... import torch_io

            obj = torch_io.load(path, "target embeddings file")
            if isinstance(obj, dict):
                if "image_features" not in obj:
                    raise FlytInputError(f"target embeddings file {path} has no 'image_features' (keys: {list(obj)})")
                obj = obj["image_features"]
            arr = _tensor_values(obj, f"target embeddings {path}")
        else:
            arr = read_npy(path, "target embeddings")
        parts.append(embedding_matrix(arr, f"target embeddings {path}"))
    if len({p.shape[1] for p in parts}) != 1:
        raise FlytInputError(f"target embeddings {quote(pattern)} mix dimensions {sorted({p.shape[1] for p in parts})}")
    g = np.concatenate(parts)
    norms = np.linalg.norm(g, axis=1, keepdims=True)
    if (norms == 0).any():
        raise FlytInputError(f"target embeddings {quote(pattern)} hold an all-zero row")
    return g / norms


def normsim(img: np.ndarray, targets: np.ndarray, p: str = "inf", *, row_chunk: int = ROW_CHUNK,
            target_chunk: int = TARGET_CHUNK, device: str = "cpu") -> np.ndarray:
    """NormSim_p of every row of ``img`` (n, d) against ``targets`` (T, d), float32, blockwise.

    On ``device="cpu"`` the work is numpy; on a CUDA device it is torch, with the targets moved to
    the device once (1.28M ImageNet targets x 768 dims are 3.9 GB of float32).
    """
    if device != "cpu":
        return _normsim_torch(img, targets, p, row_chunk=row_chunk, target_chunk=target_chunk, device=device)
    n = len(img)
    out = np.empty(n, dtype=np.float32)
    for a in range(0, n, row_chunk):
        u = np.asarray(img[a:a + row_chunk], dtype=np.float32)
        acc = np.full(len(u), -np.inf) if p == "inf" else np.zeros(len(u))
        for b in range(0, len(targets), target_chunk):
            sims = u @ targets[b:b + target_chunk].T
            if p == "inf":
                np.maximum(acc, sims.max(axis=1), out=acc)
            else:
                acc += np.square(sims, dtype=np.float64).sum(axis=1)
        out[a:a + len(u)] = acc if p == "inf" else np.sqrt(acc)
    return out


def _normsim_torch(img: np.ndarray, targets: np.ndarray, p: str, *, row_chunk: int, target_chunk: int,
                   device: str) -> np.ndarray:
    """The same blockwise computation in torch on ``device`` (float32 products, float64 sums of squares)."""
    import torch

    dev = torch.device(device)
    g = torch.as_tensor(np.asarray(targets, dtype=np.float32), device=dev)
    out = np.empty(len(img), dtype=np.float32)
    for a in range(0, len(img), row_chunk):
        u = torch.as_tensor(np.asarray(img[a:a + row_chunk], dtype=np.float32), device=dev)
        acc = torch.full((len(u),), -torch.inf, device=dev) if p == "inf" else torch.zeros(len(u), dtype=torch.float64,
                                                                                          device=dev)
        for b in range(0, len(g), target_chunk):
            sims = u @ g[b:b + target_chunk].T
            if p == "inf":
                acc = torch.maximum(acc, sims.max(dim=1).values)
            else:
                acc += sims.double().square().sum(dim=1)
        out[a:a + len(u)] = (acc if p == "inf" else acc.sqrt()).float().cpu().numpy()
    return out


@register_provider
class NormSimInput(Provider):
    kind = "normsim"
    help = "NormSim_p of the image embedding against a file of target image embeddings from the same CLIP"
    positional = ("target",)
    options = (
        Option("p", str, "inf", "the norm: inf (max similarity) or 2", ("inf", "2")),
        Option("arch", str, "b32", "pool embeddings to use (npz key <arch>_img)", ("b32", "l14")),
    )

    def __init__(self, spec: str, args: dict[str, Any]):
        super().__init__(spec, args)
        self.npz_keys = (f"{args['arch']}_img",)

    def default_name(self) -> str:
        stem = os.path.basename(self.args["target"]).split(".")[0].replace("*", "")
        return f"normsim_{self.args['p']}_{stem}"

    def sources(self) -> list[str]:
        return [self.args["target"]]

    def fit(self, ctx: FitContext) -> Any:
        targets = load_target_embeddings(self.args["target"])
        out = ctx.work_dir / f"{ctx.name}.targets.npy"
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.save(fh, targets)
        return {"targets": str(out), "count": len(targets), "dim": targets.shape[1], "device": ctx.device}

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        img = data.arrays[self.npz_keys[0]]
        if img.shape[1] != state["dim"]:
            raise FlytInputError(f"normsim targets have dimension {state['dim']} but {self.npz_keys[0]} in "
                                 f"{data.shard.npz} has {img.shape[1]}: use the targets of the same CLIP (arch=)")
        targets = np.load(state["targets"], mmap_mode="r")
        return normsim(img, targets, self.args["p"], device=state.get("device", "cpu"))
