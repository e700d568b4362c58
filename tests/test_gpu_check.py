"""The GPU validation script, run small on the CPU (`GPU_CHECK_SMOKE=1`): every step must run and
the summary must report each one, so the script works the first time it meets a GPU machine."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CORE = {"bilevel512", "bilevel256", "paper_batch", "tf32", "scs", "scs_distribution"}
TRAIN = {"pool", "train_torchrun", "benchmark_run"}


def test_gpu_run_time_limits_fit_five_minutes():
    """The steps of a plain GPU run (the train steps are optional) have time limits summing to < 300 s."""
    script = (REPO / "bench" / "gpu_check.sh").read_text()
    core = script[:script.index('if [ "$TRAIN" = 1 ]')]
    limits = dict(re.findall(r"^step (\w+) (\d+) ", core, flags=re.M))
    assert set(limits) == CORE
    assert sum(int(v) for v in limits.values()) < 300


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "GPU_CHECK_WORK": str(tmp_path / "work"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_check.sh", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert set(results["steps"]) == CORE | TRAIN
    failed = {name: s for name, s in results["steps"].items() if s["exit"] != 0}
    assert not failed, (failed, (out / "gpu_check.log").read_text()[-5000:])
    assert results["scs_distribution"]["passed"] and results["scs_distribution"]["threshold_rounds"] > 0
    assert results["bilevel256"]["cosine_naive"] > 0.9999  # float32 in the smoke run: exact
    assert results["bilevel512"]["cosine_fp32"] > 0.99  # bf16 on a tiny model
    assert list(results["paper_batch"]["variants"]) == ["full-context", "default", "full-context,micro=16", "micro=16"]
    assert all(v["cosine_first"] > 0.99 for v in results["paper_batch"]["variants"].values())
    assert results["tf32"]["variants"]["tf32"]["cosine_first"] > 0.999999  # no TF32 on a CPU: the same step
    assert results["scs"]["identical_to_old"] == {"torch-cpu": True}  # same uniforms, same selection
    assert "interrupted after" in (out / "gpu_check.log").read_text()
    report = (out / "RESULTS.md").read_text()
    assert report.startswith("# GPU validation")
    for target in ("cosine to float32: ", "(target >= 0.999", "time efficient / naive: ", "(target <= 0.7",
                   "memory efficient / naive: ", "(target <= 0.5", "fastest: ", "(target <= 3.5", "(target <= 5.0",
                   "old torch path / new: x", "## TF32 in the encoders", "## One mini-benchmark training run"):
        assert target in report, target
