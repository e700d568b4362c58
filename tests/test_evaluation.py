"""`flyt-datacomp eval`: DataComp's scripts run as subprocesses, checks of their outputs, the report.

The DataComp scripts here are stand-ins (tests/datacomp_standin/) with DataComp's options and
output formats, run by a "DataComp python" that is this Python with a fake webdataset version
installed in front. A slow test runs the real checkout when DATACOMP_DIR and DATACOMP_PYTHON are set.
"""

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from poolgen import write_image_shards, write_metadata

from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.evaluation import reshard as reshard_mod
from flyt_datacomp.evaluation.report import TASKS
from flyt_datacomp.shards import index_shards
from flyt_datacomp.uids import UID_DTYPE, hex_to_uids, read_subset, write_subset

STANDIN = Path(__file__).parent / "datacomp_standin"
STANDIN_TASKS = json.loads((STANDIN / "tasklist.json").read_text())


# --------------------------------------------------------------------------- fixtures


def fake_python(tmp_path, webdataset_version="0.2.31"):
    """This Python, with a webdataset distribution of the given version found first."""
    site = tmp_path / f"site-{webdataset_version}"
    dist = site / f"webdataset-{webdataset_version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: webdataset\nVersion: {webdataset_version}\n")
    exe = tmp_path / f"python-wds-{webdataset_version}"
    exe.write_text(f'#!/bin/sh\nPYTHONPATH="{site}${{PYTHONPATH:+:$PYTHONPATH}}" exec "{sys.executable}" "$@"\n')
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture
def dc(tmp_path, monkeypatch):
    """A stand-in DataComp checkout and python; calls are recorded in dc['calls']."""
    root = tmp_path / "datacomp"
    shutil.copytree(STANDIN, root)
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("STANDIN_CALLS", str(calls))
    for var in ("STANDIN_FAIL", "STANDIN_DROP", "STANDIN_TRAIN_ERROR", "DATACOMP_DIR", "DATACOMP_PYTHON"):
        monkeypatch.delenv(var, raising=False)
    return {"dir": root, "python": fake_python(tmp_path), "calls": calls,
            "args": ["--datacomp-dir", str(root), "--datacomp-python", fake_python(tmp_path / "py")]}


def calls(dc, script=None):
    if not dc["calls"].exists():
        return []
    rows = [json.loads(line) for line in dc["calls"].read_text().splitlines()]
    return [r for r in rows if script is None or r["script"] == script]


def write_img2dataset_parquets(shards_dir, kept, failed, per_shard):
    """img2dataset's per-shard parquet: the shard's samples as successes plus some failed urls."""
    for shard, start in enumerate(range(0, len(kept), per_shard)):
        rows = kept[start:start + per_shard]
        bad = failed[shard * 2:shard * 2 + 2]
        pq.write_table(pa.table({"uid": rows + bad, "status": ["success"] * len(rows) + ["failed_to_download"] * len(bad)}),
                       shards_dir / f"{shard:08d}.parquet")


@pytest.fixture
def pool(tmp_path):
    """Image shards with about 15% of the pool missing, and a subset with repeated uids (some of
    them without an image)."""
    _, hexes = write_metadata(tmp_path / "metadata", sizes=(40, 30, 50), with_npz=False)
    hexes = list(hexes)
    kept = write_image_shards(tmp_path / "shards", hexes, per_shard=25, keep_fraction=0.85)
    rng = np.random.default_rng(3)
    counts = np.zeros(len(hexes), dtype=np.int64)
    chosen = rng.choice(len(hexes), 70, replace=False)
    counts[chosen] = rng.integers(1, 5, len(chosen))
    subset = tmp_path / "subset.npy"
    write_subset(subset, hex_to_uids(hexes), counts)
    kept_set = set(kept)
    expected = {u: int(c) for u, c in zip(hexes, counts) if c and u in kept_set}
    missing = int(sum(c for u, c in zip(hexes, counts) if c and u not in kept_set))
    assert missing > 0 and max(expected.values()) > 1
    return {"hexes": hexes, "kept": kept, "subset": subset, "shards": tmp_path / "shards", "expected": expected,
            "entries": int(counts.sum()), "missing": missing}


def invoke(args, code=0):
    result = CliRunner().invoke(cli_main, ["eval", *map(str, args)])
    assert result.exit_code == code, (result.output, result.exception)
    return result


def copies_in(folder):
    """Copies per uid in resharded tars, read independently of the package."""
    got = {}
    for tar in sorted(Path(folder).glob("*.tar")):
        with tarfile.open(tar) as fh:
            for name in fh.getnames():
                if name.endswith(".json"):
                    uid = name[:-5].rsplit("-", 1)[0]
                    got[uid] = got.get(uid, 0) + 1
    return got


def reshard_args(dc, pool, out, *extra):
    return ["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", out, "--quiet", *dc["args"],
            *extra]


# --------------------------------------------------------------------------- shards index


def test_shard_index_from_parquet_and_tars(pool, tmp_path):
    from_tars = index_shards(pool["shards"], progress=False)
    assert {s.source for s in from_tars.shards} == {"tar"}
    assert list(from_tars.uids) == list(hex_to_uids(pool["kept"]))
    sizes = sum(p.stat().st_size for p in pool["shards"].glob("*.tar"))
    assert from_tars.mean_sample_bytes == pytest.approx(sizes / len(pool["kept"]))
    failed = [u for u in pool["hexes"] if u not in set(pool["kept"])]
    write_img2dataset_parquets(pool["shards"], pool["kept"], failed, per_shard=25)
    from_parquet = index_shards(pool["shards"], progress=False)
    assert {s.source for s in from_parquet.shards} == {"parquet"}
    assert list(from_parquet.uids) == list(from_tars.uids)  # failed downloads are not images
    query = hex_to_uids([pool["kept"][0], failed[0], pool["kept"][-1]])
    assert from_parquet.images_of(query).tolist() == [1, 0, 1]


def test_shard_index_errors(tmp_path):
    from flyt_datacomp.errors import FlytInputError

    with pytest.raises(FlytInputError, match="does not exist"):
        index_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FlytInputError, match="no .tar shards"):
        index_shards(tmp_path / "empty")
    (tmp_path / "empty" / "00000000.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(FlytInputError, match="cannot read tar shard"):
        index_shards(tmp_path / "empty", progress=False)


# --------------------------------------------------------------------------- pure parts of reshard


def test_coverage_counts_copies_times_images():
    cov = reshard_mod.coverage(np.array([3, 1, 2, 5]), np.array([1, 0, 2, 0]))
    assert (cov.entries, cov.distinct_uids, cov.max_repetitions) == (11, 4, 5)
    assert (cov.entries_without_image, cov.uids_without_image) == (6, 2)
    assert cov.expected_samples == 3 * 1 + 2 * 2 and cov.uids_with_several_images == 1


def simulate_distinct_in_buffer(counts, bufsize, seed=0):
    """webdataset's shuffle (fill to bufsize, then draw uniformly) over a stream where each example's
    copies come one after another; mean number of distinct examples held in the steady state."""
    rng, buf, held, seen = random.Random(seed), [], {}, []
    stream = iter([i for i, k in enumerate(counts) for _ in range(k)])
    for u in stream:
        for v in [u] + ([next(stream, None)] if len(buf) + 1 < bufsize else []):
            if v is not None:
                buf.append(v)
                held[v] = held.get(v, 0) + 1
        if len(buf) >= bufsize:
            j = rng.randrange(len(buf))
            v, buf[j] = buf[j], buf[-1]
            buf.pop()
            held[v] -= 1
            if not held[v]:
                del held[v]
            seen.append(len(held))
    seen = np.array(seen)
    return seen[len(seen) // 4: 3 * len(seen) // 4].mean()


@pytest.mark.parametrize("kind", ["unique", "geometric", "zipf"])
def test_buffer_estimate_matches_simulated_shuffle(kind):
    rng = np.random.default_rng(0)
    counts = {"unique": np.ones(20_000, np.int64), "geometric": rng.geometric(0.2, 7_000),
              "zipf": np.minimum(rng.zipf(1.8, 7_000), 60)}[kind]
    est = reshard_mod.estimate_buffer(1000, 1, counts, np.ones_like(counts), sample_bytes=5000.0)
    simulated = simulate_distinct_in_buffer(counts, 1000)
    assert est.held_per_worker == 1000
    assert est.held_per_worker * est.distinct_fraction == pytest.approx(simulated, rel=0.06)
    per_sample = est.distinct_fraction * 5000 + reshard_mod.ENTRY_OVERHEAD_BYTES
    assert est.bytes_per_worker == int(1000 * per_sample)


def test_buffer_estimate_small_share_and_workers():
    counts, images = np.full(100, 2), np.ones(100, np.int64)
    images[:10] = 0  # without an image: never buffered
    est = reshard_mod.estimate_buffer(10_000, 4, counts, images, sample_bytes=1000.0)
    assert est.held_per_worker == 45  # each worker's share of the 180 samples written
    assert est.distinct_fraction == pytest.approx(1.5 / 2)
    assert est.total_bytes == 4 * est.bytes_per_worker
    assert reshard_mod.estimate_buffer(0, 4, counts, images, 1000.0).bytes_per_worker == 0


# --------------------------------------------------------------------------- eval reshard


def test_reshard_passes_arguments_and_checks_counts(dc, pool, tmp_path):
    out = tmp_path / "resharded"
    r = invoke(reshard_args(dc, pool, out, "--workers", "2", "--verify-copies", "--", "--shard-size", "40"))
    (call,) = calls(dc, "resharder")
    argv = call["argv"]
    assert argv[argv.index("-i") + 1] == str(pool["shards"])
    work = Path(argv[argv.index("-o") + 1])  # a working folder inside the output, moved up and removed after
    assert work.parent == out.resolve() and work.name.startswith(".resharding.") and not work.exists()
    assert sorted(p.name for p in out.iterdir() if not p.name.endswith((".tar", "_stats.json"))) == [
        "flyt_reshard.json", "meta.json", "sample_ids.npy"]
    assert argv[argv.index("-s") + 1] == str(pool["subset"].resolve())
    assert argv[argv.index("-j") + 1] == "2"
    assert argv[argv.index("--shuffle-bufsize") + 1] == "1500000"  # repeated uids: the paper's buffer
    assert argv[-2:] == ["--shard-size", "40"]  # passed through unchanged
    expected = sum(pool["expected"].values())
    assert copies_in(out) == pool["expected"]
    assert len(list(out.glob("*.tar"))) == -(-expected // 40)
    assert f"subset entries:           {pool['entries']:,}" in r.output
    assert f"entries without an image: {pool['missing']:,}" in r.output
    assert f"samples written:          {expected:,}" in r.output
    assert "[INFO] output" in r.output  # the child's output is streamed
    assert "all match the subset" in r.output
    record = json.loads((out / "flyt_reshard.json").read_text())
    assert record["written"]["samples"] == expected and record["coverage"]["entries"] == pool["entries"]
    assert record["parameters"]["shuffle_bufsize"] == 1_500_000 and record["version"]


def test_reshard_buffer_defaults_and_override(dc, pool, tmp_path):
    uids, _ = read_subset(pool["subset"])
    once = tmp_path / "once.npy"
    write_subset(once, uids, np.ones(len(uids), np.int64))
    invoke(reshard_args(dc, {**pool, "subset": once}, tmp_path / "a"))
    invoke(reshard_args(dc, pool, tmp_path / "b", "--shuffle-bufsize", "0"))
    invoke(reshard_args(dc, pool, tmp_path / "c", "--shuffle-bufsize", "777"))
    bufs = [c["argv"][c["argv"].index("--shuffle-bufsize") + 1] for c in calls(dc, "resharder")]
    assert bufs == ["0", "0", "777"]


def test_reshard_refuses_a_buffer_that_does_not_fit(dc, pool, tmp_path, monkeypatch):
    monkeypatch.setattr(reshard_mod, "available_memory_bytes", lambda: 100_000)
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--workers", "3"), code=2)
    assert "--workers" in r.output and "--shuffle-bufsize" in r.output and "per worker" in r.output
    assert "3 workers" in r.output and not calls(dc, "resharder")
    monkeypatch.setattr(reshard_mod, "available_memory_bytes", lambda: 10**12)
    invoke(reshard_args(dc, pool, tmp_path / "out", "--workers", "3"))


def test_reshard_prerequisite_errors(dc, pool, tmp_path):
    out = tmp_path / "out"
    base = ["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", out]
    r = invoke([*base, "--datacomp-dir", tmp_path / "pool-only", "--datacomp-python", dc["python"]], code=2)
    assert "does not exist" in r.output
    (tmp_path / "empty-checkout").mkdir()
    r = invoke([*base, "--datacomp-dir", tmp_path / "empty-checkout", "--datacomp-python", dc["python"]], code=2)
    assert "resharder.py not found" in r.output
    r = invoke([*base, "--datacomp-dir", dc["dir"], "--datacomp-python", tmp_path / "no-such-python"], code=2)
    assert "cannot be started" in r.output and "--datacomp-python" in r.output
    broken = tmp_path / "broken-python"
    broken.write_text("#!/bin/sh\necho 'libpython3.10.so: cannot open shared object file' >&2\nexit 127\n")
    broken.chmod(0o755)
    r = invoke([*base, "--datacomp-dir", dc["dir"], "--datacomp-python", broken], code=2)
    assert "does not run" in r.output and "exit code 127" in r.output and "libpython3.10.so" in r.output
    new = fake_python(tmp_path / "new", "0.2.86")
    r = invoke([*base, "--datacomp-dir", dc["dir"], "--datacomp-python", new], code=2)
    assert "webdataset 0.2.86" in r.output and "older than 0.2.86" in r.output
    out.mkdir()
    (out / "old.tar").write_bytes(b"x")
    r = invoke([*base, *dc["args"]], code=2)
    assert "is not empty" in r.output and "--overwrite" in r.output
    (pool["shards"] / "00000001_stats.json").unlink()
    (out / "flyt_reshard.json").write_text('{"written_by": "eval reshard"}')  # as if an earlier reshard wrote it
    r = invoke([*base, *dc["args"], "--overwrite"], code=2)
    assert "00000001.tar" in r.output and "_stats.json" in r.output
    assert not calls(dc, "resharder")


def test_reshard_overwrite_replaces_contents(dc, pool, tmp_path):
    out = tmp_path / "out"
    invoke(reshard_args(dc, pool, out, "--shuffle-bufsize", "0"))
    (out / "stale_99.tar").write_bytes(b"x")
    invoke(reshard_args(dc, pool, out, "--overwrite"))
    assert not (out / "stale_99.tar").exists() and copies_in(out) == pool["expected"]


def test_reshard_env_defaults(dc, pool, tmp_path, monkeypatch):
    monkeypatch.setenv("DATACOMP_DIR", str(dc["dir"]))
    monkeypatch.setenv("DATACOMP_PYTHON", dc["python"])
    invoke(["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", tmp_path / "o", "--quiet"])
    assert len(calls(dc, "resharder")) == 1


def test_reshard_child_failure_reports_exit_code_and_tail(dc, pool, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_FAIL", "resharder")
    log = tmp_path / "reshard.log"
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--log", log), code=3)
    assert "failed with exit code 7" in r.output
    assert "RuntimeError: simulated failure" in r.output.split("Its last lines:")[1]
    assert str(log) in r.output and "simulated failure" in log.read_text()
    assert not (tmp_path / "out" / "flyt_reshard.json").exists()


def test_reshard_count_mismatch_is_an_error(dc, pool, tmp_path, monkeypatch):
    monkeypatch.setenv("STANDIN_DROP", "1")
    r = invoke(reshard_args(dc, pool, tmp_path / "out"), code=4)
    expected = sum(pool["expected"].values())
    assert f"wrote {expected - 1:,} samples" in r.output and f"but {expected:,} subset entries" in r.output
    assert not (tmp_path / "out" / "flyt_reshard.json").exists()


def test_verify_copies_catches_a_wrong_uid(tmp_path):
    got = {"a" * 32: 2, "b" * 32: 1}
    bad = reshard_mod.compare_copies({"a" * 32: 2, "b" * 32: 2}, got)
    assert bad == [f"{'b' * 32}: expected 2, found 1"]
    assert reshard_mod.compare_copies({"a" * 32: 2, "b" * 32: 1}, got) == []


# --------------------------------------------------------------------------- eval train / evaluate


@pytest.fixture
def resharded(dc, pool, tmp_path):
    out = tmp_path / "resharded"
    invoke(reshard_args(dc, pool, out))
    return out


def train_args(dc, data, out, *extra):
    return ["train", "--data-dir", data, "--scale", "debug", "--output-dir", out, "--exp-name", "exp", *dc["args"],
            *extra]


def test_train_passes_arguments_and_records(dc, resharded, tmp_path):
    out = tmp_path / "train"
    r = invoke(train_args(dc, resharded, out, "--", "--num_checkpoints", "3", "--seed", "4"))
    (call,) = calls(dc, "train")
    assert call["argv"] == ["--scale", "debug", "--data_dir", str(resharded), "--output_dir", str(out.resolve()),
                            "--exp_name", "exp", "--num_checkpoints", "3", "--seed", "4"]
    assert (out / "exp" / "checkpoints" / "epoch_3.pt").exists() and not (out / "exp" / "checkpoints" / "epoch_4.pt").exists()
    assert "Train Epoch: 3" in r.output
    record = json.loads((out / "exp" / "flyt_train.json").read_text())
    assert record["scale_config"]["train_num_samples"] == 128_000 and record["parameters"]["scale"] == "debug"


def test_train_errors(dc, resharded, tmp_path, monkeypatch):
    out = tmp_path / "train"
    r = invoke(["train", "--data-dir", resharded, "--scale", "tiny", "--output-dir", out, "--exp-name", "e",
                *dc["args"]], code=2)
    assert "Invalid value for '--scale'" in r.output and "debug" in r.output and "xlarge" in r.output
    (tmp_path / "no-shards").mkdir()
    r = invoke(train_args(dc, tmp_path / "no-shards", out), code=2)
    assert "no .tar shards" in r.output and "subset file" in r.output
    monkeypatch.setenv("STANDIN_TRAIN_ERROR", "1")
    r = invoke(train_args(dc, resharded, out), code=3)
    assert "exited 0 but reported an error" in r.output and "Error running training" in r.output
    monkeypatch.delenv("STANDIN_TRAIN_ERROR")
    r = invoke(train_args(dc, resharded, out))  # a rerun resumes the same run
    assert "resuming from epoch 5" in r.output
    other = tmp_path / "other-shards"
    other.mkdir()
    for tar in Path(resharded).glob("*.tar"):
        (other / tar.name).write_bytes(tar.read_bytes())
    r = invoke(train_args(dc, other, out), code=2)  # ... but not another run in the same folder
    assert "holds a run with other settings" in r.output and "--exp-name" in r.output and "--overwrite" in r.output
    r = invoke(train_args(dc, resharded, out, "--overwrite"))
    assert "resuming" not in r.output and "Train Epoch: 1" in r.output


def test_train_through_torchrun(dc, resharded, tmp_path):
    invoke(train_args(dc, resharded, tmp_path / "train", "--num-gpus", "2"))
    ranks = sorted((c["rank"], c["world_size"]) for c in calls(dc, "train"))
    assert ranks == [(0, 2), (1, 2)]
    assert (tmp_path / "train" / "exp" / "info.pkl").exists()


@pytest.fixture
def trained(dc, resharded, tmp_path):
    invoke(train_args(dc, resharded, tmp_path / "train"))
    return tmp_path / "train" / "exp"


def test_evaluate_runs_reports_and_resumes(dc, trained, tmp_path, monkeypatch):
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    base = ["evaluate", "--train-output-dir", trained, "--data-dir", evalsets, *dc["args"]]
    monkeypatch.setenv("STANDIN_FAIL", "evaluate")
    r = invoke(base, code=3)
    assert "simulated crash" in r.output
    assert len((trained / "eval_results.jsonl").read_text().splitlines()) == 10
    monkeypatch.delenv("STANDIN_FAIL")
    r = invoke([*base, "--", "--batch_size", "8"])  # a rerun evaluates only the tasks the file lacks
    assert calls(dc, "evaluate")[-1]["argv"][-2:] == ["--batch_size", "8"]
    assert "Found 10 eval result(s)" in r.output and "Average:" in r.output
    assert len((trained / "eval_results.jsonl").read_text().splitlines()) == 40
    r = invoke(["evaluate", "--train-output-dir", tmp_path, "--data-dir", evalsets, *dc["args"]], code=2)
    assert "no info.pkl" in r.output


# --------------------------------------------------------------------------- eval report


def results_file(path, rng, drop=(), extra_lines=()):
    """An eval_results.jsonl like evaluate.py writes: 40 lines, FairFace/UTKFace without a main metric."""
    values = {}
    with open(path, "w") as fh:
        for task in STANDIN_TASKS:
            if task["name"] in drop:
                continue
            if task["main_metric"] is None:
                metrics = {"main_metric": None, "acc_race_binary": 0.5}
            else:
                values[task["name"]] = v = float(rng.uniform(0.05, 0.95))
                metrics = {task["main_metric"]: v, "main_metric": v}
            fh.write(json.dumps({"key": task["key"], "dataset": task["name"], "metrics": metrics}) + "\n")
        for line in extra_lines:
            fh.write(json.dumps(line) + "\n")
    return values


def independent_scores(values):
    """The Table-1 columns from the task list's tags (VTAB, retrieval) and the ImageNet shift sets."""
    def by_tag(prefix):
        return [t["name"] for t in STANDIN_TASKS if any(g.startswith(prefix) for g in t["tags"])]

    shifts = ["ImageNet Sketch", "ImageNet v2", "ImageNet-A", "ImageNet-O", "ImageNet-R", "ObjectNet"]
    def mean(names):
        return sum(values[n] for n in names) / len(names)

    assert len(by_tag("vtab")) == 13 and len(by_tag("retrieval")) == 3 and len(values) == 38
    return {"ImageNet": values["ImageNet 1k"], "ImageNet dist. shifts": mean(shifts), "VTAB": mean(by_tag("vtab")),
            "Retrieval": mean(by_tag("retrieval")), "Average": mean(list(values))}


def test_report_equals_independent_groups(tmp_path):
    rng = np.random.default_rng(0)
    values = results_file(tmp_path / "eval_results.jsonl", rng)
    expect = independent_scores(values)
    r = invoke(["report", tmp_path / "eval_results.jsonl"])
    assert r.stdout.splitlines() == [f"{k}: {v:.3f}" for k, v in expect.items()]
    data = json.loads(invoke(["report", tmp_path, "--json"]).stdout)
    assert data["complete"] and data["num_tasks"] == 38 and data["missing"] == []
    for k, v in expect.items():
        assert data["scores"][k] == pytest.approx(v, abs=1e-12)
    assert data["tasks"]["ImageNet 1k"] == pytest.approx(values["ImageNet 1k"], rel=1e-14)


def test_report_finds_file_in_train_output(tmp_path):
    exp = tmp_path / "out" / "myexp"
    exp.mkdir(parents=True)
    results_file(exp / "eval_results.jsonl", np.random.default_rng(1))
    assert invoke(["report", tmp_path / "out"]).stdout == invoke(["report", exp]).stdout
    r = invoke(["report", tmp_path / "nothing-here"], code=2)
    assert "does not exist" in r.output


def test_report_incomplete_names_missing_tasks(tmp_path):
    drop = ("ImageNet-O", "SVHN", "WinoGAViL")
    results_file(tmp_path / "eval_results.jsonl", np.random.default_rng(2), drop=drop)
    r = invoke(["report", tmp_path / "eval_results.jsonl"], code=2)
    assert "incomplete" in r.output and "3 of 38 tasks are missing" in r.output
    assert all(name in r.output for name in drop)
    assert "Average: incomplete" in r.stdout and "ImageNet: 0." in r.stdout
    data = json.loads(invoke(["report", tmp_path, "--json"], code=2).stdout)
    assert not data["complete"] and sorted(data["missing"]) == sorted(drop) and data["scores"]["Average"] is None


def test_report_refuses_duplicates_unknown_and_malformed(tmp_path):
    extra = [{"key": "imagenet1k", "dataset": "ImageNet 1k", "metrics": {"main_metric": 0.3}}]
    results_file(tmp_path / "dup.jsonl", np.random.default_rng(3), extra_lines=extra)
    assert "more than one line: ImageNet 1k" in invoke(["report", tmp_path / "dup.jsonl"], code=2).output
    extra = [{"key": "my/task", "dataset": "My Task", "metrics": {"main_metric": 0.3}}]
    results_file(tmp_path / "extra.jsonl", np.random.default_rng(3), extra_lines=extra)
    assert "does not score: My Task" in invoke(["report", tmp_path / "extra.jsonl"], code=2).output
    (tmp_path / "bad.jsonl").write_text('{"key": "x", "dataset": "X", "metrics": {"main_metric": 1}}\nnot json\n')
    assert "line 2 of" in invoke(["report", tmp_path / "bad.jsonl"], code=2).output
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "]" * 100_000 + "\n")
    assert "line 1 of" in invoke(["report", tmp_path / "deep.jsonl"], code=2).output


def test_numbers_are_read_as_datacomp_reads_them(tmp_path):
    # pandas 1.5.1 (DataComp's pin) reads these JSON numbers so, checked against it
    from flyt_datacomp.evaluation.report import pandas_float

    assert pandas_float("0.3625") == 0.36250000000000004 != float("0.3625")
    assert pandas_float("0.123456789012345678") == 0.12345678901234501
    assert pandas_float("3.5e-1") == 0.35000000000000003 and pandas_float("-0.0625") == -0.0625
    assert pandas_float("0.5634000000000001") == 0.5634
    path = tmp_path / "eval_results.jsonl"
    results_file(path, np.random.default_rng(4))
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    for line in lines:
        if line["dataset"] == "ImageNet 1k":
            line["metrics"]["main_metric"] = 0.3625  # 18125 of 50000 right: an exact tie
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert invoke(["report", path]).stdout.splitlines()[0] == "ImageNet: 0.363"  # as aggregate_scores.py


def test_builtin_task_list_matches_standin():
    assert [(t["key"], t["name"]) for t in STANDIN_TASKS] == list(TASKS)


# --------------------------------------------------------------------------- eval run


def run_args(dc, pool, work, evalsets, *extra):
    return ["run", pool["subset"], "--shards-dir", pool["shards"], "--scale", "debug", "--work-dir", work,
            "--evalsets", evalsets, "--quiet", "--verify-copies", *dc["args"], *extra]


def test_run_end_to_end_resume_and_submission(dc, pool, tmp_path, monkeypatch):
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    monkeypatch.setenv("STANDIN_FAIL", "train")
    r = invoke(run_args(dc, pool, work, evalsets, "--train-args", "--num_checkpoints 4"), code=3)
    assert "DataComp's train.py failed with exit code 7" in r.output and "illegal memory access" in r.output
    assert (work / "logs" / "train.log").is_file()
    monkeypatch.delenv("STANDIN_FAIL")
    r = invoke(run_args(dc, pool, work, evalsets, "--train-args", "--num_checkpoints 4"))
    assert [c["script"] for c in calls(dc)] == ["resharder", "train", "train", "evaluate"]
    assert "complete (" in r.output.split("== train")[0]  # reshard skipped on the second run
    assert "resuming from epoch 2" in r.output
    sub = work / "submission"
    info = json.loads((sub / "submission.json").read_text())
    assert info["dataset_size"] == pool["entries"] and f"--dataset-size={pool['entries']}" in info["submit_command"]
    assert info["subset"]["entries_with_image"] == pool["entries"] - pool["missing"]
    assert info["subset"]["samples_resharded"] == sum(pool["expected"].values())
    assert (sub / "samples" / "subset.npy").read_bytes() == pool["subset"].read_bytes()
    assert json.loads((sub / "samples" / "subset.npy.json").read_text())["subset_sidecar"]["total_entries"] == pool["entries"]
    results = (work / "train" / "flyt" / "eval_results.jsonl").read_text()
    assert (sub / "results.jsonl").read_text() == results and (sub / "results.jsonl.json").is_file()
    values = {json.loads(line)["dataset"]: json.loads(line)["metrics"]["main_metric"] for line in results.splitlines()}
    expect = independent_scores({k: v for k, v in values.items() if v is not None})
    # the printed columns, to their three decimals: the stand-in's values are multiples of 1e-4, so a mean can
    # fall on a rounding boundary where fsum, np.mean and sum round apart; compare numbers, not strings
    printed = dict(re.findall(r"^(ImageNet|ImageNet dist\. shifts|VTAB|Retrieval|Average): ([0-9.]+)$", r.output, re.M))
    assert printed.keys() == expect.keys()
    assert all(abs(float(printed[k]) - v) <= 5e-4 + 1e-9 for k, v in expect.items())
    assert info["scores"]["Average"] == pytest.approx(expect["Average"])
    # everything complete: a third run skips every stage and rewrites the submission
    r = invoke(run_args(dc, pool, work, evalsets))
    assert len(calls(dc)) == 4 and r.output.count("skipped") == 3
    # a crashed evaluation resumes where it stopped
    lines = results.splitlines()
    (work / "train" / "flyt" / "eval_results.jsonl").write_text("\n".join(lines[:25]) + "\n")
    invoke(run_args(dc, pool, work, evalsets))
    assert [c["script"] for c in calls(dc)][-1] == "evaluate"
    assert (work / "train" / "flyt" / "eval_results.jsonl").read_text().splitlines() == lines


def test_run_refuses_another_subset_in_the_same_work_dir(dc, pool, tmp_path):
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    invoke(run_args(dc, pool, work, evalsets))
    uids, counts = read_subset(pool["subset"])
    other = tmp_path / "other.npy"
    write_subset(other, uids, counts + 1)
    r = invoke(run_args(dc, {**pool, "subset": other}, work, evalsets), code=2)
    assert "another subset" in r.output
    n = len(calls(dc))
    r = invoke(run_args(dc, pool, tmp_path / "work2", tmp_path / "no-evalsets"), code=2)
    assert "--evalsets" in r.output and len(calls(dc)) == n  # refused before the first stage
    invoke(run_args(dc, pool, work, tmp_path / "no-evalsets"))  # every stage done: evalsets not needed


# --------------------------------------------------------------------------- the real DataComp


@pytest.mark.slow
@pytest.mark.skipif(not (os.environ.get("DATACOMP_DIR") and os.environ.get("DATACOMP_PYTHON")),
                    reason="needs a DataComp checkout (DATACOMP_DIR) and its python (DATACOMP_PYTHON)")
def test_real_datacomp_reshard_and_aggregate(pool, tmp_path):
    out = tmp_path / "out"
    invoke(["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", out, "--workers", "2",
            "--verify-copies", "--quiet"])
    assert copies_in(out) == pool["expected"]
    results_file(tmp_path / "eval_results.jsonl", np.random.default_rng(5))
    real = subprocess.run([os.environ["DATACOMP_PYTHON"], Path(os.environ["DATACOMP_DIR"]) / "aggregate_scores.py",
                           "--input", tmp_path / "eval_results.jsonl"], capture_output=True, text=True, check=True)
    assert invoke(["report", tmp_path / "eval_results.jsonl"]).stdout == real.stdout


# --------------------------------------------------------------------------- what --overwrite may remove


def tree(folder):
    """Every file under ``folder`` with its bytes (symlinks not followed)."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("name", ["..", ".", "", "a/b", "./x", "-x", "a\\b", "x" * 256])
def test_train_refuses_an_exp_name_that_is_not_a_folder_name(dc, resharded, tmp_path, name):
    out = tmp_path / "runs" / "train"
    (out / "other-exp").mkdir(parents=True)
    (out / "other-exp" / "epoch_1.pt").write_text("keep")
    (tmp_path / "runs" / "notes.txt").write_text("keep")
    before = tree(tmp_path / "runs")
    r = invoke(["train", "--data-dir", resharded, "--scale", "debug", "--output-dir", out, f"--exp-name={name}",
                "--overwrite", *dc["args"]], code=2)
    assert "--exp-name" in r.output and "plain folder name" in r.output
    assert tree(tmp_path / "runs") == before and not calls(dc, "train")


def test_run_refuses_a_bad_exp_name_before_the_first_stage(dc, pool, tmp_path):
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    r = invoke(run_args(dc, pool, tmp_path / "work", evalsets, "--exp-name", ".."), code=2)
    assert "--exp-name" in r.output and not calls(dc)


def test_train_overwrite_refuses_a_symlinked_experiment_pointing_elsewhere(dc, resharded, tmp_path):
    elsewhere = tmp_path / "photos"
    elsewhere.mkdir()
    (elsewhere / "holiday.jpg").write_bytes(b"keep")
    out = tmp_path / "train"
    out.mkdir()
    (out / "exp").symlink_to(elsewhere)
    r = invoke(train_args(dc, resharded, out, "--overwrite"), code=2)
    assert str(elsewhere) in r.output and "flyt_train" in r.output
    assert (elsewhere / "holiday.jpg").read_bytes() == b"keep" and not calls(dc, "train")


def test_train_overwrite_refuses_the_resharded_data_as_experiment(dc, resharded, tmp_path):
    before = tree(resharded)
    r = invoke(["train", "--data-dir", resharded, "--scale", "debug", "--output-dir", resharded.parent,
                "--exp-name", resharded.name, "--overwrite", *dc["args"]], code=2)
    assert "--resharded-dir" in r.output and "is the" in r.output
    assert tree(resharded) == before and not calls(dc, "train")


def test_train_overwrite_empties_its_own_run_only(dc, resharded, tmp_path):
    out = tmp_path / "train"
    invoke(train_args(dc, resharded, out))
    (out / "exp" / "stale.txt").write_text("x")
    invoke(train_args(dc, resharded, out, "--overwrite"))
    assert not (out / "exp" / "stale.txt").exists() and (out / "exp" / "flyt_train.json").is_file()
    (out / "exp2").mkdir()
    (out / "exp2" / "mine.txt").write_text("keep")
    r = invoke([*train_args(dc, resharded, out, "--overwrite"), "--exp-name", "exp2"], code=2)
    assert "flyt_train_start.json" in r.output and (out / "exp2" / "mine.txt").read_text() == "keep"


def overlapping_outputs(pool, tmp_path):
    """Output folders that are, contain or lie inside the shards folder, in several spellings."""
    shards = pool["shards"]
    link = tmp_path / "link-to-shards"
    link.symlink_to(shards)
    return {
        "is": shards,
        "is, with a trailing slash": f"{shards}/",
        "is, through ..": shards / ".." / shards.name,
        "is, through a symlink": link,
        "contains": tmp_path,
        "lies inside": shards / "resharded",
    }


def test_reshard_refuses_an_output_folder_that_overlaps_the_shards(dc, pool, tmp_path):
    before = tree(tmp_path)
    for how, out in overlapping_outputs(pool, tmp_path).items():
        r = invoke(["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", out, "--overwrite",
                    "--quiet", *dc["args"]], code=2)
        assert "--shards-dir" in r.output and "--output-dir" in r.output, how
        assert tree(tmp_path) == before, how
    assert not calls(dc, "resharder")


def test_reshard_refuses_a_relative_output_folder_that_is_the_shards(dc, pool, tmp_path, monkeypatch):
    monkeypatch.chdir(pool["shards"])
    before = tree(pool["shards"])
    r = invoke(["reshard", pool["subset"], "--shards-dir", pool["shards"], "--output-dir", ".", "--overwrite",
                "--quiet", *dc["args"]], code=2)
    assert "--shards-dir" in r.output and tree(pool["shards"]) == before and not calls(dc, "resharder")


def test_reshard_refuses_an_output_folder_holding_the_subset(dc, pool, tmp_path):
    out = tmp_path / "out"
    invoke(reshard_args(dc, pool, out))
    subset = out / "my-subset.npy"
    shutil.copyfile(pool["subset"], subset)
    r = invoke(reshard_args(dc, {**pool, "subset": subset}, out, "--overwrite"), code=2)
    assert "subset" in r.output and "contains" in r.output
    assert subset.read_bytes() == pool["subset"].read_bytes() and len(calls(dc, "resharder")) == 1


def test_reshard_overwrite_refuses_a_folder_it_did_not_write(dc, pool, tmp_path, monkeypatch):
    out = tmp_path / "other-pool"
    out.mkdir()
    (out / "00000000.tar").write_bytes(b"someone else's shard")
    (out / "00000000_stats.json").write_text('{"successes": 1}')
    r = invoke(reshard_args(dc, pool, out, "--overwrite"), code=2)
    assert "flyt_reshard.json" in r.output and str(out) in r.output
    assert (out / "00000000.tar").read_bytes() == b"someone else's shard"
    home = tmp_path / "home"
    home.mkdir()
    (home / "flyt_reshard.json").write_text('{"written_by": "eval reshard"}')
    (home / "thesis.tex").write_text("keep")
    monkeypatch.setenv("HOME", str(home))
    r = invoke(reshard_args(dc, pool, "~", "--overwrite"), code=2)
    assert "home folder" in r.output and (home / "thesis.tex").read_text() == "keep"
    r = invoke(reshard_args(dc, pool, "/", "--overwrite"), code=2)
    assert "root folder" in r.output
    (tmp_path / "a-file").write_text("keep")
    r = invoke(reshard_args(dc, pool, tmp_path / "a-file", "--overwrite"), code=2)
    assert "not a folder" in r.output and (tmp_path / "a-file").read_text() == "keep"
    assert not calls(dc, "resharder")


def test_reshard_overwrite_redoes_a_failed_reshard(dc, pool, tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("STANDIN_DROP", "1")
    invoke(reshard_args(dc, pool, out), code=4)
    monkeypatch.delenv("STANDIN_DROP")
    r = invoke(reshard_args(dc, pool, out), code=2)
    assert "not empty" in r.output
    invoke(reshard_args(dc, pool, out, "--overwrite"))
    assert copies_in(out) == pool["expected"] and (out / "flyt_reshard.json").is_file()


def _gone(pid):
    """True once ``pid`` has exited (a zombie left to an init that does not reap counts as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def test_reshard_killed_mid_way_is_recognised_and_its_orphan_cannot_touch_the_redo(dc, pool, tmp_path):
    import signal
    import time

    out, hang = tmp_path / "out", tmp_path / "hang"
    cmd = [sys.executable, "-m", "flyt_datacomp.cli", "eval", *map(str, reshard_args(dc, pool, out))]
    proc = subprocess.Popen(cmd, env={**os.environ, "STANDIN_HANG": str(hang)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (hang.exists() and hang.read_text()) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    orphan = int(hang.read_text())  # the resharder, mid-way: one shard written
    proc.send_signal(signal.SIGKILL)  # our command dies outright; the resharder goes on, orphaned
    proc.wait()
    try:
        (work,) = [p for p in out.iterdir() if p.is_dir()]
        assert sorted(p.name for p in out.iterdir()) == sorted(["flyt_reshard_partial.json", work.name])
        assert work.name.startswith(".resharding.") and (work / "00000000.tar").is_file()
        r = invoke(reshard_args(dc, pool, out), code=2)
        assert "not empty" in r.output and "--overwrite" in r.output
        invoke(reshard_args(dc, pool, out, "--overwrite"))  # recognised as this command's, emptied, redone
        assert copies_in(out) == pool["expected"] and not work.exists() and not (out / "flyt_reshard_partial.json").exists()
        done = tree(out)
    finally:
        (tmp_path / "hang.go").touch()
        deadline = time.monotonic() + 60
        while not _gone(orphan) and time.monotonic() < deadline:
            time.sleep(0.05)
    assert _gone(orphan) and tree(out) == done  # the orphan's last writes went nowhere near the new output
    assert sorted(c["script"] for c in calls(dc)) == ["resharder", "resharder"]


def test_run_refuses_a_work_folder_whose_reshard_folder_is_not_its_own(dc, pool, tmp_path):
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    work.mkdir()
    (work / "reshard").symlink_to(pool["shards"])
    before = tree(pool["shards"])
    r = invoke(run_args(dc, pool, work, evalsets), code=2)
    assert "--shards-dir" in r.output and tree(pool["shards"]) == before and not calls(dc)


def test_reshard_log_may_not_be_an_input(dc, pool, tmp_path):
    subset = pool["subset"].read_bytes()
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--log", pool["subset"]), code=2)
    assert "--log" in r.output and pool["subset"].read_bytes() == subset
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--log", tmp_path / "out" / "reshard.log"), code=2)
    assert "--log" in r.output and not calls(dc, "resharder")


@pytest.mark.parametrize("flag", ["-o", "--output-dir", "--output", "-i", "--subset-file=x", "-ofoo"])
def test_reshard_refuses_pass_through_flags_it_sets_itself(dc, pool, tmp_path, flag):
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--", flag, str(tmp_path)), code=2)
    assert flag.split("=")[0] in r.output and not calls(dc, "resharder")


@pytest.mark.parametrize("args", [["-vo{other}"], ["-vo", "{other}"], ["-qvo={other}"], ["-vvi", "{other}"],
                                  ["-qs{other}/s.npy"]])
def test_reshard_refuses_its_flags_inside_a_cluster_of_short_flags(dc, pool, tmp_path, args):
    """argparse reads `-vo DIR` as `-v -o DIR` (the resharder's -v and -q take no value): a managed
    flag hidden in a cluster would send the resharder's output elsewhere."""
    other = tmp_path / "copy-of-the-shards"
    shutil.copytree(pool["shards"], other)
    before = {p.name: p.read_bytes() for p in other.iterdir()}
    extra = [a.format(other=other) for a in args]
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--overwrite", "--", *extra, "--overwrite"), code=2)
    assert "pass-through argument" in r.output and "would override" in r.output and not calls(dc, "resharder")
    assert {p.name: p.read_bytes() for p in other.iterdir()} == before
    (tmp_path / "evalsets").mkdir()
    r = invoke(run_args(dc, pool, tmp_path / "work", tmp_path / "evalsets", "--reshard-args", " ".join(extra)), code=2)
    assert "would override" in r.output and not calls(dc)


def test_reshard_passes_harmless_short_flags_through(dc, pool, tmp_path):
    invoke(reshard_args(dc, pool, tmp_path / "out", "--", "-vv", "-j2"))
    assert len(calls(dc, "resharder")) == 1 and copies_in(tmp_path / "out") == pool["expected"]


@pytest.mark.parametrize("flag", ["--output_dir", "--exp_name", "--data_dir", "--scale", "--output"])
def test_train_refuses_pass_through_flags_it_sets_itself(dc, resharded, tmp_path, flag):
    r = invoke(train_args(dc, resharded, tmp_path / "train", "--", flag, str(tmp_path)), code=2)
    assert flag in r.output and not calls(dc, "train")


def test_evaluate_overwrite_deletes_only_its_own_results_file(dc, trained, tmp_path):
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    (evalsets / "eval_results.jsonl").write_text("the user's own file\n")
    base = ["evaluate", "--train-output-dir", trained, "--data-dir", evalsets, *dc["args"]]
    r = invoke([*base, "--overwrite", "--", "--output_dir", evalsets], code=2)
    assert "--evalsets-dir" in r.output and (evalsets / "eval_results.jsonl").read_text() == "the user's own file\n"
    (trained / "eval_results.jsonl").mkdir()
    r = invoke([*base, "--overwrite"], code=2)
    assert "eval_results.jsonl" in r.output and "not a file" in r.output and not calls(dc, "evaluate")


# --------------------------------------------------------------------------- damaged files, empty subsets


def test_report_names_the_line_that_is_not_utf8(tmp_path):
    path = tmp_path / "eval_results.jsonl"
    results_file(path, np.random.default_rng(6))
    lines = path.read_bytes().splitlines(keepends=True)
    lines[6] = lines[6].replace(b'"key"', b'"k\xff\xfeey"')
    path.write_bytes(b"".join(lines))
    r = invoke(["report", path], code=2)
    assert "line 7" in r.output and str(path) in r.output and "UTF-8" in r.output
    assert "Traceback" not in r.output


def test_reshard_refuses_a_subset_without_any_image(dc, pool, tmp_path):
    empty = tmp_path / "empty.npy"
    write_subset(empty, np.zeros(0, UID_DTYPE), np.zeros(0, np.int64))
    r = invoke(reshard_args(dc, {**pool, "subset": empty}, tmp_path / "a"), code=2)
    assert "no entry" in r.output and "image in the shards" in r.output
    absent = [u for u in pool["hexes"] if u not in set(pool["kept"])]
    other = tmp_path / "absent.npy"
    write_subset(other, hex_to_uids(absent), np.ones(len(absent), np.int64))
    r = invoke(reshard_args(dc, {**pool, "subset": other}, tmp_path / "b"), code=2)
    assert "no entry" in r.output and f"{len(absent)} entries" in r.output
    assert not calls(dc, "resharder") and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def cut_results(path, keep, tail):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep]) + tail)


@pytest.fixture
def evaluated(dc, trained, tmp_path):
    """One full evaluation: the command line, the results file and its lines."""
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    base = ["evaluate", "--train-output-dir", trained, "--data-dir", evalsets, *dc["args"]]
    invoke(base)
    results = trained / "eval_results.jsonl"
    return base, results, results.read_text().splitlines()


@pytest.mark.parametrize("tail", [b'{"key": "mnist", "dataset": "MN', b"\0\0\0\0", b'{"key": "x", "dataset": "\xe2\x82'])
def test_evaluate_rerun_drops_a_partial_last_line(evaluated, caplog, tail):
    base, results, full = evaluated
    cut_results(results, 12, tail)
    r = invoke(base)
    assert "Found 12 eval result(s)" in r.output and "Average:" in r.output
    assert sorted(results.read_text().splitlines()) == sorted(full)
    assert any("line 13" in m and str(results) in m for m in caplog.messages)


def test_evaluate_rerun_keeps_a_complete_last_line_without_newline(evaluated):
    base, results, full = evaluated
    results.write_text("\n".join(full[:12]))
    r = invoke(base)
    assert "Found 12 eval result(s)" in r.output and results.read_text().splitlines() == full


def test_evaluate_rerun_refuses_a_malformed_line_in_the_middle(dc, evaluated):
    base, results, _ = evaluated
    lines = results.read_bytes().splitlines(keepends=True)
    lines[4] = b'{"key": "cut\n'
    results.write_bytes(b"".join(lines[:20]))
    before = results.read_bytes()
    n = len(calls(dc, "evaluate"))
    r = invoke(base, code=2)
    assert "line 5" in r.output and str(results) in r.output
    assert results.read_bytes() == before and len(calls(dc, "evaluate")) == n


def test_run_resumes_past_a_partial_results_line(dc, pool, tmp_path, caplog):
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    invoke(run_args(dc, pool, work, evalsets))
    results = work / "train" / "flyt" / "eval_results.jsonl"
    full = results.read_text().splitlines()
    cut_results(results, 30, b'{"key": "vtab/svhn", "data')
    invoke(run_args(dc, pool, work, evalsets))
    assert [c["script"] for c in calls(dc)][-1] == "evaluate"
    assert results.read_text().splitlines() == full
    assert any("line 31" in m for m in caplog.messages)


def test_run_checks_the_experiment_folder_before_the_first_stage(dc, pool, tmp_path):
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    (work / "train" / "flyt").mkdir(parents=True)
    (work / "train" / "flyt" / "notes.txt").write_text("keep")
    r = invoke(run_args(dc, pool, work, evalsets), code=2)
    assert "not a train.py run" in r.output and not calls(dc)
    assert (work / "train" / "flyt" / "notes.txt").read_text() == "keep"


def test_two_commands_on_one_folder_the_second_is_refused(dc, pool, resharded, tmp_path):
    from flyt_datacomp.folders import lock_folder

    out = tmp_path / "busy"
    out.mkdir()
    with lock_folder(out, "held by the test"):
        r = invoke(reshard_args(dc, pool, out), code=2)
        assert "in use by another command" in r.output and not any(out.iterdir())
    assert len(calls(dc, "resharder")) == 1  # the fixture's only
    exp = tmp_path / "train" / "exp"
    exp.mkdir(parents=True)
    with lock_folder(exp, "held by the test"):
        r = invoke(train_args(dc, resharded, tmp_path / "train"), code=2)
        assert "in use by another command" in r.output and not calls(dc, "train")
    # an eval reshard output is not an eval train experiment, nor the other way round
    r = invoke(train_args(dc, resharded, resharded.parent, "--overwrite", "--exp-name", "x"))
    r = invoke(reshard_args(dc, pool, resharded.parent / "x", "--overwrite"), code=2)
    assert "did not write" in r.output and "flyt_reshard.json" in r.output


def test_run_never_empties_a_reshard_folder_that_holds_the_evalsets(dc, pool, tmp_path, monkeypatch):
    work = tmp_path / "work"
    monkeypatch.setenv("STANDIN_DROP", "1")
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    invoke(run_args(dc, pool, work, evalsets), code=4)  # a failed reshard: the folder is the run's to redo
    monkeypatch.delenv("STANDIN_DROP")
    inside = work / "reshard" / "evalsets"
    inside.mkdir()
    (inside / "imagenet.tar").write_bytes(b"keep")
    r = invoke(run_args(dc, pool, work, inside), code=2)
    assert "--evalsets" in r.output and (inside / "imagenet.tar").read_bytes() == b"keep"
    assert len(calls(dc, "resharder")) == 1


def test_unwritable_output_and_log_paths_are_one_line_errors(dc, pool, tmp_path):
    (tmp_path / "a-file").write_text("x")
    r = invoke(reshard_args(dc, pool, tmp_path / "a-file" / "out"), code=2)
    assert "cannot be created" in r.output and "Traceback" not in r.output
    r = invoke(reshard_args(dc, pool, tmp_path / "out", "--log", tmp_path / "a-file" / "x.log"), code=2)
    assert "cannot write the log file" in r.output and "--log" in r.output


def test_cut_results_lines(tmp_path):
    from flyt_datacomp.evaluation.report import drop_cut_end, read_results

    path = tmp_path / "eval_results.jsonl"
    line = json.dumps({"key": "mnist", "dataset": "MNIST", "metrics": {"main_metric": 0.5}})
    for data, dropped, after in [
        (b'{"key": "mni', 1, b""),  # the only line, cut
        (line.encode(), None, line.encode() + b"\n"),  # complete, without its newline
        (line.encode() + b"\n   ", 2, line.encode() + b"\n"),  # blanks after the last newline
        (line.encode() + b"\n", None, line.encode() + b"\n"),  # nothing to do
        (b"", None, b""),
    ]:
        path.write_bytes(data)
        assert drop_cut_end(path) == dropped, data
        assert path.read_bytes() == after, data
    path.write_bytes(line.encode() + b'\n{"key": "mni')
    with pytest.raises(Exception, match="line 2 .*the last line, cut short"):
        read_results(path)
    assert read_results(path, allow_cut_end=True).evaluated == {"MNIST"}


@pytest.mark.parametrize("which,flag", [("--reshard-args", "-o"), ("--train-args", "--output_dir"),
                                         ("--evaluate-args", "--output_dir"), ("--evaluate-args", "--data_dir")])
def test_run_refuses_script_flags_it_sets_itself_before_the_first_stage(dc, pool, tmp_path, which, flag):
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    r = invoke(run_args(dc, pool, tmp_path / "work", evalsets, which, f"{flag} {tmp_path}"), code=2)
    assert flag in r.output and not calls(dc)


@pytest.mark.parametrize("flag", ["--train_output_dir", "--data_dir=x", "--output", "--output_d"])
def test_evaluate_refuses_pass_through_flags_it_sets_or_reads(dc, trained, tmp_path, flag):
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    r = invoke(["evaluate", "--train-output-dir", trained, "--evalsets-dir", evalsets, *dc["args"], "--", flag,
                str(tmp_path)], code=2)
    assert flag.split("=")[0] in r.output and not calls(dc, "evaluate")


@pytest.mark.parametrize("damage", ["[]", '{"inputs": {}}', '{"written": 5}', "{cut", ""])
def test_run_redoes_a_stage_whose_record_is_damaged(dc, pool, tmp_path, damage):
    """A damaged training record is redone (its start marker still says the folder is ours); a damaged
    reshard record is the folder's only marker, so the folder is no longer provably ours: refused
    in one line, its files kept."""
    work, evalsets = tmp_path / "work", tmp_path / "evalsets"
    evalsets.mkdir()
    invoke(run_args(dc, pool, work, evalsets))
    (work / "train" / "flyt" / "flyt_train.json").write_text(damage)
    record = work / "reshard" / "flyt_reshard.json"
    good = record.read_text()
    record.write_text(damage)
    kept = sorted(p.name for p in (work / "reshard").iterdir())
    r = invoke(run_args(dc, pool, work, evalsets), code=2)
    assert "flyt_reshard.json is no record written by eval reshard" in r.output and "Traceback" not in r.output
    assert sorted(p.name for p in (work / "reshard").iterdir()) == kept
    record.write_text(good)
    r = invoke(run_args(dc, pool, work, evalsets))
    assert [c["script"] for c in calls(dc)] == ["resharder", "train", "evaluate", "train"]
    assert "Traceback" not in r.output and json.loads((work / "train" / "flyt" / "flyt_train.json").read_text())


def test_run_checks_its_work_folder_itself(dc, pool, tmp_path, monkeypatch):
    """The work folder is checked as each stage's folder is: the subset's own folder (which holds the
    subset file), a folder inside the shards, the home folder and the root folder are refused before
    anything is created in them."""
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    own = tmp_path / "subsets"
    own.mkdir()
    subset = own / "mine.npy"
    shutil.copyfile(pool["subset"], subset)
    before = sorted(p.name for p in own.iterdir())
    r = invoke(run_args(dc, {**pool, "subset": subset}, own, evalsets), code=2)
    assert "--output-dir" in r.output and "contains the subset file" in r.output, r.output
    assert sorted(p.name for p in own.iterdir()) == before and not calls(dc)
    r = invoke(run_args(dc, pool, pool["shards"] / "work", evalsets), code=2)
    assert "lies inside the --shards-dir" in r.output, r.output
    assert not (pool["shards"] / "work").exists()
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    r = invoke(run_args(dc, pool, "~", evalsets), code=2)
    assert "home folder" in r.output and not any(home.iterdir())
    root_before = sorted(os.listdir("/"))
    r = invoke(run_args(dc, pool, "/", evalsets), code=2)
    assert "root folder" in r.output and sorted(os.listdir("/")) == root_before and not calls(dc)


def test_a_name_too_long_is_one_line(dc, pool, tmp_path):
    long = tmp_path / ("a" * 300)
    r = invoke(reshard_args(dc, pool, long), code=2)
    assert "cannot be used" in r.output and "File name too long" in r.output
    evalsets = tmp_path / "evalsets"
    evalsets.mkdir()
    r = invoke(run_args(dc, pool, long, evalsets), code=2)
    assert "cannot be used" in r.output and "--output-dir" in r.output and not calls(dc)


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_old_resume_flag_is_accepted_but_not_with_overwrite(tmp_path, stage):
    args = (["train", "--resharded-dir", tmp_path, "--scale", "small", "--output-dir", tmp_path / "out",
             "--exp-name", "x"] if stage == "train" else
            ["evaluate", "--train-output-dir", tmp_path, "--evalsets-dir", tmp_path])
    both = invoke([*args, "--resume", "--overwrite", "--datacomp-dir", tmp_path / "absent"], code=2)
    assert "--resume and --overwrite exclude each other" in both.output
    alone = invoke([*args, "--resume", "--datacomp-dir", tmp_path / "absent"], code=2)
    assert "exclude" not in alone.output and "absent" in alone.output
