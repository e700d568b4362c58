"""Write a synthetic pool of any size in DataComp's layout, for measuring the pipeline at scale.

    python bench/scale_pool.py /work/scale/medium --rows 128000000 --metadata-files 128 --released-files 38

writes, under the folder:

* ``metadata/<32 hex>.parquet`` -- the pool: ``uid`` (32 hex characters) and the two CLIP score
  columns (float32), ``--metadata-files`` files in pool order (file names sort in pool order). No
  npz files: none of the measured steps reads embeddings.
* ``shards/{:08d}.parquet`` + ``{:08d}.tar`` + ``{:08d}_stats.json`` -- an img2dataset download of
  the pool in pool order, ``--shard-size`` rows per shard: every row tried has a webdataset key
  (shard number and index, as img2dataset names them), its ``uid`` and a ``status``; a random
  ``--downloaded`` share succeeded. The tars are valid, empty tar files (the measured steps read the
  parquet files; a reader of images finds none), the stats count the successes.
* ``released/<first key>_scores.parquet`` -- the FLYT authors' released-input format: one row per
  successful download keyed by its webdataset ``key``, with 12 float32 fields under the authors'
  names, in ``--released-files`` files in key order. ``vit-b-32`` and ``vit-l-14`` are the pool's two
  CLIP scores (so the import's join check passes), the other fields random.

``--metadata-only`` writes the ``metadata`` folder alone (the same files, byte for byte, as without
it): what the selection reads, for a pool whose download and released files would not fit the disk
(DataComp-large's 1.28B rows: ``--rows 1280000000 --metadata-files 1280``, about 1M rows a file as
medium's, metadata only)::

    python bench/scale_pool.py /work/scale/large --rows 1280000000 --metadata-files 1280 --metadata-only

Everything is generated block by block from a seed (same arguments, same bytes), with no Python
object per row, so a medium pool (128M rows, about 19 GB) is written in a few minutes with little
memory. ``write_scale_pool`` is also what the tests use for tiny pools of the same layout.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIELDS = ("vit-b-32", "vit-l-14", "DFN-Base", "DFN-FT", "CC2M-Classifier", "IN1K-Classifier", "FLYT", "normsim_inf",
          "negCLIPLoss", "hype_lorentzian_distance", "hype_image_specificity", "hype_text_specificity")
SCORES = ("clip_b32_similarity_score", "clip_l14_similarity_score")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def fixed_strings(chars: np.ndarray) -> pa.Array:
    """An Arrow string array from an ``(n, width)`` uint8 matrix of ASCII codes, without Python strings."""
    n, width = chars.shape
    offsets = np.arange(0, (n + 1) * width, width, dtype=np.int64 if (n + 1) * width >= 2**31 else np.int32)
    data = np.ascontiguousarray(chars).reshape(-1)
    kind = pa.large_string() if offsets.dtype == np.int64 else pa.string()
    return pa.Array.from_buffers(kind, n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])


def hex_chars(words: np.ndarray) -> np.ndarray:
    """``(n, 2)`` uint64 -> ``(n, 32)`` lowercase hex characters (the high word first)."""
    out = np.empty((len(words), 32), dtype=np.uint8)
    for half in range(2):
        w = words[:, half]
        for k in range(16):
            out[:, 16 * half + k] = _HEX[((w >> np.uint64(4 * (15 - k))) & np.uint64(15)).astype(np.intp)]
    return out


def digit_chars(values: np.ndarray, width: int) -> np.ndarray:
    """Non-negative integers -> ``(n, width)`` zero-padded decimal digits."""
    out = np.empty((len(values), width), dtype=np.uint8)
    v = values.astype(np.int64)
    for k in range(width - 1, -1, -1):
        out[:, k] = 48 + v % 10
        v = v // 10
    return out


def _block(seed: int, index: int, n: int, downloaded: float | None) -> dict[str, np.ndarray]:
    """Pool rows of metadata file ``index``: uids, the two CLIP scores, whether each downloaded (drawn
    last, so ``downloaded`` None, no download, leaves the rest the same)."""
    rng = np.random.default_rng([seed, index])
    words = rng.integers(0, np.iinfo(np.uint64).max, size=(n, 2), dtype=np.uint64, endpoint=True)
    b32 = rng.normal(0.3, 0.05, n).astype(np.float32)
    l14 = (0.8 * b32 + rng.normal(0.0, 0.02, n)).astype(np.float32)
    block = {"uid": hex_chars(words), SCORES[0]: b32, SCORES[1]: l14}
    if downloaded is not None:
        block["ok"] = rng.random(n) < downloaded
    return block


class _Shards:
    """img2dataset's per-shard files, written as pool rows stream in; yields the successes' keys."""

    def __init__(self, folder: Path, shard_size: int, total: int):
        self.folder, self.size = folder, shard_size
        self.key_digits = max(1, math.ceil(math.log10(shard_size)))
        self.shard_digits = max(8, len(str(max(0, math.ceil(total / shard_size) - 1))))
        self.pending: list[dict[str, np.ndarray]] = []
        self.held = 0
        self.number = 0
        self.empty_tar = _empty_tar()

    def add(self, rows: dict[str, np.ndarray], last: bool) -> list[dict[str, np.ndarray]]:
        self.pending.append(rows)
        self.held += len(rows["ok"])
        out = []
        while self.held >= self.size or (last and self.held):
            rows = {k: np.concatenate([p[k] for p in self.pending]) for k in self.pending[0]}
            n = min(self.size, len(rows["ok"]))
            out.append(self._write({k: v[:n] for k, v in rows.items()}))
            rest = {k: v[n:] for k, v in rows.items()}
            self.pending = [rest] if len(rest["ok"]) else []
            self.held = len(rest["ok"])
        return out

    def _write(self, rows: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(rows["ok"])
        stem = f"{self.number:0{self.shard_digits}d}"
        keys = self.number * 10**self.key_digits + np.arange(n)
        key_chars = digit_chars(keys, self.shard_digits + self.key_digits)
        status = pa.DictionaryArray.from_arrays(pa.array(rows["ok"].astype(np.int8) ^ 1),
                                                pa.array(["success", "failed_to_download"]))
        table = pa.table({"key": fixed_strings(key_chars), "uid": fixed_strings(rows["uid"]),
                          "status": status.cast(pa.string())})
        pq.write_table(table, self.folder / f"{stem}.parquet", use_dictionary=["status"])
        (self.folder / f"{stem}.tar").write_bytes(self.empty_tar)
        ok = rows["ok"]
        stats = {"count": n, "successes": int(ok.sum()), "failed_to_download": int(n - ok.sum()),
                 "failed_to_resize": 0}
        (self.folder / f"{stem}_stats.json").write_text(json.dumps(stats))
        self.number += 1
        return {"key": key_chars[ok], SCORES[0]: rows[SCORES[0]][ok], SCORES[1]: rows[SCORES[1]][ok]}


def _empty_tar() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT):
        pass
    return buf.getvalue()


class _Released:
    """The authors' score files: successes in key order, ``per_file`` rows in each of ``files`` files
    (the last takes the rest)."""

    def __init__(self, folder: Path, files: int, per_file: int, seed: int):
        self.folder, self.per_file, self.max_files = folder, per_file, files
        self.rng = np.random.default_rng([seed, 2**31])
        self.pending: list[dict[str, np.ndarray]] = []
        self.held = 0
        self.files = 0

    def add(self, rows: dict[str, np.ndarray]) -> None:
        self.pending.append(rows)
        self.held += len(rows["key"])
        while self.held >= self.per_file and self.files < self.max_files - 1:
            self._flush(self.per_file)

    def finish(self) -> None:
        if self.held:
            self._flush(self.held)

    def _flush(self, n: int) -> None:
        rows = {k: np.concatenate([p[k] for p in self.pending]) for k in self.pending[0]}
        self._write({k: v[:n] for k, v in rows.items()})
        rest = {k: v[n:] for k, v in rows.items()}
        self.pending = [rest] if len(rest["key"]) else []
        self.held = len(rest["key"])

    def _write(self, rows: dict[str, np.ndarray]) -> None:
        n = len(rows["key"])
        columns = {"key": fixed_strings(rows["key"])}
        for field in FIELDS:
            if field == "vit-b-32":
                columns[field] = rows[SCORES[0]]
            elif field == "vit-l-14":
                columns[field] = rows[SCORES[1]]
            else:
                columns[field] = self.rng.standard_normal(n, dtype=np.float32)
        first = bytes(rows["key"][0, :8]).decode()
        pq.write_table(pa.table(columns), self.folder / f"{first}_scores.parquet", use_dictionary=False)
        self.files += 1


def write_scale_pool(root: str | Path, *, rows: int, metadata_files: int, released_files: int,
                     shard_size: int = 10_000, downloaded: float = 0.9, seed: int = 0,
                     progress: bool = False, metadata_only: bool = False) -> dict[str, Path]:
    """Write the pool, its download and the released inputs under ``root`` (see the module docstring);
    return their folders. ``metadata_only``: the pool's metadata files alone (the same bytes)."""
    root = Path(root)
    paths = {"metadata": root / "metadata"}
    if not metadata_only:
        paths.update(shards=root / "shards", released=root / "released")
    for p in paths.values():
        p.mkdir(parents=True, exist_ok=False)
    stem_rng = np.random.default_rng([seed, 2**32])
    words = stem_rng.integers(0, np.iinfo(np.uint64).max, size=(metadata_files, 2), dtype=np.uint64, endpoint=True)
    stems = sorted(bytes(row).decode() for row in hex_chars(words))
    sizes = np.diff(np.linspace(0, rows, metadata_files + 1).astype(np.int64))
    shards = released = None
    if not metadata_only:
        shards = _Shards(paths["shards"], shard_size, rows)
        released = _Released(paths["released"], released_files, max(1, math.ceil(rows * downloaded / released_files)),
                             seed)
    start = time.perf_counter()
    for i, (stem, n) in enumerate(zip(stems, sizes)):
        block = _block(seed, i, int(n), None if metadata_only else downloaded)
        pq.write_table(pa.table({"uid": fixed_strings(block["uid"]), SCORES[0]: block[SCORES[0]],
                                 SCORES[1]: block[SCORES[1]]}), paths["metadata"] / f"{stem}.parquet",
                       use_dictionary=False)
        if shards is not None:
            for ok in shards.add(block, last=i == metadata_files - 1):
                released.add(ok)
        if progress:
            done = "" if shards is None else f", {shards.number} shards, {released.files} score files"
            print(f"\r{i + 1}/{metadata_files} metadata files{done} ({time.perf_counter() - start:.0f} s)", end="",
                  file=sys.stderr, flush=True)
    if released is not None:
        released.finish()
    if progress:
        print(file=sys.stderr)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("root", type=Path, help="a new folder")
    ap.add_argument("--rows", type=int, default=128_000_000)
    ap.add_argument("--metadata-files", type=int, default=128)
    ap.add_argument("--released-files", type=int, default=38)
    ap.add_argument("--shard-size", type=int, default=10_000)
    ap.add_argument("--downloaded", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--metadata-only", action="store_true",
                    help="write the metadata files alone (no shards, no released files): the same metadata bytes")
    args = ap.parse_args(argv)
    t = time.perf_counter()
    write_scale_pool(args.root, rows=args.rows, metadata_files=args.metadata_files, released_files=args.released_files,
                     shard_size=args.shard_size, downloaded=args.downloaded, seed=args.seed, progress=True,
                     metadata_only=args.metadata_only)
    used = sum(f.stat().st_size for f in args.root.rglob("*") if f.is_file())
    print(f"wrote {args.rows:,} rows under {args.root} in {time.perf_counter() - t:.0f} s, {used / 1e9:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
