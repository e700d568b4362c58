"""``flyt-datacomp baseline NAME``: one of DataComp's baselines as a subset file (``filter --name NAME``)."""

from __future__ import annotations

import time
from typing import Any

import click

from .. import selection
from ..baselines.datacomp import ARCH_COLUMNS, BASELINES, BaselineParams
from . import options as O
from .base import command, option
from .filter import baseline_options, mask_option, pop_baseline_options, print_summary


@command("baseline", extra_flags={"baseline": "NAME"})
@click.argument("name", type=click.Choice(list(BASELINES)))
@O.metadata_dir(required=True)
@O.output(required=True, aliases=("--save_path",), help="Subset file to write (.npy): a local path or any fsspec URL.")
@option("--arch", type=click.Choice(list(ARCH_COLUMNS)), help="clip_score baselines: which CLIP score.")
@option("--fraction", type=float, help="clip_score baselines: keep the top fraction (DataComp's rule).")
@option("--threshold", type=float, help="clip_score baselines: keep CLIP score >= this value.")
@baseline_options
@O.device(default="cpu", help="Where the image_based baselines' nearest-centroid search runs.")
@mask_option
@O.shards_dir(help="Keep only pool examples with an image in these downloaded shards.")
@O.inputs_dir(help="An input store, for --mask store:...")
@O.workers(default=4, aliases=("--num-workers", "--num_workers"),
           help="Metadata shards read at once (threads), and processes for the caption rules.")
@O.overwrite(help="Replace existing output files.")
@O.quiet()
def baseline_command(name: str, arch, fraction, threshold, device: str, quiet: bool, **opts: Any) -> None:
    """Write one of DataComp's baselines (the uids it keeps) as a subset file.

    DataComp's spellings work too: --metadata_dir, --save_path, --num_workers, --num_gpus,
    --batch_size, --image_based_scale.
    """
    start = time.perf_counter()
    settings = pop_baseline_options(opts, device)
    params = BaselineParams(**{k: v for k, v in {"arch": arch, "fraction": fraction, "threshold": threshold}.items()
                               if v is not None})
    sel = selection.Selection(
        metadata_dir=opts.pop("metadata_dir"),
        output=selection.Output(opts.pop("output"), overwrite=opts.pop("overwrite")),
        restrict=selection.Restrict(shards_dir=opts.pop("shards_dir"), baseline=name, baseline_params=params,
                                 masks=tuple(opts.pop("masks")), **settings),
        score=selection.ScoreStage(None, inputs_dir=opts.pop("inputs_dir")),
        workers=opts.pop("workers"), progress=not quiet)
    result = selection.run(sel)
    print_summary(result, time.perf_counter() - start)
