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

COSINE_TARGET = 0.999  # bf16 meta-gradient against float32
TIME_RATIO_TARGET = 0.7  # efficient / naive at 256/192
MEMORY_RATIO_TARGET = 0.5
PAPER_STEP_TARGET = 3.5  # seconds per step at B 4096 / B' 3072
SCS_TARGET = 5.0  # seconds, CUDA, M = N = 128M, G = 100K
PAPER_STEPS = 5000


def load(work: Path, name: str) -> dict | None:
    path = work / f"{name}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "NOT met")


def against(value: float | None, target: float, at_least: bool, fmt: str = "{:.4f}") -> str:
    """``value (target >= / <= target: met / NOT met)``, or ``missing`` when there is no value."""
    if value is None:
        return f"missing (target {'>=' if at_least else '<='} {target}: n/a)"
    ok = value >= target if at_least else value <= target
    return f"{fmt.format(value)} (target {'>=' if at_least else '<='} {target}: {verdict(ok)})"


def _gib(n) -> str:
    return "-" if n is None else f"{n / 2**30:.1f} GiB"


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

    def setting(result: dict) -> str:
        a = result.get("args", {})
        micro = f", micro-batch {a.get('micro_batch')}" if a.get("micro_batch") else ""
        return f"{a.get('arch')}, B {a.get('batch')} / B' {a.get('downstream_batch')}, {a.get('classes')} classes{micro}"

    def efficient_row(result: dict) -> str:
        row = result.get("rows", {}).get("efficient", {})
        sec = row.get("median_s")
        return (f"efficient step {'-' if sec is None else f'{sec:.3f} s'}, peak {_gib(row.get('peak_bytes'))}"
                if row else "no efficient step recorded")

    b512 = section("bilevel512", "bf16 meta-gradient at 512/384")
    if b512:
        lines.append(f"{setting(b512)}, {b512['args'].get('dtype')}: {efficient_row(b512)}")
        lines.append(f"- cosine to float32: {against(b512.get('cosine_fp32'), COSINE_TARGET, True, '{:.6f}')}")
    lines.append("")

    b256 = section("bilevel256", "Efficient vs naive at 256/192")
    if b256:
        lines.append(f"{setting(b256)}, {b256['args'].get('dtype')}: {efficient_row(b256)}")
        lines.append(f"- time efficient / naive: {against(b256.get('time_ratio'), TIME_RATIO_TARGET, False, '{:.3f}')}")
        lines.append(f"- memory efficient / naive: {against(b256.get('memory_ratio'), MEMORY_RATIO_TARGET, False, '{:.3f}')}")
        if "cosine_fp32" in b256:
            lines.append(f"- cosine of the efficient step to float32: "
                         f"{against(b256['cosine_fp32'], COSINE_TARGET, True, '{:.6f}')}")
        if "cosine_naive_fp32" in b256:
            lines.append(f"- cosine of the naive step to float32: "
                         f"{against(b256['cosine_naive_fp32'], COSINE_TARGET, True, '{:.6f}')}")
        if "cosine_naive" in b256:
            lines.append(f"- cosine of the efficient and naive meta-gradients: {b256['cosine_naive']:.6f}")
    lines.append("")

    paper = section("paper_batch", "The paper's batch, one row per speed option")
    if paper and paper.get("variants"):
        lines.append(f"{setting(paper)}, {paper['args'].get('dtype')}, captions of {paper['args'].get('caption_words')} "
                     f"words; ratios against the first row:")
        best = None
        for spec, row in paper["variants"].items():
            sec = row.get("median_s")
            if row.get("oom") or sec is None:
                lines.append(f"- {spec}: out of memory or no time ({row.get('note')})")
                continue
            best = sec if best is None else min(best, sec)
            ratio, cos = row.get("time_ratio"), row.get("cosine_first")
            lines.append(f"- {spec}: {sec:.2f} s per step ({'-' if ratio is None else f'x{ratio:.3f}'}), peak "
                         f"{_gib(row.get('peak_bytes'))}; {PAPER_STEPS} steps: {sec * PAPER_STEPS / 3600:.1f} h; cosine "
                         f"to the first {'-' if cos is None else f'{cos:.6f}'} ({row.get('note')})")
        res["paper_batch_best_seconds"] = best
        lines.append(f"- fastest: {against(best, PAPER_STEP_TARGET, False, '{:.2f} s')}")
    lines.append("")

    tf32 = section("tf32", "TF32 in the encoders against float32")
    if tf32 and tf32.get("variants"):
        lines.append(f"{setting(tf32)}:")
        for spec, row in tf32["variants"].items():
            sec = row.get("median_s")
            ratio = row.get("time_ratio")
            shown = ("out of memory" if row.get("oom") or sec is None
                     else f"{sec:.3f} s ({'-' if ratio is None else f'x{ratio:.3f}'})")
            cos = row.get("cosine_first")
            lines.append(f"- {spec}: {shown}, cosine to float32 {'-' if cos is None else f'{cos:.6f}'}")
    lines.append("")

    scs = section("scs", "SCS on CUDA")
    if scs:
        lines.append(f"M = N = {scs['size']:,}, G = {scs['group_size']:,}, alpha {scs['alpha']}:")
        for device, t in scs["ours"].items():
            lines.append(f"- {device}: {t['seconds']:.2f} s, max count {t['max_count']}, {t['distinct']:,} distinct")
        new = scs["ours"].get("cuda", scs["ours"].get("torch-cpu"))
        res["scs_seconds"] = None if new is None else new["seconds"]
        lines.append(f"- time: {against(res['scs_seconds'], SCS_TARGET, False, '{:.2f} s')}")
        for device, ratio in scs.get("old_over_new", {}).items():
            lines.append(f"- {device}: old torch path / new: x{ratio:.2f}")
    dist = load(work, "scs_distribution")
    res["scs_distribution"] = dist
    if dist:
        lines.append(f"- distribution, {dist['device']} vs CPU over {dist['runs']} runs each: max |z| "
                     f"{dist['max_abs_z']:.2f}, totals exact {dist['exact_totals']}, threshold rounds "
                     f"{dist.get('threshold_rounds')} of {dist.get('rounds')}: {'PASS' if dist['passed'] else 'FAIL'} "
                     f"({status('scs_distribution')})")
    lines.append("")

    if "train_torchrun" in steps:
        lines.append(f"## m-flyt-base under torchrun: 40 steps, interrupted after the step-10 checkpoint and resumed "
                     f"({status('train_torchrun')})")
        lines.append("")
    if "benchmark_run" in steps:
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
