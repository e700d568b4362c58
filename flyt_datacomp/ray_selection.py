"""The selection pipeline on a Ray cluster, for pools no machine holds (DataComp's large and xlarge).

The pool is cut into partitions of whole metadata shards (consecutive, balanced by rows). One Ray
actor per partition (:class:`Partition`) reads its shards' scores and keeps them; no process ever
holds an array the size of the pool, and the driver (:func:`run`) only exchanges small messages:

* **threshold** (a top fraction, DataComp's rule or ``exact_count``, or a value) -- the cut is the
  score at a given rank of the whole pool, found exactly by a binary search over the float64
  values' order, each step one count per partition; ties at the cut go to the lowest pool
  positions, as on one machine. The subset is the same, byte for byte, as the single-machine path's.
* **SCS** -- each round every partition draws Gumbel keys ``s - alpha c - log E`` for its examples
  and reports a few of its largest keys (every ``G / 1024``-th of its top ``G``, and its ``G``-th);
  the driver picks a cut that at least ``G`` keys of the pool reach, the partitions send the keys
  above it, and the driver keeps the ``G`` largest: exactly the Gumbel-top-``G`` of the whole pool
  (a partition's top ``G`` holds every one of its keys among the pool's top ``G``), which is one
  SCS round. Counts are updated where the examples live. The random path differs from the
  single-machine sampler's (each partition draws from its own stream, seeded by the seed and its
  number), the distribution is the same; the same seed and partitions give the same bytes.
* **DataComp's baselines**, all seven, each the first of the masks, as one machine applies them
  (below), their survivors written once each. ``clip_score`` with a fraction judges each example by
  its own row given DataComp's threshold, the value at that rank of the whole pool's CLIP score
  column (NaN last), which the driver finds first. ``image_based`` is row-wise given its target
  centroids (the nearest centroids of the ImageNet-1k images, nothing of the pool): the driver finds them once
  (:func:`~flyt_datacomp.baselines.datacomp.image_targets`, on its CPU) and each partition runs the
  single-machine code on its own shards with them (``image_based_scale``, ``centroid_batch_size``):
  the caption rule, then each shard's embeddings' nearest centroids, on the worker's CPU. A worker
  holds the centroids (DataComp's: 100,000 x 768, float32 in memory, 307 MB), one similarity batch
  (``centroid_batch_size`` x the centroids, 410 MB at 1024 x 100,000) and one shard's ``l14_img`` at a
  time (1,536 bytes a row, float16). ``image_based_intersect_clip_score`` with a fraction takes the
  whole pool's threshold too (as ``clip_score``), then every partition runs the baseline with it.
  Each writes the single-machine bytes and sidecar.
* **scores** -- a column of the pool's parquet files or an input of an input store (``store:NAME``);
  a trained scoring model (``model:PATH``, M-FLYT over pool columns and stored inputs, or E-FLYT over
  the npz embeddings) or a released mixing model (``mixing:``, the paper's recipes) over such inputs,
  which each partition applies to its own shards as one machine does, shard by shard; and the
  aggregates ``sum``, ``standardized_sum`` and ``in_weighted`` over such inputs: each input's
  mean and standard deviation (ddof 0) are the pool's (or the surviving examples'), from the
  partitions' counts and sums, then their squared deviations about the pool's mean, combined by the
  driver; each partition then sums the inputs' terms with them (:func:`~flyt_datacomp.scores.aggregate.term`).
* **masks**, in their order, as one machine applies them: those that keep or drop an example by its
  own row (``column:``, ``store:``, ``caption:``, ``subset:`` and DataComp's baselines as masks, with
  their assets at the paths the driver found, ``clip_score`` and ``image_based_intersect_clip_score``
  with ``fraction=`` given DataComp's threshold over the whole pool, found by the driver before any
  mask runs), each partition on its own examples; and ``top:F:SOURCE``, which keeps the ``int(F * M)``
  largest scores of the examples that survived the masks before it: each partition computes SOURCE
  for its own rows as it computes a score (above; an aggregate with its inputs' statistics over the
  whole pool, as one machine's mask), the driver finds the cut among the survivors by the exact
  count's search, ties going to the lowest pool positions, and the partitions go on with the masks
  after it. The sampler, its fraction and N, and the standardisations then see the survivors only, as
  on one machine. Without a score the survivors are written once each.
* **input stores** -- a partition reads only its own shards' files of the store (its pool is a
  :meth:`~flyt_datacomp.pool.Pool.part`), with the checks one machine makes: the store's shards are
  the whole pool's (names and sizes), the uids of each of its shards are the store's, and each file
  holds what the manifest records. The store is the one one machine reads (``inputs_dir``, or for a
  scoring model without it the store it was trained with); the driver opens it first, and every
  worker must read it at the same path (on a cluster, a file system every node mounts).
* **write** -- each partition sorts its selected uids into buckets by their leading bits
  (:class:`~flyt_datacomp.uids.UidIndex`); the driver fetches bucket ``b`` of every partition,
  merges and writes it, then the next, so the subset ``.npy`` is written by streaming, never held whole.

``--ray auto`` joins the cluster this machine belongs to, ``local`` starts one on this
machine (shut down at the end), ``host:port`` or ``ray://host:10001`` connects to one.

Refused before any work, with the option named: scores joined by uid (``file:``) and aggregates of
aggregates, as the score or a top: mask's; ``shards_dir``; the samplers other than threshold and SCS.
Each of those runs on one machine.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import resource
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from . import sampling
from .baselines import datacomp as baselines
from .baselines.masks import BaselineMask, MaskContext, MaskKind, TopMask, report_line, resolve_mask
from .errors import FlytError, FlytInputError, WorkerDied, quote
from .inputs.executors import ray_session
from .pool import Pool, plan_partitions
from .process import peak_rss_bytes, stopping
from .progress import progress_bar
from .scores import Scores, ScoreSource, load_scores, resolve_score_source
from .scores.aggregate import Aggregate, input_what, term
from .scores.base import check_spread
from .scores.mixing import MixingScore
from .selection import (
    Restriction,
    Selection,
    SelectionResult,
    Transform,
    check_score_dependent,
    check_subset_size,
    count_dtype,
    default_notes,
    positions,
    preflight,
    sampler_params,
)
from .store import InputStore
from .uids import UID_DTYPE, histogram_stats, repetition_counts, selected_index, split_order, uids_to_hex, write_sorted_subset

SAMPLERS = ("threshold", "scs")  # the samplers this path runs
ROW_MASKS = ("column", "store", "caption", "subset", "baseline")  # mask kinds that judge each example by its own row
_SUMMARY_POINTS = 1024  # SCS: keys per partition and round that place the cut (the excess is G / this per partition)
_BUCKET_ROWS = 1 << 22  # the writer's buckets hold about this many selected uids


@dataclasses.dataclass(frozen=True)
class Cluster:
    """Where and how a selection runs on Ray."""

    address: str = "auto"  # auto, local, host:port or ray://host:10001
    partitions: int | None = None  # None: one per CPU of the cluster, at most one per metadata shard
    memory_cap: int | None = None  # bytes a partition's process may add to its address space (RLIMIT_AS)
    num_cpus: int | None = None  # with address local: the CPUs the local instance offers


Terms = tuple[tuple[str, float | None], ...]  # an aggregate's inputs and the weights of their z-scores


@dataclasses.dataclass(frozen=True)
class Job:
    """What every partition reads. ``mode``: ``score`` (a score source as logits, finite, float64),
    ``aggregate`` (an aggregate's inputs, summed once the pool's statistics are known) or ``all`` (no
    values: the survivors of the masks, once each); the masks an example must be inside to be selected,
    with what they run with and what the driver finds over the whole pool for them; and the input
    stores read."""

    mode: str
    source: str | None = None
    kind: str | None = None  # the score source's registered kind
    terms: Terms = ()  # an aggregate's inputs and their weights
    masks: tuple[MaskKind, ...] = ()
    mask_settings: baselines.RunSettings = baselines.RunSettings(progress=False)
    mask_defaults: baselines.BaselineParams = baselines.BaselineParams()
    inputs_dir: str | None = None  # the selection's input store (store: scores and masks, a model's stored inputs)
    accept_changed_inputs: tuple[str, ...] = ()  # stored inputs a trained model may read though changed since
    stores: tuple[str, ...] = ()  # every input store the partitions read (each worker must reach it)
    # the baselines with a CLIP fraction among the masks (clip_score, image_based_intersect_clip_score): their
    # place, CLIP column and fraction; each threshold is a rank over the whole pool, found before any mask runs
    ranks: tuple[tuple[int, str, float], ...] = ()
    # the top: masks: their place among the masks and, for an aggregate score, its inputs and weights (None: a
    # score each partition computes whole); each ranks the survivors of the masks before it over every partition
    tops: tuple[tuple[int, Terms | None], ...] = ()


# ------------------------------------------------------------------------------------- partitions


class Partition:
    """One partition's scores, counts and selected uids; a Ray actor's body (and usable in-process).
    Its values, counts and ``size`` are those of the examples that survive the masks (``keep``, local
    positions; None: every example of its shards). While the masks run, ``survivors`` (a bool per
    example) holds those left by the first ``done`` of them; the driver leads what needs every
    partition (a CLIP fraction's threshold, a top: mask's ranking)."""

    def __init__(self, pool: Pool, shards: Sequence[int], job: Job, memory_cap: int | None = None):
        self.pool = pool.part(shards)
        self.size = self.pool.size
        self.job, self.memory_cap = job, memory_cap
        self.keep = None
        self.survivors: np.ndarray | None = None
        self.done = 0  # masks applied
        self.thresholds: dict[int, Any] = {}  # the CLIP fractions' thresholds, by the mask's place
        self.report: list[dict[str, Any]] = []
        self.stored_dtype = None
        self.values = None
        self.inputs: list[np.ndarray] = []
        self.counts = np.zeros(0, dtype=np.int32)
        self.index = None

    def load(self) -> int:
        """Apply the masks and read the partition's values (a task of its own, not the constructor: Ray
        reports a task's error as the error itself, a constructor's as a dead worker). Returns the
        number of examples that may be selected."""
        if self.memory_cap is not None:
            _cap_address_space(self.memory_cap)
        for root in self.job.stores:
            check_reachable(root)
        if self.job.ranks:  # a CLIP fraction's column first, ranked over the pool by the driver
            self.read_column(self.job.ranks[0][1])
            return self.size
        return self.read()

    def read(self, thresholds: Sequence[float | None] = ()) -> int:
        """Apply the masks (``thresholds``: those of the CLIP fractions, in ``job.ranks``' order, found
        over the whole pool) up to the first top: mask, whose ranking the driver leads; past the last
        mask, read the values. Returns the number of examples left."""
        self.values = self.stored_dtype = None
        self.thresholds = {i: t for (i, _, _), t in zip(self.job.ranks, thresholds)}
        if self.job.masks:
            ctx = self.mask_context()
            for mask in self.job.masks:  # as apply_masks: what each needs is found before any runs
                mask.prepare(ctx)
            self.survivors = np.ones(self.pool.size, dtype=bool)
        return self.restrict()

    def read_values(self) -> None:
        """The values of the examples that survived every mask: the score, or an aggregate's inputs."""
        mode, source = self.job.mode, self.job.source
        if mode == "score":
            scores = self.scores(source)
            self.values, self.stored_dtype = self.kept(scores.values), scores.stored_dtype
        elif mode == "aggregate":
            self.inputs = [self.kept(self.scores(spec).values) for spec, _ in self.job.terms]

    def read_column(self, name: str) -> None:
        """A pool column as stored (NaN allowed), as the values."""
        self.values = self.pool.column(name)
        if self.values.dtype.kind not in "fiu":
            raise FlytInputError(f"column {name!r} of the pool at {self.pool.url} holds {self.values.dtype} "
                                 "values, not numbers")
        self.stored_dtype = self.values.dtype

    def scores(self, spec: str, accept_changed: bool = True) -> Scores:
        """A score source over the partition's shards (its stored inputs: the rows of those shards);
        ``accept_changed``: with the selection's ``accept_changed_inputs`` (a top: mask reads without)."""
        return load_scores(self.pool, spec, inputs_dir=self.job.inputs_dir,
                           accept_changed_inputs=self.job.accept_changed_inputs if accept_changed else ())

    def mask_context(self) -> MaskContext:
        return MaskContext(self.pool, None, self.job.mask_settings, self.job.mask_defaults, self.job.inputs_dir)

    def restrict(self) -> int:
        """Apply the masks from the next one on, up to a top: mask or the end, each judging an example by
        its own row given what was found over the whole pool (an image-based baseline's targets, a CLIP
        fraction's threshold); past the last one, keep the survivors and read their values. Returns the
        number of examples left."""
        masks, ctx = self.job.masks, self.mask_context()
        while self.done < len(masks) and masks[self.done].kind != "top":
            mask = self.with_threshold(self.done)
            selected, details = mask.select(ctx, self.survivors)
            self.survivors &= selected
            self.report.append(report_line(mask, int(np.count_nonzero(self.survivors)), details))
            self.done += 1
        if self.done < len(masks):
            return int(np.count_nonzero(self.survivors))
        if masks:
            self.keep = positions(self.survivors)
            self.size = int(self.keep.size)
            self.survivors = None
        self.read_values()
        return self.size

    def with_threshold(self, i: int) -> MaskKind:
        """Mask ``i``, carrying its threshold when it is a CLIP fraction's (found over the whole pool)."""
        mask = self.job.masks[i]
        if i not in self.thresholds:
            return mask
        found = mask.found if mask.found is not None else baselines.Found()
        return BaselineMask(mask.spec, mask.params, dataclasses.replace(found, threshold=(self.thresholds[i],)))

    def top_read(self) -> None:
        """The score of the next mask, a top: one, for every example of the partition, as one machine
        reads it (the selection's input store, no changed stored input accepted); an aggregate's inputs
        when it is one (the driver combines their statistics over the whole pool)."""
        i = self.done
        terms = dict(self.job.tops)[i]
        if terms is None:
            self.values = self.scores(self.job.masks[i].source, accept_changed=False).values
        else:
            self.inputs = [self.scores(spec, accept_changed=False).values for spec, _ in terms]

    def top_candidates(self) -> dict[str, Any]:
        """The top: mask's scores of the examples that survived the masks before it; their summary."""
        self.values = self.values[np.flatnonzero(self.survivors)]
        return self.summary()

    def top_keep(self, t: float, ties: int | None, details: dict[str, Any]) -> int:
        """The top: mask keeps the candidates at the driver's cut (as :meth:`keep_at_least`), its report
        line has ``details``; then the masks after it run. Returns the number of examples left."""
        where = np.flatnonzero(self.survivors)
        self.survivors[where[~self.at_least(t, ties)]] = False
        self.values = None
        self.report.append(report_line(self.job.masks[self.done], int(np.count_nonzero(self.survivors)), details))
        self.done += 1
        return self.restrict()

    def kept(self, values: np.ndarray) -> np.ndarray:
        return values if self.keep is None else values[self.keep]

    def mask_report(self) -> list[dict[str, Any]]:
        return self.report

    # ---------------------------------------------------------------- statistics and transform

    def summary(self) -> dict[str, Any]:
        """Size, sum and range of the values (finite ones), and the stored dtype."""
        v = self.values if self.values is not None else np.zeros(0)
        finite = v if v.dtype.kind != "f" else v[~np.isnan(v)]
        return {"size": self.size if self.values is None else int(v.size), "finite": int(finite.size),
                "sum": float(finite.sum(dtype=np.float64)),
                "min": float(finite.min()) if finite.size else math.nan,
                "max": float(finite.max()) if finite.size else math.nan, "stored_dtype": self.stored_dtype}

    def _arrays(self, which: str) -> list[np.ndarray]:
        return [self.values] if which == "values" else self.inputs

    def sums(self, which: str) -> list[tuple[int, float]]:
        """Count and sum of each array ``which`` (``values``, or an aggregate's ``inputs``)."""
        return [(int(a.size), float(a.sum(dtype=np.float64))) for a in self._arrays(which)]

    def squared_deviations(self, which: str, means: Sequence[float]) -> list[float]:
        """Each array's sum of squared deviations about its pool-wide mean."""
        return [float(np.square(a - mean).sum()) for a, mean in zip(self._arrays(which), means)]

    def aggregate(self, stats: Sequence[tuple[float, float] | None], terms: Terms | None = None) -> None:
        """An aggregate's scores (``terms``; None: the score's): its inputs' terms with the pool's
        statistics, summed as on one machine."""
        terms = self.job.terms if terms is None else terms
        self.values = sum(term(a, weight, st) for a, (_, weight), st in zip(self.inputs, terms, stats))
        self.inputs = []

    def transform(self, cfg: Transform, mean: float | None, std: float | None) -> None:
        """The single-machine transform with the pool's mean and std: ``(x - mean) / std / temperature``."""
        if cfg.standardize:
            self.values = (self.values - mean) / std
        if cfg.temperature != 1.0:
            self.values /= cfg.temperature

    # ---------------------------------------------------------------- thresholds

    def count_at_least(self, t: float) -> int:
        return int(np.count_nonzero(self.values >= np.float64(t)))

    def count_above_and_at(self, t: float) -> tuple[int, int]:
        t = np.float64(t)
        return int(np.count_nonzero(self.values > t)), int(np.count_nonzero(self.values == t))

    def at_least(self, t: float, ties: int | None = None) -> np.ndarray:
        """Where the value is ``>= t``; ``ties`` (an exact count): every value ``> t`` and the first
        ``ties`` values equal to ``t`` (the lowest positions)."""
        if ties is None:
            return self.values >= np.float64(t)
        keep = self.values > np.float64(t)
        keep[np.flatnonzero(self.values == np.float64(t))[:ties]] = True
        return keep

    def keep_at_least(self, t: float | None, ties: int | None = None) -> int:
        """Counts 1 where :meth:`at_least` (no values: every example). Returns the number kept."""
        keep = np.ones(self.size, dtype=bool) if self.values is None else self.at_least(t, ties)
        self.counts = keep.astype(np.int32)
        self.values = None
        return int(np.count_nonzero(keep))

    # ---------------------------------------------------------------- SCS

    def scs_start(self, alpha: float, seed: int, dtype: str, partition: int) -> None:
        self.alpha = alpha
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(partition,)))
        self.counts = np.zeros(self.size, dtype=dtype)
        self.logits = self.values.copy()  # s - alpha * counts
        self.keys = np.empty(self.size, dtype=np.float64)

    def scs_round(self, g: int, accepted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Count the examples the last round drew here (``accepted``, local positions), then draw this
        round's keys; return the ranks and values of the keys that place the cut: every
        ``stride``-th of the partition's ``min(g, size)`` largest keys, and the last of them."""
        self.scs_accept(accepted)
        if self.size == 0:  # every example of the partition was masked out
            return np.zeros(0, dtype=np.int64), np.zeros(0)
        keys = self.keys
        self.rng.standard_exponential(out=keys)
        np.maximum(keys, np.finfo(np.float64).tiny, out=keys)
        np.log(keys, out=keys)
        np.subtract(self.logits, keys, out=keys)  # logit + Gumbel noise
        top = -np.sort(-keys[_top_indices(keys, min(g, self.size))])
        stride = max(1, g // _SUMMARY_POINTS)
        ranks = np.unique(np.append(np.arange(0, top.size, stride), top.size - 1))
        return ranks, top[ranks]

    def scs_candidates(self, cut: float) -> tuple[np.ndarray, np.ndarray]:
        """Local positions and keys of this round's keys ``>= cut``."""
        where = np.flatnonzero(self.keys >= cut)
        return where, self.keys[where]

    def scs_accept(self, accepted: np.ndarray) -> None:
        if accepted.size:
            self.counts[accepted] += 1
            self.logits[accepted] = self.values[accepted] - self.alpha * self.counts[accepted]

    def scs_finish(self, accepted: np.ndarray) -> None:
        self.scs_accept(accepted)
        self.values = self.logits = self.keys = None

    # ---------------------------------------------------------------- writing

    def select(self, bits: int) -> np.ndarray:
        """Sort the selected uids into ``2**bits`` buckets; return the histogram of the counts (of
        every example of the partition's shards, masked out ones at 0)."""
        counts = self.counts
        if self.keep is not None:
            counts = np.zeros(self.pool.size, dtype=self.counts.dtype)
            counts[self.keep] = self.counts
        self.index = selected_index(self.pool.uid_chunks(), counts, bits=bits)
        hist = repetition_counts(counts)
        self.counts = None
        return hist

    def bucket(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        return self.index.bucket(b)

    def peak_memory(self) -> int:
        """This process's peak resident memory in bytes."""
        return peak_rss_bytes()


def _cap_address_space(extra: int) -> None:
    """Let this process grow its address space by at most ``extra`` bytes from now on (allocations
    beyond fail with MemoryError): what a test uses to show a partition's memory is bounded."""
    with open("/proc/self/status") as fh:
        size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    resource.setrlimit(resource.RLIMIT_AS, (size + extra, hard))


def _top_indices(keys: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest ``keys`` (in no order): a cut from a systematic sample of the keys
    that about ``k`` plus 7 standard deviations reach, then an exact top-``k`` of the keys above it
    (the whole array when too few are: exact whatever the sample)."""
    m = keys.size
    stride = m // (4 * _SUMMARY_POINTS)
    if k >= m:
        return np.arange(m)
    if stride >= 2 and k < m // 8:
        sample = keys[::stride]
        expect = k * sample.size / m
        rank = min(sample.size, math.ceil(expect + 7 * math.sqrt(expect) + 16))
        cut = np.partition(sample, sample.size - rank)[sample.size - rank]
        where = np.flatnonzero(keys >= cut)
        if where.size >= k:
            return where[np.argpartition(keys[where], where.size - k)[where.size - k:]]
    return np.argpartition(keys, m - k)[m - k:]


# ------------------------------------------------------------------------------------- the driver


class _Actors:
    """The partitions' actors, called all at once: ``call(method, *args, each=..., **kwargs)`` gives every
    partition ``args`` (then its own ``each[i]``) and waits for every result, between short waits, so a
    stop signal is handled within a second."""

    def __init__(self, ray, handles: list):
        self.ray = ray
        self.handles = handles

    def __len__(self) -> int:
        return len(self.handles)

    def submit(self, method: str, *args, each: Sequence[tuple] | None = None, **kwargs) -> list:
        each = each if each is not None else [()] * len(self.handles)
        return [self._invoke(h, method, args + tuple(extra), kwargs) for h, extra in zip(self.handles, each)]

    def _invoke(self, handle, method: str, args: tuple, kwargs: dict):
        return getattr(handle, method).remote(*args, **kwargs)

    def wait(self, refs: list, bar=None) -> list:
        pending = list(refs)
        try:
            while pending:
                ready, pending = self.ray.wait(pending, num_returns=len(pending), timeout=0.5)
                if bar is not None and ready:
                    bar.update(len(ready))
            return self.ray.get(refs)
        except self.ray.exceptions.RayTaskError as exc:  # a partition's own error: the cause, as one line
            cause = exc.cause
            if isinstance(cause, FlytError):
                raise cause from None
            raise WorkerDied(f"a partition's worker failed: {type(cause).__name__}: {cause} (out of memory? use more "
                             "partitions)") from None
        except self.ray.exceptions.RayActorError:
            raise WorkerDied("a partition's worker died (killed, or out of memory?); nothing was written: run again, "
                             "with more partitions if memory is short") from None

    def call(self, method: str, *args, each: Sequence[tuple] | None = None, **kwargs) -> list:
        return self.wait(self.submit(method, *args, each=each, **kwargs))


class Inline(_Actors):
    """The same calls on partitions held in this process (the driver's logic without Ray)."""

    def __init__(self, parts: list[Partition]):
        super().__init__(None, parts)

    def _invoke(self, handle, method: str, args: tuple, kwargs: dict):
        return getattr(handle, method)(*args, **kwargs)

    def wait(self, refs: list, bar=None) -> list:
        if bar is not None:
            bar.update(len(refs))
        return refs


def check_supported(sel: Selection) -> None:
    """Refuse, before any work, what the Ray path does not run (with the way to run it); the score
    and the masks are checked against the pool by :func:`job_of`."""
    r = sel.restrict
    if r.shards_dir:
        raise FlytInputError("`shards_dir` is not offered on Ray (`ray_address`); run without it, or on one machine",
                             params=["shards_dir", "ray_address"])
    if sel.score.source is not None:
        if sel.sample.name not in SAMPLERS:
            raise FlytInputError(f"sampler {sel.sample.name} does not run on Ray (`ray_address`): {', '.join(SAMPLERS)} "
                                 "do", params=["sampler", "ray_address"])
        if sel.sample.options.get("device") not in (None, "cpu"):
            raise FlytInputError("on Ray (`ray_address`) SCS runs on the partitions' CPUs: leave `device` unset",
                                 params=["device", "ray_address"])


def job_of(sel: Selection, pool: Pool) -> Job:
    """What the partitions read, once the score and the masks are known to run on Ray (and the
    masks' assets and the input stores are found)."""
    r = sel.restrict
    inputs_dir = sel.score.inputs_dir
    masks: list[MaskKind] = [] if r.baseline is None else [BaselineMask(r.baseline, r.params())]  # first, as one machine
    tops, stores = [], set()
    for spec in r.masks:
        mask, top, read = ray_mask(spec, pool, inputs_dir)
        if mask.kind == "top":
            tops.append((len(masks), tuple(top.terms()) if isinstance(top, Aggregate) else None))
        masks.append(mask)
        stores |= read
    source = None
    if sel.score.source is not None:
        source, read = ray_score(sel.score.source, pool, inputs_dir)
        stores |= read
    settings = baselines.RunSettings(r.assets, 1, 0, r.centroid_batch_size, progress=False)
    defaults = baselines.BaselineParams(image_based_scale=r.image_based_scale)
    for mask in masks:
        mask.prepare(MaskContext(pool, None, settings, defaults, inputs_dir))
    stores |= {inputs_dir for mask in masks if mask.kind == "store"}
    opened = _opened(stores)
    ranks = []
    for i, mask in enumerate(masks):  # the image-based baselines' targets: found once, here, for every partition
        if mask.kind == "baseline" and "image_based" in mask.name:
            mask.found = baselines.image_targets(mask.resolved(MaskContext(pool, None, settings, defaults)), settings)
        if mask.kind == "baseline" and "clip_score" in mask.name and mask.params.fraction is not None:
            ranks.append((i, baselines.ARCH_COLUMNS[mask.params.arch], mask.params.fraction))
    common = {"masks": tuple(masks), "mask_settings": settings, "mask_defaults": defaults, "inputs_dir": inputs_dir,
              "accept_changed_inputs": sel.score.accept_changed_inputs, "stores": opened, "ranks": tuple(ranks),
              "tops": tuple(tops)}
    if isinstance(source, Aggregate):
        return Job("aggregate", sel.score.source, source.kind, tuple(source.terms()), **common)
    if source is not None:
        return Job("score", sel.score.source, source.kind, **common)
    return Job("all", **common)


def _opened(stores: set[str]) -> tuple[str, ...]:
    """The input stores, each opened here as one machine opens it (a folder that is not one is refused)."""
    for root in stores:
        InputStore(root).manifest()
    return tuple(sorted(stores))


def check_reachable(root: str) -> None:
    """Refuse, naming it, an input store this process cannot read: a Ray worker on a node that does
    not see the folder the driver read it from."""
    path = InputStore(root).manifest_path
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise FlytInputError(f"a Ray worker on {socket.gethostname()} cannot read the input store {root} ({path}: "
                             f"{exc.strerror or exc}); the workers read the store at the path the driver was given: "
                             "put it on a file system every node of the cluster mounts at that path, and give it as "
                             "an absolute path") from None


def ray_score(spec: str, pool: Pool, inputs_dir: str | None = None,
              mask: str | None = None) -> tuple[ScoreSource, set[str]]:
    """The score source ``spec`` names (``mask``: a top: mask's, named so) and the input stores it reads,
    refused unless each partition can compute it for its own rows (with the pool's statistics where it
    standardises): a pool column, an input of an input store, a scoring model over those or the pool's
    embeddings, or an aggregate or mixing model of those."""
    source = resolve_score_source(spec, pool, inputs_dir=inputs_dir)
    if isinstance(source, Aggregate):
        inputs = [s for s, _ in source.terms()]
    elif isinstance(source, MixingScore):
        inputs = [source.input_spec(pool, name) for name in source.parse()[1]]
    else:
        return source, {_row_score_store(source, spec, pool, mask=mask)} - {None}
    return source, {_row_score_store(resolve_score_source(s, pool, inputs_dir=inputs_dir), s, pool, of=spec, mask=mask)
                    for s in inputs} - {None}


def _row_score_store(source: ScoreSource, spec: str, pool: Pool, of: str | None = None,
                     mask: str | None = None) -> str | None:
    """The input store a score (``of``: the aggregate or mixing model it is an input of; ``mask``: the
    top: mask it ranks by) reads (None: none), refused unless it is a pool column, an input of an input
    store, or a scoring model reading those or the pool's embeddings."""
    if source.kind == "store":
        source.store().entry(source.spec)  # the input is there, complete, as one machine checks
        return source.inputs_dir
    if source.kind == "model":
        return _model_store(source, pool)
    if source.kind != "column":
        where = "" if of is None else f" (an input of {quote(of)})"
        what, option = ("the `score`", "score") if mask is None else (f"the score of `masks` {quote(mask)}", "masks")
        raise FlytInputError(f"on Ray (`ray_address`) {what} must be a column of the pool's parquet files, an input "
                             f"of the input store (store:NAME), a scoring model (model:PATH), or sum, standardized_sum, "
                             f"in_weighted or mixing over those; {quote(spec)}{where} is a {source.kind}; "
                             + (_IMPORT_HINT if source.kind == "file" else "compute it into the pool or the input store, "
                                "or run on one machine"), params=[option, "ray_address"])
    return None


_IMPORT_HINT = ("import the file into an input store on the cluster (`flyt-datacomp inputs import FILE --ray ADDRESS "
                "--metadata-dir ... --inputs-dir STORE`: parquet files with `uid` and `score` columns, joined by buckets "
                "on the cluster; the store keeps float32), then score by store:score, or run on one machine")


def _model_store(source: ScoreSource, pool: Pool) -> str | None:
    """The input store a scoring model reads its stored inputs from, as on one machine: ``inputs_dir``,
    else the store it was trained with (None: it reads only the pool)."""
    from .flyt.features import FeatureSpec
    from .flyt.models import load_scoring_model

    model, meta = load_scoring_model(source.spec)
    spec = FeatureSpec.of_scoring_model(model, meta, source.spec, source.inputs_dir)
    return spec.inputs_dir if any(c not in pool.column_names for c in spec.columns) else None


def ray_mask(spec: str, pool: Pool, inputs_dir: str | None = None) -> tuple[MaskKind, ScoreSource | None, set[str]]:
    """The mask ``spec`` names, refused unless it keeps or drops each example by its own row (given what
    the driver finds over the whole pool: a CLIP fraction's threshold, an image-based baseline's targets)
    or is a top: mask over a score the partitions compute for their own rows (:func:`ray_score`); with
    a top: mask's score source and the input stores it reads."""
    mask = resolve_mask(spec, pool)
    if mask.kind == "top":
        return (mask, *ray_score(mask.source, pool, inputs_dir, mask=spec))
    if mask.kind not in ROW_MASKS:
        raise FlytInputError(f"`masks` {quote(spec)} does not run on Ray (`ray_address`): {mask.kind} masks are not "
                             f"among those it runs ({', '.join(ROW_MASKS + ('top',))}); run it on one machine",
                             params=["masks", "ray_address"])
    return mask, None, set()


def run(sel: Selection, cluster: Cluster) -> SelectionResult:
    """:func:`flyt_datacomp.selection.run` on a Ray cluster (see the module's description): the same
    checks first, then one actor per partition, then the subset written by streaming."""
    preflight(sel)
    check_supported(sel)
    start = time.perf_counter()
    pool = Pool(sel.metadata_dir, progress=sel.progress, workers=sel.io_threads)
    job = job_of(sel, pool)
    init = {"num_cpus": cluster.num_cpus} if cluster.num_cpus else {}
    with ray_session(cluster.address, **init) as ray:
        cpus = float(ray.cluster_resources().get("CPU", 1))
        plan = plan_partitions(pool, cluster.partitions or max(1, int(cpus)))
        # every partition's actor alive at once, spread over the nodes, even with more partitions than CPUs
        actor = ray.remote(num_cpus=min(1.0, cpus / len(plan)), scheduling_strategy="SPREAD")(Partition)
        handles = [actor.remote(pool, shards, job, cluster.memory_cap) for shards in plan]
        try:
            actors = _Actors(ray, handles)
            with progress_bar(total=len(plan), desc="reading partitions", unit="partition",
                              disable=not sel.progress) as bar:
                actors.wait(actors.submit("load"), bar)
            return drive(sel, pool, actors, job, start,
                         {"address": cluster.address, "partitions": len(plan),
                          "partition_rows": [sum(pool.shards[i].num_rows for i in p) for p in plan]})
        finally:  # on a cluster the workers end with the run; while stopping, Ray's own shutdown ends them
            for h in handles if not stopping() else ():
                with contextlib.suppress(Exception):
                    ray.kill(h)


def drive(sel: Selection, pool: Pool, actors, job: Job, start: float,
          cluster: dict[str, Any] | None = None) -> SelectionResult:
    """Everything after the partitions hold their values: select, then write (``actors``: Ray actors
    or in-process partitions, called the same way); ``cluster`` goes to the sidecar, with each worker's
    peak resident memory."""
    if job.ranks or job.tops:
        pool_wide_masks(actors, job, pool.size)
    kept = Restriction(pool.size, None, None, merge_reports(actors.call("mask_report")) if job.masks else [], None)
    m = sum(s["size"] for s in actors.call("summary"))
    if job.masks and m == 0:  # the single-machine path's words
        raise FlytInputError(f"no example of the pool survives the masks ({kept.describe()}): nothing to sample"
                             if sel.score.source else f"no example of the pool survives ({kept.describe()}): an empty "
                             "subset would be written; nothing was written")
    inputs = {"metadata_dir": sel.metadata_dir, "pool_size": pool.size, "metadata_shards": len(pool.shards),
              "shards_dir": None, "pool_size_downloaded": None, "pool_size_surviving": m if job.masks else None}
    select = _keep_survivors if job.mode == "all" else _sample
    info, notes, title = select(sel, actors, job, kept, m)
    info = {**info, "inputs": {**inputs, **info.get("inputs", {})}, "cluster": cluster}
    return _write(sel, pool, actors, info, notes, title, m, start)


def pool_wide_masks(actors, job: Job, pool_size: int) -> None:
    """Run the masks with what needs every partition, in their order: the CLIP fractions' thresholds
    over the whole pool first (then each partition applies the masks up to the first top: mask), then
    each top: mask's ranking of the examples that survived the masks before it (then each partition
    applies the masks after it, up to the next)."""
    if job.ranks:
        thresholds = []
        for i, (_, column, fraction) in enumerate(job.ranks):
            if i:  # the first column was read with the partitions
                actors.call("read_column", column)
            summaries = actors.call("summary")
            t = fraction_threshold(actors, summaries, sum(s["size"] for s in summaries), fraction)
            thresholds.append(None if t is None else float(t))
        actors.call("read", thresholds)
    for i, terms in job.tops:
        _top(actors, job.masks[i], terms, pool_size)


def _top(actors, mask: TopMask, terms: Terms | None, pool_size: int) -> None:
    """A top: mask over the partitions, as :meth:`TopMask.select`: of the examples that survived the
    masks before it, the ``int(F * pool size)`` with the largest scores, ties at the cut broken by pool
    position (the exact count's cut), all of them when fewer survived. An aggregate's inputs are
    standardised with their statistics over the whole pool, as one machine's top: mask does."""
    actors.call("top_read")
    if terms is not None:
        _aggregate(terms, actors, restricted=False)
    summaries = actors.call("top_candidates")
    m = sum(s["size"] for s in summaries)
    count = mask.count(pool_size)
    if count >= m:
        t, ties = -math.inf, [(None,)] * len(actors)  # every candidate
    elif count == 0:
        t, ties = math.inf, [(None,)] * len(actors)  # none (the scores are finite)
    else:
        t, ties = exact_cut(actors, count, *value_range(summaries))
    actors.call("top_keep", t, each=ties, details=mask.details(count, pool_size, m))


def _keep_survivors(sel: Selection, actors, job: Job, kept: Restriction, m: int) -> tuple[dict, list[str], str]:
    """DataComp's baseline, or the survivors of the masks once each: the sidecar's record, notes and title."""
    actors.call("keep_at_least", None)
    baseline = sel.restrict.baseline
    info = {"baseline": None if baseline is None else {"name": baseline, "params": sel.restrict.params().given()},
            "masks": kept.report, "sampler": None, "selection": "every example that survives the masks, once",
            "sampler_params": {}, "seed": None}
    return info, kept.notes(), f"baseline {baseline}" if baseline else f"{len(job.masks)} mask(s)"


def _sample(sel: Selection, actors, job: Job, kept: Restriction, m: int) -> tuple[dict, list[str], str]:
    """The scores (an aggregate's summed, then transformed) drawn by the sampler: the sidecar's record,
    notes and title."""
    name = sel.sample.name
    params = sampler_params(sel.sample, m)
    if "num_samples" in params:
        check_subset_size(params["num_samples"], sel.output.path)
    if job.mode == "aggregate":
        _aggregate(job.terms, actors, restricted=bool(job.masks))
    _transform(sel.transform, actors)
    summaries = actors.call("summary")
    lowest, highest = value_range(summaries)
    degenerate = sampling.scs_independence(m, lowest, highest, params) if name == "scs" else None
    check_score_dependent(sel, params, m, degenerate)
    if name == "scs":
        _scs(actors, params, sel.sample.seed, sel.progress)
    else:
        stored = summaries[0]["stored_dtype"]
        plain = not sel.transform.standardize and sel.transform.temperature == 1.0
        if params.get("value") is not None and plain and stored is not None and stored.kind == "f":
            params = {**params, "value": float(stored.type(params["value"]))}  # as the single-machine path
        if _threshold(actors, params, m) == 0:
            scored = "scores" if plain else "scores after the transform"
            raise FlytInputError(f"`value` {params['value']} keeps no example: the {scored} of the {m:,} examples "
                                 f"it may select range from {lowest:.6g} to {highest:.6g}; choose a value at most "
                                 f"{highest:.6g}, or `fraction`; no subset was written", params=["value", "fraction"])
    info = {"inputs": {"score_source": sel.score.source, "score_kind": job.kind, "inputs_dir": sel.score.inputs_dir,
                       "accept_changed_inputs": list(sel.score.accept_changed_inputs)},
            "masks": kept.report,
            "score_transform": {"standardize": sel.transform.standardize, "temperature": sel.transform.temperature,
                                "statistics_over": kept.statistics_over()},
            "sampler": name, "sampler_params": {k: v for k, v in params.items() if k != "device"},
            "sampler_defaults": sorted(k for k in params if sel.sample.options.get(k) is None
                                       and k not in ("num_samples", "device") and params[k] is not None),
            "device": "cpu", "scale": sel.sample.scale, "seed": sel.sample.seed}
    notes = default_notes(sel.sample, params, m) + kept.notes() + ([degenerate] if degenerate else [])
    return info, notes, f"{name} on {sel.score.source}"


def merge_reports(reports: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The masks' report lines over the pool from every partition's: the survivors summed, and a subset
    file's uids not in the pool those that no partition holds; the rest is the same in every partition."""
    merged = []
    for lines in zip(*reports):
        line = {**lines[0], "surviving": sum(x["surviving"] for x in lines)}
        if "subset_uids_not_in_pool" in line:
            found = sum(x["subset_uids"] - x["subset_uids_not_in_pool"] for x in lines)
            line["subset_uids_not_in_pool"] = line["subset_uids"] - found
        merged.append(line)
    return merged


def pool_moments(actors, which: str) -> list[tuple[float, float]]:
    """The mean and standard deviation (ddof 0) of each of the partitions' arrays ``which`` over every
    partition: counts and sums first, then the squared deviations about the pool's means."""
    sums = actors.call("sums", which)
    counts = [sum(part[i][0] for part in sums) for i in range(len(sums[0]))]
    means = [math.fsum(part[i][1] for part in sums) / n for i, n in enumerate(counts)]
    deviations = actors.call("squared_deviations", which, means)
    return [(mean, math.sqrt(math.fsum(part[i] for part in deviations) / n))
            for i, (mean, n) in enumerate(zip(means, counts))]


def _aggregate(terms: Terms, actors, restricted: bool) -> None:
    """An aggregate's scores on every partition (its inputs ``terms``, held there): each input
    standardised (where it is) with its statistics over the examples of every partition
    (``restricted``: those the masks kept)."""
    stats = []
    for (spec, weight), (mean, std) in zip(terms, pool_moments(actors, "inputs")):
        if weight is not None:
            check_spread(std, input_what(spec), restricted=restricted)
        stats.append(None if weight is None else (mean, std))
    actors.call("aggregate", stats, terms)


def _transform(cfg: Transform, actors) -> None:
    """Standardise with the pool's mean and std and divide by the temperature, on every partition."""
    mean = std = None
    if cfg.standardize:
        (mean, std), = pool_moments(actors, "values")
        check_spread(std, "the scores")
    if cfg.standardize or cfg.temperature != 1.0:
        actors.call("transform", cfg, mean, std)


def value_range(summaries: list[dict]) -> tuple[float, float]:
    """The smallest and the largest value of the partitions that hold one."""
    held = [s for s in summaries if s["finite"]]
    return min(s["min"] for s in held), max(s["max"] for s in held)


def _key(x: float) -> int:
    """The float64 ``x`` as an integer in the same order (-0.0 as 0.0)."""
    bits = int(np.array([x + 0.0], dtype=np.float64).view(np.uint64)[0])
    return bits ^ 0xFFFFFFFFFFFFFFFF if bits >> 63 else bits | 1 << 63


def _value(key: int) -> float:
    bits = key ^ 1 << 63 if key >> 63 else key ^ 0xFFFFFFFFFFFFFFFF
    return float(np.array([bits], dtype=np.uint64).view(np.float64)[0])


def rank_value(actors, rank: int, lowest: float, highest: float) -> float:
    """The value at ``rank`` (0: the largest) of every partition's values sorted in decreasing order,
    NaN aside (``rank`` below their number): a binary search for the largest value at least
    ``rank + 1`` values reach, each step one count per partition, at most 64 steps."""
    lo, hi = _key(lowest), _key(highest)
    while lo < hi:
        mid = lo + (hi - lo + 1) // 2
        if sum(actors.call("count_at_least", _value(mid))) >= rank + 1:
            lo = mid
        else:
            hi = mid - 1
    return _value(lo)


def _threshold(actors, params: dict[str, Any], m: int) -> int:
    """The threshold sampler over the partitions (as :func:`flyt_datacomp.sampling.threshold`); returns
    the number kept."""
    lowest, highest = value_range(actors.call("summary"))
    if params.get("value") is not None:
        return sum(actors.call("keep_at_least", params["value"]))
    f = float(params["fraction"])
    if not params.get("exact_count"):
        n = int(m * f)
        return sum(actors.call("keep_at_least", lowest if n >= m else rank_value(actors, n, lowest, highest)))
    k = max(1, int(m * f))
    if k >= m:
        return sum(actors.call("keep_at_least", lowest))
    t, ties = exact_cut(actors, k, lowest, highest)
    return sum(actors.call("keep_at_least", t, each=ties))


def exact_cut(actors, k: int, lowest: float, highest: float) -> tuple[float, list[tuple[int]]]:
    """The cut that keeps exactly the ``k`` largest of the partitions' values (``0 < k <`` their number,
    none NaN): the value ``t`` at rank ``k - 1`` and how many values equal to it each partition keeps,
    ties going to the lowest pool positions (the first partitions, each its first)."""
    t = rank_value(actors, k - 1, lowest, highest)
    above_at = actors.call("count_above_and_at", t)
    missing = k - sum(above for above, _ in above_at)
    ties = []
    for _, at in above_at:
        ties.append((min(at, missing),))
        missing -= ties[-1][0]
    return t, ties


def fraction_threshold(actors, summaries: list[dict], m: int, fraction: float) -> float | None:
    """DataComp's threshold for a fraction of the partitions' ``m`` values (a pool column as stored):
    the value at rank ``int(m * fraction)`` in decreasing order, NaN last (None: past the end, every
    value with a score passes; NaN: a missing score, nothing passes), as :func:`~.rules.rank_threshold`."""
    n = int(m * fraction)
    if n >= m:
        return None
    if n >= sum(s["finite"] for s in summaries):
        return math.nan  # DataComp's value at that rank is a missing score: nothing passes
    return rank_value(actors, n, *value_range(summaries))


# ------------------------------------------------------------------------------------- SCS


def _scs(actors, params: dict[str, Any], seed: int, progress: bool) -> None:
    """SCS over the partitions: per round a cut from their summaries, the candidates above it, the
    ``G`` largest kept (see the module's description)."""
    alpha, group, total = float(params["alpha"]), int(params["group_size"]), int(params["num_samples"])
    dtype = count_dtype(total).name
    actors.call("scs_start", alpha, seed, dtype, each=[(i,) for i in range(len(actors))])
    accepted = [np.zeros(0, dtype=np.int64) for _ in range(len(actors))]
    drawn = 0
    with progress_bar(total=total, disable=not progress, unit="sample", desc="scs") as bar:
        while drawn < total:
            g = min(group, total - drawn)
            summaries = actors.call("scs_round", g, each=[(a,) for a in accepted])
            cut = scs_cut(summaries, g)
            found = actors.call("scs_candidates", cut)
            accepted = top_of(found, g)
            drawn += g
            bar.update(g)
    actors.call("scs_finish", each=[(a,) for a in accepted])


def scs_cut(summaries: list[tuple[np.ndarray, np.ndarray]], g: int) -> float:
    """The largest reported key that at least ``g`` keys of the pool reach for sure: a partition that
    reports key ``v`` at rank ``r`` has ``r + 1`` keys ``>= v`` (its ranks rise as its keys fall)."""
    values = np.concatenate([v for _, v in summaries])
    gains = np.concatenate([np.diff(r, prepend=-1) for r, _ in summaries])  # new keys each point adds
    order = np.argsort(-values, kind="stable")
    reached = np.cumsum(gains[order])
    return float(values[order][int(np.searchsorted(reached, g))])


def top_of(found: list[tuple[np.ndarray, np.ndarray]], g: int) -> list[np.ndarray]:
    """The ``g`` largest of every partition's candidate keys, as each partition's local positions."""
    keys = np.concatenate([k for _, k in found])
    owner = np.concatenate([np.full(len(k), i) for i, (_, k) in enumerate(found)])
    where = np.concatenate([w for w, _ in found])
    best = np.argpartition(keys, keys.size - g)[keys.size - g:] if keys.size > g else np.arange(keys.size)
    return [np.sort(where[best[owner[best] == i]]) for i in range(len(found))]


# ------------------------------------------------------------------------------------- writing


class _Merged:
    """The partitions' selected uids in uid order, bucket by bucket (what the subset writer reads):
    bucket ``b`` of every partition fetched (the next one already requested), merged and checked."""

    def __init__(self, actors, bits: int, progress: bool):
        self.actors, self.bits, self.progress = actors, bits, progress

    def sorted_buckets(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        n = 1 << self.bits
        with progress_bar(total=n, desc="writing the subset", unit="bucket", disable=not self.progress) as bar:
            ahead = self.actors.submit("bucket", 0)
            for b in range(n):
                pieces = [p for p in self.actors.wait(ahead) if p is not None]
                ahead = self.actors.submit("bucket", b + 1) if b + 1 < n else []
                bar.update(1)
                if not pieces:
                    continue
                f0 = np.concatenate([p[0] for p in pieces])
                f1 = np.concatenate([p[1] for p in pieces])
                counts = np.concatenate([p[2] for p in pieces])
                if len(pieces) > 1:
                    order = split_order(f0, f1)
                    f0, f1, counts = f0[order], f1[order], counts[order]
                    same = np.flatnonzero((f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1]))
                    if same.size:
                        uid = np.empty(1, dtype=UID_DTYPE)
                        uid["f0"], uid["f1"] = f0[same[0]], f1[same[0]]
                        raise FlytInputError(f"uid {uids_to_hex(uid)[0]} appears more than once in the subset input")
                yield f0, f1, counts


def bucket_bits(m: int) -> int:
    """Leading uid bits that cut a pool of ``m`` examples into buckets of about ``_BUCKET_ROWS`` (8 to 16)."""
    return int(min(16, max(8, math.ceil(math.log2(max(1, m / _BUCKET_ROWS))))))


def _write(sel: Selection, pool: Pool, actors, info: dict[str, Any], notes: list[str], title: str, m: int,
           start: float) -> SelectionResult:
    """Each partition sorts its selection into buckets; the subset, its sidecar and its histogram are
    written from them and committed together."""
    bits = bucket_bits(m)
    hists = actors.call("select", bits)
    hist = np.zeros(max(len(h) for h in hists), dtype=np.int64)
    for h in hists:
        hist[:len(h)] += h
    stats = histogram_stats(hist)
    if info.get("cluster") is not None:  # the workers' peaks: the selection is done, the merge only reads it
        info["cluster"]["worker_peak_rss_bytes"] = actors.call("peak_memory")
    if stats["total_entries"] == 0:
        what = "sampler selected" if info["sampler"] else "baseline keeps"
        raise FlytInputError(f"the {what} no example of the pool's {m:,}: an empty subset would be written; "
                             "nothing was written")
    check_subset_size(stats["total_entries"], sel.output.path)
    if info["sampler"] is not None:
        concentrated = sampling.concentration_of(stats["distinct_uids"], stats["total_entries"],
                                                 stats["max_repetitions"], m)
        notes += [concentrated] if concentrated else []
    info = {**info, "warnings": notes, "seconds": round(time.perf_counter() - start, 3)}
    meta = write_sorted_subset(sel.output.path, _Merged(actors, bits, sel.progress), stats, info=info,
                               overwrite=sel.output.overwrite, histogram_title=title)
    from .uids import subset_outputs

    output, sidecar, histogram = subset_outputs(sel.output.path)
    return SelectionResult(output, sidecar, histogram, None, pool, meta, notes)
