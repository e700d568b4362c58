"""Evaluating one subset of the demo pool: train a fresh CLIP per seed, zero-shot accuracy, cached.

:class:`Benchmark` binds a built demo pool, a recipe and a result cache. ``evaluate(subset)``
turns the subset file into an index array over the pool's decoded images, then for each seed
either reads the cached result of (pool, subset sha256, seed, recipe) or trains and stores it.
The images and test set are decoded lazily, once per process, so a fully cached table costs
only the hashing.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from ..demo.pool import DemoPool
from ..parallel import process_map
from ..uids import hex_to_uids, lookup, uid_order
from .cache import ResultCache, result_key
from .data import PoolImages, file_sha256, load_labelled_images, load_pool_images, shards_fingerprint, subset_index
from .recipe import Recipe
from .train import TrainingData, train_and_evaluate


def spread(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1); None for a single value, whose spread is unknown."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else None


@dataclass
class Benchmark:
    """A demo pool + recipe + cache folder (``<pool>/benchmark`` by default)."""

    pool: DemoPool
    recipe: Recipe
    cache_dir: Path | None = None
    progress: bool = True
    jobs: int = 1  # training runs at once, each in its own process (recipe.threads threads each)
    timings: list[dict[str, float]] = field(default_factory=list)  # runs trained in this process

    def __post_init__(self) -> None:
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else self.pool.root / "benchmark"
        self.results = ResultCache(self.cache_dir / "results")

    @cached_property
    def pool_fingerprint(self) -> str:
        """Identifies what a run reads besides the subset: the image shards, the test shards and
        the class names/templates."""
        parts = [shards_fingerprint(self.pool.shards_dir), shards_fingerprint(self.pool.downstream_test_dir),
                 hashlib.sha256(self.pool.classes_path.read_bytes()).hexdigest()]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()

    @cached_property
    def images(self) -> PoolImages:
        return load_pool_images(self.pool.shards_dir, self.cache_dir / "images.npz", progress=self.progress)

    @cached_property
    def pool_uids(self) -> np.ndarray:
        """Every uid of the pool (sorted), images or not."""
        from ..pool import Pool

        uids = Pool(str(self.pool.metadata_dir), progress=False).uids
        return uids[uid_order(uids)]

    @cached_property
    def data(self) -> TrainingData:
        classes = json.loads(self.pool.classes_path.read_text())
        test_images, test_labels = load_labelled_images(self.pool.downstream_test_dir)
        return TrainingData.build(self.images, test_images, test_labels, classes["classnames"],
                                  classes["templates"], self.recipe)

    @cached_property
    def _truth_by_image(self) -> dict[str, np.ndarray] | None:
        """Each image row's true example type and report category (domain and caption) from
        ``truth.parquet`` (reporting only), or None."""
        if not self.pool.truth_path.is_file():
            return None
        from ..demo.report import read_truth, truth_categories

        truth = read_truth(self.pool.truth_path)
        uids = hex_to_uids(np.asarray(truth["uid"]), source=str(self.pool.truth_path))
        order = uid_order(uids)
        # image rows are sorted uids: row i is the position of images.uids[i] among the sorted truth uids
        pos = lookup(uids[order], self.images.uids)
        out = {}
        for key, values in (("type", np.asarray(truth["type"], dtype=object)),
                            ("category", truth_categories(truth))):
            values = values[order]
            out[key] = np.where(pos >= 0, values[np.maximum(pos, 0)], "unknown")
        return out

    @property
    def true_types(self) -> np.ndarray | None:
        """Each image row's true example type from ``truth.parquet`` (reporting only), or None."""
        truth = self._truth_by_image
        return None if truth is None else truth["type"]

    def type_shares(self, index: np.ndarray, key: str = "type") -> dict[str, float] | None:
        """Share of each true type (``key`` "category": each report category of
        :data:`flyt_datacomp.demo.report.CATEGORIES`) among the entries a run trains on
        (diagnostics, not a score)."""
        truth = self._truth_by_image
        if truth is None or len(index) == 0:
            return None
        names, counts = np.unique(truth[key][index], return_counts=True)
        return {str(n): round(float(c) / len(index), 4) for n, c in zip(names, counts)}

    def evaluate(self, subset: str | os.PathLike, seeds: Sequence[int], name: str | None = None) -> dict[str, Any]:
        """One table row: accuracy per seed, mean and spread, subset size; trains only cache misses."""
        return self.evaluate_many([(subset, name)], seeds)[0]

    def evaluate_many(self, subsets: Sequence[tuple[str | os.PathLike, str | None]],
                      seeds: Sequence[int]) -> list[dict[str, Any]]:
        """Rows for several (subset file, row name) pairs; the cache misses of all of them are
        trained together, ``jobs`` at a time."""
        prepared, todo = [], {}
        for subset, name in subsets:
            subset = Path(subset)
            sha = file_sha256(subset)
            idx = subset_index(subset, self.images, self.pool_uids)
            keys = [result_key(self.pool_fingerprint, sha, seed, self.recipe.hash()) for seed in seeds]
            prepared.append((subset, name or subset.stem, sha, idx, keys))
            for seed, key in zip(seeds, keys):
                if self.results.get(key) is None:
                    todo.setdefault(json.dumps(key, sort_keys=True),
                                    (key, idx, seed, f"{name or subset.stem} seed {seed}", subset))
        self._train(list(todo.values()))
        rows = []
        for subset, name, sha, idx, keys in prepared:
            found = [self.results.get(k) for k in keys]
            if any(r is None for r in found):
                raise RuntimeError(f"internal error: a result of {subset} is missing from {self.results.root}")
            accs = [float(r["accuracy"]) for r in found]
            rows.append({
                "name": name, "mean": float(np.mean(accs)), "std": spread(accs), "seeds": accs,
                "seed_ids": [int(s) for s in seeds], "distinct": idx.distinct, "entries": idx.entries,
                "distinct_with_image": idx.distinct_with_image, "entries_with_image": idx.entries_with_image,
                "distinct_not_in_pool": idx.distinct_not_in_pool,
                "subset": str(subset), "subset_sha256": sha, "true_types": self.type_shares(idx.index),
                "true_split": self.type_shares(idx.index, "category"),
                "cached_seeds": sum(json.dumps(k, sort_keys=True) not in todo for k in keys),
            })
        return rows

    def _train(self, todo: list[tuple]) -> None:
        """Train the missing runs (in this process, or in ``jobs`` worker processes) and cache them."""
        if not todo:
            return
        from ..progress import progress_bar

        def store(item, result):
            key, idx, _, _, subset = item
            self.results.put(key, {**result, "subset": str(subset), **idx.stats()})
            self.timings.append({k: result[k] for k in ("seconds", "data_seconds", "model_seconds", "eval_seconds")})

        if self.jobs == 1 or len(todo) == 1:
            for item in todo:
                _, idx, seed, desc, _ = item
                store(item, train_and_evaluate(self.data, idx.index, self.recipe, seed, progress=self.progress,
                                               desc=f"benchmark: {desc}"))
            return
        _ = self.images  # decode (or read) the image cache before the workers read it
        # the bar counts training steps, which the workers report as they go (a run takes a minute)
        bar = progress_bar(total=len(todo) * self.recipe.steps, desc=f"benchmark: {len(todo)} training runs "
                           f"({self.jobs} jobs)", unit="step", disable=not self.progress)
        steps = multiprocessing.get_context("spawn").Queue() if self.progress else None
        watcher = threading.Thread(target=_count_steps, args=(steps, bar), daemon=True) if steps is not None else None
        runs = process_map(_run_in_worker, [(item[1].index, item[2]) for item in todo], self.jobs, ordered=False,
                           what="the benchmark's training runs", initializer=_init_worker,
                           initargs=(self.pool, self.recipe, self.cache_dir, steps))
        with bar:
            if watcher is not None:
                watcher.start()
            done = 0
            try:
                for i, result in runs:
                    store(todo[i], result)
                    done += 1
                    bar.set_postfix_str(f"{done}/{len(todo)} runs; {todo[i][3]}: {100 * result['accuracy']:.1f}%")
            finally:
                if watcher is not None:
                    steps.put(None)
                    watcher.join(timeout=5)

    def data_loading_share(self) -> float | None:
        """Share of training time (data + model) spent assembling batches, over runs trained here."""
        data = sum(t["data_seconds"] for t in self.timings)
        total = data + sum(t["model_seconds"] for t in self.timings)
        return data / total if total > 0 else None

    def recipe_record(self) -> dict[str, Any]:
        return {**self.recipe.as_dict(), "hash": self.recipe.hash(), "pool": str(self.pool.root),
                "pool_fingerprint": self.pool_fingerprint}


_WORKER: Benchmark | None = None
_STEPS = None  # the queue a worker reports its training steps to (None: no progress shown)


def _init_worker(pool: DemoPool, recipe: Recipe, cache_dir: Path, steps=None) -> None:
    global _WORKER, _STEPS
    _WORKER = Benchmark(pool, recipe, cache_dir, progress=False)
    _STEPS = steps


def _run_in_worker(task: tuple[np.ndarray, int]) -> dict[str, Any]:
    assert _WORKER is not None
    index, seed = task
    return train_and_evaluate(_WORKER.data, index, _WORKER.recipe, seed, progress=False,
                              on_steps=_STEPS.put if _STEPS is not None else None)


def _count_steps(steps, bar) -> None:
    """Move the parent's bar by the steps the workers report, until told to stop (None)."""
    while (n := steps.get()) is not None:
        bar.update(n)


def outside_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """A note for each row whose subset holds uids that are not in the demo pool at all."""
    return [f"{r['name']}: {r['distinct_not_in_pool']:,} of its {r['distinct']:,} uids are not in the demo pool "
            f"(another pool's subset?); it trained on {r['entries_with_image']:,} of its {r['entries']:,} entries"
            for r in rows if r.get("distinct_not_in_pool")]


def format_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The results as a Markdown table: accuracy mean +- std over seeds, and what the runs trained on
    (the subset's distinct uids and entries that have an image in the pool's shards)."""
    lines = ["| subset | zero-shot accuracy (%) | per seed | trained on: distinct | entries |",
             "|---|---|---|---:|---:|"]
    for r in rows:
        per_seed = ", ".join(f"{100 * a:.1f}" for a in r["seeds"])
        if not math.isfinite(r["mean"]):
            acc = "n/a"
        elif r["std"] is None:  # one seed: a spread of 0.0 would claim what one run cannot show
            acc = f"{100 * r['mean']:.1f} (one seed)"
        else:
            acc = f"{100 * r['mean']:.1f} ± {100 * r['std']:.1f}"
        lines.append(f"| {r['name']} | {acc} | {per_seed} | {r['distinct_with_image']:,} | {r['entries_with_image']:,} |")
    return "\n".join(lines)
