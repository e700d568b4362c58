"""The mini-DataComp benchmark on the digits demo pool (``flyt-datacomp benchmark``).

DataComp's protocol shrunk to a CPU: a fixed training recipe (:mod:`.recipe`) and a fixed number
of samples seen, only the subset varies; the score is the zero-shot accuracy of a CLIP trained
from scratch on it (:mod:`.train`, :mod:`.zeroshot`), over the held-out test digits. The pool's
images are decoded once (:mod:`.data`), results are cached per (subset, seed, recipe)
(:mod:`.cache`), one subset is scored by :mod:`.evaluate`, and :mod:`.table` makes the standard
rows with the package's own train / score / filter calls.
"""
