"""The v4 demo pool's domains: digits (the task) beside letters, shapes and textures (not the task).

DataComp's pool is full of well-captioned images that do little for a given evaluation task, and
generic alignment scores (the CLIP scores shipped with the pool) keep them. The v4 demo pool
holds that tension in small: besides the target domain (scikit-learn's real digit scans, as in
v3) it holds three other domains whose captions are just as correct but which teach nothing
about telling digits apart:

- ``letters``: the 26 capital letters in PIL's bundled default font (Aileron), in three stroke
  weights, 14-24 px high at random positions;
- ``shapes``: circles, rings, squares, triangles, crosses, diamonds and stars, filled or outlined,
  drawn at 4x and downsampled;
- ``textures``: horizontal, vertical and diagonal stripes, checkerboards, dots, grids and waves
  with random periods, phases and extents.

Every image is a grey 32x32 canvas, white or bright grey on black like the digits. Each domain
has its own caption templates; :func:`caption_table` lists every caption the pool can hold. The
pool's example types and noise (wrong captions, clutter, near-duplicates) are drawn by
:func:`make_pool`. Everything is driven by explicit ``numpy.random.Generator`` objects, so a seed
always gives the same images and captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from . import digits as D

CANVAS = D.CANVAS
DOMAINS = ("digits", "letters", "shapes", "textures")  # the captioned domains; "clutter" has no object
TARGET_DOMAIN = "digits"

LETTER_NAMES = tuple("abcdefghijklmnopqrstuvwxyz")
LETTER_TEMPLATES = (
    "the letter {l}",
    "a capital {l}",
    "letter {l}",
    "{l}",
    "the letter {l} on a black background",
    "a printed letter {l}.",
    "the character {l}",
    "an uppercase {l}",
)
SHAPE_NAMES = ("circle", "ring", "square", "triangle", "cross", "diamond", "star")
SHAPE_TEMPLATES = (
    "a {s}",
    "a white {s}",
    "a drawing of a {s}",
    "a {s} on a black background",
    "{s}",
    "a simple {s} shape",
    "a geometric {s}",
    "the shape of a {s}.",
)
TEXTURE_NAMES = ("horizontal stripes", "vertical stripes", "diagonal stripes", "checkerboard", "dots", "grid", "waves")
# textures are named by noun phrases that fill every template as they are ("a pattern of dots", "checkerboard")
TEXTURE_TEMPLATES = (
    "a pattern of {t}",
    "{t}",
    "a texture of {t}",
    "an image of {t}",
    "{t} on a black background",
    "black and white {t}",
)

# The v4 pool's mix: (image domain, example type) -> share of the pool. Near-duplicates copy an
# earlier correctly captioned example of any domain (so about a third of them are digits).
DEFAULT_MIX: dict[tuple[str, str], float] = {
    ("digits", "correct"): 0.20,
    ("digits", "wrong"): 0.10,
    ("letters", "correct"): 0.14,
    ("letters", "wrong"): 0.02,
    ("shapes", "correct"): 0.14,
    ("shapes", "wrong"): 0.02,
    ("textures", "correct"): 0.14,
    ("textures", "wrong"): 0.02,
    ("clutter", "clutter"): 0.12,
    ("any", "near_duplicate"): 0.10,
}


# ----------------------------------------------------------------------------------------------
# Captions


def caption_templates(domain: str) -> tuple[str, ...]:
    return {"digits": D.CAPTION_TEMPLATES, "letters": LETTER_TEMPLATES, "shapes": SHAPE_TEMPLATES,
            "textures": TEXTURE_TEMPLATES}[domain]


def label_names(domain: str) -> tuple[str, ...]:
    """The names of a domain's classes (what an image shows)."""
    return {"digits": D.DIGIT_WORDS, "letters": LETTER_NAMES, "shapes": SHAPE_NAMES, "textures": TEXTURE_NAMES}[domain]


def caption(domain: str, label: int, template: int) -> str:
    """The caption naming class ``label`` of ``domain`` with that domain's template ``template``."""
    if domain == "digits":
        return D.caption(label, template)
    tpl = caption_templates(domain)[template]
    name = label_names(domain)[label]
    return tpl.format(l=name, s=name, t=name)


@dataclass(frozen=True)
class CaptionTable:
    """Every caption of every domain, numbered: ``index(domain, label, template)`` into ``captions``."""

    captions: tuple[str, ...]
    offsets: dict[str, int]

    def index(self, domain: str, label, template):
        n_templates = len(caption_templates(domain))
        return self.offsets[domain] + np.asarray(label) * n_templates + np.asarray(template)


def caption_table() -> CaptionTable:
    captions: list[str] = []
    offsets = {}
    for domain in DOMAINS:
        offsets[domain] = len(captions)
        captions += [caption(domain, lab, t) for lab in range(len(label_names(domain)))
                     for t in range(len(caption_templates(domain)))]
    return CaptionTable(tuple(captions), offsets)


# ----------------------------------------------------------------------------------------------
# Rendering


def _intensity(rng: np.random.Generator, n: int) -> np.ndarray:
    """White half the time, else bright grey (as the digits)."""
    white = rng.random(n) < 0.5
    return np.where(white, 1.0, rng.uniform(0.6, 0.9, size=n)).astype(np.float32)


class LetterBank:
    """The 26 capitals in PIL's bundled default font, three stroke weights, pre-scaled to every
    height 14..24 px (values in [0, 1])."""

    MIN_HEIGHT, MAX_HEIGHT = 14, 24
    STROKES = (0, 2, 4)

    def __init__(self):
        font = ImageFont.load_default(size=64)
        self._glyphs: dict[tuple[int, int, int], np.ndarray] = {}
        for li, name in enumerate(LETTER_NAMES):
            for si, stroke in enumerate(self.STROKES):
                big = Image.new("L", (112, 112))
                ImageDraw.Draw(big).text((16, 4), name.upper(), fill=255, font=font, stroke_width=stroke,
                                         stroke_fill=255)
                box = big.getbbox()
                glyph = big.crop(box)
                w, h = glyph.size
                for height in range(self.MIN_HEIGHT, self.MAX_HEIGHT + 1):
                    width = max(3, min(CANVAS, int(round(w * height / h))))
                    small = glyph.resize((width, height), Image.LANCZOS)
                    self._glyphs[(li, si, height)] = np.asarray(small, dtype=np.float32) / 255.0

    def render(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        n = len(labels)
        out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
        stroke = rng.integers(0, len(self.STROKES), size=n)
        height = rng.integers(self.MIN_HEIGHT, self.MAX_HEIGHT + 1, size=n)
        fx, fy = rng.random(n), rng.random(n)
        intensity = _intensity(rng, n)
        for k in range(n):
            g = self._glyphs[(int(labels[k]), int(stroke[k]), int(height[k]))]
            h, w = g.shape
            x, y = int(fx[k] * (CANVAS - w + 1)), int(fy[k] * (CANVAS - h + 1))
            out[k, y:y + h, x:x + w] = g * intensity[k]
        return out


def _polygon(cx: float, cy: float, radius: float, angle: float, k: int, inner: float | None = None) -> list[tuple]:
    """A regular k-gon (or a k-pointed star when ``inner`` is a radius ratio) around (cx, cy)."""
    points = []
    steps = 2 * k if inner is not None else k
    for i in range(steps):
        r = radius * (inner if inner is not None and i % 2 else 1.0)
        a = angle + 2 * math.pi * i / steps
        points.append((cx + r * math.cos(a), cy + r * math.sin(a)))
    return points


def render_shapes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """One shape per canvas (``SHAPE_NAMES[label]``), drawn at 4x and box-downsampled."""
    scale = 4
    n = len(labels)
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    size = rng.uniform(12, 26, size=n)
    fx, fy = rng.random(n), rng.random(n)
    filled = rng.random(n) < 0.5
    angle = rng.uniform(0, 2 * math.pi, size=n)
    width = rng.integers(2, 4, size=n)
    intensity = _intensity(rng, n)
    for k in range(n):
        s = size[k] * scale
        r = s / 2
        cx = r + fx[k] * (CANVAS * scale - s)
        cy = r + fy[k] * (CANVAS * scale - s)
        lw = int(width[k]) * scale
        im = Image.new("L", (CANVAS * scale, CANVAS * scale))
        d = ImageDraw.Draw(im)
        name = SHAPE_NAMES[int(labels[k])]
        box = (cx - r, cy - r, cx + r, cy + r)
        fill = 255 if filled[k] else None
        outline = None if filled[k] else 255
        if name == "circle":
            d.ellipse(box, fill=255)
        elif name == "ring":
            d.ellipse(box, outline=255, width=lw)
        elif name == "square":
            q = r * 0.85
            d.rectangle((cx - q, cy - q, cx + q, cy + q), fill=fill, outline=outline, width=lw)
        elif name == "triangle":
            d.polygon(_polygon(cx, cy, r, angle[k], 3), fill=fill, outline=outline, width=lw)
        elif name == "cross":
            t = max(lw, s * 0.12)
            d.rectangle((cx - r, cy - t, cx + r, cy + t), fill=255)
            d.rectangle((cx - t, cy - r, cx + t, cy + r), fill=255)
        elif name == "diamond":
            d.polygon(_polygon(cx, cy, r, math.pi / 2, 4), fill=fill, outline=outline, width=lw)
        else:  # star
            d.polygon(_polygon(cx, cy, r, angle[k], 5, inner=0.45), fill=255)
        small = im.resize((CANVAS, CANVAS), Image.BOX)
        out[k] = np.asarray(small, dtype=np.float32) / 255.0 * intensity[k]
    return out


def render_textures(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """One texture per canvas (``TEXTURE_NAMES[label]``) over a random rectangle of at least 20x20 px."""
    n = len(labels)
    out = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    yy, xx = np.mgrid[0:CANVAS, 0:CANVAS].astype(np.float32)
    period = rng.uniform(4.0, 9.0, size=n)
    phase = rng.uniform(0.0, 1.0, size=(n, 2))
    flip = rng.random(n) < 0.5
    amp = rng.uniform(1.5, 3.5, size=n)
    wavelength = rng.uniform(10.0, 20.0, size=n)
    w = rng.integers(20, CANVAS + 1, size=n)
    h = rng.integers(20, CANVAS + 1, size=n)
    fx, fy = rng.random(n), rng.random(n)
    intensity = _intensity(rng, n)
    for k in range(n):
        p = period[k]
        x = xx + phase[k, 0] * p
        y = yy + phase[k, 1] * p
        name = TEXTURE_NAMES[int(labels[k])]
        if name == "horizontal stripes":
            img = (y % p) < p / 2
        elif name == "vertical stripes":
            img = (x % p) < p / 2
        elif name == "diagonal stripes":
            img = (((x - y) if flip[k] else (x + y)) % p) < p / 2
        elif name == "checkerboard":
            img = ((x // (p / 2)) + (y // (p / 2))) % 2 < 1
        elif name == "dots":
            img = ((x % p) - p / 2) ** 2 + ((y % p) - p / 2) ** 2 <= (p / 4) ** 2
        elif name == "grid":
            img = ((x % p) < 1.2) | ((y % p) < 1.2)
        else:  # waves
            img = ((y + amp[k] * np.sin(2 * math.pi * x / wavelength[k])) % p) < p / 2
        mask = np.zeros((CANVAS, CANVAS), dtype=bool)
        x0, y0 = int(fx[k] * (CANVAS - w[k] + 1)), int(fy[k] * (CANVAS - h[k] + 1))
        mask[y0:y0 + h[k], x0:x0 + w[k]] = True
        out[k] = np.where(img & mask, intensity[k], 0.0)
    return out


@dataclass
class Renderer:
    """Renders any domain: digits from a :class:`~flyt_datacomp.demo.digits.DigitBank` (one split of
    the scans), the other domains procedurally."""

    digit_bank: D.DigitBank

    @cached_property
    def letters(self) -> LetterBank:
        return LetterBank()

    def draw(self, rng: np.random.Generator, domain: str, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``n`` fresh examples of ``domain``: (canvases (n, 32, 32) float in [0, 1], labels, scan index
        into ``load_digits()`` or -1)."""
        if domain == "digits":
            which = rng.integers(0, len(self.digit_bank), size=n)
            images = D.render_digits(self.digit_bank, which, D.draw_placement(rng, n))
            return images, self.digit_bank.labels[which].astype(np.int64), self.digit_bank.indices[which].astype(np.int64)
        labels = rng.integers(0, len(label_names(domain)), size=n).astype(np.int64)
        if domain == "letters":
            images = self.letters.render(rng, labels)
        elif domain == "shapes":
            images = render_shapes(rng, labels)
        elif domain == "textures":
            images = render_textures(rng, labels)
        else:
            raise ValueError(f"unknown domain {domain!r}")
        return images, labels, np.full(n, -1, dtype=np.int64)


# ----------------------------------------------------------------------------------------------
# The pool's examples


@dataclass(frozen=True)
class PoolExamples:
    """The v4 pool's examples in pool order: images, captions and their ground truth."""

    images: np.ndarray  # (N, 32, 32) uint8 grey
    domain: np.ndarray  # (N,) object: one of DOMAINS, or "clutter"
    types: np.ndarray  # (N,) object: one of digits.EXAMPLE_TYPES
    label: np.ndarray  # (N,) int64: the class shown (within its domain), -1 for clutter
    caption_domain: np.ndarray  # (N,) object: the domain the caption speaks of
    caption_label: np.ndarray  # (N,) int64: the class the caption names (within caption_domain)
    caption_template: np.ndarray  # (N,) int64
    scan_index: np.ndarray  # (N,) int64: index into load_digits() for digits, else -1
    source: np.ndarray  # (N,) int64: pool row a near-duplicate copies, else -1

    @property
    def captions(self) -> list[str]:
        return [caption(str(d), int(lab), int(t))
                for d, lab, t in zip(self.caption_domain, self.caption_label, self.caption_template)]

    def names(self, domain: np.ndarray, label: np.ndarray) -> list[str | None]:
        return [label_names(str(d))[int(lab)] if d in DOMAINS and lab >= 0 else None for d, lab in zip(domain, label)]


def slot_counts(n: int, mix: dict[tuple[str, str], float] = DEFAULT_MIX) -> dict[tuple[str, str], int]:
    """Exact counts per (domain, type) for ``n`` examples (near-duplicates take the rounding remainder)."""
    keys = [k for k in mix if k[1] != "near_duplicate"]
    counts = {k: int(round(n * mix[k])) for k in keys}
    counts[("any", "near_duplicate")] = n - sum(counts.values())
    if counts[("any", "near_duplicate")] < 0 or counts[("digits", "correct")] == 0:
        raise ValueError(f"cannot mix {n} examples as {mix}")
    return counts


def make_pool(rng: np.random.Generator, renderer: Renderer, n: int, mix: dict[tuple[str, str], float] = DEFAULT_MIX,
              progress: bool = False) -> PoolExamples:
    """Draw ``n`` pool examples (digits from ``renderer``'s bank: the pool-source scans).

    - ``correct``: an image of a domain with a caption naming what it shows;
    - ``wrong``: the caption names another class of the same domain (uniformly);
    - ``clutter``: a blob/stroke/noise image (no object) with a random caption of a random domain;
    - ``near_duplicate``: a lightly perturbed copy of an earlier ``correct`` example (any domain),
      captioned with a random template naming the same class.
    """
    counts = slot_counts(n, mix)
    slots = [k for k in counts for _ in range(counts[k])]
    order = rng.permutation(n)
    domain = np.array([slots[i][0] for i in order], dtype=object)
    types = np.array([slots[i][1] for i in order], dtype=object)
    D.correct_before_duplicates(types, domain)

    images = np.zeros((n, CANVAS, CANVAS), dtype=np.float32)
    label = np.full(n, -1, dtype=np.int64)
    scan_index = np.full(n, -1, dtype=np.int64)
    caption_domain = domain.copy()
    caption_label = np.full(n, -1, dtype=np.int64)
    template = np.zeros(n, dtype=np.int64)
    for dom in DOMAINS:
        idx = np.flatnonzero(domain == dom)
        if len(idx) == 0:
            continue
        imgs, labs, scans = renderer.draw(rng, dom, len(idx))
        images[idx], label[idx], scan_index[idx] = imgs, labs, scans
        k = len(label_names(dom))
        offset = rng.integers(1, k, size=len(idx))
        wrong = types[idx] == "wrong"
        caption_label[idx] = np.where(wrong, (labs + offset) % k, labs)
        template[idx] = rng.integers(0, len(caption_templates(dom)), size=len(idx))
    idx = np.flatnonzero(types == "clutter")
    if len(idx):
        images[idx] = D.render_clutter(rng, len(idx))
        cap_dom = np.asarray(DOMAINS, dtype=object)[rng.integers(0, len(DOMAINS), size=len(idx))]
        caption_domain[idx] = cap_dom
        for j, dom in zip(idx, cap_dom):
            caption_label[j] = rng.integers(0, len(label_names(dom)))
            template[j] = rng.integers(0, len(caption_templates(dom)))

    def same_class(i: int, j: int) -> None:
        domain[i] = caption_domain[i] = domain[j]
        label[i] = caption_label[i] = label[j]
        scan_index[i] = scan_index[j]
        template[i] = rng.integers(0, len(caption_templates(domain[j])))  # a fresh caption of the same class

    source = D.copy_near_duplicates(rng, types, images, same_class, progress=progress)
    return PoolExamples(
        images=D.to_uint8(images), domain=domain, types=types, label=label, caption_domain=caption_domain,
        caption_label=caption_label, caption_template=template, scan_index=scan_index, source=source,
    )
