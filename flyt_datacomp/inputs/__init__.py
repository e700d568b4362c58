"""The input-score store over a pool, its providers, and where their shard tasks run.

``flyt-datacomp inputs compute --metadata-dir M --out STORE --input SPEC ...`` fills a store
(:mod:`.store`) with per-example inputs computed by registered providers (:mod:`.providers`), one
pure task per metadata shard (:mod:`.compute`) run inline, in local processes or on Ray
(:mod:`.executors`). Filtering reads a stored input with ``--score store:NAME --inputs-dir STORE``.
"""

from .compute import compute_inputs
from .store import InputStore

__all__ = ["InputStore", "compute_inputs"]
