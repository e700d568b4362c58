"""The main job: pool metadata + a score -> a DataComp subset file.

``python -m flyt_datacomp.filter --metadata-dir URL --score SOURCE --output subset.npy``
(also ``flyt-datacomp filter``). Writes the subset ``.npy`` (sorted ``u8,u8`` uids, repeated
uids carrying repetition counts), its JSON sidecar and a PNG histogram of repetitions.
``--demo`` runs the same pipeline on the built-in digits pool.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from . import sampling
from .errors import FlytInputError, quote
from .io import OutputSet, check_free_space, format_bytes, is_url, local_path
from .pool import Pool
from .process import install_signal_handlers
from .scales import SCALES, get_scale
from .scores import load_scores, standardize
from .uids import subset_file_bytes, subset_outputs, write_subset

SAMPLERS = ("threshold", "scs", "hcs", "nocap")
# More entries than any DataComp scale needs (xlarge draws 1.28e10): a 2.2 TB subset file.
MAX_SUBSET_ENTRIES = 2**37


@dataclasses.dataclass
class FilterConfig:
    """Everything that determines a subset; defaults left as None are resolved from the pool/scale."""

    metadata_dir: str
    score: str
    output: str | Path  # a local path or an fsspec URL
    sampler: str = "scs"
    scale: str | None = None
    fraction: float | None = None
    threshold: float | None = None
    datacomp_compatible: bool = False
    scs_alpha: float | None = None
    scs_batch: int | None = None
    hcs_cap: int | None = None
    num_samples: int | None = None
    seed: int = 0
    standardize: bool = False
    temperature: float = 1.0
    overwrite: bool = False
    progress: bool = True
    allow_score_independent: bool = False  # accept a draw whose counts do not depend on the scores


@dataclasses.dataclass
class FilterResult:
    output: str | Path
    sidecar: str | Path
    histogram: str | Path
    counts: np.ndarray
    pool: Pool
    stats: dict[str, Any]
    notes: list[str] = dataclasses.field(default_factory=list)


def histogram_path(output: str | Path) -> str | Path:
    return subset_outputs(output)[2]


def check_options(cfg: FilterConfig) -> OutputSet:
    """Reject options that are invalid or do not apply to the chosen sampler, and outputs that
    could not be written, before any work. Returns the checked output set."""
    if cfg.sampler not in SAMPLERS:
        raise FlytInputError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {cfg.sampler!r}")
    applies = {
        "--fraction": (cfg.fraction, ("threshold",)),
        "--threshold": (cfg.threshold, ("threshold",)),
        "--scs-alpha": (cfg.scs_alpha, ("scs",)),
        "--scs-batch": (cfg.scs_batch, ("scs",)),
        "--hcs-cap": (cfg.hcs_cap, ("hcs",)),
        "--num-samples": (cfg.num_samples, ("scs", "hcs", "nocap")),
    }
    for flag, (value, samplers) in applies.items():
        if value is not None and cfg.sampler not in samplers:
            raise FlytInputError(f"option {flag} does not apply to --sampler {cfg.sampler}")
    if cfg.datacomp_compatible and cfg.sampler != "threshold":
        raise FlytInputError("--datacomp-compatible applies only to --sampler threshold")
    if cfg.sampler == "threshold" and (cfg.fraction is None) == (cfg.threshold is None):
        raise FlytInputError("--sampler threshold needs exactly one of --fraction or --threshold")
    if cfg.fraction is not None and not 0 < cfg.fraction <= 1:
        raise FlytInputError(f"--fraction must be in (0, 1], got {cfg.fraction}")
    if cfg.sampler == "hcs" and cfg.hcs_cap is None:
        raise FlytInputError("--sampler hcs needs --hcs-cap")
    if not (cfg.temperature > 0 and math.isfinite(cfg.temperature)):
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
    """The sampler's keyword arguments, with scale / pool defaults filled in."""
    if cfg.sampler == "threshold":
        return {"fraction": cfg.fraction, "value": cfg.threshold, "datacomp_compatible": cfg.datacomp_compatible}
    scale = get_scale(cfg.scale) if cfg.scale else None
    num_samples = cfg.num_samples if cfg.num_samples is not None else (scale.pool_size if scale else pool_size)
    params: dict[str, Any] = {"num_samples": int(num_samples), "seed": cfg.seed}
    if cfg.sampler == "scs":
        ref = scale or SCALES["medium"]
        params["alpha"] = cfg.scs_alpha if cfg.scs_alpha is not None else ref.scs_alpha
        if cfg.scs_batch is not None:
            params["group_size"] = cfg.scs_batch
        else:  # the paper's number of rounds (pool / G = 1280), never more than the pool holds
            rounds = ref.pool_size // ref.scs_group_size
            default = ref.scs_group_size if scale else math.ceil(num_samples / rounds)
            params["group_size"] = max(1, min(default, pool_size))
    elif cfg.sampler == "hcs":
        params["cap"] = cfg.hcs_cap
    return params


def run_sampler(name: str, scores: np.ndarray, params: dict[str, Any], progress: bool) -> np.ndarray:
    fn = getattr(sampling, name)
    if name in ("scs", "hcs"):
        return fn(scores, progress=progress, **params)
    return fn(scores, **params)


def run_filter(cfg: FilterConfig) -> FilterResult:
    """Pool + score source + sampler -> subset file, sidecar and histogram. Returns what it wrote.

    Every check that can fail runs before the expensive steps; the three output files are
    committed together, so the output path holds either the previous complete set or the new one.
    """
    check_options(cfg)
    start = time.perf_counter()
    pool = Pool(cfg.metadata_dir, progress=cfg.progress)
    params = resolve_sampler_params(cfg, pool.size)
    if "num_samples" in params:
        check_subset_size(params["num_samples"], cfg.output)
    scores = load_scores(pool, cfg.score)
    logits = standardize(scores.values) if cfg.standardize else scores.values
    logits = logits / cfg.temperature
    degenerate = sampling.score_independence(cfg.sampler, logits, params)
    if degenerate and not cfg.allow_score_independent:
        raise FlytInputError(
            f"{degenerate}. Pass --allow-score-independent to write this subset anyway."
        )
    counts = run_sampler(cfg.sampler, logits, params, cfg.progress)
    notes = [n for n in (degenerate, sampling.concentration(counts)) if n]
    if scores.extra_uids:
        notes.append(f"the score file {scores.source} has {scores.extra_uids:,} uids that are not in the pool; "
                     "they were ignored")
    info = {
        "inputs": {
            "metadata_dir": cfg.metadata_dir,
            "pool_size": pool.size,
            "metadata_shards": len(pool.shards),
            "score_source": scores.source,
            "score_kind": scores.kind,
            "score_file_extra_uids": scores.extra_uids,
        },
        "score_transform": {"standardize": cfg.standardize, "temperature": cfg.temperature},
        "sampler": cfg.sampler,
        "sampler_params": {k: v for k, v in params.items() if k != "seed"},
        "scale": cfg.scale,
        "seed": cfg.seed,
        "warnings": notes,
        "seconds": round(time.perf_counter() - start, 3),
    }
    stats = write_subset(cfg.output, pool.uids, counts, info=info, overwrite=cfg.overwrite,
                         histogram_title=f"{cfg.sampler} on {scores.source}")
    sidecar, histogram = subset_outputs(cfg.output)[1:]
    return FilterResult(cfg.output, sidecar, histogram, counts, pool, stats, notes)


def print_summary(result: FilterResult, seconds: float) -> None:
    s = result.stats
    click.echo(
        f"selected {s['distinct_uids']:,} distinct uids of {result.pool.size:,}, "
        f"{s['total_entries']:,} entries in all, max repetitions {s['max_repetitions']} "
        f"({seconds:.1f} s)"
    )
    click.echo(f"subset:    {result.output}")
    click.echo(f"sidecar:   {result.sidecar}")
    click.echo(f"histogram: {result.histogram}")
    for note in result.notes:
        click.echo(f"warning: {note}", err=True)


def _demo_defaults(cfg_kwargs: dict[str, Any], progress: bool) -> tuple[dict[str, Any], Any]:
    """Fill in the demo pool's folder, sampler settings and output location (building the pool
    the first time). The score is left to the caller: without ``--score`` the demo trains M-FLYT."""
    from .demo import build_demo_pool

    demo = build_demo_pool(progress=progress)
    kw = dict(cfg_kwargs)
    if kw["metadata_dir"] is None:
        kw["metadata_dir"] = str(demo.metadata_dir)
    if kw["sampler"] == "scs":
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


@click.command("filter", context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--metadata-dir", metavar="URL", help="Pool metadata folder (local path or any fsspec URL).")
@click.option("--scale", type=click.Choice(list(SCALES)), help="DataComp scale: sets the default --num-samples and SCS settings.")
@click.option("--score", "score", metavar="SOURCE",
              help="A metadata column (e.g. clip_l14_similarity_score), a parquet file with uid and score columns, "
                   "or a trained scoring_model.pt.")
@click.option("--sampler", type=click.Choice(SAMPLERS), default="scs", show_default=True)
@click.option("--fraction", type=float, help="threshold: keep this top fraction of the pool.")
@click.option("--threshold", type=float, help="threshold: keep examples with score >= this value.")
@click.option("--datacomp-compatible", is_flag=True, help="threshold: reproduce DataComp's clip_score --fraction rule exactly.")
@click.option("--scs-alpha", type=float, help="SCS repetition penalty alpha (paper: medium 0.15, small 0.5).")
@click.option("--scs-batch", type=int, help="SCS group size G: distinct examples drawn per round.")
@click.option("--hcs-cap", type=int, help="HCS: the most copies an example may get.")
@click.option("--num-samples", type=int, help="Entries to draw (default: the scale's pool size, else the pool's size).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--standardize", is_flag=True, help="Z-score the scores over the pool before the softmax.")
@click.option("--temperature", type=float, default=1.0, show_default=True, help="Divide the scores by this before the softmax.")
@click.option("--output", metavar="PATH", help="Subset file to write (.npy): a local path or any fsspec URL.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--allow-score-independent", is_flag=True,
              help="Write a subset even when the sampler's counts would not depend on the scores.")
@click.option("--demo", is_flag=True, help="Build (once) and filter the built-in digits demo pool.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def filter_command(demo: bool, quiet: bool, **kwargs: Any) -> None:
    """Filter a DataComp pool by a score into a subset file (the paper's SCS by default)."""
    install_signal_handlers()
    start = time.perf_counter()
    demo_pool = None
    if demo:
        kwargs, demo_pool = _demo_defaults(kwargs, progress=not quiet)
    for required in ("metadata_dir", "output") if demo else ("metadata_dir", "score", "output"):
        if kwargs[required] is None:
            raise click.UsageError(f"missing option --{required.replace('_', '-')} (or use --demo)")
    if demo_pool is not None and kwargs["score"] is None:
        OutputSet(subset_outputs(kwargs["output"]), overwrite=kwargs["overwrite"]).preflight()  # before training
        kwargs["score"] = _train_demo_model(demo_pool, progress=not quiet)
    cfg = FilterConfig(progress=not quiet, **kwargs)
    result = run_filter(cfg)
    print_summary(result, time.perf_counter() - start)
    if demo_pool is not None:
        from .demo import format_type_breakdown, type_breakdown

        keep = result.counts > 0
        report = type_breakdown(demo_pool.truth_path, result.pool.uids[keep], result.counts[keep])
        click.echo(format_type_breakdown(report))


def main() -> None:
    filter_command(prog_name="python -m flyt_datacomp.filter")


if __name__ == "__main__":
    main()
