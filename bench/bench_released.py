"""The paper's subset from the authors' released files: per-row costs of each step, and the speed of
the import's join against a naive join in the same process.

A synthetic pool (``--rows`` examples in ``--shards`` metadata shards, each a DataComp parquet of
uid and CLIP scores), img2dataset-style shard parquet files (key, uid, status) for the downloaded
90%, and 12 released input fields in the authors' layout (``{key[:8]}_scores.parquet``, a ``key``
column) are written to a temporary folder; then it times

* ``inputs import`` of the 12 fields (one pass over the files, the key-to-uid join, 12 columns
  written to the store), and the join alone against a naive dict-based join of the same keys;
* ``filter`` with the released mixing model over the 12 stored inputs, threshold (top 20%);
* SCS alone is ``bench/bench_sampling.py``.

and extrapolates each to the 128M examples of the medium pool (linear in rows).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

MEDIUM = 128_000_000
FIELDS = ("vit-b-32", "vit-l-14", "DFN-Base", "DFN-FT", "CC2M-Classifier", "IN1K-Classifier", "FLYT", "normsim_inf",
          "negCLIPLoss", "hype_lorentzian_distance", "hype_image_specificity", "hype_text_specificity")


def write_inputs(root: Path, rows: int, shards: int, seed: int = 0) -> dict[str, Path]:
    from flyt_datacomp.uids import random_uids, uids_to_hex

    rng = np.random.default_rng(seed)
    hexes = uids_to_hex(random_uids(rows, seed))
    b32 = rng.normal(0.3, 0.05, rows).astype(np.float32)
    meta, shard_dir, scores = root / "metadata", root / "shards", root / "released"
    for d in (meta, shard_dir, scores):
        d.mkdir(parents=True)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    for s, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        pq.write_table(pa.table({"uid": hexes[lo:hi], "clip_b32_similarity_score": b32[lo:hi],
                                 "clip_l14_similarity_score": b32[lo:hi] * 0.9}), meta / f"{s:032x}.parquet")
    downloaded = np.flatnonzero(rng.random(rows) < 0.9)
    keys = np.array([f"{i // 10_000:08d}{i % 10_000:04d}" for i in range(len(downloaded))])
    per = 10_000
    for s in range(0, len(downloaded), per):
        idx = downloaded[s:s + per]
        n = len(idx)
        pq.write_table(pa.table({"key": keys[s:s + n], "uid": hexes[idx], "status": ["success"] * n}),
                       shard_dir / f"{s // per:08d}.parquet")
        (shard_dir / f"{s // per:08d}.tar").write_bytes(b"")  # the index reads the parquet files
    values = {f: rng.standard_normal(len(downloaded)).astype(np.float32) for f in FIELDS}
    values["vit-b-32"] = b32[downloaded]
    values["vit-l-14"] = b32[downloaded] * 0.9
    prefixes = np.array([k[:8] for k in keys])
    for prefix in np.unique(prefixes):
        sel = prefixes == prefix
        pq.write_table(pa.table({"key": keys[sel], **{f: values[f][sel].astype(np.float64) for f in FIELDS}}),
                       scores / f"{prefix}_scores.parquet")
    return {"metadata": meta, "shards": shard_dir, "released": scores}


def naive_join(keys: list[str], shard_keys: list[str], shard_uids: list[str], pool_uids: list[str]) -> np.ndarray:
    """Each key's pool position through Python dicts (what a notebook would write)."""
    uid_of = dict(zip(shard_keys, shard_uids))
    pos_of = {u: i for i, u in enumerate(pool_uids)}
    return np.array([pos_of.get(uid_of.get(k, ""), -1) for k in keys])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch
    from click.testing import CliRunner

    from flyt_datacomp.cli import main as cli
    from flyt_datacomp.pool import Pool
    from flyt_datacomp.shards import join_keys, webdataset_keys
    from flyt_datacomp.uids import uids_to_hex

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t = time.perf_counter()
        paths = write_inputs(root, args.rows, args.shards)
        print(f"# wrote {args.rows:,} rows in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        store = root / "store"
        t = time.perf_counter()
        r = CliRunner().invoke(cli, ["inputs", "import", str(paths["released"]), "--metadata-dir", str(paths["metadata"]),
                                     "--inputs-dir", str(store), "--shards-dir", str(paths["shards"]), "--missing",
                                     "min", "--quiet"])
        out["import_seconds"] = time.perf_counter() - t
        assert r.exit_code == 0, r.output
        model = root / "mflyt.pt"
        lin = torch.nn.Sequential(torch.nn.Linear(len(FIELDS), 1))
        torch.save(lin.state_dict(), model)
        t = time.perf_counter()
        r = CliRunner().invoke(cli, ["baseline", "flyt_mflyt_top20", "--metadata-dir", str(paths["metadata"]),
                                     "--inputs-dir", str(store), "--mixing-model", str(model), "--output",
                                     str(root / "top20.npy"), "--quiet"])
        out["mix_and_threshold_seconds"] = time.perf_counter() - t
        assert r.exit_code == 0, r.output

        # the join alone, from the files: ours (sorted int64 keys with pool positions, a bucket-sorted uid
        # index) against a dict-based one
        files = sorted(paths["released"].glob("*.parquet"))
        shard_files = sorted(paths["shards"].glob("*.parquet"))
        pool = Pool(str(paths["metadata"]), progress=False)
        hexes = list(uids_to_hex(pool.uids))
        t = time.perf_counter()
        k = np.concatenate([webdataset_keys(pq.read_table(f, columns=["key"]).column("key"), str(f)) for f in files])
        shard_keys, at = join_keys(str(paths["shards"]), pool, root, progress=False)
        pos = np.minimum(np.searchsorted(shard_keys, k), len(shard_keys) - 1)
        ours = np.where(shard_keys[pos] == k, at[pos], -1)
        out["join_seconds"] = time.perf_counter() - t
        t = time.perf_counter()
        keys = [x for f in files for x in pq.read_table(f, columns=["key"]).column("key").to_pylist()]
        tables = [pq.read_table(f, columns=["key", "uid"]).to_pydict() for f in shard_files]
        naive = naive_join(keys, [x for tb in tables for x in tb["key"]], [x for tb in tables for x in tb["uid"]], hexes)
        out["naive_join_seconds"] = time.perf_counter() - t
        assert (naive == ours).all()
    scale = MEDIUM / args.rows
    print(f"rows {args.rows:,}, {len(FIELDS)} fields, 90% downloaded")
    for key, value in out.items():
        print(f"{key:28s} {value:8.2f} s   medium (x{scale:,.0f}): {value * scale / 3600:6.2f} h")
    print(f"join: ours x{out['naive_join_seconds'] / out['join_seconds']:.1f} faster than the dict-based join")
    if args.json:
        args.json.write_text(json.dumps({"rows": args.rows, **out}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
