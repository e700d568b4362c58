"""DataComp's filtering baselines and hard masks (library side).

* :mod:`.datacomp` -- DataComp's seven baselines (``filter --name NAME``), their rules in
  :mod:`.rules`, their models and files in :mod:`.language`, :mod:`.wordnet`, :mod:`.centroids` and
  :mod:`.assets`.
* :mod:`.masks` -- ``filter --mask SPEC``: baseline, subset file, column or stored-input condition,
  caption rule, top fraction.

The paper's aggregation baselines (``sum``, ``standardized_sum``, ``in_weighted``) are score sources
(:mod:`flyt_datacomp.scores.aggregate`). The runnable recipes are shell scripts in the repository's
top-level ``baselines/`` folder.
"""
