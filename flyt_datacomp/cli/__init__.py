"""The command line: every click command of the package, over the library's thin shells.

``flyt-datacomp`` is :func:`main`, the group of the subcommands below (``python -m flyt_datacomp``
and ``python -m flyt_datacomp.cli`` run it too); ``python -m flyt_datacomp.filter`` and
``python -m flyt_datacomp.train`` run one command each. Every command takes the flags of one
vocabulary (:mod:`.options`) and reports library errors through one path (:mod:`.base`). Nothing
outside this package imports click.
"""

from __future__ import annotations

import click

from .base import group
from .baseline import baseline_command
from .benchmark import benchmark_command
from .downstream import downstream_group
from .eval import eval_group
from .filter import filter_command
from .inputs import inputs_group
from .train import train_command


@group()
@click.version_option(package_name="flyt-datacomp")
def main() -> None:
    """FLYT data filtering for DataComp: score a pool, sample a subset, evaluate it."""


for _command in (filter_command, baseline_command, train_command, downstream_group, eval_group, inputs_group,
                 benchmark_command):
    main.add_command(_command)

__all__ = ["main"]
