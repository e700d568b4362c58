"""``flyt-datacomp benchmark``: the mini-DataComp benchmark on the digits demo pool.

With ``--subset FILE.npy`` (repeatable) it scores those subsets; without, the standard table.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import click

from ..benchmark.recipe import RECIPES, get_recipe, pool_recipe
from ..benchmark.table import TableSettings, rows_for
from ..errors import FlytInputError
from ..io import atomic_path, check_creatable, local_path, provenance, write_json
from . import options as O
from .base import command, option

DEFAULT_OUTPUT_DIR = Path("benchmark-results")
MAX_SEEDS = 1000  # each seed is a training run per subset: more would run for weeks


@command("benchmark")
@option("--subset", "subsets", multiple=True, type=click.Path(dir_okay=False, exists=True, path_type=Path),
        help="A subset .npy of the demo pool to score (repeatable); without it, the standard table.")
@option("--num-seeds", "num_seeds", aliases=("--seeds",), type=click.IntRange(1, MAX_SEEDS), default=3,
        show_default=True, help=f"Training runs per subset (seeds 0..N-1, N at most {MAX_SEEDS}); the table shows "
                                "mean ± std.")
@O.output(aliases=("--json",), help="Write the rows and the recipe as JSON here [standard table: "
                                     "<output-dir>/table.json].")
@O.output_dir(help=f"Standard table: where table.md, table.json and table.png go [default: ./{DEFAULT_OUTPUT_DIR}].")
@option("--rows", help=f"Standard table: only these rows, comma separated ({', '.join(rows_for('v4'))}; on a v3 pool "
                      "oracle instead of the two oracles).")
@option("--quick", is_flag=True,
        help="Smoke run: the 'quick' recipe and 2-step scoring models (seconds; accuracies meaningless).")
@option("--recipe", "recipe_name", type=click.Choice(list(RECIPES)), default=None,
        help="Training recipe [default: the pool's: default on a v4 pool, v3 on a v3 pool; quick with --quick].")
@option("--samples-seen", type=click.IntRange(min=1), help="Override the recipe's samples seen.")
@option("--batch-size", type=click.IntRange(min=1), help="Override the recipe's training batch size.")
@option("--lr", type=float, help="Override the recipe's learning rate.")
@option("--scs-alpha", type=float, help="Standard table: SCS penalty alpha shared by the SCS rows [1.0].")
@option("--scs-group-size", "scs_group_size", aliases=("--scs-batch",), type=click.IntRange(min=1),
        help="Standard table: SCS group size G, distinct examples per round [pool size / 100].")
@option("--num-samples", type=click.IntRange(min=1), help="Standard table: SCS draws N [the recipe's samples seen].")
@option("--pool-dir", type=click.Path(file_okay=False, path_type=Path),
        help="A built demo pool folder [default: the default demo pool, built once if needed].")
@O.demo_version(help="Without --pool-dir: the default demo pool of this version (built once if needed).")
@option("--cache-dir", type=click.Path(file_okay=False, path_type=Path),
        help="Decoded images, cached results and the table's work folder [default: <pool>/benchmark].")
@O.workers(default=None, aliases=("--jobs",),
           help="Training runs at once, each in its own process [default: the CPU count, at most 8].")
@O.quiet()
def benchmark_command(subsets: tuple[Path, ...], num_seeds: int, output: str | None, output_dir: str | None,
                      rows: str | None, quick: bool, recipe_name: str | None, samples_seen: int | None,
                      batch_size: int | None, lr: float | None, scs_alpha: float | None, scs_group_size: int | None,
                      num_samples: int | None, pool_dir: Path | None, demo_version: str | None, cache_dir: Path | None,
                      workers: int | None, quiet: bool) -> None:
    """Train a small CLIP from scratch on a subset of the digits demo pool for a fixed number of
    samples seen and report its zero-shot accuracy on the held-out test digits (mean ± std over
    seeds). Results are cached per (subset file hash, seed, recipe): reruns train only what changed."""
    from ..benchmark.evaluate import Benchmark, format_markdown, outside_notes
    from ..demo import DemoPool, build_demo_pool

    start = time.perf_counter()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    progress = not quiet
    table_options = {"--rows": rows, "--output-dir": output_dir, "--scs-alpha": scs_alpha,
                     "--scs-group-size": scs_group_size, "--num-samples": num_samples}
    if subsets:
        given = [flag for flag, value in table_options.items() if value is not None]
        if given:
            raise FlytInputError(f"{', '.join(given)} apply only to the standard table (without --subset)")
    if pool_dir is not None and demo_version is not None:
        raise FlytInputError("give --pool-dir or --demo-version, not both (a built pool knows its version)")
    check_outputs(output, None if subsets else (output_dir or DEFAULT_OUTPUT_DIR), cache_dir)
    pool = DemoPool.open(pool_dir) if pool_dir is not None else build_demo_pool(version=demo_version,
                                                                                progress=progress)
    recipe = get_recipe(recipe_name or ("quick" if quick else pool_recipe(pool.version)),
                        samples_seen=samples_seen, batch_size=batch_size, lr=lr)
    jobs = workers or max(1, min(8, os.cpu_count() or 1))
    bench = Benchmark(pool, recipe, cache_dir, progress=progress, jobs=jobs)
    check_outputs(None, None, bench.cache_dir)  # the pool's own cache folder, now that the pool is known
    seed_ids = list(range(num_seeds))
    json_path = local_path(output, "--output") if output is not None else None

    if subsets:
        result = {"rows": bench.evaluate_many([(s, None) for s in subsets], seed_ids),
                  "recipe": bench.recipe_record()}
    else:
        from ..benchmark.plot import save_bar_chart
        from ..benchmark.table import standard_table

        settings = TableSettings(scs_batch=scs_group_size, num_samples=num_samples, quick_flyt=quick,
                                 **({} if scs_alpha is None else {"scs_alpha": scs_alpha}))
        result = standard_table(bench, seed_ids, bench.cache_dir / "table", settings,
                                rows=[r.strip() for r in rows.split(",") if r.strip()] if rows else None,
                                progress=progress)
        out = local_path(output_dir, "--output-dir") if output_dir is not None else DEFAULT_OUTPUT_DIR
        out.mkdir(parents=True, exist_ok=True)
        json_path = json_path or out / "table.json"
        save_bar_chart(result["rows"], out / "table.png", chance=1 / bench.data.num_classes,
                       title=f"digits mini-DataComp ({pool.version} pool), recipe {recipe.name}, "
                             f"{num_seeds} seed(s)")
        _write_text(out / "table.md", format_markdown(result["rows"]) + "\n")

    seconds = time.perf_counter() - start
    share = bench.data_loading_share()
    result["run"] = {"seconds": round(seconds, 1), "trained_runs": len(bench.timings), "jobs": jobs,
                     "data_loading_share": None if share is None else round(share, 4)}
    if json_path is not None:
        write_json(json_path, provenance(kind="benchmark", **result))
    click.echo(format_markdown(result["rows"]))
    for note in outside_notes(result["rows"]):
        click.echo(f"note: {note}", err=True)
    trained = f"{len(bench.timings)} training run(s)"
    if share is not None:
        trained += f", {100 * share:.1f}% of training time in data loading"
    click.echo(f"\nrecipe {recipe.name} ({recipe.hash()[:12]}): {recipe.samples_seen:,} samples seen, batch "
               f"{recipe.batch_size}, lr {recipe.lr}, {recipe.arch}; {trained}; {seconds:.0f} s")
    if json_path is not None:
        click.echo(f"json: {json_path}")
    if not subsets:
        click.echo(f"table: {out / 'table.md'}\nchart: {out / 'table.png'}")


def check_outputs(output: str | None, table_dir: str | os.PathLike | None, cache_dir: Path | None) -> None:
    """Refuse, before the pool is built and any run is trained, outputs that could not be written at the
    end: ``--output`` a folder (or in one that cannot be written), the table's folder, the cache folder.
    Nothing is created here: a command refused later leaves no folder behind."""
    if output is not None:
        check_creatable(local_path(output, "--output"), "output", folder=False)
    if table_dir is not None:
        table = local_path(table_dir, "--output-dir")
        check_creatable(table, "output_dir", folder=True)
        for name in ("table.md", "table.json", "table.png"):
            check_creatable(table / name, "output_dir", folder=False)
    if cache_dir is not None:
        check_creatable(cache_dir, "cache_dir", folder=True)


def _write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
