"""Where a demo FLYT step's time goes, and what the compact vocabulary and the batched image transform save.

    python bench/bench_demo_step.py                 # m-flyt-demo-all on the default demo pool, 20 steps each
    python bench/bench_demo_step.py --steps 40 --threads 2

Trains the same preset three ways in one process, each from the same start, timing the data (reading
and decoding a batch of each stream) and the bilevel step separately:

* naive: open_clip's full 49,408-row token table and its per-image transform (the package before);
* the compact vocabulary only (``compact_vocabulary``: the rows of the tokens the demo's texts use);
* both (the compact vocabulary and :class:`~flyt_datacomp.flyt.decode.ImageTransform`'s batched path).

Ratios are against the naive run, measured in the same process, so a busy machine slows all alike.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from flyt_datacomp.demo import build_demo_pool
from flyt_datacomp.flyt.trainer import Trainer


def run(cfg, steps: int, batched: bool) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, tmp, progress=False)
        if not batched:  # open_clip's transform, image by image
            for stream in (trainer.upstream, trainer.downstream):
                stream.image_transform = stream.image_transform.transform
        trainer._warm_start()
        up, down = trainer._upstream_iter(), trainer._downstream_iter()
        data, step = [], []
        for i in range(steps + 2):
            t0 = time.perf_counter()
            u, d = next(up), next(down)
            t1 = time.perf_counter()
            trainer._one_step(u, d)
            trainer.step += 1
            t2 = time.perf_counter()
            if i >= 2:  # the first steps warm caches
                data.append(t1 - t0)
                step.append(t2 - t1)
        params = sum(p.numel() for p in trainer.model.parameters())
    return {"data": statistics.median(data), "step": statistics.median(step), "params": params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="m-flyt-demo")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    demo = build_demo_pool(progress=False)
    base = {"checkpoint_every": 10**6, "validation_fraction": 0.0}
    rows = [("naive (full token table, per-image transform)", False, False),
            ("compact vocabulary", True, False),
            ("compact vocabulary + batched transform", True, True)]
    results = []
    for label, compact, batched in rows:
        cfg = demo.train_config(args.preset, {**base, "compact_vocabulary": compact})
        results.append((label, run(cfg, args.steps, batched)))
    naive = results[0][1]
    total0 = naive["data"] + naive["step"]
    print(f"{args.preset}, {args.threads} torch thread(s), median of {args.steps} steps (seconds per step)")
    print(f"{'':<48} {'params':>9} {'data':>7} {'step':>7} {'total':>7} {'speed-up':>8}")
    for label, r in results:
        total = r["data"] + r["step"]
        print(f"{label:<48} {r['params']:>9,} {r['data']:7.3f} {r['step']:7.3f} {total:7.3f} {total0 / total:7.2f}x")


if __name__ == "__main__":
    main()
