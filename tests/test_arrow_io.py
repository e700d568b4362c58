"""Parquet and csv read through Python file objects: every call into the file from a Python thread.

Arrow's own threads calling into a Python file (or dropping the last reference to it) while the
interpreter exits abort the process (exit code 134); these tests watch every call instead of
hoping to catch the rare abort.
"""

from __future__ import annotations

import gc
import threading

import fsspec.implementations.local as fsspec_local
import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.arrow_io import read_csv, read_parquet
from flyt_datacomp.inputs.providers.imported import _batches, read_schema
from flyt_datacomp.pool import Pool
from flyt_datacomp.scores.files import read_uid_scores
from flyt_datacomp.shards import index_shards


def _foreign() -> bool:
    """True in a thread that Python did not start (one of Arrow's)."""
    return isinstance(threading.current_thread(), threading._DummyThread)


class Watched:
    """A file object that notes whether any call into it (or its deletion) came from a foreign thread."""

    def __init__(self, fh, seen: list):
        self._fh, self._seen = fh, seen

    def __getattr__(self, name):
        attr = getattr(self._fh, name)
        self._seen.append(_foreign())
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self._seen.append(_foreign())
            return attr(*args, **kwargs)

        return call

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._fh.close()

    def __del__(self):
        self._seen.append(_foreign())


def watched_read(path, read, seen):
    with open(path, "rb") as raw:
        table = read(Watched(raw, seen))
    gc.collect()
    return table


@pytest.fixture
def files(tmp_path):
    n = 40_000
    table = pa.table({"uid": [f"{i:032x}" for i in range(n)], "score": np.arange(n, dtype=np.float64) / 7})
    pq.write_table(table, tmp_path / "s.parquet", row_group_size=4_000)
    pcsv.write_csv(table, tmp_path / "s.csv")
    return table, tmp_path


def test_the_readers_call_the_file_from_this_thread_only(files):
    table, tmp = files
    opts = pcsv.ConvertOptions(column_types={"uid": pa.string()})
    for _ in range(5):
        seen = []
        got = watched_read(tmp / "s.parquet", lambda f: read_parquet(f, ["score", "uid"]), seen)
        assert got.equals(table.select(["score", "uid"])) and seen and not any(seen)
        seen = []
        got = watched_read(tmp / "s.csv", lambda f: read_csv(f, convert_options=opts), seen)
        assert got.equals(table) and seen and not any(seen)


def test_the_watch_sees_arrow_threads(files):
    """The control: Arrow's plain readers on a Python file do call into it from their own threads."""
    _, tmp = files
    for path, read in [("s.parquet", pq.read_table), ("s.parquet", lambda f: pq.ParquetFile(f).read(use_threads=False)),
                       ("s.csv", pcsv.read_csv)]:
        hits = 0
        for _ in range(5):
            seen = []
            watched_read(tmp / path, read, seen)
            hits += any(seen)
        assert hits, path


def test_the_package_readers_go_through_them(tmp_path, monkeypatch):
    """Pool columns, score files (parquet, csv), img2dataset parquets of a shards folder, imported inputs."""
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(30, 20))
    write_image_shards(tmp_path / "shards", list(hexes), per_shard=20)
    uids = list(hexes)
    pq.write_table(pa.table({"uid": uids, "score": np.arange(len(uids), dtype=float)}), tmp_path / "sc.parquet")
    pcsv.write_csv(pa.table({"uid": uids, "score": np.arange(len(uids), dtype=float)}), tmp_path / "sc.csv")
    for s in range(3):
        chunk = uids[s * 20:(s + 1) * 20]
        pq.write_table(pa.table({"uid": chunk, "key": [f"{s:05d}{i:04d}" for i in range(len(chunk))],
                                 "status": ["success"] * len(chunk)}), tmp_path / "shards" / f"{s:08d}.parquet")
    seen = []
    real_open = fsspec_local.LocalFileSystem._open
    monkeypatch.setattr(fsspec_local.LocalFileSystem, "_open",
                        lambda self, *a, **k: Watched(real_open(self, *a, **k), seen))
    assert len(Pool(str(root), progress=False).column("clip_b32_similarity_score")) == len(uids)
    for name in ("sc.parquet", "sc.csv"):
        assert len(read_uid_scores(str(tmp_path / name))[0]) == len(uids)
    index_shards(tmp_path / "shards", progress=False)
    schema = read_schema(str(tmp_path / "sc.parquet"))
    rows = sum(batch.num_rows for batch in _batches(schema, schema.files[0]))
    assert schema.key == "uid" and rows == len(uids) and schema.numeric == ["score"]
    gc.collect()
    assert len(seen) > 20 and not any(seen)
