"""``flyt-datacomp baseline NAME``: one of DataComp's baselines, or one of the paper's released subsets,
as a subset file (``filter --name NAME``)."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import selection
from ..baselines.datacomp import ARCH_COLUMNS, BASELINES, BaselineParams
from ..errors import FlytInputError
from ..recipes import RECIPES
from . import options as O
from .base import command, option
from .filter import (
    baseline_options,
    mask_option,
    mixing_options,
    pop_baseline_options,
    pop_ray_options,
    print_summary,
    ray_options,
    run_recipe,
    run_selection,
)


def recipe_options(fn):
    """The options of the paper's recipes (flyt_mflyt_scs, flyt_mflyt_top20), with their scale."""
    fn = option("--scale", type=click.Choice(["small", "medium"]), default="medium", show_default=True,
                help="flyt_* recipes: the paper's scale, which sets SCS's alpha, G and N.")(fn)
    return mixing_options(fn)


@command("baseline", extra_flags={"baseline": "NAME"})
@click.argument("name", type=click.Choice([*BASELINES, *RECIPES]))
@O.metadata_dir(required=True)
@O.output(required=True, aliases=("--save_path",), help="Subset file to write (.npy): a local path or any fsspec URL.")
@option("--arch", type=click.Choice(list(ARCH_COLUMNS)), help="clip_score baselines: which CLIP score.")
@option("--fraction", type=float, help="clip_score baselines: keep the top fraction (DataComp's rule).")
@option("--threshold", type=float, help="clip_score baselines: keep CLIP score >= this value.")
@baseline_options
@O.device(default="cpu", help="Where the image_based baselines' nearest-centroid search runs.")
@mask_option
@O.shards_dir(help="Keep only pool examples with an image in these downloaded shards.")
@O.inputs_dir(help="An input store: the released input scores for the flyt_* recipes, or for --mask store:...")
@recipe_options
@O.seed()
@O.workers(default=4, aliases=("--num-workers", "--num_workers"),
           help="Worker processes for the caption rules (text_based, basic_filter).")
@O.io_threads()
@O.overwrite(help="Replace existing output files.")
@ray_options
@O.quiet()
def baseline_command(name: str, arch, fraction, threshold, device: str, seed: int, quiet: bool, **opts: Any) -> None:
    """Write one of DataComp's baselines (the uids it keeps), or one of the paper's released subsets
    (flyt_mflyt_scs, flyt_mflyt_top20: the authors' M-FLYT model over their released input scores),
    as a subset file.

    DataComp's spellings work too: --metadata_dir, --save_path, --num_workers, --num_gpus,
    --batch_size, --image_based_scale.
    """
    start = time.perf_counter()
    ray_address, partitions = pop_ray_options(opts)
    if name in RECIPES:
        result = run_recipe(name, {**opts, "arch": arch, "fraction": fraction, "threshold": threshold}, seed=seed,
                            device=device, progress=not quiet, ray_address=ray_address, partitions=partitions)
        print_summary(result, time.perf_counter() - start)
        return
    for flag, key in (("--mixing-model", "mixing_model"), ("--mixing-inputs", "mixing_inputs")):
        if opts.pop(key):
            raise FlytInputError(f"{flag} applies to the flyt_* recipes, not to DataComp's {name}")
    opts.pop("scale")
    settings = pop_baseline_options(opts, device)
    params = BaselineParams(**{k: v for k, v in {"arch": arch, "fraction": fraction, "threshold": threshold}.items()
                               if v is not None})
    sel = selection.Selection(
        metadata_dir=opts.pop("metadata_dir"),
        output=selection.Output(opts.pop("output"), overwrite=opts.pop("overwrite")),
        restrict=selection.Restrict(shards_dir=opts.pop("shards_dir"), baseline=name, baseline_params=params,
                                 masks=tuple(opts.pop("masks")), **settings),
        score=selection.ScoreStage(None, inputs_dir=opts.pop("inputs_dir")),
        workers=opts.pop("workers"), io_threads=opts.pop("io_threads"), progress=not quiet)
    print_summary(run_selection(sel, ray_address, partitions), time.perf_counter() - start)
