"""``inputs import`` of scores keyed by webdataset key at any size: the streaming join against a
naive one, its preflight, its cache (keyed by the shards' content), and its failure modes (text
columns, a full disk, SIGTERM, a source path holding ':'). The pools are written by
``bench/scale_pool.py`` (DataComp's layout, the authors' released format), tiny here."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from flyt_datacomp.cli import main as cli
from flyt_datacomp.pool import Pool
from flyt_datacomp.store import InputStore

REPO = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("scale_pool", REPO / "bench" / "scale_pool.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


scale_pool = _generator()
FIELDS = list(scale_pool.FIELDS)


def make_pool(root: Path, rows: int = 12_000, shard_size: int = 500, **kw) -> dict[str, Path]:
    return scale_pool.write_scale_pool(root, rows=rows, metadata_files=kw.pop("metadata_files", 3),
                                       released_files=kw.pop("released_files", 4), shard_size=shard_size, **kw)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("scale"))


def invoke(args, code=0):
    r = CliRunner().invoke(cli, [*map(str, args)])
    assert r.exit_code == code, r.output + repr(r.exception)
    return r


def import_args(paths, store, *extra, shards=None, quiet=True):
    return ["inputs", "import", paths["released"], "--metadata-dir", paths["metadata"], "--inputs-dir", store,
            "--shards-dir", shards or paths["shards"], "--missing", "min", *(["--quiet"] if quiet else []), *extra]


def naive_values(paths: dict[str, Path], fields: list[str], shards: Path | None = None) -> dict[str, np.ndarray]:
    """Each field in pool order (NaN: no row), joined with Python dicts: key -> uid from the shards'
    parquet files (successful rows), uid -> position from the metadata files in name order."""
    hexes = [u for f in sorted(paths["metadata"].glob("*.parquet")) for u in pq.read_table(f).column("uid").to_pylist()]
    position = {u: i for i, u in enumerate(hexes)}
    uid_of = {}
    for f in sorted((shards or paths["shards"]).glob("*.parquet")):
        t = pq.read_table(f).to_pydict()
        uid_of.update({k: u for k, u, s in zip(t["key"], t["uid"], t["status"]) if s == "success"})
    out = {n: np.full(len(hexes), np.nan, dtype=np.float32) for n in fields}
    for f in sorted(paths["released"].glob("*.parquet")):
        t = pq.read_table(f).to_pydict()
        for i, key in enumerate(t["key"]):
            p = position.get(uid_of.get(key))
            if p is not None:
                for n in fields:
                    out[n][p] = t[n][i]
    return out


def stored(store: Path, paths, names) -> dict[str, np.ndarray]:
    return InputStore(store).columns(list(names), Pool(str(paths["metadata"]), progress=False), fill=False)


def test_metadata_only_writes_the_same_metadata_files_alone(pool, tmp_path):
    """``metadata_only`` (a pool too large for its download on disk): the metadata folder alone, each
    file the same bytes as the full pool's (same arguments and seed)."""
    paths = scale_pool.write_scale_pool(tmp_path / "meta", rows=12_000, metadata_files=3, released_files=4,
                                        shard_size=500, metadata_only=True)
    assert list(paths) == ["metadata"] and sorted(p.name for p in (tmp_path / "meta").iterdir()) == ["metadata"]
    files = sorted(pool["metadata"].glob("*.parquet"))
    assert [f.name for f in files] == sorted(f.name for f in paths["metadata"].iterdir())
    for f in files:
        assert (paths["metadata"] / f.name).read_bytes() == f.read_bytes(), f.name


def test_the_streaming_import_equals_a_naive_join(pool, tmp_path):
    store = tmp_path / "store"
    r = invoke(import_args(pool, store))
    assert "join check: vit-b-32 correlates 1.0000" in r.output
    want = naive_values(pool, FIELDS)
    got = stored(store, pool, FIELDS)
    for name in FIELDS:
        assert np.array_equal(got[name], want[name].astype(np.float64), equal_nan=True), name
    entry = json.loads((store / "inputs.json").read_text())["inputs"]["FLYT"]
    downloaded = int((~np.isnan(want["FLYT"])).sum())
    assert entry["source_rows"] == downloaded and entry["source_rows_not_in_pool"] == 0
    assert entry["missing_count"] == 12_000 - downloaded and entry["source_files"] == 4
    assert len(entry["shards_sha256"]) == 64


def test_uid_keyed_files_join_through_the_pool_index(pool, tmp_path):
    """Scores keyed by uid (no shards): the pool's uids are indexed and every file row finds its example;
    rows of uids the pool does not hold are counted, not imported."""
    want = naive_values(pool, ["FLYT"])
    hexes = [u for f in sorted(pool["metadata"].glob("*.parquet")) for u in pq.read_table(f).column("uid").to_pylist()]
    has = np.flatnonzero(~np.isnan(want["FLYT"]))
    src = tmp_path / "by_uid"
    src.mkdir()
    half = len(has) // 2
    for i, rows in enumerate((has[:half], has[half:])):
        uids = [hexes[j] for j in rows] + ([f"{i:032x}"] if i else [])  # one uid that is no pool example
        values = np.append(want["FLYT"][rows], np.float32(5.0)) if i else want["FLYT"][rows]
        pq.write_table(pa.table({"uid": uids, "FLYT": values}), src / f"part{i}.parquet")
    store = tmp_path / "store"
    invoke(["inputs", "import", src, "--metadata-dir", pool["metadata"], "--inputs-dir", store, "--missing", "min",
            "--quiet"])
    assert np.array_equal(stored(store, pool, ["FLYT"])["FLYT"], want["FLYT"].astype(np.float64), equal_nan=True)
    entry = json.loads((store / "inputs.json").read_text())["inputs"]["FLYT"]
    assert entry["source_key"] == "uid" and entry["source_rows_not_in_pool"] == 1


def test_join_keys_sorts_a_download_whose_files_are_not_in_key_order(pool, tmp_path):
    """The library join on a download whose shard files' names do not follow their keys (the keys,
    read in file order, are not sorted): the same pairs as a dict join, sorted by key."""
    from flyt_datacomp.shards import join_keys, webdataset_keys

    shards = tmp_path / "shards"
    shards.mkdir()
    files = sorted(pool["shards"].glob("*.parquet"))
    for i, f in enumerate(files):  # the last shard's rows under the first name, and so on
        stem = f"{len(files) - 1 - i:08d}"
        shutil.copy(f, shards / f"{stem}.parquet")
        (shards / f"{stem}.tar").write_bytes(b"")
    p = Pool(str(pool["metadata"]), progress=False)
    keys, at = join_keys(shards, p, tmp_path, progress=False)
    hexes = [u for f in sorted(pool["metadata"].glob("*.parquet")) for u in pq.read_table(f).column("uid").to_pylist()]
    position = {u: i for i, u in enumerate(hexes)}
    pairs = {}
    for f in files:
        t = pq.read_table(f)
        ok = [s == "success" for s in t.column("status").to_pylist()]
        for k, u in zip(webdataset_keys(t.column("key"), str(f))[ok], np.array(t.column("uid").to_pylist())[ok]):
            pairs[int(k)] = position[u]
    assert np.array_equal(keys, np.array(sorted(pairs))) and np.array_equal(at, [pairs[k] for k in sorted(pairs)])
    assert not list(tmp_path.glob("keys-*.bin"))  # the scratch file is gone


def test_the_join_reads_the_shards_as_it_goes(pool, tmp_path, monkeypatch):
    """The shards are indexed as they are read: a few shards ahead of the index at most, never all of
    them first (what made the import's memory grow with the download)."""
    import flyt_datacomp.shards as shards_module
    from flyt_datacomp.uids import UidIndex

    started, lag = [], []
    read = shards_module._keys_of

    def counting_read(fs, folder, name):
        started.append(name)
        return read(fs, folder, name)

    add = UidIndex.add

    def counting_add(self, uids, payload=None):
        lag.append(len(started))
        return add(self, uids, payload)

    monkeypatch.setattr(shards_module, "_keys_of", counting_read)
    monkeypatch.setattr(UidIndex, "add", counting_add)
    p = Pool(str(pool["metadata"]), progress=False)
    shards_module.join_keys(pool["shards"], p, tmp_path, progress=False)
    assert len(started) == 24 and len(lag) == 24
    assert all(seen <= i + 10 for i, seen in enumerate(lag, start=1)), lag  # 8 reader threads, one shard ahead


def test_a_shards_folder_without_tars_or_of_another_download_is_refused_before_anything(pool, tmp_path, monkeypatch):
    """The preflight: no store is created and no score file is read before the refusal."""
    import flyt_datacomp.inputs.providers.imported as imported

    def no_reading(*args, **kwargs):
        raise AssertionError("a score file was read before the preflight refused")

    monkeypatch.setattr(imported, "_batches", no_reading, raising=False)
    no_tars = tmp_path / "no_tars"
    no_tars.mkdir()
    for f in pool["shards"].glob("*.parquet"):
        (no_tars / f.name).symlink_to(f)
    store = tmp_path / "store"
    r = invoke(import_args(pool, store, shards=no_tars), code=2)
    assert "holds no .tar shards" in r.output and not store.exists()
    other = tmp_path / "other"  # a download whose shards are named from 00000100 on
    other.mkdir()
    for f in sorted(pool["shards"].glob("*.parquet"))[:3]:
        stem = f"{100 + int(f.stem):08d}"
        shutil.copy(f, other / f"{stem}.parquet")
        (other / f"{stem}.tar").write_bytes(b"")
    r = invoke(import_args(pool, store, shards=other), code=2)
    assert "names shard 00000000, which the shards folder" in r.output and not store.exists()


def test_a_download_fixed_in_place_is_joined_again(pool, tmp_path):
    """The join is cached under the content of the shards' parquet files: after a broken download is
    fixed in place (same folder), the input is refused until recomputed, and `--recompute` imports
    the right rows."""
    shards = tmp_path / "shards"
    shutil.copytree(pool["shards"], shards)
    paths = {**pool, "shards": shards}
    originals = {f: f.read_bytes() for f in shards.glob("*.parquet")}
    for f in originals:  # broken: every key names another example of its shard
        t = pq.read_table(f)
        pq.write_table(t.set_column(1, "uid", pa.array(t.column("uid").to_pylist()[::-1])), f)
    store = tmp_path / "store"
    args = import_args(paths, store, "--field", "DFN-Base")
    invoke(args)
    want = naive_values(pool, ["DFN-Base"])["DFN-Base"].astype(np.float64)
    assert not np.array_equal(stored(store, pool, ["DFN-Base"])["DFN-Base"], want, equal_nan=True)
    for f, data in originals.items():  # the fix, in place
        f.write_bytes(data)
    r = invoke(args, code=2)
    assert "have changed since" in r.output and "--recompute DFN-Base" in r.output
    invoke([*args, "--recompute", "DFN-Base"])
    assert np.array_equal(stored(store, pool, ["DFN-Base"])["DFN-Base"], want, equal_nan=True)


def test_a_text_check_column_is_a_one_line_error(pool, tmp_path):
    meta = tmp_path / "metadata"
    meta.mkdir()
    for f in sorted(pool["metadata"].glob("*.parquet")):  # the pool with a caption column
        t = pq.read_table(f)
        pq.write_table(t.append_column("text", pa.array([f"caption {i}" for i in range(t.num_rows)])), meta / f.name)
    paths = {**pool, "metadata": meta}
    r = invoke([*import_args(paths, tmp_path / "store"), "--field", "DFN-Base", "--check", "DFN-Base=text"], code=2)
    assert r.output.count("\n") == 1 and r.output.startswith("Error: ") and "holds string, not numbers" in r.output
    assert "Traceback" not in r.output and not (tmp_path / "store").exists()


def test_a_source_without_a_numeric_column_is_an_error(pool, tmp_path):
    text_only = tmp_path / "text_only"
    text_only.mkdir()
    keys = pq.read_table(sorted(pool["released"].glob("*.parquet"))[0], columns=["key"]).column("key")
    pq.write_table(pa.table({"key": keys, "caption": pa.array(["x"] * len(keys))}), text_only / "scores.parquet")
    r = invoke(["inputs", "import", text_only, "--metadata-dir", pool["metadata"], "--inputs-dir", tmp_path / "store",
                "--shards-dir", pool["shards"], "--missing", "min", "--quiet"], code=2)
    assert "no numeric score column" in r.output and "caption" in r.output and r.output.count("\n") == 1


def test_a_source_path_holding_a_colon_is_read_as_the_path(pool, tmp_path):
    src = tmp_path / "scores:v1"
    shutil.copytree(pool["released"], src)
    store = tmp_path / "store"
    invoke(["inputs", "import", src, "--metadata-dir", pool["metadata"], "--inputs-dir", store,
            "--shards-dir", pool["shards"], "--field", "FLYT", "--missing", "min", "--quiet"])
    entry = json.loads((store / "inputs.json").read_text())["inputs"]["FLYT"]
    assert entry["params"]["src"] == str(src) and entry["status"] == "complete"


_RUN = textwrap.dedent("""
    import resource, signal, sys
    sys.argv = ["flyt-datacomp", *sys.argv[2:]]
    limit = int(sys.argv.pop(1)) if sys.argv[1].isdigit() else None
    if limit:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail instead of killing
    from flyt_datacomp.cli import main
    main()
""")


def run_cli(args, env_extra=None, **kw):
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    return subprocess.run([sys.executable, "-c", _RUN, "x", *map(str, args)], capture_output=True, text=True,
                          env=env, **kw)


def test_a_full_disk_while_the_cache_is_written_is_one_clear_error(pool, tmp_path):
    """Files may not grow past 300 KB: the import's cache (a pool-order column is 48 KB here, the
    join's keys 90 KB, ... the store's files are small) fails to be written; numpy reports such a
    short write as an OSError without an errno. One line, exit 2, nothing of the store damaged."""
    big = make_pool(tmp_path / "big", rows=120_000, shard_size=5_000)
    store = tmp_path / "store"
    r = run_cli(["300000", *import_args(big, store)])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stderr and "cannot write the import's cache" in r.stderr
    assert r.stderr.strip().count("\n") == 0


def test_sigterm_stops_the_import_within_seconds_and_the_store_stays_usable(tmp_path):
    """SIGTERM during each long pass (hashing the shards, the join, the score files): the import
    stops within a few seconds with 128 + 15, and a rerun completes the store."""
    big = make_pool(tmp_path / "big", rows=300_000, shard_size=1_000, metadata_files=6, released_files=6)
    store = tmp_path / "store"
    args = import_args(big, store, quiet=False)  # with progress bars: they say which pass runs
    for marker in ("hashing shard index files", "reading shard keys", "joining the pool's uids", "importing score files"):
        proc = subprocess.Popen([sys.executable, "-c", _RUN, "x", *map(str, args)], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
        os.set_blocking(proc.stderr.fileno(), False)
        seen, start = b"", time.monotonic()
        while marker.encode() not in seen and proc.poll() is None and time.monotonic() - start < 120:
            seen += proc.stderr.read() or b""
            time.sleep(0.05)
        assert marker.encode() in seen, (marker, seen[-500:])
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - sent < 5, (marker, proc.returncode)
        assert not list((store / "work").glob("**/keys-*.bin")) if (store / "work").exists() else True
    invoke(import_args(big, store, "--field", "FLYT"))
    assert json.loads((store / "inputs.json").read_text())["inputs"]["FLYT"]["status"] == "complete"
