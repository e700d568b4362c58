"""The GPU validation script, run small on the CPU (`GPU_CHECK_SMOKE=1`): every step must run and
the summary must report each one, so the script works the first time a session has a GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_step(tmp_path):
    env = {**os.environ, "GPU_CHECK_SMOKE": "1", "OUT": str(tmp_path / "out"), "GPU_CHECK_WORK": str(tmp_path / "work"),
           "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["steps"]) == {"bilevel", "paper_batch", "scs", "scs_distribution", "pool", "train_torchrun",
                                     "benchmark_run"}
    failed = {name: s for name, s in results["steps"].items() if s["exit"] != 0}
    assert not failed, (failed, (tmp_path / "out" / "gpu_check.log").read_text()[-5000:])
    assert results["scs_distribution"]["passed"]
    assert results["bilevel"]["cosine_naive"] > 0.9999
    assert "interrupted after" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert (tmp_path / "out" / "RESULTS.md").read_text().startswith("# GPU validation")
