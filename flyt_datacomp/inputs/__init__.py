"""Input scores: the providers that compute them, and where their per-shard tasks run.

``flyt-datacomp inputs compute --metadata-dir M --inputs-dir STORE --input SPEC ...`` fills an input
store (:mod:`flyt_datacomp.store`) with per-example inputs computed by registered providers
(:mod:`.providers`), one pure task per metadata shard (:mod:`.compute`) run inline, in local
processes or on Ray (:mod:`.executors`). Filtering reads a stored input with
``--score store:NAME --inputs-dir STORE``.
"""

from .compute import compute_inputs

__all__ = ["compute_inputs"]
