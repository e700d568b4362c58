"""The main job: pool metadata + a score -> a DataComp subset file.

``python -m flyt_datacomp.filter --metadata-dir URL --score SOURCE --output subset.npy``
(also ``flyt-datacomp filter``). Writes the subset ``.npy`` (sorted ``u8,u8`` uids, repeated
uids carrying repetition counts), its JSON sidecar and a PNG histogram of repetitions.
DataComp's own spellings work too (``--metadata_dir``, ``--save_path``, ``--num_workers``,
``--arch``), so ``--arch l14 --fraction 0.3`` writes exactly DataComp's ``clip_score`` baseline.
The samplers and their options come from :data:`flyt_datacomp.sampling.SAMPLERS`, the score sources
from :data:`flyt_datacomp.scores.SCORE_SOURCES`. ``--demo`` runs the same pipeline on the built-in
digits pool.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import sampling
from .baselines import datacomp as baselines
from .baselines.assets import AssetPaths
from .baselines.cli import asset_options, pop_asset_options
from .baselines.masks import BaselineMask, MaskContext, apply_masks, resolve_mask
from .commands import command
from .errors import FlytInputError, quote
from .io import OutputSet, check_free_space, format_bytes, is_url, local_path
from .pool import Pool
from .scales import SCALES, get_scale
from .scores import load_scores, standardize
from .uids import subset_file_bytes, subset_outputs, write_subset

# More entries than any DataComp scale needs (xlarge draws 1.28e10): a 2.2 TB subset file.
MAX_SUBSET_ENTRIES = 2**37
ARCH_COLUMNS = baselines.ARCH_COLUMNS  # DataComp's --arch


def _dest(param: sampling.Param) -> str:
    return param.option.lstrip("-").replace("-", "_")


@dataclasses.dataclass
class FilterConfig:
    """Everything that determines a subset; options left as None are resolved from the pool/scale.

    ``sampler_options`` holds the registered samplers' options by their keyword name (``alpha``,
    ``group_size``, ``fraction``, ...); :meth:`from_options` builds a config from the command line's
    option names (``scs_alpha``, ``scs_batch``, ``fraction``, ...).
    """

    metadata_dir: str
    score: str | None  # None: write the examples that survive --name / --mask, once each
    output: str | Path  # a local path or an fsspec URL
    sampler: str | None = None  # None: threshold when a fraction/threshold is given, else scs
    sampler_options: dict[str, Any] = dataclasses.field(default_factory=dict)
    scale: str | None = None
    num_samples: int | None = None
    seed: int = 0
    standardize: bool = False
    temperature: float = 1.0
    overwrite: bool = False
    progress: bool = True
    allow_score_independent: bool = False  # accept a draw whose counts do not depend on the scores
    num_workers: int = 4  # metadata shards read in parallel (threads)
    shards_dir: str | None = None  # restrict the pool to uids with an image in these downloaded shards
    inputs_dir: str | None = None  # an input store, for --score store:NAME and store: masks
    name: str | None = None  # DataComp's --name: one of its baselines, as the first mask
    name_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # its arch, fraction, threshold
    masks: tuple[str, ...] = ()  # hard filters: only examples inside every mask can be drawn
    image_based_scale: str | None = None  # which DataComp centroids the image_based baselines use
    assets: AssetPaths = AssetPaths()  # where DataComp's baseline assets are
    num_gpus: int = 0  # image_based baselines: GPUs for the nearest-centroid search (0: CPU)
    batch_size: int = 1024  # image_based baselines: embeddings per nearest-centroid batch

    @classmethod
    def from_options(cls, **options: Any) -> FilterConfig:
        """A config from option names as the command line spells them (its ``dest`` names)."""
        by_dest = {_dest(p): p.name for p, _ in sampling.all_params().values()}
        fields = {f.name for f in dataclasses.fields(cls)}
        sampler_options, kwargs = dict(options.pop("sampler_options", None) or {}), {}
        for key, value in options.items():
            if key in by_dest and key not in fields:
                if value is not None and value is not False:  # unset option / flag not given
                    sampler_options[by_dest[key]] = value
            elif key in fields:
                kwargs[key] = value
            else:
                raise TypeError(f"unknown filter option {key!r}")
        return cls(sampler_options=sampler_options, **kwargs)

    @property
    def sampler_name(self) -> str:
        if self.sampler is not None:
            return self.sampler
        given = self.sampler_options
        return "threshold" if given.get("fraction") is not None or given.get("value") is not None else "scs"


@dataclasses.dataclass
class FilterResult:
    output: str | Path
    sidecar: str | Path
    histogram: str | Path
    counts: np.ndarray
    pool: Pool
    stats: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)


def check_options(cfg: FilterConfig) -> OutputSet:
    """Reject options that are invalid or do not apply to the chosen sampler, and outputs that
    could not be written, before any work. Returns the checked output set."""
    if cfg.name is not None:
        baselines.check_params(cfg.name, name_params(cfg))
    if cfg.score is None:
        check_survivors_only(cfg)
    else:
        check_sampler_options(cfg)
    if not (cfg.temperature > 0 and np.isfinite(cfg.temperature)):
        raise FlytInputError(f"--temperature must be a positive number, got {cfg.temperature}")
    if cfg.scale is not None:
        get_scale(cfg.scale)
    if not str(cfg.output).endswith(".npy"):
        raise FlytInputError(f"--output must be a .npy file, got {quote(str(cfg.output))}")
    outputs = OutputSet(subset_outputs(cfg.output), overwrite=cfg.overwrite)
    outputs.preflight()
    if cfg.num_samples is not None:
        check_subset_size(cfg.num_samples, cfg.output)
    return outputs


def name_params(cfg: FilterConfig) -> baselines.BaselineParams:
    """The --name baseline's DataComp options (--image_based_scale included when given)."""
    params = dict(cfg.name_params)
    if cfg.image_based_scale is not None:
        params.setdefault("image_based_scale", cfg.image_based_scale)
    return baselines.BaselineParams(**params)


def check_survivors_only(cfg: FilterConfig) -> None:
    """Without a score the survivors of the masks are written: no sampler options apply."""
    if cfg.name is None and not cfg.masks:
        raise FlytInputError("give --score (or --arch), or --name / --mask to write the examples they keep")
    given = [p.option for p, _ in sampling.all_params().values()
             if cfg.sampler_options.get(p.name) is not None and cfg.sampler_options.get(p.name) is not False]
    if cfg.sampler is not None or cfg.num_samples is not None or cfg.standardize or given:
        option = given[0] if given else "--sampler" if cfg.sampler else "--num-samples" if cfg.num_samples else "--standardize"
        what = f"--name {cfg.name}" if cfg.name else "--mask without --score"
        raise FlytInputError(f"option {option} does not apply to {what}: it writes every example that survives, once "
                             "(give --score to sample among the survivors)")


def check_sampler_options(cfg: FilterConfig) -> None:
    if cfg.name is not None:
        raise FlytInputError(f"--name {cfg.name} writes DataComp's baseline and takes no --score; to sample among "
                             f"its examples use --mask {cfg.name} with --score")
    name = cfg.sampler_name
    if name not in sampling.SAMPLERS:
        raise FlytInputError(f"--sampler must be one of {', '.join(sampling.SAMPLERS)}, got {name!r}")
    spec = sampling.SAMPLERS[name]
    mine = {p.name for p in spec.params}
    for option, (param, users) in sampling.all_params().items():
        value = cfg.sampler_options.get(param.name)
        if value is not None and value is not False and param.name not in mine:
            raise FlytInputError(f"option {option} does not apply to --sampler {name} (it is {'/'.join(users)}'s)")
    unknown = set(cfg.sampler_options) - {p.name for p, _ in sampling.all_params().values()}
    if unknown:
        raise FlytInputError(f"unknown sampler option(s) {', '.join(sorted(unknown))}")
    if cfg.num_samples is not None and not spec.draws:
        raise FlytInputError(f"option --num-samples does not apply to --sampler {name}")
    spec.validate(cfg.sampler_options)
    fraction = cfg.sampler_options.get("fraction")
    if fraction is not None and not 0 < fraction <= 1:
        raise FlytInputError(f"--fraction must be in (0, 1], got {fraction}")


def check_subset_size(entries: int, output: str | Path) -> None:
    """Refuse a subset that no DataComp scale needs or that the output's disk cannot hold."""
    if entries > MAX_SUBSET_ENTRIES:
        raise FlytInputError(
            f"--num-samples {entries:,} would write a {format_bytes(subset_file_bytes(entries))} subset file; "
            f"the most this tool writes is {MAX_SUBSET_ENTRIES:,} entries (DataComp's largest scale, "
            "xlarge, draws 12.8 billion)"
        )
    if not is_url(output):
        check_free_space(local_path(output).parent, subset_file_bytes(entries), f"the subset file {output}")


def resolve_sampler_params(cfg: FilterConfig, pool_size: int) -> dict[str, Any]:
    """The sampler's keyword arguments, with scale / pool defaults filled in (seed aside)."""
    spec = sampling.SAMPLERS[cfg.sampler_name]
    scale = get_scale(cfg.scale) if cfg.scale else None
    num_samples = None
    if spec.draws:
        num_samples = int(cfg.num_samples if cfg.num_samples is not None else (scale.pool_size if scale else pool_size))
    return spec.resolve(cfg.sampler_options, sampling.DefaultsContext(scale, pool_size, num_samples))


def restrict_to_downloaded(pool: Pool, shards_dir: str, progress: bool) -> np.ndarray:
    """Pool positions whose uid has an image in the downloaded shards (img2dataset's index)."""
    from .shards import index_shards

    index = index_shards(shards_dir, progress=progress)
    keep = np.flatnonzero(index.images_of(pool.uids) > 0)
    if keep.size == 0:
        raise FlytInputError(f"none of the pool's {pool.size:,} uids has an image in {shards_dir}: "
                             "is it the image shards folder of this pool?")
    return keep


def default_notes(cfg: FilterConfig, params: dict[str, Any], pool_size: int) -> list[str]:
    """Without --scale, say which SCS values were defaulted and whether medium's alpha fits this pool."""
    if cfg.scale is not None or cfg.sampler_name != "scs":
        return []
    given = cfg.sampler_options
    parts = []
    if given.get("alpha") is None:
        parts.append(f"alpha {params['alpha']} (the paper's medium value)")
    if given.get("group_size") is None:
        parts.append(f"G {params['group_size']:,} (N / 1280, the paper's number of rounds)")
    if not parts:
        return []
    note = f"no --scale: SCS uses {' and '.join(parts)}"
    medium = SCALES["medium"].pool_size
    if given.get("alpha") is None and not medium / 4 <= pool_size <= medium * 4:
        note += (f"; alpha was tuned for the medium pool ({medium:,} examples) and this pool has {pool_size:,}: "
                 "consider --scale or --scs-alpha (the paper's small pool uses 0.5)")
    return [note]


def run_filter(cfg: FilterConfig) -> FilterResult:
    """Pool + score source + sampler -> subset file, sidecar and histogram. Returns what it wrote.

    Every check that can fail runs before the expensive steps; the three output files are
    committed together, so the output path holds either the previous complete set or the new one.
    """
    check_options(cfg)
    start = time.perf_counter()
    pool = Pool(cfg.metadata_dir, progress=cfg.progress, workers=cfg.num_workers)
    keep = restrict_to_downloaded(pool, cfg.shards_dir, cfg.progress) if cfg.shards_dir else None
    masked = Restriction.apply(cfg, pool, keep)
    if cfg.score is None:
        return write_survivors(cfg, pool, masked, start)
    if masked.report:
        keep = masked.positions
        if keep.size == 0:
            raise FlytInputError(f"no example of the pool survives the masks ({masked.describe()}): nothing to sample")
    name = cfg.sampler_name
    spec = sampling.SAMPLERS[name]
    size = pool.size if keep is None else keep.size
    params = resolve_sampler_params(cfg, size)
    if "num_samples" in params:
        check_subset_size(params["num_samples"], cfg.output)
    scores = load_scores(pool, cfg.score, within=keep, inputs_dir=cfg.inputs_dir)
    values = scores.values if keep is None else scores.values[keep]
    logits = standardize(values) if cfg.standardize else values
    logits = logits / cfg.temperature
    degenerate = sampling.score_independence(name, logits, params)
    if degenerate and not cfg.allow_score_independent:
        raise FlytInputError(f"{degenerate}. Pass --allow-score-independent to write this subset anyway.")
    drawn = spec(logits, _as_stored(params, scores, cfg), seed=cfg.seed, progress=cfg.progress)
    if keep is None:
        counts = drawn
    else:
        counts = np.zeros(pool.size, dtype=np.int64)
        counts[keep] = drawn
    notes = default_notes(cfg, params, size) + masked.notes()
    notes += [n for n in (degenerate, sampling.concentration(drawn)) if n]
    if scores.extra_uids:
        notes.append(f"the score file {scores.source} has {scores.extra_uids:,} uids that are not in the pool; "
                     "they were ignored")
    info = {
        "inputs": {
            **masked.inputs(cfg, pool),
            "score_source": scores.source,
            "score_kind": scores.kind,
            "inputs_dir": cfg.inputs_dir,
            "score_file_extra_uids": scores.extra_uids,
        },
        "masks": masked.report,
        "score_transform": {"standardize": cfg.standardize, "temperature": cfg.temperature,
                            "statistics_over": masked.statistics_over()},
        "sampler": name,
        "sampler_params": {k: v for k, v in params.items() if k != "device"},
        "sampler_defaults": sorted(k for k in params if cfg.sampler_options.get(k) is None
                                   and k not in ("num_samples", "device") and params[k] is not None),
        "device": params.get("device", "cpu"),  # where the draw ran (CPU unless --device cuda)
        "scale": cfg.scale,
        "seed": cfg.seed,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    stats = write_subset(cfg.output, pool.uids, counts, info=info, overwrite=cfg.overwrite,
                         histogram_title=f"{name} on {scores.source}")
    sidecar, histogram = subset_outputs(cfg.output)[1:]
    return FilterResult(cfg.output, sidecar, histogram, counts, pool, stats, notes)


@dataclasses.dataclass
class Restriction:
    """The examples a run may select: the pool after --shards-dir and the masks (--name, --mask)."""

    pool_size: int
    downloaded: int | None  # examples with an image (--shards-dir), else None
    survivors: np.ndarray | None  # bool per example after every mask (None: no masks)
    report: list[dict[str, Any]]  # one line per mask, for the sidecar

    @classmethod
    def apply(cls, cfg: FilterConfig, pool: Pool, keep: np.ndarray | None) -> Restriction:
        masks = [resolve_mask(spec, pool) for spec in cfg.masks]
        if cfg.name is not None:
            masks.insert(0, BaselineMask(cfg.name, name_params(cfg)))
        downloaded = None if keep is None else int(keep.size)
        if not masks:
            return cls(pool.size, downloaded, None, [])
        base = None
        if keep is not None:
            base = np.zeros(pool.size, dtype=bool)
            base[keep] = True
        settings = baselines.RunSettings(cfg.assets, cfg.num_workers, cfg.num_gpus, cfg.batch_size, cfg.progress)
        ctx = MaskContext(pool, base, settings, baselines.BaselineParams(image_based_scale=cfg.image_based_scale),
                          inputs_dir=cfg.inputs_dir)
        survivors, report = apply_masks(ctx, masks)
        return cls(pool.size, downloaded, survivors, report)

    @property
    def positions(self) -> np.ndarray:
        return np.flatnonzero(self.survivors)

    def inputs(self, cfg: FilterConfig, pool: Pool) -> dict[str, Any]:
        """The sidecar's record of the pool and what restricted it."""
        return {
            "metadata_dir": cfg.metadata_dir,
            "pool_size": pool.size,
            "metadata_shards": len(pool.shards),
            "shards_dir": cfg.shards_dir,
            "pool_size_downloaded": self.downloaded,
            "pool_size_surviving": None if self.survivors is None else int(self.survivors.sum()),
        }

    def statistics_over(self) -> str:
        if self.report:
            return "surviving examples"
        return "pool" if self.downloaded is None else "downloaded examples"

    def describe(self) -> str:
        return "; ".join(f"{r['mask']}: {r['surviving']:,} left" for r in self.report)

    def notes(self) -> list[str]:
        out = []
        for r in self.report:
            out += baselines.unmatched_assets(r)
            if r.get("note"):
                out.append(f"mask {r['mask']}: {r['note']}")
        return out


def write_survivors(cfg: FilterConfig, pool: Pool, masked: Restriction, start: float) -> FilterResult:
    """No score: the examples inside every mask, once each (``--name``: DataComp's baseline file)."""
    counts = masked.survivors.astype(np.int64)
    notes = masked.notes()
    info = {
        "inputs": masked.inputs(cfg, pool),
        "baseline": None if cfg.name is None else {"name": cfg.name, "params": name_params(cfg).given()},
        "masks": masked.report,
        "sampler": None,
        "selection": "every example that survives the masks, once",
        "sampler_params": {},
        "seed": None,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    title = f"baseline {cfg.name}" if cfg.name else f"{len(cfg.masks)} mask(s)"
    stats = write_subset(cfg.output, pool.uids, counts, info=info, overwrite=cfg.overwrite, histogram_title=title)
    sidecar, histogram = subset_outputs(cfg.output)[1:]
    return FilterResult(cfg.output, sidecar, histogram, counts, pool, stats, notes)


def _as_stored(params: dict[str, Any], scores, cfg: FilterConfig) -> dict[str, Any]:
    """``--threshold T`` on a float32 column compares with the float32 nearest to T, as DataComp's
    pandas comparison does (0.22 rounds down in float32: a score stored as 0.22 passes)."""
    value = params.get("value")
    plain = not cfg.standardize and cfg.temperature == 1.0
    if value is None or not plain or scores.stored_dtype is None or scores.stored_dtype.kind != "f":
        return params
    return {**params, "value": float(scores.stored_dtype.type(value))}


def print_summary(result: FilterResult, seconds: float) -> None:
    s = result.stats
    downloaded = s["inputs"]["pool_size_downloaded"]
    of = f"{result.pool.size:,}" if downloaded is None else f"{downloaded:,} downloaded (pool {result.pool.size:,})"
    click.echo(
        f"selected {s['distinct_uids']:,} distinct uids of {of}, "
        f"{s['total_entries']:,} entries in all, max repetitions {s['max_repetitions']} "
        f"({seconds:.1f} s)"
    )
    for m in s.get("masks") or []:
        click.echo(f"mask:      {m['mask']} -> {m['surviving']:,} left")
    if s["sampler"] is not None:
        params = ", ".join(f"{k} {v}" for k, v in s["sampler_params"].items() if v is not None)
        click.echo(f"sampler:   {s['sampler']} ({params}), seed {s['seed']}")
    click.echo(f"subset:    {result.output}")
    click.echo(f"sidecar:   {result.sidecar}")
    click.echo(f"histogram: {result.histogram}")
    for note in result.notes:
        click.echo(f"note: {note}", err=True)


def _demo_defaults(cfg_kwargs: dict[str, Any], progress: bool) -> tuple[dict[str, Any], Any]:
    """Fill in the demo pool's folder, sampler settings and output location (building the pool
    the first time). The score is left to the caller: without ``--score`` the demo trains M-FLYT."""
    from .demo import build_demo_pool

    demo = build_demo_pool(progress=progress)
    kw = dict(cfg_kwargs)
    if kw["metadata_dir"] is None:
        kw["metadata_dir"] = str(demo.metadata_dir)
    if kw["sampler"] in (None, "scs") and kw.get("fraction") is None and kw.get("threshold") is None:
        kw["scs_alpha"] = 0.5 if kw["scs_alpha"] is None else kw["scs_alpha"]
        kw["scs_batch"] = max(1, demo.pool_size // 100) if kw["scs_batch"] is None else kw["scs_batch"]
    if kw["output"] is None:
        kw["output"] = str(Path(demo.root) / "outputs" / "demo_subset.npy")
        kw["overwrite"] = True  # the demo's own default output is replaced on every run
    return kw, demo


def _train_demo_model(demo: Any, progress: bool) -> str:
    from .flyt.config import build_config
    from .flyt.trainer import Trainer, format_mixing_weights
    from .train import demo_paths

    run_dir = Path(demo.root) / "runs" / "m-flyt-demo"
    click.echo(f"training M-FLYT on the demo pool -> {run_dir}")
    result = Trainer(build_config("m-flyt-demo", demo_paths(demo), {}), run_dir, progress=progress).run()
    click.echo(format_mixing_weights(result["mixing_weights"]))
    return result["scoring_model"]


def _sampler_options(fn):
    """One option per registered sampler parameter (help names the samplers that use it)."""
    for option, (param, users) in reversed(list(sampling.all_params().items())):
        kwargs: dict[str, Any] = {"help": f"{'/'.join(users)}: {param.help}."}
        if param.type is bool:
            kwargs["is_flag"] = True
        elif param.choices:
            kwargs["type"] = click.Choice(param.choices)
            if param.default is not None:
                kwargs["help"] += f" [default: {param.default}]"
        else:
            kwargs["type"] = param.type
        fn = click.option(option, _dest(param), **kwargs)(fn)
    return fn


@command("filter")
@click.option("--metadata-dir", "--metadata_dir", "metadata_dir", metavar="URL",
              help="Pool metadata folder (local path or any fsspec URL).")
@click.option("--name", type=click.Choice(list(baselines.BASELINES)),
              help="DataComp's baseline: write the uids it keeps (with --arch, --fraction, --threshold, "
                   "--image_based_scale as in DataComp's baselines.py).")
@click.option("--mask", "masks", metavar="SPEC", multiple=True,
              help="Hard filter (repeatable): only examples inside every mask can be selected. A baseline name "
                   "(NAME[:key=value,...]), a subset .npy file, column:NAME>=VALUE, or top:F:SOURCE.")
@click.option("--scale", type=click.Choice(list(SCALES)),
              help="DataComp scale: sets the default --num-samples and SCS settings.")
@click.option("--score", "score", metavar="SOURCE",
              help="A metadata column (e.g. clip_l14_similarity_score), a parquet file with uid and score columns, "
                   "or a trained scoring_model.pt; KIND:SPEC names the kind (column, file, model).")
@click.option("--arch", type=click.Choice(list(ARCH_COLUMNS)),
              help="DataComp's spelling: score by clip_b32/l14_similarity_score (when --score is not given).")
@click.option("--sampler", type=click.Choice(list(sampling.SAMPLERS)),
              help="Default: threshold when --fraction or --threshold is given, else scs.")
@_sampler_options
@click.option("--datacomp-compatible", is_flag=True, hidden=True,
              help="Accepted for compatibility: DataComp's threshold rule is the default.")
@click.option("--num-samples", type=int, help="Entries to draw (default: the scale's pool size, else the pool's size).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--standardize", is_flag=True, help="Z-score the scores over the pool before the softmax.")
@click.option("--temperature", type=float, default=1.0, show_default=True,
              help="Divide the scores by this before the softmax.")
@click.option("--output", "--save_path", "output", metavar="PATH",
              help="Subset file to write (.npy): a local path or any fsspec URL.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--allow-score-independent", is_flag=True,
              help="Write a subset even when the sampler's counts would not depend on the scores.")
@click.option("--num-workers", "--num_workers", "num_workers", type=int, default=4, show_default=True,
              help="Metadata shards read in parallel (threads), and processes for the baselines' caption rules.")
@click.option("--inputs-dir", metavar="STORE",
              help="An input store (flyt-datacomp inputs compute), for --score store:NAME and --mask store:...")
@click.option("--shards-dir", metavar="URL",
              help="Downloaded image shards (img2dataset): keep only pool examples with an image there.")
@asset_options
@click.option("--demo", is_flag=True, help="Build (once) and filter the built-in digits demo pool.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def filter_command(demo: bool, quiet: bool, arch: str | None, datacomp_compatible: bool, **kwargs: Any) -> None:
    """Filter a DataComp pool by a score into a subset file (the paper's SCS by default)."""
    start = time.perf_counter()
    if datacomp_compatible and kwargs.get("exact_count"):
        raise FlytInputError("--datacomp-compatible and --exact-count are opposite threshold rules; pick one")
    kwargs["assets"] = pop_asset_options(kwargs)
    kwargs["masks"] = tuple(kwargs["masks"])
    if kwargs["name"] is not None:  # DataComp's options belong to its baseline, not to a sampler
        if kwargs["score"] is not None:
            raise FlytInputError(f"--name {kwargs['name']} writes DataComp's baseline and takes no --score")
        given = {"arch": arch, "fraction": kwargs.pop("fraction"), "threshold": kwargs.pop("threshold")}
        kwargs["name_params"] = {k: v for k, v in given.items() if v is not None}
    elif arch is not None:
        if kwargs["score"] is not None:
            raise FlytInputError("give --arch (DataComp's CLIP-score column) or --score, not both")
        kwargs["score"] = ARCH_COLUMNS[arch]
    demo_pool = None
    if demo:
        kwargs, demo_pool = _demo_defaults(kwargs, progress=not quiet)
    scoreless = kwargs["name"] is not None or kwargs["masks"]
    for required in ("metadata_dir", "output") if demo or scoreless else ("metadata_dir", "score", "output"):
        if kwargs[required] is None:
            flag = {"score": "--score (or --arch)"}.get(required, f"--{required.replace('_', '-')}")
            raise click.UsageError(f"missing option {flag} (or use --demo)")
    if demo_pool is not None and kwargs["score"] is None:
        OutputSet(subset_outputs(kwargs["output"]), overwrite=kwargs["overwrite"]).preflight()  # before training
        kwargs["score"] = _train_demo_model(demo_pool, progress=not quiet)
    cfg = FilterConfig.from_options(progress=not quiet, **kwargs)
    result = run_filter(cfg)
    print_summary(result, time.perf_counter() - start)
    if demo_pool is not None:
        from .demo import format_type_breakdown, type_breakdown

        keep = result.counts > 0
        report = type_breakdown(demo_pool.truth_path, result.pool.uids[keep], result.counts[keep])
        click.echo(format_type_breakdown(report))
        click.echo(f"\nnext: measure what this subset is worth with the mini-DataComp benchmark (a small CLIP trained "
                   f"on it, zero-shot on held-out digits):\n  flyt-datacomp benchmark --subset {result.output}\n"
                   "or run the standard table of filters: flyt-datacomp benchmark")


def main() -> None:
    filter_command(prog_name="python -m flyt_datacomp.filter")


if __name__ == "__main__":
    main()
