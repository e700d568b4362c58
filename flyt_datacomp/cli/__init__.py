"""The command line: every click command of the package, over the library's thin shells.

``flyt-datacomp`` is :func:`main`, the group of the subcommands below (``python -m flyt_datacomp``
and ``python -m flyt_datacomp.cli`` run it too); ``python -m flyt_datacomp.filter`` and
``python -m flyt_datacomp.train`` run one command each. Every command takes the flags of one
vocabulary (:mod:`.options`) and reports library errors through one path (:mod:`.base`). Nothing
outside this package imports click.
"""

from __future__ import annotations

from ..process import prefer_passive_threads

prefer_passive_threads()  # before anything loads torch

import click  # noqa: E402, I001

from .base import group  # noqa: E402
from .baseline import baseline_command  # noqa: E402
from .benchmark import benchmark_command  # noqa: E402
from .downstream import downstream_group  # noqa: E402
from .eval import eval_group  # noqa: E402
from .filter import filter_command  # noqa: E402
from .inputs import inputs_group  # noqa: E402
from .train import train_command  # noqa: E402


@group()
@click.version_option(package_name="flyt-datacomp")
def main() -> None:
    """FLYT data filtering for DataComp: score a pool, sample a subset, evaluate it."""


for _command in (filter_command, baseline_command, train_command, downstream_group, eval_group, inputs_group,
                 benchmark_command):
    main.add_command(_command)

__all__ = ["main"]
