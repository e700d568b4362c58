"""A functional AdamW for the reference model: the step, its diagonal derivative, a warm start.

The reference update theta_plus = AdamW(theta, g, state) is written as a pure function of
dictionaries of tensors (name -> tensor), matching ``torch.optim.AdamW`` exactly (decoupled weight
decay applied first, bias corrections with the new step count). Per coordinate, with step t+1:

    m' = b1 m + (1 - b1) g            v' = b2 v + (1 - b2) g^2
    r  = sqrt(v' / c2)                c1 = 1 - b1^(t+1),  c2 = 1 - b2^(t+1)
    theta_plus = theta (1 - lr wd) - lr (m' / c1) / (r + eps)

Since every coordinate only sees its own g, d theta_plus / d g is diagonal:

    d theta_plus / d g = -lr [ (1 - b1) / (c1 (r + eps)) - (m' / c1) (1 - b2) g / (c2 r (r + eps)^2) ]

At v' = 0 (v = 0 and g = 0: e.g. token-embedding rows no example used) sqrt has an infinite
derivative, yet theta_plus is smooth there (r grows like |g|, and is multiplied by m' ~ g), so the
second term is exactly 0: both the closed form and the differentiable step guard it that way.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Params = dict[str, Tensor]


@dataclass(frozen=True)
class AdamWConfig:
    """Reference-model optimiser hyper-parameters (paper Table 7 / SPEC section 2)."""

    lr: float = 5e-5
    weight_decay: float = 0.2
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6


@dataclass(frozen=True)
class AdamState:
    """Adam moments and the number of steps taken so far (``step`` = t; the next step is t+1)."""

    exp_avg: Params
    exp_avg_sq: Params
    step: int = 0

    @staticmethod
    def zeros(params: Mapping[str, Tensor]) -> AdamState:
        return AdamState({k: torch.zeros_like(p) for k, p in params.items()},
                         {k: torch.zeros_like(p) for k, p in params.items()}, 0)


def decays(name: str, param: Tensor) -> bool:
    """Whether weight decay applies: >= 2-dim weights only, never biases, norms, or the logit scale.

    This is open_clip's training rule (``exclude = ndim < 2 or bn/ln/bias/logit_scale in name``).
    """
    return param.ndim >= 2 and not any(key in name for key in ("bn", "ln", "bias", "logit_scale"))


def _corrections(step: int, cfg: AdamWConfig) -> tuple[float, float]:
    b1, b2 = cfg.betas
    return 1.0 - b1 ** step, 1.0 - b2 ** step


def _safe_sqrt(x: Tensor) -> Tensor:
    """sqrt with derivative 0 (instead of inf -> NaN) at exactly 0; x >= 0."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def adamw_step(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: AdamState,
               cfg: AdamWConfig = AdamWConfig()) -> tuple[Params, AdamState]:
    """One AdamW step as a pure function: returns ``(theta_plus, new_state)``; inputs untouched.

    Differentiable with respect to ``grads`` (and ``params``) when they carry a graph; the sqrt is
    guarded at v' = 0 (see the module docstring). The new state has ``step = state.step + 1``.
    """
    b1, b2 = cfg.betas
    t = state.step + 1
    c1, c2 = _corrections(t, cfg)
    new_params, new_m, new_v = {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        m = b1 * state.exp_avg[name] + (1 - b1) * g
        v = b2 * state.exp_avg_sq[name] + (1 - b2) * g * g
        r = _safe_sqrt(v / c2)
        decayed = p * (1 - cfg.lr * cfg.weight_decay) if decays(name, p) else p
        new_params[name] = decayed - (cfg.lr / c1) * m / (r + cfg.eps)
        new_m[name], new_v[name] = m, v
    return new_params, AdamState(new_m, new_v, t)


def _derivative(g: Tensor, m: Tensor, r: Tensor, c1: float, c2: float, cfg: AdamWConfig) -> Tensor:
    b1, b2 = cfg.betas
    denom = r + cfg.eps
    positive = r > 0
    safe_r = torch.where(positive, r, torch.ones_like(r))
    second = torch.where(positive, m * (1 - b2) * g / (c2 * safe_r * denom * denom), torch.zeros_like(r))
    return -(cfg.lr / c1) * ((1 - b1) / denom - second)


@torch.no_grad()
def adamw_step_derivative(grads: Mapping[str, Tensor], state: AdamState,
                          cfg: AdamWConfig = AdamWConfig()) -> Params:
    """The diagonal of d theta_plus / d g for :func:`adamw_step` at ``grads`` (closed form above)."""
    return adamw_step_with_derivative({k: torch.zeros_like(g) for k, g in grads.items()}, grads, state, cfg)[2]


@torch.no_grad()
def adamw_step_with_derivative(params: Mapping[str, Tensor], grads: Mapping[str, Tensor], state: AdamState,
                               cfg: AdamWConfig = AdamWConfig()) -> tuple[Params, AdamState, Params]:
    """:func:`adamw_step` (without a graph) plus the diagonal of d theta_plus / d g, sharing the work."""
    b1, b2 = cfg.betas
    t = state.step + 1
    c1, c2 = _corrections(t, cfg)
    new_params, new_m, new_v, deriv = {}, {}, {}, {}
    for name, p in params.items():
        g = grads[name]
        m = b1 * state.exp_avg[name] + (1 - b1) * g
        v = b2 * state.exp_avg_sq[name] + (1 - b2) * g * g
        r = torch.sqrt(v / c2)
        decayed = p * (1 - cfg.lr * cfg.weight_decay) if decays(name, p) else p
        new_params[name] = decayed - (cfg.lr / c1) * m / (r + cfg.eps)
        new_m[name], new_v[name] = m, v
        deriv[name] = _derivative(g, m, r, c1, c2, cfg)
    return new_params, AdamState(new_m, new_v, t), deriv


def clip_loss_grads(model: nn.Module, params: Mapping[str, Tensor], images: Tensor, texts: Tensor) -> Params:
    """The standard (unweighted) CLIP loss's gradient for every parameter of ``params`` (zeros where
    unused), the model evaluated at them (``functional_call``, as it is set: train or eval mode)."""
    from flyt_datacomp.flyt.losses import clip_loss

    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    img, txt, tau = torch.func.functional_call(model, leaves, (images, texts))
    grads = torch.autograd.grad(clip_loss(img, txt, tau), list(leaves.values()), allow_unused=True)
    return {k: (torch.zeros_like(v) if gr is None else gr) for (k, v), gr in zip(leaves.items(), grads)}


def warmup_adam_state(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    *,
    params: Mapping[str, Tensor] | None = None,
    cfg: AdamWConfig = AdamWConfig(),
    lr_schedule: Callable[[int], float] | None = None,
    reduce_grads: Callable[[Params], Params] | None = None,
) -> tuple[Params, AdamState]:
    """Warm-start Adam's (m, v, t) with a few plain CLIP-loss AdamW steps on ``batches``.

    Why: from a zero state the first AdamW update is about lr * sign(g), almost independent of
    the gradient's size, so the meta-gradient through it is meaningless (SPEC section 2). Each
    (images, token_ids) batch gives one step with uniform weights (the standard CLIP loss).

    Returns ``(params, state)``: the parameters after these steps and the warmed state. Using the
    moved parameters is the natural choice (they are ordinary reference-model steps); keeping the
    original parameters with the warmed state is also fine at lr 5e-5. ``lr_schedule(i)``, if given,
    is the learning rate of step i (0-based) in place of ``cfg.lr``. ``reduce_grads``, if given, turns
    each step's gradients into the ones to apply (data parallel: their mean over the ranks, so that every
    rank takes the same step).
    """
    current = {k: v.detach().clone() for k, v in (params or dict(model.named_parameters())).items()}
    state = AdamState.zeros(current)
    for i, (images, texts) in enumerate(batches):
        step_cfg = cfg if lr_schedule is None else dataclasses.replace(cfg, lr=lr_schedule(i))
        grads = clip_loss_grads(model, current, images, texts)
        if reduce_grads is not None:
            grads = reduce_grads(grads)
        with torch.no_grad():
            current, state = adamw_step(current, grads, state, step_cfg)
    return current, state
