"""Check that SCS on a torch device draws from the same distribution as the CPU path.

    python bench/check_scs_devices.py --device cuda          # on a GPU machine
    python bench/check_scs_devices.py --device cpu --runs 300   # the torch path on a CPU device

The two paths take different random routes (the CPU path is exact rejection sampling in numpy, a
device runs one Gumbel-top-k per round in torch, float32 on CUDA), so their outputs differ for a
seed; what must agree is the distribution. On a small pool (``--size`` items, scores with a wide
spread, several rounds so the repetition penalty matters) each path is run ``--runs`` times with
different seeds; the per-item mean counts are compared with a two-sample z-score per item (the
variance estimated from the runs). Passes when no item's |z| exceeds ``--max-z`` (default 5:
with 60 items, a false alarm has odds of about 1 in 30,000) and the total counts are exact.
Exits 1 on failure. ``--json PATH`` writes the numbers. ``--threshold`` makes every round of the
device path select by its threshold (``sampling._top_indices``), which on so small a pool would
otherwise be a plain top-k; the numbers record how many rounds did, and how many fell back.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="the torch device of the path under test")
    ap.add_argument("--size", type=int, default=60)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--num-samples", type=int, default=200)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--max-z", type=float, default=5.0)
    ap.add_argument("--threshold", action="store_true", help="force the threshold selection on the device path")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    if any(str(d).startswith("cuda") for d in [args.device]) and not torch.cuda.is_available():
        ap.error("a cuda device was asked for but CUDA is not available here")

    from flyt_datacomp import sampling
    from flyt_datacomp.sampling import _scs_torch, scs

    if args.threshold:
        sampling._TOPK_SAMPLE, sampling._TOPK_MAX_FRACTION = 1, 1.0

    scores = np.random.default_rng(7).normal(scale=1.5, size=args.size)
    params = dict(alpha=args.alpha, group_size=args.group_size, num_samples=args.num_samples)
    t0 = time.perf_counter()
    cpu = np.stack([scs(scores, seed=1_000_000 + r, device="cpu", **params) for r in range(args.runs)])
    t_cpu = time.perf_counter() - t0
    t0 = time.perf_counter()
    st: dict = {}
    dev = np.stack([_scs_torch(scores, seed=r, device=args.device, stats=st, **params) for r in range(args.runs)])
    t_dev = time.perf_counter() - t0

    exact = bool((cpu.sum(1) == args.num_samples).all() and (dev.sum(1) == args.num_samples).all())
    se = np.sqrt(cpu.var(0, ddof=1) / args.runs + dev.var(0, ddof=1) / args.runs)
    diff = dev.mean(0) - cpu.mean(0)
    z = np.divide(diff, se, out=np.zeros_like(diff), where=se > 0)
    degenerate = (se == 0) & (diff != 0)  # an item always drawn the same number of times by one path only
    worst = int(np.argmax(np.abs(z)))
    ok = exact and not degenerate.any() and float(np.abs(z).max()) <= args.max_z
    result = {"device": args.device, "size": args.size, **params, "runs": args.runs, "exact_totals": exact,
              "max_abs_z": float(np.abs(z).max()), "worst_item": worst, "worst_means": [float(cpu.mean(0)[worst]),
              float(dev.mean(0)[worst])], "max_mean_count": float(cpu.mean(0).max()), "seconds_cpu": t_cpu,
              "seconds_device": t_dev, "threshold_rounds": st["threshold_rounds"],
              "fallbacks": st["fallbacks"], "rounds": st["rounds"], "passed": ok}
    print(f"SCS on {args.device} vs the CPU path, {args.runs} runs each, M {args.size}, G {args.group_size}, "
          f"N {args.num_samples}, alpha {args.alpha}: max |z| {result['max_abs_z']:.2f} (item {worst}: mean count "
          f"{result['worst_means'][0]:.3f} cpu, {result['worst_means'][1]:.3f} {args.device}); totals exact: {exact}; "
          f"threshold rounds {st['threshold_rounds']} of {st['rounds']} ({st['fallbacks']} fell back); "
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
