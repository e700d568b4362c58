"""Inputs that already exist as numbers: a pool column (``column:NAME``) and a per-uid file
(``file:PATH``, e.g. HYPE scores computed with HYPE's own code)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...errors import FlytInputError, quote
from ...io import atomic_path
from ...uids import lookup
from .base import FitContext, Provider, register_provider


@register_provider
class PoolColumnInput(Provider):
    kind = "column"
    help = "a numeric column of the pool's parquet files (e.g. the DataComp CLIP scores)"
    positional = ("name",)

    def __init__(self, spec: str, args: dict[str, Any]):
        super().__init__(spec, args)
        self.columns = (args["name"],)

    def default_name(self) -> str:
        return self.args["name"]

    def fit(self, ctx: FitContext) -> Any:
        if self.args["name"] not in ctx.pool.column_names:
            raise FlytInputError(f"input {quote(self.spec)}: the pool has no column {quote(self.args['name'])} "
                                 f"(columns: {', '.join(ctx.pool.column_names)})")
        return None

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        values = data.columns[self.args["name"]]
        if values.dtype.kind not in "biuf":
            raise FlytInputError(f"column {self.args['name']!r} of {data.shard.parquet} holds {values.dtype} "
                                 "values, not numbers")
        return values.astype(np.float32)


@register_provider
class UidFileInput(Provider):
    kind = "file"
    help = "external per-uid scores: parquet, csv (columns uid, score) or npy (a uid field and a score field)"
    positional = ("path",)
    columns = ("uid",)

    def default_name(self) -> str:
        stem = os.path.basename(self.args["path"]).split(".")[0]
        return f"file_{stem}"

    def sources(self) -> list[str]:
        return [self.args["path"]]

    def fit(self, ctx: FitContext) -> Any:
        from ...scores import read_uid_scores

        # sorted, duplicates refused; a row without a score leaves its uid without a value (`missing` decides)
        uids, values = read_uid_scores(self.args["path"], drop_missing=True)
        ctx.record["source_uids"] = len(uids)  # those that match no pool example are counted in the manifest
        out = ctx.work_dir / f"{ctx.name}.scores.npz"
        with atomic_path(out) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, uids=uids, values=values.astype(np.float32))
        return str(out)

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        return values_by_uid(state, data.columns["uid"])


def values_by_uid(path: str, query: np.ndarray) -> np.ndarray:
    """float32 values for the ``query`` uids from an npz of sorted ``uids`` and their ``values``
    (NaN where a uid is absent)."""
    with np.load(path) as z:
        uids, values = z["uids"], z["values"]
    out = np.full(len(query), np.nan, dtype=np.float32)
    if len(uids):
        pos = lookup(uids, query)
        out[pos >= 0] = values[pos[pos >= 0]]
    return out
