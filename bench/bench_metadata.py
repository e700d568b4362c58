"""Reading pool metadata in parallel (``--num_workers``): threads and processes against one worker.

    python bench/bench_metadata.py [--shards 64] [--rows 40000] [--workers 2 4 8] [--repeats 3] [--latency-ms 30]

Writes a pool of ``--shards`` DataComp-style parquet files (uid, text, url, the two CLIP scores,
sizes; no npz) to a temporary folder, then times what ``filter`` reads for a column score: every
uid plus one float column, through :class:`flyt_datacomp.pool.Pool`, with one worker, with N
threads (what ``--num_workers N`` uses), and with N processes (each returning its shard's arrays,
pickled back), all in this process, best of ``--repeats``. Prints seconds and the ratio to one
worker. The files are fresh in the page cache after writing, so the first table measures decoding
and conversion. The second reads the same files through an fsspec file system that waits
``--latency-ms`` before each open and each read call, as an object store's requests do (a simulated
network, labelled as such): that wait is what concurrent readers overlap.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from flyt_datacomp.pool import Pool
from flyt_datacomp.uids import random_uids, uids_to_hex

COLUMN = "clip_l14_similarity_score"


class SlowLocal(LocalFileSystem):
    """The local file system with a fixed wait per open and per read, like a remote object store."""

    protocol = "slowlocal"
    latency = 0.03

    def _open(self, path, mode="rb", **kwargs):
        time.sleep(self.latency)
        fh = super()._open(path, mode=mode, **kwargs)
        read = fh.read

        def slow_read(*a, **k):
            time.sleep(self.latency)
            return read(*a, **k)

        fh.read = slow_read
        return fh


def make_pool(root: Path, shards: int, rows: int) -> None:
    rng = np.random.default_rng(0)
    for s in range(shards):
        uids = uids_to_hex(random_uids(rows, seed=s))
        table = pa.table({
            "uid": uids,
            "url": [f"http://example.com/{u}.jpg" for u in uids],
            "text": [f"a photo of thing number {i}" for i in range(rows)],
            "original_width": rng.integers(64, 1024, rows),
            "original_height": rng.integers(64, 1024, rows),
            "clip_b32_similarity_score": rng.normal(0.3, 0.05, rows).astype(np.float32),
            "clip_l14_similarity_score": rng.normal(0.25, 0.05, rows).astype(np.float32),
        })
        pq.write_table(table, root / f"{s:032x}.parquet")


def read_with_pool(root: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
    pool = Pool(str(root), progress=False, workers=workers)
    parts = list(pool.iter_shards(["uid", COLUMN]))
    return (np.concatenate([p.columns["uid"] for p in parts]),
            np.concatenate([p.columns[COLUMN] for p in parts]))


def _read_one(args: tuple[Pool, int]) -> tuple[np.ndarray, np.ndarray]:
    pool, i = args
    d = pool.read_shard(pool.shards[i], ["uid", COLUMN]).columns
    return d["uid"], d[COLUMN]


def read_with_processes(root: str, workers: int) -> tuple[np.ndarray, np.ndarray]:
    pool = Pool(str(root), progress=False)
    with ProcessPoolExecutor(max_workers=workers) as ex:
        parts = list(ex.map(_read_one, [(pool, i) for i in range(len(pool.shards))]))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def compare(url: str, args) -> None:
    base, ref = best(lambda: read_with_pool(url, 1), args.repeats)
    print(f"1 worker:      {base:6.2f} s")
    for n in args.workers:
        for label, fn in (("threads", read_with_pool), ("processes", read_with_processes)):
            t, out = best(lambda fn=fn, n=n: fn(url, n), args.repeats)
            assert (out[0] == ref[0]).all() and (out[1] == ref[1]).all(), "different result"
            print(f"{n} {label + ':':11s} {t:6.2f} s  speed-up x{base / t:.2f}")


def best(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shards", type=int, default=64)
    ap.add_argument("--rows", type=int, default=40_000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=30.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_pool(root, args.shards, args.rows)
        print(f"pool: {args.shards} shards x {args.rows:,} rows = {args.shards * args.rows:,} rows; "
              f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}")
        print("\nlocal files (page cache):")
        compare(str(root), args)
        SlowLocal.latency = args.latency_ms / 1000
        fsspec.register_implementation("slowlocal", SlowLocal, clobber=True)
        print(f"\nsimulated object store ({args.latency_ms:g} ms per open and per read):")
        compare(f"slowlocal://{root}", args)


if __name__ == "__main__":
    main()
