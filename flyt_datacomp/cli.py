"""The ``flyt-datacomp`` command group: one subcommand per pipeline step."""

from __future__ import annotations

import click

from .baselines.cli import baseline_command
from .benchmark.cli import benchmark_command
from .commands import group
from .downstream import downstream_group
from .evaluation.cli import eval_group
from .filter import filter_command
from .inputs.cli import inputs_group
from .train import train_command


@group()
@click.version_option(package_name="flyt-datacomp")
def main() -> None:
    """FLYT data filtering for DataComp: score a pool, sample a subset, evaluate it."""


main.add_command(filter_command)
main.add_command(baseline_command)
main.add_command(train_command)
main.add_command(downstream_group)
main.add_command(eval_group)
main.add_command(inputs_group)
main.add_command(benchmark_command)

if __name__ == "__main__":
    main()
