"""Tiny DataComp-format pools for tests: metadata pairs and img2dataset-style tar shards."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flyt_datacomp.uids import random_uids, uids_to_hex


def write_metadata(root: Path, sizes=(40, 25, 35), *, seed=0, dim=8, with_npz=True) -> tuple[Path, np.ndarray]:
    """Write parquet+npz pairs with every DataComp column; return (folder, hex uids in pool order)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    hex_uids = uids_to_hex(random_uids(sum(sizes), seed))
    start = 0
    for n in sizes:
        stem = "".join(rng.choice(list("0123456789abcdef"), 32))
        u = hex_uids[start:start + n]
        table = pa.table({
            "uid": pa.array(list(u), pa.string()),
            "url": [f"http://example.com/{x}.jpg" for x in u],
            "text": [f"caption {i}" for i in range(start, start + n)],
            "original_width": rng.integers(64, 1024, n),
            "original_height": rng.integers(64, 1024, n),
            "clip_b32_similarity_score": rng.normal(0.3, 0.05, n).astype(np.float32),
            "clip_l14_similarity_score": rng.normal(0.25, 0.05, n).astype(np.float32),
            "face_bboxes": pa.array([[] for _ in range(n)], pa.list_(pa.list_(pa.float64()))),
            "sha256": ["0" * 64] * n,
        })
        pq.write_table(table, root / f"{stem}.parquet")
        if with_npz:
            arrays = {}
            for key in ("b32_img", "b32_txt", "l14_img", "l14_txt"):
                e = rng.normal(size=(n, dim))
                arrays[key] = (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float16)
            arrays["dedup"] = np.zeros(n, dtype=bool)
            np.savez(root / f"{stem}.npz", **arrays)
        start += n
    return root, hex_uids


def write_image_shards(root: Path, hex_uids, *, per_shard=30, keep_fraction=0.9, seed=0) -> list[str]:
    """img2dataset-layout tar shards for a random ``keep_fraction`` of uids; return the uids written."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    kept = [u for u in hex_uids if rng.random() < keep_fraction]
    for s in range(0, len(kept), per_shard):
        shard = s // per_shard
        with tarfile.open(root / f"{shard:08d}.tar", "w") as tar:
            for i, uid in enumerate(kept[s:s + per_shard]):
                key = f"{shard:05d}{i:04d}"
                for ext, payload in (
                    ("jpg", b"\xff\xd8fakejpeg"),
                    ("txt", f"caption of {uid}".encode()),
                    ("json", json.dumps({"uid": uid, "key": key, "status": "success"}).encode()),
                ):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
        n = len(kept[s:s + per_shard])
        (root / f"{shard:08d}_stats.json").write_text(json.dumps({"count": n, "successes": n}))
    return kept


def run_filter_cli(args, expect_ok=True):
    """``filter`` through click's runner (progress bars off); asserts success unless told not to."""
    from click.testing import CliRunner

    from flyt_datacomp.cli.filter import filter_command

    result = CliRunner().invoke(filter_command, [*args, "--quiet"])
    if expect_ok:
        assert result.exit_code == 0, result.output + repr(result.exception)
    return result
