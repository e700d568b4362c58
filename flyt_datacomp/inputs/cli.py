"""``flyt-datacomp inputs``: compute input scores into a store, and show what a store holds."""

from __future__ import annotations

import click

from ..commands import group
from .compute import MISSING_POLICIES, compute_inputs
from .providers import PROVIDERS
from .store import InputStore


def _kinds_help() -> str:
    return "; ".join(f"{k}: {c.help}" for k, c in PROVIDERS.items())


@group("inputs")
def inputs_group() -> None:
    """Per-example input scores kept beside the pool (the M-FLYT inputs of the paper)."""


@inputs_group.command("compute")
@click.option("--metadata-dir", "--metadata_dir", "metadata_dir", required=True, metavar="URL",
              help="Pool metadata folder.")
@click.option("--out", "store_dir", required=True, metavar="STORE", help="The store folder (created if needed).")
@click.option("--input", "specs", multiple=True, required=True, metavar="[NAME=]KIND[:ARG...]",
              help="An input to compute (repeatable). Kinds: " + ", ".join(PROVIDERS) + ".")
@click.option("--num-workers", "--num_workers", "workers", type=int, default=1, show_default=True,
              help="Shard tasks run in this many local processes.")
@click.option("--ray", "ray_address", metavar="ADDRESS",
              help="Run the shard tasks on a Ray cluster instead (auto, local, or host:port).")
@click.option("--shards-dir", metavar="URL", help="Downloaded image shards (for inputs that read images).")
@click.option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
              help="Examples an input has no value for: an error, or the input's minimum or mean.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--recompute", multiple=True, metavar="NAME", help="Recompute this input even where it is stored.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def compute_command(metadata_dir, store_dir, specs, workers, ray_address, shards_dir, missing, device, seed,
                    recompute, quiet) -> None:
    """Compute input scores into STORE, resumably (finished shards are never recomputed)."""
    entries = compute_inputs(metadata_dir, store_dir, specs, workers=workers, ray_address=ray_address,
                             shards_dir=shards_dir, missing=missing, device=device, seed=seed,
                             recompute=recompute, progress=not quiet)
    click.echo(format_entries(entries))
    click.echo(f"store: {store_dir}")


@inputs_group.command("show")
@click.argument("store_dir", metavar="STORE")
def show_command(store_dir) -> None:
    """List the inputs of a store with their pool statistics."""
    manifest = InputStore(store_dir).manifest()
    click.echo(f"pool: {manifest['metadata_dir']} ({sum(s['rows'] for s in manifest['shards']):,} examples, "
               f"{len(manifest['shards'])} shards)")
    click.echo(format_entries(manifest["inputs"]))


def format_entries(entries: dict) -> str:
    lines = [f"{'input':<28} {'status':<10} {'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'missing':>8}  spec"]
    for name, e in entries.items():
        stats = [f"{e[k]:>10.4g}" if e.get(k) is not None else f"{'':>10}" for k in ("mean", "std", "min", "max")]
        lines.append(f"{name:<28} {e.get('status', ''):<10} {' '.join(stats)} {e.get('missing_count', ''):>8}  {e['spec']}")
    return "\n".join(lines)


compute_command.help += "\n\nKinds: " + _kinds_help()
