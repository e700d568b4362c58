"""The digits of the demo pool: splits, canvas rendering, captions and example types.

Everything here is plain numpy + PIL and driven by explicit ``numpy.random.Generator`` objects, so
the same seed always gives the same images, captions and types.

The source is scikit-learn's bundled ``load_digits()`` (1,797 real 8x8 scans, no download). The
scans are split disjointly into a pool-source part (~50%), a downstream-train part (~25%) and a
test part (~25%); SPEC §4 uses 898 / 449 / 450.

Images follow SPEC §4: a digit upscaled to 16-24 px at a random position of a 32x32 canvas, white
or high-contrast grey on black (random colours break the task, so there are none).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

CANVAS = 32
MIN_SIZE, MAX_SIZE = 16, 24

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# Caption templates of the pool and of the scorers' training pairs; ``{w}`` is the word, ``{n}``
# the numeral.
CAPTION_TEMPLATES = (
    "a photo of the digit {w}.",
    "handwritten {n}",
    "the number {w}",
    "a picture of the number {n}.",
    "a handwritten {w} on a black background",
    "digit {n}",
    "a scan of the digit {w}.",
    "{w}",
)

# Zero-shot templates of the downstream task (written into ``classes.json``).
CLASS_TEMPLATES = (
    "a photo of the digit {}.",
    "a handwritten {}.",
    "the number {}.",
    "a scan of the digit {}.",
)

# The true example types of the pool and their default mix.
EXAMPLE_TYPES = ("correct", "wrong", "clutter", "near_duplicate")
DEFAULT_TYPE_MIX = {"correct": 0.4, "wrong": 0.3, "clutter": 0.2, "near_duplicate": 0.1}


def caption(digit: int, template: int) -> str:
    """The caption naming ``digit`` with template number ``template``."""
    return CAPTION_TEMPLATES[template].format(w=DIGIT_WORDS[digit], n=str(digit))


def all_captions() -> list[str]:
    """Every caption the pool can hold, indexed ``digit * len(CAPTION_TEMPLATES) + template``."""
    return [caption(d, t) for d in range(10) for t in range(len(CAPTION_TEMPLATES))]


def caption_index(digit, template):
    """Index into :func:`all_captions` (works elementwise on arrays)."""
    return np.asarray(digit) * len(CAPTION_TEMPLATES) + np.asarray(template)


# ----------------------------------------------------------------------------------------------
# Splits


@dataclass(frozen=True)
class DigitSplits:
    """Disjoint index arrays into ``load_digits()`` (sorted), plus the scans and labels."""

    pool_source: np.ndarray
    downstream_train: np.ndarray
    test: np.ndarray
    images: np.ndarray  # (1797, 8, 8) float64 in [0, 16]
    targets: np.ndarray  # (1797,) int64

    def as_dict(self) -> dict[str, list[int]]:
        return {
            "pool_source": self.pool_source.tolist(),
            "downstream_train": self.downstream_train.tolist(),
            "test": self.test.tolist(),
        }


def split_digits(rng: np.random.Generator) -> DigitSplits:
    """Split the 1,797 scans into pool-source (898), downstream-train (449) and test (450)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    n = len(digits.target)
    perm = rng.permutation(n)
    n_pool = n // 2  # 898
    n_down = n // 4  # 449
    return DigitSplits(
        pool_source=np.sort(perm[:n_pool]),
        downstream_train=np.sort(perm[n_pool : n_pool + n_down]),
        test=np.sort(perm[n_pool + n_down :]),
        images=np.asarray(digits.images, dtype=np.float64),
        targets=np.asarray(digits.target, dtype=np.int64),
    )


# ----------------------------------------------------------------------------------------------
# Rendering


class DigitBank:
    """Every scan of a split pre-resized to each size 16..24 px (values in [0, 1], float32).

    ``bank.glyph(i, size)`` is scan ``indices[i]`` at ``size`` px; rendering a canvas is then only an
    array slice, fast enough to draw fresh training batches on the fly.
    """

    def __init__(self, images: np.ndarray, indices: np.ndarray, labels: np.ndarray):
        self.indices = np.asarray(indices)
        self.labels = np.asarray(labels)[self.indices]
        self._glyphs: dict[int, np.ndarray] = {}
        src = np.clip(images[self.indices] / 16.0 * 255.0, 0, 255).astype(np.uint8)
        for size in range(MIN_SIZE, MAX_SIZE + 1):
            stack = np.empty((len(src), size, size), dtype=np.float32)
            for i, scan in enumerate(src):
                img = Image.fromarray(scan, mode="L").resize((size, size), Image.BICUBIC)
                stack[i] = np.asarray(img, dtype=np.float32) / 255.0
            self._glyphs[size] = stack

    def __len__(self) -> int:
        return len(self.indices)

    def glyph(self, i: int, size: int) -> np.ndarray:
        return self._glyphs[size][i]


def draw_placement(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Random size, position and intensity for ``n`` digits (white half the time, else bright grey)."""
    size = rng.integers(MIN_SIZE, MAX_SIZE + 1, size=n)
    x = (rng.random(n) * (CANVAS - size + 1)).astype(np.int64)
    y = (rng.random(n) * (CANVAS - size + 1)).astype(np.int64)
    white = rng.random(n) < 0.5
    intensity = np.where(white, 1.0, rng.uniform(0.6, 0.9, size=n)).astype(np.float32)
    return {"size": size, "x": x, "y": y, "intensity": intensity}


def render_digits(bank: DigitBank, which: np.ndarray, placement: dict[str, np.ndarray]) -> np.ndarray:
    """Canvases (n, 32, 32) float32 in [0, 1] of bank entries ``which`` at ``placement``."""
    n = len(which)
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    for k in range(n):
        s, x, y = int(placement["size"][k]), int(placement["x"][k]), int(placement["y"][k])
        out[k, y : y + s, x : x + s] = bank.glyph(int(which[k]), s) * placement["intensity"][k]
    return out


def render_clutter(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` clutter canvases: grey blobs, strokes or smooth noise on black (no digit)."""
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    kinds = rng.integers(0, 3, size=n)
    for k in range(n):
        img = out[k]
        if kinds[k] == 0:  # gaussian blobs
            for _ in range(int(rng.integers(1, 5))):
                cx, cy = rng.uniform(4, 28, size=2)
                sx, sy = rng.uniform(1.5, 6.0, size=2)
                img += rng.uniform(0.5, 1.0) * np.exp(
                    -(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2) / 2
                )
        elif kinds[k] == 1:  # straight strokes
            for _ in range(int(rng.integers(1, 5))):
                x0, y0, x1, y1 = rng.uniform(2, 30, size=4)
                t = np.linspace(0.0, 1.0, 48)
                px = np.round(x0 + (x1 - x0) * t).astype(int)
                py = np.round(y0 + (y1 - y0) * t).astype(int)
                v = rng.uniform(0.6, 1.0)
                for dx in (0, 1):
                    img[np.clip(py, 0, 31), np.clip(px + dx, 0, 31)] = v
        else:  # smooth noise texture
            small = rng.random((int(rng.integers(3, 9)),) * 2).astype(np.float32)
            up = Image.fromarray((small * 255).astype(np.uint8), mode="L").resize(
                (CANVAS, CANVAS), Image.BICUBIC
            )
            tex = np.asarray(up, dtype=np.float32) / 255.0
            img += np.where(tex > rng.uniform(0.4, 0.7), tex, 0.0)
    return np.clip(out, 0.0, 1.0)


def perturb(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """A light perturbation for near-duplicates: a 1 px shift, brightness jitter, faint noise."""
    dy, dx = rng.integers(-1, 2, size=2)
    img = np.roll(canvas, (int(dy), int(dx)), axis=(0, 1)) * rng.uniform(0.9, 1.1)
    img = img + rng.normal(0.0, 0.02, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def to_uint8(canvases: np.ndarray) -> np.ndarray:
    """Float canvases in [0, 1] to uint8 grey."""
    return np.round(np.clip(canvases, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------------------------
# The pool's examples


@dataclass(frozen=True)
class PoolExamples:
    """The pool's examples in pool order: images and their ground truth."""

    images: np.ndarray  # (N, 32, 32) uint8 grey
    types: np.ndarray  # (N,) object, one of EXAMPLE_TYPES
    digit: np.ndarray  # (N,) int64, true digit, -1 for clutter
    caption_digit: np.ndarray  # (N,) int64, digit the caption names
    caption_template: np.ndarray  # (N,) int64
    scan_index: np.ndarray  # (N,) int64, index into load_digits(), -1 for clutter
    source: np.ndarray  # (N,) int64, pool row a near-duplicate copies, else -1

    @property
    def captions(self) -> list[str]:
        return [caption(int(d), int(t)) for d, t in zip(self.caption_digit, self.caption_template)]


def type_counts(n: int, mix: dict[str, float] = DEFAULT_TYPE_MIX) -> dict[str, int]:
    """Exact per-type counts for ``n`` examples (near-duplicates take the rounding remainder)."""
    counts = {t: int(round(n * mix[t])) for t in EXAMPLE_TYPES[:-1]}
    counts["near_duplicate"] = n - sum(counts.values())
    if counts["near_duplicate"] < 0 or (counts["near_duplicate"] > 0 and counts["correct"] == 0):
        raise ValueError(f"cannot mix {n} examples as {mix}")
    return counts


def correct_before_duplicates(types: np.ndarray, *also: np.ndarray) -> None:
    """Every near-duplicate copies an earlier correct example: if the first near-duplicate comes
    before the first correct example, swap the two (in ``types`` and in each of ``also``), in place."""
    is_dup = types == "near_duplicate"
    if is_dup.any():
        first_dup, first_correct = int(np.argmax(is_dup)), int(np.argmax(types == "correct"))
        if first_dup < first_correct:
            for arr in (types, *also):
                arr[first_dup], arr[first_correct] = arr[first_correct], arr[first_dup]


def copy_near_duplicates(rng: np.random.Generator, types: np.ndarray, images: np.ndarray,
                         copy: Callable[[int, int], None], progress: bool = False) -> np.ndarray:
    """Make each near-duplicate, in pool order, a :func:`perturb`-ed copy of a random earlier correct
    example, then call ``copy(i, j)`` to copy the rest of what example ``j`` is to example ``i`` (it may
    draw from ``rng`` too). Returns each example's source row, -1 where it copies none."""
    from ..progress import progress_bar

    source = np.full(len(types), -1, dtype=np.int64)
    correct_so_far: list[int] = []
    for i in progress_bar(range(len(types)), desc="demo: pool examples", disable=not progress, leave=False):
        t = types[i]
        if t == "correct":
            correct_so_far.append(i)
        elif t == "near_duplicate":
            j = correct_so_far[int(rng.integers(0, len(correct_so_far)))]
            source[i] = j
            images[i] = perturb(rng, images[j])
            copy(i, j)
    return source


def make_pool(rng: np.random.Generator, bank: DigitBank, n: int, progress: bool = False) -> PoolExamples:
    """Draw ``n`` pool examples from ``bank`` (the pool-source digits) with the default type mix.

    - ``correct``: the caption names the true digit;
    - ``wrong``: the caption names one of the nine other digits (uniformly);
    - ``clutter``: a blob/stroke/noise image with the caption of a random digit;
    - ``near_duplicate``: a lightly perturbed copy of an earlier ``correct`` example, captioned
      with a random template naming the same digit.
    """
    counts = type_counts(n)
    types = np.array([t for t in EXAMPLE_TYPES for _ in range(counts[t])], dtype=object)
    types = types[rng.permutation(n)]
    correct_before_duplicates(types)

    which = rng.integers(0, len(bank), size=n)
    digit = bank.labels[which].astype(np.int64)
    scan_index = bank.indices[which].astype(np.int64)
    placement = draw_placement(rng, n)
    template = rng.integers(0, len(CAPTION_TEMPLATES), size=n).astype(np.int64)
    offset = rng.integers(1, 10, size=n)
    caption_digit = np.where(types == "wrong", (digit + offset) % 10, digit)
    random_digit = rng.integers(0, 10, size=n)
    is_clutter = types == "clutter"
    caption_digit = np.where(is_clutter, random_digit, caption_digit).astype(np.int64)
    digit = np.where(is_clutter, -1, digit)
    scan_index = np.where(is_clutter, -1, scan_index)

    images = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    is_digit = (types == "correct") | (types == "wrong")
    idx = np.flatnonzero(is_digit)
    images[idx] = render_digits(bank, which[idx], {k: v[idx] for k, v in placement.items()})
    idx = np.flatnonzero(is_clutter)
    images[idx] = render_clutter(rng, len(idx))

    def same_digit(i: int, j: int) -> None:
        digit[i] = caption_digit[i] = digit[j]
        scan_index[i] = scan_index[j]

    source = copy_near_duplicates(rng, types, images, same_digit, progress=progress)
    return PoolExamples(
        images=to_uint8(images),
        types=types,
        digit=digit.astype(np.int64),
        caption_digit=caption_digit,
        caption_template=template,
        scan_index=scan_index.astype(np.int64),
        source=source,
    )
