"""``inputs compute``: fill a store with input scores, shard by shard, resumably.

The driver parses the specs, checks them against what the store already holds, fits each provider
once, then plans one task per metadata shard that still lacks some of the inputs. A task
(:func:`run_shard_task`, a pure function) reads the shard's columns and npz arrays, runs the
providers in order (a later input may use an earlier one, e.g. an M-FLYT model over stored
inputs) and returns the new columns; the driver writes them into the shard's store file (on a Ray
cluster the task writes the file itself, so no values pass through the driver). When
every shard holds an input, its missing values are checked against the policy and its pool
statistics are recorded in ``inputs.json``.

An input's identity is its spec, provider version and parameters, the size and sha256 of every file
it reads, and the computations of the stored inputs it reads. A run that finds an input of the same
name with another identity (settings changed, or a score file, checkpoint or target file changed
since, even between a kill and the resume) refuses it unless told to ``recompute`` it, so one input
never mixes values of two computations. ``recompute`` starts the input afresh: a new token, so no
shard's old column counts as done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import __version__
from ..arrow_io import read_parquet
from ..errors import FlytInputError, quote
from ..io import dumps
from ..pool import MetadataShard, Pool
from ..progress import progress_bar
from ..scores.files import MISSING_POLICIES
from ..store import InputStore, hand_edited, new_token, pool_read, pool_stamps, shard_stem
from . import executors
from .providers import FitContext, Provider, parse_spec
from .providers.base import source_identities

_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


@dataclasses.dataclass
class ShardTask:
    """Everything one shard's computation needs (picklable)."""

    pool: Pool
    shard: MetadataShard
    store_root: str
    inputs: list[tuple[str, Provider, Any]]  # (name, provider, fitted state), in order
    stored: list[str]  # inputs already in the store that providers of this task read
    manifest_shard: dict[str, Any] = dataclasses.field(default_factory=dict)  # the store's record of this shard
    stored_entries: dict[str, Any] = dataclasses.field(default_factory=dict)  # manifest entries of ``stored``
    # on a cluster: every input's token; the task then writes its shard's store file itself (the store lies
    # on a file system every node mounts) and returns no values, so nothing pool-sized passes the driver
    write_tokens: dict[str, str] | None = None


@dataclasses.dataclass
class TaskData:
    """What a provider's ``compute`` sees: the shard's columns and arrays, and other inputs."""

    shard: MetadataShard
    columns: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]


def run_shard_task(task: ShardTask) -> tuple[str, dict[str, np.ndarray | None], Any, dict[str, dict] | None]:
    """The per-shard computation: (shard stem, {input name: float32 values}, the shard's uid column,
    {input name: what it read from the pool shard, for the inputs that read its columns or arrays});
    with ``write_tokens``, the shard's store file written here and (stem, {input name: None}, None, None)."""
    columns = sorted({c for _, p, _ in task.inputs for c in p.columns} - {"uid"})
    keys = sorted({k for _, p, _ in task.inputs for k in p.npz_keys})
    stamps = pool_stamps(task.pool, task.shard)  # before reading: a file changed meanwhile shows a new stamp
    read = task.pool.read_shard(task.shard, ["uid", *columns], keys)
    with task.pool.fs.open(task.shard.parquet, "rb") as fh:
        uid_hex = read_parquet(fh, ["uid"]).column("uid").combine_chunks()
    stem = shard_stem(task.shard.parquet)
    stored = InputStore(task.store_root).read_inputs(task.manifest_shard, task.stored, task.stored_entries,
                                                     reader=False)
    for name, values in stored.items():  # a complete stored input is read as its readers read it: filled
        fill = task.stored_entries[name].get("fill_value")
        if fill is not None and task.stored_entries[name]["status"] == "complete":
            values[np.isnan(values)] = fill
    data = TaskData(task.shard, read.columns, read.arrays, stored)
    out, reads = {}, {}
    for name, provider, state in task.inputs:
        used = {c: read.columns[c] for c in provider.columns if c != "uid"}
        arrays = {k: read.arrays[k] for k in provider.npz_keys}
        if used or arrays:
            reads[name] = pool_read(stamps, used, arrays)
        values = np.asarray(provider.compute(data, state, stem), dtype=np.float32)
        if values.shape != (task.shard.num_rows,):
            raise FlytInputError(f"input {name} gave {values.shape} values for {task.shard.parquet} "
                                 f"({task.shard.num_rows} rows)")
        out[name] = data.inputs[name] = values
    if task.write_tokens is not None:
        InputStore(task.store_root).write_shard(stem, uid_hex, out, task.shard.num_rows,
                                                task.manifest_shard["uid_sha256"], task.write_tokens, reads)
        return stem, dict.fromkeys(out), None, None
    return stem, out, uid_hex, reads


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when torch sees a GPU, else cpu; a CUDA device on a machine without CUDA (or
    a device torch does not know) is refused here, before any work. ``cpu`` is always there: torch
    (half a gigabyte of memory once loaded) is not loaded for it."""
    if device == "cpu":
        return device
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise FlytInputError(f"`device` {device!r} is not a torch device ({exc})", params=["device"]) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlytInputError(f"`device` {device} asks for CUDA, but torch finds no CUDA device on this machine; "
                                 "use `device` cpu (or auto)", params=["device"])
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlytInputError(f"`device` {device}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                                 params=["device"])
    return device


def compute_inputs(metadata_dir: str, store_dir: str, specs: Sequence[str], *, workers: int = 1,
                   ray_address: str | None = None, shards_dir: str | None = None, missing: str = "error",
                   device: str = "auto", seed: int = 0, recompute: Sequence[str] = (),
                   progress: bool = True, partitions: int | None = None) -> dict[str, Any]:
    """Compute the inputs ``specs`` into the store at ``store_dir``; return their manifest entries.
    With ``ray_address`` the shard tasks, and the pool-wide passes of the providers that have them
    (an import's join, cut into ``partitions`` buckets), run on that Ray cluster, in one session."""
    if missing not in MISSING_POLICIES:
        raise FlytInputError(f"`missing` must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}", params=["missing"])
    parsed = [parse_spec(s) for s in specs]
    names = [n for n, _ in parsed]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise FlytInputError(f"two inputs are named {quote(dup)}; give one a name with NAME=SPEC")
    unknown = next((n for n in recompute if n not in names), None)
    if unknown is not None:
        raise FlytInputError(f"`recompute` names {quote(unknown)}, which is not an input of this run (inputs of this "
                             f"run: {', '.join(names)})", params=["recompute"])
    device = resolve_device(device)
    pool = Pool(metadata_dir, progress=progress)
    for name, provider in parsed:
        if name in pool.column_names and not (provider.kind == "column" and provider.args.get("name") == name):
            raise FlytInputError(f"input name {quote(name)} is a column of the pool at {pool.url}: M-FLYT reads the "
                                 "pool's column by that name, never this input; give it another name (NAME=SPEC)")
    store = InputStore(store_dir)
    store.check_creatable()  # before the lock file is made: a foreign folder is left exactly as it was
    try:
        with store.locked(), (executors.ray_session(ray_address) if ray_address else contextlib.nullcontext()):
            return _compute_locked(pool, store, parsed, workers=workers, ray_address=ray_address,
                                   shards_dir=shards_dir, missing=missing, device=device, seed=seed,
                                   recompute=set(recompute), progress=progress, partitions=partitions)
    except OSError as exc:
        if exc.errno not in _DISK_ERRORS:
            raise
        where = exc.filename or store.root
        raise FlytInputError(f"cannot write {where}: {exc.strerror or exc}; the store's earlier files are kept as "
                             "they were: free some space (or fix the folder) and run again to resume") from None


def _compute_locked(pool: Pool, store: InputStore, parsed: list[tuple[str, Provider]], *, workers: int,
                    ray_address: str | None, shards_dir: str | None, missing: str, device: str, seed: int,
                    recompute: set[str], progress: bool, partitions: int | None = None) -> dict[str, Any]:
    manifest = store.attach(pool)
    entries = manifest["inputs"]
    order = [n for n, _ in parsed]
    previous = {}
    edited = {n for n, e in entries.items() if hand_edited(e)}
    for name in edited & set(order):
        entries[name]["status"] = "computing"  # its statistics are restored when this run finalises it
    keep_seals = edited - set(order)  # other hand-edited entries stay recognisable
    for i, (name, provider) in enumerate(parsed):
        record = _identity(provider, progress)
        old = entries.get(name)
        if old is not None and name not in recompute:
            _check_same(name, old, record)
            previous[name] = dict(old)
        if old is None or name in recompute:
            entries[name] = {**record, "token": new_token(), "status": "computing", "device": device}
        reads = {}
        for needed in provider.stored_inputs(pool):
            if needed not in entries or (needed in order and order.index(needed) > i):
                raise FlytInputError(f"input {quote(name)} reads input {quote(needed)}, which is neither in the store "
                                     "nor computed before it in this run; compute it first")
            reads[needed] = entries[needed]["token"]
        old_reads = entries[name].get("reads")
        if old_reads is not None and old_reads != reads:
            changed = next(n for n in sorted(set(old_reads) | set(reads)) if old_reads.get(n) != reads.get(n))
            raise FlytInputError(f"input {quote(name)} reads input {quote(changed)} of the store, which has been "
                                 f"recomputed since {name} was computed from it; set `recompute` {name} to recompute "
                                 "it from the new values", params=["recompute"])
        entries[name]["reads"] = reads
        entries[name]["missing"] = missing
    _check_pool_reads(store, pool, {n: entries[n]["token"] for n in order if n not in recompute})
    store.write_manifest(manifest, keep_seals=keep_seals)
    try:
        store.work_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FlytInputError(f"{store.work_dir} is not a folder: the input store keeps providers' files there") from None
    fitted = []
    shared: dict[Any, Any] = {}
    run_tasks = None if not ray_address else lambda fn, tasks: executors.run_ray(fn, tasks, ray_address)
    for name, provider in parsed:
        record: dict[str, Any] = {}
        ctx = FitContext(pool=pool, name=name, work_dir=store.work_dir, seed=seed, device=device,
                         progress=progress, shards_dir=shards_dir, sources=entries[name]["sources"], record=record,
                         recompute=name in recompute, previous=previous.get(name), shared=shared,
                         run_tasks=run_tasks, partitions=partitions)
        fitted.append((name, provider, provider.fit(ctx)))
        entries[name].update(record)
    store.write_manifest(manifest, keep_seals=keep_seals)
    started = time.perf_counter()
    _run(pool, store, manifest, fitted, workers, ray_address, progress)
    for name, _, _ in fitted:
        entries[name].update(_finalise(store, pool, manifest, name, missing))
        entries[name]["seconds"] = round(time.perf_counter() - started, 1)
        entries[name]["package_version"] = __version__
        store.write_manifest(manifest, keep_seals=keep_seals)
    return {name: entries[name] for name in order}


def _check_pool_reads(store: InputStore, pool: Pool, tokens: dict[str, str]) -> None:
    """Refuse to resume or reuse an input (of ``tokens``: name -> token) computed from pool values that
    have changed since (metadata regenerated in place with the same uids); record new stamps where
    only the files' times changed."""
    for shard in pool.shards:
        changed, restamped = store.changed_pool_reads(pool, shard, tokens)
        if changed:
            name, why = next(iter(changed.items()))
            raise FlytInputError(f"input {quote(name)} was computed from the pool, but {why}. Nothing was recomputed: "
                                 f"set `recompute` {name} to recompute it from the pool as it is now",
                                 params=["recompute"])
        if restamped:
            store.restamp(shard_stem(shard.parquet), restamped)


def _identity(provider: Provider, progress: bool = False) -> dict[str, Any]:
    """What an input's values depend on, as the manifest holds it (JSON types)."""
    import json

    record = {"spec": provider.spec, "kind": provider.kind, "provider_version": provider.version,
              "params": provider.params(), "sources": source_identities(provider.sources(), progress=progress)}
    return json.loads(dumps(record))


def _check_same(name: str, old: dict[str, Any], record: dict[str, Any]) -> None:
    """Refuse to resume or reuse an input whose identity changed (settings, or the files it reads)."""
    if any(old.get(k) != record[k] for k in record if k != "sources"):
        raise FlytInputError(
            f"the store already holds an input {quote(name)} made from {old['spec']} with other settings; "
            f"name this one differently (NAME=SPEC) or set `recompute` {name}", params=["recompute"])
    then, now = old["sources"], record["sources"]
    if then == now:
        return
    changes = []
    for path in sorted(set(then) | set(now)):
        a, b = then.get(path), now.get(path)
        if a == b:
            continue
        if a is None:
            changes.append(f"{path} is new")
        elif b is None:
            changes.append(f"{path} is gone")
        else:
            changes.append(f"{path} changed ({_file_id(a)} then, {_file_id(b)} now)")
    state = "complete" if old["status"] == "complete" else "partly computed"
    raise FlytInputError(
        f"input {quote(name)} ({state} in the store) was computed from files that have changed since: "
        f"{'; '.join(changes)}. Nothing was recomputed: set `recompute` {name} to recompute it from the files as they "
        "are now, or name this one differently (NAME=SPEC)", params=["recompute"])


def _file_id(identity: Any) -> str:
    if not isinstance(identity, dict):
        return "unknown"
    return f"{identity.get('bytes', 0):,} bytes, sha256 {str(identity.get('sha256', ''))[:12]}"


def _run(pool: Pool, store: InputStore, manifest: dict[str, Any], fitted, workers: int, ray_address: str | None,
         progress: bool) -> None:
    entries = manifest["inputs"]
    tokens = {n: e["token"] for n, e in entries.items()}
    all_names = {n for n, _, _ in fitted}
    tasks = []
    for shard, record in zip(pool.shards, manifest["shards"]):
        stem = shard_stem(shard.parquet)
        held = store.held_inputs(stem, shard.num_rows, record["uid_sha256"], tokens)
        todo = [(n, p, s) for n, p, s in fitted if n not in held]
        if todo:
            computed_here = {n for n, _, _ in todo}
            needs = {c for _, p, _ in todo for c in p.stored_inputs(pool)}
            absent = needs - held - computed_here
            if absent:
                raise FlytInputError(f"inputs {', '.join(sorted(absent))} are needed but not in the store "
                                     f"(shard {stem}); compute them first")
            stored = sorted((needs & held) - computed_here)
            tasks.append(ShardTask(pool, shard, str(store.root), todo, stored, record,
                                   {n: entries[n] for n in stored}, tokens if ray_address else None))
    bars = {n: progress_bar(total=sum(any(t[0] == n for t in task.inputs) for task in tasks), desc=n, unit="shard",
                            disable=not progress) for n in all_names}
    gpus = 1.0 if any(p.uses_gpu for _, p, _ in fitted) and _cuda() else 0.0
    runner = (executors.run_ray(run_shard_task, tasks, ray_address, gpus_per_task=gpus) if ray_address
              else executors.run_processes(run_shard_task, tasks, workers))
    try:
        for i, (stem, columns, uids, reads) in runner:
            task = tasks[i]
            if task.write_tokens is None:  # else the task wrote its shard's file
                store.write_shard(stem, uids, columns, task.shard.num_rows, task.manifest_shard["uid_sha256"], tokens,
                                  reads)
            for name in columns:
                bars[name].update(1)
    finally:
        runner.close()  # stops the executor now (its workers, a Ray instance it started), not when collected
        for bar in bars.values():
            bar.close()


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _finalise(store: InputStore, pool: Pool, manifest: dict[str, Any], name: str, missing: str) -> dict[str, Any]:
    """Pool statistics of a finished input, after its missing-value policy: one pass over the store's
    shards, holding one shard's values (each shard's count, mean and squared deviations, merged)."""
    entries = manifest["inputs"]
    n = absent = infinite = 0
    first = None
    kept = (0, 0.0, 0.0)  # count, mean, squared deviations of the values present
    lo, hi = math.inf, -math.inf
    for s in manifest["shards"]:
        part = store.read_inputs(s, [name], entries, reader=False)[name].astype(np.float64)
        gone = np.isnan(part)
        if first is None and gone.any():
            first = n + int(np.flatnonzero(gone)[0])
        n += len(part)
        absent += int(gone.sum())
        part = part[~gone]
        finite = np.isfinite(part)
        infinite += int((~finite).sum())
        part = part[finite]
        if len(part):
            mean = part.mean()
            kept = _merged(kept, (len(part), float(mean), float(np.square(part - mean).sum())))
            lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
    fill = None
    if absent:
        if missing == "error" or absent == n:
            raise FlytInputError(f"input {quote(name)} has no value for {absent:,} of {n:,} examples (the first at "
                                 f"{pool.locate(first)}); choose `missing` min or mean", params=["missing"])
    if infinite:
        raise FlytInputError(f"input {quote(name)} has {infinite} infinite values")
    total = kept
    if absent:
        fill = lo if missing == "min" else kept[1]
        total = _merged(kept, (absent, fill, 0.0))
        lo, hi = min(lo, fill), max(hi, fill)
    out = {"status": "complete", "count": n, "missing_count": absent, "fill_value": fill,
           "mean": total[1], "std": math.sqrt(total[2] / n) if n else 0.0, "min": lo, "max": hi}
    given = entries[name].get("source_uids")
    if given is not None:  # a per-uid file: its uids that matched no pool example
        out["extra_uids"] = max(0, int(given) - (n - absent))
    return out


def _merged(x: tuple[int, float, float], y: tuple[int, float, float]) -> tuple[int, float, float]:
    """(count, mean, squared deviations) of two parts together (Chan, Golub and LeVeque's update)."""
    if not x[0] or not y[0]:
        return x if y[0] == 0 else y
    n = x[0] + y[0]
    d = y[1] - x[1]
    return n, x[1] + d * y[0] / n, x[2] + y[2] + d * d * x[0] * y[0] / n
