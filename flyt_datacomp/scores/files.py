"""Per-uid score files: parquet or csv with columns ``uid`` and ``score``, or an ``.npy`` record array."""

from __future__ import annotations

import fsspec
import numpy as np
import pyarrow as pa

from ..arrow_io import read_csv, read_parquet
from ..errors import FlytInputError, quote
from ..pool import Pool, uid_column
from ..uids import UID_DTYPE, first_duplicate, hex_to_uids, lookup, uid_order, uids_to_hex
from .base import as_float


def read_uid_scores(source: str, *, drop_missing: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A per-uid score file as (uids sorted, float64 scores in that order); duplicates refused, and so
    are rows without a score (empty, NaN, n/a) unless ``drop_missing`` (their uids then have none).

    Parquet or csv with columns ``uid`` (32 hex characters, or in parquet the package's ``u8,u8``
    form: a struct of two unsigned 64-bit fields) and ``score``, or an ``.npy`` record array with a
    ``uid`` field (hex strings, or ``u8,u8`` records as a subset file holds them) or ``f0``/``f1``
    fields, and a ``score`` field.
    """
    file_uids, file_scores = _read_score_table(source)
    bad = ~np.isfinite(file_scores)
    if bad.any():
        absent = np.isnan(file_scores)
        if (bad & ~absent).any():
            i = int(np.flatnonzero(bad & ~absent)[0])
            raise FlytInputError(f"score file {source} has {int((bad & ~absent).sum()):,} infinite score(s); the first, "
                                 f"{file_scores[i]}, at {_row(source, i)}, uid {_uid_text(file_uids, i)}")
        if not drop_missing:
            i = int(np.flatnonzero(absent)[0])
            raise FlytInputError(f"score file {source} has {int(absent.sum()):,} missing score(s) (empty, NaN or n/a); "
                                 f"the first at {_row(source, i)}, uid {_uid_text(file_uids, i)}; `missing` min or "
                                 "mean treats them as examples without a score", params=["missing"])
        file_uids, file_scores = file_uids[~absent], file_scores[~absent]
    order = uid_order(file_uids)
    sorted_uids = file_uids[order]
    i = first_duplicate(sorted_uids)
    if i is not None:
        raise FlytInputError(f"score file {source} lists uid {uids_to_hex(sorted_uids[i:i + 1])[0]} more than once")
    return sorted_uids, file_scores[order]


def _read_score_table(source: str) -> tuple[np.ndarray, np.ndarray]:
    """(uids in file order, float64 scores) from a parquet, csv or npy score file."""
    lower = source.lower()
    try:
        with fsspec.open(source, "rb") as fh:
            if lower.endswith(".npy"):
                arr = np.load(fh, allow_pickle=False)
                names = arr.dtype.names or ()
                if "score" not in names or not ({"uid"} <= set(names) or {"f0", "f1"} <= set(names)):
                    raise FlytInputError(f"score file {source} must be a record array with a 'score' field and "
                                         f"a 'uid' (or 'f0', 'f1') field; fields: {list(names)}")
                uids = (_uids(arr["uid"], source) if "uid" in names
                        else _pairs(arr["f0"], arr["f1"], source))
                return uids, as_float(arr["score"], f"field 'score' of score file {source}")
            if lower.endswith(".csv"):
                import pyarrow.csv as pcsv

                table = read_csv(fh, convert_options=pcsv.ConvertOptions(column_types={"uid": pa.string()}))
            else:
                table = read_parquet(fh)
    except FlytInputError:
        raise
    except Exception as exc:
        raise FlytInputError(f"cannot read score file {source}: {exc}") from None
    missing = [c for c in ("uid", "score") if c not in table.column_names]
    if missing:
        raise FlytInputError(
            f"score file {source} needs columns 'uid' and 'score'; missing {missing} "
            f"(columns: {table.column_names})"
        )
    column = table.column("uid")
    if pa.types.is_struct(column.type):
        column = column.combine_chunks()
        if column.type.num_fields != 2 or column.null_count:
            raise FlytInputError(f"score file {source}: column 'uid' is a {column.type}; a uid is 32 hex characters or "
                                 "a struct of two unsigned 64-bit numbers (u8,u8)")
        file_uids = _pairs(column.field(0).to_numpy(zero_copy_only=False),
                           column.field(1).to_numpy(zero_copy_only=False), source)
    else:
        file_uids = uid_column(column, source)
    score_col = table.column("score").combine_chunks()
    nulls = score_col.is_null().to_numpy(zero_copy_only=False) if score_col.null_count else None
    values = score_col.to_numpy(zero_copy_only=False)
    if values.dtype.kind in "OUS":  # text: find the first value that is not a number
        for i, v in enumerate(values):
            if v is None:
                continue
            try:
                float(v)
            except (TypeError, ValueError):
                raise FlytInputError(f"score file {source}: the score {quote(v, 40)} at {_row(source, i)}, uid "
                                     f"{_uid_text(file_uids, i)}, is not a number") from None
    if nulls is not None:  # no score: NaN, as a missing value is elsewhere
        values = np.where(nulls, np.nan, values)
    return file_uids, as_float(values, f"column 'score' of score file {source}")


def _row(source: str, i: int) -> str:
    """Where data row ``i`` is in the file: its row, and for a csv its line (the header is line 1)."""
    return f"row {i} (line {i + 2})" if source.lower().endswith(".csv") else f"row {i}"


def _uid_text(uids: np.ndarray, i: int) -> str:
    return str(uids_to_hex(uids[i:i + 1])[0])


def _uids(values: np.ndarray, source: str) -> np.ndarray:
    """A ``uid`` field as ``u8,u8``: hex strings, or records of two unsigned 64-bit numbers."""
    names = values.dtype.names
    if names is None:
        return hex_to_uids(values, source=source)
    if len(names) != 2:
        raise FlytInputError(f"score file {source}: field 'uid' has {len(names)} subfields; a uid is 32 hex "
                             "characters or two unsigned 64-bit numbers (u8,u8)")
    return _pairs(values[names[0]], values[names[1]], source)


def _pairs(high: np.ndarray, low: np.ndarray, source: str) -> np.ndarray:
    """uids from their two halves, which must be unsigned 64-bit integers (as a subset file holds them)."""
    for half in (high, low):
        if half.dtype.kind != "u" or half.dtype.itemsize != 8:
            raise FlytInputError(f"score file {source}: uid halves hold {half.dtype} values; the u8,u8 form holds two "
                                 "unsigned 64-bit integers")
    return np.rec.fromarrays([high, low], dtype=UID_DTYPE).view(np.ndarray)


MISSING_POLICIES = ("error", "min", "mean")


def scores_from_file(pool: Pool, source: str, missing: str = "error") -> tuple[np.ndarray, int, int]:
    """The file's scores in pool order, how many of its uids are not in the pool, and how many pool
    examples it has no score for: an error, or (``missing`` min or mean) given the min or the mean of
    the file's scores of pool examples."""
    if missing not in MISSING_POLICIES:
        raise FlytInputError(f"`missing` must be one of {', '.join(MISSING_POLICIES)}, got {missing!r}",
                             params=["missing"])
    sorted_uids, sorted_scores = read_uid_scores(source, drop_missing=missing != "error")
    pos = lookup(sorted_uids, pool.uids)
    absent = pos < 0
    count = int(absent.sum())
    if count and (missing == "error" or count == pool.size):
        i = int(np.flatnonzero(absent)[0])
        way_out = ("; none of its uids is in this pool: is it a file of another pool?" if count == pool.size else
                   "; set `missing` min or mean to give them the min or the mean of the file's scores")
        raise FlytInputError(
            f"score file {source} has no score for {count:,} of the pool's {pool.size:,} uids; "
            f"the first is {uids_to_hex(pool.uids[i:i + 1])[0]} ({pool.locate(i)}){way_out}", params=["missing"])
    values = sorted_scores[np.where(absent, 0, pos)]
    if count:
        present = values[~absent]
        values[absent] = present.min() if missing == "min" else present.mean()
    matched = pool.size - count  # every matched pool uid took one distinct file uid
    return values, len(sorted_uids) - matched, count
