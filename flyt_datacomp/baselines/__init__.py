"""DataComp's filtering baselines, the paper's aggregation baselines and hard masks (library side).

* :mod:`.datacomp` -- DataComp's seven baselines (``filter --name NAME``), their rules in
  :mod:`.rules`, their models and files in :mod:`.language`, :mod:`.wordnet`, :mod:`.centroids` and
  :mod:`.assets`; caption work in worker processes (:mod:`.parallel`).
* :mod:`.aggregate` -- ``sum``, ``standardized_sum`` and ``in_weighted`` score sources.
* :mod:`.masks` -- ``filter --mask SPEC``: baseline, subset file, column condition, top fraction.
* :mod:`.cli` -- the command-line options they share and ``flyt-datacomp baseline NAME``.

The runnable recipes are shell scripts in the repository's top-level ``baselines/`` folder.
"""
