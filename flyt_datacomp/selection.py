"""The selection pipeline: pool metadata + a score -> a DataComp subset file.

One run is five stages, each with its own small config:

1. **restrict** (:class:`Restrict`) -- the examples that may be selected: those with an image in
   downloaded shards (``shards_dir``), then those inside every mask (DataComp's baseline
   ``baseline``, then ``masks``);
2. **score** (:class:`ScoreStage`) -- one float per example from a registered score source
   (:mod:`flyt_datacomp.scores`), or none: then the survivors of the masks are written once each;
3. **transform** (:class:`Transform`) -- an optional z-score over the kept examples, then ``/ temperature``;
4. **sample** (:class:`Sample`) -- a registered sampler (:mod:`flyt_datacomp.sampling`) turns the
   scores, as logits, into a repetition count per example;
5. **write** (:class:`Output`) -- the sorted ``u8,u8`` subset ``.npy``, its JSON sidecar and a PNG
   histogram of the repetitions, committed together.

:func:`run` runs them; every check that can fail runs before the expensive steps. The ``filter``
and ``baseline`` commands, the benchmark's table and the demo all call it.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import sampling
from .baselines import datacomp as baselines
from .baselines.assets import AssetPaths
from .baselines.masks import BaselineMask, MaskContext, apply_masks, resolve_mask
from .errors import FlytInputError, quote
from .folders import check_apart
from .io import OutputSet, check_free_space, format_bytes, is_url, local_path
from .pool import Pool
from .scales import SCALES, get_scale
from .scores import Scores, load_scores, standardize
from .uids import subset_file_bytes, subset_outputs, write_subset

# More entries than any DataComp scale needs (xlarge draws 1.28e10): a 2.2 TB subset file.
MAX_SUBSET_ENTRIES = 2**37


# ------------------------------------------------------------------------------------- configs


@dataclasses.dataclass(frozen=True)
class Restrict:
    """Which pool examples may be selected."""

    shards_dir: str | None = None  # keep only uids with an image in these downloaded img2dataset shards
    baseline: str | None = None  # one of DataComp's baselines, applied first (DataComp's --name)
    baseline_params: baselines.BaselineParams = baselines.BaselineParams()  # its arch, fraction, threshold
    masks: tuple[str, ...] = ()  # hard filters: only examples inside every mask can be drawn
    image_based_scale: str | None = None  # which DataComp centroids the image_based baselines use
    assets: AssetPaths = AssetPaths()  # where DataComp's baseline assets are
    num_gpus: int = 0  # image_based baselines: GPUs for the nearest-centroid search (0: the CPU)
    centroid_batch_size: int = 1024  # image_based baselines: embeddings per nearest-centroid batch

    @property
    def any_mask(self) -> bool:
        return self.baseline is not None or bool(self.masks)

    def params(self) -> baselines.BaselineParams:
        """The baseline's DataComp options, ``image_based_scale`` included when given."""
        if self.image_based_scale is None or self.baseline_params.image_based_scale is not None:
            return self.baseline_params
        return dataclasses.replace(self.baseline_params, image_based_scale=self.image_based_scale)


@dataclasses.dataclass(frozen=True)
class ScoreStage:
    """Where the scores come from (``source`` None: write the examples the masks keep, once each)."""

    source: str | None = None  # a registered score source spec (a column, a file, a model, store:NAME, ...)
    inputs_dir: str | None = None  # an input store, for store: sources and masks
    accept_changed_inputs: tuple[str, ...] = ()  # stored inputs a trained model may read though changed since
    missing: str = "error"  # pool examples a score file has no score for: an error, or its scores' min or mean


@dataclasses.dataclass(frozen=True)
class Transform:
    """What happens to the scores before the sampler treats them as logits."""

    standardize: bool = False  # z-score over the examples kept by the restriction
    temperature: float = 1.0  # then divide by this


@dataclasses.dataclass(frozen=True)
class Sample:
    """The sampler and its settings; unset (None) values come from the scale or the pool."""

    sampler: str | None = None  # None: threshold when a fraction or threshold value is given, else scs
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # the sampler's keywords (alpha, ...)
    num_samples: int | None = None  # entries to draw (samplers that draw)
    scale: str | None = None  # a DataComp scale: default num_samples and SCS settings
    seed: int = 0
    allow_score_independent: bool = False  # accept a draw whose counts do not depend on the scores
    recipe: str | None = None  # the paper recipe whose fixed settings these are (its commands cannot change them)

    @property
    def name(self) -> str:
        if self.sampler is not None:
            return self.sampler
        given = self.options
        return "threshold" if given.get("fraction") is not None or given.get("value") is not None else "scs"

    def given(self) -> dict[str, Any]:
        """The options actually set (an unset flag, False, counts as not given)."""
        return {k: v for k, v in self.options.items() if v is not None and v is not False}


@dataclasses.dataclass(frozen=True)
class Output:
    """Where the subset goes: a ``.npy`` path or fsspec URL (its sidecar and histogram beside it)."""

    path: str | Path
    overwrite: bool = False


@dataclasses.dataclass(frozen=True)
class Selection:
    """One run of the pipeline."""

    metadata_dir: str
    output: Output
    restrict: Restrict = Restrict()
    score: ScoreStage = ScoreStage()
    transform: Transform = Transform()
    sample: Sample = Sample()
    workers: int = 4  # worker processes for the baselines' caption rules
    io_threads: int = 4  # metadata shards read at once (threads)
    progress: bool = True


@dataclasses.dataclass
class SelectionResult:
    output: str | Path
    sidecar: str | Path
    histogram: str | Path
    counts: np.ndarray
    pool: Pool
    stats: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)


# ------------------------------------------------------------------------------------- checks


def preflight(sel: Selection) -> OutputSet:
    """Reject settings that are invalid or do not apply to the chosen sampler, and outputs that
    could not be written, before any work. Returns the checked output set."""
    if sel.restrict.baseline is not None:
        baselines.check_params(sel.restrict.baseline, sel.restrict.params())
    if sel.score.source is None:
        _check_survivors_only(sel)
    else:
        _check_sampler(sel)
    t = sel.transform.temperature
    if not (t > 0 and np.isfinite(t)):
        raise FlytInputError(f"`temperature` must be a positive number, got {t}", params=["temperature"])
    if sel.sample.scale is not None:
        get_scale(sel.sample.scale)
    if not str(sel.output.path).endswith(".npy"):
        raise FlytInputError(f"`output` must be a .npy file, got {quote(str(sel.output.path))}", params=["output"])
    targets = subset_outputs(sel.output.path)
    if not is_url(sel.output.path):
        inputs = selection_inputs(sel)
        for target in targets:
            check_apart(target, inputs, what=f"`output` {target}", params=["output"])
    outputs = OutputSet(targets, overwrite=sel.output.overwrite)
    outputs.preflight()
    if sel.sample.num_samples is not None:
        check_subset_size(sel.sample.num_samples, sel.output.path)
    return outputs


def selection_inputs(sel: Selection) -> dict[str, str | os.PathLike | None]:
    """Every local file or folder a selection reads (name -> location), which its outputs must lie
    apart from: the pool, the shards, the input store, the files its score source and masks name
    (every piece of a spec that exists on disk), and the baseline's assets."""
    inputs: dict[str, str | os.PathLike | None] = {"metadata_dir": sel.metadata_dir, "shards_dir": sel.restrict.shards_dir,
                                                   "inputs_dir": sel.score.inputs_dir}
    specs = [("score source", sel.score.source)] + [("mask", m) for m in sel.restrict.masks]
    for what, spec in specs:
        for piece in re.split(r"[:,=]", spec or ""):
            if piece and not is_url(piece) and os.path.lexists(os.path.expanduser(piece)):
                name = f"a file of the {what}"
                inputs[name if name not in inputs else f"{name} ({len(inputs)})"] = piece
    assets = sel.restrict.assets
    for field in dataclasses.fields(assets):
        value = getattr(assets, field.name)
        for path in (value if isinstance(value, tuple) else (value,)):
            if path and field.name != "assets_dir":
                inputs[f"the baseline asset {path}"] = path
    return inputs


def _check_survivors_only(sel: Selection) -> None:
    """Without a score the survivors of the masks are written: no sampler setting applies."""
    r, s = sel.restrict, sel.sample
    if not r.any_mask:
        raise FlytInputError("give a `score` source, or a baseline or masks to write the examples they keep",
                             params=["score"])
    given = [p.name for p, _ in sampling.all_params().values() if p.name in s.given()]
    if s.sampler is not None or s.num_samples is not None or sel.transform.standardize or given:
        option = given[0] if given else "sampler" if s.sampler else "num_samples" if s.num_samples else "standardize"
        what = f"baseline {r.baseline}" if r.baseline else "masks without a score"
        raise FlytInputError(f"setting `{option}` does not apply to {what}: it writes every example that survives, "
                             "once (give a `score` to sample among the survivors)", params=[option, "score"])


def _check_sampler(sel: Selection) -> None:
    r, s = sel.restrict, sel.sample
    if r.baseline is not None:
        raise FlytInputError(f"baseline {r.baseline} writes DataComp's baseline and takes no `score`; to sample among "
                             f"its examples use it as a mask with a `score`", params=["score"])
    name = s.name
    if name not in sampling.SAMPLERS:
        raise FlytInputError(f"`sampler` must be one of {', '.join(sampling.SAMPLERS)}, got {name!r}", params=["sampler"])
    spec = sampling.SAMPLERS[name]
    mine = {p.name for p in spec.params}
    known = {p.name for p, _ in sampling.all_params().values()}
    unknown = set(s.options) - known
    if unknown:
        raise FlytInputError(f"unknown sampler option(s) {', '.join(sorted(unknown))}")
    for param, users in sampling.all_params().values():
        if param.name in s.given() and param.name not in mine:
            raise FlytInputError(f"setting `{param.name}` does not apply to `sampler` {name} (it is {'/'.join(users)}'s)",
                                 params=[param.name, "sampler"])
    if s.num_samples is not None and not spec.draws:
        raise FlytInputError(f"setting `num_samples` does not apply to `sampler` {name}", params=["num_samples", "sampler"])
    spec.validate(s.given())
    fraction = s.options.get("fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise FlytInputError(f"`fraction` must be in (0, 1], got {fraction}", params=["fraction"])


def check_subset_size(entries: int, output: str | Path) -> None:
    """Refuse a subset that no DataComp scale needs or that the output's disk cannot hold."""
    if entries > MAX_SUBSET_ENTRIES:
        raise FlytInputError(
            f"`num_samples` {entries:,} would write a {format_bytes(subset_file_bytes(entries))} subset file; "
            f"the most this tool writes is {MAX_SUBSET_ENTRIES:,} entries (DataComp's largest scale, "
            "xlarge, draws 12.8 billion)", params=["num_samples"]
        )
    if not is_url(output):
        check_free_space(local_path(output).parent, subset_file_bytes(entries), f"the subset file {output}")


# ------------------------------------------------------------------------------------- stages


@dataclasses.dataclass
class Restriction:
    """The examples a run may select: the pool after ``shards_dir`` and the masks."""

    pool_size: int
    downloaded: int | None  # examples with an image (shards_dir), else None
    survivors: np.ndarray | None  # bool per example after every mask (None: no masks)
    report: list[dict[str, Any]]  # one line per mask, for the sidecar
    keep: np.ndarray | None  # pool positions that may be selected (None: all)

    @property
    def size(self) -> int:
        return self.pool_size if self.keep is None else int(self.keep.size)

    def inputs(self, sel: Selection, pool: Pool) -> dict[str, Any]:
        """The sidecar's record of the pool and what restricted it."""
        return {
            "metadata_dir": sel.metadata_dir,
            "pool_size": pool.size,
            "metadata_shards": len(pool.shards),
            "shards_dir": sel.restrict.shards_dir,
            "pool_size_downloaded": self.downloaded,
            "pool_size_surviving": None if self.survivors is None else int(self.survivors.sum()),
        }

    def statistics_over(self) -> str:
        if self.report:
            return "surviving examples"
        return "pool" if self.downloaded is None else "downloaded examples"

    def describe(self) -> str:
        return "; ".join(f"{r['mask']}: {r['surviving']:,} left" for r in self.report)

    def notes(self) -> list[str]:
        out = []
        for r in self.report:
            out += baselines.unmatched_assets(r)
            if r.get("note"):
                out.append(f"mask {r['mask']}: {r['note']}")
        return out


def restrict(sel: Selection, pool: Pool) -> Restriction:
    """Stage 1: downloaded examples (``shards_dir``), then every mask in order."""
    r = sel.restrict
    keep = downloaded_positions(pool, r.shards_dir, sel.progress) if r.shards_dir else None
    downloaded = None if keep is None else int(keep.size)
    masks = [resolve_mask(spec, pool) for spec in r.masks]
    if r.baseline is not None:
        masks.insert(0, BaselineMask(r.baseline, r.params()))
    if not masks:
        return Restriction(pool.size, downloaded, None, [], keep)
    base = None
    if keep is not None:
        base = np.zeros(pool.size, dtype=bool)
        base[keep] = True
    settings = baselines.RunSettings(r.assets, sel.workers, r.num_gpus, r.centroid_batch_size, sel.progress)
    ctx = MaskContext(pool, base, settings, baselines.BaselineParams(image_based_scale=r.image_based_scale),
                      inputs_dir=sel.score.inputs_dir)
    survivors, report = apply_masks(ctx, masks)
    return Restriction(pool.size, downloaded, survivors, report, positions(survivors))


def downloaded_positions(pool: Pool, shards_dir: str, progress: bool) -> np.ndarray:
    """Pool positions whose uid has an image in the downloaded shards (img2dataset's index), found
    shard by shard (:func:`flyt_datacomp.shards.downloaded_mask`)."""
    from .shards import downloaded_mask

    keep = positions(downloaded_mask(shards_dir, pool, progress=progress))
    if keep.size == 0:
        raise FlytInputError(f"none of the pool's {pool.size:,} uids has an image in {shards_dir}: "
                             "is it the image shards folder of this pool?")
    return keep


def positions(mask: np.ndarray) -> np.ndarray:
    """The positions where ``mask`` is true, as int32 when the pool allows (half the memory of int64)."""
    where = np.flatnonzero(mask)
    return where.astype(np.int32) if len(mask) < 2**31 else where


def count_dtype(total: int) -> np.dtype:
    """The integer type that holds any repetition count of a subset of ``total`` entries."""
    return np.dtype(np.int32 if total < 2**31 else np.int64)


def transform(values: np.ndarray, cfg: Transform, *, in_place: bool = False) -> np.ndarray:
    """Stage 3: the logits the sampler sees (``in_place``: ``values`` may be overwritten, so no
    pool-sized copy is made beyond the standardisation's)."""
    logits = standardize(values) if cfg.standardize else values
    if cfg.temperature == 1.0:
        return logits  # x / 1 is x
    if not in_place and logits is values:
        return logits / cfg.temperature
    logits /= cfg.temperature  # the same division, in place
    return logits


def sampler_params(sample: Sample, pool_size: int) -> dict[str, Any]:
    """The sampler's keyword arguments, with scale / pool defaults filled in (seed aside)."""
    spec = sampling.SAMPLERS[sample.name]
    scale = get_scale(sample.scale) if sample.scale else None
    num_samples = None
    if spec.draws:
        num_samples = int(sample.num_samples if sample.num_samples is not None
                          else (scale.pool_size if scale else pool_size))
    params = spec.resolve(dict(sample.options), sampling.DefaultsContext(scale, pool_size, num_samples))
    if params.get("device") == "auto":
        params["device"] = _auto_device()
    return params


def _auto_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_notes(sample: Sample, params: dict[str, Any], pool_size: int) -> list[str]:
    """Without a scale, say which SCS values were defaulted and whether medium's alpha fits this pool."""
    if sample.scale is not None or sample.name != "scs":
        return []
    given = sample.given()
    parts = []
    if given.get("alpha") is None:
        parts.append(f"alpha {params['alpha']} (the paper's medium value)")
    if given.get("group_size") is None:
        parts.append(f"G {params['group_size']:,} (N / 1280, the paper's number of rounds)")
    if not parts:
        return []
    note = f"no `scale`: SCS uses {' and '.join(parts)}"
    medium = SCALES["medium"].pool_size
    if given.get("alpha") is None and not medium / 4 <= pool_size <= medium * 4:
        note += (f"; alpha was tuned for the medium pool ({medium:,} examples) and this pool has {pool_size:,}: "
                 "consider `scale` or `alpha` (the paper's small pool uses 0.5)")
    return [note]


def _as_stored(params: dict[str, Any], scores: Scores, cfg: Transform) -> dict[str, Any]:
    """A threshold value on a float32 column compares with the float32 nearest to it, as DataComp's
    pandas comparison does (0.22 rounds down in float32: a score stored as 0.22 passes)."""
    value = params.get("value")
    plain = not cfg.standardize and cfg.temperature == 1.0
    if value is None or not plain or scores.stored_dtype is None or scores.stored_dtype.kind != "f":
        return params
    return {**params, "value": float(scores.stored_dtype.type(value))}


def check_score_dependent(sel: Selection, params: dict[str, Any], size: int, degenerate: str | None) -> None:
    """Refuse a draw whose counts would not depend on the scores (``degenerate`` says why; None: they
    do), unless `allow_score_independent` is set."""
    if not degenerate or sel.sample.allow_score_independent:
        return
    if sel.sample.recipe is not None:
        raise FlytInputError(_recipe_too_large(sel, params, size, degenerate))
    raise FlytInputError(f"{degenerate}. Set `allow_score_independent` to write this subset anyway.",
                         params=["allow_score_independent", *sampling.param_names(), "standardize", "temperature"])


def _recipe_too_large(sel: Selection, params: dict[str, Any], size: int, why: str) -> str:
    """A paper recipe's fixed settings would ignore the scores on this pool: say so, and how to sample
    it with the filter command, whose settings can be fitted to the pool (the recipe's cannot)."""
    scale = sel.sample.scale
    shown = ", ".join(f"{k} {v:,}" if isinstance(v, int) else f"{k} {v}" for k, v in params.items()
                      if k in ("alpha", "group_size", "num_samples") and v is not None)
    reason = why.split(";")[0].replace("`", "")
    pool = SCALES[scale].pool_size if scale in SCALES else None
    made = f", made for its pool of {pool:,} examples" if pool else ""
    return (f"{sel.sample.recipe} draws with the paper's {scale} settings ({shown}){made}; on these {size:,} examples "
            f"the draw would not depend on the scores: {reason}. To sample this pool, run flyt-datacomp filter with "
            f"the same --score {quote(sel.score.source, 200)} and --inputs-dir, and SCS settings for its size "
            f"(--scs-group-size about {max(1, size // 1280):,}, --num-samples); --allow-score-independent there writes "
            "such a draw anyway")


def _selects_nothing(name: str, params: dict[str, Any], logits: np.ndarray, cfg: Transform) -> str:
    """Why a draw selected no example, and the way out (an empty subset is never written)."""
    scored = "scores" if not cfg.standardize and cfg.temperature == 1.0 else "scores after the transform"
    span = f"the {scored} of the {logits.size:,} examples it may select range from {logits.min():.6g} to {logits.max():.6g}"
    if params.get("value") is not None:
        return (f"`value` {params['value']} keeps no example: {span}; choose a value at most {logits.max():.6g}, or "
                "`fraction`; no subset was written")
    return f"sampler {name} selected no example ({span}); no subset was written"


# ------------------------------------------------------------------------------------- the run


def run(sel: Selection) -> SelectionResult:
    """Restrict -> score -> transform -> sample -> write. Returns what it wrote.

    The three output files are committed together, so the output path holds either the previous
    complete set or the new one.
    """
    preflight(sel)
    start = time.perf_counter()
    pool = Pool(sel.metadata_dir, progress=sel.progress, workers=sel.io_threads)
    kept = restrict(sel, pool)
    if sel.score.source is None:
        return _write_survivors(sel, pool, kept, start)
    if kept.report and kept.size == 0:
        raise FlytInputError(f"no example of the pool survives the masks ({kept.describe()}): nothing to sample")
    name = sel.sample.name
    spec = sampling.SAMPLERS[name]
    params = sampler_params(sel.sample, kept.size)
    if "num_samples" in params:
        check_subset_size(params["num_samples"], sel.output.path)
    scores = load_scores(pool, sel.score.source, within=kept.keep, inputs_dir=sel.score.inputs_dir,
                         accept_changed_inputs=sel.score.accept_changed_inputs, missing=sel.score.missing)
    values = scores.values if kept.keep is None else scores.values[kept.keep]
    scores.values = None  # the pool's scores are held once: as the restricted values from here on
    # a copy already (restricted, or standardised below) may be divided in place
    logits = transform(values, sel.transform, in_place=kept.keep is not None or sel.transform.standardize)
    del values
    degenerate = sampling.score_independence(name, logits, params)
    check_score_dependent(sel, params, logits.size, degenerate)
    drawn = spec(logits, _as_stored(params, scores, sel.transform), seed=sel.sample.seed, progress=sel.progress)
    if not drawn.any():
        raise FlytInputError(_selects_nothing(name, params, logits, sel.transform), params=["value", "fraction"])
    del logits
    concentrated = sampling.concentration(drawn)
    if kept.keep is None:
        counts = drawn
    else:
        counts = np.zeros(pool.size, dtype=count_dtype(int(drawn.sum())))
        counts[kept.keep] = drawn
        del drawn
    notes = default_notes(sel.sample, params, kept.size) + kept.notes()
    notes += [n for n in (degenerate, concentrated) if n]
    if scores.filled:
        notes.append(f"the score file {scores.source} has no score for {scores.filled:,} pool examples; they got "
                     f"the {sel.score.missing} of its scores (`missing` {sel.score.missing})")
    if scores.extra_uids:
        notes.append(f"the score file {scores.source} has {scores.extra_uids:,} uids that are not in the pool; "
                     "they were ignored")
    info = {
        "inputs": {
            **kept.inputs(sel, pool),
            "score_source": scores.source,
            "score_kind": scores.kind,
            "inputs_dir": sel.score.inputs_dir,
            "accept_changed_inputs": list(sel.score.accept_changed_inputs),
            "score_file_extra_uids": scores.extra_uids,
            "missing": {"policy": sel.score.missing, "filled": scores.filled},
        },
        "masks": kept.report,
        "score_transform": {"standardize": sel.transform.standardize, "temperature": sel.transform.temperature,
                            "statistics_over": kept.statistics_over()},
        "sampler": name,
        "sampler_params": {k: v for k, v in params.items() if k != "device"},
        "sampler_defaults": sorted(k for k in params if sel.sample.options.get(k) is None
                                   and k not in ("num_samples", "device") and params[k] is not None),
        "device": params.get("device", "cpu"),  # where the draw ran (the CPU unless asked otherwise)
        "scale": sel.sample.scale,
        "seed": sel.sample.seed,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return _write(sel, pool, counts, info, notes, f"{name} on {scores.source}")


def _write_survivors(sel: Selection, pool: Pool, kept: Restriction, start: float) -> SelectionResult:
    """No score: the examples inside every mask, once each (a baseline alone: DataComp's baseline file)."""
    r = sel.restrict
    counts = kept.survivors.astype(np.int32)
    if not counts.any():
        raise FlytInputError(f"no example of the pool survives ({kept.describe()}): an empty subset would be "
                             "written; nothing was written")
    notes = kept.notes()
    info = {
        "inputs": kept.inputs(sel, pool),
        "baseline": None if r.baseline is None else {"name": r.baseline, "params": r.params().given()},
        "masks": kept.report,
        "sampler": None,
        "selection": "every example that survives the masks, once",
        "sampler_params": {},
        "seed": None,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    title = f"baseline {r.baseline}" if r.baseline else f"{len(r.masks)} mask(s)"
    return _write(sel, pool, counts, info, notes, title)


def _write(sel: Selection, pool: Pool, counts: np.ndarray, info: dict[str, Any], notes: list[str],
           title: str) -> SelectionResult:
    """Stage 5: the subset, its sidecar and its histogram, committed together."""
    stats = write_subset(sel.output.path, pool.uid_chunks(desc="writing the subset"), counts, info=info,
                         overwrite=sel.output.overwrite, histogram_title=title)
    output, sidecar, histogram = subset_outputs(sel.output.path)
    return SelectionResult(output, sidecar, histogram, counts, pool, stats, notes)
