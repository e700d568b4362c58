"""The built-in score sources (registered in this order; a bare ``--score`` spec goes to the first that claims it):

* ``column`` -- a column of the pool's parquet files (``clip_l14_similarity_score``);
* ``model`` -- a trained FLYT scoring model (``scoring_model.pt`` from ``flyt-datacomp train``),
  applied to every pool example shard by shard;
* ``file`` -- a per-uid score file: parquet or csv with columns ``uid`` and ``score``, or an npy
  record array with ``uid`` (or ``f0``/``f1``) and ``score`` fields (:mod:`.files`);
* ``store`` -- an input of an input store (``store:NAME`` with ``inputs_dir``; see
  :mod:`flyt_datacomp.store`).
"""

from __future__ import annotations

import fsspec
import numpy as np

from ..errors import FlytInputError, quote
from ..pool import Pool
from ..uids import uids_to_hex
from .base import Scores, ScoreSource, as_float, columns_hint, did_you_mean, register_score_source
from .files import scores_from_file


@register_score_source
class PoolColumn(ScoreSource):
    kind = "column"
    description = "a numeric column of the pool's parquet files"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec in pool.column_names

    def load(self, pool: Pool) -> Scores:
        if self.spec not in pool.column_names:
            raise FlytInputError(f"the pool at {pool.url} has no column {quote(self.spec)}"
                                 f"{did_you_mean(self.spec, pool.column_names)} ({columns_hint(pool.column_names)})")
        column = pool.column(self.spec, allow_missing=False)
        values = as_float(column, f"column {self.spec!r} of the pool at {pool.url}")
        stored = column.dtype
        del column  # the float64 copy is what is kept
        return Scores(values, self.spec, self.kind, stored_dtype=stored)


@register_score_source
class ScoringModel(ScoreSource):
    kind = "model"
    description = "a trained FLYT scoring model (scoring_model.pt), applied to the pool"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return spec.endswith(".pt") and _is_file(spec)

    def load(self, pool: Pool) -> Scores:
        _require_file(self.spec, "scoring model")
        return Scores(_scores_from_model(pool, self.spec, self.inputs_dir, self.accept_changed_inputs), self.spec,
                      self.kind)


@register_score_source
class ScoreFile(ScoreSource):
    kind = "file"
    description = "a per-uid score file (parquet/csv with columns uid, score; or npy), joined to the pool by uid"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return _is_file(spec)

    def load(self, pool: Pool) -> Scores:
        _require_file(self.spec, "score file")
        values, extra, filled = scores_from_file(pool, self.spec, self.missing)
        return Scores(values, self.spec, self.kind, extra_uids=extra, filled=filled)

    def where(self, pool: Pool, i: int) -> str:
        return f"pool {pool.locate(i)} (uid {uids_to_hex(pool.uids[i:i + 1])[0]})"


@register_score_source
class StoredInput(ScoreSource):
    kind = "store"
    description = "an input of the input store (store:NAME)"

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False  # only by name: store:NAME

    def store(self):
        """The input store it reads (``inputs_dir``, required)."""
        if not self.inputs_dir:
            raise FlytInputError(f"score source store:{self.spec} reads an input store: give `inputs_dir`",
                                 params=["inputs_dir"])
        from ..store import InputStore

        return InputStore(self.inputs_dir)

    def load(self, pool: Pool) -> Scores:
        return Scores(self.store().column(self.spec, pool), f"store:{self.spec}", self.kind)



def _require_file(spec: str, what: str) -> None:
    if not _is_file(spec):
        raise FlytInputError(f"{what} {quote(spec)} does not exist or is not a file")


def _is_file(source: str) -> bool:
    try:
        fs, path = fsspec.core.url_to_fs(source)
        return fs.isfile(path)
    except Exception:
        return False


def _scores_from_model(pool: Pool, source: str, inputs_dir: str | None = None,
                       accept_changed_inputs: tuple[str, ...] = ()) -> np.ndarray:
    """Apply a trained scoring model to the whole pool (its inputs read shard by shard, stored
    inputs from ``inputs_dir`` or else the store the model was trained with, refused when they
    changed since it was trained unless named in ``accept_changed_inputs``)."""
    from ..flyt.features import FeatureSpec
    from ..flyt.models import load_scoring_model, score_pool

    model, meta = load_scoring_model(source)
    return score_pool(pool, model, FeatureSpec.of_scoring_model(model, meta, source, inputs_dir,
                                                                accept_changed_inputs))
