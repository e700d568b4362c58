"""Hostile use of the filter's outputs: kills, races, URLs, permissions, sizes, odd inputs, exit codes.

Each test reproduces one defect found by trying to break the package and checks the fix.
"""

import hashlib
import json
import os
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
from poolgen import run_filter_cli, write_metadata

import flyt_datacomp.io as io_module
import flyt_datacomp.selection as filter_module
from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
from flyt_datacomp.pool import Pool
from flyt_datacomp.process import Terminated
from flyt_datacomp.uids import read_subset, subset_outputs, uids_to_hex

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


run = run_filter_cli


@pytest.fixture
def pool_dir(tmp_path):
    root, _ = write_metadata(tmp_path / "metadata", sizes=(60, 50, 90))
    return root


def base(root, out, *extra):
    return ["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--standardize",
            "--scs-batch", "10", "--num-samples", "300", "--output", str(out), *extra]


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def output_set(out):
    out = Path(out)
    return [out, out.with_name(out.name + ".json"), out.with_suffix(".png")]


def snapshot(out):
    return {p.name: p.read_bytes() for p in output_set(out) if p.is_file()}


def assert_consistent(out):
    """The three files at ``out`` are one complete set: the sidecar's hashes match the others."""
    npy, side, png = output_set(out)
    meta = json.loads(side.read_text())
    assert meta["files"]["subset_sha256"] == sha(npy)
    assert meta["files"]["histogram_sha256"] == sha(png)
    return meta


def leftovers(folder):
    return sorted(p.name for p in Path(folder).iterdir() if ".flyt-" in p.name)


# ------------------------------------------------------------------ 1. failures after work, overwrite


def test_directory_at_histogram_path_fails_before_work_and_keeps_old_set(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    out.with_suffix(".png").unlink()
    out.with_suffix(".png").mkdir()
    before = snapshot(out)
    r = run(base(pool_dir, out, "--seed", "7", "--overwrite"), expect_ok=False)
    assert r.exit_code == 2 and "is a directory" in r.output
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_failed_rename_during_commit_rolls_back_to_the_old_set(pool_dir, tmp_path, monkeypatch):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    before = snapshot(out)
    real, calls = io_module._place, []

    def failing(tmp, target, *, replace):
        calls.append(target)
        if len(calls) == 3:
            raise OSError(28, "No space left on device", str(target))
        real(tmp, target, replace=replace)

    monkeypatch.setattr(io_module, "_place", failing)
    r = run(base(pool_dir, out, "--seed", "7", "--overwrite"), expect_ok=False)
    assert r.exit_code == 2 and "nothing was changed" in r.output, r.output
    assert len(calls) == 3  # two files had been replaced when the third failed
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_ctrl_c_during_commit_is_deferred_until_the_set_is_complete(pool_dir, tmp_path, monkeypatch):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    old = sha(out)
    real = io_module._place

    def interrupted(tmp, target, *, replace):
        if target == out:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right in the middle of the commit
        real(tmp, target, replace=replace)

    monkeypatch.setattr(io_module, "_place", interrupted)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with &
    try:
        r = CliRunner().invoke(filter_command, [*base(pool_dir, out, "--seed", "7", "--overwrite"), "--quiet"])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert isinstance(r.exception, KeyboardInterrupt) or r.exit_code == 1  # the Ctrl-C arrives after the commit
    meta = assert_consistent(out)
    assert sha(out) != old and meta["seed"] == 7 and leftovers(tmp_path) == []


KILL_IN_COMMIT = """
import os, signal, sys
import flyt_datacomp.io as io
real = io._place
def place(tmp, target, *, replace):
    real(tmp, target, replace=replace)
    os.kill(os.getpid(), signal.SIGKILL)  # kill -9 right after the first file moved into place
io._place = place
from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
filter_command(sys.argv[1:])
"""


def test_kill_in_the_middle_of_a_commit_is_completed_by_the_next_run(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    proc = subprocess.run([sys.executable, "-c", KILL_IN_COMMIT, *base(pool_dir, out, "--seed", "9", "--overwrite"),
                           "--quiet"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL
    assert any(name.endswith(".flyt-commit") for name in leftovers(tmp_path))  # the journal
    # the next run on this output finishes the interrupted commit before anything else
    r = run(base(pool_dir, out, "--seed", "9"), expect_ok=False)
    assert "already exists" in r.output
    assert assert_consistent(out)["seed"] == 9
    assert leftovers(tmp_path) == []


KILL_AT = """
import os, signal, sys
import flyt_datacomp.io as io
where = sys.argv.pop(1)
if where == "backup":  # kill -9 right after the first backup of an old file was made
    real = io._link_or_copy
    def hook(src, dst):
        real(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)
    io._link_or_copy = hook
else:  # kill -9 while the journal is being written, before it is renamed into place
    real = os.replace
    def hook(src, dst):
        if str(dst).endswith(".flyt-commit"):
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst)
    os.replace = hook
from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
filter_command(sys.argv[1:])
"""


@pytest.mark.parametrize("where, new_set", [("backup", True), ("journal", False)])
def test_kill_around_the_journal_is_cleaned_up_by_the_next_run(pool_dir, tmp_path, where, new_set):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    before = assert_consistent(out)["seed"]
    proc = subprocess.run([sys.executable, "-c", KILL_AT, where, *base(pool_dir, out, "--seed", "9", "--overwrite"),
                           "--quiet"], env=ENV, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert leftovers(tmp_path)  # temporary files, a journal or backups were left behind
    for target in subset_outputs(out):  # what the next run's preflight does first
        io_module.recover_interrupted(target)
    assert leftovers(tmp_path) == []
    assert assert_consistent(out)["seed"] == (9 if new_set else before)


def test_kill_minus_9_at_any_moment_leaves_a_complete_set(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    cmd = [sys.executable, "-m", "flyt_datacomp.filter", *base(pool_dir, out, "--overwrite"), "--quiet"]
    t0 = time.perf_counter()
    subprocess.run([*cmd, "--seed", "1"], env=ENV, check=True, capture_output=True)
    full = time.perf_counter() - t0
    for i, frac in enumerate(np.linspace(0.3, 1.0, 8)):
        proc = subprocess.Popen([*cmd, "--seed", str(100 + i)], env=ENV, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(frac * full)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for target in subset_outputs(out):  # what the next run's preflight does first
            io_module.recover_interrupted(target)
        assert_consistent(out)
        assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ 2. two runs at once


def test_file_that_appears_during_a_run_is_never_replaced(pool_dir, tmp_path, monkeypatch):
    import flyt_datacomp.plots as plots

    out = tmp_path / "s.npy"
    real = plots.save_repetition_histogram

    def other_user_finishes_first(*args, **kwargs):  # runs after every check, before the commit
        out.write_bytes(b"someone else's subset")
        return real(*args, **kwargs)

    monkeypatch.setattr(plots, "save_repetition_histogram", other_user_finishes_first)
    r = run(base(pool_dir, out), expect_ok=False)
    assert r.exit_code == 2 and "appeared while this run was working" in r.output, r.output
    assert out.read_bytes() == b"someone else's subset"
    assert not out.with_suffix(".png").exists() and not out.with_name("s.npy.json").exists()
    assert leftovers(tmp_path) == []


def test_two_runs_started_together_one_wins_the_other_refuses(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    cmd = [sys.executable, "-m", "flyt_datacomp.filter", *base(pool_dir, out), "--quiet"]
    first = subprocess.Popen([*cmd, "--seed", "1"], env=ENV, stderr=subprocess.PIPE, text=True)
    time.sleep(0.3)
    second = subprocess.Popen([*cmd, "--seed", "2"], env=ENV, stderr=subprocess.PIPE, text=True)
    results = [(p.wait(), p.stderr.read()) for p in (first, second)]
    codes = sorted(rc for rc, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert "already exists" in loser or "appeared while this run was working" in loser
    winner_seed = 1 if results[0][0] == 0 else 2
    assert assert_consistent(out)["seed"] == winner_seed
    assert leftovers(tmp_path) == []


# ------------------------------------------------------------------ 3. fsspec URLs


def test_output_to_an_fsspec_url(pool_dir, tmp_path, monkeypatch):
    import fsspec

    monkeypatch.chdir(tmp_path)
    fs = fsspec.filesystem("memory")
    url = "memory://bucket/subsets/x.npy"
    run(base(pool_dir, url, "--seed", "4"))
    local = tmp_path / "local.npy"
    run(base(pool_dir, local, "--seed", "4"))
    assert fs.cat_file("/bucket/subsets/x.npy") == local.read_bytes()
    meta = json.loads(fs.cat_file("/bucket/subsets/x.npy.json"))
    assert meta["files"]["subset_sha256"] == sha(local) and meta["output"] == url
    assert fs.cat_file("/bucket/subsets/x.png")[:4] == b"\x89PNG"
    assert not (tmp_path / "memory:").exists()
    assert sorted(fs.ls("/bucket/subsets", detail=False)) == [
        "/bucket/subsets/x.npy", "/bucket/subsets/x.npy.json", "/bucket/subsets/x.png"]
    r = run(base(pool_dir, url, "--seed", "5"), expect_ok=False)
    assert "already exists" in r.output
    # a failure while writing leaves no object behind
    monkeypatch.setattr("flyt_datacomp.plots.save_repetition_histogram",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("plot failed")))
    r = run(base(pool_dir, "memory://bucket/other/y.npy"), expect_ok=False)
    assert r.exit_code != 0 and not fs.exists("/bucket/other/y.npy") and fs.ls("/bucket/other") == []
    fs.rm("/bucket", recursive=True)


# ------------------------------------------------------------------ 4. temporary files


def test_failure_while_writing_removes_temp_files(pool_dir, tmp_path, monkeypatch):
    out = tmp_path / "s.npy"
    monkeypatch.setattr("flyt_datacomp.plots.save_repetition_histogram",
                        lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    r = run(base(pool_dir, out), expect_ok=False)
    assert isinstance(r.exception, KeyboardInterrupt) or r.exit_code == 1
    assert list(tmp_path.glob("s*")) == [] and leftovers(tmp_path) == []


SLOW_WRITE = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if the tests run with &
from pathlib import Path
import flyt_datacomp.plots as plots
def slow(counts, path, **kw):
    Path(path).write_bytes(b"half a png")
    Path(sys.argv[1]).touch()  # tell the test we are inside the write
    time.sleep(60)
plots.save_repetition_histogram = slow
from flyt_datacomp.cli import main as cli_main
from flyt_datacomp.cli.filter import filter_command
filter_command(sys.argv[2:])
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 1)])
def test_terminated_while_writing_cleans_up_and_keeps_the_old_set(pool_dir, tmp_path, sig, code):
    out = tmp_path / "s.npy"
    run(base(pool_dir, out))
    before = snapshot(out)
    ready = tmp_path / "ready"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_WRITE, str(ready), *base(pool_dir, out, "--seed", "3",
                            "--overwrite"), "--quiet"], env=ENV, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not ready.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert ready.exists(), proc.stderr.read()
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == code
    assert snapshot(out) == before and leftovers(tmp_path) == []


def test_stale_temp_files_of_killed_runs_are_removed(pool_dir, tmp_path):
    out = tmp_path / "s.npy"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = io_module._host()
    stale = [tmp_path / f".s.npy.{host}-{dead.pid}-0badc0de.flyt-tmp",
             tmp_path / f".s.png.{host}-{dead.pid}-0badc0de.flyt-tmp"]
    alive = tmp_path / f".s.npy.{host}-{os.getpid()}-0badc0de.flyt-tmp"  # a run still working
    for p in [*stale, alive]:
        p.write_bytes(b"x" * 1000)
    run(base(pool_dir, out))
    assert not any(p.exists() for p in stale) and alive.exists()


# ------------------------------------------------------------------ 5. permissions


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_and_checkpoints_respect_the_umask(pool_dir, tmp_path, umask, mode):
    import torch

    from flyt_datacomp.flyt.checkpoints import save_checkpoint

    old = os.umask(umask)
    try:
        out = tmp_path / "s.npy"
        run(base(pool_dir, out))
        ck = save_checkpoint(tmp_path / "ck", 3, {"step": 3, "x": torch.ones(2)})
    finally:
        os.umask(old)
    for p in [*output_set(out), ck, ck.with_name(ck.name + ".json"), ck.parent / "latest.json"]:
        assert p.stat().st_mode & 0o777 == mode, p


# ------------------------------------------------------------------ 6. unwritable output folder


def test_unwritable_output_folder_fails_before_any_work(pool_dir, tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.access(ro, os.W_OK):  # root ignores modes: make the folder refuse new files anyway
        real = io_module._create_exclusive

        def refuse(path):
            if Path(path).parent == ro:
                raise PermissionError(13, "Permission denied", str(path))
            real(path)

        monkeypatch.setattr(io_module, "_create_exclusive", refuse)
    monkeypatch.setattr(filter_module, "Pool", lambda *a, **k: pytest.fail("the pool was read"))
    try:
        r = run(base(pool_dir, ro / "s.npy"), expect_ok=False)
    finally:
        ro.chmod(0o755)
    assert r.exit_code == 2 and "is not writable" in r.output and str(ro) in r.output, r.output


# ------------------------------------------------------------------ 10-12. silently wrong results


def test_score_independent_draws_are_refused_unless_accepted(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(120,))
    out = tmp_path / "s.npy"
    args = ["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--scale", "small",
            "--output", str(out)]
    r = run(args, expect_ok=False)
    assert r.exit_code == 2 and "scores are ignored" in r.output and "--scs-group-size" in r.output
    assert not out.exists()
    # G below the pool, but N so many times the pool that SCS's soft cap flattens every count
    r = run([*args[:6], "--scs-batch", "10", "--num-samples", "10000000", "--output", str(out)], expect_ok=False)
    assert r.exit_code == 2 and "nearly the same count" in r.output
    r = run([*args[:4], "--sampler", "hcs", "--hcs-cap", "2", "--num-samples", "240", "--output", str(out)],
            expect_ok=False)
    assert r.exit_code == 2 and "exactly 2 copies" in r.output
    run([*args[:4], "--scs-batch", "120", "--num-samples", "600", "--output", str(out), "--allow-score-independent"])
    assert (read_subset(out)[1] == 5).all()
    assert any("whole pool" in w for w in json.loads(out.with_name("s.npy.json").read_text())["warnings"])


def test_absurd_subset_sizes_are_refused_before_any_work(pool_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(filter_module, "Pool", lambda *a, **k: pytest.fail("the pool was read"))
    r = run(base(pool_dir, tmp_path / "s.npy")[:-4] + ["--num-samples", str(10**14), "--output",
                                                        str(tmp_path / "s.npy")], expect_ok=False)
    assert r.exit_code == 2 and "PiB" in r.output and "xlarge" in r.output, r.output
    import shutil

    monkeypatch.setattr(io_module.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    r = run(base(pool_dir, tmp_path / "s.npy")[:-4] + ["--num-samples", str(10**6), "--output",
                                                        str(tmp_path / "s.npy")], expect_ok=False)
    assert r.exit_code == 2 and "15.3 MiB" in r.output and "4.0 KiB free" in r.output, r.output


def test_extra_uids_in_a_score_file_are_counted(pool_dir, tmp_path):
    pool = Pool(str(pool_dir), progress=False)
    hexes = list(uids_to_hex(pool.uids)) + ["e" * 32, "f" * 32]
    pq.write_table(pa.table({"uid": hexes, "score": np.arange(len(hexes), dtype=float)}), tmp_path / "sc.parquet")
    out = tmp_path / "s.npy"
    r = run(["--metadata-dir", str(pool_dir), "--score", str(tmp_path / "sc.parquet"), "--sampler", "threshold",
             "--fraction", "0.5", "--output", str(out)])
    assert "2 uids that are not in the pool" in r.output
    assert json.loads(out.with_name("s.npy.json").read_text())["inputs"]["score_file_extra_uids"] == 2


# ------------------------------------------------------------------ 13. clean exit codes


def test_error_exits_are_clean_every_time(pool_dir, tmp_path):
    """Reading parquet through the progress-bar loop, then exiting with an error, used to abort
    with 'terminate called without an active exception' (rc 134) in up to 26 of 40 runs."""
    script = textwrap.dedent(f"""
        import sys
        from flyt_datacomp.pool import Pool
        Pool({str(pool_dir)!r}).column("clip_b32_similarity_score")
        sys.exit(2)
    """)
    procs = []
    for _ in range(40):
        procs.append(subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.PIPE))
        if len(procs) % 4 == 0:
            [p.wait() for p in procs[-4:]]
    codes = [p.wait() for p in procs]
    assert codes == [2] * 40, [p.stderr.read()[-300:] for p in procs if p.returncode != 2][:1]
    cli = [sys.executable, "-m", "flyt_datacomp.filter", "--metadata-dir", str(pool_dir), "--score", "text",
           "--output", str(tmp_path / "x.npy")]  # fails after reading the column
    for _ in range(10):
        proc = subprocess.run(cli, env=ENV, capture_output=True, text=True)
        assert proc.returncode == 2 and "not numbers" in proc.stderr and "terminate" not in proc.stderr


@pytest.mark.slow
def test_error_exits_with_torch_loaded_are_clean(tmp_path):
    """With torch loaded (here: by the CUDA check of --device cuda on a machine without CUDA), Arrow's
    worker threads still releasing buffers of a Python file object at exit aborted 1 in 8 error exits
    (rc 134); the parquet files are now decoded in the reading thread."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    root, _ = write_metadata(tmp_path / "m", sizes=(3000, 3000, 3000, 3000), with_npz=False)
    cli = [sys.executable, "-m", "flyt_datacomp.filter", "--metadata-dir", str(root), "--score",
           "clip_b32_similarity_score", "--device", "cuda", "--output", str(tmp_path / "x.npy"), "--quiet"]
    codes = []
    for _ in range(20):
        batch = [subprocess.Popen(cli, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
        codes += [p.wait() for p in batch]
    assert codes == [2] * 60


# ------------------------------------------------------------------ 14-15. messages


def test_a_huge_malformed_uid_is_not_echoed_in_full(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5,))
    first = sorted(root.glob("*.parquet"))[0]
    t = pq.read_table(first)
    uids = t.column("uid").to_pylist()
    uids[2] = "a" * 10**6
    pq.write_table(t.set_column(0, "uid", pa.array(uids)), first)
    r = run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--output",
             str(tmp_path / "s.npy")], expect_ok=False)
    assert r.exit_code == 2 and "row 2" in r.output and "1,000,000 characters" in r.output
    assert len(r.output) < 500


def test_null_scores_are_reported_as_missing(tmp_path):
    root, _ = write_metadata(tmp_path / "m", sizes=(5, 6))
    second = sorted(root.glob("*.parquet"))[1]
    t = pq.read_table(second)
    col = t.column("clip_l14_similarity_score").to_pylist()
    col[3] = None
    i = t.schema.get_field_index("clip_l14_similarity_score")
    pq.write_table(t.set_column(i, "clip_l14_similarity_score", pa.array(col, pa.float32())), second)
    r = run(["--metadata-dir", str(root), "--score", "clip_l14_similarity_score", "--output",
             str(tmp_path / "s.npy")], expect_ok=False)
    assert r.exit_code == 2 and "1 missing values" in r.output and "row 3" in r.output
    assert second.name in r.output and "nan" not in r.output.lower()


@pytest.mark.parametrize("stop, code", [(lambda: Terminated(143), 143), (KeyboardInterrupt, 1)])
def test_error_raised_while_stopping_is_reported_as_the_stop(stop, code):
    # a scheduler's cancel or Ctrl-C reaches the whole process group: DataLoader workers die too,
    # and their death surfaces as a RuntimeError while the main process unwinds from the signal
    from flyt_datacomp.cli.base import command

    @command()
    def job():
        try:
            raise stop()
        finally:
            raise RuntimeError("DataLoader worker (pid 1009) is killed by signal: Terminated.")

    r = CliRunner().invoke(job, [])
    assert r.exit_code == code and not isinstance(r.exception, RuntimeError)
    assert "RuntimeError" not in r.output and "DataLoader" not in r.output
    # an error of its own, with no signal behind it, still surfaces as itself
    @command()
    def broken():
        raise RuntimeError("a real bug")

    r = CliRunner().invoke(broken, [])
    assert isinstance(r.exception, RuntimeError)


# ------------------------------------------------------------------ 7. a stop is prompt


def _children(pid):
    """The child processes of ``pid`` still running (zombies not counted)."""
    out = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        out += [int(p) for p in path.read_text().split()]
    return [p for p in out if not _gone(p)]


def _gone(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError):
        return True


def _stop(cmd, ready, sig, *, env=ENV, timeout=60):
    """Start ``cmd``, wait for ``ready`` (a file, or a function of the process), send ``sig``; return the
    process, the seconds it took to end, and its child processes at the signal."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    check = ready if callable(ready) else (lambda p: Path(ready).exists())
    while not check(proc) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None and check(proc), proc.stderr.read()
    time.sleep(0.3)
    children = _children(proc.pid)
    start = time.monotonic()
    proc.send_signal(sig)
    try:
        proc.wait(timeout=60)
    finally:
        proc.kill()
    return proc, time.monotonic() - start, children


STORE_RUN = """
import sys
import storeproviders
storeproviders.register()
from flyt_datacomp.cli import main
sys.argv = ["flyt-datacomp", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 1)])
def test_a_command_with_worker_processes_stops_within_seconds(pool_dir, tmp_path, sig, code):
    """SIGTERM sent to the command alone (as `kill PID` or a scheduler does): its worker processes,
    each in the middle of a minute-long shard task, are stopped too, and the store stays usable."""
    store, ready = tmp_path / "store", tmp_path / "ready"
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests"), ENV["PYTHONPATH"]])}
    cmd = [sys.executable, "-c", STORE_RUN, "inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir",
           str(store), "--input", f"x=slow:{ready}", "--input", "y=column:clip_l14_similarity_score",
           "--workers", "2", "--quiet"]
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even if started with &
    try:
        proc, seconds, children = _stop(cmd, ready, sig, env=env)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert proc.returncode == code and seconds < 10, (proc.returncode, seconds, proc.stderr.read())
    deadline = time.monotonic() + 5  # multiprocessing's resource tracker leaves once its parent has gone
    while not all(_gone(c) for c in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) >= 2 and all(_gone(c) for c in children)  # the workers were stopped too
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and "InvalidStateError" not in stderr, stderr
    r = CliRunner().invoke(cli_main, ["inputs", "show", "--inputs-dir", str(store)])
    assert r.exit_code == 0, r.output  # what was committed is intact: the manifest, no damaged shard
    r = CliRunner().invoke(cli_main, ["inputs", "compute", "--metadata-dir", str(pool_dir), "--inputs-dir", str(store),
                                      "--input", "y=column:clip_l14_similarity_score", "--quiet"])
    assert r.exit_code == 0, r.output


SCRIPT_RUN = """
import sys
from flyt_datacomp.process import install_signal_handlers
from flyt_datacomp.evaluation.datacomp import run_script
install_signal_handlers()
run_script([sys.executable, "-c", "import sys, time; open(sys.argv[1], 'w').close(); time.sleep(120)", sys.argv[1]],
           name="a DataComp script")
"""


def test_a_command_running_a_datacomp_script_stops_it_with_itself(tmp_path):
    """eval reshard / train / evaluate wait for DataComp's script; a SIGTERM to the command alone ends the
    script too, instead of waiting for it (train.py runs for hours)."""
    ready = tmp_path / "ready"
    proc, seconds, children = _stop([sys.executable, "-c", SCRIPT_RUN, str(ready)], ready, signal.SIGTERM)
    assert proc.returncode == 143 and seconds < 10, (seconds, proc.stderr.read())
    deadline = time.monotonic() + 5
    while not _gone(children[0]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children) == 1 and _gone(children[0])


HANGING_CLEANUP = """
import os, subprocess, sys, time
from flyt_datacomp.cli.base import command

@command()
def job():
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                              "time.sleep(300)"])
    open(sys.argv[1], "w").write(str(child.pid))
    try:
        time.sleep(300)
    finally:
        time.sleep(300)  # a cleanup that never ends

job(sys.argv[2:])
"""


@pytest.mark.parametrize("second", [False, True])
def test_a_cleanup_that_hangs_is_cut_short_and_its_children_killed(tmp_path, second):
    """The watchdog: a cleanup still running FLYT_DATACOMP_STOP_SECONDS after the signal (or a second
    signal) ends the process with 128 + signal, killing children that ignored SIGTERM."""
    ready = tmp_path / "ready"
    env = {**ENV, "FLYT_DATACOMP_STOP_SECONDS": "2"}
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP, str(ready)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (ready.exists() and ready.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(ready.read_text())
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    if second:
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    finally:
        proc.kill()
    seconds = time.monotonic() - start
    assert proc.returncode == 143, proc.stderr.read()
    assert (seconds < 1.5) if second else (1.5 < seconds < 10), seconds
    why = "a second stop signal" if second else "cleaning up took longer than 2 s"
    assert f"stopped: {why}" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while not _gone(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(child)


def test_the_watchdog_is_disarmed_once_the_command_has_unwound(monkeypatch):
    """A command run in-process (a test runner) and stopped: the process goes on afterwards."""
    import flyt_datacomp.process as process
    from flyt_datacomp.cli.base import command

    monkeypatch.setattr(process, "STOP_SECONDS", 0.3)

    @command()
    def job():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        r = CliRunner().invoke(job, [])
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert r.exit_code == 143 and not process.stopping()
    time.sleep(0.6)  # past the watchdog's time: this process is still here


FORWARD_AD = """
import sys
if sys.argv[1] == "quiet":
    from flyt_datacomp.process import quiet_library_warnings
    quiet_library_warnings()
import torch
import torch.autograd.forward_ad as fwAD
with fwAD.dual_level():
    fwAD.make_dual(torch.zeros(2), torch.ones(2))  # the first forward-mode derivative, as a FLYT step takes
"""


def test_torch_s_own_deprecation_warning_does_not_print_mid_bar():
    """torch warns that `torch.jit.script` is deprecated when it first loads its forward-mode rules
    (its own use, not ours); the commands keep it out of their progress bars."""
    loud = subprocess.run([sys.executable, "-c", FORWARD_AD, "loud"], env=ENV, capture_output=True, text=True)
    quiet = subprocess.run([sys.executable, "-c", FORWARD_AD, "quiet"], env=ENV, capture_output=True, text=True)
    assert loud.returncode == quiet.returncode == 0, (loud.stderr, quiet.stderr)
    if "torch.jit.script" not in loud.stderr:
        pytest.skip("this torch version does not warn")
    assert "Warning" not in quiet.stderr, quiet.stderr
