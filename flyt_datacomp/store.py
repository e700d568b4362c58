"""The input-score store: per-example inputs kept beside a pool, one parquet file per metadata shard.

Layout of a store folder::

    inputs.json          the pool it belongs to (metadata folder, shard names and row counts) and,
                         per input: its spec, provider kind and version, parameters, missing-value
                         policy and fill value, and count, mean, std, min, max over the pool
    <stem>.parquet       per metadata shard <stem>.parquet of the pool: ``uid`` and one float32
                         column per input, rows in the shard's order (NaN where a provider had no value)
    work/                what providers keep: fitted classifiers, joined per-uid files, image-shard passes
    .lock                locked (by the OS) while a run writes the store; a second writer is refused

A shard file is rewritten (temporary file, then rename) when an input is added, so a kill never
leaves a half-written shard, and a shard that already holds an input's column is never recomputed.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import FlytInputError, quote
from .io import atomic_path, local_path, write_json

MANIFEST = "inputs.json"
FORMAT = 1


def shard_stem(parquet_url: str) -> str:
    return os.path.basename(parquet_url)[: -len(".parquet")]


class InputStore:
    """A store folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = local_path(root, "the input store")
        self.work_dir = self.root / "work"

    # ------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise FlytInputError(f"{self.root} is not an input store (no {MANIFEST}); make one with "
                                 "`flyt-datacomp inputs compute`") from None
        except (OSError, ValueError) as exc:
            raise FlytInputError(f"cannot read {self.manifest_path}: {exc}") from None
        if data.get("format") != FORMAT:
            raise FlytInputError(f"{self.manifest_path} has format {data.get('format')!r}; this version reads {FORMAT}")
        return data

    def write_manifest(self, data: dict[str, Any]) -> None:
        write_json(self.manifest_path, data)

    def attach(self, pool) -> dict[str, Any]:
        """Create the store for ``pool``, or check that an existing one belongs to it."""
        shards = [{"stem": shard_stem(s.parquet), "rows": s.num_rows} for s in pool.shards]
        if not self.exists():
            self.root.mkdir(parents=True, exist_ok=True)
            data = {"format": FORMAT, "version": __version__, "metadata_dir": pool.url, "shards": shards, "inputs": {}}
            self.write_manifest(data)
            return data
        data = self.manifest()
        self.check_pool(pool, data)
        return data

    def check_pool(self, pool, data: dict[str, Any] | None = None) -> None:
        data = data or self.manifest()
        mine = [(s["stem"], s["rows"]) for s in data["shards"]]
        theirs = [(shard_stem(s.parquet), s.num_rows) for s in pool.shards]
        if mine != theirs:
            differ = next((f"{a} vs {b}" for a, b in zip(mine, theirs) if a != b), f"{len(mine)} vs {len(theirs)} shards")
            raise FlytInputError(f"the input store {self.root} was made for another pool ({data['metadata_dir']}); "
                                 f"its shards differ from {pool.url}'s ({differ})")

    # ------------------------------------------------------------------ shard files

    def shard_path(self, stem: str) -> Path:
        return self.root / f"{stem}.parquet"

    def shard_columns(self, stem: str) -> set[str]:
        path = self.shard_path(stem)
        if not path.exists():
            return set()
        try:
            return set(pq.read_schema(path).names) - {"uid"}
        except Exception as exc:  # a damaged file: recompute it
            raise FlytInputError(f"store shard {path} is unreadable ({exc}); delete it to recompute it") from None

    def read_shard_columns(self, stem: str, names: list[str]) -> dict[str, np.ndarray]:
        if not names:
            return {}
        table = pq.ParquetFile(self.shard_path(stem)).read(columns=list(names))
        return {n: table.column(n).to_numpy() for n in names}

    def write_shard(self, stem: str, uids: np.ndarray | pa.Array, columns: dict[str, np.ndarray], rows: int) -> None:
        """Add (or replace) ``columns`` in the shard file, atomically."""
        path = self.shard_path(stem)
        if path.exists():
            table = pq.read_table(path)
            if table.num_rows != rows:
                raise FlytInputError(f"store shard {path} has {table.num_rows} rows, the metadata shard {rows}")
        else:
            table = pa.table({"uid": uids})
        for name, values in columns.items():
            values = np.asarray(values, dtype=np.float32)
            if values.shape != (rows,):
                raise RuntimeError(f"input {name} gave shape {values.shape} for a shard of {rows} rows")
            column = pa.array(values, type=pa.float32())
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, column)
            else:
                table = table.append_column(name, column)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    # ------------------------------------------------------------------ reading inputs

    def input_names(self) -> list[str]:
        """The complete inputs, in the order they were added."""
        return [n for n, e in self.manifest()["inputs"].items() if e.get("status") == "complete"]

    def entry(self, name: str) -> dict[str, Any]:
        inputs = self.manifest()["inputs"]
        if name not in inputs:
            raise FlytInputError(f"the input store {self.root} has no input {quote(name)} "
                                 f"(inputs: {', '.join(inputs) or 'none'})")
        entry = inputs[name]
        if entry.get("status") != "complete":
            raise FlytInputError(f"input {quote(name)} of the store {self.root} is not complete "
                                 f"({entry.get('status')}); run `flyt-datacomp inputs compute` again")
        return entry

    def iter_columns(self, names: list[str], pool) -> Iterator[dict[str, np.ndarray]]:
        """The inputs, shard by shard in pool order, as float64 with missing values filled."""
        fills = {n: self.entry(n).get("fill_value") for n in names}
        self.check_pool(pool)
        for shard in pool.shards:
            values = self.read_shard_columns(shard_stem(shard.parquet), names)
            out = {}
            for n in names:
                v = values[n].astype(np.float64)
                if fills[n] is not None:
                    v[np.isnan(v)] = fills[n]
                out[n] = v
            yield out

    def columns(self, names: list[str], pool) -> dict[str, np.ndarray]:
        """Several inputs over the whole pool (float64, pool order), read in one pass."""
        parts = list(self.iter_columns(list(names), pool))
        return {n: np.concatenate([p[n] for p in parts]) for n in names}

    def column(self, name: str, pool) -> np.ndarray:
        """One input over the whole pool (float64, pool order)."""
        return self.columns([name], pool)[name]

    # ------------------------------------------------------------------ one writer at a time

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (an OS-level lock on ``.lock``: released by the OS when the
        holder dies, so there are no stale locks); a second writer is refused at once."""
        import filelock

        self.root.mkdir(parents=True, exist_ok=True)
        lock = filelock.FileLock(str(self.root / ".lock"), timeout=0)
        try:
            lock.acquire()
        except filelock.Timeout:
            raise FlytInputError(f"another run is writing the input store {self.root}; wait for it to finish") from None
        try:
            yield
        finally:
            lock.release()
