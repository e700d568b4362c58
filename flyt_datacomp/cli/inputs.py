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


def cluster_options(fn):
    """Where the shard tasks and an import's join run when no machine should hold the pool: Ray."""
    fn = option("--partitions", type=click.IntRange(min=1),
                help="With --ray: the buckets an import's join is cut into, each one task's rows [default: one per "
                     "4M pool rows].")(fn)
    return option("--ray", "ray_address", metavar="ADDRESS",
                  help="Run the shard tasks, and an import's join of keys to the pool, on a Ray cluster (auto, local, "
                       "or host:port); every node must see the store, the pool, the score files and the shards at "
                       "the paths given.")(fn)


def _check_partitions(ray_address, partitions) -> None:
    if partitions is not None and ray_address is None:
        raise FlytInputError("--partitions applies with --ray")


@inputs_group.command("compute")
@O.metadata_dir(required=True)
@O.inputs_dir(required=True, aliases=("--out",), help="The input store folder (created if needed).")
@option("--input", "specs", multiple=True, required=True, metavar="[NAME=]KIND[:ARG...]",
        help="An input to compute (repeatable). Kinds: " + ", ".join(PROVIDERS) + ".")
@O.workers(default=1, aliases=("--num-workers", "--num_workers"), help="Shard tasks run in this many local processes.")
@cluster_options
@O.shards_dir(help="Downloaded image shards (for inputs that read images).")
@option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
        help="Examples an input has no value for: an error, or the input's minimum or mean.")
@O.device(help="Where inputs that run a model compute (auto: CUDA when there is a GPU).")
@O.seed()
@option("--recompute", multiple=True, metavar="NAME", help="Recompute this input even where it is stored.")
@O.quiet()
def compute_command(metadata_dir, inputs_dir, specs, workers, ray_address, partitions, shards_dir, missing, device,
                    seed, recompute, quiet) -> None:
    """Compute input scores into the store --inputs-dir, resumably (finished shards are never recomputed)."""
    _check_partitions(ray_address, partitions)
    entries = compute_inputs(metadata_dir, inputs_dir, specs, workers=workers, ray_address=ray_address,
                             shards_dir=shards_dir, missing=missing, device=device, seed=seed,
                             recompute=recompute, progress=not quiet, partitions=partitions)
    click.echo(format_entries(entries))
    click.echo(f"store: {inputs_dir}")


@inputs_group.command("import")
@click.argument("src", metavar="SRC")
@O.metadata_dir(required=True)
@O.inputs_dir(required=True, aliases=("--out",), help="The input store folder (created if needed).")
@option("--field", "fields", multiple=True, metavar="NAME[=COLUMN]",
        help="Import the source column COLUMN as the store input NAME (repeatable) [default: every numeric column, "
             "under its own name].")
@option("--key", type=click.Choice(["auto", "uid", "key"]), default="auto", show_default=True,
        help="What keys the rows: the example's uid, or the webdataset key of the download (joined to uids through "
             "--shards-dir); auto: uid if the files have it, else key.")
@O.shards_dir(help="The downloaded image shards the keys belong to (img2dataset's parquet files hold key and uid).")
@option("--check", "checks", multiple=True, metavar="NAME=POOL_COLUMN",
        help="Check that input NAME correlates with this pool column (repeatable) [default: vit-b-32 and vit-l-14 "
             "against the pool's CLIP scores].")
@option("--min-correlation", type=float, default=0.99, show_default=True,
        help="The least correlation a checked input must have with its pool column.")
@option("--missing", type=click.Choice(MISSING_POLICIES), default="error", show_default=True,
        help="Pool examples without a row: an error, or the input's minimum or mean (recorded in the store).")
@option("--recompute", multiple=True, metavar="NAME", help="Import this input again even where it is stored.")
@O.workers(default=1, aliases=("--num-workers", "--num_workers"), help="Shard tasks run in this many local processes.")
@cluster_options
@O.quiet()
def import_command(src, metadata_dir, inputs_dir, fields, key, shards_dir, checks, min_correlation, missing,
                   recompute, workers, ray_address, partitions, quiet) -> None:
    """Import per-example scores computed elsewhere (parquet files at SRC, a local folder or any fsspec
    URL such as hf://datasets/formll/M-FLYT-input-scores) into the store --inputs-dir, keyed by uid
    or by webdataset key, with a check that the rows joined the right examples."""
    from ..inputs.providers.imported import check_column, import_specs, preflight
    from ..pool import Pool

    _check_partitions(ray_address, partitions)
    pool = Pool(metadata_dir, progress=False)
    given = []
    for item in fields:
        name, eq, column = item.partition("=")
        given.append((name.strip(), (column if eq else name).strip()))
    # the files, their columns and keys, the shards folder: refused in seconds, before any long pass
    schema = preflight(src, pool, key_mode=key, shards_dir=shards_dir, fields=[c for _, c in given])
    pairs = given or [(c, c) for c in schema.numeric]
    check_map = {}
    for item in checks:
        name, eq, column = item.partition("=")
        if not eq or name.strip() not in {n for n, _ in pairs}:
            raise FlytInputError(f"--check {item!r} must be NAME=POOL_COLUMN with NAME one of the imported inputs")
        check_map[name.strip()] = column.strip()
        check_column(pool, column.strip(), f"--check {item}")
    specs = import_specs(src, pairs, key=key, checks=check_map, min_corr=min_correlation, pool_columns=pool.column_names)
    entries = compute_inputs(metadata_dir, inputs_dir, specs, workers=workers, shards_dir=shards_dir, missing=missing,
                             device="cpu", recompute=recompute, progress=not quiet,  # an import runs no model
                             ray_address=ray_address, partitions=partitions)
    click.echo(format_entries(entries))
    for name, e in entries.items():
        check = e.get("join_check")
        if check:
            click.echo(f"join check: {name} correlates {check['correlation']:.4f} with the pool's {check['column']} "
                       f"over {check['rows']:,} rows")
    unchecked = [n for n, e in entries.items() if not e.get("join_check")]
    if unchecked and len(unchecked) == len(entries):
        click.echo("note: no input was checked against a pool column (--check NAME=POOL_COLUMN): nothing shows "
                   "whether the rows joined the right examples", err=True)
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
