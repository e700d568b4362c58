"""s-CLIPLoss (negCLIPLoss, Wang et al.): the CLIP similarity minus the example's contrastive normaliser.

For an example i in a batch B (image embeddings u, text embeddings v, s_ij = u_i . v_j):

    R_B(i) = tau/2 * [logsumexp_{j in B}(s_ij / tau) + logsumexp_{j in B}(s_ji / tau)]
    score(i) = s_ii - mean over K random batches holding i of R_B(i)

with tau = 0.01, |B| = 32768 and K = 10 (SPEC section 5). Higher is better. Batches come from a
seeded random permutation of the rows of one metadata shard (as the authors do it per worker),
cut into chunks of |B|. A last chunk shorter than |B| would give its examples a smaller
normaliser (fewer terms in the sums) and so inflated scores; it is therefore topped up to |B|
with other rows of the same shard, which only serve as negatives there (each example is scored
once per repetition). A shard with at most |B| rows is one batch, the same in every repetition, so
its normaliser is computed once. Everything is computed in
log-space (exp(s / 0.01) overflows float32), in row chunks so memory stays bounded, on a GPU
when one is present.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from .base import Option, Provider, register_provider

TAU = 0.01
BATCH = 32768
REPEATS = 10


def batch_plan(n: int, batch: int, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """One repetition's batches as (members, scored): ``scored`` are the rows this batch scores
    (every row exactly once across the list), ``members`` the rows of the batch (``scored`` first,
    then the top-up rows of a short last batch)."""
    perm = rng.permutation(n)
    plan = []
    for start in range(0, n, batch):
        scored = perm[start:start + batch]
        members = scored
        if len(scored) < batch and n > batch:
            others = perm[:start]  # rows outside this short batch
            members = np.concatenate([scored, rng.choice(others, batch - len(scored), replace=False)])
        plan.append((members, scored))
    return plan


def neg_clip_loss(img: np.ndarray, txt: np.ndarray, *, seed: int, tau: float = TAU, batch: int = BATCH,
                  repeats: int = REPEATS, device: str = "cpu", chunk: int = 2048) -> np.ndarray:
    """s-CLIPLoss of every row (float32), for embeddings ``img``/``txt`` of shape (n, d).

    On ``device="cpu"`` the work is numpy (float32 products, float64 sums: torch's CPU elementwise
    exp measured 8x slower than numpy's here); on a CUDA device it is torch.
    """
    n = len(img)
    u = np.asarray(img, dtype=np.float32)
    v = np.asarray(txt, dtype=np.float32)
    normaliser_of = _normaliser_numpy if device == "cpu" else _torch_normaliser(device)
    own = np.einsum("ij,ij->i", u, v, dtype=np.float64)
    if n <= batch:  # the whole shard is the one batch of every repetition: the K normalisers are equal
        return (own - normaliser_of(u, v, tau, chunk)).astype(np.float32)
    rng = np.random.default_rng(seed)
    normaliser = np.zeros(n, dtype=np.float64)
    for _ in range(repeats):
        for members, scored in batch_plan(n, batch, rng):
            normaliser[scored] += normaliser_of(u[members], v[members], tau, chunk)[: len(scored)]
    return (own - normaliser / repeats).astype(np.float32)


def _normaliser_numpy(u: np.ndarray, v: np.ndarray, tau: float, chunk: int) -> np.ndarray:
    """R_B(i) for every member i of one batch: image-side and text-side logsumexp, in row chunks."""
    m = len(u)
    img_side = np.empty(m, dtype=np.float64)
    col_max = np.full(m, -np.inf)
    col_sum = np.zeros(m)
    for a in range(0, m, chunk):
        logits = u[a:a + chunk] @ v.T
        logits /= tau  # rows: images a..a+chunk, columns: every text of the batch
        row_max = logits.max(axis=1)
        img_side[a:a + chunk] = row_max + np.log(np.exp(logits - row_max[:, None]).sum(axis=1, dtype=np.float64))
        # running logsumexp down each column (the text side): rescale the sum to the new maximum
        new_max = np.maximum(col_max, logits.max(axis=0))
        col_sum = col_sum * np.exp(col_max - new_max) + np.exp(logits - new_max.astype(np.float32)).sum(
            axis=0, dtype=np.float64)
        col_max = new_max
    return tau / 2 * (img_side + col_max + np.log(col_sum))


def _torch_normaliser(device: str):
    """The same computation in torch on ``device`` (a GPU), returning numpy float64."""
    import torch

    dev = torch.device(device)

    def normaliser(u: np.ndarray, v: np.ndarray, tau: float, chunk: int) -> np.ndarray:
        tu, tv = torch.as_tensor(u, device=dev), torch.as_tensor(v, device=dev)
        m = len(tu)
        img_side = torch.empty(m, dtype=torch.float64, device=dev)
        col_max = torch.full((m,), -torch.inf, dtype=torch.float64, device=dev)
        col_sum = torch.zeros(m, dtype=torch.float64, device=dev)
        for a in range(0, m, chunk):
            logits = (tu[a:a + chunk] @ tv.T) / tau
            img_side[a:a + chunk] = torch.logsumexp(logits, dim=1).double()
            new_max = torch.maximum(col_max, logits.max(dim=0).values.double())
            col_sum = col_sum * torch.exp(col_max - new_max) + torch.exp(logits - new_max.float()).sum(
                dim=0, dtype=torch.float64)
            col_max = new_max
        return (tau / 2 * (img_side + col_max + torch.log(col_sum))).cpu().numpy()

    return normaliser


def shard_seed(seed: int, shard_name: str) -> int:
    """A per-shard seed that depends on the shard's name, not its position in a listing."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{shard_name}".encode()).digest()[:8], "little")


@register_provider
class NegClipLossInput(Provider):
    kind = "neg_clip_loss"
    version = "1"
    help = ("s-CLIPLoss (negCLIPLoss) from the npz embeddings: s_ii minus the mean over K random in-shard batches "
            "of the contrastive normaliser")
    options = (
        Option("arch", str, "b32", "embeddings to use (npz keys <arch>_img, <arch>_txt)", ("b32", "l14")),
        Option("tau", float, TAU, "temperature"),
        Option("batch", int, BATCH, "batch size |B|"),
        Option("repeats", int, REPEATS, "K, random batches per example"),
        Option("seed", int, 0, "seed of the batch permutations"),
    )
    uses_gpu = True

    def __init__(self, spec: str, args: dict[str, Any]):
        super().__init__(spec, args)
        self.npz_keys = (f"{args['arch']}_img", f"{args['arch']}_txt")

    def default_name(self) -> str:
        return f"neg_clip_loss_{self.args['arch']}"

    def fit(self, ctx) -> Any:
        return {"device": ctx.device}

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        a = self.args
        img, txt = (data.arrays[k] for k in self.npz_keys)
        return neg_clip_loss(img, txt, seed=shard_seed(a["seed"], shard_name), tau=a["tau"], batch=a["batch"],
                             repeats=a["repeats"], device=state["device"])
