"""Subset writing: our sort + repeat + save against sorting the structured array naively.

    python bench/bench_subset.py [--entries 25600000] [--naive-entries 4000000]

Both run in this process on the same kind of input (distinct random uids with repetition counts,
about 1.6 entries per distinct uid as SCS produces). The naive path is what one writes first:
``np.repeat`` then ``np.sort`` of the ``u8,u8`` records (a generic comparison per pair), then
``np.save``. The ratio is per entry, measured at the naive size (the naive sort is too slow to run
at full size on a shared 2-core machine); our absolute time at the full size is printed too.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from flyt_datacomp.uids import random_uids, write_subset


def make_input(entries: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    distinct = int(entries / 1.6)
    counts = rng.geometric(1 / 1.6, size=distinct)
    counts[-1] += entries - counts.sum() if entries > counts.sum() else 0
    return random_uids(distinct, seed), counts


def naive_write(path: Path, uids: np.ndarray, counts: np.ndarray) -> None:
    arr = np.sort(np.repeat(uids, counts))
    np.save(path, arr)


def ours_write(path: Path, uids: np.ndarray, counts: np.ndarray) -> None:
    write_subset(path, uids, counts, info={"bench": True})


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--entries", type=int, default=25_600_000)
    ap.add_argument("--naive-entries", type=int, default=4_000_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        uids, counts = make_input(args.naive_entries)
        t_naive = timed(naive_write, d / "naive.npy", uids, counts)
        t_ours_small = timed(ours_write, d / "ours.npy", uids, counts)
        assert (np.load(d / "naive.npy") == np.load(d / "ours.npy")).all(), "outputs differ"
        n_small = int(counts.sum())
        print(f"{n_small:,} entries: naive {t_naive:.2f} s, ours {t_ours_small:.2f} s, "
              f"speed-up x{t_naive / t_ours_small:.1f} (same bytes written)")
        uids, counts = make_input(args.entries)
        t_ours = timed(ours_write, d / "big.npy", uids, counts)
        n = int(counts.sum())
        naive_extrapolated = t_naive / n_small * n * np.log(n) / np.log(n_small)
        print(f"{n:,} entries: ours {t_ours:.2f} s; naive extrapolated (n log n) {naive_extrapolated:.0f} s; "
              f"ratio x{naive_extrapolated / t_ours:.1f}")


if __name__ == "__main__":
    main()
