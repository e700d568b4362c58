"""The paper's aggregation baselines (section 4.2 and Appendix C.5), as score sources.

Each input ``A, B, ...`` is itself a score source (a pool column, ``file:scores.parquet``, ...), so
any sampler can use the result (``--score standardized_sum:a,b --sampler scs``). With ``x_k`` input
``k``'s scores and ``z_k = (x_k - mean(x_k)) / std(x_k)``, the statistics taken over the pool, or
over the examples a restricted run keeps (``--shards-dir``, ``--mask``):

* ``sum:A,B,...`` -- ``s = sum_k x_k``;
* ``standardized_sum:A,B,...`` -- ``s = sum_k z_k``;
* ``in_weighted:r=R:A=IN_A,B=IN_B,...`` (or ``in_weighted:r=R:relevance.json``, a JSON object
  ``{"A": IN_A, ...}``) -- the ImageNet-weighted standardised sum: with ``IN_k`` input ``k``'s
  ImageNet relevance (the paper: the ImageNet accuracy of training on its top examples),
  ``w_hat_k = (IN_k - min IN) / (max IN - min IN)``, ``w_k = w_hat_k + 1 / (R - 1)`` and
  ``s = sum_k w_k z_k``; the largest weight is ``R`` times the smallest (the paper: R in 2, 4, 8, 16).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from ..errors import FlytInputError, quote
from ..pool import Pool
from .base import Scores, ScoreSource, load_scores, moments, register_score_source


def _split_inputs(text: str, spec: str, kind: str) -> list[str]:
    inputs = [s.strip() for s in text.split(",") if s.strip()]
    if not inputs:
        raise FlytInputError(f"score source {kind}:{spec} names no inputs (write {kind}:A,B with score sources A and B)")
    return inputs


def weights_from_relevance(relevance: list[float], ratio: float) -> np.ndarray:
    """Paper C.5: min-max normalised relevances plus ``1 / (ratio - 1)``."""
    rel = np.asarray(relevance, dtype=np.float64)
    lo, hi = rel.min(), rel.max()
    if not hi > lo:
        raise FlytInputError(f"the ImageNet relevances must not all be equal (got {relevance}): "
                             "the min-max normalisation is undefined")
    return (rel - lo) / (hi - lo) + 1.0 / (ratio - 1.0)


class Aggregate(ScoreSource):
    """An aggregation of other score sources; always named explicitly (``KIND:inputs``): the sum of
    each input's :func:`term`."""

    @classmethod
    def claims(cls, spec: str, pool: Pool) -> bool:
        return False

    def inputs(self) -> list[str]:
        return _split_inputs(self.spec, self.spec, self.kind)

    def terms(self) -> list[tuple[str, float | None]]:
        """Each input's spec and the weight of its z-score (None: its raw scores)."""
        raise NotImplementedError

    def input_scores(self, pool: Pool, spec: str) -> np.ndarray:
        return load_scores(pool, spec, within=self.within, inputs_dir=self.inputs_dir,
                           accept_changed_inputs=self.accept_changed_inputs, missing=self.missing).values

    def load(self, pool: Pool) -> Scores:
        total = sum(self.input_term(pool, spec, weight) for spec, weight in self.terms())
        return Scores(total, self.spec, self.kind)

    def input_term(self, pool: Pool, spec: str, weight: float | None) -> np.ndarray:
        """One input's term, standardised with its statistics over ``within`` (the whole pool when None)."""
        values = self.input_scores(pool, spec)
        return term(values, weight, None if weight is None else moments(values, self.within, input_what(spec)))


def term(values: np.ndarray, weight: float | None, stats: tuple[float, float] | None) -> np.ndarray:
    """An input's part of an aggregate: its raw scores (``weight`` None), else ``weight`` times its
    z-scores with ``stats`` (mean, std)."""
    if weight is None:
        return values
    mean, std = stats
    return weight * ((values - mean) / std)


def input_what(spec: str) -> str:
    """An aggregate's input, as its standardisation's messages name it."""
    return f"input {spec!r}'s scores"


@register_score_source
class Sum(Aggregate):
    kind = "sum"
    description = "the sum of the scores of sources A, B, ... (sum:A,B)"

    def terms(self) -> list[tuple[str, float | None]]:
        return [(s, None) for s in self.inputs()]


@register_score_source
class StandardizedSum(Aggregate):
    kind = "standardized_sum"
    description = "the sum of the sources' z-scores (standardized_sum:A,B)"

    def terms(self) -> list[tuple[str, float | None]]:
        return [(s, 1.0) for s in self.inputs()]


@register_score_source
class ImageNetWeighted(Aggregate):
    kind = "in_weighted"
    description = "z-scores weighted by ImageNet relevance, paper C.5 (in_weighted:r=R:A=IN_A,B=IN_B)"

    def parse(self) -> tuple[float, dict[str, float]]:
        head, sep, rest = self.spec.partition(":")
        key, eq, value = head.partition("=")
        try:
            ratio = float(value) if key.strip() == "r" and eq and sep else math.nan
        except ValueError:
            ratio = math.nan
        if not (ratio > 1 and math.isfinite(ratio)):
            raise FlytInputError(f"score source in_weighted:{self.spec} must start with r=R (the max-to-min weight "
                                 "ratio, R > 1; the paper uses 2, 4, 8, 16), then inputs: in_weighted:r=4:A=0.31,B=0.28")
        if rest.strip().endswith(".json"):
            return ratio, _relevance_file(rest.strip())
        relevance = {}
        for item in _split_inputs(rest, self.spec, self.kind):
            name, eq, value = item.rpartition("=")
            try:
                relevance[name.strip()] = float(value)
            except ValueError:
                name = ""
            if not eq or not name.strip():
                raise FlytInputError(f"score source in_weighted:{self.spec}: {quote(item)} is not SOURCE=RELEVANCE "
                                     "(a number, e.g. clip_l14_similarity_score=0.31)")
        return ratio, relevance

    def check_relevance(self, relevance: dict[str, float]) -> None:
        if len(relevance) < 2:
            raise FlytInputError(f"score source in_weighted:{self.spec} needs at least two inputs")
        bad = [k for k, v in relevance.items() if not math.isfinite(v)]
        if bad:
            raise FlytInputError(f"score source in_weighted:{self.spec}: the relevance of {bad[0]!r} is not a finite number")

    def terms(self) -> list[tuple[str, float | None]]:
        ratio, relevance = self.parse()
        self.check_relevance(relevance)
        weights = weights_from_relevance(list(relevance.values()), ratio)
        return [(s, float(w)) for s, w in zip(relevance, weights)]


def _relevance_file(path: str) -> dict[str, float]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise FlytInputError(f"cannot read the ImageNet relevance file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()):
        raise FlytInputError(f"the ImageNet relevance file {path} must hold a JSON object {{\"SOURCE\": number, ...}}")
    return {str(k): float(v) for k, v in data.items()}
