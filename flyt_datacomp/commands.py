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
from .process import Terminated, install_signal_handlers

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class _Reported(click.ClickException):
    def __init__(self, error: FlytError):
        super().__init__(error.message)
        self.exit_code = error.exit_code


def _signal_behind(exc: BaseException) -> BaseException | None:
    """The Ctrl-C or SIGTERM/SIGHUP during whose handling ``exc`` was raised, if any.

    A signal sent to a whole process group (a scheduler's cancel, Ctrl-C) also ends helper
    processes such as DataLoader workers; while this process unwinds from the signal, their death
    surfaces as a second exception. The user asked to stop: report the stop, not that.
    """
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, (KeyboardInterrupt, Terminated)):
            return exc
        exc, seen = exc.__context__, seen + 1
    return None


class FlytCommand(click.Command):
    def invoke(self, ctx: click.Context):
        install_signal_handlers()
        try:
            return super().invoke(ctx)
        except FlytError as exc:
            raise _Reported(exc) from None
        except Exception as exc:
            stop = _signal_behind(exc.__context__)
            if stop is None:
                raise
            raise stop from None


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
