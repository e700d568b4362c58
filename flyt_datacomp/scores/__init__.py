"""Score sources: turn ``--score SOURCE`` into one float per pool example, in pool order.

:mod:`.base` defines a source and the registry; :mod:`.sources` registers ``column``, ``model``,
``file`` and ``store``; :mod:`.aggregate` the paper's aggregation baselines ``sum``,
``standardized_sum`` and ``in_weighted``; :mod:`.mixing` the authors' released M-FLYT model
(``mixing``). A new kind is one subclass of :class:`ScoreSource` and :func:`register_score_source`.
"""

# registration order: the kinds a bare spec may name first, then the aggregations
from . import sources  # noqa: F401, I001
from . import aggregate  # noqa: F401, I001
from . import mixing  # noqa: F401, I001
from .base import (
    SCORE_SOURCES,
    Scores,
    ScoreSource,
    load_scores,
    register_score_source,
    resolve_score_source,
    standardize,
)
from .files import read_uid_scores

__all__ = ["SCORE_SOURCES", "Scores", "ScoreSource", "load_scores", "read_uid_scores", "register_score_source",
           "resolve_score_source", "standardize"]
