"""How much a subset is worth after one step of training on it, and after the benchmark's whole run.

    python bench/diagnose_horizon.py --subset mflyt.npy --subset stdsum.npy --num-seeds 5
    python bench/diagnose_horizon.py --subset a.npy --at 1,5,20,50,100,200 --output horizon.json

FLYT's objective judges a weighting of the pool by the downstream loss after *one* step of the reference
model on it; the benchmark judges a subset by the zero-shot accuracy of a CLIP trained on it from scratch
for the whole recipe. This trains each subset's benchmark runs (the pool's recipe, the same training as
``flyt-datacomp benchmark``, seeds 0..N-1) and, after each step count of ``--at``, measures on held-out
digits the two things that differ: the zero-shot classifier's cross entropy (the loss FLYT's validation
judges by, at the model's own temperature) and its accuracy (what the benchmark reports). The digits are
the validation split of the downstream training digits (the split FLYT's presets are chosen on); the
test digits are read once, at the end, only to check that the last accuracy is the benchmark's own.
Nothing here chooses anything.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flyt_datacomp.benchmark.data import load_labelled_images, subset_index
from flyt_datacomp.benchmark.evaluate import Benchmark
from flyt_datacomp.benchmark.recipe import get_recipe, pool_recipe
from flyt_datacomp.benchmark.train import TrainingData, to_pixels, train_and_evaluate
from flyt_datacomp.benchmark.zeroshot import class_embeddings
from flyt_datacomp.demo import build_demo_pool
from flyt_datacomp.demo.pool import DemoPool
from flyt_datacomp.flyt.config import PRESETS
from flyt_datacomp.flyt.validation import is_validation
from flyt_datacomp.io import write_json
from flyt_datacomp.parallel import process_map

FRACTION = PRESETS["m-flyt-demo-all"]["validation_fraction"]
_STATE: dict = {}


def zero_shot(model, data: TrainingData, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The benchmark's zero-shot classifier on ``pixels``: (cross entropy at the model's temperature, accuracy)."""
    classes = class_embeddings(model.encode_text(data.prompt_tokens, normalize=True), data.num_classes)
    logits = model.logit_scale.exp() * model.encode_image(pixels, normalize=True).float() @ classes.T
    return float(F.cross_entropy(logits, labels)), float((logits.argmax(1) == labels).float().mean())


def _init(pool: DemoPool, recipe_name: str) -> None:
    bench = Benchmark(pool, get_recipe(recipe_name), progress=False)
    images, labels = load_labelled_images(pool.downstream_dir, keep=lambda url, key: is_validation(url, key, FRACTION))
    _STATE.update(bench=bench, pixels=to_pixels(torch.from_numpy(images), bench.recipe),
                  labels=torch.from_numpy(labels))


def _run(task: tuple[str, np.ndarray, int, tuple[int, ...]]) -> dict:
    name, index, seed, at = task
    bench, curve = _STATE["bench"], {}

    def observe(n, model):
        curve[n] = zero_shot(model, bench.data, _STATE["pixels"], _STATE["labels"])

    result = train_and_evaluate(bench.data, index, bench.recipe, seed, progress=False, observe=observe, observe_at=at)
    return {"name": name, "seed": seed, "test_accuracy": result["accuracy"],
            "curve": {n: {"loss": v[0], "accuracy": v[1]} for n, v in sorted(curve.items())}}


def summarise(runs: list[dict], names: list[str], at: list[int]) -> dict:
    """Per subset and step count: the mean and standard error over seeds of the loss and the accuracy."""
    out = {}
    for name in names:
        mine = [r for r in runs if r["name"] == name]
        row = {}
        for n in at:
            row[n] = {}
            for what in ("loss", "accuracy"):
                v = np.array([r["curve"][n][what] for r in mine])
                row[n][what] = float(v.mean())
                row[n][f"{what}_se"] = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else float("nan")
        out[name] = {"steps": row, "test_accuracy": [r["test_accuracy"] for r in sorted(mine, key=lambda r: r["seed"])]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--subset", action="append", type=Path, required=True, help="a subset .npy of the demo pool")
    ap.add_argument("--num-seeds", type=int, default=5)
    ap.add_argument("--at", default="1,2,5,10,20,50,100,200", help="step counts to measure after")
    ap.add_argument("--pool-dir", type=Path, help="a built v4 demo pool [the default demo pool]")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--output", type=Path, help="write the runs and the summary as JSON")
    args = ap.parse_args()
    pool = DemoPool.open(args.pool_dir) if args.pool_dir else build_demo_pool(progress=False)
    recipe = pool_recipe(pool.version)
    at = sorted({int(x) for x in args.at.split(",")})
    if at[0] < 1:
        raise SystemExit(f"--at: step counts start at 1, not {at[0]}")
    if at[-1] > get_recipe(recipe).steps:
        raise SystemExit(f"--at {at[-1]} is past the recipe's {get_recipe(recipe).steps} steps")
    _init(pool, recipe)
    bench = _STATE["bench"]
    names = [p.stem for p in args.subset]
    tasks = [(p.stem, subset_index(p, bench.images, bench.pool_uids).index, seed, tuple(at))
             for p in args.subset for seed in range(args.num_seeds)]
    print(f"{len(tasks)} runs of {bench.recipe.steps} steps; {len(_STATE['labels'])} validation digits")
    runs = [r for _, r in process_map(_run, tasks, args.workers, ordered=False, what="the training runs",
                                      initializer=_init, initargs=(pool, recipe))]
    summary = summarise(runs, names, at)
    width = max(len(n) for n in names)
    print(f"\nzero-shot cross entropy / accuracy (%) on the validation digits, mean over {args.num_seeds} seeds")
    print(f"{'after step':<{width}} " + " ".join(f"{n:>14}" for n in at) + "   test acc (%)")
    for name in names:
        cells = " ".join(f"{v['loss']:6.3f} / {100 * v['accuracy']:5.1f}" for v in summary[name]["steps"].values())
        print(f"{name:<{width}} {cells}   {100 * np.mean(summary[name]['test_accuracy']):.1f}")
    if args.output:
        write_json(args.output, {"recipe": bench.recipe_record(), "at": at, "summary": summary, "runs": runs})


if __name__ == "__main__":
    main()
