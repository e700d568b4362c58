"""``flyt-datacomp inputs``: compute input scores into a store, and show what a store holds."""

from __future__ import annotations

import click

from ..errors import FlytInputError
from ..inputs.compute import MISSING_POLICIES, compute_inputs
from ..inputs.providers import PROVIDERS
from ..store import InputStore
from . import options as O
from .base import HiddenArgument, group, option


def _kinds_help() -> str:
    return "; ".join(f"{k}: {c.help}" for k, c in PROVIDERS.items())


@group("inputs")
def inputs_group() -> None:
    """Per-example input scores kept beside the pool (the M-FLYT inputs of the paper)."""


@inputs_group.command("compute")
@O.metadata_dir(required=True)
@O.inputs_dir(required=True, aliases=("--out",), help="The input store folder (created if needed).")
@option("--input", "specs", multiple=True, required=True, metavar="[NAME=]KIND[:ARG...]",
        help="An input to compute (repeatable). Kinds: " + ", ".join(PROVIDERS) + ".")
@O.workers(default=1, aliases=("--num-workers", "--num_workers"), help="Shard tasks run in this many local processes.")
@option("--ray", "ray_address", metavar="ADDRESS",
        help="Run the shard tasks on a Ray cluster instead (auto, local, or host:port).")
@O.shards_dir(help="Downloaded image shards (for inputs that read images).")
@option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
        help="Examples an input has no value for: an error, or the input's minimum or mean.")
@O.device(help="Where inputs that run a model compute (auto: CUDA when there is a GPU).")
@O.seed()
@option("--recompute", multiple=True, metavar="NAME", help="Recompute this input even where it is stored.")
@O.quiet()
def compute_command(metadata_dir, inputs_dir, specs, workers, ray_address, shards_dir, missing, device, seed,
                    recompute, quiet) -> None:
    """Compute input scores into the store --inputs-dir, resumably (finished shards are never recomputed)."""
    entries = compute_inputs(metadata_dir, inputs_dir, specs, workers=workers, ray_address=ray_address,
                             shards_dir=shards_dir, missing=missing, device=device, seed=seed,
                             recompute=recompute, progress=not quiet)
    click.echo(format_entries(entries))
    click.echo(f"store: {inputs_dir}")


@inputs_group.command("show")
@click.argument("store_dir", cls=HiddenArgument, required=False, metavar="STORE")
@O.inputs_dir(help="The input store to show.")
def show_command(store_dir, inputs_dir) -> None:
    """List the inputs of a store with their pool statistics, and what is damaged (exit 2 if anything is)."""
    root = inputs_dir or store_dir
    if root is None:
        raise FlytInputError("missing option --inputs-dir")
    store = InputStore(root)
    manifest = store.manifest()
    problems = store.problems(manifest)
    damaged = {n for names, _ in problems for n in names}
    entries = {n: {**e, "status": "damaged"} if n in damaged else e for n, e in manifest["inputs"].items()}
    click.echo(f"pool: {manifest['metadata_dir']} ({sum(s['rows'] for s in manifest['shards']):,} examples, "
               f"{len(manifest['shards'])} shards)")
    click.echo(format_entries(entries))
    for _, problem in problems:
        click.echo(f"damaged: {problem}")
    if problems:
        raise FlytInputError(f"the input store {store.root} is damaged ({len(problems)} problem(s), listed above); "
                             "`flyt-datacomp inputs compute` with the same inputs recomputes what is damaged")


def format_entries(entries: dict) -> str:
    lines = [f"{'input':<28} {'status':<10} {'mean':>10} {'std':>10} {'min':>10} {'max':>10} {'missing':>8}  spec"]
    notes = []
    for name, e in entries.items():
        stats = [f"{e[k]:>10.4g}" if e.get(k) is not None else f"{'':>10}" for k in ("mean", "std", "min", "max")]
        lines.append(f"{name:<28} {e.get('status', ''):<10} {' '.join(stats)} {e.get('missing_count', ''):>8}  {e['spec']}")
        if e.get("extra_uids"):
            notes.append(f"note: input {name}: its file has {e['extra_uids']:,} uids that are not in the pool (ignored)")
    return "\n".join(lines + notes)


compute_command.help += "\n\nKinds: " + _kinds_help()
