"""The selection on a local Ray cluster of several workers: wall time, the driver's and each worker's peak memory.

    python bench/bench_ray_scale.py --pool /work/scale/medium --work /work/scale/ray --partitions 4 \\
        --steps clip_score,sigterm
    python bench/bench_ray_scale.py --pool /work/scale/tenth --work /work/scale/ray-tenth --partitions 4 --steps scs

A stand-in for a large or xlarge run on a cluster: the pool (written by ``bench/scale_pool.py``) is cut
into ``--partitions`` partitions, each held by one Ray worker process of a local instance
(``filter --ray local``); each step runs as its own process (``bench_scale.run_step``: wall time,
the peak resident memory of the command's process from ``wait4``) and the workers' peaks come from
the subset's sidecar (``cluster.worker_peak_rss_bytes``, each worker's ``ru_maxrss``). Steps:

* ``clip_score`` -- ``filter --name clip_score --arch l14 --fraction 0.3``: DataComp's baseline, whose
  subset's sha256 is compared with the single-machine run recorded by ``bench/bench_scale.py``
  (``--single-json``, same pool; a pool without one, such as a large pool no single machine holds, is
  recorded without the comparison);
* ``scs`` -- ``filter --score clip_l14_similarity_score`` with SCS's defaults for the pool (medium's
  alpha, G = N / 1280: the paper's 1280 rounds at any pool size, as large and xlarge use);
* ``sigterm`` -- the ``scs`` step again, SIGTERM after ``--sigterm-after`` seconds: how long it takes
  to stop (Ray's local processes included);
* ``stdsum_single`` and ``stdsum`` -- the top 20% of the standardised sum of the two CLIP score columns
  (``filter --score standardized_sum:... --sampler threshold --fraction 0.2``), on one machine and on
  Ray: each input's mean and standard deviation are the pool's, combined from the partitions; the
  two subsets' sha256 are compared;
* ``import_single`` and ``import`` -- ``inputs import`` of the pool's released inputs (keyed by
  webdataset key, joined through its download shards), on one machine and with ``--ray local``: the
  join by buckets, ``--partitions`` of them; the workers' peaks come from the store's record of the
  join, and a sha256 over every imported value in pool order is compared between the two stores.

Results accumulate in ``--json`` and the section of ``bench/RESULTS.md`` between its Ray markers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import git_commit, machine, replace_section, run_step, sha256  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
STEPS = ("clip_score", "scs", "sigterm", "stdsum_single", "stdsum", "import_single", "import")
STDSUM = "standardized_sum:clip_b32_similarity_score,clip_l14_similarity_score"
BEGIN, END = "<!-- bench_ray_scale:begin -->", "<!-- bench_ray_scale:end -->"


def commands(pool: Path, work: Path, partitions: int) -> dict[str, tuple[list[str], Path]]:
    m = str(pool / "metadata")
    ray = ["--ray", "local", "--partitions", str(partitions), "--metadata-dir", m, "--overwrite"]
    scs = ["filter", "--score", "clip_l14_similarity_score", *ray]
    top20 = ["filter", "--score", STDSUM, "--sampler", "threshold", "--fraction", "0.2"]
    imp = ["inputs", "import", str(pool / "released"), "--metadata-dir", m, "--shards-dir", str(pool / "shards"),
           "--missing", "min"]
    return {
        "import_single": ([*imp, "--inputs-dir", str(work / "store_single")], work / "store_single"),
        "import": ([*imp, "--ray", "local", "--partitions", str(partitions), "--inputs-dir", str(work / "store")],
                   work / "store"),
        "stdsum_single": ([*top20, "--metadata-dir", m, "--overwrite", "--output", str(work / "stdsum_single.npy")],
                          work / "stdsum_single.npy"),
        "stdsum": ([*top20, *ray, "--output", str(work / "stdsum.npy")], work / "stdsum.npy"),
        "clip_score": (["filter", "--name", "clip_score", "--arch", "l14", "--fraction", "0.3", *ray, "--output",
                        str(work / "clip_score.npy")], work / "clip_score.npy"),
        "scs": ([*scs, "--output", str(work / "scs.npy")], work / "scs.npy"),
        "sigterm": ([*scs, "--output", str(work / "scs_sigterm.npy")], work / "scs_sigterm.npy"),
    }


def render(results: dict) -> str:
    lines = [BEGIN, "", "## Selection on a local Ray cluster", "",
             "`bench/bench_ray_scale.py`: `filter --ray local --partitions P` on pools written by `bench/scale_pool.py`, "
             "each partition held by one Ray worker process. The 1,280,000,000-row pool is a simulated DataComp-large: "
             "generated metadata only (`scale_pool.py --rows 1280000000 --metadata-files 1280 --metadata-only`: the uids and"
             " the two CLIP score columns in 1,280 files of 1M rows, as medium's; 51.5 GB, written in 12 min 37 s; no "
             "download shards or released files, which would not fit the disk), run with 8 workers on one machine (2 cores, "
             "Intel(R) Xeon(R) Processor, 23.5 GiB (25.3 GB) of RAM, 2026-12-07); the other pools are a tenth and a "
             "hundredth of it. Wall time and the peak resident memory of the command's process (`wait4`; the Ray processes "
             "it starts are its children, not counted there), and each worker's own peak (`ru_maxrss`, from the sidecar: a "
             "Ray worker with the package imported, one metadata shard being read, and its partition). On a cluster the "
             "workers sit on different nodes; here they share the machine: the large `clip_score` run's eight peaks add up "
             "to 20.0 GB, the workers held at most 16.4 GB at once (sampled every 2 s) and the machine kept at least 5.8 GiB"
             " available. That run (on 926f7ac) was repeated on f14af35, where a CLIP fraction runs as a mask with its "
             "threshold found first (each worker reads the CLIP column twice), on a quieter machine (load 0.6 before, up "
             "to 8): 479 s, workers of 2.82-2.91 GB, the command's process 0.63 GB, and the same sha256. Of the first "
             "run's 1085 s, reading the partitions took 20 s and writing the 6.1 GB subset 61 s; the rest is "
             "the threshold's search and each worker's pass over its uids. No single machine ran that pool to compare bytes "
             "with (medium's single-machine run peaked at 2.62 GB, which would be about 26 GB at 1.28B rows: more than this "
             "machine has; extrapolated, not run), so its subset was checked apart: 384,000,196 rows of the pool have an "
             "L/14 score at least the recorded threshold and 383,999,914 above it (counted with pyarrow; 30% is 384,000,000,"
             " the rest ties at the cut), and the selected uids of three metadata files (the first, the 701st, the last) are"
             " in the subset and their other uids are not. `stdsum` and `scs` were not run at 1.28B rows: a `stdsum` worker "
             "holds about 32 bytes a row (2.21 GB at 64M rows, 0.68 GB at 16M, measured on 128M rows of the large pool), "
             "about 42 GB for the whole pool, beyond this machine's 25.3 GB; SCS took 223 s for 12.8M rows, and each of its "
             "1280 rounds draws a key for every example, so at 1.28B rows it would take hours on 2 cores. `scs` runs with "
             "SCS's defaults for the pool: medium's alpha 0.15, G = N / 1280 (the rule `--scale large` and `xlarge` apply: "
             "1M and 10M), N = the pool's size. `sigterm` is that run stopped by SIGTERM: the exit code, how long it took, "
             "and what was left (no subset file, no Ray process). `stdsum` is the top 20% of the standardised sum of the two"
             " CLIP score columns, each input's mean and std combined from the partitions, against the same command on one "
             "machine. `import` is `inputs import` of the pool's 12 released fields (keyed by webdataset key, joined "
             "through the download shards) with `--ray local`: the join by buckets, `partitions` of them, each pass a set "
             "of Ray tasks; its worker peaks come from the store's record of the join (each Ray worker process's "
             "`ru_maxrss`; 2 worker processes on 2 cores), and its values are compared with `inputs import` on one "
             "machine by a sha256 over every imported value in pool order. The machine was shared with other work (load "
             "averages of 5-11 on 2 cores for the medium and tenth selection runs, 2-4 for the imports; 3.9 before the "
             "large run and up to 19.4 during it, 12.9 on average, with Ray tests running beside it), so times are upper "
             "bounds.", "",
             "| step | pool | partitions | wall | command process peak | worker peaks | same bytes as one machine | code |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results["runs"].values():
        peaks = r.get("worker_peak_rss_gb")
        worker = ", ".join(f"{p:.2f}" for p in peaks) + " GB" if peaks else "-"
        wall = f"{r['seconds']:.0f} s"
        if r.get("stop_seconds") is not None:
            wall = f"SIGTERM at {r['sigterm_at_s']:.0f} s, stopped {r['stop_seconds']:.1f} s later (exit {r['exit']})"
        elif r["exit"] != 0:
            wall += f" (exit {r['exit']})"
        lines.append(f"| `{r['step']}` | {r['pool_rows']:,} rows ({r['pool']}) | {r['partitions']} | {wall} | "
                     f"{r['peak_rss_gb']:.2f} GB | {worker} | {_single(r)} | "
                     f"{r['commit']}, {r['machine']['date']}, {r['machine']['cores']} cores |")
    lines += ["", END]
    return "\n".join(lines)


def _single(r: dict) -> str:
    one = r.get("single")
    if not one:
        return r.get("same_as_single", "-")
    return f"{r['same_as_single']} (one machine: {one['seconds']:.0f} s, peak {one['peak_rss_gb']:.2f} GB)"


def write_results(results: dict, md: Path) -> None:
    replace_section(md, render(results), BEGIN, END)


def store_digest(store: Path, metadata: Path) -> tuple[str, dict]:
    """A sha256 over every input of the store, in pool order (float32 bytes, NaN where no value), one
    shard at a time; and the first input's manifest entry."""
    import hashlib

    from flyt_datacomp.pool import Pool
    from flyt_datacomp.store import InputStore

    inputs = InputStore(store)
    names = inputs.input_names()
    h = hashlib.sha256(",".join(names).encode())
    for columns in inputs.iter_columns(names, Pool(str(metadata), progress=False), fill=False):
        for name in names:
            h.update(np.asarray(columns[name], dtype="<f4").tobytes())
    return h.hexdigest(), inputs.entry(names[0])


def pool_rows(metadata: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(metadata.glob("*.parquet")))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pool", type=Path, required=True, help="a folder written by bench/scale_pool.py")
    ap.add_argument("--work", type=Path, required=True, help="where the subsets go")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--steps", default="clip_score,scs,sigterm", help=f"comma-separated, of {', '.join(STEPS)}")
    ap.add_argument("--sigterm-after", type=float, default=60.0)
    ap.add_argument("--cap-gb", type=float, default=12.0, help="stop a step whose command process passes this")
    ap.add_argument("--single-json", type=Path, default=REPO / "bench" / "scale_results.json",
                    help="bench_scale.py's results: the single-machine clip_score subset's sha256")
    ap.add_argument("--json", type=Path, default=REPO / "bench" / "ray_scale_results.json")
    ap.add_argument("--results", type=Path, default=REPO / "bench" / "RESULTS.md")
    args = ap.parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if any(s not in STEPS for s in steps):
        ap.error(f"steps are among {', '.join(STEPS)}")
    args.work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    results = json.loads(args.json.read_text()) if args.json.is_file() else {"runs": {}}
    single = {}
    if args.single_json.is_file():
        for run in json.loads(args.single_json.read_text())["runs"].values():
            step = run["steps"].get("clip_score", {})
            if step.get("sha256") and Path(run["pool"]).resolve() == args.pool.resolve():
                single["clip_score"] = step
    if str(args.pool.resolve()) in results.get("single_imports", {}):
        single["import"] = results["single_imports"][str(args.pool.resolve())]
    rows = pool_rows(args.pool / "metadata")
    cmds = commands(args.pool, args.work, args.partitions)
    for step in steps:
        cmd, output = cmds[step]
        if output.is_dir():  # an input store: imported afresh
            shutil.rmtree(output)
        output.unlink(missing_ok=True)
        load = os.getloadavg()[0]
        print(f"[{time.strftime('%H:%M:%S')}] {step} (load {load:.1f}): {' '.join(cmd)}", flush=True)
        r = run_step([sys.executable, "-m", "flyt_datacomp", *cmd], env, args.work / f"{step}.log", REPO,
                     cap=args.cap_gb * 1e9, term_after=args.sigterm_after if step == "sigterm" else None)
        r.update({"step": step, "command": "flyt-datacomp " + " ".join(cmd), "load_before": round(load, 1),
                  "pool": str(args.pool), "pool_rows": rows, "partitions": args.partitions, "machine": machine(),
                  "commit": git_commit(REPO)})
        if r["exit"] == 0 and step.startswith("import"):
            r["sha256"], entry = store_digest(output, args.pool / "metadata")
            r["entries"] = entry["count"]
            if step == "import_single":  # the one-machine reference of the import step, kept for later runs
                single["import"] = results.setdefault("single_imports", {})[str(args.pool.resolve())] = r
                print(f"    one machine: {r['seconds']:.0f} s, peak {r['peak_rss_gb']:.2f} GB", flush=True)
                args.json.write_text(json.dumps(results, indent=1) + "\n")
                continue
            r["worker_peak_rss_gb"] = [round(b / 1e9, 2) for b in entry["join_cluster"]["worker_peak_rss_bytes"]]
            r["buckets"] = entry["join_cluster"]["buckets"]
            if "import" in single:
                r["same_as_single"] = "yes" if r["sha256"] == single["import"]["sha256"] else "NO"
                r["single"] = {k: single["import"][k] for k in ("seconds", "peak_rss_gb")}
        elif r["exit"] == 0:
            r["sha256"] = sha256(output)
            sidecar = json.loads(Path(str(output) + ".json").read_text())
            if step == "stdsum_single":  # the one-machine reference of the stdsum step, not a Ray run
                single["stdsum"] = r
                print(f"    one machine: {r['seconds']:.0f} s, peak {r['peak_rss_gb']:.2f} GB", flush=True)
                continue
            r["worker_peak_rss_gb"] = [round(b / 1e9, 2) for b in sidecar["cluster"]["worker_peak_rss_bytes"]]
            r["entries"] = sidecar["total_entries"]
            if step in single:
                r["same_as_single"] = "yes" if r["sha256"] == single[step]["sha256"] else "NO"
                r["single"] = {k: single[step][k] for k in ("seconds", "peak_rss_gb")}
            elif step in ("clip_score", "stdsum"):  # e.g. a pool no single machine holds: nothing to compare
                r["same_as_single"] = "- (no one-machine run of this pool)"
        else:
            r["left_behind"] = sorted(p.name for p in args.work.iterdir() if p.name.startswith(output.stem))
            r["ray_processes_after"] = int(subprocess.run(["pgrep", "-c", "-f", "raylet"], capture_output=True,
                                                          text=True).stdout.strip() or 0)
        results["runs"][f"{args.pool.name}-{step}-{args.partitions}"] = r
        print(f"    {json.dumps({k: v for k, v in r.items() if k not in ('command', 'machine')})}", flush=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
        write_results(results, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
