"""The standard table: the benchmark's reference rows, each subset made by the package itself.

Every row's subset file is produced in a work folder by the same library calls the commands
make: :meth:`DemoPool.train` (``flyt-datacomp train``) for the scoring models,
:meth:`DemoPool.input_store` (``flyt-datacomp inputs compute``) for the demo's input store, the
selection pipeline :func:`flyt_datacomp.selection.run` (``flyt-datacomp filter``) for thresholds and
SCS, with the registered score sources for the
aggregations (``standardized_sum:``, ``in_weighted:``), ``write_subset`` for the rows that need
no score (the whole pool and the ground-truth oracles). Each subset is then evaluated by :class:`Benchmark` like any
user-supplied subset. The SCS rows share alpha, G and N so the table separates what the sampler
adds from what learning adds.

The rows depend on the pool's version: a v4 pool (digits among other domains) has two oracles,
the task oracle (correctly captioned digits only) and the alignment oracle (every correctly
captioned example, any domain); a v3 pool (digits only), where the two coincide, has its one
``oracle``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.parquet as pq

from .. import selection
from ..demo.domains import TARGET_DOMAIN
from ..demo.pool import DEMO_SCS_ALPHA, STORE_PRESETS, demo_scs_group_size
from ..errors import FlytInputError
from ..pool import Pool
from ..uids import hex_to_uids, lookup, uid_order, write_subset

if TYPE_CHECKING:  # evaluate imports torch; the CLI imports this module for its row names
    from .evaluate import Benchmark

# the M-FLYT demo preset's inputs that carry signal (its third input, noise_score, is pure noise)
INFORMATIVE_INPUTS = ("clip_b32_similarity_score", "clip_l14_similarity_score")
# the ImageNet-weighted sum's ratio of largest to smallest weight (paper C.5 tries 2, 4, 8, 16)
RELEVANCE_RATIO = 4
# an input's relevance is the mean accuracy of its own top-30% row over at most this many of the table's
# seeds (a property of the input, not of the mix; seven inputs at every seed of a 5-seed table would
# cost as much as the rest of it)
RELEVANCE_SEEDS = 3
RANDOM_COLUMN = "noise_score"  # i.i.d. normal, independent of everything: its top 30% is a random 30%

# a few FLYT steps on small batches, for smoke runs (--quick)
QUICK_FLYT = {"steps": 2, "warmup_steps": 1, "batch_size": 16, "downstream_batch_size": 10,
              "reference_pretrain_steps": 0, "adam_warmup_steps": 1, "shuffle_buffer": 40, "checkpoint_every": 2}


@dataclasses.dataclass(frozen=True)
class TableSettings:
    """How the table's subsets are made (not how they are evaluated: that is the recipe)."""

    fraction: float = 0.3  # the top-fraction rows
    # shared by every SCS row and by `filter --demo` (demo.pool): measured on this pool, alpha 1.0
    # beats 0.5 for every SCS row (docs/benchmark.md)
    scs_alpha: float = DEMO_SCS_ALPHA
    scs_batch: int | None = None  # G; default pool size / 100
    # N; default the recipe's samples seen (for the recipe of the pool's version, demo_scs_num_samples), so a
    # training run sees each draw once, as in DataComp where N = pool size = samples seen
    num_samples: int | None = None
    filter_seed: int = 0
    quick_flyt: bool = False  # train the scoring models for a couple of steps only (smoke runs)

    def resolved(self, pool_size: int, samples_seen: int) -> dict[str, Any]:
        return {"fraction": self.fraction, "scs_alpha": self.scs_alpha,
                "scs_batch": self.scs_batch or demo_scs_group_size(pool_size),
                "num_samples": self.num_samples or samples_seen, "filter_seed": self.filter_seed,
                "quick_flyt": self.quick_flyt}


class Workspace:
    """Makes the rows' subsets in ``work_dir`` (scoring-model runs, score files, subsets)."""

    def __init__(self, bench: Benchmark, work_dir: Path, settings: TableSettings, *, progress: bool = True,
                 seeds: Sequence[int] = (0,)):
        self.bench = bench
        self.seeds = list(seeds)
        self.demo = bench.pool
        self.work = Path(work_dir)
        self.progress = progress
        self.settings = settings.resolved(self.demo.pool_size, bench.recipe.samples_seen)
        self.metadata_dir = str(self.demo.metadata_dir)
        self.flyt_runs: dict[str, dict[str, Any]] = {}

    # ---------------------------------------------------------------- helpers

    def subset_path(self, name: str) -> Path:
        return self.work / "subsets" / f"{name}.npy"

    def pool(self) -> Pool:
        return Pool(self.metadata_dir, progress=False)

    def filter(self, name: str, score: str, *, sample: selection.Sample, transform: selection.Transform | None = None,
               masks: tuple[str, ...] = ()) -> Path:
        """``flyt-datacomp filter`` into the work folder (with the demo's input store when the
        score reads it)."""
        out = self.subset_path(name)
        inputs_dir = str(self.input_store()) if "store:" in score else None
        selection.run(selection.Selection(
            metadata_dir=self.metadata_dir, output=selection.Output(out, overwrite=True),
            restrict=selection.Restrict(masks=masks), score=selection.ScoreStage(score, inputs_dir=inputs_dir),
            transform=transform or selection.Transform(), sample=sample, progress=self.progress))
        return out

    def input_store(self) -> Path:
        """The demo's input store for the many-input rows, made (once) in the work folder with the
        table's own E-FLYT model."""
        if not hasattr(self, "_store"):
            self._store = self.demo.input_store(store_dir=self.work / "inputs",
                                                eflyt_model=self.scoring_model("e-flyt-demo"),
                                                classifier_steps=50 if self.settings["quick_flyt"] else 4000,
                                                progress=self.progress)
        return self._store

    def all_inputs(self) -> str:
        """The many-input M-FLYT preset's inputs as score sources (store inputs as store:NAME)."""
        return ",".join(self.source(c) for c in STORE_INPUTS)

    def accuracy(self, row_id: str, at_most: int | None = None) -> float:
        """A standard row's mean accuracy over the table's seeds, or its first ``at_most`` (evaluated now;
        the table's later evaluation is a cache hit)."""
        label, make = next((label, make) for rid, label, make in STANDARD_ROWS if rid == row_id)
        return float(self.bench.evaluate_many([(make(self), label)], self.seeds[:at_most])[0]["mean"])

    def source(self, name: str) -> str:
        """A pool column or an input of the demo's store, as a score source."""
        return name if name in self.pool().column_names else f"store:{name}"

    def relevance_weighted(self, inputs: Sequence[str] = INFORMATIVE_INPUTS) -> str:
        """The paper's ImageNet-weighted standardised sum (C.5) of ``inputs``, each input's relevance
        being the accuracy of its own top-30% row (as the paper's IN_k is the ImageNet accuracy of
        filtering by input k alone)."""
        rows = {name: row for row, name in SINGLE_INPUT_ROWS}
        relevance = ",".join(f"{self.source(c)}={self.accuracy(rows[c], RELEVANCE_SEEDS):.6f}" for c in inputs)
        return f"in_weighted:r={RELEVANCE_RATIO}:{relevance}"

    def top(self, name: str, score: str) -> Path:
        return self.filter(name, score, sample=selection.Sample(
            "threshold", {"fraction": self.settings["fraction"], "exact_count": True}))

    def scs(self, name: str, score: str, standardize: bool = False, masks: tuple[str, ...] = ()) -> Path:
        s = self.settings
        sample = selection.Sample("scs", {"alpha": s["scs_alpha"], "group_size": s["scs_batch"]},
                               num_samples=s["num_samples"], seed=s["filter_seed"])
        return self.filter(name, score, sample=sample, transform=selection.Transform(standardize=standardize), masks=masks)

    def scoring_model(self, preset: str) -> str:
        """Train (once) a FLYT scoring model with ``preset`` on the demo pool; its checkpoint path
        (a changed configuration trains anew, an unchanged one is reused)."""
        overrides = dict(QUICK_FLYT) if self.settings["quick_flyt"] else {}
        if preset in STORE_PRESETS:
            overrides["inputs_dir"] = str(self.input_store())
        trained = self.demo.train(preset, overrides=overrides, runs_dir=self.work / "runs",
                                  threads=self.bench.recipe.threads, progress=self.progress)
        self.flyt_runs[preset] = flyt_summary(trained.run_dir)
        return trained.path

    def whole_pool(self, name: str) -> Path:
        pool = self.pool()
        out = self.subset_path(name)
        write_subset(out, pool.uids, np.ones(pool.size, dtype=np.int64), info={"rule": "the whole pool, once each"})
        return out

    def oracle(self, name: str, which: str = "v3") -> Path:
        """A ground-truth subset, once each: ``v3`` every example whose caption names the digit it
        shows (the v3 pool's oracle); ``task`` every correctly captioned example of the target domain
        (digits, near-duplicates included); ``alignment`` every correctly captioned example, any domain."""
        if which == "v3":
            truth = pq.read_table(self.demo.truth_path, columns=["uid", "digit", "caption_digit"]).to_pydict()
            good = np.asarray(truth["digit"]) == np.asarray(truth["caption_digit"])
            rule = "ground truth: caption digit == shown digit (truth.parquet)"
        else:
            from ..demo.report import read_truth, truth_categories

            truth = read_truth(self.demo.truth_path)
            correct = np.isin(np.asarray(truth["type"], dtype=str), ["correct", "near_duplicate"])
            if which == "task":
                category = truth_categories(truth).astype(str)
                good = correct & np.char.startswith(category, f"{TARGET_DOMAIN}/")
                rule = f"ground truth: a correct caption (correct or near-duplicate) of a {TARGET_DOMAIN} image"
            else:
                good = correct
                rule = "ground truth: a correct caption (correct or near-duplicate), any domain"
        pool = self.pool()
        truth_uids = hex_to_uids(np.asarray(truth["uid"]), source=str(self.demo.truth_path))
        order = uid_order(truth_uids)
        pos = lookup(truth_uids[order], pool.uids)
        if (pos < 0).any():
            raise FlytInputError(f"{self.demo.truth_path} lacks {int((pos < 0).sum())} of the pool's uids")
        out = self.subset_path(name)
        write_subset(out, pool.uids, good[order][pos].astype(np.int64), info={"rule": rule + " (truth.parquet)"})
        return out


def flyt_summary(run_dir: Path) -> dict[str, Any]:
    """What a scoring-model run learned: first/last weight entropy and downstream loss, and the mixing
    weights of the model it wrote (the checkpoint validation chose, where it chose one)."""
    from ..flyt.trainer import MIXING_WEIGHTS_FILE, SCORING_MODEL_FILE

    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    summary: dict[str, Any] = {"run_dir": str(run_dir), "steps": len(lines)}
    if lines:
        for key in ("weight_entropy", "down_loss"):
            if key in lines[0]:
                summary[key] = {"first": lines[0][key], "min": min(m[key] for m in lines), "last": lines[-1][key]}
        if "mixing_weights" in lines[-1]:
            summary["mixing_weights"] = lines[-1]["mixing_weights"]
        if (run_dir / MIXING_WEIGHTS_FILE).is_file():
            summary["mixing_weights"] = json.loads((run_dir / MIXING_WEIGHTS_FILE).read_text())
        sidecar = run_dir / f"{SCORING_MODEL_FILE}.json"
        selected = json.loads(sidecar.read_text()).get("validation") if sidecar.is_file() else None
        if selected:
            summary["selected_step"] = selected["selected_step"]
        if "downstream_temperature" in lines[-1]:
            summary["downstream_temperature"] = lines[-1]["downstream_temperature"]
    return summary


RowMaker = Callable[[Workspace], Path]
STDSUM = "standardized_sum:" + ",".join(INFORMATIVE_INPUTS)  # the registered aggregation score source
# the inputs of the demo's input store that the many-input M-FLYT presets mix
STORE_INPUTS = ("clip_b32_similarity_score", "clip_l14_similarity_score", "neg_clip_loss_b32", "neg_clip_loss_l14",
                "normsim_digits", "classifier_digits", "eflyt")
# each input alone, top 30%: a row each, whose accuracies are the ImageNet-weighted sums' relevances
SINGLE_INPUT_ROWS = (("b32_top30", "clip_b32_similarity_score"), ("l14_top30", "clip_l14_similarity_score"),
                     ("nclb32_top30", "neg_clip_loss_b32"), ("ncll14_top30", "neg_clip_loss_l14"),
                     ("normsim_top30", "normsim_digits"), ("classifier_top30", "classifier_digits"),
                     ("eflyt_top30", "eflyt"))
_SINGLE_LABELS = {"b32_top30": "clip_b32 top 30%", "l14_top30": "clip_l14 top 30%"}


def _single(row: str, name: str) -> tuple[str, str, RowMaker]:
    return row, _SINGLE_LABELS.get(row, f"{name} top 30%"), lambda w: w.top(row, w.source(name))


STANDARD_ROWS: list[tuple[str, str, RowMaker]] = [
    ("no_filter", "no filter", lambda w: w.whole_pool("no_filter")),
    ("random_30", "random 30%", lambda w: w.top("random_30", RANDOM_COLUMN)),
    *(_single(row, name) for row, name in SINGLE_INPUT_ROWS[:2]),
    ("mflyt_top30", "M-FLYT top 30%", lambda w: w.top("mflyt_top30", w.scoring_model("m-flyt-demo"))),
    ("b32_scs", "clip_b32 (standardised) + SCS",
     lambda w: w.scs("b32_scs", "clip_b32_similarity_score", standardize=True)),
    ("stdsum_top30", "standardised sum b32 + l14 top 30%",
     lambda w: w.top("stdsum_top30", STDSUM)),
    ("stdsum_scs", "standardised sum b32 + l14 + SCS", lambda w: w.scs("stdsum_scs", STDSUM)),
    ("inweighted_scs", f"ImageNet-weighted sum b32 + l14 (r = {RELEVANCE_RATIO}) + SCS",
     lambda w: w.scs("inweighted_scs", w.relevance_weighted())),
    ("mflyt_scs", "M-FLYT + SCS", lambda w: w.scs("mflyt_scs", w.scoring_model("m-flyt-demo"))),
    ("eflyt_scs", "E-FLYT + SCS", lambda w: w.scs("eflyt_scs", w.scoring_model("e-flyt-demo"))),
    ("caption_mflyt_scs", "basic-filter caption rule + M-FLYT + SCS",
     lambda w: w.scs("caption_mflyt_scs", w.scoring_model("m-flyt-demo"), masks=("caption:basic",))),
    *(_single(row, name) for row, name in SINGLE_INPUT_ROWS[2:]),
    ("stdsum_all_scs", "standardised sum of the 7 store inputs + SCS",
     lambda w: w.scs("stdsum_all_scs", f"standardized_sum:{w.all_inputs()}")),
    ("inweighted_all_scs", f"ImageNet-weighted sum of the 7 store inputs (r = {RELEVANCE_RATIO}) + SCS",
     lambda w: w.scs("inweighted_all_scs", w.relevance_weighted(STORE_INPUTS))),
    ("mflyt_all_scs", "M-FLYT (7 store inputs) + SCS",
     lambda w: w.scs("mflyt_all_scs", w.scoring_model("m-flyt-demo-all"))),
    ("oracle", "oracle (correct captions only)", lambda w: w.oracle("oracle")),
    ("task_oracle", "task oracle (correct digit captions only)", lambda w: w.oracle("task_oracle", "task")),
    ("alignment_oracle", "alignment oracle (every correct caption, any domain)",
     lambda w: w.oracle("alignment_oracle", "alignment")),
]
ROW_IDS = [r[0] for r in STANDARD_ROWS]
# the rows of each pool version's table (a v3 pool holds digits only: its two oracles would be one)
_V4_ONLY = ("task_oracle", "alignment_oracle", *(r for r, _ in SINGLE_INPUT_ROWS[2:]), "inweighted_all_scs")
VERSION_ROWS = {
    "v3": [r for r in ROW_IDS if r not in _V4_ONLY],
    "v4": [r for r in ROW_IDS if r != "oracle"],
}


def rows_for(version: str) -> list[str]:
    """The standard table's row ids on a demo pool of ``version``."""
    return list(VERSION_ROWS[version])


def standard_table(bench: Benchmark, seeds: Sequence[int], work_dir: Path, settings: TableSettings, *,
                   rows: Sequence[str] | None = None, progress: bool = True) -> dict[str, Any]:
    """Make every row's subset, then evaluate them all over ``seeds`` (the cache misses trained
    together, ``bench.jobs`` at a time); returns the JSON-ready result."""
    available = rows_for(bench.pool.version)
    wanted = list(rows) if rows else available
    unknown = [r for r in wanted if r not in available]
    if unknown:
        raise FlytInputError(f"unknown table row(s) {', '.join(unknown)}; the rows of a {bench.pool.version} demo pool: "
                             f"{', '.join(available)}")
    ws = Workspace(bench, work_dir, settings, progress=progress, seeds=seeds)
    made = [(row_id, label, make(ws)) for row_id, label, make in STANDARD_ROWS if row_id in wanted]
    evaluated = bench.evaluate_many([(subset, label) for _, label, subset in made], seeds)
    out_rows = [{"id": row_id, **row} for (row_id, _, _), row in zip(made, evaluated)]
    return {"rows": out_rows, "recipe": bench.recipe_record(), "settings": ws.settings,
            "flyt_runs": ws.flyt_runs, "seeds": [int(s) for s in seeds]}
