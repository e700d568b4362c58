"""Stand-in for DataComp's evaluate.py: same options; appends one result line per task.

Reads TRAIN_OUTPUT_DIR/info.pkl, skips tasks already in eval_results.jsonl, and appends
{"key", "dataset", "metrics": {..., "main_metric"}} for the others (the tasks of tasklist.json,
DataComp's 40; FairFace and UTKFace get no main metric). Scores are a deterministic function of
the task and checkpoint. STANDIN_FAIL=evaluate crashes after ten new tasks.
"""

import argparse
import json
import os
import pickle
import sys
import zlib
from pathlib import Path

from standin_common import record_call

p = argparse.ArgumentParser()
p.add_argument("--train_output_dir", type=Path, required=True)
p.add_argument("--output_dir", type=Path, default=None)
p.add_argument("--data_dir", type=Path, default=None)
p.add_argument("--batch_size", type=int, default=64)
args = p.parse_args()
record_call("evaluate")
info = pickle.load(open(args.train_output_dir / "info.pkl", "rb"))
if not Path(info["checkpoint"]).exists():
    sys.exit(f"no checkpoint at {info['checkpoint']}")
if args.data_dir is not None and not args.data_dir.is_dir():
    sys.exit(f"no data dir {args.data_dir}")
out = args.output_dir or args.train_output_dir
out.mkdir(parents=True, exist_ok=True)
results_file = out / "eval_results.jsonl"
done = set()
if results_file.exists():
    done = {json.loads(line)["dataset"] for line in results_file.read_text().splitlines() if line.strip()}
    print(f"Found {len(done)} eval result(s) in {results_file}.", flush=True)
tasks = json.loads((Path(__file__).parent / "tasklist.json").read_text())
new = 0
for task in tasks:
    if task["name"] in done:
        print(f"Skipping {task['name']} since results are already in {results_file}", flush=True)
        continue
    if os.environ.get("STANDIN_FAIL") == "evaluate" and new == 10:
        print("RuntimeError: simulated crash while evaluating", file=sys.stderr, flush=True)
        sys.exit(7)
    print(f"Evaluating on {task['name']}", flush=True)
    value = (zlib.crc32(f"{task['name']}|{info['checkpoint']}".encode()) % 10_000) / 10_000
    metrics = {} if task["main_metric"] is None else {"acc1": value, task["main_metric"]: value}
    metrics["main_metric"] = metrics.get(task["main_metric"]) if task["main_metric"] else None
    with open(results_file, "a+") as fh:
        fh.write(json.dumps({"key": task["key"], "dataset": task["name"], "metrics": metrics}) + "\n")
    new += 1
print("=== Final results ===", flush=True)
