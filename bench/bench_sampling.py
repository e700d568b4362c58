"""Time Soft Cap Sampling on the CPU against the reference-style implementation.

    python bench/bench_sampling.py                      # M = N = 128,000,000, G = 100,000, alpha 0.15
    python bench/bench_sampling.py --size 12800000 --group-size 10000
    python bench/bench_sampling.py --devices cpu cuda --ref-rounds 0   # the CUDA path, same run
    python bench/bench_sampling.py --devices cuda --compare-old --ref-rounds 0
    python bench/bench_sampling.py --size 1000000 --group-size 10000 --devices torch-cpu --compare-old --ref-rounds 0

Our ``scs`` runs the whole job on each of ``--devices`` (default the CPU path alone; ``cuda`` is
the Gumbel-top-k path in torch, timed with the transfer of the scores and counts included;
``torch-cpu`` is that torch path on CPU tensors). ``--compare-old`` also runs, on each torch device
and in the same process, the torch path as it was before its threshold selection (``old_scs_torch``
below: a full ``torch.topk`` per round, nine passes to make the keys) and reports old / new time and
whether the counts are identical (on CPU tensors they should be: the same uniforms, the same keys up
to rounding, the same selection; on CUDA the new path draws ``exponential_`` instead, another random
path to the same distribution).
The reference style -- softmax over the pool and ``rng.choice(M, G, replace=False, p=w)`` every round
-- runs for ``--ref-rounds`` rounds in the same process and is extrapolated to all rounds. Peak
RSS is read with ``resource.getrusage`` before the reference runs (ours alone) and at the end (the
whole process).
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import time

import numpy as np


def _rss_gib() -> float:
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20


def _current_rss_gib() -> float:
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * resource.getpagesize() / 2**30
    except OSError:  # pragma: no cover - non-Linux
        return float("nan")


def reference_round(scores: np.ndarray, counts: np.ndarray, alpha: float, g: int, rng) -> None:
    logits = scores.astype(np.float64) - alpha * counts
    logits -= logits.max()
    w = np.exp(logits, out=logits)
    w /= w.sum()
    idx = rng.choice(scores.size, g, replace=False, p=w)
    counts[idx] += 1


def old_scs_torch(s: np.ndarray, alpha: float, group_size: int, num_samples: int, seed: int | None, device,
                  dtype=None) -> np.ndarray:
    """The torch SCS path before its threshold selection (for the time ratio): a full top-k per round."""
    import torch

    device = torch.device(device)
    if dtype is None:
        dtype = torch.float32 if device.type == "cuda" else torch.float64
    m = s.size
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    st = torch.from_numpy(np.array(s, copy=True)).to(device=device, dtype=dtype)
    counts = torch.zeros(m, dtype=torch.int64, device=device)
    keys = torch.empty(m, dtype=dtype, device=device)
    tiny = torch.finfo(dtype).tiny
    drawn = 0
    while drawn < num_samples:
        g = min(group_size, num_samples - drawn)
        torch.rand(m, generator=gen, dtype=dtype, device=device, out=keys)
        keys.clamp_(min=tiny).log_().neg_().log_().neg_()
        keys.add_(st)
        keys.add_(counts.to(dtype), alpha=-alpha)
        idx = torch.topk(keys, g, sorted=False).indices
        counts[idx] += 1
        drawn += g
    return counts.cpu().numpy().astype(np.int64, copy=False)


def _run(kind: str, scores: np.ndarray, alpha: float, g: int, n: int, seed: int, old: bool = False) -> dict:
    """One whole SCS job: ``kind`` cpu (numpy), cuda or torch-cpu (the torch path); ``old``: old_scs_torch."""
    from flyt_datacomp.sampling import _scs_torch, scs

    if kind == "cuda":
        import torch

        torch.zeros(1, device="cuda")  # CUDA context creation is not part of the sampling
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    if old:
        counts = old_scs_torch(scores, alpha, g, n, seed, "cpu" if kind == "torch-cpu" else kind)
    elif kind == "torch-cpu":
        counts = _scs_torch(scores, alpha, g, n, seed, "cpu")
    else:
        counts = scs(scores, alpha=alpha, group_size=g, num_samples=n, seed=seed, device=kind)
    out = {"seconds": time.perf_counter() - t0, "max_count": int(counts.max()), "distinct": int(np.count_nonzero(counts))}
    assert int(counts.sum()) == n
    return out, counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=128_000_000, help="pool size M (default 128,000,000)")
    ap.add_argument("--num-samples", type=int, default=None, help="N (default: M)")
    ap.add_argument("--group-size", type=int, default=100_000, help="G (default 100,000)")
    ap.add_argument("--alpha", type=float, default=0.15)
    ap.add_argument("--ref-rounds", type=int, default=2, help="reference rounds to time (0: skip)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--devices", nargs="+", default=["cpu"], choices=["cpu", "cuda", "torch-cpu"],
                    help="where our scs runs (torch-cpu: the torch path on CPU tensors)")
    ap.add_argument("--compare-old", action="store_true", help="also time the old torch path on each torch device")
    ap.add_argument("--json", default=None, help="write the numbers to this file")
    args = ap.parse_args(argv)

    if "torch-cpu" in args.devices:
        import torch

        torch.set_num_threads(1)  # on a shared 2-core machine more threads made small tensor passes 10x slower
    if "cuda" in args.devices:
        import torch

        if not torch.cuda.is_available():
            ap.error("--devices cuda but CUDA is not available")
    m = args.size
    n = args.num_samples or m
    g = args.group_size
    rounds = math.ceil(n / g)
    scores = np.random.default_rng(12345).standard_normal(m, dtype=np.float32)
    scores *= 2
    base_rss = _current_rss_gib()

    timings, old_ratio, same = {}, {}, {}
    for device in args.devices:
        timings[device], counts = _run(device, scores, args.alpha, g, n, args.seed)
        if args.compare_old and device != "cpu":
            timings[f"{device} (old)"], old_counts = _run(device, scores, args.alpha, g, n, args.seed, old=True)
            old, new = timings[f"{device} (old)"], timings[device]
            old_ratio[device] = old["seconds"] / new["seconds"]
            same[device] = bool(np.array_equal(counts, old_counts))  # on CPU tensors: the same draws, same keys
            print(f"{device}: old torch path {old['seconds']:.2f} s (max count {old['max_count']}, "
                  f"{old['distinct']:,} distinct), new {new['seconds']:.2f} s (max count {new['max_count']}, "
                  f"{new['distinct']:,} distinct): old / new x{old_ratio[device]:.2f}; identical counts: {same[device]}",
                  flush=True)
            del old_counts
        del counts
    ours_peak = _rss_gib()
    ours = timings[args.devices[0]]["seconds"]
    top = timings[args.devices[0]]["max_count"]

    ref_line = "reference skipped"
    ratio_txt = ""
    if args.ref_rounds > 0:
        rng = np.random.default_rng(args.seed)
        ref_counts = np.zeros(m, dtype=np.int64)
        t0 = time.perf_counter()
        for _ in range(args.ref_rounds):
            reference_round(scores, ref_counts, args.alpha, g, rng)
        per_round = (time.perf_counter() - t0) / args.ref_rounds
        ref_total = per_round * rounds
        ref_line = f"reference {per_round:.2f} s/round x {rounds} rounds = {ref_total:.0f} s (extrapolated)"
        ratio_txt = f" | speed-up {ref_total / ours:.0f}x"
    if len(timings) > 1:
        print(" | ".join(f"{d}: {t['seconds']:.2f} s, max count {t['max_count']}, {t['distinct']:,} distinct"
                         for d, t in timings.items()), flush=True)
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"size": m, "num_samples": n, "group_size": g, "alpha": args.alpha, "rounds": rounds,
                       "ours": timings, "old_over_new": old_ratio, "identical_to_old": same,
                       "reference_seconds_extrapolated": ref_total if args.ref_rounds > 0 else None},
                      fh, indent=1)
    print(
        f"scs M={m:,} N={n:,} G={g:,} alpha={args.alpha} ({rounds} rounds): ours ({args.devices[0]}) {ours:.1f} s "
        f"(max count {top}) | "
        f"{ref_line}{ratio_txt} | peak RSS ours {ours_peak:.2f} GiB "
        f"({ours_peak - base_rss:.2f} GiB beyond the {scores.nbytes / 2**30:.2f} GiB scores + interpreter), "
        f"process {_rss_gib():.2f} GiB",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
