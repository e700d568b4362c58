"""FLYT's validation objective on the demo pool's ground-truth subsets, one step and n steps ahead.

FLYT judges a weighting of an upstream batch by the held-out downstream loss after *one* reference step on
it (:mod:`flyt_datacomp.flyt.validation`). Here the weighting is the ground truth's (``truth.parquet``,
which no filter reads): a step on a batch's examples of one true subset of the pool (the task alone, the
task with one kind of noise, every correctly captioned example), uniformly weighted, against a step on the
whole batch. No scoring model is involved, so the result is a property of the objective: which known
subsets it prefers. :func:`horizon_gains` asks the same n steps ahead (n reference steps on n fresh
batches, the Adam state carried on), which is what FLYT's one-step meta-gradient cannot see.

A weight of exactly 0 in the weighted CLIP loss is the same as removing the example
(:func:`~flyt_datacomp.flyt.losses.weighted_clip_loss`), so a step on a subset is a CLIP step on its rows.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import FlytInputError
from ..flyt.adamw import AdamState, AdamWConfig, adamw_step, clip_loss_grads
from ..flyt.validation import ZeroShotLoss, heldout_loss, validation_gain

# the true subsets, as sets of kinds (indices into demo.signal.KINDS: 0 the task, 1 aligned but not the
# task, 2 a digit with a wrong caption, 3 another domain's wrong caption, 4 clutter)
SUBSETS: dict[str, tuple[int, ...]] = {
    "the task": (0,),
    "the task + other domains' wrong captions": (0, 3),
    "the task + clutter": (0, 4),
    "the task + digits' wrong captions": (0, 2),
    "every correct caption (the alignment oracle)": (0, 1),
}


def members_of(kind: np.ndarray, positions: Tensor, members: Collection[int] | None) -> Tensor:
    """Which rows of a batch (its pool ``positions``) belong to the subset of kinds ``members`` (None: all)."""
    if members is None:
        return torch.ones(len(positions), dtype=torch.bool)
    inside = torch.from_numpy(np.isin(kind[positions.numpy()], list(members)))
    if not inside.any():
        raise FlytInputError("a batch holds no example of the subset: use larger batches")
    return inside


def subset_scores(kind: np.ndarray, positions: Tensor, members: Collection[int]) -> Tensor:
    """Scores whose softmax is uniform over a batch's members of the subset and exactly 0 elsewhere."""
    return torch.where(members_of(kind, positions, members), 0.0, -1e4).double()


def clip_steps(model: nn.Module, theta: Mapping[str, Tensor], adam: AdamState, cfg: AdamWConfig,
               batches: Sequence[tuple[Tensor, Tensor]], at: Collection[int],
               measure: Callable[[dict[str, Tensor]], float]) -> dict[int, float]:
    """Plain CLIP AdamW steps on ``batches`` (images, tokens) from (theta, adam), the model as it is set
    (eval mode: the reference's BatchNorm statistics stay); ``measure(theta)`` after each step count in ``at``."""
    theta, out = dict(theta), {}
    for n, (images, texts) in enumerate(batches, 1):
        grads = clip_loss_grads(model, theta, images, texts)
        with torch.no_grad():
            theta, adam = adamw_step(theta, grads, adam, cfg)
        if n in at:
            out[n] = measure(theta)
    return out


def _judge_state(trainer) -> tuple[dict[str, Tensor], AdamState]:
    state = trainer.judge
    if state is None:
        raise FlytInputError("the trainer has no judge state: warm it up with validation_fraction > 0 first")
    return dict(state["theta"]), AdamState(state["exp_avg"], state["exp_avg_sq"], state["step"])


def one_step_gains(trainer, kind: np.ndarray, subsets: Mapping[str, Collection[int]] = SUBSETS) -> dict[str, Any]:
    """Per subset: FLYT's validation gain of a step on the subset's examples of each probe batch, at the
    warmed-up ``trainer``'s judge state (held-out zero-shot loss; see :func:`flyt.validation.validation_gain`),
    and the share of the probe batches the subset holds."""
    theta, adam = _judge_state(trainer)
    data, cfg = trainer.validation, trainer.cfg
    out = {}
    for name, members in subsets.items():
        scores = [subset_scores(kind, p["positions"], members) for p in data.probes]
        out[name] = validation_gain(trainer.model, theta, adam, trainer._ref_cfg(cfg.reference_lr), ZeroShotLoss(),
                                    data, scores, micro_batch_size=cfg.micro_batch_size)
        out[name]["batch_share"] = float(np.mean([float(members_of(kind, p["positions"], members).float().mean())
                                                  for p in data.probes]))
    return out


def horizon_gains(trainer, kind: np.ndarray, at: Collection[int], repeats: int,
                  subsets: Mapping[str, Collection[int]] = SUBSETS) -> dict[str, Any]:
    """Per subset and step count n in ``at``: the held-out zero-shot loss after n reference steps on the
    subset's examples of n fresh batches of the pool, subtracted from the same after n steps on the whole
    batches (``gain``, positive: the subset helps), with its standard error (``se``) over ``repeats``
    independent sequences of batches; from the warmed-up ``trainer``'s judge state, at its reference lr."""
    if repeats < 2:
        raise FlytInputError("the horizon's standard error needs at least 2 repeats")
    theta, adam = _judge_state(trainer)
    data, cfg = trainer.validation, trainer._ref_cfg(trainer.cfg.reference_lr)
    stream = trainer._upstream_iter()
    sequences = [[next(stream) for _ in range(max(at))] for _ in range(repeats)]

    def losses(members) -> list[dict[int, float]]:
        curves = []
        for seq in sequences:
            batches = []
            for b in seq:
                keep = members_of(kind, b["positions"], members)
                batches.append((trainer._to_device(b["images"][keep]), trainer._to_device(b["texts"][keep])))
            curves.append(clip_steps(trainer.model, theta, adam, cfg, batches, set(at),
                                     lambda th: heldout_loss(trainer.model, th, ZeroShotLoss(), data)))
        return curves

    whole = losses(None)
    out: dict[str, Any] = {"whole batches": {n: {"loss": float(np.mean([w[n] for w in whole]))} for n in at}}
    for name, members in subsets.items():
        mine = losses(members)
        out[name] = {}
        for n in at:
            d = np.array([w[n] - m[n] for w, m in zip(whole, mine)])
            out[name][n] = {"gain": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}
    return out
