"""Command-line options of the baselines and masks, shared by ``filter`` and ``baseline``.

``flyt-datacomp baseline NAME`` is ``python -m flyt_datacomp.filter --name NAME``: one of DataComp's
baselines, written as a subset file with the usual sidecar (DataComp's options and spellings:
``--arch``, ``--fraction``, ``--threshold``, ``--image_based_scale``, ``--num_workers``,
``--num_gpus``, ``--batch_size``, ``--metadata_dir``, ``--save_path``).
"""

from __future__ import annotations

import time
from typing import Any

import click

from ..commands import command
from .assets import SCALES, AssetPaths
from .datacomp import ARCH_COLUMNS, BASELINES

_ASSET_OPTIONS = ("fasttext_model", "imagenet21k_wordnet_ids", "centroids", "in1k_embeddings", "wordnet_data", "assets_dir")


def asset_options(fn):
    """The options that locate DataComp's assets, the GPU settings and --image_based_scale."""
    options = [
        click.option("--image_based_scale", "--image-based-scale", "image_based_scale", type=click.Choice(SCALES),
                     help="image_based baselines: the DataComp scale whose k-means centroids to use."),
        click.option("--num_gpus", "--num-gpus", "num_gpus", type=int, default=0, show_default=True,
                     help="image_based baselines: GPUs for the nearest-centroid search (0: the CPU)."),
        click.option("--batch_size", "--batch-size", "batch_size", type=int, default=1024, show_default=True,
                     help="image_based baselines: embeddings per nearest-centroid batch."),
        click.option("--fasttext-model", metavar="PATH", help="fastText's lid.176.bin (language id)."),
        click.option("--imagenet21k-wordnet-ids", metavar="PATH",
                     help="text_based: DataComp's ImageNet-21k WordNet id list."),
        click.option("--centroids", metavar="PATH",
                     help="image_based: a k-means centroids file (default: DataComp's for --image_based_scale)."),
        click.option("--in1k-embeddings", metavar="PATH", multiple=True,
                     help="image_based: DataComp's in1k_clip_vit_l14_{0..4}.pt files, or one folder holding them."),
        click.option("--wordnet-data", metavar="DIR", help="text_based: an nltk_data folder holding corpora/wordnet."),
        click.option("--assets-dir", metavar="DIR",
                     help="A folder holding the assets under DataComp's names (also searched: $FLYT_DATACOMP_ASSETS, "
                          "~/.cache/datacomp, ~/.cache/fasttext)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def pop_asset_options(kwargs: dict[str, Any]) -> AssetPaths:
    """Take the asset options out of a command's keyword arguments."""
    values = {k: kwargs.pop(k) for k in _ASSET_OPTIONS}
    values["in1k_embeddings"] = tuple(values["in1k_embeddings"] or ())
    return AssetPaths(**values)


@command("baseline")
@click.argument("name", type=click.Choice(list(BASELINES)))
@click.option("--metadata-dir", "--metadata_dir", "metadata_dir", metavar="URL", required=True,
              help="Pool metadata folder (local path or any fsspec URL).")
@click.option("--output", "--save_path", "output", metavar="PATH", required=True, help="Subset file to write (.npy).")
@click.option("--arch", type=click.Choice(list(ARCH_COLUMNS)), help="clip_score baselines: which CLIP score.")
@click.option("--fraction", type=float, help="clip_score baselines: keep the top fraction (DataComp's rule).")
@click.option("--threshold", type=float, help="clip_score baselines: keep CLIP score >= this value.")
@asset_options
@click.option("--mask", "masks", metavar="SPEC", multiple=True, help="Also keep only examples inside this mask.")
@click.option("--shards-dir", metavar="URL", help="Keep only pool examples with an image in these downloaded shards.")
@click.option("--num-workers", "--num_workers", "num_workers", type=int, default=4, show_default=True,
              help="Metadata shards read in parallel, and processes for the caption rules.")
@click.option("--overwrite", is_flag=True, help="Replace existing output files.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def baseline_command(name: str, arch, fraction, threshold, image_based_scale, quiet: bool, **kwargs: Any) -> None:
    """Write one of DataComp's baselines (the uids it keeps) as a subset file."""
    from ..filter import FilterConfig, print_summary, run_filter

    start = time.perf_counter()
    assets = pop_asset_options(kwargs)
    params = {"arch": arch, "fraction": fraction, "threshold": threshold, "image_based_scale": image_based_scale}
    cfg = FilterConfig(score=None, name=name, name_params={k: v for k, v in params.items() if v is not None},
                       assets=assets, masks=tuple(kwargs.pop("masks")), progress=not quiet, **kwargs)
    result = run_filter(cfg)
    print_summary(result, time.perf_counter() - start)
