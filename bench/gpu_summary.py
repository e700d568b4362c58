"""Collect what `bench/gpu_check.sh` measured into one JSON file and a Markdown report.

    python bench/gpu_summary.py WORK_DIR [--json results.json] > RESULTS.md

WORK_DIR holds the steps' JSON files and ``steps.tsv`` (name, exit code, seconds per step). The
report states each target of the GPU validation and whether the measurement met it; a step that
failed or produced no file is reported as such, never filled in.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path

TARGETS = {"time_ratio": 0.6, "memory_ratio": 0.35, "cosine_fp32": 0.999}
PAPER_STEPS = 5000


def load(work: Path, name: str) -> dict | None:
    path = work / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def efficient_seconds(result: dict) -> float | None:
    row = result.get("rows", {}).get("efficient", {})
    return row.get("median_s")


def efficient_peak(result: dict) -> float | None:
    row = result.get("rows", {}).get("efficient", {})
    return row.get("peak_bytes")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def report(work: Path) -> tuple[dict, list[str]]:
    steps = {}
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, rc, seconds = line.split("\t")
            steps[name] = {"exit": int(rc), "seconds": int(seconds)}
    gpu = (work / "gpu.txt").read_text().strip() if (work / "gpu.txt").is_file() else "no GPU (smoke run)"
    res = {"date": dt.date.today().isoformat(), "gpu": gpu, "steps": steps}
    lines = [f"# GPU validation, {res['date']}", "", f"Device: {gpu}.", ""]

    def status(name: str) -> str:
        s = steps.get(name)
        if s is None:
            return "not run"
        return f"exit {s['exit']} after {s['seconds']} s" + (" (time limit)" if s["exit"] in (124, 137) else "")

    def section(key: str, title: str) -> dict | None:
        """Start a report section for step ``key``; its JSON result (also recorded), if any."""
        res[key] = load(work, key)
        lines.append(f"## {title} ({status(key)})")
        return res[key]

    bilevel = section("bilevel", "Efficient vs naive bilevel step")
    if bilevel:
        a = bilevel.get("args", {})
        lines.append(f"{a.get('arch')}, B {a.get('batch')} / B' {a.get('downstream_batch')}, {a.get('classes')} "
                     f"classes, {a.get('dtype')}:")
        for key, target in TARGETS.items():
            value = bilevel.get(key)
            ok = None if value is None else (value >= target if key.startswith("cosine") else value <= target)
            bound = ">=" if key.startswith("cosine") else "<="
            shown = "missing" if value is None else f"{value:.4f}"
            lines.append(f"- {key}: {shown} (target {bound} {target}: {verdict(ok)})")
        if "cosine_naive" in bilevel:
            lines.append(f"- cosine of the efficient and naive meta-gradients: {bilevel['cosine_naive']:.6f}")
    lines.append("")

    paper = section("paper_batch", "The paper's batch")
    if paper:
        a = paper.get("args", {})
        sec, peak = efficient_seconds(paper), efficient_peak(paper)
        if sec is not None:
            res["paper_batch_projected_hours"] = sec * PAPER_STEPS / 3600
            lines.append(f"B {a.get('batch')} / B' {a.get('downstream_batch')}, micro-batch {a.get('micro_batch')}, "
                         f"{a.get('dtype')}: {sec:.2f} s per step, peak "
                         f"{'-' if peak is None else f'{peak / 2**30:.1f} GiB'}; {PAPER_STEPS} steps: "
                         f"{res['paper_batch_projected_hours']:.1f} h")
        else:
            lines.append("no time recorded (out of memory?)")
    lines.append("")

    scs = section("scs", "SCS, CUDA against the CPU path")
    if scs:
        lines.append(f"M = N = {scs['size']:,}, G = {scs['group_size']:,}, alpha {scs['alpha']}:")
        for device, t in scs["ours"].items():
            lines.append(f"- {device}: {t['seconds']:.2f} s, max count {t['max_count']}, {t['distinct']:,} distinct")
        if "cuda" in scs["ours"] and "cpu" in scs["ours"]:
            lines.append(f"- CPU / CUDA time: x{scs['ours']['cpu']['seconds'] / scs['ours']['cuda']['seconds']:.1f}")
    dist = load(work, "scs_distribution")
    res["scs_distribution"] = dist
    if dist:
        lines.append(f"- distribution, {dist['device']} vs CPU over {dist['runs']} runs each: max |z| "
                     f"{dist['max_abs_z']:.2f}, totals exact {dist['exact_totals']}: "
                     f"{'PASS' if dist['passed'] else 'FAIL'} ({status('scs_distribution')})")
    lines.append("")

    lines.append(f"## m-flyt-base under torchrun: 40 steps, interrupted after the step-10 checkpoint and resumed "
                 f"({status('train_torchrun')})")
    lines.append("")
    run = section("benchmark_run", "One mini-benchmark training run")
    if run:
        base = run["runs"][-1]["seconds"]
        for r in run["runs"]:
            lines.append(f"- {r['device']}: {r['seconds']:.1f} s per run (recipe {run['recipe']}), accuracy "
                         f"{r['accuracy']:.3f}, x{base / r['seconds']:.1f} against {run['runs'][-1]['device']}")
    return res, lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("work", type=Path)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res, lines = report(args.work)
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
