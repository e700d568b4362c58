"""Hostile inputs: URL spellings of local outputs, a full disk, damaged run folders, configs of the
wrong type, a device that is not there, masks that keep nothing, subsets of another pool."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
from click.testing import CliRunner
from poolgen import run_filter_cli, write_metadata

from flyt_datacomp.cli import main as cli
from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.io import is_url, local_path, split_location
from flyt_datacomp.uids import read_subset


@pytest.fixture
def pool_dir(tmp_path):
    root, hexes = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    return root


def _no_temp_files(folder):
    return not [p for p in folder.rglob("*") if ".flyt-" in p.name]


# --------------------------------------------------------------------------- one URL-to-path function


@pytest.mark.parametrize("spelling, expect", [
    ("file:///abs/x.npy", (None, "/abs/x.npy")),
    ("file:/abs/x.npy", (None, "/abs/x.npy")),
    ("local:///abs/x.npy", (None, "/abs/x.npy")),
    ("FILE:///abs/x.npy", (None, "/abs/x.npy")),
    ("file:rel/x.npy", (None, "rel/x.npy")),
    ("rel/x.npy", (None, "rel/x.npy")),
    ("s3://bucket/x.npy", ("s3", "s3://bucket/x.npy")),
    ("memory://x.npy", ("memory", "memory://x.npy")),
    ("simplecache::s3://b/x.npy", ("simplecache", "simplecache::s3://b/x.npy")),
])
def test_split_location(spelling, expect):
    assert split_location(spelling) == expect
    assert is_url(spelling) == (expect[0] is not None)


def test_local_path_refuses_a_remote_url():
    with pytest.raises(FlytInputError, match="must be a local path.*s3 URL"):
        local_path("s3://bucket/store", "the input store")


@pytest.mark.parametrize("prefix", ["file://", "file:", "local://"])
def test_file_url_outputs_land_at_the_real_path(pool_dir, tmp_path, prefix, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out" / "s.npy"
    r = run_filter_cli(["--metadata-dir", f"{prefix}{pool_dir}", "--score", "clip_l14_similarity_score",
                        "--num-samples", "100", "--output", f"{prefix}{out}"])
    assert sorted(p.name for p in out.parent.iterdir()) == ["s.npy", "s.npy.json", "s.png"]
    assert not list(tmp_path.glob("file*")) and not list(tmp_path.glob("local*"))  # nothing under ./file:
    assert f"subset:    {out}" in r.output
    assert read_subset(out)[1].sum() == 100


def test_file_url_input_store(pool_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "store"
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir", f"file://{store}",
                                 "--input", "column:clip_b32_similarity_score", "--quiet"])
    assert r.exit_code == 0, r.output
    assert (store / "inputs.json").is_file() and not list(tmp_path.glob("file*"))
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir", "s3://b/store",
                                 "--input", "column:clip_b32_similarity_score", "--quiet"])
    assert r.exit_code == 2 and "must be a local path" in r.output


# --------------------------------------------------------------------------- a full disk


def test_a_full_disk_while_writing_a_subset_keeps_the_old_one(pool_dir, tmp_path, monkeypatch):
    import flyt_datacomp.uids as uids_module

    out = tmp_path / "s.npy"
    args = ["--metadata-dir", str(pool_dir), "--score", "clip_l14_similarity_score", "--num-samples", "100",
            "--output", str(out)]
    run_filter_cli(args)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("s.*")}
    real = uids_module._save_subset

    def full(fh, kept, reps, chunk=1 << 20):
        real(fh, kept[:3], reps[:3])  # some bytes went out, then the disk filled up
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(uids_module, "_save_subset", full)
    r = run_filter_cli([*args, "--overwrite", "--seed", "3"], expect_ok=False)
    assert r.exit_code == 2 and r.output.count("\n") == 1, r.output
    assert "No space left on device" in r.output and "Traceback" not in r.output
    assert {p.name: p.read_bytes() for p in tmp_path.glob("s.*")} == before
    assert _no_temp_files(tmp_path)


def test_a_full_disk_while_writing_a_sidecar(tmp_path):
    from flyt_datacomp.io import write_json

    target = tmp_path / "x.json"
    target.write_text('{"old": true}')
    from flyt_datacomp import io as io_module

    with pytest.raises(FlytInputError, match="No space left on device"):
        with io_module.atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert json.loads(target.read_text()) == {"old": True} and _no_temp_files(tmp_path)
    write_json(target, {"new": 1})  # an ordinary write still works
    assert json.loads(target.read_text()) == {"new": 1}


# --------------------------------------------------------------------------- masks that keep nothing


def test_a_mask_that_keeps_nothing_writes_nothing(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    r = run_filter_cli(["--metadata-dir", str(pool_dir), "--mask", "column:clip_l14_similarity_score>=1000",
                        "--output", str(out)], expect_ok=False)
    assert r.exit_code == 2 and "no example of the pool survives" in r.output and "nothing was written" in r.output
    assert not out.exists() and not out.with_suffix(".png").exists()


# --------------------------------------------------------------------------- training runs


def test_config_values_of_the_wrong_type_are_one_line(tiny_demo_pool, tmp_path):
    config = tmp_path / "c.json"
    for bad, message in (({"steps": "abc"}, "--steps must be a whole number, got 'abc'"),
                         ({"scoring_lr": [1]}, "--scoring-lr must be a finite number"),
                         ({"tensorboard": "yes"}, "--tensorboard must be true or false"),
                         ({"inputs": 3}, "--mixing-inputs must be a list of names")):
        config.write_text(json.dumps(bad))
        r = CliRunner().invoke(cli, ["train", "--preset", "m-flyt-demo", "--config", str(config),
                                     "--output-dir", str(tmp_path / "run"), "--metadata-dir",
                                     str(tiny_demo_pool.metadata_dir), "--quiet"])
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output
    config.write_text(json.dumps({"steps": "2", "scoring_lr": "1e-3"}))  # YAML reads 1e-3 as a string
    from flyt_datacomp.flyt.config import build_config

    cfg = build_config("m-flyt-demo", {**tiny_demo_pool.train_paths(), **json.loads(config.read_text())}, {})
    assert cfg.steps == 2 and cfg.scoring_lr == 1e-3


def test_a_run_folder_with_a_folder_where_a_file_belongs(tiny_demo_pool, tmp_path):
    run = tmp_path / "run"
    (run / "metrics.jsonl").mkdir(parents=True)
    (run / "flyt_run.json").write_text(json.dumps({"written_by": "train"}))  # a run of train's, damaged
    r = CliRunner().invoke(cli, ["train", "--preset", "m-flyt-demo", "--output-dir", str(run), "--steps", "2",
                                 "--metadata-dir", str(tiny_demo_pool.metadata_dir), "--quiet"])
    assert r.exit_code == 2 and "metrics.jsonl is not a file" in r.output and "--output-dir" in r.output, r.output


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_train_on_cuda_without_cuda_is_one_line(tiny_demo_pool, tmp_path):
    r = CliRunner().invoke(cli, ["train", "--preset", "m-flyt-demo", "--output-dir", str(tmp_path / "run"),
                                 "--device", "cuda", "--metadata-dir", str(tiny_demo_pool.metadata_dir), "--quiet"])
    assert r.exit_code == 2 and "--device cuda asked for, but this machine has 0 CUDA device(s)" in r.output, r.output


# --------------------------------------------------------------------------- the benchmark


def test_benchmark_reports_what_a_foreign_subset_trained_on(tiny_demo_pool, tmp_path):
    from flyt_datacomp.pool import Pool
    from flyt_datacomp.uids import random_uids, write_subset

    pool = Pool(str(tiny_demo_pool.metadata_dir), progress=False)
    ours = pool.uids[:40]
    foreign = random_uids(200, seed=7)
    uids = np.concatenate([ours, foreign])
    subset = tmp_path / "mixed.npy"
    write_subset(subset, uids, np.full(len(uids), 2, dtype=np.int64))
    r = CliRunner().invoke(cli, ["benchmark", "--subset", str(subset), "--quick", "--num-seeds", "1", "--workers", "1",
                                 "--pool-dir", str(tiny_demo_pool.root), "--cache-dir", str(tmp_path / "cache"),
                                 "--quiet"])
    assert r.exit_code == 0, r.output
    assert "200 of its 240 uids are not in the demo pool" in r.output
    row = [line for line in r.output.splitlines() if line.startswith("| mixed")][0]
    trained = [int(x.replace(",", "")) for x in row.strip("| ").split("|")[-2:]]
    assert trained[1] <= 80 and trained[1] == 2 * trained[0]  # what it trained on, not the file's 480 entries


def test_a_misspelled_column_gets_a_short_line_and_a_suggestion(pool_dir, tmp_path):
    r = run_filter_cli(["--metadata-dir", str(pool_dir), "--score", "clip_l14_similarity_scor", "--output",
                        str(tmp_path / "s.npy")], expect_ok=False)
    line = r.output.strip().splitlines()[-1]
    assert r.exit_code == 2 and "did you mean 'clip_l14_similarity_score'?" in line and len(line) < 600, line


# --------------------------------------------------------------------------- names too long


@pytest.mark.parametrize("length", [300, 250, 235])
def test_an_output_name_longer_than_the_file_system_allows_is_one_line(pool_dir, tmp_path, length):
    """Longer than 255 bytes; or short enough itself, but not with its sidecar's `.json` or the
    temporary names written beside it while it is committed: refused before any work."""
    out = tmp_path / "out" / ("a" * (length - 4) + ".npy")
    for command in (["filter", "--score", "clip_l14_similarity_score", "--num-samples", "100"], ["baseline", "no_filter"]):
        r = CliRunner().invoke(cli, [*command, "--metadata-dir", str(pool_dir), "--output", str(out), "--quiet"])
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
        errors = [line for line in r.output.splitlines() if line.startswith("Error:")]
        assert len(errors) == 1 and "--output" in errors[0] and "bytes" in errors[0], r.output
        assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_folder_name_too_long_is_one_line_in_any_command(pool_dir, tmp_path):
    long = tmp_path / ("c" * 300)
    r = CliRunner().invoke(cli, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir", str(long),
                                 "--input", "column:clip_b32_similarity_score", "--quiet"])
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "longer than the file system allows" in r.output and "Traceback" not in r.output
