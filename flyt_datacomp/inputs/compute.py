"""``inputs compute``: fill a store with input scores, shard by shard, resumably.

The driver parses the specs, checks them against what the store already holds, fits each provider
once, then plans one task per metadata shard that still lacks some of the inputs. A task
(:func:`run_shard_task`, a pure function) reads the shard's columns and npz arrays, runs the
providers in order (a later input may use an earlier one, e.g. an M-FLYT model over stored
inputs) and returns the new columns; the driver writes them into the shard's store file. When
every shard holds an input, its missing values are checked against the policy and its pool
statistics are recorded in ``inputs.json``.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .. import __version__
from ..errors import FlytInputError, quote
from ..pool import MetadataShard, Pool
from ..progress import progress_bar
from ..store import InputStore, shard_stem
from . import executors
from .providers import FitContext, Provider, parse_spec

MISSING_POLICIES = ("error", "min", "mean")


@dataclasses.dataclass
class ShardTask:
    """Everything one shard's computation needs (picklable)."""

    pool: Pool
    shard: MetadataShard
    store_root: str
    inputs: list[tuple[str, Provider, Any]]  # (name, provider, fitted state), in order
    stored: list[str]  # inputs already in the store that providers of this task read


@dataclasses.dataclass
class TaskData:
    """What a provider's ``compute`` sees: the shard's columns and arrays, and other inputs."""

    shard: MetadataShard
    columns: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]
    inputs: dict[str, np.ndarray]


def run_shard_task(task: ShardTask) -> tuple[str, dict[str, np.ndarray], Any]:
    """The per-shard computation: (shard stem, {input name: float32 values}, the shard's uid column)."""
    import pyarrow.parquet as pq

    columns = sorted({c for _, p, _ in task.inputs for c in p.columns} - {"uid"})
    keys = sorted({k for _, p, _ in task.inputs for k in p.npz_keys})
    read = task.pool.read_shard(task.shard, ["uid", *columns], keys)
    with task.pool.fs.open(task.shard.parquet, "rb") as fh:
        # use_threads=False: the file is a Python object (see Pool._read_columns)
        uid_hex = pq.ParquetFile(fh).read(columns=["uid"], use_threads=False).column("uid").combine_chunks()
    stem = shard_stem(task.shard.parquet)
    store = InputStore(task.store_root)
    data = TaskData(task.shard, read.columns, read.arrays, store.read_shard_columns(stem, task.stored))
    out = {}
    for name, provider, state in task.inputs:
        values = np.asarray(provider.compute(data, state, stem), dtype=np.float32)
        if values.shape != (task.shard.num_rows,):
            raise FlytInputError(f"input {name} gave {values.shape} values for {task.shard.parquet} "
                                 f"({task.shard.num_rows} rows)")
        out[name] = data.inputs[name] = values
    return stem, out, uid_hex


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover - torch is a dependency
        return "cpu"


def compute_inputs(metadata_dir: str, store_dir: str, specs: Sequence[str], *, workers: int = 1,
                   ray_address: str | None = None, shards_dir: str | None = None, missing: str = "error",
                   device: str = "auto", seed: int = 0, recompute: Sequence[str] = (),
                   progress: bool = True) -> dict[str, Any]:
    """Compute the inputs ``specs`` into the store at ``store_dir``; return their manifest entries."""
    if missing not in MISSING_POLICIES:
        raise FlytInputError(f"`missing` must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}", params=["missing"])
    parsed = [parse_spec(s) for s in specs]
    names = [n for n, _ in parsed]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise FlytInputError(f"two inputs are named {quote(dup)}; give one a name with NAME=SPEC")
    pool = Pool(metadata_dir, progress=progress)
    store = InputStore(store_dir)
    device = resolve_device(device)
    with store.locked():
        manifest = store.attach(pool)
        entries = manifest["inputs"]
        for name, provider in parsed:
            record = {"spec": provider.spec, "kind": provider.kind, "provider_version": provider.version,
                      "params": provider.params()}
            old = entries.get(name)
            same = old is not None and all(old.get(k) == v for k, v in record.items())
            if old is not None and not same and name not in recompute:
                raise FlytInputError(
                    f"the store already holds an input {quote(name)} made from {old['spec']} with other settings; "
                    f"name this one differently (NAME=SPEC) or set `recompute` {name}", params=["recompute"])
            if not same or name in recompute:
                entries[name] = {**record, "status": "computing", "device": device}
            entries[name]["missing"] = missing
        store.write_manifest(manifest)
        store.work_dir.mkdir(parents=True, exist_ok=True)
        fitted = []
        for name, provider in parsed:
            ctx = FitContext(pool=pool, name=name, work_dir=store.work_dir, seed=seed, device=device,
                             progress=progress, shards_dir=shards_dir)
            fitted.append((name, provider, provider.fit(ctx)))
        started = time.perf_counter()
        _run(pool, store, fitted, recompute, workers, ray_address, progress)
        for name, _, _ in fitted:
            entries[name].update(_finalise(store, pool, name, missing))
            entries[name]["seconds"] = round(time.perf_counter() - started, 1)
            entries[name]["package_version"] = __version__
            store.write_manifest(manifest)
    return {name: entries[name] for name in names}


def _run(pool: Pool, store: InputStore, fitted, recompute, workers: int, ray_address: str | None,
         progress: bool) -> None:
    all_names = {n for n, _, _ in fitted}
    tasks = []
    for shard in pool.shards:
        stem = shard_stem(shard.parquet)
        have = store.shard_columns(stem)
        todo = [(n, p, s) for n, p, s in fitted if n not in have or n in recompute]
        if todo:
            computed_here = {n for n, _, _ in todo}
            needs = {c for _, p, s in todo for c in _stored_needs(p, s)}
            missing = needs - have - computed_here
            if missing:
                raise FlytInputError(f"inputs {', '.join(sorted(missing))} are needed but not in the store "
                                     f"(shard {stem}); compute them first")
            tasks.append(ShardTask(pool, shard, str(store.root), todo, sorted((needs & have) - computed_here)))
    bars = {n: progress_bar(total=sum(any(t[0] == n for t in task.inputs) for task in tasks), desc=n, unit="shard",
                            disable=not progress) for n in all_names}
    gpus = 1.0 if any(p.uses_gpu for _, p, _ in fitted) and _cuda() else 0.0
    runner = (executors.run_ray(run_shard_task, tasks, ray_address, gpus_per_task=gpus) if ray_address
              else executors.run_processes(run_shard_task, tasks, workers))
    try:
        for i, (stem, columns, uids) in runner:
            store.write_shard(stem, uids, columns, tasks[i].shard.num_rows)
            for name in columns:
                bars[name].update(1)
    finally:
        for bar in bars.values():
            bar.close()


def _stored_needs(provider: Provider, state: Any) -> list[str]:
    return list(state.get("stored_inputs", [])) if isinstance(state, dict) else []


def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def _finalise(store: InputStore, pool: Pool, name: str, missing: str) -> dict[str, Any]:
    """Pool statistics of a finished input, after its missing-value policy."""
    values = np.concatenate([store.read_shard_columns(shard_stem(s.parquet), [name])[name].astype(np.float64)
                             for s in pool.shards])
    absent = np.isnan(values)
    fill = None
    if absent.any():
        if missing == "error" or absent.all():
            first = int(np.flatnonzero(absent)[0])
            raise FlytInputError(f"input {quote(name)} has no value for {int(absent.sum()):,} of {len(values):,} "
                                 f"examples (the first at {pool.locate(first)}); choose `missing` min or mean",
                                 params=["missing"])
        fill = float(np.nanmin(values) if missing == "min" else np.nanmean(values))
        values[absent] = fill
    finite = np.isfinite(values)
    if not finite.all():
        raise FlytInputError(f"input {quote(name)} has {int((~finite).sum())} infinite values")
    return {"status": "complete", "count": int(len(values)), "missing_count": int(absent.sum()), "fill_value": fill,
            "mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
            "max": float(values.max())}
