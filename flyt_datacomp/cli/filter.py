"""``flyt-datacomp filter`` (also ``python -m flyt_datacomp.filter``): a shell over the selection pipeline.

Writes the subset ``.npy`` (sorted ``u8,u8`` uids, repeated uids carrying repetition counts), its
JSON sidecar and a PNG histogram of repetitions (:mod:`flyt_datacomp.selection`). DataComp's own
spellings work too (``--metadata_dir``, ``--save_path``, ``--num_workers``, ``--arch``), so
``--arch l14 --fraction 0.3`` writes exactly DataComp's ``clip_score`` baseline. The sampler
options come from :data:`flyt_datacomp.sampling.SAMPLERS`, the score sources from
:data:`flyt_datacomp.scores.SCORE_SOURCES`. ``--demo`` runs the same pipeline on the built-in
digits pool.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from .. import sampling, selection
from ..baselines import datacomp as baselines
from ..baselines.assets import CENTROID_SCALES, AssetPaths
from ..baselines.masks import MASK_KINDS
from ..errors import FlytInputError, render_settings
from ..recipes import RECIPES, recipe_selection
from ..scales import SCALES
from ..scores import SCORE_SOURCES
from ..scores.files import MISSING_POLICIES
from . import options as O
from .base import comma_list, command, flag_names, option

_ASSET_OPTIONS = ("fasttext_model", "imagenet21k_wordnet_ids", "centroids", "in1k_embeddings", "wordnet_data", "assets_dir")


def _dest(param: sampling.Param) -> str:
    return param.option.lstrip("-").replace("-", "_")


def sampler_flags() -> dict[str, str]:
    """Sampler setting name -> its flag (``alpha`` -> ``--scs-alpha``), for error messages."""
    return {p.name: p.option for p, _ in sampling.all_params().values()}


def sampler_options(fn):
    """One option per registered sampler parameter (help names the samplers that use it)."""
    for flag, (param, users) in reversed(list(sampling.all_params().items())):
        kwargs: dict[str, Any] = {"help": f"{'/'.join(users)}: {param.help}."}
        if param.type is bool:
            kwargs["is_flag"] = True
        elif param.choices:
            kwargs["type"] = click.Choice(param.choices)
            if param.default is not None:
                kwargs["help"] += f" [default: {param.default}]"
        else:
            kwargs["type"] = param.type
        fn = option(flag, _dest(param), aliases=param.aliases, **kwargs)(fn)
    return fn


def baseline_options(fn):
    """The options that locate DataComp's assets and run the image-based baselines' centroid search."""
    opts = [
        option("--image-based-scale", "image_based_scale", aliases=("--image_based_scale",),
               type=click.Choice(CENTROID_SCALES),
               help="image_based baselines: the DataComp scale whose k-means centroids to use."),
        option("--num-gpus", "num_gpus", aliases=("--num_gpus",), type=click.IntRange(min=0),
               help="image_based baselines: GPUs for the nearest-centroid search [default: every GPU with "
                    "--device cuda (or auto on a GPU machine), else 0: the CPU]."),
        option("--centroid-batch-size", "centroid_batch_size", aliases=("--batch_size", "--batch-size"),
               type=click.IntRange(min=1), default=1024, show_default=True,
               help="image_based baselines: embeddings per nearest-centroid batch."),
        option("--fasttext-model", metavar="PATH", help="fastText's lid.176.bin (language id)."),
        option("--imagenet21k-wordnet-ids", metavar="PATH", help="text_based: DataComp's ImageNet-21k WordNet id list."),
        option("--centroids", metavar="PATH",
               help="image_based: a k-means centroids file (default: DataComp's for --image-based-scale)."),
        option("--in1k-embeddings", metavar="PATH", multiple=True,
               help="image_based: DataComp's in1k_clip_vit_l14_{0..4}.pt files, or one folder holding them."),
        option("--wordnet-data", metavar="DIR", help="text_based: an nltk_data folder holding corpora/wordnet."),
        option("--assets-dir", metavar="DIR",
               help="A folder holding the assets under DataComp's names (also searched: $FLYT_DATACOMP_ASSETS, "
                    "~/.cache/datacomp, ~/.cache/fasttext)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def pop_baseline_options(kwargs: dict[str, Any], device: str) -> dict[str, Any]:
    """Take the asset and centroid-search options out of a command's keyword arguments, as
    :class:`~flyt_datacomp.selection.Restrict` fields."""
    values = {k: kwargs.pop(k) for k in _ASSET_OPTIONS}
    values["in1k_embeddings"] = tuple(values["in1k_embeddings"] or ())
    gpus = kwargs.pop("num_gpus")
    if gpus is None:
        gpus = _visible_gpus() if device in ("cuda", "auto") else 0
    return {"assets": AssetPaths(**values), "num_gpus": gpus, "image_based_scale": kwargs.pop("image_based_scale"),
            "centroid_batch_size": kwargs.pop("centroid_batch_size")}


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mixing_options(fn):
    """Where the paper's recipes find the authors' released M-FLYT model and its inputs' names."""
    for opt in reversed([
        option("--mixing-model", metavar="PATH", help="flyt_* recipes: the authors' released M-FLYT model "
               "(scoring_models/mflyt.pt, a state dict; loaded without unpickling objects)."),
        option("--mixing-inputs", metavar="A,B,...", callback=comma_list,
               help="flyt_* recipes: the store's names of the model's inputs, "
               "in the model's order [default: the 12 names of the authors' notebook]."),
    ]):
        fn = opt(fn)
    return fn


def run_recipe(name: str, opts: dict, *, seed: int, device: str, progress: bool, ray_address: str | None = None,
               partitions: int | None = None):
    """A paper recipe through the selection pipeline, on this machine or on Ray (options left over from
    DataComp's baselines refused)."""
    given = [flag for flag, key in (("--arch", "arch"), ("--fraction", "fraction"), ("--threshold", "threshold"),
                                    ("--mask", "masks")) if opts.get(key)]
    if given:
        raise FlytInputError(f"{name} takes none of {', '.join(given)} (they are DataComp's baselines' options)")
    inputs = opts.get("mixing_inputs")  # None: the default names; an empty value is refused by its option
    kwargs = {"inputs": inputs} if inputs is not None else {}
    return run_selection(recipe_selection(
        name, metadata_dir=opts["metadata_dir"], output=opts["output"], inputs_dir=opts["inputs_dir"],
        mixing_model=opts["mixing_model"], scale=opts["scale"], shards_dir=opts["shards_dir"], seed=seed,
        overwrite=opts["overwrite"], io_threads=opts["io_threads"], progress=progress, device=device, **kwargs),
        ray_address, partitions)


def ray_options(fn):
    """Where a selection runs when no machine holds the pool: a Ray cluster, in partitions."""
    for opt in reversed([
        option("--ray", "ray_address", metavar="ADDRESS",
               help="Run on a Ray cluster, the pool cut into partitions of metadata shards, one worker each (auto: "
                    "the cluster this machine belongs to; local: a new one here; or host:port): for pools no machine "
                    "holds. Scores from pool columns, input store inputs (store:NAME), scoring models or their "
                    "sum/standardized_sum/in_weighted/mixing; masks judging each example by its own row; threshold or "
                    "scs; DataComp's baselines (image_based: the driver finds the target centroids, each worker searches "
                    "its shards' embeddings on its CPU, holding the centroids, ~307 MB for DataComp's, and one shard); "
                    "or the flyt_* recipes."),
        option("--partitions", type=click.IntRange(min=1),
               help="With --ray: partitions of the pool [default: one per CPU of the cluster]."),
    ]):
        fn = opt(fn)
    return fn


def pop_ray_options(opts: dict[str, Any], refused: str | None = None) -> tuple[str | None, int | None]:
    """``--ray`` and ``--partitions`` out of a command's options (``refused``: what cannot run on Ray)."""
    ray_address, partitions = opts.pop("ray_address"), opts.pop("partitions")
    if partitions is not None and ray_address is None:
        raise FlytInputError("--partitions applies with --ray")
    if ray_address is not None and refused:
        raise FlytInputError(f"--ray does not run {refused}; leave --ray out")
    return ray_address, partitions


def run_selection(sel: selection.Selection, ray_address: str | None, partitions: int | None) -> selection.SelectionResult:
    """The selection on this machine, or on a Ray cluster with ``--ray``."""
    if ray_address is None:
        return selection.run(sel)
    from ..ray_selection import Cluster, run

    return run(sel, Cluster(ray_address, partitions))


def mask_option(fn):
    return option("--mask", "masks", metavar="SPEC", multiple=True,
                  help="Hard filter (repeatable): only examples inside every mask can be selected. Quote a "
                       "condition (--mask 'original_width>=200'): unquoted, the shell takes > and < as "
                       "redirections. "
                       + MASK_KINDS.describe() + ".")(fn)


def print_summary(result: selection.SelectionResult, seconds: float) -> None:
    s = result.stats
    downloaded = s["inputs"]["pool_size_downloaded"]
    of = f"{result.pool.size:,}" if downloaded is None else f"{downloaded:,} downloaded (pool {result.pool.size:,})"
    click.echo(f"selected {s['distinct_uids']:,} distinct uids of {of}, {s['total_entries']:,} entries in all, "
               f"max repetitions {s['max_repetitions']} (this run took {seconds:.1f} s)")
    for m in s.get("masks") or []:
        click.echo(f"mask:      {m['mask']} -> {m['surviving']:,} left")
    if s["sampler"] is not None:
        params = ", ".join(f"{k} {v}" for k, v in s["sampler_params"].items() if v is not None)
        click.echo(f"sampler:   {s['sampler']} ({params}), seed {s['seed']}")
    click.echo(f"subset:    {result.output}")
    click.echo(f"sidecar:   {result.sidecar}")
    click.echo(f"histogram: {result.histogram}")
    flags = flag_names(click.get_current_context().command)
    for note in result.notes:
        click.echo(f"note: {render_settings(note, flags)}", err=True)


def selection_from_options(opts: dict[str, Any], *, progress: bool) -> selection.Selection:
    """The pipeline's configs from the filter command's options (by their dest names)."""
    by_dest = {_dest(p): p.name for p, _ in sampling.all_params().values()}
    sampler_opts = {by_dest[k]: opts.pop(k) for k in list(opts) if k in by_dest}
    restrict = selection.Restrict(shards_dir=opts.pop("shards_dir"), baseline=opts.pop("name"),
                               baseline_params=opts.pop("baseline_params"), masks=tuple(opts.pop("masks")),
                               **opts.pop("baseline_settings"))
    sel = selection.Selection(
        metadata_dir=opts.pop("metadata_dir"),
        output=selection.Output(opts.pop("output"), overwrite=opts.pop("overwrite")),
        restrict=restrict,
        score=selection.ScoreStage(opts.pop("score"), inputs_dir=opts.pop("inputs_dir"),
                                   accept_changed_inputs=tuple(opts.pop("accept_changed_inputs") or ()),
                                   missing=opts.pop("missing")),
        transform=selection.Transform(standardize=opts.pop("standardize"), temperature=opts.pop("temperature")),
        sample=selection.Sample(opts.pop("sampler"), sampler_opts, num_samples=opts.pop("num_samples"),
                             scale=opts.pop("scale"), seed=opts.pop("seed"),
                             allow_score_independent=opts.pop("allow_score_independent")),
        workers=opts.pop("workers"),
        io_threads=opts.pop("io_threads"),
        progress=progress,
    )
    if opts:
        raise TypeError(f"unhandled filter options {sorted(opts)}")
    return sel


def _demo_defaults(opts: dict[str, Any], progress: bool, version: str | None = None):
    """Fill in the demo pool's folder, sampler settings and output location (building the pool the
    first time). The score is left to the caller: without ``--score`` the demo trains M-FLYT."""
    from ..demo import DEMO_SCS_ALPHA, build_demo_pool, demo_scs_group_size, demo_scs_num_samples

    demo = build_demo_pool(version=version, progress=progress, announce=lambda text: click.echo(f"demo: {text}"))
    click.echo(f"demo: the digits pool ({demo.version}: {demo.description}) at {demo.root}")
    if opts["metadata_dir"] is None:
        opts["metadata_dir"] = str(demo.metadata_dir)
    if opts["sampler"] in (None, "scs") and opts.get("fraction") is None and opts.get("threshold") is None:
        # the benchmark's SCS settings (one set of demo defaults)
        opts["scs_alpha"] = DEMO_SCS_ALPHA if opts["scs_alpha"] is None else opts["scs_alpha"]
        if opts["scs_group_size"] is None:
            opts["scs_group_size"] = demo_scs_group_size(demo.pool_size)
        if opts["num_samples"] is None:
            opts["num_samples"] = demo_scs_num_samples(demo.version)
    if opts["output"] is None:
        opts["output"] = str(Path(demo.root) / "outputs" / "demo_subset.npy")
        opts["overwrite"] = True  # the demo's own default output is replaced on every run
    return demo


@command("filter", extra_flags={**sampler_flags(), "baseline": "--name", "score": "--score"})
@O.metadata_dir()
@option("--name", type=click.Choice([*baselines.BASELINES, *RECIPES]),
        help="DataComp's baseline: write the uids it keeps (with --arch, --fraction, --threshold, "
             "--image-based-scale as in DataComp's baselines.py); or one of the paper's released subsets "
             "(flyt_*: with --inputs-dir, --mixing-model and --scale small or medium).")
@mask_option
@option("--scale", type=click.Choice(list(SCALES)), help="DataComp scale: sets the default --num-samples and SCS settings.")
@option("--score", "score", metavar="SOURCE",
        help="The score to filter by: " + SCORE_SOURCES.describe() + ". A bare SOURCE is a column, else a model "
             "or score file; KIND:SPEC names the kind.")
@option("--arch", type=click.Choice(list(baselines.ARCH_COLUMNS)),
        help="DataComp's spelling: score by clip_b32/l14_similarity_score (when --score is not given).")
@option("--sampler", type=click.Choice(list(sampling.SAMPLERS)),
        help="Default: threshold when --fraction or --threshold is given, else scs.")
@sampler_options
@option("--num-samples", type=click.IntRange(min=1),
        help="Entries to draw (default: the scale's pool size, else the pool's size).")
@O.seed()
@option("--standardize", is_flag=True, help="Z-score the scores over the pool before the softmax.")
@option("--temperature", type=float, default=1.0, show_default=True, help="Divide the scores by this before the softmax.")
@O.output(aliases=("--save_path",), help="Subset file to write (.npy): a local path or any fsspec URL.")
@O.overwrite(help="Replace existing output files.")
@option("--allow-score-independent", is_flag=True,
        help="Write a subset even when the sampler's counts would not depend on the scores.")
@O.workers(default=4, aliases=("--num-workers", "--num_workers"),
           help="Worker processes for the baselines' caption rules (text_based, basic_filter).")
@O.io_threads()
@O.inputs_dir(help="An input store (flyt-datacomp inputs compute), for --score store:NAME and --mask store:...")
@option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
        help="Pool examples a score file has no score for: an error, or the min or the mean of the file's scores.")
@option("--accept-changed-inputs", "accept_changed_inputs", metavar="A,B,...", callback=comma_list, default=None,
        help="A trained M-FLYT model's stored inputs to apply it to although they changed since it was trained "
             "(recomputed, or filled differently); * for all. Without it such a model is refused.")
@O.shards_dir(help="Downloaded image shards (img2dataset): keep only pool examples with an image there.")
@baseline_options
@mixing_options
@ray_options
@option("--demo", is_flag=True, help="Build (once) and filter the built-in digits demo pool.")
@O.demo_version(help="With --demo: the demo pool's version.")
@O.quiet()
def filter_command(demo: bool, demo_version: str | None, quiet: bool, arch: str | None, **opts: Any) -> None:
    """Filter a DataComp pool by a score into a subset file (the paper's SCS by default).

    DataComp's spellings work too: --metadata_dir, --save_path, --num_workers, --num_gpus,
    --batch_size, --image_based_scale.
    """
    start = time.perf_counter()
    progress = not quiet
    ray_address, partitions = pop_ray_options(opts, "--demo" if demo else None)
    if opts["name"] in RECIPES:
        result = run_recipe(opts["name"], {**opts, "arch": arch, "scale": opts["scale"] or "medium"}, seed=opts["seed"],
                            device=opts["device"] or "cpu", progress=progress, ray_address=ray_address,
                            partitions=partitions)
        print_summary(result, time.perf_counter() - start)
        return
    for flag in ("mixing_model", "mixing_inputs"):
        if opts.pop(flag):
            raise FlytInputError(f"--{flag.replace('_', '-')} applies to the flyt_* recipes (--name flyt_...)")
    opts["baseline_settings"] = pop_baseline_options(opts, opts["device"] or "cpu")
    baseline_params = {"arch": arch, "fraction": None, "threshold": None}
    if opts["name"] is not None:  # DataComp's options belong to its baseline, not to a sampler
        if opts["score"] is not None:
            raise FlytInputError(f"--name {opts['name']} writes DataComp's baseline and takes no --score")
        baseline_params.update(fraction=opts.pop("fraction"), threshold=opts.pop("threshold"))
        opts["fraction"] = opts["threshold"] = None
    elif arch is not None:
        if opts["score"] is not None:
            raise FlytInputError("give --arch (DataComp's CLIP-score column) or --score, not both")
        opts["score"] = baselines.ARCH_COLUMNS[arch]
        baseline_params["arch"] = None
    opts["baseline_params"] = baselines.BaselineParams(**{k: v for k, v in baseline_params.items() if v is not None})
    if demo_version is not None and not demo:
        raise FlytInputError("--demo-version applies with --demo")
    demo_pool = _demo_defaults(opts, progress, demo_version) if demo else None
    scoreless = opts["name"] is not None or opts["masks"]
    for required in ("metadata_dir", "output") if demo or scoreless else ("metadata_dir", "score", "output"):
        if opts[required] is None:
            flag = {"score": "--score (or --arch)"}.get(required, f"--{required.replace('_', '-')}")
            raise FlytInputError(f"missing option {flag} (or use --demo)")
    if demo_pool is not None and opts["score"] is None:
        selection.preflight(selection_from_options({**opts, "score": "column:uid"}, progress=progress))  # before training
        if demo_pool.is_trained("m-flyt-demo"):
            click.echo("demo: reusing the M-FLYT model trained on the pool before (preset m-flyt-demo)")
        else:
            click.echo("demo: training M-FLYT on the pool (preset m-flyt-demo; once, then reused)")
        trained = demo_pool.train("m-flyt-demo", progress=progress)
        click.echo(f"demo: scoring model {trained.path}")
        from ..flyt.trainer import format_mixing_weights

        click.echo(format_mixing_weights(trained.mixing_weights))
        opts["score"] = trained.path
    if opts["score"] is None:
        opts["device"] = None  # without a score --device only placed the baselines' centroid search
    result = run_selection(selection_from_options(opts, progress=progress), ray_address, partitions)
    print_summary(result, time.perf_counter() - start)
    if demo_pool is not None:
        from ..demo import domain_breakdown, format_domain_breakdown, format_type_breakdown, type_breakdown

        keep = result.counts > 0
        uids, counts = result.pool.uids[keep], result.counts[keep]
        click.echo("\nwhat the subset kept, from the pool's ground truth (truth.parquet, which no filter reads):")
        click.echo(format_domain_breakdown(domain_breakdown(demo_pool.truth_path, uids, counts)))
        click.echo("")
        click.echo(format_type_breakdown(type_breakdown(demo_pool.truth_path, uids, counts)))
        click.echo(f"\nnext: measure what this subset is worth with the mini-DataComp benchmark (a small CLIP trained "
                   f"on it, zero-shot on held-out digits):\n  flyt-datacomp benchmark --subset {result.output}\n"
                   "or run the standard table of filters: flyt-datacomp benchmark")


def main() -> None:
    filter_command(prog_name="python -m flyt_datacomp.filter")
