"""``inputs import --ray``: the join by buckets (:mod:`flyt_datacomp.inputs.bucket_join`) gives the
single-machine import's store, value for value, and its errors; each task holds one bucket, a killed
join resumes from the passes' files, and a local Ray cluster runs it. The pools are written by
``bench/scale_pool.py`` (DataComp's layout, the authors' released format), tiny here."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_import_scale import _RUN, FIELDS, REPO, import_args, make_pool, naive_values, stored

from flyt_datacomp.cli import main as cli
from flyt_datacomp.inputs import bucket_join, executors


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    return make_pool(tmp_path_factory.mktemp("cluster"), rows=12_000, shard_size=500, metadata_files=5)


@pytest.fixture
def in_process(monkeypatch):
    """``--ray`` served in this process: every pass's tasks run inline, one after another."""
    calls = []

    def run_inline(fn, tasks, address, gpus_per_task=0.0):
        named = fn.__name__ == "measured" and tasks  # a join's pass: each task is (its function, its part)
        calls.append((tasks[0][0].__name__ if named else fn.__name__, len(tasks)))
        for i, result in executors.run_inline(fn, tasks):
            if fn.__name__ == "run_shard_task":  # a shard task on a cluster writes its file: no values come back
                calls.append(("values returned", sum(v is not None for v in result[1].values())))
            yield i, result

    monkeypatch.setattr(executors, "ray_session", lambda address, **kw: contextlib.nullcontext(None))
    monkeypatch.setattr(executors, "run_ray", run_inline)
    return calls


def invoke(args, code=0):
    r = CliRunner().invoke(cli, [*map(str, args)])
    assert r.exit_code == code, r.output + repr(r.exception)
    return r


def manifest(store):
    return json.loads((store / "inputs.json").read_text())["inputs"]


COUNTS = ("source_rows", "source_rows_not_in_pool", "source_files", "count", "missing_count", "fill_value", "min",
          "max", "shards_sha256")


@pytest.mark.parametrize("partitions, batch_rows", [(1, None), (3, None), (7, None), (3, 700)])
def test_the_bucket_join_gives_the_single_machine_store(pool, in_process, tmp_path, monkeypatch, partitions,
                                                        batch_rows):
    """``batch_rows``: the score files read in batches of that many rows (each batch its own file of a
    map task's), instead of one batch each."""
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    invoke(import_args(pool, one))
    assert not in_process  # one machine: nothing ran as tasks
    if batch_rows:
        from flyt_datacomp.inputs import score_rows

        monkeypatch.setattr(score_rows, "BATCH_ROWS", batch_rows)
    r = invoke(import_args(pool, cluster, "--ray", "local", "--partitions", partitions))
    assert "join check: vit-b-32 correlates 1.0000" in r.output
    passes = dict(in_process)
    assert passes["join_keys_bucket"] == partitions and passes["join_uids_bucket"] == partitions
    returned = [n for what, n in in_process if what == "values returned"]
    assert passes["run_shard_task"] == 5 and len(returned) == 5 and not any(returned)
    assert passes["write_group"] == min(partitions, 5) and passes["map_scores"] == 4
    want = naive_values(pool, FIELDS)
    got, single = stored(cluster, pool, FIELDS), stored(one, pool, FIELDS)
    for name in FIELDS:
        assert np.array_equal(got[name], want[name].astype(np.float64), equal_nan=True), name
        assert np.array_equal(got[name], single[name], equal_nan=True), name
    a, b = manifest(one), manifest(cluster)
    for name in FIELDS:
        assert {k: a[name].get(k) for k in COUNTS} == {k: b[name].get(k) for k in COUNTS}, name
        assert b[name]["mean"] == pytest.approx(a[name]["mean"], rel=1e-12)
        assert b[name]["std"] == pytest.approx(a[name]["std"], rel=1e-12)
    assert b["vit-b-32"]["join_check"]["rows"] == a["vit-b-32"]["join_check"]["rows"]
    folder = next((cluster / "work").glob("import-*"))
    assert sorted(p.name for p in folder.iterdir()) == ["cols", "import.json"]  # the passes' rows are gone


def test_uid_keyed_files_join_by_buckets(pool, in_process, tmp_path):
    """Files keyed by uid: bucketed by uid from the start (no key pass); a uid the pool lacks is counted."""
    want = naive_values(pool, ["FLYT"])["FLYT"]
    hexes = [u for f in sorted(pool["metadata"].glob("*.parquet")) for u in pq.read_table(f).column("uid").to_pylist()]
    has = np.flatnonzero(~np.isnan(want))
    src = tmp_path / "by_uid"
    src.mkdir()
    pq.write_table(pa.table({"uid": [hexes[j] for j in has] + ["f" * 32], "FLYT": np.append(want[has], 5.0)}),
                   src / "part.parquet")
    store = tmp_path / "store"
    invoke(["inputs", "import", src, "--metadata-dir", pool["metadata"], "--inputs-dir", store, "--missing", "min",
            "--quiet", "--ray", "local", "--partitions", "4"])
    assert "join_keys_bucket" not in dict(in_process)
    assert np.array_equal(stored(store, pool, ["FLYT"])["FLYT"], want.astype(np.float64), equal_nan=True)
    assert manifest(store)["FLYT"]["source_rows_not_in_pool"] == 1 and manifest(store)["FLYT"]["source_rows"] == len(has) + 1


def _rewrite(folder, edit):
    """Each parquet file of ``folder`` replaced by ``edit(table, index)``."""
    for i, f in enumerate(sorted(folder.glob("*.parquet"))):
        pq.write_table(edit(pq.read_table(f), i), f)


def _bad_inputs(pool, tmp_path):
    """Inputs one machine refuses, each a copy of the pool with one fault."""
    cases = {}
    released = tmp_path / "twice_key"
    shutil.copytree(pool["released"], released)
    first = pq.read_table(sorted(released.glob("*.parquet"))[0]).slice(5, 1)
    _rewrite(released, lambda t, i: pa.concat_tables([t, first]) if i == 2 else t)  # a key of file 0 again in file 2
    cases["a key twice in the score files"] = ({**pool, "released": released}, "list key")
    shards = tmp_path / "two_keys"
    shutil.copytree(pool["shards"], shards)

    scored = {k for f in pool["released"].glob("*.parquet") for k in pq.read_table(f).column("key").to_pylist()}

    def same_uid(t, i):  # the shard's second scored download under the first one's uid
        if i != 3:
            return t
        uids = t.column("uid").to_pylist()
        ok = [j for j, k in enumerate(t.column("key").to_pylist()) if k in scored]
        uids[ok[1]] = uids[ok[0]]
        return t.set_column(t.schema.get_field_index("uid"), "uid", pa.array(uids))

    _rewrite(shards, same_uid)
    cases["two keys of one pool uid"] = ({**pool, "shards": shards}, "join to the same pool example")
    meta = tmp_path / "twice_in_pool"
    shutil.copytree(pool["metadata"], meta)

    def repeat_uid(t, i):  # the last file's first uid is the first file's first uid
        if i != 4:
            return t
        uids = t.column("uid").to_pylist()
        uids[0] = pq.read_table(sorted(pool["metadata"].glob("*.parquet"))[0]).column("uid")[0].as_py()
        return t.set_column(0, "uid", pa.array(uids))

    _rewrite(meta, repeat_uid)
    cases["a uid twice in the pool"] = ({**pool, "metadata": meta}, "appears more than once in the pool")
    by_uid = tmp_path / "twice_uid"  # keyed by uid: a uid the pool lacks, listed twice
    by_uid.mkdir()
    pq.write_table(pa.table({"uid": ["f" * 32, "e" * 32, "f" * 32], "FLYT": [1.0, 2.0, 3.0]}), by_uid / "a.parquet")
    cases["a uid twice in the score files"] = ({**pool, "released": by_uid}, "list uid ffff")
    return cases


def test_the_bucket_join_refuses_what_one_machine_refuses(pool, in_process, tmp_path):
    for case, (paths, words) in _bad_inputs(pool, tmp_path).items():
        one = invoke(import_args(paths, tmp_path / f"one-{case}"), code=2)
        many = invoke(import_args(paths, tmp_path / f"many-{case}", "--ray", "local", "--partitions", "3"), code=2)
        assert words in one.output and words in many.output, (case, one.output, many.output)
        assert one.output.strip().splitlines()[-1] == many.output.strip().splitlines()[-1], case


def test_each_task_holds_one_bucket_and_a_killed_join_resumes(pool, in_process, tmp_path, monkeypatch):
    """With 4 buckets no bucket task reads more than half of the rows (their sum is every row); a join
    stopped in its uid pass resumes there: the map passes are not run again, and the store is the same."""
    held = {}
    gather = bucket_join._gather

    def recording(plan, stage, b, dtype):
        rows = gather(plan, stage, b, dtype)
        held.setdefault(stage, []).append(len(rows))
        return rows

    monkeypatch.setattr(bucket_join, "_gather", recording)
    uids_pass = bucket_join.join_uids_bucket
    stops = []

    def killed(task):
        if task.index == 2 and not stops:
            stops.append(task.index)
            raise KeyboardInterrupt  # what a stop signal raises in the driver
        return uids_pass(task)

    monkeypatch.setattr(bucket_join, "join_uids_bucket", killed)
    store = tmp_path / "store"
    args = import_args(pool, store, "--ray", "local", "--partitions", "4", "--field", "FLYT")
    invoke(args, code=1)
    mapped = {fn for fn, _ in in_process}
    assert {"map_downloads", "map_scores", "map_pool", "join_keys_bucket"} <= mapped
    monkeypatch.setattr(bucket_join, "batches", lambda *a: pytest.fail("a score file was read again"))
    in_process.clear()
    invoke(args)
    assert np.array_equal(stored(store, pool, ["FLYT"])["FLYT"],
                          naive_values(pool, ["FLYT"])["FLYT"].astype(np.float64), equal_nan=True)
    downloaded = int((~np.isnan(naive_values(pool, ["FLYT"])["FLYT"])).sum())
    assert sum(held["scores"][:4]) == downloaded and max(held["scores"]) < downloaded / 2
    assert sum(held["pool"][:4]) == 12_000 and max(held["pool"]) < 12_000 / 2


def test_a_damaged_file_of_a_stopped_join_is_one_line_naming_the_folder(pool, in_process, tmp_path, monkeypatch):
    """A file of the join's folder damaged after a stop (each is written atomically, so only from outside):
    exit 2, one line naming the folder to delete; once deleted, the join starts afresh."""
    def stopped(task):
        raise KeyboardInterrupt

    keys_pass = bucket_join.join_keys_bucket
    monkeypatch.setattr(bucket_join, "join_keys_bucket", stopped)
    store = tmp_path / "store"
    args = import_args(pool, store, "--ray", "local", "--partitions", "3", "--field", "FLYT")
    invoke(args, code=1)
    monkeypatch.setattr(bucket_join, "join_keys_bucket", keys_pass)
    folder = next((store / "work").glob("import-*"))
    damaged = sorted((folder / "scores").glob("*[0-9].npy"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])
    r = invoke(args, code=2)
    assert f"delete {folder} and run again" in r.output and "Traceback" not in r.output
    shutil.rmtree(folder)
    invoke(args)
    assert np.array_equal(stored(store, pool, ["FLYT"])["FLYT"],
                          naive_values(pool, ["FLYT"])["FLYT"].astype(np.float64), equal_nan=True)


def test_recompute_joins_afresh(pool, in_process, tmp_path):
    store = tmp_path / "store"
    args = import_args(pool, store, "--ray", "local", "--partitions", "3", "--field", "FLYT")
    invoke(args)
    marker = next((store / "work").glob("import-*")) / "cols" / "planted.npy"  # a file no join writes
    marker.write_bytes(b"")
    in_process.clear()
    invoke(args)  # reused: nothing joined again
    assert marker.exists() and "map_scores" not in dict(in_process)
    invoke([*args, "--recompute", "FLYT"])
    assert not marker.exists() and "map_scores" in dict(in_process)
    assert np.array_equal(stored(store, pool, ["FLYT"])["FLYT"],
                          naive_values(pool, ["FLYT"])["FLYT"].astype(np.float64), equal_nan=True)


def test_a_ray_tasks_own_error_is_raised_as_itself():
    """Ray wraps a task's exception (its wrapper of an OSError has no errno); the executor raises the
    package's errors and OSErrors as the task raised them, and anything else as Ray reports it."""
    import errno
    import types

    from flyt_datacomp.errors import FlytInputError

    class TaskError(Exception):
        def __init__(self, cause):
            self.cause = cause

    def failing(cause):
        def get(ref):
            raise TaskError(cause)
        return types.SimpleNamespace(exceptions=types.SimpleNamespace(RayTaskError=TaskError), get=get)

    with pytest.raises(OSError) as err:
        executors._result(failing(OSError(errno.ENOSPC, "No space left on device")), None)
    assert err.value.errno == errno.ENOSPC and not isinstance(err.value, TaskError)
    with pytest.raises(FlytInputError, match="bad input"):
        executors._result(failing(FlytInputError("bad input")), None)
    with pytest.raises(TaskError):
        executors._result(failing(ZeroDivisionError()), None)


def test_partitions_without_ray_is_refused(pool, tmp_path):
    r = invoke(import_args(pool, tmp_path / "store", "--partitions", "3"), code=2)
    assert "--partitions applies with --ray" in r.output


@pytest.mark.slow
def test_a_local_ray_cluster_runs_the_join_stops_on_sigterm_and_resumes(tmp_path):
    """The passes as Ray tasks in worker processes: SIGTERM during the key pass stops the command within
    seconds (exit 143) and leaves no Ray process; a rerun resumes and gives one machine's store."""
    pytest.importorskip("ray")
    big = make_pool(tmp_path / "big", rows=300_000, shard_size=1_000, metadata_files=6, released_files=6)
    one, cluster = tmp_path / "one", tmp_path / "cluster"
    fields = ["--field", "FLYT", "--field", "vit-b-32"]
    invoke(import_args(big, one, *fields))
    args = import_args(big, cluster, *fields, "--ray", "local", "--partitions", "3", quiet=False)
    proc = subprocess.Popen([sys.executable, "-c", _RUN, "x", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(REPO)})
    os.set_blocking(proc.stderr.fileno(), False)
    seen, start = b"", time.monotonic()
    while b"join: reading score files" not in seen and proc.poll() is None and time.monotonic() - start < 180:
        seen += proc.stderr.read() or b""
        time.sleep(0.05)
    assert b"join: reading score files" in seen, seen[-500:]
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and time.monotonic() - sent < 10, proc.returncode
    time.sleep(2)
    assert not any(f"_{proc.pid}/" in line for line in _ray_processes()), "a Ray process outlived the command"
    folder = next((cluster / "work").glob("import-*"))
    damaged = sorted(folder.glob("*/*[0-9].npy"))[0]  # a task's error inside a Ray worker: one line, exit 2
    damaged.write_bytes(damaged.read_bytes()[:100])
    r = invoke(args, code=2)
    assert f"delete {folder} and run again" in r.output and "RayTaskError" not in r.output, r.output[-500:]
    shutil.rmtree(folder)  # as the message says
    invoke(args)
    a, b = stored(one, big, ["FLYT", "vit-b-32"]), stored(cluster, big, ["FLYT", "vit-b-32"])
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name
    assert len(manifest(cluster)["FLYT"]["join_cluster"]["worker_peak_rss_bytes"]) >= 1


def _ray_processes() -> list[str]:
    """The command lines of the Ray processes on this machine whose session the killed command started
    (a session's name holds the pid of the process that started it)."""
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "session_" in line and ("raylet" in line or "gcs_server" in line)]
