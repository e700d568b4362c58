"""The import's join on a cluster: score rows keyed by webdataset key or uid, joined to the pool's
metadata shards by shuffling rows into buckets, so no process holds anything pool-sized.

One machine joins through one index of every downloaded key (12 bytes a row: 14 GB at DataComp
large, 138 GB at xlarge). Here every pass is a set of tasks (run by an executor of
:mod:`.executors`, on Ray with ``inputs import --ray``) that each read a part of the input and
write its rows sorted by bucket into one file of a work folder, with the offsets of each bucket;
the tasks of the next pass each read one bucket of every file:

1. **map**: the downloads' (key, uid) pairs, bucketed by key; the score rows (key or uid, the
   fields as float32), bucketed by key (or by uid when the files are keyed by uid); the pool's
   (uid, position) pairs, bucketed by uid;
2. **keys** (files keyed by webdataset key): each key bucket joins its score rows to the downloads'
   uids and sends them on, bucketed by uid;
3. **uids**: each uid bucket joins its score rows to the pool's positions and sends them on,
   bucketed by the group of metadata shards the position falls in;
4. **write**: each group writes, for each of its shards, the fields in pool order (float32, rows x
   fields, NaN where the example has no row) as ``cols/<shard>.npy``.

A bucket is ``key % buckets`` or ``uid.f0 % buckets`` (keys are consecutive within a shard, uids are
hashes: both spread evenly). Every check one machine makes is made where the rows meet: a key twice
in the download or the score files, a uid twice in the pool or the score files, two keys joining the
same pool example. A task whose output is already in the folder is not run again, so a killed import
resumes where it stopped (the folder's name is the digest of what the join reads and of its plan).
The values are the single-machine import's, bit for bit: each pool example gets its own row's
float32 value, or NaN.
"""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlytInputError
from ..io import atomic_path
from ..pool import Pool, plan_partitions
from ..process import peak_rss_bytes
from ..progress import progress_bar
from ..uids import UID_DTYPE, first_duplicate, lookup, uid_order, uids_to_hex
from .score_rows import batches, correlation_part, merge_parts, row_keys

BUCKET_ROWS = 1 << 22  # pool rows per bucket by default: a bucket task holds a few hundred MB at most
DOWNLOAD_TASKS_SHARDS = 64  # download shards read by one map task

Runner = Callable[[Callable, Sequence[Any]], Iterator[tuple[int, Any]]]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What every task of one join needs (picklable): where its files go, how rows are bucketed."""

    folder: str  # the work folder (on a file system every worker sees)
    buckets: int
    mode: str  # "key" or "uid": what keys the score rows
    fields: tuple[str, ...]  # the numeric columns imported, in order
    groups: tuple[tuple[int, ...], ...]  # metadata shard indices per write task
    where: str  # the score files' folder, for messages
    shards_dir: str | None = None

    def rows_dtype(self, by: str) -> np.dtype:
        """The rows of score values keyed by ``key`` (int64), ``uid`` or pool ``pos`` (int64)."""
        head = [("uid", UID_DTYPE)] if by == "uid" else [(by, "<i8")]
        return np.dtype(head + [("v", "<f4", (len(self.fields),))])

    def path(self, stage: str, task: int, part: int | None = None) -> Path:
        """A task's file of a pass (``part``: one of the files of a task that writes one per batch)."""
        return Path(self.folder) / stage / (f"{task:06d}.npy" if part is None else f"{task:06d}.{part:05d}.npy")


def buckets_for(pool: Pool, partitions: int | None) -> int:
    """``partitions`` when given, else one bucket per :data:`BUCKET_ROWS` pool rows (at least one)."""
    return max(1, partitions or -(-pool.size // BUCKET_ROWS))


def make_plan(folder: Path, pool: Pool, buckets: int, mode: str, fields: Sequence[str], where: str,
              shards_dir: str | None) -> Plan:
    return Plan(str(folder), buckets, mode, tuple(fields), tuple(tuple(g) for g in plan_partitions(pool, buckets)),
                where, shards_dir)


# ------------------------------------------------------------------------------ bucket files


def _scatter(plan: Plan, stage: str, task: int, rows: np.ndarray, bucket: np.ndarray, count: int,
             part: int | None = None) -> None:
    """Write ``rows`` sorted by ``bucket`` (stable) with each bucket's start: one file per task (or
    per ``part`` of a task)."""
    order = np.argsort(bucket, kind="stable")
    offsets = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(bucket, minlength=count), out=offsets[1:])
    path = plan.path(stage, task, part)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path.with_suffix(".offsets.npy")) as tmp, open(tmp, "wb") as fh:
        np.save(fh, offsets)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # written last: its presence means the task is done
        np.save(fh, rows[order])


def _gather(plan: Plan, stage: str, b: int, dtype: np.dtype) -> np.ndarray:
    """Bucket ``b`` of every file of ``stage``, in task order (each task's rows in its own order)."""
    parts = []
    for path in sorted((Path(plan.folder) / stage).glob("*[0-9].npy")):  # not the offsets' files
        offsets = load(path.with_suffix(".offsets.npy"))
        if offsets[b + 1] > offsets[b]:
            parts.append(load(path, mapped=True)[offsets[b]:offsets[b + 1]])
    return np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)


def load(path: Path, *, mapped: bool = False) -> np.ndarray:
    """A file of the join's folder (no pickles); one that cannot be read is an error naming the folder to
    delete (a file damaged after it was written: the join writes each file atomically)."""
    try:
        return np.load(path, mmap_mode="r" if mapped else None, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise FlytInputError(f"cannot read {path}, a file of the import's join ({exc}): delete {path.parent.parent} "
                             "and run again to join afresh (the store's committed inputs are kept)") from None


def _uid_bucket(uids: np.ndarray, count: int) -> np.ndarray:
    return (uids["f0"] % np.uint64(count)).astype(np.int64)


def _key_bucket(keys: np.ndarray, count: int) -> np.ndarray:
    return keys % count


def _done(plan: Plan, stage: str, task: int) -> bool:
    return plan.path(stage, task).is_file()


def _written(path: Path) -> int:
    """The rows of a task's file (its offsets' last entry)."""
    return int(load(path.with_suffix(".offsets.npy"))[-1])


@dataclasses.dataclass(frozen=True)
class Task:
    """One task of a pass: its place (a bucket, a group, a file's or a chunk's number), the pool where it
    reads or places rows, and its ``part`` of the input (download shards, a score file, a check)."""

    plan: Plan
    index: int
    pool: Pool | None = None
    part: Any = None


# ------------------------------------------------------------------------------ the map tasks


def map_downloads(task: Task) -> int:
    """Some download shards' (key, uid) of their successful downloads, bucketed by key."""
    from ..shards import _keys_of, open_folder

    plan = task.plan
    if _done(plan, "downloads", task.index):
        return 0
    fs, folder = open_folder(plan.shards_dir)
    parts = [_keys_of(fs, folder, name) for name in task.part]
    rows = np.zeros(sum(len(k) for k, _ in parts), dtype=[("key", "<i8"), ("uid", UID_DTYPE)])
    if len(rows):
        rows["key"] = np.concatenate([k for k, _ in parts])
        rows["uid"] = np.concatenate([u for _, u in parts])
    _scatter(plan, "downloads", task.index, rows, _key_bucket(rows["key"], plan.buckets), plan.buckets)
    return len(rows)


def map_scores(task: Task) -> int:
    """One score file's rows, their fields as float32, bucketed by their key (or uid): a file per
    batch read, then an empty one that says the file is done (a task holds one batch, whatever the
    file's size)."""
    plan, (schema, path) = task.plan, task.part
    if _done(plan, "scores", task.index):
        return 0
    total = 0
    for k, batch in enumerate(batches(schema, path)):
        rows = np.zeros(batch.num_rows, dtype=plan.rows_dtype(plan.mode))
        rows[plan.mode] = row_keys(batch.column(schema.key), plan.mode, path)
        for j, name in enumerate(plan.fields):
            col = batch.column(name)
            if col.null_count:
                raise FlytInputError(f"score file {path}: column {name!r} has {col.null_count} missing values")
            rows["v"][:, j] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
        del batch
        by = _key_bucket(rows["key"], plan.buckets) if plan.mode == "key" else _uid_bucket(rows["uid"], plan.buckets)
        _scatter(plan, "scores", task.index, rows, by, plan.buckets, part=k)
        total += len(rows)
    empty = np.zeros(0, dtype=plan.rows_dtype(plan.mode))
    _scatter(plan, "scores", task.index, empty, np.zeros(0, np.int64), plan.buckets)
    return total


def map_pool(task: Task) -> int:
    """One group of metadata shards' (uid, pool position), bucketed by uid."""
    plan, pool = task.plan, task.pool
    if _done(plan, "pool", task.index):
        return 0
    shards = [pool.shards[i] for i in plan.groups[task.index]]
    rows = np.zeros(sum(s.num_rows for s in shards), dtype=[("uid", UID_DTYPE), ("pos", "<i8")])
    at = 0
    for s in shards:
        rows["uid"][at:at + s.num_rows] = pool.read_shard(s, ["uid"]).columns["uid"]
        rows["pos"][at:at + s.num_rows] = np.arange(s.offset, s.offset + s.num_rows)
        at += s.num_rows
    _scatter(plan, "pool", task.index, rows, _uid_bucket(rows["uid"], plan.buckets), plan.buckets)
    return len(rows)


# ------------------------------------------------------------------------------ the joins


def join_keys_bucket(task: Task) -> tuple[int, int]:
    """One key bucket: its score rows get their downloads' uids, sent on bucketed by uid; (rows, rows
    whose key is a key of the download)."""
    plan, b = task.plan, task.index
    read = plan.path("keyed", b).with_suffix(".read.npy")  # the bucket's score rows (those it sends on: its offsets)
    if _done(plan, "keyed", b):
        return int(load(read)), _written(plan.path("keyed", b))
    scores = _gather(plan, "scores", b, plan.rows_dtype("key"))
    downloads = _gather(plan, "downloads", b, np.dtype([("key", "<i8"), ("uid", UID_DTYPE)]))
    downloads = downloads[np.argsort(downloads["key"], kind="stable")]
    same = np.flatnonzero(downloads["key"][1:] == downloads["key"][:-1])
    if same.size:
        raise FlytInputError(f"key {int(downloads['key'][same[0]])} names two samples in the shards at "
                             f"{plan.shards_dir}")
    keys = np.sort(scores["key"])
    same = np.flatnonzero(keys[1:] == keys[:-1])
    if same.size:
        raise FlytInputError(f"the score files at {plan.where} list key {int(keys[same[0]])} more than once")
    i = np.minimum(np.searchsorted(downloads["key"], scores["key"]), max(len(downloads) - 1, 0))
    known = downloads["key"][i] == scores["key"] if len(downloads) else np.zeros(len(scores), bool)
    out = np.zeros(int(known.sum()), dtype=plan.rows_dtype("uid"))
    out["uid"] = downloads["uid"][i[known]]
    out["v"] = scores["v"][known]
    with atomic_path(read) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.int64(len(scores)))
    _scatter(plan, "keyed", b, out, _uid_bucket(out["uid"], plan.buckets), plan.buckets)
    return len(scores), len(out)


def join_uids_bucket(task: Task) -> int:
    """One uid bucket: its score rows get their pool positions, sent on bucketed by shard group; the
    rows that found a pool example."""
    plan, b, pool = task.plan, task.index, task.pool
    if _done(plan, "placed", b):
        return _written(plan.path("placed", b))
    members = _gather(plan, "pool", b, np.dtype([("uid", UID_DTYPE), ("pos", "<i8")]))
    members = members[uid_order(np.ascontiguousarray(members["uid"]))]
    twice = first_duplicate(members["uid"])
    if twice is not None:
        a, c = sorted(int(p) for p in members["pos"][twice:twice + 2])
        raise FlytInputError(f"uid {uids_to_hex(members['uid'][twice:twice + 1])[0]} appears more than once in the "
                             f"pool ({pool.locate(a)} and {pool.locate(c)})")
    rows = _gather(plan, "keyed" if plan.mode == "key" else "scores", b, plan.rows_dtype("uid"))
    uids = np.ascontiguousarray(rows["uid"])
    at = lookup(np.ascontiguousarray(members["uid"]), uids)
    hit = at >= 0
    # a uid twice: refused when the files are keyed by uid; keyed by webdataset key, when it is the pool's
    # (two keys of the download hold it), as one machine refuses them
    checked = uids if plan.mode == "uid" else uids[hit]
    order = uid_order(checked)
    twice = first_duplicate(checked[order])
    if twice is not None:
        uid = uids_to_hex(checked[order[twice]:order[twice] + 1])[0]
        if plan.mode == "uid":
            raise FlytInputError(f"the score files at {plan.where} list uid {uid} more than once")
        raise FlytInputError(f"two rows of the score files at {plan.where} join to the same pool example (uid {uid}): "
                             "the download holds that uid under two keys")
    out = np.zeros(int(hit.sum()), dtype=plan.rows_dtype("pos"))
    out["pos"] = members["pos"][at[hit]]
    out["v"] = rows["v"][hit]
    starts = np.array([pool.shards[g[0]].offset for g in plan.groups])
    _scatter(plan, "placed", b, out, np.searchsorted(starts, out["pos"], side="right") - 1, len(plan.groups))
    return len(out)


def write_group(task: Task) -> int:
    """One group of metadata shards: each shard's fields in pool order (``cols/<shard>.npy``, float32
    rows x fields, NaN where no row joined)."""
    plan, g, pool = task.plan, task.index, task.pool
    placed = _gather(plan, "placed", g, plan.rows_dtype("pos"))
    for i in plan.groups[g]:
        s = pool.shards[i]
        path = shard_values_path(plan.folder, s.parquet)
        if path.is_file():
            continue
        mine = placed[(placed["pos"] >= s.offset) & (placed["pos"] < s.offset + s.num_rows)]
        values = np.full((s.num_rows, len(plan.fields)), np.nan, dtype="<f4")
        values[mine["pos"] - s.offset] = mine["v"]
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, values)
    return len(placed)


def shard_values_path(folder: str | os.PathLike, parquet: str) -> Path:
    """Where a metadata shard's imported fields are (named as the input store names its files)."""
    from ..store import shard_stem

    return Path(folder) / "cols" / f"{shard_stem(parquet)}.npy"


def correlation_task(task: Task) -> tuple[float, ...]:
    """One group's moments of a field against a pool column (:func:`.score_rows.correlation_part`)."""
    field, name = task.part
    total = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for i in task.plan.groups[task.index]:
        s = task.pool.shards[i]
        column = task.pool.read_shard(s, [name]).columns[name]
        values = load(shard_values_path(task.plan.folder, s.parquet), mapped=True)[:, field]
        total = merge_parts(total, correlation_part(np.asarray(values), column))
    return total


# ------------------------------------------------------------------------------ the driver


def run_join(plan: Plan, pool: Pool, schema: Any, run: Runner, *, progress: bool) -> dict[str, int]:
    """Every pass of the join (module docstring), each a set of tasks given to ``run``; the counts
    one machine's import records: score rows, rows whose key is the download's, rows placed."""
    peaks: dict[str, int] = {}

    def stage(fn: Callable, tasks: Sequence[Any], desc: str) -> list[Any]:
        out: list[Any] = [None] * len(tasks)
        with progress_bar(total=len(tasks), desc=desc, unit="task", disable=not progress) as bar:
            for i, (result, peak, worker) in run(measured, [(fn, t) for t in tasks]):
                out[i] = result
                peaks[worker] = max(peaks.get(worker, 0), peak)
                bar.update(1)
        return out

    b = range(plan.buckets)
    if plan.mode == "key":
        from ..shards import check_folder

        _, _, tars = check_folder(plan.shards_dir)
        chunks = [tuple(tars[i:i + DOWNLOAD_TASKS_SHARDS]) for i in range(0, len(tars), DOWNLOAD_TASKS_SHARDS)]
        stage(map_downloads, [Task(plan, i, part=c) for i, c in enumerate(chunks)], "join: reading shard keys")
    stage(map_scores, [Task(plan, i, part=(schema, p)) for i, p in enumerate(schema.files)],
          "join: reading score files")
    stage(map_pool, [Task(plan, i, pool) for i in range(len(plan.groups))], "join: reading the pool's uids")
    if plan.mode == "key":
        counts = stage(join_keys_bucket, [Task(plan, i) for i in b], "join: keys to uids")
        rows, known = sum(c[0] for c in counts), sum(c[1] for c in counts)
    else:
        rows = known = None
    placed = sum(stage(join_uids_bucket, [Task(plan, i, pool) for i in b], "join: uids to the pool"))
    stage(write_group, [Task(plan, g, pool) for g in range(len(plan.groups))], "join: writing the fields")
    if rows is None:
        rows = sum(_written(p) for p in (Path(plan.folder) / "scores").glob("*[0-9].npy"))
        known = placed
    return {"rows": int(rows), "known": int(known), "placed": int(placed),
            "worker_peak_rss_bytes": sorted(peaks.values(), reverse=True)}


def measured(job: tuple[Callable, Any]) -> tuple[Any, int, str]:
    """``fn(task)`` of ``job = (fn, task)``, with the peak resident memory of the process that ran it
    and which process that was (host and pid): what the sidecar says of the workers."""
    fn, task = job
    return fn(task), peak_rss_bytes(), f"{socket.gethostname()}:{os.getpid()}"


def check_correlation(plan: Plan, pool: Pool, field: str, column: str, run: Runner) -> tuple[float, ...]:
    """A field's moments against a pool column over the whole pool, one task per shard group."""
    total = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    parts: list[Any] = [None] * len(plan.groups)
    for i, (part, _, _) in run(measured, [(correlation_task, Task(plan, g, pool, (plan.fields.index(field), column)))
                                          for g in range(len(plan.groups))]):
        parts[i] = part
    for part in parts:  # merged in group order: the same result whatever order the tasks finished in
        total = merge_parts(total, part)
    return total
