"""FLYT's losses: the weighted CLIP loss (upstream) and the downstream losses.

All losses work at the embedding level (features in, scalar out), so the bilevel step can evaluate
them on cached embeddings, differentiate them twice cheaply, and split the encoders' work into
micro-batches. Features may be unnormalised and in low precision: they are L2-normalised here in
float32 (float64 if given float64), and every exp/log goes through log-softmax. Autocast is switched
off inside (``full_precision``): under it a float32 matrix product would run in bfloat16, and the
meta-gradient depends on small differences between nearly equal per-class and per-example terms
(the logits of a class prompt and of its neighbours), which bfloat16 rounding erases.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _compute_dtype(*tensors: Tensor) -> torch.dtype:
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def _normalise(x: Tensor, dtype: torch.dtype) -> Tensor:
    return F.normalize(x.to(dtype), dim=-1)


def no_autocast(device: torch.device | str):
    """A context in which autocast is off on ``device`` (the tensors' own dtypes decide the precision).

    Without autocast in effect this changes nothing, so float32 / float64 results stay bit for bit the
    same. Autograd calls made inside also run their backward without autocast.
    """
    device_type = torch.device(device).type
    if device_type in ("cpu", "cuda") and _autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


@contextlib.contextmanager
def full_precision(device: torch.device | str):
    """:func:`no_autocast`, and on CUDA no TF32 in float32 matrix products either (where the caller
    allowed it for the encoders): the losses and their derivatives are computed in true float32."""
    tf32 = torch.device(device).type == "cuda" and _tf32_matmuls()
    with no_autocast(device):
        if tf32:
            torch.backends.cuda.matmul.allow_tf32 = False
        try:
            yield
        finally:
            if tf32:
                torch.backends.cuda.matmul.allow_tf32 = True


def _tf32_matmuls() -> bool:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32)
    except RuntimeError:  # settings made with torch's newer fp32_precision API: leave them alone
        return False


def _autocast_enabled(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4: no device argument
        return torch.is_autocast_cpu_enabled() if device_type == "cpu" else torch.is_autocast_enabled()


def weighted_clip_terms(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                        weights: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example contrastive terms of the weighted CLIP loss: ``(l_img, l_txt)``, each shape (B,).

    With z = tau * I T^T (normalised features) and log w the log weights,
    ``l_img_i = -log_softmax_j(z_ij + log w_j)[i]`` and ``l_txt_i`` the same on z^T. This is
    -log(w_i e^{z_ii} / sum_j w_j e^{z_ij}) of the paper's eq. 3 in overflow-free form.
    Entries of examples with w_i = 0 are set to 0 (they would be +inf); such an example is a column
    of -inf in every softmax, so it neither appears nor receives gradient.
    """
    dtype = _compute_dtype(image_features, text_features, weights)
    with full_precision(image_features.device):
        img = _normalise(image_features, dtype)
        txt = _normalise(text_features, dtype)
        tau = torch.as_tensor(logit_scale).to(dtype)
        w = weights.to(dtype)
        positive = w > 0
        # log w with log 0 = -inf, without an infinite derivative reaching w (double-where trick).
        log_w = torch.where(positive, torch.log(torch.where(positive, w, torch.ones_like(w))),
                            torch.full_like(w, -math.inf))
        logits = tau * img @ txt.T
        l_img = -torch.log_softmax(logits + log_w[None, :], dim=1).diagonal()
        l_txt = -torch.log_softmax(logits.T + log_w[None, :], dim=1).diagonal()
        zero = torch.zeros_like(l_img)
        return torch.where(positive, l_img, zero), torch.where(positive, l_txt, zero)


def weighted_clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                       weights: Tensor) -> Tensor:
    """Weighted CLIP loss L = 1/2 sum_i w_i (l_img_i + l_txt_i) (paper eq. 3).

    ``logit_scale`` is the multiplier tau itself (open_clip's ``logit_scale.exp()``); ``weights``
    are non-negative (in FLYT a softmax over the batch). Properties: w_i = 0 is exactly the same as
    removing example i (value and gradients of the other features); uniform w = 1/B is the standard
    mean-form CLIP loss; the weights need not sum to 1 (they are used as given).
    The derivative with respect to a weight that is exactly 0 is returned as 0 (the true one-sided
    derivative is +inf); softmax weights are never exactly 0.
    Computed and returned in float32 (float64 if any input is float64).
    """
    l_img, l_txt = weighted_clip_terms(image_features, text_features, logit_scale, weights)
    w = weights.to(l_img.dtype)
    return 0.5 * torch.sum(torch.where(w > 0, w * (l_img + l_txt), torch.zeros_like(w)))


def clip_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float) -> Tensor:
    """The standard (mean-form) CLIP loss: the weighted loss with uniform weights."""
    n = image_features.shape[0]
    weights = torch.full((n,), 1.0 / n, dtype=_compute_dtype(image_features, text_features),
                         device=image_features.device)
    return weighted_clip_loss(image_features, text_features, logit_scale, weights)


# --------------------------------------------------------------------------------------------
# Downstream losses. One interface:
#     loss(image_features (B', d), labels (B',), class_features (K, d), logit_scale) -> scalar
# where class_features are the embeddings of this step's templated class texts (one prompt per
# class, encoded once per step by the caller) and logit_scale is the evaluated model's own tau.
# Any trainable parameter of a loss (the learned temperature) is an ordinary nn.Parameter, so the
# bilevel step can pass it functionally (torch.func.functional_call) and return its gradient.
# --------------------------------------------------------------------------------------------


class DownstreamLoss(nn.Module):
    """Base class of the downstream losses (see the module comment for the interface)."""

    name = "base"

    def forward(self, image_features: Tensor, labels: Tensor, class_features: Tensor,
                logit_scale: Tensor | float) -> Tensor:  # pragma: no cover - interface
        raise NotImplementedError


def _class_logits(image_features: Tensor, class_features: Tensor, tau: Tensor | float) -> Tensor:
    """tau <img, class text> on normalised features, in float32 (float64) with autocast off."""
    dtype = _compute_dtype(image_features, class_features)
    with full_precision(image_features.device):
        return torch.as_tensor(tau).to(dtype) * _normalise(image_features, dtype) @ _normalise(class_features, dtype).T


def _cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    with full_precision(logits.device):
        return F.cross_entropy(logits, labels)


class CrossEntropyLoss(DownstreamLoss):
    """``ce``: mean cross entropy of logits tau_DS * <img, class text> with a fixed tau_DS = 1 (paper C.8)."""

    name = "ce"
    temperature = 1.0

    def forward(self, image_features, labels, class_features, logit_scale=None):
        return _cross_entropy(_class_logits(image_features, class_features, self.temperature), labels)


class _LearnedTemperature(DownstreamLoss):
    """A downstream loss with its own learned multiplier tau_DS = exp(log_temperature).

    The parameter stores the log (like open_clip's logit_scale), initialised to log(1/0.07); it is
    trained by the downstream gradient only and kept separate from the reference model's upstream
    tau (paper C.7: sharing them hurt). No clamp is applied here.
    """

    def __init__(self):
        super().__init__()
        self.log_temperature = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def temperature(self) -> Tensor:
        return self.log_temperature.exp()


class LearnedTemperatureCrossEntropyLoss(_LearnedTemperature):
    """``ce_temp``: the ``ce`` loss with a learned tau_DS (paper C.8)."""

    name = "ce_temp"

    def forward(self, image_features, labels, class_features, logit_scale=None):
        return _cross_entropy(_class_logits(image_features, class_features, self.temperature), labels)


class ClipPairsLoss(_LearnedTemperature):
    """``clip``: the CLIP loss on (image, templated class-name text) pairs, with a learned tau_DS.

    The text of pair i is the class prompt of label c_i (repeated labels give repeated texts, which
    count as negatives like any other pair).
    """

    name = "clip"

    def forward(self, image_features, labels, class_features, logit_scale=None):
        return clip_loss(image_features, class_features[labels], self.temperature)


DOWNSTREAM_LOSSES = {cls.name: cls for cls in (CrossEntropyLoss, LearnedTemperatureCrossEntropyLoss, ClipPairsLoss)}


def make_downstream_loss(name: str) -> DownstreamLoss:
    """Build a downstream loss by name: ``ce``, ``ce_temp`` or ``clip``."""
    from flyt_datacomp.errors import FlytInputError

    if name not in DOWNSTREAM_LOSSES:
        raise FlytInputError(f"unknown downstream loss {name!r} (choose from {', '.join(DOWNSTREAM_LOSSES)})")
    return DOWNSTREAM_LOSSES[name]()
