"""Time one mini-benchmark training run on each device, in the same process.

    python bench/bench_benchmark_run.py --devices cpu cuda      # on a GPU machine
    python bench/bench_benchmark_run.py --recipe quick          # a few seconds, CPU only

One run is what `flyt-datacomp benchmark` trains per (subset, seed): a fresh tiny CLIP trained on a
subset of the demo pool for the recipe's samples seen, then scored zero-shot. The subset here is a
seeded random 30% of the pool's examples with an image (the table's "random 30%" row, rebuilt
without the filter). Each device trains the same run (same seed); the report gives seconds per run,
the share spent assembling batches, the accuracy, and the ratio against the first device. The CPU
run uses the recipe's thread count, as the benchmark does. ``--json PATH`` writes the numbers.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--devices", nargs="+", default=["cpu"], help="torch devices to time, first one is the baseline")
    ap.add_argument("--recipe", default="default", choices=["default", "quick"])
    ap.add_argument("--pool-dir", default=None, help="a built demo pool (default: the default pool, built if needed)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    import torch

    if any(str(d).startswith("cuda") for d in args.devices) and not torch.cuda.is_available():
        ap.error("a cuda device was asked for but CUDA is not available here")

    from flyt_datacomp.benchmark.evaluate import Benchmark
    from flyt_datacomp.benchmark.recipe import get_recipe
    from flyt_datacomp.benchmark.train import train_and_evaluate
    from flyt_datacomp.demo import DemoPool, build_demo_pool

    pool = DemoPool.open(args.pool_dir) if args.pool_dir else build_demo_pool(progress=False)
    recipe = get_recipe(args.recipe)
    bench = Benchmark(pool, recipe, progress=False)
    n = len(bench.images.uids)
    index = np.sort(np.random.default_rng(args.seed).choice(n, int(0.3 * n), replace=False))
    rows = []
    for device in args.devices:
        r = train_and_evaluate(bench.data, index, recipe, args.seed, progress=False, device=device)
        rows.append({"device": device, **{k: r[k] for k in ("seconds", "data_seconds", "model_seconds",
                                                              "eval_seconds", "accuracy", "steps")}})
    base = rows[0]["seconds"]
    for r in rows:
        print(f"{r['device']}: {r['seconds']:.1f} s per run ({r['steps']} steps of {recipe.batch_size}; "
              f"{100 * r['data_seconds'] / r['seconds']:.1f}% assembling batches), accuracy {r['accuracy']:.3f}, "
              f"x{base / r['seconds']:.2f} against {rows[0]['device']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"recipe": recipe.name, "subset": "random 30% of the examples with an image", "runs": rows},
                      fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
