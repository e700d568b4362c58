"""Where a bf16 meta-gradient loses precision: each stage of the efficient bilevel step against float32.

    python bench/diagnose_bf16.py                       # CPU autocast to bfloat16, tiny model, 64/48, 10 classes
    python bench/diagnose_bf16.py --device cuda --arch ViT-B-32 --batch 256 --downstream-batch 192 --classes 1000

The efficient step (``flyt_datacomp.flyt.bilevel``) is replayed stage by stage with the library's own
pieces (encoders, losses, AdamW, JVP), on the inputs ``bench_bilevel.py`` builds (random reference
model, warmed Adam state, random scores, class prompts "a photo of a class{i}.", loss ``ce``):

    embed          upstream embeddings e (encoder forward)
    up_loss        L_up(e, w) and G(w) = dL_up/de, kept differentiable in w
    backward_g     g = J_e^T G (re-forward and backward through the encoders)
    down_encode    downstream image and class-text embeddings at theta_plus
    down_loss      L_down and its gradients at the embedding level
    down_backward  v = grad L_down (re-forward and backward through the encoders)
    jvp            J_e u (forward mode, math attention)
    inner          d/ds <G(w), J_e u> (the second-order backward at the embedding level)

Each stage runs either under autocast to bfloat16 (as the library runs when the caller enables
autocast) or with autocast disabled (float32). Three tables, all cosines to the float32 run:
(1) every stage in bf16: the cosine of each intermediate result (the error that reached it);
(2) only one stage in bf16: the final dL/ds (which stage alone costs precision);
(3) every stage but one in bf16: the final dL/ds (what computing that one stage in float32 buys).
Also the cosine of ``flyt_step`` itself under autocast to its float32 result (the library as a whole).
The AdamW step has no autocast ops (element-wise float32) and is not a stage. ``--json PATH`` writes
the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

STAGES = ("embed", "up_loss", "backward_g", "down_encode", "down_loss", "down_backward", "jvp", "inner")


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def _flat(tensors) -> torch.Tensor:
    if isinstance(tensors, dict):
        tensors = list(tensors.values())
    return torch.cat([t.detach().double().flatten().cpu() for t in tensors])


def _embedding_level():
    """The library's embedding-level stages (upstream loss gradients, downstream loss gradients, the
    meta-gradient); for a version without these helpers, the inline code it had (run as it ran:
    autocast stays on for the loss and its autograd calls)."""
    from flyt_datacomp.flyt import bilevel

    if hasattr(bilevel, "meta_gradient"):
        return bilevel.upstream_loss_grads, bilevel.downstream_loss_grads, bilevel.meta_gradient
    from flyt_datacomp.flyt.losses import weighted_clip_loss

    def upstream_loss_grads(e_img, e_txt, log_tau, w):
        e_img, e_txt = e_img.detach().requires_grad_(True), e_txt.detach().requires_grad_(True)
        log_tau = log_tau.detach().requires_grad_(True)
        up = weighted_clip_loss(e_img, e_txt, log_tau.exp(), w)
        return up, torch.autograd.grad(up, [e_img, e_txt, log_tau], create_graph=True)

    def downstream_loss_grads(loss, loss_params, img_e, labels, txt_e, log_tau):
        img_leaf, txt_leaf = img_e.detach().requires_grad_(True), txt_e.detach().requires_grad_(True)
        down = loss(img_leaf, labels, txt_leaf, log_tau.exp())
        d_img, d_txt = torch.autograd.grad(down, [img_leaf, txt_leaf])
        return down, {"img": d_img, "txt": d_txt}

    def meta_gradient(G, tangents, s):
        inner = sum((g * t).sum() for g, t in zip(G, tangents))
        return torch.autograd.grad(inner, s)[0]

    return upstream_loss_grads, downstream_loss_grads, meta_gradient


def replay(inputs: dict, loss, bf16: set[str], device: torch.device) -> dict[str, torch.Tensor]:
    """The efficient step without micro-batches, each stage in bf16 autocast iff it is in ``bf16``.

    Returns the intermediate results (flattened, float64, on the CPU) and ``grad_s``.
    """
    from torch.func import jvp

    from flyt_datacomp.flyt.adamw import adamw_step_with_derivative
    from flyt_datacomp.flyt.bilevel import (
        LOGIT_SCALE,
        _grads,
        _leaves,
        _weights,
        autodiff_kernels,
        encode_images,
        encode_pairs,
        encode_texts,
    )

    upstream_loss_grads, downstream_loss_grads, meta_gradient = _embedding_level()

    def ctx(stage: str):
        if stage in bf16:
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return torch.autocast(device.type, enabled=False)

    model, theta = inputs["model"], {k: v.detach() for k, v in inputs["params"].items()}
    images, texts = inputs["upstream"]
    ds_images, labels = inputs["downstream"]
    class_tokens = inputs["class_tokens"]
    out: dict[str, torch.Tensor] = {}

    with ctx("embed"), torch.no_grad():
        e_img, e_txt = encode_pairs(model, theta, images, texts)
    out["embed"] = _flat([e_img, e_txt])
    with ctx("up_loss"):
        s, w = _weights(inputs["scores"], theta[LOGIT_SCALE].dtype)
        _, (G_img, G_txt, G_tau) = upstream_loss_grads(e_img, e_txt, theta[LOGIT_SCALE], w)
    out["G"] = _flat([G_img, G_txt, G_tau])
    with ctx("backward_g"):
        leaves = _leaves(theta)
        g = _grads(encode_pairs(model, leaves, images, texts), leaves, (G_img.detach(), G_txt.detach()))
    g[LOGIT_SCALE] = g[LOGIT_SCALE] + G_tau.detach()
    out["g"] = _flat(g)
    theta_plus, _, deriv = adamw_step_with_derivative(theta, g, inputs["state"], inputs["cfg"])
    out["update"] = _flat({k: theta_plus[k] - theta[k] for k in theta})

    with ctx("down_encode"), torch.no_grad():
        img_e = encode_images(model, theta_plus, ds_images)
        txt_e = encode_texts(model, theta_plus, class_tokens)
    out["down_embed"] = _flat([img_e, txt_e])
    with ctx("down_loss"):
        _, grads = downstream_loss_grads(loss, {}, img_e, labels, txt_e, theta_plus[LOGIT_SCALE])
        d_img, d_txt = grads["img"], grads["txt"]
    out["down_G"] = _flat([d_img, d_txt])
    with ctx("down_backward"):
        leaves = _leaves(theta_plus)
        v = _grads(encode_images(model, leaves, ds_images), leaves, d_img)
        leaves = _leaves(theta_plus)
        for k, part in _grads(encode_texts(model, leaves, class_tokens), leaves, d_txt).items():
            v[k] = v[k] + part
    out["v"] = _flat(v)
    u = {k: deriv[k] * v[k] for k in theta}
    out["u"] = _flat(u)
    with ctx("jvp"), torch.no_grad(), autodiff_kernels():
        _, (ju_img, ju_txt) = jvp(lambda p: encode_pairs(model, p, images, texts), (theta,), (u,))
    out["ju"] = _flat([ju_img, ju_txt])
    with ctx("inner"):
        grad_s = meta_gradient((G_img, G_txt, G_tau), (ju_img, ju_txt, u[LOGIT_SCALE]), s)
    out["grad_s"] = _flat([grad_s])
    return out


def library_cosine(inputs: dict, loss, device: torch.device) -> float:
    """cos(flyt_step under autocast to bf16, flyt_step in float32): the library as a whole."""
    from flyt_datacomp.flyt.bilevel import flyt_step

    results = []
    for autocast in (True, False):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            r = flyt_step(inputs["model"], inputs["params"], inputs["state"], inputs["scores"], inputs["upstream"],
                          inputs["downstream"], inputs["class_tokens"], loss, cfg=inputs["cfg"])
        results.append(r.grad_scores.detach().double().cpu())
    return _cos(results[0], results[1])


def main(argv=None) -> int:
    import bench_bilevel

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cpu")
    ap.add_argument("--arch", default=None, help="open_clip architecture or 'tiny' (default tiny on cpu, ViT-B-32 on cuda)")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--downstream-batch", type=int, default=48)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--warmup-batch", type=int, default=256)
    ap.add_argument("--caption-words", type=int, nargs=2, default=(8, 8), metavar=("MIN", "MAX"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            ap.error("--device cuda but CUDA is not available")
        torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
        torch.backends.cudnn.allow_tf32 = False
    else:
        torch.set_num_threads(1)
    args.arch = args.arch or ("ViT-B-32" if device.type == "cuda" else "tiny")
    args.dtype = "fp32"  # the warm-up of the Adam state
    t0 = time.perf_counter()
    inputs = bench_bilevel.build_inputs(args, device)

    from flyt_datacomp.flyt.losses import make_downstream_loss

    loss = make_downstream_loss("ce").to(device)
    ref = replay(inputs, loss, set(), device)
    every = replay(inputs, loss, set(STAGES), device)
    only = {stage: _cos(replay(inputs, loss, {stage}, device)["grad_s"], ref["grad_s"]) for stage in STAGES}
    but = {stage: _cos(replay(inputs, loss, set(STAGES) - {stage}, device)["grad_s"], ref["grad_s"]) for stage in STAGES}
    library = library_cosine(inputs, loss, device)
    per_stage = {k: _cos(every[k], ref[k]) for k in ref}

    print(f"# bf16 diagnosis: {args.arch} on {device.type}, B {args.batch}, B' {args.downstream_batch}, "
          f"K {args.classes}, torch {torch.__version__} ({time.perf_counter() - t0:.1f} s)")
    print("(1) every stage in bf16, cosine of each result to float32:")
    for k, c in per_stage.items():
        print(f"    {k:<14} {c:.6f}")
    print("(2) only this stage in bf16 / (3) every stage but this one in bf16, cosine of dL/ds to float32:")
    for stage in STAGES:
        print(f"    {stage:<14} {only[stage]:.6f}   {but[stage]:.6f}")
    print(f"flyt_step under autocast to bf16 vs float32: cosine {library:.6f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "per_stage": per_stage, "only_bf16": only,
                                               "all_but_bf16": but, "library_cosine": library}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
