"""The FLYT bilevel step as a pure function: meta-gradient of the downstream loss w.r.t. the scores.

One step (paper 3.2): weights w = softmax(s) over the upstream batch; g = grad_theta L_up(theta, w);
theta_plus = AdamW(theta, g, state); L_down = ell_DS(f_{theta_plus}(downstream batch)). We need
dL_down/ds (and, by autograd through the scoring model, dL_down/dphi).

Efficient method (default, forward mode; SPEC section 4, paper Appendix A):
  1. embeddings e = f_theta(upstream) without a graph; at the embedding level (B x d, cheap) the
     loss gradients G(w) = dL_up/de and G_tau(w) = dL_up/d(logit_scale), kept differentiable in w;
  2. g = J_e(theta)^T G + G_tau * 1_logit_scale  (a plain backward through the encoders);
  3. theta_plus = AdamW(theta, g, state), no graph;
  4. v = grad_{theta_plus} L_down, a plain backward through the downstream loss;
  5. u = diag(d theta_plus / d g) * v  (AdamW is coordinate-wise; closed form in ``adamw``);
  6. J_e(theta) u: one Jacobian-vector product of the embedding function (torch.func.jvp, math
     attention kernel because fused kernels lack forward-mode AD);
  7. dL_down/dw = d/dw [<G(w), J_e u> + G_tau(w) u_tau], differentiated at the embedding level
     with e, J_e u and u treated as constants; the softmax to s (and q_phi) by autograd.
  This is exact: dL_down/dw = (dg/dw)^T u and <g(w), u> = <G(w), J_e u> + G_tau(w) u_tau.

Micro-batching (``micro_batch_size``, GradCache-style): the embeddings of the whole batch come
first without a graph; then step 2, 4 and 6 run per micro-batch by re-forwarding, each chunk
contributing its rows' embedding gradients (2, 4) or J_e u rows (6). The K class prompts are
encoded once per step, with their graph, when they take no more token positions than a micro-batch
of full-length texts (else they go through GradCache like the images: a forward, then a re-forward
with the backward). Sums go through ``distributed.all_reduce_sum`` and per-example rows through
``distributed.all_gather_cat``.

Texts (``trim_text``, default on): open_clip's CLIP runs its text tower over the whole context (77
tokens) although a causal tower pooled at the end token never looks past it; every text pass here
stops after the longest text's end token instead (exact; a class prompt is about 12 tokens).

Precision under autocast (the trainer's bf16): the encoders run as the caller set them up (bf16
matrix products in the forward, the backward and the JVP); everything at the embedding level runs in
float32 (float64) with autocast off: the features' L2 normalisation, both losses, their first and
second derivatives (G(w) and step 7) and the scoring model's chain rule; every backward runs with
autocast off too, so each operation's backward keeps its forward's dtype. The meta-gradient is a
small difference of nearly equal per-example and per-class terms, which bf16 rounding of the losses
erased (cosine 0.947 to float32 on ViT-B-32 at B 256); what bf16 still costs is the encoders' own
rounding. ``bench/diagnose_bf16.py`` measures each stage. Without autocast none of this changes a
bit of a float32 or float64 result.

Naive method (``method="naive"``, the test oracle): grads with create_graph through the whole
model, the differentiable AdamW step, L_down at theta_plus, autograd back to s.

Adam's state is advanced exactly once per call (to the returned state); inputs are not mutated.
"""

from __future__ import annotations

import contextlib
import math
import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

from flyt_datacomp.flyt import distributed as D
from flyt_datacomp.flyt.adamw import AdamState, AdamWConfig, Params, adamw_step, adamw_step_with_derivative
from flyt_datacomp.flyt.losses import DownstreamLoss, full_precision, no_autocast, weighted_clip_loss

LOGIT_SCALE = "logit_scale"


@dataclass
class StepResult:
    """Outputs of :func:`flyt_step`.

    theta_plus / adam_state: the reference model's new parameters and optimiser state (commit them).
    grad_scores: dL_down/ds for the (gathered) upstream batch, shape (B,).
    grad_scoring: dL_down/dphi for ``scoring_params`` (empty if none were given).
    grad_downstream: dL_down w.r.t. the downstream loss's own parameters (e.g. ``log_temperature``).
    metrics: ``up_loss`` (at theta), ``down_loss`` (at theta_plus), ``weight_entropy`` (nats).
    """

    theta_plus: Params
    adam_state: AdamState
    grad_scores: Tensor
    grad_scoring: Params = field(default_factory=dict)
    grad_downstream: Params = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


# ------------------------------------------------------------------------------- encoders


@contextlib.contextmanager
def tf32_matmuls(enabled: bool):
    """On CUDA, float32 matrix products and convolutions in TF32 (``enabled``) or in true float32
    while inside; the previous settings come back on exit. The embedding-level losses of the step
    stay in float32 either way (``losses.full_precision``)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = bool(enabled)
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


@contextlib.contextmanager
def autodiff_kernels():
    """Math attention (double backward and forward-mode AD work) and no fused MHA fast path."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


class _Features(nn.Module):
    """An open_clip model's image and text features, L2-normalised in float32 (float64 for a float64
    model) with autocast off: under autocast open_clip would normalise in the encoders' bfloat16 (on
    the CPU) and the tangents of the JVP would be rounded there too. Without autocast this is exactly
    open_clip's own ``forward`` (the same ``F.normalize`` in the model's dtype)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.clip = model

    def forward(self, images: Tensor | None, texts: Tensor | None):
        img = None if images is None else _normalised(self.clip.encode_image(images, normalize=False))
        txt = None if texts is None else _normalised(self.clip.encode_text(texts, normalize=False))
        return img, txt


def _normalised(x: Tensor) -> Tensor:
    with no_autocast(x.device):
        return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


_CAUSAL_TEXT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def causal_text_tower(model: nn.Module) -> bool:
    """Whether a text's features depend only on its tokens up to its end token, the highest id: an
    open_clip ``CLIP`` whose text tower has a causal attention mask and pools at the argmax token.
    (Checked once per model.)"""
    known = _CAUSAL_TEXT.get(model)
    if known is None:
        import open_clip

        mask = getattr(model, "attn_mask", None)
        known = (isinstance(model, open_clip.CLIP) and getattr(model, "text_pool_type", None) == "argmax"
                 and isinstance(getattr(model, "positional_embedding", None), Tensor)
                 and isinstance(mask, Tensor) and mask.dim() == 2 and mask.is_floating_point()
                 and torch.equal(mask, torch.full_like(mask, -math.inf).triu(1)))
        _CAUSAL_TEXT[model] = known
    return known


def _trim(model: nn.Module, params: dict[str, Tensor], texts: Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Drop the token columns after the longest text's end token, with the positional embedding and
    the attention mask cut to match: exact for :func:`causal_text_tower` models (the pooled position
    attends only to earlier ones), which open_clip would otherwise run over the full context."""
    n = int(texts.argmax(dim=-1).max()) + 1 if texts.shape[0] else texts.shape[1]
    if n >= texts.shape[1]:
        return params, texts
    pos = params.get("clip.positional_embedding", model.positional_embedding)
    return {**params, "clip.positional_embedding": pos[:n], "clip.attn_mask": model.attn_mask[:n, :n]}, texts[:, :n]


def _features(model: nn.Module, params: Mapping[str, Tensor], images: Tensor | None, texts: Tensor | None,
              trim_text: bool = True):
    named = {f"clip.{k}": v for k, v in params.items()}
    if texts is not None and trim_text and causal_text_tower(model):
        named, texts = _trim(model, named, texts)
    return functional_call(_Features(model), named, (images, texts))


def encode_pairs(model: nn.Module, params: Mapping[str, Tensor], images: Tensor, texts: Tensor, *,
                 trim_text: bool = True):
    """(image features, text features) of an open_clip model evaluated at ``params``, normalised.

    ``trim_text``: run the text tower only up to the longest text's end token where that is exact
    (:func:`causal_text_tower`): a batch of short texts (the class prompts) then costs a fraction of
    the full context. False: always the full context (what open_clip's ``forward`` does).
    """
    return _features(model, params, images, texts, trim_text)


def encode_images(model: nn.Module, params: Mapping[str, Tensor], images: Tensor) -> Tensor:
    return _features(model, params, images, None)[0]


def encode_texts(model: nn.Module, params: Mapping[str, Tensor], texts: Tensor, *, trim_text: bool = True) -> Tensor:
    return _features(model, params, None, texts, trim_text)[1]


# ------------------------------------------------------------------------------- helpers


def _chunks(n: int, size: int | None) -> list[slice]:
    size = n if not size or size >= n else int(size)
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def _leaves(tensors: Mapping[str, Tensor]) -> Params:
    return {k: v.detach().requires_grad_(True) for k, v in tensors.items()}


def _grads(outputs, leaves: Params, grad_outputs=None, **kw) -> Params:
    """autograd.grad into a dict, with zeros for leaves the outputs do not depend on.

    The backward runs with autocast off, as in ordinary mixed-precision training: each operation's
    backward keeps the dtype its forward had (under autocast a float32 loss's backward would be
    recomputed in bfloat16).
    """
    with no_autocast(next(iter(leaves.values())).device):
        grads = torch.autograd.grad(outputs, list(leaves.values()), grad_outputs, allow_unused=True, **kw)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}


def _accumulate(total: Params, part: Params) -> None:
    for k, v in part.items():
        total[k] = total[k] + v


def _weights(scores: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A detached leaf copy of the scores and w = softmax(s) over the batch (with graph).

    Computed in float32 at least (float64 when the model is float64).
    """
    s = scores.detach().to(torch.promote_types(dtype, torch.float32)).requires_grad_(True)
    return s, torch.softmax(s, dim=0)


def _entropy(w: Tensor) -> float:
    w = w.detach()
    return float(-(w * torch.log(w.clamp_min(torch.finfo(w.dtype).tiny))).sum())


def _scoring_grads(scores: Tensor, scoring_params: Mapping[str, Tensor] | None, grad_scores: Tensor,
                   group) -> Params:
    """Chain dL/ds into the scoring model's parameters by autograd (then summed over ranks)."""
    if not scoring_params:
        return {}
    local = D.local_rows(grad_scores, group).to(scores.dtype)
    with full_precision(scores.device):
        grads = torch.autograd.grad(scores, list(scoring_params.values()), local, allow_unused=True)
    out = {k: torch.zeros_like(p) if g is None else g for (k, p), g in zip(scoring_params.items(), grads)}
    return D.all_reduce_sum(out, group)


def _downstream_loss(loss: DownstreamLoss, loss_params: Params, image_features, labels, class_features,
                     log_tau) -> Tensor:
    return functional_call(loss, loss_params, (image_features, labels, class_features, log_tau.exp()))


def upstream_loss_grads(e_img: Tensor, e_txt: Tensor, log_tau: Tensor, w: Tensor) -> tuple[Tensor, tuple]:
    """Step 1 at the embedding level: L_up(e, w) and G(w) = (dL_up/de_img, dL_up/de_txt, dL_up/d log tau).

    The gradients keep a graph to ``w`` (create_graph on B x d tensors only). Everything here runs
    in float32 (float64) with autocast off, whatever the encoders ran in.
    """
    with full_precision(e_img.device):
        e_img, e_txt = e_img.detach().requires_grad_(True), e_txt.detach().requires_grad_(True)
        log_tau = log_tau.detach().requires_grad_(True)
        up = weighted_clip_loss(e_img, e_txt, log_tau.exp(), w)
        return up, torch.autograd.grad(up, [e_img, e_txt, log_tau], create_graph=True)


def downstream_loss_grads(loss: DownstreamLoss, loss_params: Params, img_e: Tensor, labels: Tensor, txt_e: Tensor,
                          log_tau: Tensor) -> tuple[Tensor, Params]:
    """L_down at the embedding level and its gradients: keys ``img``, ``txt``, ``tau`` (log tau) and
    ``("ds", name)`` for the loss's own parameters (``loss_params``, leaves); autocast off."""
    with full_precision(img_e.device):
        img_leaf, txt_leaf = img_e.detach().requires_grad_(True), txt_e.detach().requires_grad_(True)
        log_tau = log_tau.detach().requires_grad_(True)
        down = _downstream_loss(loss, loss_params, img_leaf, labels, txt_leaf, log_tau)
        return down, _grads(down, {"img": img_leaf, "txt": txt_leaf, "tau": log_tau,
                                   **{("ds", k): p for k, p in loss_params.items()}})


def meta_gradient(G: tuple[Tensor, Tensor, Tensor], tangents: tuple[Tensor, Tensor, Tensor], s: Tensor) -> Tensor:
    """Step 7: d/ds [<G_img(w), J u_img> + <G_txt(w), J u_txt> + G_tau(w) u_tau], autocast off.

    ``tangents`` (J_e u rows and u's logit-scale entry) are constants, taken in G's dtype.
    """
    with full_precision(s.device):
        inner = sum((g * t.to(g.dtype)).sum() for g, t in zip(G, tangents))
        return torch.autograd.grad(inner, s)[0]


# ------------------------------------------------------------------------------- public API


def flyt_step(
    model: nn.Module,
    params: Mapping[str, Tensor],
    adam_state: AdamState,
    scores: Tensor,
    upstream: tuple[Tensor, Tensor],
    downstream: tuple[Tensor, Tensor],
    class_tokens: Tensor,
    downstream_loss: DownstreamLoss,
    *,
    scoring_params: Mapping[str, Tensor] | None = None,
    cfg: AdamWConfig | None = None,
    method: str = "efficient",
    micro_batch_size: int | None = None,
    group=None,
    trim_text: bool = True,
) -> StepResult:
    """One FLYT bilevel step (pure: nothing passed in is modified).

    model: the open_clip model, used only as an architecture (``functional_call``).
    params: theta, name -> tensor, every entry trainable, including ``logit_scale`` (log tau).
    adam_state: (exp_avg, exp_avg_sq, step) for theta; the result holds the state after one step.
    scores: s for the upstream batch, shape (B,). If ``scoring_params`` is given, ``scores`` must be
        q_phi(features) computed with a graph to those parameters; their gradient is returned.
    upstream: (images, token ids) of the B upstream pairs.
    downstream: (images, labels) of the B' downstream examples.
    class_tokens: token ids of this step's K class prompts (one sampled template per class).
    downstream_loss: the loss module; its own parameters (a learned temperature) get a gradient too.
    cfg: the reference model's AdamW hyper-parameters (lr 5e-5, wd 0.2, betas (0.9, 0.98), eps 1e-6).
    method: ``"efficient"`` (forward mode, default) or ``"naive"`` (double backward, the oracle).
    micro_batch_size: chunk size for every encoder pass of the efficient method (None: no chunks).
    group: an optional torch.distributed process group (see ``distributed``). With several ranks each
        passes its own B/W upstream rows (and their scores) and B'/W downstream rows, the same
        class_tokens, params and state; every rank gets the global result (grad_scores for the
        gathered batch, rank order; grad_scoring summed over ranks; global metrics).
    trim_text: encode texts only up to the longest one's end token where that is exact (open_clip's
        CLIP: causal text tower pooled at that token; see ``encode_pairs``). The same result as the
        full context up to rounding; False runs the full context (for comparison).
    """
    cfg = AdamWConfig() if cfg is None else cfg
    downstream_params = dict(downstream_loss.named_parameters())
    if method == "naive":
        if micro_batch_size is not None or D.world_size(group) > 1:
            raise ValueError("the naive method supports neither micro-batching nor several ranks")
        return _naive_step(model, params, adam_state, scores, upstream, downstream, class_tokens,
                           downstream_loss, downstream_params, scoring_params, cfg, trim_text)
    if method != "efficient":
        raise ValueError(f"unknown method {method!r} (use 'efficient' or 'naive')")
    return _efficient_step(model, params, adam_state, scores, upstream, downstream, class_tokens,
                           downstream_loss, downstream_params, scoring_params, cfg, micro_batch_size,
                           group, trim_text)


# ------------------------------------------------------------------------------- naive (oracle)


def _naive_step(model, params, adam_state, scores, upstream, downstream, class_tokens, loss,
                loss_params, scoring_params, cfg, trim) -> StepResult:
    images, texts = upstream
    ds_images, labels = downstream
    theta = _leaves(params)
    ds = _leaves(loss_params)
    s, w = _weights(scores, theta[LOGIT_SCALE].dtype)
    with autodiff_kernels():
        img, txt = encode_pairs(model, theta, images, texts, trim_text=trim)
        up = weighted_clip_loss(img, txt, theta[LOGIT_SCALE].exp(), w)
        g = _grads(up, theta, create_graph=True)
        theta_plus, new_state = adamw_step(theta, g, adam_state, cfg)
        down = _downstream_loss(loss, ds, encode_images(model, theta_plus, ds_images), labels,
                                encode_texts(model, theta_plus, class_tokens, trim_text=trim), theta_plus[LOGIT_SCALE])
    grads = _grads(down, {"__scores__": s, **ds})
    grad_s = grads.pop("__scores__")
    return StepResult(
        theta_plus={k: v.detach() for k, v in theta_plus.items()},
        adam_state=AdamState({k: v.detach() for k, v in new_state.exp_avg.items()},
                             {k: v.detach() for k, v in new_state.exp_avg_sq.items()}, new_state.step),
        grad_scores=grad_s,
        grad_scoring=_scoring_grads(scores, scoring_params, grad_s, None),
        grad_downstream=grads,
        metrics={"up_loss": float(up.detach()), "down_loss": float(down.detach()), "weight_entropy": _entropy(w)},
    )


# ------------------------------------------------------------------------------- efficient


def _efficient_step(model, params, adam_state, scores, upstream, downstream, class_tokens, loss,
                    loss_params, scoring_params, cfg, micro_batch_size, group, trim) -> StepResult:
    theta = {k: v.detach() for k, v in params.items()}
    images, texts = upstream
    up_chunks = _chunks(images.shape[0], micro_batch_size)
    single = len(up_chunks) == 1 and D.world_size(group) == 1

    # 1. Upstream embeddings (whole batch), then the loss gradients at the embedding level, kept
    #    differentiable in w (create_graph on B x d tensors only).
    if single:
        leaves = _leaves(theta)
        img_graph, txt_graph = encode_pairs(model, leaves, images, texts, trim_text=trim)
        e_img, e_txt = img_graph.detach(), txt_graph.detach()
    else:
        with torch.no_grad():
            parts = [encode_pairs(model, theta, images[c], texts[c], trim_text=trim) for c in up_chunks]
        e_img = D.all_gather_cat(torch.cat([p[0] for p in parts]), group)
        e_txt = D.all_gather_cat(torch.cat([p[1] for p in parts]), group)
    s, w = _weights(D.all_gather_cat(scores.detach(), group), theta[LOGIT_SCALE].dtype)
    up, (G_img, G_txt, G_tau) = upstream_loss_grads(e_img, e_txt, theta[LOGIT_SCALE], w)

    # 2. g = J_e^T G (+ the direct logit-scale term), re-forwarding chunk by chunk if needed.
    local_G_img, local_G_txt = D.local_rows(G_img.detach(), group), D.local_rows(G_txt.detach(), group)
    if single:
        g = _grads((img_graph, txt_graph), leaves, (local_G_img, local_G_txt))
        del img_graph, txt_graph, leaves
    else:
        g = {k: torch.zeros_like(v) for k, v in theta.items()}
        for c in up_chunks:
            leaves = _leaves(theta)
            _accumulate(g, _grads(encode_pairs(model, leaves, images[c], texts[c], trim_text=trim), leaves,
                                  (local_G_img[c], local_G_txt[c])))
        g = D.all_reduce_sum(g, group)
    g[LOGIT_SCALE] = g[LOGIT_SCALE] + G_tau.detach()

    # 3. The reference update, no graph; Adam's state advances exactly once. Also d theta_plus / d g.
    theta_plus, new_state, deriv = adamw_step_with_derivative(theta, g, adam_state, cfg)

    # 4. v = grad of L_down at theta_plus (and the downstream loss's own parameters' gradient).
    down, v, grad_ds = _downstream_grads(model, theta_plus, downstream, class_tokens, loss, loss_params,
                                         micro_batch_size, group, trim)

    # 5. u = diag(d theta_plus / d g) v.
    u = {k: deriv[k] * v[k] for k in theta}
    del deriv

    # 6. J_e(theta) u, chunk by chunk (forward mode).
    ju_img, ju_txt = [], []
    with torch.no_grad(), autodiff_kernels():
        for c in up_chunks:
            _, (ji, jt) = jvp(lambda p, c=c: encode_pairs(model, p, images[c], texts[c], trim_text=trim), (theta,), (u,))
            ju_img.append(ji)
            ju_txt.append(jt)
    ju_img = D.all_gather_cat(torch.cat(ju_img), group)
    ju_txt = D.all_gather_cat(torch.cat(ju_txt), group)

    # 7. dL_down/ds = d/ds [<G(w), J_e u> + G_tau(w) u_tau] at the embedding level.
    grad_s = meta_gradient((G_img, G_txt, G_tau), (ju_img, ju_txt, u[LOGIT_SCALE]), s)

    return StepResult(
        theta_plus=theta_plus,
        adam_state=new_state,
        grad_scores=grad_s,
        grad_scoring=_scoring_grads(scores, scoring_params, grad_s, group),
        grad_downstream=grad_ds,
        metrics={"up_loss": float(up.detach()), "down_loss": float(down.detach()), "weight_entropy": _entropy(w)},
    )


def _one_text_pass(model, tokens: Tensor, micro_batch_size, trim: bool) -> bool:
    """Whether ``tokens`` may be encoded with a graph in one piece: at most ``micro_batch_size`` texts,
    or no more token positions (after trimming, where it applies) than that many full-length texts."""
    if not micro_batch_size or tokens.shape[0] <= micro_batch_size:
        return True
    n = tokens.shape[1]
    if trim and causal_text_tower(model):
        n = int(tokens.argmax(dim=-1).max()) + 1
    return tokens.shape[0] * n <= micro_batch_size * tokens.shape[1]


def _downstream_grads(model, theta_plus: Params, downstream, class_tokens, loss, loss_params,
                      micro_batch_size, group, trim) -> tuple[Tensor, Params, Params]:
    """L_down at theta_plus, its gradient v w.r.t. theta_plus, and w.r.t. the loss's parameters.

    Without chunks: one forward with a graph (class texts encoded once) and one backward. With
    chunks (GradCache): image embeddings without a graph, the loss and its embedding gradients on
    the whole (gathered) batch, then a re-forward + backward per chunk. The class texts are split
    into one contiguous share per rank (encoded there, all-gathered, and back-propagated only
    there), so the summed v counts each of them once. A share that fits one pass (see
    ``_one_text_pass``: K trimmed prompts take about as much memory as a micro-batch of full-length
    texts) is encoded once, with its graph, and back-propagated before the image chunks; a larger
    one goes through GradCache like the images (encoded twice).
    """
    ds_images, labels = downstream
    img_chunks = _chunks(ds_images.shape[0], micro_batch_size)
    ds_leaves = _leaves(loss_params)
    world, me = D.world_size(group), D.rank(group)
    if len(img_chunks) == 1 and world == 1 and _one_text_pass(model, class_tokens, micro_batch_size, trim):
        leaves = _leaves(theta_plus)
        down = _downstream_loss(loss, ds_leaves, encode_images(model, leaves, ds_images), labels,
                                encode_texts(model, leaves, class_tokens, trim_text=trim), leaves[LOGIT_SCALE])
        grads = _grads(down, {**{("theta", k): v for k, v in leaves.items()},
                              **{("ds", k): v for k, v in ds_leaves.items()}})
        v = {k: grads[("theta", k)] for k in leaves}
        return down.detach(), v, {k: grads[("ds", k)] for k in ds_leaves}

    # Class texts: each rank encodes (and later back-propagates) only its own contiguous share of
    # the K prompts, so the summed v counts every prompt once and the forward work is split too.
    share = -(-class_tokens.shape[0] // world)
    own = slice(min(me * share, class_tokens.shape[0]), min((me + 1) * share, class_tokens.shape[0]))
    own_tokens = class_tokens[own]
    one_pass = own_tokens.shape[0] > 0 and _one_text_pass(model, own_tokens, micro_batch_size, trim)
    own_chunks = _chunks(own_tokens.shape[0], micro_batch_size) if own_tokens.shape[0] and not one_pass else []
    if one_pass:
        txt_leaves = _leaves(theta_plus)
        txt_graph = encode_texts(model, txt_leaves, own_tokens, trim_text=trim)
    with torch.no_grad():
        img_e = D.all_gather_cat(torch.cat([encode_images(model, theta_plus, ds_images[c]) for c in img_chunks]),
                                 group)
        parts = [txt_graph.detach()] if one_pass else [encode_texts(model, theta_plus, own_tokens[c], trim_text=trim)
                                                       for c in own_chunks]
        if world > 1:
            pad = share - own_tokens.shape[0]
            if pad or not parts:
                parts.append((parts[0] if parts else img_e).new_zeros(pad, img_e.shape[1]))
            txt_e = D.all_gather_cat(torch.cat(parts), group)[:class_tokens.shape[0]]
        else:
            txt_e = torch.cat(parts)
    all_labels = D.all_gather_cat(labels, group)
    down, grads = downstream_loss_grads(loss, ds_leaves, img_e, all_labels, txt_e, theta_plus[LOGIT_SCALE])
    G_img = D.local_rows(grads["img"], group)
    G_txt = grads["txt"][own]

    v = {k: torch.zeros_like(p) for k, p in theta_plus.items()}
    if one_pass:  # first, so that its graph is freed before the image chunks build theirs
        _accumulate(v, _grads(txt_graph, txt_leaves, G_txt))
        del txt_graph, txt_leaves
    for c in img_chunks:
        leaves = _leaves(theta_plus)
        _accumulate(v, _grads(encode_images(model, leaves, ds_images[c]), leaves, G_img[c]))
    for c in own_chunks:
        leaves = _leaves(theta_plus)
        _accumulate(v, _grads(encode_texts(model, leaves, own_tokens[c], trim_text=trim), leaves, G_txt[c]))
    v = D.all_reduce_sum(v, group)
    v[LOGIT_SCALE] = v[LOGIT_SCALE] + grads["tau"]
    return down.detach(), v, {k: grads[("ds", k)] for k in ds_leaves}
