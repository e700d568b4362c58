"""Language identification and fastText tokens for captions, as DataComp computes them.

* fastText: the top label of ``lid.176.bin`` for the caption with newlines replaced by spaces
  (``__label__en`` -> ``en``); token counts are ``len(fasttext.tokenize(caption))`` on the caption as is.
* gcld3: ``NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000).FindLanguage(caption with
  newlines replaced).language``.

Models are loaded once per process and kept (worker processes each load their own). Missing
captions (null) get ``None``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import FlytInputError
from .optional import require

_FASTTEXT: dict[str, object] = {}
_GCLD3: list = []
_LABEL = "__label__"


def _fasttext():
    fasttext = require("fasttext")
    fasttext.FastText.eprint = lambda *args, **kwargs: None  # its load_model warning is noise here
    return fasttext


def fasttext_model(path: str | Path):
    key = str(path)
    if key not in _FASTTEXT:
        fasttext = _fasttext()
        try:
            _FASTTEXT[key] = fasttext.load_model(key)
        except Exception as exc:  # noqa: BLE001 - fastText raises ValueError or RuntimeError
            raise FlytInputError(f"cannot load the fastText model {key}: {exc}") from None
    return _FASTTEXT[key]


def fasttext_languages(texts: np.ndarray, model_path: str | Path) -> np.ndarray:
    """fastText's top language label per caption (``None`` for a missing caption)."""
    out = np.full(len(texts), None, dtype=object)
    present = [i for i, t in enumerate(texts) if isinstance(t, str)]
    if present:
        # the binding's own batch predict: FastText.predict's numpy conversion fails under numpy 2 in fastText 0.9.2
        labels, _ = fasttext_model(model_path).f.multilinePredict(
            [texts[i].replace("\n", " ") for i in present], 1, 0.0, "strict")
        for i, label in zip(present, labels):
            out[i] = label[0].replace(_LABEL, "") if len(label) else None
    return out


def fasttext_token_counts(texts: np.ndarray) -> np.ndarray:
    tokenize = _fasttext().tokenize
    return np.fromiter((len(tokenize(t)) if isinstance(t, str) else 0 for t in texts), dtype=np.int64, count=len(texts))


def gcld3_languages(texts: np.ndarray) -> np.ndarray:
    """gcld3's language per caption, with DataComp's identifier settings (``None`` for a missing caption)."""
    if not _GCLD3:
        gcld3 = require("gcld3")
        _GCLD3.append(gcld3.NNetLanguageIdentifier(min_num_bytes=0, max_num_bytes=1000))
    detector = _GCLD3[0]
    out = np.full(len(texts), None, dtype=object)
    for i, t in enumerate(texts):
        if isinstance(t, str):
            out[i] = detector.FindLanguage(text=t.replace("\n", " ")).language
    return out
