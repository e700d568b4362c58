"""The paper's pipeline on a pool of DataComp-medium size: wall time and peak memory of each step.

    python bench/scale_pool.py /work/scale/medium                      # once: the pool (about 19 GB)
    python bench/bench_scale.py --pool /work/scale/medium --work /work/scale/run --label after

Each step runs as its own process (``python -m flyt_datacomp ...``, the code of ``--src``, default
this checkout), watched by a thread that samples its resident memory and stops it (SIGTERM, then
SIGKILL) when it passes ``--cap-gb``, so a step that would exhaust the machine is recorded as
"above the cap, stopped" instead of taking the machine down. The peak is the process's own maximum
resident set size from ``wait4`` (what ``/usr/bin/time -v`` prints). The steps:

* ``import`` -- ``inputs import`` of the 12 released inputs (joined by webdataset key through the
  shards' parquet files, ``--missing min``) into ``WORK/store``;
* ``import_no_tars`` -- the same against a shards folder holding the parquet files but no ``.tar``
  (a refusal: how long and how much memory until the user learns it);
* ``import_sigterm`` -- the import again into a new store, SIGTERM after ``--sigterm-after``
  seconds: how long it takes to stop;
* ``top20`` -- ``baseline flyt_mflyt_top20`` (the released mix over the 12 stored inputs, top 20%);
* ``mflyt_scs`` -- ``baseline flyt_mflyt_scs --shards-dir`` (the paper's record recipe);
* ``filter_scs`` -- ``filter --scale medium --score clip_l14_similarity_score --shards-dir`` (SCS on a column);
* ``filter_scs_pool`` -- the same over the whole pool (no ``--shards-dir``);
* ``clip_score`` -- ``baseline clip_score --arch l14 --fraction 0.3`` (DataComp's baseline).

The mixing model is a fixed random 12-input linear layer in the authors' format (seed 0). The steps
that read the store use ``--store`` when given (a store made by another run: the store format is
the same before and after), else ``WORK/store``. Every output's sha256 is recorded, so the subsets
of two labels can be compared byte for byte. Results accumulate in ``--json`` (one entry per label
and step) and the table in ``bench/RESULTS.md`` (between its scale markers) is rewritten from it.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("import", "import_no_tars", "import_sigterm", "top20", "mflyt_scs", "filter_scs", "filter_scs_pool",
         "clip_score")
TARGETS = {"import": "peak <= 4 GB", "import_no_tars": "refused in seconds", "import_sigterm": "stops within seconds",
           "mflyt_scs": "peak <= 6 GB", "filter_scs": "peak <= 6 GB", "filter_scs_pool": "peak <= 6 GB",
           "clip_score": "peak <= 5.0 GB (DataComp's `baselines.py`)", "top20": "top 20% exact"}
BEGIN, END = "<!-- bench_scale:begin -->", "<!-- bench_scale:end -->"


def machine() -> dict:
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    return {"cores": os.cpu_count(), "memory_gb": round(mem / 2**20, 1), "cpu": model, "python": platform.python_version(),
            "date": datetime.date.today().isoformat()}


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_step(cmd: list[str], env: dict, log: Path, cwd: Path, *, cap: float, term_after: float | None = None) -> dict:
    """Run ``cmd`` in ``cwd``; stop it past ``cap`` bytes of resident memory (or SIGTERM it after ``term_after`` s)."""
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    state = {"stopped_at": None, "sampled_peak": 0, "term_sent": None}
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.1):
            rss = rss_bytes(proc.pid)
            state["sampled_peak"] = max(state["sampled_peak"], rss)
            now = time.perf_counter() - start
            if state["term_sent"] is None and (rss > cap or (term_after is not None and now >= term_after)):
                state["term_sent"] = now
                if rss > cap:
                    state["stopped_at"] = rss
                os.kill(proc.pid, signal.SIGTERM)
            elif state["term_sent"] is not None and now - state["term_sent"] > 20:
                os.kill(proc.pid, signal.SIGKILL)
                return

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    done.set()
    thread.join()
    out = {"seconds": round(wall, 1), "peak_rss_gb": round(usage.ru_maxrss * 1024 / 1e9, 2), "exit": proc.returncode,
           "user_s": round(usage.ru_utime, 1), "sys_s": round(usage.ru_stime, 1),
           "sampled_peak_gb": round(state["sampled_peak"] / 1e9, 2), "parent_rss_gb": round(rss_bytes(os.getpid()) / 1e9, 2)}
    if state["stopped_at"] is not None:
        out["stopped_above_gb"] = round(cap / 1e9, 1)
    if state["term_sent"] is not None:
        out["sigterm_at_s"] = round(state["term_sent"], 1)
        out["stop_seconds"] = round(wall - state["term_sent"], 1)
    tail = log.read_text(errors="replace").strip().splitlines()[-3:]
    out["last_lines"] = [line[-300:] for line in tail]
    return out


def sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
    return h.hexdigest()


def mixing_model(path: Path) -> None:
    """A random 12-input mixing model in the authors' format, written by a child process: this
    process stays small, since a child's peak memory as ``wait4`` reports it is at least its
    parent's resident memory when it was forked."""
    code = ("import sys, torch; torch.manual_seed(0); layers = torch.nn.Sequential(torch.nn.Linear(12, 1)); "
            "torch.save({f'layers.{k}': v for k, v in layers.state_dict().items()}, sys.argv[1])")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)


def no_tars(shards: Path, folder: Path) -> Path:
    """A shards folder with the parquet files (symbolic links) but no tars."""
    if not folder.is_dir():
        folder.mkdir(parents=True)
        for f in shards.glob("*.parquet"):
            (folder / f.name).symlink_to(f)
    return folder


def commands(pool: Path, work: Path, store: Path) -> dict[str, tuple[list[str], Path | None]]:
    m, s, r = str(pool / "metadata"), str(pool / "shards"), str(pool / "released")
    model = str(work / "mflyt.pt")
    imp = ["inputs", "import", r, "--metadata-dir", m, "--shards-dir", s, "--missing", "min"]
    return {
        "import": ([*imp, "--inputs-dir", str(store)], None),
        "import_no_tars": (["inputs", "import", r, "--metadata-dir", m, "--shards-dir",
                            str(no_tars(pool / "shards", work / "shards-no-tars")), "--missing", "min",
                            "--inputs-dir", str(work / "store-no-tars")], None),
        "import_sigterm": ([*imp, "--inputs-dir", str(work / "store-sigterm")], None),
        "top20": (["baseline", "flyt_mflyt_top20", "--metadata-dir", m, "--inputs-dir", str(store), "--mixing-model",
                   model, "--output", str(work / "top20.npy"), "--overwrite"], work / "top20.npy"),
        "mflyt_scs": (["baseline", "flyt_mflyt_scs", "--metadata-dir", m, "--inputs-dir", str(store), "--mixing-model",
                       model, "--shards-dir", s, "--output", str(work / "mflyt_scs.npy"), "--overwrite"],
                      work / "mflyt_scs.npy"),
        "filter_scs": (["filter", "--scale", "medium", "--score", "clip_l14_similarity_score", "--metadata-dir", m,
                        "--shards-dir", s, "--output", str(work / "filter_scs.npy"), "--overwrite"],
                       work / "filter_scs.npy"),
        "filter_scs_pool": (["filter", "--scale", "medium", "--score", "clip_l14_similarity_score", "--metadata-dir", m,
                             "--output", str(work / "filter_scs_pool.npy"), "--overwrite"], work / "filter_scs_pool.npy"),
        "clip_score": (["baseline", "clip_score", "--arch", "l14", "--fraction", "0.3", "--metadata-dir", m, "--output",
                        str(work / "clip_score.npy"), "--overwrite"], work / "clip_score.npy"),
    }


def git_commit(src: Path) -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=src, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (subprocess.CalledProcessError, OSError):
        return (src / "COMMIT").read_text().strip() if (src / "COMMIT").is_file() else "?"


def render(results: dict) -> str:
    """The RESULTS.md section: the machine, then one row per step with every label's figures."""
    labels = list(results["runs"])
    lines = [BEGIN, "", "## DataComp-medium on one machine", "",
             "`bench/bench_scale.py` on a pool written by `bench/scale_pool.py` at DataComp-medium size: 128M metadata "
             "rows in 128 parquet files (uid and the two CLIP scores), 12,800 img2dataset shards of 10K rows (90% "
             "downloaded: 115.2M), the authors' 12 released inputs for the 115.2M downloads in 38 parquet files keyed "
             "by webdataset key; 16.2 GB on disk. Each step is its own process; the figures are its wall time and "
             "the peak of its resident memory (`wait4`, what `/usr/bin/time -v` reports). A step whose memory passed "
             "the cap (12 GB) was stopped by SIGTERM, which also times how long it took to stop. The machine was "
             "shared with other work (load averages of 3-10 on 2 cores during these runs), so wall times are "
             "upper bounds; memory does not depend on the load. For comparison, DataComp's own `baselines.py "
             "--name clip_score --arch l14 --fraction 0.3` on a generated pool of the same shape on a machine of "
             "this kind: 4 min 44 s, peak 5.0 GB (an earlier measurement, not rerun here).", ""]
    for label in labels:
        run = results["runs"][label]
        mc = run["machine"]
        lines.append(f"- **{label}** (code at {run['commit']}, {mc['date']}): {mc['cores']} cores ({mc['cpu']}), "
                     f"{mc['memory_gb']} GB, shared with other work; pool {run['pool']}.")
    lines += ["", "| step | " + " | ".join(labels) + " | target |", "|---|" + "---|" * len(labels) + "---|"]
    for step in STEPS:
        cells = []
        for label in labels:
            r = results["runs"][label]["steps"].get(step)
            cells.append(_cell(r))
        if all(c == "-" for c in cells):
            continue
        lines.append(f"| `{step}` | " + " | ".join(cells) + f" | {TARGETS.get(step, '')} |")
    lines.append("")
    for step in STEPS:
        command = next((results["runs"][lab]["steps"][step]["command"] for lab in reversed(labels)
                        if step in results["runs"][lab]["steps"]), None)
        if command:
            lines.append(f"- `{step}`: `{command}`")
    same = _same_outputs(results)
    if same:
        lines += ["", same]
    lines += ["", END]
    return "\n".join(lines)


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    wall = _duration(r["seconds"])
    if "stopped_above_gb" in r:
        return f"above {r['stopped_above_gb']} GB after {wall}, stopped ({r['stop_seconds']} s to stop)"
    cpu = r.get("user_s", 0) + r.get("sys_s", 0)
    text = f"{wall} (CPU {_duration(cpu)}), peak {r['peak_rss_gb']:.2f} GB"
    if "stop_seconds" in r:
        text += f"; SIGTERM at {r['sigterm_at_s']} s, stopped {r['stop_seconds']} s later (exit {r['exit']})"
    elif r["exit"] != 0:
        text += f", exit {r['exit']}"
    return text


def _duration(t: float) -> str:
    return f"{int(t // 60)} min {t % 60:02.0f} s" if t >= 60 else f"{t:.1f} s"


def _same_outputs(results: dict) -> str:
    notes = []
    labels = list(results["runs"])
    for step in STEPS:
        digests = {lab: results["runs"][lab]["steps"].get(step, {}).get("sha256") for lab in labels}
        given = {lab: d for lab, d in digests.items() if d}
        if len(given) > 1:
            same = len(set(given.values())) == 1
            notes.append(f"`{step}` {'identical' if same else 'DIFFERENT'} across {', '.join(given)}")
    return ("Output subsets (sha256): " + "; ".join(notes) + ".") if notes else ""


def replace_section(md: Path, section: str, begin: str = BEGIN, end: str = END) -> None:
    """Put ``section`` (which starts with ``begin`` and ends with ``end``) in place of the one between
    those markers in ``md``, or after its text when it has none."""
    text = md.read_text() if md.is_file() else ""
    if begin in text and end in text:
        text = text[:text.index(begin)] + section + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    md.write_text(text)


def write_results(results: dict, md: Path) -> None:
    replace_section(md, render(results))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=Path, help="a folder written by bench/scale_pool.py")
    ap.add_argument("--work", type=Path, help="where stores and subsets go")
    ap.add_argument("--label", help="the name of this run in the table (e.g. before, after)")
    ap.add_argument("--render", action="store_true", help="only rewrite the RESULTS.md table from --json")
    ap.add_argument("--src", type=Path, default=REPO, help="the checkout whose code runs (default: this one)")
    ap.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--store", type=Path, help="an existing store for the mixing steps (default: WORK/store)")
    ap.add_argument("--cap-gb", type=float, default=12.0, help="stop a step whose resident memory passes this")
    ap.add_argument("--sigterm-after", type=float, default=90.0)
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "scale_results.json")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    if args.render:
        write_results(json.loads(args.json.read_text()), args.results)
        return 0
    if not (args.pool and args.work and args.label):
        ap.error("--pool, --work and --label are needed to run steps")
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        ap.error(f"unknown steps {unknown}")
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store or args.work / "store"
    if not (args.work / "mflyt.pt").is_file():
        mixing_model(args.work / "mflyt.pt")
    src = args.src.resolve()
    env = {**os.environ, "PYTHONPATH": str(src), "PYTHONUNBUFFERED": "1"}
    where = subprocess.run([sys.executable, "-c", "import flyt_datacomp; print(flyt_datacomp.__file__)"], env=env,
                           cwd=src, capture_output=True, text=True).stdout.strip()
    if not where.startswith(str(src)):
        ap.error(f"the steps would import flyt_datacomp from {where}, not from {src}")
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": {}}
    run = results["runs"].setdefault(args.label, {"steps": {}})
    run.update({"machine": machine(), "commit": git_commit(args.src), "pool": str(args.pool)})
    cmds = commands(args.pool, args.work, store)
    for step in steps:
        cmd, output = cmds[step]
        full = [sys.executable, "-m", "flyt_datacomp", *cmd]
        if step == "import_sigterm":
            import shutil

            shutil.rmtree(args.work / "store-sigterm", ignore_errors=True)
        load = os.getloadavg()[0]
        print(f"[{time.strftime('%H:%M:%S')}] {step} (load {load:.1f}): {' '.join(cmd)}", flush=True)
        r = run_step(full, env, args.work / f"{args.label}-{step}.log", src, cap=args.cap_gb * 1e9,
                     term_after=args.sigterm_after if step == "import_sigterm" else None)
        r["command"] = "flyt-datacomp " + " ".join(cmd)
        r["load_before"] = round(load, 1)
        if output is not None and r["exit"] == 0:
            r["sha256"] = sha256(output)
        run["steps"][step] = r
        print(f"    {json.dumps({k: v for k, v in r.items() if k != 'command'})}", flush=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        write_results(results, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
