"""The one flag vocabulary every command uses.

==================  ==========================================================================
``--metadata-dir``  a pool's metadata folder (DataComp's ``--metadata_dir`` works too)
``--output``        a file the command writes
``--output-dir``    a folder the command writes
``--inputs-dir``    an input store
``--shards-dir``    a pool's downloaded img2dataset image shards
``--workers``       how many worker processes the command's work runs in (the help says what each runs)
``--io-threads``    how many metadata shards are read at once (threads)
``--device``        where torch work runs: ``auto``, ``cpu`` or ``cuda``; ``cpu`` by default in the
                    commands that write a subset (``filter``, ``baseline``: a seed gives the same
                    bytes on every machine), ``auto`` in those that compute scores or train
``--mixing-inputs`` the inputs an M-FLYT mixing model mixes, in its order (comma separated)
``--input``         one input of the store to compute (repeatable: a spec per flag)
``--seed``          the value every random choice starts from
``--overwrite``     replace what a previous run wrote
``--quiet``         no progress bars
``--demo-version``  which built-in demo pool: ``v4`` (the default) or ``v3``
==================  ==========================================================================

Spellings that shipped before stay as hidden aliases where they keep their one meaning
(``--num-workers``, ``--out``, ``--jobs``, ``--json``, train's ``--inputs``, ...), and DataComp's own
spellings (``--metadata_dir``, ``--save_path``, ``--num_workers``, ``--num_gpus``, ``--batch_size``,
``--image_based_scale``) keep working.
``tests/test_cli_vocabulary.py`` checks every command against this list.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from ..demo.pool import DEMO_VERSIONS
from ..flyt.config import MAX_SEED
from .base import option

DEVICES = ("auto", "cpu", "cuda")


def metadata_dir(*, required: bool = False, help: str = "Pool metadata folder (local path or any fsspec URL).") -> Callable:
    return option("--metadata-dir", "metadata_dir", aliases=("--metadata_dir",), metavar="URL", required=required,
                  help=help)


def output(*, required: bool = False, help: str, aliases: tuple[str, ...] = (), metavar: str = "PATH") -> Callable:
    return option("--output", "output", aliases=aliases, metavar=metavar, required=required, help=help)


def output_dir(*, required: bool = False, help: str, aliases: tuple[str, ...] = (), default=None) -> Callable:
    return option("--output-dir", "output_dir", aliases=aliases, metavar="DIR", required=required, default=default,
                  help=help)


def inputs_dir(*, required: bool = False, help: str, aliases: tuple[str, ...] = ()) -> Callable:
    return option("--inputs-dir", "inputs_dir", aliases=aliases, metavar="STORE", required=required, help=help)


def shards_dir(*, required: bool = False, help: str) -> Callable:
    return option("--shards-dir", "shards_dir", metavar="URL", required=required, help=help)


def workers(*, default: int | None, help: str, aliases: tuple[str, ...] = ("--num-workers",)) -> Callable:
    return option("--workers", "workers", aliases=aliases, type=click.IntRange(min=1), default=default,
                  show_default=default is not None, help=help)


def io_threads(*, default: int = 4) -> Callable:
    return option("--io-threads", "io_threads", type=click.IntRange(min=1), default=default, show_default=True,
                  help="Metadata shards read at once (threads; more help with remote pools).")


def device(*, default: str = "auto", help: str) -> Callable:
    return option("--device", "device", type=click.Choice(DEVICES), default=default, show_default=True, help=help)


def seed(*, help: str = "Seed of every random choice: same inputs and seed, same bytes out.") -> Callable:
    return option("--seed", "seed", type=click.IntRange(0, MAX_SEED), default=0, show_default=True, help=help)


def overwrite(*, help: str = "Replace existing outputs.") -> Callable:
    return option("--overwrite", "overwrite", is_flag=True, help=help)


def quiet() -> Callable:
    return option("--quiet", "quiet", is_flag=True, help="No progress bars.")


def demo_version(*, help: str) -> Callable:
    return option("--demo-version", "demo_version", type=click.Choice(DEMO_VERSIONS), default=None,
                  help=help + " v4 (the default): digits, the task, among letters, shapes and textures; "
                  "v3: digits only.")
