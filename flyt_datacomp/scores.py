"""Score sources: turn ``--score SOURCE`` into one float per pool example, in pool order.

Each kind of source is one small class registered in :data:`SCORE_SOURCES`; ``--score`` resolves
against the registry. ``KIND:SPEC`` names a kind explicitly (``column:clip_l14_similarity_score``,
``file:scores.parquet``, ``model:runs/x/scoring_model.pt``); a bare SPEC goes to the first kind, in
registration order, that claims it:

* ``column`` -- a column of the pool's parquet files (``clip_l14_similarity_score``);
* ``model`` -- a trained FLYT scoring model (``scoring_model.pt`` from ``flyt-datacomp train``),
  applied to every pool example shard by shard;
* ``file`` -- a parquet file of per-uid scores with columns ``uid`` and ``score``.

A new kind is one subclass of :class:`ScoreSource` and :func:`register_score_source`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

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
    kind: str  # the registered kind of the source: "column", "file", "model", ...
    extra_uids: int = 0  # a score file's uids that are not in the pool (ignored)
    stored_dtype: np.dtype | None = None  # a pool column's own dtype (float32 for DataComp's CLIP scores)


class ScoreSource:
    """One kind of score source: ``claims`` a bare ``--score`` spec, ``load`` gives pool-order scores."""

    kind: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, spec: str, within: np.ndarray | None = None):
        self.spec = spec
        # pool positions whose statistics a source that standardises uses (None: the whole pool)
        self.within = within

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        raise NotImplementedError

    def load(self, pool: Pool) -> Scores:
        raise NotImplementedError

    def where(self, pool: Pool, i: int) -> str:
        """Where example ``i``'s score came from, for error messages."""
        return pool.locate(i)


SCORE_SOURCES: dict[str, type[ScoreSource]] = {}


def register_score_source(cls: type[ScoreSource]) -> type[ScoreSource]:
    """Add a kind of score source to the registry (bare specs are tried in registration order)."""
    if cls.kind in SCORE_SOURCES:
        raise ValueError(f"score source kind {cls.kind!r} is already registered")
    SCORE_SOURCES[cls.kind] = cls
    return cls


@register_score_source
class PoolColumn(ScoreSource):
    kind = "column"
    description = "a numeric column of the pool's parquet files"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec in pool.column_names

    def load(self, pool: Pool) -> Scores:
        if self.spec not in pool.column_names:
            raise FlytInputError(f"the pool at {pool.url} has no column {quote(self.spec)} "
                                 f"(columns: {', '.join(pool.column_names)})")
        column = pool.column(self.spec, allow_missing=False)
        values = _as_float(column, f"column {self.spec!r} of the pool at {pool.url}")
        return Scores(values, self.spec, self.kind, stored_dtype=column.dtype)


@register_score_source
class ScoringModel(ScoreSource):
    kind = "model"
    description = "a trained FLYT scoring model (scoring_model.pt), applied to the pool"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec.endswith(".pt") and _is_file(spec)

    def load(self, pool: Pool) -> Scores:
        _require_file(self.spec, "scoring model")
        return Scores(_scores_from_model(pool, self.spec), self.spec, self.kind)


@register_score_source
class ScoreFile(ScoreSource):
    kind = "file"
    description = "a parquet file with columns uid and score, joined to the pool by uid"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return _is_file(spec)

    def load(self, pool: Pool) -> Scores:
        _require_file(self.spec, "score file")
        values, extra = _scores_from_file(pool, self.spec)
        return Scores(values, self.spec, self.kind, extra_uids=extra)

    def where(self, pool: Pool, i: int) -> str:
        return f"pool {pool.locate(i)} (uid {uids_to_hex(pool.uids[i:i + 1])[0]})"


def resolve_score_source(spec: str, pool: Pool, within: np.ndarray | None = None) -> ScoreSource:
    """The registered source ``spec`` names (``KIND:SPEC``) or that claims it (a bare spec).
    ``within``: the pool positions a restricted run keeps (for sources that standardise)."""
    kind, sep, rest = spec.partition(":")
    if sep and kind in SCORE_SOURCES:
        return SCORE_SOURCES[kind](rest, within)
    for cls in SCORE_SOURCES.values():
        if cls.claims(spec, pool):
            return cls(spec, within)
    kinds = "; ".join(f"{k}: {c.description}" for k, c in SCORE_SOURCES.items())
    raise FlytInputError(
        f"score source {quote(spec)} is neither a column of the pool's parquet files "
        f"(columns: {', '.join(pool.column_names)}) nor an existing file. Sources are {kinds}"
    )


def load_scores(pool: Pool, source: str, *, within: np.ndarray | None = None) -> Scores:
    """Resolve ``source`` against ``pool`` and return finite float64 scores in pool order.
    ``within``: the pool positions a restricted run keeps; sources that standardise use their statistics."""
    resolved = resolve_score_source(source, pool, within)
    scores = resolved.load(pool)
    scores.source = source
    bad = ~np.isfinite(scores.values)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FlytInputError(
            f"score source {quote(source)} has {int(bad.sum())} non-finite scores; the first, "
            f"{scores.values[i]}, is at {resolved.where(pool, i)}"
        )
    return scores


def _require_file(spec: str, what: str) -> None:
    if not _is_file(spec):
        raise FlytInputError(f"{what} {quote(spec)} does not exist or is not a file")


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
    import torch

    from .flyt.models import MixingModel, load_scoring_model

    model, meta = load_scoring_model(source)
    model.eval()
    if isinstance(model, MixingModel):
        missing = [c for c in model.input_names if c not in pool.column_names]
        if missing:
            raise FlytInputError(
                f"scoring model {source} was trained on inputs {model.input_names}, but the pool has "
                f"no column {missing[0]!r} (columns: {', '.join(pool.column_names)})"
            )
        columns, keys = model.input_names, []
    else:
        prefix = meta.get("config", {}).get("embedding_prefix", "b32")
        columns, keys = [], [f"{prefix}_img", f"{prefix}_txt"]
    parts = []
    with torch.no_grad():
        for shard in pool.iter_shards(columns, keys, desc="scoring the pool", no_missing=columns):
            if columns:
                x = np.stack([shard.columns[c].astype(np.float64) for c in columns], axis=1)
                out = model.double()(torch.from_numpy(x))
            else:
                img, txt = (torch.from_numpy(shard.arrays[k].astype(np.float32)) for k in keys)
                if img.shape[1] != model.embed_dim:
                    raise FlytInputError(
                        f"scoring model {source} expects {model.embed_dim}-dim embeddings but {keys[0]} "
                        f"in {shard.shard.npz} has {img.shape[1]}"
                    )
                out = model(img, txt)
            parts.append(out.double().numpy())
    return np.concatenate(parts) if parts else np.zeros(0)


# the paper's aggregation baselines register their kinds (sum, standardized_sum, in_weighted)
from .baselines import aggregate as _aggregate  # noqa: E402,F401  (imports this module's names above)
