"""Score sources: turn ``--score SOURCE`` into one float per pool example, in pool order.

Each kind of source is one small class registered in :data:`SCORE_SOURCES`; ``--score`` resolves
against the registry. ``KIND:SPEC`` names a kind explicitly (``column:clip_l14_similarity_score``,
``file:scores.parquet``, ``model:runs/x/scoring_model.pt``); a bare SPEC goes to the first kind, in
registration order, that claims it:

* ``column`` -- a column of the pool's parquet files (``clip_l14_similarity_score``);
* ``model`` -- a trained FLYT scoring model (``scoring_model.pt`` from ``flyt-datacomp train``),
  applied to every pool example shard by shard;
* ``file`` -- a per-uid score file: parquet or csv with columns ``uid`` and ``score``, or an npy
  record array with ``uid`` (or ``f0``/``f1``) and ``score`` fields;
* ``store`` -- an input of an input store (``store:NAME`` with ``--inputs-dir``; see
  :mod:`flyt_datacomp.inputs`).

A new kind is one subclass of :class:`ScoreSource` and :func:`register_score_source`.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import FlytInputError, quote
from .pool import Pool, _uid_column
from .registry import KindRegistry
from .uids import UID_DTYPE, first_duplicate, hex_to_uids, lookup, uid_order, uids_to_hex


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

    def __init__(self, spec: str, within: np.ndarray | None = None, *, inputs_dir: str | None = None):
        self.spec = spec
        # pool positions whose statistics a source that standardises uses (None: the whole pool)
        self.within = within
        self.inputs_dir = inputs_dir  # an input store (flyt_datacomp.inputs), for sources that read one

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        raise NotImplementedError

    def load(self, pool: Pool) -> Scores:
        raise NotImplementedError

    def where(self, pool: Pool, i: int) -> str:
        """Where example ``i``'s score came from, for error messages."""
        return pool.locate(i)


SCORE_SOURCES = KindRegistry("score source kind")
register_score_source = SCORE_SOURCES.register  # bare specs are tried in registration order


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
        return Scores(_scores_from_model(pool, self.spec, self.inputs_dir), self.spec, self.kind)


@register_score_source
class ScoreFile(ScoreSource):
    kind = "file"
    description = "a per-uid score file (parquet/csv with columns uid, score; or npy), joined to the pool by uid"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return _is_file(spec)

    def load(self, pool: Pool) -> Scores:
        _require_file(self.spec, "score file")
        values, extra = _scores_from_file(pool, self.spec)
        return Scores(values, self.spec, self.kind, extra_uids=extra)

    def where(self, pool: Pool, i: int) -> str:
        return f"pool {pool.locate(i)} (uid {uids_to_hex(pool.uids[i:i + 1])[0]})"


@register_score_source
class StoredInput(ScoreSource):
    kind = "store"
    description = "an input of the input store given by --inputs-dir (store:NAME)"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False  # only by name: store:NAME

    def load(self, pool: Pool) -> Scores:
        if not self.inputs_dir:
            raise FlytInputError(f"--score store:{self.spec} reads an input store: give --inputs-dir STORE")
        from .inputs.store import InputStore

        return Scores(InputStore(self.inputs_dir).column(self.spec, pool), f"store:{self.spec}", self.kind)


def resolve_score_source(spec: str, pool: Pool, within: np.ndarray | None = None, *,
                         inputs_dir: str | None = None) -> ScoreSource:
    """The registered source ``spec`` names (``KIND:SPEC``) or that claims it (a bare spec).
    ``within``: the pool positions a restricted run keeps (for sources that standardise);
    ``inputs_dir``: an input store, for ``store:`` sources."""
    found = SCORE_SOURCES.find(spec, pool)
    if found is None:
        raise FlytInputError(
            f"score source {quote(spec)} is neither a column of the pool's parquet files "
            f"(columns: {', '.join(pool.column_names)}) nor an existing file. Sources are {SCORE_SOURCES.describe()}"
        )
    cls, rest = found
    return cls(rest, within, inputs_dir=inputs_dir)


def load_scores(pool: Pool, source: str, *, within: np.ndarray | None = None,
                inputs_dir: str | None = None) -> Scores:
    """Resolve ``source`` against ``pool`` (and an input store) and return finite float64 scores in pool order.
    ``within``: the pool positions a restricted run keeps; sources that standardise use their statistics."""
    resolved = resolve_score_source(source, pool, within, inputs_dir=inputs_dir)
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


def read_uid_scores(source: str) -> tuple[np.ndarray, np.ndarray]:
    """A per-uid score file as (uids sorted, float64 scores in that order); duplicates refused.

    Parquet or csv with columns ``uid`` (32 hex characters) and ``score``, or an ``.npy`` record
    array with a ``uid`` field (hex strings) or ``f0``/``f1`` fields, and a ``score`` field.
    """
    file_uids, file_scores = _read_score_table(source)
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
                uids = (hex_to_uids(arr["uid"], source=source) if "uid" in names
                        else np.rec.fromarrays([arr["f0"], arr["f1"]], dtype=UID_DTYPE).view(np.ndarray))
                return uids, _as_float(arr["score"], f"field 'score' of score file {source}")
            if lower.endswith(".csv"):
                import pyarrow.csv as pcsv

                table = pcsv.read_csv(fh, convert_options=pcsv.ConvertOptions(
                    column_types={"uid": pa.string()}))
            else:
                table = pq.read_table(fh)
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
    file_uids = _uid_column(table.column("uid"), source)
    score_col = table.column("score")
    if score_col.null_count:
        raise FlytInputError(f"score file {source} has {score_col.null_count} missing scores")
    return file_uids, _as_float(score_col.to_numpy(), f"column 'score' of score file {source}")


def _scores_from_file(pool: Pool, source: str) -> tuple[np.ndarray, int]:
    """The file's scores in pool order, and how many of its uids are not in the pool."""
    sorted_uids, sorted_scores = read_uid_scores(source)
    pos = lookup(sorted_uids, pool.uids)
    absent = pos < 0
    if absent.any():
        i = int(np.flatnonzero(absent)[0])
        raise FlytInputError(
            f"score file {source} has no score for {int(absent.sum())} of the pool's {pool.size} uids; "
            f"the first is {uids_to_hex(pool.uids[i:i + 1])[0]} ({pool.locate(i)})"
        )
    return sorted_scores[pos], len(sorted_uids) - pool.size  # every pool uid matched one distinct file uid


def _scores_from_model(pool: Pool, source: str, inputs_dir: str | None = None) -> np.ndarray:
    """Apply a trained scoring model to the whole pool (its inputs read shard by shard, stored
    inputs from ``inputs_dir`` or else the store the model was trained with)."""
    from .flyt.features import FeatureSpec
    from .flyt.models import load_scoring_model, score_pool

    model, meta = load_scoring_model(source)
    return score_pool(pool, model, FeatureSpec.of_scoring_model(model, meta, source, inputs_dir))


# the paper's aggregation baselines register their kinds (sum, standardized_sum, in_weighted)
from .baselines import aggregate as _aggregate  # noqa: E402,F401  (imports this module's names above)
