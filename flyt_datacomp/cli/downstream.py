"""``flyt-datacomp downstream build``: FLYT's downstream (target task) shards from an ImageFolder tree."""

from __future__ import annotations

import click

from ..downstream import build_downstream_shards
from ..errors import FlytInputError
from . import options as O
from .base import HiddenArgument, group, option


@group("downstream")
def downstream_group() -> None:
    """Downstream (target task) data for FLYT."""


@downstream_group.command("build")
@click.argument("src", type=click.Path(file_okay=False, path_type=str))
@click.argument("out", cls=HiddenArgument, required=False, type=click.Path(file_okay=False, path_type=str))
@O.output_dir(help="The shards folder to write (built beside it, then renamed into place). Required.")
@option("--per-shard", type=int, default=100, show_default=True, help="Samples per tar shard.")
@O.seed(help="Seed of the global shuffle.")
@option("--image-size", type=int, default=None, help="Resize so the shorter side is N pixels.")
@option("--classes", "classes", type=click.Path(dir_okay=False, path_type=str), default=None,
        help="A {classnames, templates} JSON to write as classes.json (default: folder names).")
@O.overwrite(help="Replace a non-empty --output-dir (only one an earlier build wrote: it holds build.json).")
@O.quiet()
def build_command(src: str, out: str | None, output_dir: str | None, per_shard: int, seed: int, image_size: int | None,
                  classes: str | None, overwrite: bool, quiet: bool) -> None:
    """Turn an ImageFolder tree SRC/<class>/<images> into shuffled webdataset shards in --output-dir."""
    if out is not None and output_dir is not None and out != output_dir:
        raise FlytInputError(f"give the output folder once: --output-dir {output_dir} or {out}")
    target = output_dir or out
    if target is None:
        raise FlytInputError("missing option --output-dir")
    info = build_downstream_shards(src, target, per_shard=per_shard, seed=seed, image_size=image_size,
                                   overwrite=overwrite, classes=classes, progress=not quiet)
    click.echo(f"wrote {info['count']} samples of {info['num_classes']} classes in {info['num_shards']} shard(s) "
               f"to {target}")
