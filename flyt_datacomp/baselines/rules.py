"""DataComp's per-example filtering rules as pure functions on arrays (one bool per example).

The rules are those of DataComp's ``baselines/apply_filter.py``; the model outputs they use
(language labels, fastText token counts, WordNet offsets, nearest centroids) are computed elsewhere
and passed in, so each rule is testable on plain arrays. A caption that is missing (null) never
passes a caption rule, and a language of ``None`` (not computed, or no caption) is not English.
fastText gives no label at all for a caption without words (empty or only whitespace), where
DataComp's code stops with an IndexError; here such a caption is simply not English.

* basic: fastText says ``en``, more than 2 whitespace-separated words, more than 5 characters,
  shorter image side >= 200 px and aspect ratio (long side / short side) <= 3.
* caption (the first step of image_based): fastText ``en``, more than 1 fastText token, more than 5
  characters.
* text_based: fastText ``en`` and some word of ``text.split()`` whose *first* WordNet synset has an
  offset in the ImageNet-21k id list (the offset alone is compared, whatever the synset's part of speech).
* clip_score: score >= t, compared in the column's own dtype; with a fraction, t is the score at
  rank ``int(N * fraction)`` of the scores sorted in descending order (missing scores last).
* laion2b: gcld3 says ``en`` and the B/32 CLIP score >= 0.28.
* image_based: the caption rule, and the example's nearest centroid is the nearest centroid of some
  ImageNet-1k training image (see :mod:`.centroids`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

LAION2B_THRESHOLD = 0.28


def _is_en(langs: np.ndarray) -> np.ndarray:
    return np.fromiter((lang == "en" for lang in langs), dtype=bool, count=len(langs))


def _present(texts: np.ndarray) -> np.ndarray:
    return np.fromiter((isinstance(t, str) for t in texts), dtype=bool, count=len(texts))


def _count(texts: np.ndarray, fn: Callable[[str], int]) -> np.ndarray:
    return np.fromiter((fn(t) if isinstance(t, str) else 0 for t in texts), dtype=np.int64, count=len(texts))


def word_counts(texts: np.ndarray) -> np.ndarray:
    """Words as ``str.split()`` counts them (any run of whitespace separates)."""
    return _count(texts, lambda t: len(t.split()))


def char_counts(texts: np.ndarray) -> np.ndarray:
    """Characters (code points), as Python's ``len``."""
    return _count(texts, len)


def image_size_mask(widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    """Shorter side >= 200 and long/short <= 3 (missing sizes fail)."""
    w = np.asarray(widths, dtype=np.float64)
    h = np.asarray(heights, dtype=np.float64)
    short, long = np.minimum(w, h), np.maximum(w, h)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = long / short
    return (short >= 200) & (ratio <= 3.0)


def basic_caption_mask(texts: np.ndarray) -> np.ndarray:
    """The basic filter's caption length rule: more than 2 words and more than 5 characters."""
    return _present(texts) & (word_counts(texts) > 2) & (char_counts(texts) > 5)


def basic_filter_mask(texts: np.ndarray, langs: np.ndarray, widths: np.ndarray, heights: np.ndarray) -> np.ndarray:
    return _is_en(langs) & basic_caption_mask(texts) & image_size_mask(widths, heights)


def caption_length_mask(texts: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    """The image-based caption length rule: more than 1 fastText token and more than 5 characters."""
    return _present(texts) & (np.asarray(token_counts) > 1) & (char_counts(texts) > 5)


def caption_filter_mask(texts: np.ndarray, langs: np.ndarray, token_counts: np.ndarray) -> np.ndarray:
    return _is_en(langs) & caption_length_mask(texts, token_counts)


def names_an_entity(text: str, first_offset: Callable[[str], int | None], entity_ids: frozenset[int] | set[int]) -> bool:
    """Whether some word of ``text.split()`` has a first WordNet synset whose offset is listed."""
    for word in text.split():
        offset = first_offset(word)
        if offset is not None and offset in entity_ids:
            return True
    return False


def text_entity_mask(texts: np.ndarray, langs: np.ndarray, first_offset: Callable[[str], int | None],
                     entity_ids: frozenset[int] | set[int]) -> np.ndarray:
    english = _is_en(langs) & _present(texts)
    out = np.zeros(len(texts), dtype=bool)
    for i in np.flatnonzero(english):
        out[i] = names_an_entity(texts[i], first_offset, entity_ids)
    return out


def rank_threshold(scores: np.ndarray, fraction: float) -> np.generic:
    """DataComp's threshold for a fraction: the value at index ``int(N * fraction)`` of the scores
    sorted in descending order (NaN, a missing score, sorts last). ``None`` when that index is past
    the end (every example with a score is kept)."""
    s = np.asarray(scores)
    n = int(len(s) * fraction)
    if n >= len(s):
        return None
    return -np.partition(-s, n)[n]


def at_least(scores: np.ndarray, threshold) -> np.ndarray:
    """``scores >= threshold`` in the scores' own dtype (a float32 column compares with the float32
    nearest to the threshold, as numpy does for a Python float); missing scores (NaN) fail."""
    s = np.asarray(scores)
    if threshold is None:
        return ~np.isnan(s) if s.dtype.kind == "f" else np.ones(len(s), dtype=bool)
    if s.dtype.kind == "f":
        threshold = s.dtype.type(threshold)
    return s >= threshold


def clip_score_mask(scores: np.ndarray, *, fraction: float | None = None, threshold: float | None = None) -> np.ndarray:
    if (fraction is None) == (threshold is None):
        raise ValueError("clip_score_mask needs exactly one of fraction and threshold")
    return at_least(scores, rank_threshold(scores, fraction) if fraction is not None else threshold)


def laion2b_mask(langs: np.ndarray, b32_scores: np.ndarray) -> np.ndarray:
    return _is_en(langs) & at_least(b32_scores, LAION2B_THRESHOLD)


def in_targets(labels: np.ndarray, targets: Iterable[int]) -> np.ndarray:
    """Whether each nearest-centroid label is one of the target centroids."""
    return np.isin(np.asarray(labels), np.fromiter(targets, dtype=np.int64))
