"""Stand-in for DataComp's train.py: same options and outputs, one line of "training" per epoch.

Writes OUT/NAME/checkpoints/epoch_<k>.pt and epoch_latest.pt per epoch, resumes after the epoch of
epoch_latest.pt, writes OUT/NAME/info.pkl at the end (rank 0 only under torchrun).
STANDIN_FAIL=train crashes after the second epoch; STANDIN_TRAIN_ERROR=1 prints DataComp's
"Error running training" line and still exits 0, as train.py does.
"""

import argparse
import json
import os
import pickle
import sys
from pathlib import Path

from scale_configs import available_scales, get_scale_config
from standin_common import record_call

p = argparse.ArgumentParser()
p.add_argument("--scale", required=True, choices=available_scales())
p.add_argument("--data_dir", type=Path, required=True)
p.add_argument("--output_dir", type=Path, required=True)
p.add_argument("--exp_name", default=None)
p.add_argument("--workers", type=int, default=4)
p.add_argument("--num_checkpoints", type=int, default=5)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--precision", default="amp")
args = p.parse_args()
record_call("train")
rank = int(os.environ.get("RANK", 0))
tars = sorted(args.data_dir.glob("*.tar"))
if not tars:
    sys.exit(f"no shards in {args.data_dir}")
exp = args.output_dir / (args.exp_name or f"{args.scale}_scale")
ckpt = exp / "checkpoints"
if rank == 0:
    ckpt.mkdir(parents=True, exist_ok=True)
    start = 0
    if (ckpt / "epoch_latest.pt").exists():
        start = json.loads((ckpt / "epoch_latest.pt").read_text())["epoch"]
        print(f"resuming from epoch {start}", flush=True)
    for epoch in range(start + 1, args.num_checkpoints + 1):
        print(f"Train Epoch: {epoch} scale {args.scale} shards {len(tars)}", flush=True)
        state = json.dumps({"epoch": epoch, "scale": args.scale})
        (ckpt / f"epoch_{epoch}.pt").write_text(state)
        (ckpt / "epoch_latest.pt").write_text(state)
        if os.environ.get("STANDIN_FAIL") == "train" and epoch == 2:
            print("RuntimeError: CUDA error: an illegal memory access was encountered", file=sys.stderr, flush=True)
            sys.exit(7)
    if os.environ.get("STANDIN_TRAIN_ERROR"):
        print("Error running training. Exiting.", flush=True)
    with open(exp / "info.pkl", "wb") as fh:
        pickle.dump({"scale": args.scale, "checkpoint": ckpt / "epoch_latest.pt",
                     "scale_config": get_scale_config(args.scale), "data_dir": args.data_dir}, fh)
    print("Done training.", flush=True)
