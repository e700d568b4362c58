"""Score sources: turn ``--score SOURCE`` into one float per pool example, in pool order.

A source is a column of the pool's parquet files (``clip_l14_similarity_score``), a parquet file
of per-uid scores with columns ``uid`` and ``score``, or a trained FLYT scoring model checkpoint
(``scoring_model.pt`` from ``flyt-datacomp train``), applied to every pool example shard by shard.
"""

from __future__ import annotations

import dataclasses

import fsspec
import numpy as np
import pyarrow.parquet as pq

from .errors import FlytInputError, quote
from .pool import Pool, _uid_column
from .uids import first_duplicate, lookup, uid_order, uids_to_hex


@dataclasses.dataclass
class Scores:
    values: np.ndarray  # float64, aligned with pool positions
    source: str  # what produced them, for sidecars
    kind: str  # "column", "file" or "model"
    extra_uids: int = 0  # a score file's uids that are not in the pool (ignored)


def load_scores(pool: Pool, source: str) -> Scores:
    """Resolve ``source`` against ``pool`` and return finite float64 scores in pool order."""
    if source in pool.column_names:
        values = _as_float(pool.column(source, allow_missing=False), f"column {source!r} of the pool at {pool.url}")
        scores = Scores(values, source, "column")
        where = pool.locate
    elif _is_file(source) and source.endswith(".pt"):
        scores = Scores(_scores_from_model(pool, source), source, "model")
        where = pool.locate
    elif _is_file(source):
        values, extra = _scores_from_file(pool, source)
        scores = Scores(values, source, "file", extra_uids=extra)
        where = lambda i: f"pool {pool.locate(i)} (uid {uids_to_hex(pool.uids[i:i + 1])[0]})"  # noqa: E731
    else:
        raise FlytInputError(
            f"score source {quote(source)} is neither a column of the pool's parquet files "
            f"(columns: {', '.join(pool.column_names)}) nor an existing file"
        )
    bad = ~np.isfinite(scores.values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FlytInputError(
            f"score source {quote(source)} has {int(bad.sum())} non-finite scores; the first, "
            f"{scores.values[i]}, is at {where(i)}"
        )
    return scores


def _as_float(values: np.ndarray, what: str) -> np.ndarray:
    """Scores as float64; a non-numeric column is an input error naming it."""
    if values.dtype.kind not in "biuf":
        raise FlytInputError(f"{what} holds {values.dtype} values, not numbers; scores must be numeric")
    return values.astype(np.float64)


def standardize(values: np.ndarray) -> np.ndarray:
    """Zero mean, unit standard deviation over the pool (float64)."""
    std = values.std()
    if not std > 0:
        raise FlytInputError("cannot standardise scores: they are all equal")
    return (values - values.mean()) / std


def _is_file(source: str) -> bool:
    try:
        fs, path = fsspec.core.url_to_fs(source)
        return fs.isfile(path)
    except Exception:
        return False


def _scores_from_file(pool: Pool, source: str) -> tuple[np.ndarray, int]:
    """The file's scores in pool order, and how many of its uids are not in the pool."""
    try:
        with fsspec.open(source, "rb") as fh:
            table = pq.read_table(fh)
    except Exception as exc:
        raise FlytInputError(f"cannot read score file {source} as parquet: {exc}") from None
    missing = [c for c in ("uid", "score") if c not in table.column_names]
    if missing:
        raise FlytInputError(
            f"score file {source} needs columns 'uid' and 'score'; missing {missing} "
            f"(columns: {table.column_names})"
        )
    file_uids = _uid_column(table.column("uid"), source)
    score_col = table.column("score")
    if score_col.null_count:
        raise FlytInputError(f"score file {source} has {score_col.null_count} missing scores")
    file_scores = _as_float(score_col.to_numpy(), f"column 'score' of score file {source}")
    order = uid_order(file_uids)
    sorted_uids = file_uids[order]
    i = first_duplicate(sorted_uids)
    if i is not None:
        raise FlytInputError(f"score file {source} lists uid {uids_to_hex(sorted_uids[i:i + 1])[0]} more than once")
    pos = lookup(sorted_uids, pool.uids)
    absent = pos < 0
    if absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise FlytInputError(
            f"score file {source} has no score for {int(absent.sum())} of the pool's {pool.size} uids; "
            f"the first is {uids_to_hex(pool.uids[i:i + 1])[0]} ({pool.locate(i)})"
        )
    return file_scores[order][pos], len(file_uids) - pool.size  # every pool uid matched one distinct file uid


def _scores_from_model(pool: Pool, source: str) -> np.ndarray:
    """Apply a trained scoring model to the whole pool (its inputs read shard by shard)."""
    from .flyt.features import FeatureSpec
    from .flyt.models import load_scoring_model, score_pool

    model, meta = load_scoring_model(source)
    return score_pool(pool, model, FeatureSpec.of_scoring_model(model, meta, source))
