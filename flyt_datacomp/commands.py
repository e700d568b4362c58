"""What every command of the package shares, in one place.

:class:`FlytCommand` (and :class:`FlytGroup`, whose subcommands are FlytCommands) run a command
with the process set up for clean exits (SIGTERM/SIGHUP become exceptions, so cleanup runs; see
:mod:`flyt_datacomp.process`) and convert the library's :class:`~flyt_datacomp.errors.FlytError`
into click's one-line ``Error: ...`` with the error's exit code. Library code never imports click
for its errors.
"""

from __future__ import annotations

import click

from .errors import FlytError
from .process import install_signal_handlers

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Reported(click.ClickException):
    def __init__(self, error: FlytError):
        super().__init__(error.message)
        self.exit_code = error.exit_code


class FlytCommand(click.Command):
    def invoke(self, ctx: click.Context):
        install_signal_handlers()
        try:
            return super().invoke(ctx)
        except FlytError as exc:
            raise _Reported(exc) from None


class FlytGroup(click.Group):
    command_class = FlytCommand

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FlytError as exc:
            raise _Reported(exc) from None


FlytGroup.group_class = FlytGroup


def command(name: str | None = None, **kwargs):
    """``click.command`` for the package's commands."""
    return click.command(name, cls=FlytCommand, context_settings=CONTEXT_SETTINGS, **kwargs)


def group(name: str | None = None, **kwargs):
    """``click.group`` for the package's command groups."""
    return click.group(name, cls=FlytGroup, context_settings=CONTEXT_SETTINGS, **kwargs)
