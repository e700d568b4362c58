"""What a score source is, the registry ``--score`` resolves against, and the one standardisation.

A score source turns a spec into one float per pool example, in pool order. ``KIND:SPEC`` names a
kind explicitly; a bare SPEC goes to the first kind, in registration order, that claims it. A new
kind is one subclass of :class:`ScoreSource` and :func:`register_score_source` (see
:mod:`.sources` and :mod:`.aggregate` for the built-in ones).
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import ClassVar

import numpy as np

from ..errors import FlytInputError, quote
from ..pool import Pool
from ..registry import KindRegistry


@dataclasses.dataclass
class Scores:
    values: np.ndarray  # float64, aligned with pool positions
    source: str  # what produced them, for sidecars
    kind: str  # the registered kind of the source: "column", "file", "model", ...
    extra_uids: int = 0  # a score file's uids that are not in the pool (ignored)
    filled: int = 0  # pool examples a score file had no score for, given the `missing` fill
    stored_dtype: np.dtype | None = None  # a pool column's own dtype (float32 for DataComp's CLIP scores)


class ScoreSource:
    """One kind of score source: ``claims`` a bare spec, ``load`` gives pool-order scores."""

    kind: ClassVar[str]
    description: ClassVar[str]

    def __init__(self, spec: str, within: np.ndarray | None = None, *, inputs_dir: str | None = None,
                 accept_changed_inputs: tuple[str, ...] = (), missing: str = "error"):
        self.spec = spec
        # pool positions whose statistics a source that standardises uses (None: the whole pool)
        self.within = within
        self.inputs_dir = inputs_dir  # an input store, for sources that read one
        # stored inputs a trained model may read although they changed since its training ("*": any)
        self.accept_changed_inputs = tuple(accept_changed_inputs)
        self.missing = missing  # what a score file's missing pool examples get: error, min or mean (of its scores)

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


def resolve_score_source(spec: str, pool: Pool, within: np.ndarray | None = None, *,
                         inputs_dir: str | None = None, accept_changed_inputs: tuple[str, ...] = (),
                         missing: str = "error") -> ScoreSource:
    """The registered source ``spec`` names (``KIND:SPEC``) or that claims it (a bare spec).
    ``within``: the pool positions a restricted run keeps (for sources that standardise);
    ``inputs_dir``: an input store, for ``store:`` sources; ``accept_changed_inputs``: stored inputs a
    trained model may read although they changed since it was trained; ``missing``: what the pool
    examples a score file has no score for get (error, or the min or mean of its scores)."""
    found = SCORE_SOURCES.find(spec, pool)
    if found is None:
        hint = did_you_mean(spec, pool.column_names)
        raise FlytInputError(
            f"score source {quote(spec)} is neither a column of the pool's parquet files{hint} nor an existing file"
            + ("" if hint else f" ({columns_hint(pool.column_names, limit=8)})")
            + f"; KIND:SPEC names a kind: {', '.join(SCORE_SOURCES)}"
        )
    cls, rest = found
    return cls(rest, within, inputs_dir=inputs_dir, accept_changed_inputs=accept_changed_inputs, missing=missing)


def load_scores(pool: Pool, source: str, *, within: np.ndarray | None = None,
                inputs_dir: str | None = None, accept_changed_inputs: tuple[str, ...] = (),
                missing: str = "error") -> Scores:
    """Resolve ``source`` against ``pool`` (and an input store) and return finite float64 scores in pool order.
    ``within``: the pool positions a restricted run keeps; sources that standardise use their statistics."""
    resolved = resolve_score_source(source, pool, within, inputs_dir=inputs_dir,
                                    accept_changed_inputs=accept_changed_inputs, missing=missing)
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


def standardize(values: np.ndarray, within: np.ndarray | None = None, what: str = "the scores") -> np.ndarray:
    """``(x - mean) / std`` (float64) with the statistics of ``values[within]`` (all values when None)."""
    mean, std = moments(values, within, what)
    return (values - mean) / std


def moments(values: np.ndarray, within: np.ndarray | None = None, what: str = "the scores") -> tuple[float, float]:
    """The mean and standard deviation (ddof 0) of ``values[within]`` (all values when None), refused
    when they are all equal."""
    part = values if within is None else values[within]
    std = part.std()
    check_spread(std, what, restricted=within is not None)
    return part.mean(), std


def check_spread(std: float, what: str, *, restricted: bool = False) -> None:
    """Refuse to standardise values whose standard deviation is not positive (``restricted``: the
    statistics were taken over the examples a restricted run keeps)."""
    if not std > 0:
        raise FlytInputError(f"cannot standardise {what}: they are all equal" + (" over the examples kept" if restricted else ""))


def as_float(values: np.ndarray, what: str) -> np.ndarray:
    """Scores as float64; a non-numeric column is an input error naming it."""
    if values.dtype.kind not in "biuf":
        raise FlytInputError(f"{what} holds {values.dtype} values, not numbers; scores must be numeric")
    return values.astype(np.float64)


def did_you_mean(name: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for a close match among ``choices``, else ``""``."""
    close = difflib.get_close_matches(name.partition(":")[2] or name, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def columns_hint(columns: list[str], limit: int = 12) -> str:
    """The pool's columns for a message, cut to ``limit`` names."""
    shown = ", ".join(columns[:limit])
    return f"columns: {shown}" + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")
