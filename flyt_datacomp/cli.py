"""The ``flyt-datacomp`` command group: one subcommand per pipeline step."""

from __future__ import annotations

import click

from .benchmark.cli import benchmark_command
from .downstream import downstream_group
from .filter import filter_command
from .train import train_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="flyt-datacomp")
def main() -> None:
    """FLYT data filtering for DataComp: score a pool, sample a subset, evaluate it."""


main.add_command(filter_command)
main.add_command(train_command)
main.add_command(downstream_group)
main.add_command(benchmark_command)

if __name__ == "__main__":
    main()
