"""DataComp's seven filtering baselines over a pool: which examples each one keeps.

``evaluate(pool, name, params, settings)`` returns a bool per pool example; the filter writes the
kept uids as a subset file (``--name NAME``), or uses them as a hard mask under any sampler
(``--mask NAME``). The parameters and their checks are DataComp's (``--arch``, ``--fraction``,
``--threshold``, ``--image_based_scale``); the rules are in :mod:`.rules`. Caption work runs in
``settings.workers`` processes, shard by shard; the nearest-centroid search of the image-based
baselines runs on ``settings.num_gpus`` GPUs (one shard per GPU at a time), or on the CPU when it is 0.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
from typing import Any

import numpy as np

from ..errors import FlytInputError
from ..parallel import process_map, thread_map
from ..pool import Pool
from . import assets, rules

BASELINES = {
    "no_filter": "every example of the pool",
    "basic_filter": "fastText English, > 2 words and > 5 characters, shorter image side >= 200 px, aspect ratio <= 3",
    "text_based": "fastText English and a caption word whose first WordNet synset is an ImageNet-21k class",
    "image_based": "English caption with > 1 fastText token and > 5 characters, whose L/14 image embedding's "
                   "nearest centroid is the nearest centroid of some ImageNet-1k training image",
    "image_based_intersect_clip_score": "image_based among the examples that pass the clip_score threshold "
                                        "(the threshold taken over the whole pool)",
    "clip_score": "CLIP score >= a threshold (a value, or the value at rank int(N * fraction))",
    "laion2b": "gcld3 English and B/32 CLIP score >= 0.28 (LAION-2B's rule)",
}
ARCH_COLUMNS = {"b32": "clip_b32_similarity_score", "l14": "clip_l14_similarity_score"}
TEXT = "text"
IMAGE_EMBEDDING = "l14_img"


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    """DataComp's baseline options (``None``: not given)."""

    arch: str | None = None
    fraction: float | None = None
    threshold: float | None = None
    image_based_scale: str | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """How to run the baselines: their assets, caption worker processes, GPUs and GPU batch size."""

    assets: assets.AssetPaths = assets.AssetPaths()
    workers: int = 1
    num_gpus: int = 0  # 0: nearest centroids on the CPU
    batch_size: int = 1024
    progress: bool = True


@dataclasses.dataclass(frozen=True)
class Found:
    """What a baseline needs beyond each example's own row, found once and given to every part of the
    pool (by the Ray driver), so each part judges its rows as one machine does: an image-based
    baseline's target centroids (the nearest centroids of the ImageNet-1k images) with the records of
    the files they came from (None for ``clip_score``), and, for ``clip_score`` and the intersect
    variant with a ``fraction``, the CLIP threshold at that rank of the whole pool (``(t,)``; None: not
    found, the baseline's ``threshold`` is used)."""

    targets: np.ndarray | None = None
    in1k: tuple[dict[str, Any], ...] = ()
    threshold: tuple[Any] | None = None


@dataclasses.dataclass
class BaselineResult:
    mask: np.ndarray  # bool per pool example: kept by the baseline
    details: dict[str, Any]  # for the sidecar: thresholds, assets used, ...


def check_params(name: str, params: BaselineParams) -> None:
    """DataComp's rules for which options each baseline takes (its ``check_args``), as input errors."""
    if name not in BASELINES:
        raise FlytInputError(f"unknown baseline {name!r}: the baselines are {', '.join(BASELINES)}")
    p = params
    clip = "clip_score" in name
    image = "image_based" in name
    if name == "laion2b" and p.given():
        raise FlytInputError(f"laion2b takes none of `arch`, `fraction`, `threshold`, `image_based_scale` (got {p.given()})",
                             params=["arch", "fraction", "threshold", "image_based_scale"])
    if clip:
        if (p.fraction is None) == (p.threshold is None):
            raise FlytInputError(f"{name} needs exactly one of `fraction` and `threshold`", params=["fraction", "threshold"])
        if p.arch is None:
            raise FlytInputError(f"{name} needs `arch` ({', '.join(ARCH_COLUMNS)}): which CLIP score to threshold",
                                 params=["arch"])
    for option, value in (("fraction", p.fraction), ("threshold", p.threshold), ("arch", p.arch)):
        if value is not None and not clip:
            raise FlytInputError(f"`{option}` applies only to the clip_score baselines, not to {name}", params=[option])
    if p.arch is not None and p.arch not in ARCH_COLUMNS:
        raise FlytInputError(f"`arch` must be one of {', '.join(ARCH_COLUMNS)}, got {p.arch!r}", params=["arch"])
    if p.fraction is not None and not 0 < p.fraction <= 1:
        raise FlytInputError(f"`fraction` must be in (0, 1], got {p.fraction}", params=["fraction"])
    if p.image_based_scale is not None:
        if not image:
            raise FlytInputError(f"`image_based_scale` applies only to the image_based baselines, not to {name}",
                                 params=["image_based_scale"])
        if p.image_based_scale not in assets.CENTROID_SCALES:
            raise FlytInputError(f"`image_based_scale` must be one of {', '.join(assets.CENTROID_SCALES)}, "
                                 f"got {p.image_based_scale!r}", params=["image_based_scale"])


def check_settings(settings: RunSettings) -> None:
    if settings.workers < 1:
        raise FlytInputError(f"`workers` must be at least 1, got {settings.workers}", params=["workers"])
    if settings.batch_size < 1:
        raise FlytInputError(f"`centroid_batch_size` must be at least 1, got {settings.batch_size}",
                             params=["centroid_batch_size"])
    if settings.num_gpus < 0:
        raise FlytInputError(f"`num_gpus` must be >= 0, got {settings.num_gpus}", params=["num_gpus"])
    if settings.num_gpus:
        import torch

        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if settings.num_gpus > available:
            raise FlytInputError(f"`num_gpus` {settings.num_gpus} asked for, but {available} CUDA device(s) are available",
                                 params=["num_gpus"])


def evaluate(pool: Pool, name: str, params: BaselineParams, settings: RunSettings,
             within: np.ndarray | None = None, found: Found | None = None) -> BaselineResult:
    """Which pool examples baseline ``name`` keeps. ``within`` (a bool mask) restricts the pool the
    clip_score fraction is taken over (DataComp: the whole pool); per-example rules ignore it.
    ``found``: an image-based baseline's targets (and threshold), or clip_score's threshold, found
    beforehand over the whole pool."""
    locate_assets(name, params, settings, found=found)
    if found is not None:
        return (_image_based if "image_based" in name else _clip_score)(pool, params, settings, within, found)
    return _EVALUATORS[name](pool, params, settings, within)


def locate_assets(name: str, params: BaselineParams, settings: RunSettings, found: Found | None = None) -> None:
    """Find every file and package baseline ``name`` needs, or raise one error that names all that are
    missing (so a first run lists everything to fetch at once, not one thing per run); with ``found``
    the ImageNet-1k embeddings are not needed (their targets are known)."""
    check_params(name, params)
    check_settings(settings)
    needs = {"basic_filter": ("fasttext",), "text_based": ("fasttext", "nltk"), "laion2b": ("gcld3",),
             "image_based": ("fasttext",), "image_based_intersect_clip_score": ("fasttext",)}.get(name, ())
    checks = []
    if "fasttext" in needs:
        checks.append(lambda: assets.fasttext_model(settings.assets))
    if name == "text_based":
        checks.append(lambda: assets.read_wordnet_ids(assets.wordnet_ids_file(settings.assets)))
    if "image_based" in name:
        checks.append(lambda: assets.centroids_file(settings.assets, params.image_based_scale))
        if found is None:
            checks.append(lambda: assets.in1k_files(settings.assets))
    checks += [functools.partial(_require_language_packages, module) for module in needs]
    if name == "text_based":
        checks.append(functools.partial(_use_wordnet, settings.assets.wordnet_data))
    problems = []
    for check in checks:
        try:
            check()
        except FlytInputError as exc:
            if all(p.message != exc.message for p in problems):  # a missing package stops two checks
                problems.append(exc)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        listed = "; ".join(f"({i}) {p.message}" for i, p in enumerate(problems, 1))
        raise FlytInputError(f"{name} lacks {len(problems)} things it needs: {listed}",
                             params=sorted({q for p in problems for q in p.params}))


def _use_wordnet(data_dir: str | None) -> None:
    from .wordnet import use_wordnet

    use_wordnet(data_dir)


# --------------------------------------------------------------------------- the baselines


def _no_filter(pool, params, settings, within) -> BaselineResult:
    return BaselineResult(np.ones(pool.size, dtype=bool), {})


def _clip_threshold(pool: Pool, params: BaselineParams, within,
                    found: tuple[Any] | None = None) -> tuple[str, np.ndarray, Any, dict[str, Any]]:
    column = ARCH_COLUMNS[params.arch]
    scores = pool.column(column)
    if scores.dtype.kind not in "fiu":
        raise FlytInputError(f"column {column!r} of the pool at {pool.url} holds {scores.dtype} values, not numbers")
    if found is not None:  # the fraction's threshold, found over the whole pool
        (t,) = found
    elif params.threshold is not None:
        t = params.threshold
    else:
        t = rules.rank_threshold(scores if within is None else scores[within], params.fraction)
    details = {"column": column, "threshold": None if t is None else float(t),
               "threshold_over": "pool" if within is None else "restricted pool"}
    return column, scores, t, details


def _clip_score(pool, params, settings, within, found: Found | None = None) -> BaselineResult:
    _, scores, t, details = _clip_threshold(pool, params, within, None if found is None else found.threshold)
    return BaselineResult(rules.at_least(scores, t), details)


def _basic_job(columns: tuple[np.ndarray, ...], model: str) -> np.ndarray:
    from .language import fasttext_languages

    texts, widths, heights = columns
    langs = np.full(len(texts), None, dtype=object)
    cheap = rules.basic_caption_mask(texts) & rules.image_size_mask(widths, heights)
    langs[cheap] = fasttext_languages(texts[cheap], model)
    return rules.basic_filter_mask(texts, langs, widths, heights)


def _text_based_job(columns: tuple[np.ndarray, ...], model: str, ids_file: str, wordnet_data: str | None) -> np.ndarray:
    from .language import fasttext_languages
    from .wordnet import first_synset_offset, use_wordnet

    (texts,) = columns
    use_wordnet(wordnet_data)
    return rules.text_entity_mask(texts, fasttext_languages(texts, model), first_synset_offset, _wordnet_ids(ids_file))


@functools.lru_cache(maxsize=4)
def _wordnet_ids(path: str) -> frozenset[int]:
    from pathlib import Path

    return assets.read_wordnet_ids(Path(path))


def _caption_job(columns: tuple[np.ndarray, ...], model: str) -> np.ndarray:
    from .language import fasttext_languages, fasttext_token_counts

    texts, candidates = columns
    texts = texts[candidates]
    langs = np.full(len(texts), None, dtype=object)
    counts = fasttext_token_counts(texts)
    cheap = rules.caption_length_mask(texts, counts)
    langs[cheap] = fasttext_languages(texts[cheap], model)
    out = np.zeros(len(candidates), dtype=bool)
    out[np.flatnonzero(candidates)] = rules.caption_filter_mask(texts, langs, counts)
    return out


def _laion_job(columns: tuple[np.ndarray, ...]) -> np.ndarray:
    from .language import gcld3_languages

    texts, scores = columns
    langs = np.full(len(texts), None, dtype=object)
    cheap = rules.at_least(scores, rules.LAION2B_THRESHOLD)
    langs[cheap] = gcld3_languages(texts[cheap])
    return rules.laion2b_mask(langs, scores)


def _per_shard(pool: Pool, columns: list[str], job, settings: RunSettings, desc: str) -> np.ndarray:
    """Run ``job`` on each shard's columns (in worker processes), concatenated in pool order."""
    parts = list(process_map(job, _payloads(pool, columns, None, desc), settings.workers, what=f"the {desc} caption rules"))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def _basic_filter(pool, params, settings, within) -> BaselineResult:
    model = assets.fasttext_model(settings.assets)
    job = functools.partial(_basic_job, model=str(model))
    mask = _per_shard(pool, [TEXT, "original_width", "original_height"], job, settings, "basic_filter")
    return BaselineResult(mask, {"assets": {"fasttext": assets.record(model, "fasttext")}})


def _text_based(pool, params, settings, within) -> BaselineResult:
    model = assets.fasttext_model(settings.assets)
    ids = assets.wordnet_ids_file(settings.assets)
    job = functools.partial(_text_based_job, model=str(model), ids_file=str(ids), wordnet_data=settings.assets.wordnet_data)
    mask = _per_shard(pool, [TEXT], job, settings, "text_based")
    return BaselineResult(mask, {"assets": {"fasttext": assets.record(model, "fasttext"),
                                            "imagenet21k_wordnet_ids": assets.record(ids, "imagenet21k_wordnet_ids")}})


def _laion2b(pool, params, settings, within) -> BaselineResult:
    mask = _per_shard(pool, [TEXT, ARCH_COLUMNS["b32"]], _laion_job, settings, "laion2b")
    return BaselineResult(mask, {"threshold": rules.LAION2B_THRESHOLD, "column": ARCH_COLUMNS["b32"]})


def image_targets(params: BaselineParams, settings: RunSettings, centroids=None, device: str = "cpu") -> Found:
    """The target centroids of an image-based baseline (the distinct nearest centroids of the ImageNet-1k
    training images) and the records of the ImageNet files: nothing of the pool, the same for any part
    of it."""
    from . import centroids as nearest

    if centroids is None:
        centroids = assets.read_centroids(assets.centroids_file(settings.assets, params.image_based_scale))
    in1k_paths = assets.in1k_files(settings.assets)
    blocks = (assets.read_in1k_features(p) for p in in1k_paths)
    targets = nearest.target_centroids(blocks, centroids, batch_size=settings.batch_size, device=device)
    return Found(targets, tuple(assets.record(p, assets.identify(p)) for p in in1k_paths))


def _image_based(pool, params, settings, within, found: Found | None = None) -> BaselineResult:
    from . import centroids as nearest

    model = assets.fasttext_model(settings.assets)
    centroid_path = assets.centroids_file(settings.assets, params.image_based_scale)
    details: dict[str, Any] = {}
    column = t = None
    if params.arch is not None:  # the intersect variant: the CLIP threshold first, over the whole pool
        column, _, t, details = _clip_threshold(pool, params, within, None if found is None else found.threshold)
    centroids = assets.read_centroids(centroid_path)
    devices = [f"cuda:{i}" for i in range(settings.num_gpus)] or ["cpu"]
    if found is None:
        found = image_targets(params, settings, centroids, devices[0])
    targets = found.targets

    def prepare(data, values):
        candidates = np.ones(data.shard.num_rows, dtype=bool) if column is None else rules.at_least(values[1], t)
        return values[0], candidates

    columns = [TEXT] if column is None else [TEXT, column]
    captions = process_map(functools.partial(_caption_job, model=str(model)),
                           _payloads(pool, columns, prepare, "image_based"), settings.workers,
                           what="the image_based caption rules")
    mask = np.zeros(pool.size, dtype=bool)
    free: queue.Queue = queue.Queue()
    for d in devices:
        free.put(d)
    on_device: dict[str, Any] = {}

    def assign(shard, rows: np.ndarray) -> None:
        device = free.get()
        try:
            if device not in on_device:
                on_device[device] = centroids.to(device)
            if rows.any():
                emb = pool.read_shard(shard, npz_keys=[IMAGE_EMBEDDING]).arrays[IMAGE_EMBEDDING]
                if emb.ndim != 2 or emb.shape[1] != centroids.shape[1]:
                    raise FlytInputError(f"{IMAGE_EMBEDDING} in {shard.npz} has shape {emb.shape}; the centroids "
                                         f"{centroid_path} are {tuple(centroids.shape)}")
                labels = nearest.nearest_centroids(emb[rows], on_device[device], batch_size=settings.batch_size,
                                                   device=device)
                kept = np.flatnonzero(rows)[rules.in_targets(labels, targets)]
                mask[shard.offset + kept] = True
        finally:
            free.put(device)

    for _ in thread_map(lambda item: assign(*item), zip(pool.shards, captions), len(devices)):
        pass  # one thread per device, each shard on the device that is free
    details.update({
        "device": ", ".join(devices), "num_centroids": int(centroids.shape[0]), "target_centroids": int(len(targets)),
        "assets": {"fasttext": assets.record(model, "fasttext"),
                   "centroids": assets.record(centroid_path, assets.identify(centroid_path)),
                   "in1k_embeddings": list(found.in1k)},
    })
    return BaselineResult(mask, details)


def _payloads(pool: Pool, columns: list[str], prepare, desc: str):
    """Each shard's columns, in pool order (``prepare(shard data, values)`` reshapes them)."""
    for data in pool.iter_shards(columns, desc=desc):
        values = tuple(data.columns[c] for c in columns)
        yield values if prepare is None else prepare(data, values)


def _require_language_packages(*modules: str) -> None:
    from .optional import require

    for m in modules:
        require(m)


_EVALUATORS = {
    "no_filter": _no_filter,
    "basic_filter": _basic_filter,
    "text_based": _text_based,
    "image_based": _image_based,
    "image_based_intersect_clip_score": _image_based,
    "clip_score": _clip_score,
    "laion2b": _laion2b,
}


def unmatched_assets(details: dict[str, Any]) -> list[str]:
    """Notes for assets that are not the files DataComp publishes (the uid set may then differ)."""
    notes = []
    for name, rec in (details.get("assets") or {}).items():
        for r in rec if isinstance(rec, list) else [rec]:
            if r.get("datacomp_file") is False:
                notes.append(f"{name} asset {r['path']} is not the file DataComp publishes (sha256 differs)")
            elif "datacomp_file" not in r:
                notes.append(f"{name} asset {r['path']} is not one of DataComp's published files")
    return notes

