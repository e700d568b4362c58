"""Time and measure the FLYT bilevel step: efficient (forward-mode) vs naive (double backward).

    python bench/bench_bilevel.py                                   # CPU: tiny model, 64/48, 10 classes
    python bench/bench_bilevel.py --device cuda --arch ViT-B-32 --batch 512 --downstream-batch 384 \\
        --classes 1000 --dtype bf16 --plain
    python bench/bench_bilevel.py --device cuda --arch ViT-B-32 --batch 4096 --downstream-batch 3072 \\
        --classes 1000 --dtype bf16 --micro-batch 512 --caption-words 4 70 \\
        --variants full-context default micro=1024

Both methods run in the same process on the same inputs: a randomly initialised reference model
(``create_clip``), random images at the model's image size, tokenised random captions, random
labels, K class prompts "a photo of a class{i}.", a warmed-up Adam state (2 plain CLIP steps on
random batches, so the meta-gradient is not the zero-state artefact), downstream loss ``ce``, random
scores. Captions have ``--caption-words MIN MAX`` random words (default 8 8): with a wide range
nearly every micro-batch holds a caption that fills the 77-token context, as web captions do, so
trimming the padding (below) saves little on the upstream texts and its measured gain is mostly the
class prompts' (about 12 tokens each); short captions would gain more. Each method: 1 warm-up
call, then the median of ``--repeats`` timed calls (synchronised on CUDA). Memory: on CUDA the
peak of ``torch.cuda.max_memory_allocated`` (reset before each method), absolute and above what
was allocated before the method ran; on the CPU the peak resident set size above the level before
the method ran, sampled every millisecond by a thread (approximate).

``--micro-batch N`` chunks every encoder pass of the efficient step (upstream pairs, downstream
images and, unless they fit one pass, the K class texts) into N rows; the naive method supports no chunks and always runs
the whole batch (it may run out of memory: reported as OOM). With ``--dtype bf16`` the efficient
step's dL/ds is also computed in float32 (same inputs, no autocast) and their cosine similarity
reported (``--no-fp32-check`` skips that). ``--dtype tf32`` runs float32 with TF32 matrix products
and convolutions in the encoders (``precision tf32`` of training); its cosine check is against true
float32. ``--plain`` also times one plain CLIP training step (forward + backward + torch.optim.AdamW,
whole batch) as a reference point. ``--json PATH`` writes the numbers.

``--variants SPEC ...`` times the efficient step once per SPEC on the same inputs instead (no naive
run, no check), each against the first SPEC: comma-separated settings out of ``full-context`` (the
texts over the whole context, no trimming: the step before that option, with the class prompts
encoded twice when micro-batched), ``micro=N`` (micro-batch N instead of ``--micro-batch``),
``tf32`` (``--dtype fp32`` becomes tf32) and ``default`` (nothing changed). The table gives each
variant's time and peak memory, their ratio to the first, and the cosine of its dL/ds to the first's.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import threading
import time

import torch

OOM = "OOM"


# ----------------------------------------------------------------------------- measurement


class _RssPeak:
    """Peak resident set size above the level at entry (bytes), sampled by a thread (Linux)."""

    def __init__(self, interval: float = 0.001):
        self.interval = interval
        self.peak = 0

    @staticmethod
    def _rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):  # pragma: no cover - non-Linux
            return 0

    def __enter__(self):
        gc.collect()
        self.base = self._rss()
        self.peak = self.base
        self._stop = threading.Event()

        def sample():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())
        return False

    @property
    def delta(self) -> int:
        return self.peak - self.base


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    else:  # hand freed heap memory back to the OS so that the next RSS baseline is meaningful
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # pragma: no cover - not glibc
            pass


def measure(fn, device: torch.device, repeats: int) -> dict:
    """1 warm-up call + ``repeats`` timed calls of ``fn``; times, peak memory, the last result."""
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    out: dict = {"times": []}
    _free(device)
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        tracker = contextlib.nullcontext()
    else:
        tracker = _RssPeak()
    result = None
    try:
        with tracker:
            for i in range(repeats + 1):
                result = None
                sync()
                start = time.perf_counter()
                result = fn()
                sync()
                if i:  # the first call is the warm-up
                    out["times"].append(time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - OOM is a result, anything else is re-raised
        if not _is_oom(exc):
            raise
        del exc
        result = None
        out["oom"] = True
    if cuda:
        out["peak_bytes"] = torch.cuda.max_memory_allocated(device)
        out["delta_bytes"] = out["peak_bytes"] - base
    else:
        out["peak_bytes"] = None
        out["delta_bytes"] = tracker.delta
    out["median_s"] = statistics.median(out["times"]) if out["times"] and not out.get("oom") else None
    out["result"] = result
    _free(device)
    return out


# ----------------------------------------------------------------------------- inputs


def _image_size(model) -> tuple[int, int]:
    size = model.visual.image_size
    return (size, size) if isinstance(size, int) else tuple(size)


def build_inputs(args, device: torch.device) -> dict:
    from flyt_datacomp.clip_models import TINY_CLIP_CONFIG, create_clip, tokenizer
    from flyt_datacomp.flyt.adamw import AdamWConfig, warmup_adam_state

    arch = TINY_CLIP_CONFIG if args.arch == "tiny" else args.arch
    model = create_clip(arch, seed=args.seed).to(device)
    tok = tokenizer(arch)
    gen = torch.Generator().manual_seed(args.seed)
    h, w = _image_size(model)
    words = ["a", "photo", "of", "the", "red", "blue", "small", "large", "dog", "cat", "car", "tree",
             "house", "on", "in", "with", "and", "street", "beach", "person"]

    low, high = getattr(args, "caption_words", (8, 8))

    def captions(n):
        lengths = torch.randint(low, high + 1, (n,), generator=gen).tolist()
        return tok([" ".join(words[i] for i in torch.randint(len(words), (k,), generator=gen).tolist())
                    for k in lengths]).to(device)

    def images(n):
        return torch.randn(n, 3, h, w, generator=gen).to(device)

    cfg = AdamWConfig()
    warm_batch = min(args.batch, args.warmup_batch)
    with _autocast(device, args.dtype):
        params, state = warmup_adam_state(model, [(images(warm_batch), captions(warm_batch)) for _ in range(2)],
                                          cfg=cfg)
    _free(device)
    class_tokens = tok([f"a photo of a class{i}." for i in range(args.classes)]).to(device)
    return dict(
        model=model,
        params={k: v.detach() for k, v in params.items()},
        state=state,
        cfg=cfg,
        scores=(0.5 * torch.randn(args.batch, generator=gen)).to(device),
        upstream=(images(args.batch), captions(args.batch)),
        downstream=(images(args.downstream_batch),
                    torch.randint(args.classes, (args.downstream_batch,), generator=gen).to(device)),
        class_tokens=class_tokens,
    )


def _autocast(device: torch.device, dtype: str):
    if dtype == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if dtype == "tf32" and device.type == "cuda":
        from flyt_datacomp.flyt.bilevel import tf32_matmuls

        return tf32_matmuls(True)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- steps


def bilevel_fn(inputs, method: str, dtype: str, device: torch.device, micro_batch: int | None, trim_text: bool = True):
    from flyt_datacomp.flyt.bilevel import flyt_step
    from flyt_datacomp.flyt.losses import make_downstream_loss

    loss = make_downstream_loss("ce").to(device)

    def run():
        with _autocast(device, dtype):
            result = flyt_step(inputs["model"], inputs["params"], inputs["state"], inputs["scores"],
                               inputs["upstream"], inputs["downstream"], inputs["class_tokens"], loss,
                               cfg=inputs["cfg"], method=method,
                               micro_batch_size=micro_batch if method == "efficient" else None, trim_text=trim_text)
        # Keep only what is compared; theta_plus / state would double the memory between calls.
        return {"grad_scores": result.grad_scores.detach().float().cpu(), "metrics": result.metrics}

    return run


def plain_fn(inputs, dtype: str, device: torch.device):
    from flyt_datacomp.flyt.losses import clip_loss

    model = inputs["model"]
    model.load_state_dict(inputs["params"], strict=False)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.2, betas=(0.9, 0.98), eps=1e-6)
    images, texts = inputs["upstream"]

    def run():
        opt.zero_grad(set_to_none=True)
        with _autocast(device, dtype):
            img, txt, tau = model(images, texts)
            loss = clip_loss(img, txt, tau)
        loss.backward()
        opt.step()
        return {"loss": float(loss.detach())}

    return run, opt


# ----------------------------------------------------------------------------- report


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().flatten(), b.double().flatten()
    return float(a @ b / (a.norm() * b.norm()).clamp_min(1e-300))


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.2f} GiB"


def _mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f} MiB"


def parse_variant(spec: str, args) -> dict:
    """``full-context``, ``micro=N``, ``tf32``, ``default``, comma-separated (see the module docstring)."""
    variant = {"trim_text": True, "micro_batch": args.micro_batch, "dtype": args.dtype}
    for part in filter(None, spec.split(",")):
        if part == "full-context":
            variant["trim_text"] = False
        elif part.startswith("micro="):
            variant["micro_batch"] = int(part.split("=", 1)[1]) or None
        elif part == "tf32":
            if args.dtype == "bf16":
                raise SystemExit("variant tf32: use --dtype fp32 (under bf16 autocast no encoder work is float32)")
            variant["dtype"] = "tf32"
        elif part != "default":
            raise SystemExit(f"unknown variant setting {part!r} (full-context, micro=N, tf32, default)")
    return variant


def run_variants(args, inputs, device: torch.device, write=None) -> dict:
    """The efficient step once per ``--variants`` SPEC, same inputs; ratios and cosines to the first.

    ``write(summary)`` is called after each variant (so a run cut short still leaves its rows).
    """
    gpu = device.type == "cuda"
    mem_key = "peak_bytes" if gpu else "delta_bytes"
    summary = {"args": vars(args), "device": torch.cuda.get_device_name(device) if gpu else "cpu", "variants": {}}
    rows, first = {}, None
    for spec in args.variants:
        v = parse_variant(spec, args)
        row = measure(bilevel_fn(inputs, "efficient", v["dtype"], device, v["micro_batch"], v["trim_text"]),
                      device, args.repeats)
        row["note"] = (f"{v['dtype']}, micro-batch {v['micro_batch'] or 'none'}, "
                       f"{'trimmed texts' if v['trim_text'] else 'full context'}")
        first = row if first is None else first
        ok = not row.get("oom") and not first.get("oom")
        row["time_ratio"] = row["median_s"] / first["median_s"] if ok else None
        row["memory_ratio"] = row[mem_key] / first[mem_key] if first[mem_key] and row[mem_key] is not None else None
        row["cosine_first"] = _cos(row["result"]["grad_scores"], first["result"]["grad_scores"]) if ok else None
        rows[spec] = row
        summary["variants"][spec] = {k: vv for k, vv in row.items() if k != "result"}
        print(f"# {spec} done ({OOM if row.get('oom') else row['median_s']})", flush=True)
        if write is not None:
            write(summary)
    print()
    print(f"{'variant':<28} {'median s':>9} {'x first':>8} {'peak mem':>10} {'x first':>8} {'cos first':>10}  notes")
    for spec, row in rows.items():
        t_ratio, m_ratio, cos = row["time_ratio"], row["memory_ratio"], row["cosine_first"]
        med = OOM if row.get("oom") else f"{row['median_s']:.4f}"
        mem = _gib(row["peak_bytes"]) if gpu else _mib(row["delta_bytes"])
        print(f"{spec:<28} {med:>9} {'-' if t_ratio is None else f'{t_ratio:.3f}':>8} {mem:>10} "
              f"{'-' if m_ratio is None else f'{m_ratio:.3f}':>8} {'-' if cos is None else f'{cos:.6f}':>10}  {row['note']}")
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda if available")
    ap.add_argument("--arch", default=None, help="open_clip architecture or 'tiny' (default: ViT-B-32 on "
                    "cuda, tiny on cpu)")
    ap.add_argument("--batch", type=int, default=None, help="upstream batch B (default 512 cuda / 64 cpu)")
    ap.add_argument("--downstream-batch", type=int, default=None, help="B' (default 384 cuda / 48 cpu)")
    ap.add_argument("--classes", type=int, default=None, help="K class prompts (default 1000 cuda / 10 cpu)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", choices=["bf16", "fp32", "tf32"], default=None, help="default bf16 cuda / fp32 cpu")
    ap.add_argument("--micro-batch", type=int, default=None, help="chunk size of the efficient step")
    ap.add_argument("--plain", action="store_true", help="also time a plain CLIP training step")
    ap.add_argument("--skip-naive", action="store_true", help="do not run the naive method")
    ap.add_argument("--no-fp32-check", action="store_true", help="skip the float32 cosine check")
    ap.add_argument("--warmup-batch", type=int, default=256, help="batch of the 2 Adam warm-up steps")
    ap.add_argument("--caption-words", type=int, nargs=2, default=(8, 8), metavar=("MIN", "MAX"),
                    help="random words per caption (default 8 8)")
    ap.add_argument("--variants", nargs="+", default=None, help="time the efficient step per variant (see above)")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads on the cpu (default 1: "
                    "on a shared 2-core machine more threads made the tiny step 10x slower)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)

    if args.variants and len(set(args.variants)) != len(args.variants):
        ap.error("--variants: each SPEC once")
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but CUDA is not available")
    gpu = device.type == "cuda"
    args.arch = args.arch or ("ViT-B-32" if gpu else "tiny")
    args.batch = args.batch or (512 if gpu else 64)
    args.downstream_batch = args.downstream_batch or (384 if gpu else 48)
    args.classes = args.classes or (1000 if gpu else 10)
    args.dtype = args.dtype or ("bf16" if gpu else "fp32")
    if not gpu or args.threads:
        torch.set_num_threads(args.threads or 1)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # a true float32 reference
        torch.backends.cudnn.allow_tf32 = False

    name = torch.cuda.get_device_name(device) if gpu else f"cpu ({torch.get_num_threads()} threads)"
    print(f"# bilevel step bench: {name}, torch {torch.__version__}")
    print(f"# arch {args.arch}, B {args.batch}, B' {args.downstream_batch}, K {args.classes}, dtype {args.dtype}, "
          f"micro-batch {args.micro_batch or 'none'}, repeats {args.repeats} (+1 warm-up), loss ce")
    t0 = time.perf_counter()
    inputs = build_inputs(args, device)
    n_params = sum(p.numel() for p in inputs["params"].values())
    print(f"# inputs + warmed Adam state ready in {time.perf_counter() - t0:.1f} s "
          f"({n_params / 1e6:.2f}M parameters)")
    sys.stdout.flush()

    if args.variants:
        def write(summary):
            if args.json:
                with open(args.json, "w") as fh:
                    json.dump(summary, fh, indent=2, default=str)

        write(run_variants(args, inputs, device, write))
        return 0

    rows: dict[str, dict] = {}
    micro_note = f"micro-batch {args.micro_batch}" if args.micro_batch else "whole batch"
    rows["efficient"] = measure(bilevel_fn(inputs, "efficient", args.dtype, device, args.micro_batch), device,
                                args.repeats)
    rows["efficient"]["note"] = f"{args.dtype}, {micro_note}"
    print(f"# efficient done ({rows['efficient']['median_s']})", flush=True)
    if not args.skip_naive:
        rows["naive"] = measure(bilevel_fn(inputs, "naive", args.dtype, device, None), device, args.repeats)
        rows["naive"]["note"] = f"{args.dtype}, whole batch (no micro-batching)"
        print(f"# naive done ({rows['naive']['median_s'] if not rows['naive'].get('oom') else OOM})", flush=True)
    fp32 = None
    if args.dtype != "fp32" and not args.no_fp32_check:
        fp32 = measure(bilevel_fn(inputs, "efficient", "fp32", device, args.micro_batch), device, 0)
        fp32["note"] = f"fp32, {micro_note} (1 call, for the cosine check)"
        rows["efficient fp32 (check)"] = fp32
    if args.plain:
        run, opt = plain_fn(inputs, args.dtype, device)
        rows["plain CLIP step"] = measure(run, device, args.repeats)
        rows["plain CLIP step"]["note"] = f"{args.dtype}, fwd+bwd+AdamW, whole batch"
        del opt

    # ------------------------------------------------------------------ table
    mem_head = "peak alloc" if gpu else "peak RSS +"
    print()
    print(f"{'method':<24} {'median s':>9} {'min s':>8} {mem_head:>12} {'above base':>12}  notes")
    for key, row in rows.items():
        if row.get("oom"):
            med, mn = OOM, OOM
        elif row["times"]:
            med, mn = f"{row['median_s']:.4f}", f"{min(row['times']):.4f}"
        else:
            med, mn = "-", "-"
        peak = _gib(row["peak_bytes"]) if gpu else _mib(row["delta_bytes"])
        above = _gib(row["delta_bytes"]) if gpu else "-"
        print(f"{key:<24} {med:>9} {mn:>8} {peak:>12} {above:>12}  {row['note']}")

    summary: dict = {"args": vars(args), "device": name}
    eff, naive = rows["efficient"], rows.get("naive")
    print()
    if naive is not None and not naive.get("oom") and not eff.get("oom"):
        time_ratio = eff["median_s"] / naive["median_s"]
        mem_key = "peak_bytes" if gpu else "delta_bytes"
        mem_ratio = eff[mem_key] / naive[mem_key] if naive[mem_key] else float("nan")
        cos_naive = _cos(eff["result"]["grad_scores"], naive["result"]["grad_scores"])
        print(f"time   efficient / naive: {time_ratio:.3f}")
        print(f"memory efficient / naive: {mem_ratio:.3f}  ({'peak allocated' if gpu else 'peak RSS increase'})")
        print(f"cosine(dL/ds efficient, dL/ds naive), both {args.dtype}: {cos_naive:.6f}")
        dl = abs(eff["result"]["metrics"]["down_loss"] - naive["result"]["metrics"]["down_loss"])
        print(f"|down_loss efficient - naive|: {dl:.3e}")
        summary.update(time_ratio=time_ratio, memory_ratio=mem_ratio, cosine_naive=cos_naive)
    elif naive is not None:
        print(f"time / memory ratios: n/a (naive: {OOM if naive.get('oom') else 'ok'}, "
              f"efficient: {OOM if eff.get('oom') else 'ok'})")
    if fp32 is not None and fp32["result"] is not None and eff["result"] is not None:
        cos32 = _cos(eff["result"]["grad_scores"], fp32["result"]["grad_scores"])
        print(f"cosine(dL/ds efficient {args.dtype}, dL/ds efficient fp32): {cos32:.6f}")
        summary["cosine_fp32"] = cos32
        if naive is not None and naive["result"] is not None:
            summary["cosine_naive_fp32"] = _cos(naive["result"]["grad_scores"], fp32["result"]["grad_scores"])
            print(f"cosine(dL/ds naive {args.dtype}, dL/ds efficient fp32): {summary['cosine_naive_fp32']:.6f}")
    if "plain CLIP step" in rows and not rows["plain CLIP step"].get("oom") and not eff.get("oom"):
        ratio = eff["median_s"] / rows["plain CLIP step"]["median_s"]
        print(f"time   efficient / plain CLIP step: {ratio:.2f}")
        summary["time_ratio_plain"] = ratio

    if args.json:
        summary["rows"] = {k: {kk: vv for kk, vv in v.items() if kk != "result"} for k, v in rows.items()}
        with open(args.json, "w") as fh:
            json.dump(summary, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
