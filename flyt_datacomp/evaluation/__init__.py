"""End-to-end DataComp evaluation of a subset with DataComp's own scripts.

``datacomp`` finds the checkout and its Python, checks prerequisites and runs scripts; ``reshard``,
``train`` and ``evaluate`` wrap ``resharder.py``, ``train.py`` and ``evaluate.py`` with checks of
their outputs; ``report`` aggregates ``eval_results.jsonl`` like ``aggregate_scores.py``;
``pipeline`` chains them resumably into a submission folder; ``cli`` is the ``eval`` command group.
"""
