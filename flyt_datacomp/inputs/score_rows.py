"""A score file's rows, as the import reads them (batches of its key and numeric columns, the keys as
int64 or uids), and the moments that compare an imported field with a pool column, shard by shard.
Shared by the single-machine import and the join by buckets."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from ..arrow_io import open_parquet
from ..errors import FlytInputError

BATCH_ROWS = 1 << 20  # rows of a score file read at once


def batches(schema: Any, path: str) -> Iterator[Any]:
    """The key column and the numeric columns of one score file (``schema``: its SourceSchema), in batches."""
    try:
        with schema.fs.open(path, "rb") as fh:
            pf = open_parquet(fh)
            yield from pf.iter_batches(batch_size=BATCH_ROWS, columns=[schema.key, *schema.numeric], use_threads=False)
    except Exception as exc:  # pyarrow raises several types for a bad file
        raise FlytInputError(f"cannot read score file {path}: {exc}") from None


def row_keys(col: Any, mode: str, path: str) -> np.ndarray:
    """A batch's keys: webdataset keys as int64, or uids (``mode``: key or uid); missing ones refused."""
    if col.null_count:
        raise FlytInputError(f"score file {path}: {col.null_count} rows have no {mode}")
    if mode == "uid":
        from ..pool import uid_column

        return uid_column(col, path)
    from ..shards import webdataset_keys

    return webdataset_keys(col, path)


def correlation_part(a: np.ndarray, b: np.ndarray) -> tuple[float, ...]:
    """One shard's ``(n, mean a, mean b, M2 a, M2 b, co-moment)`` over the rows where both are finite."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    n = len(a)
    if n == 0:
        return (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    ma, mb = float(a.mean()), float(b.mean())
    da, db = a - ma, b - mb
    return (n, ma, mb, float(da @ da), float(db @ db), float(da @ db))


def merge_parts(x: tuple[float, ...], y: tuple[float, ...]) -> tuple[float, ...]:
    """Two shards' moments combined as if computed over both (Chan, Golub and LeVeque's update)."""
    n1, ma1, mb1, a1, b1, c1 = x
    n2, ma2, mb2, a2, b2, c2 = y
    n = n1 + n2
    if n1 == 0 or n2 == 0:
        return x if n2 == 0 else y
    da, db = ma2 - ma1, mb2 - mb1
    f = n1 * n2 / n
    return (n, ma1 + da * n2 / n, mb1 + db * n2 / n, a1 + a2 + da * da * f, b1 + b2 + db * db * f,
            c1 + c2 + da * db * f)
