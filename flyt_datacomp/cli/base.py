"""What every command of the package shares: clean exits, the one error path, the option classes.

:class:`FlytCommand` (and :class:`FlytGroup`, whose subcommands are FlytCommands) run a command
with the process set up for clean exits (SIGTERM/SIGHUP become exceptions, so cleanup runs; see
:mod:`flyt_datacomp.process`) and turn the library's :class:`~flyt_datacomp.errors.FlytError` into
click's one-line ``Error: ...`` with the error's exit code. A library message names settings by
their Python names; here each becomes the flag that sets it in this command (``num_samples`` ->
``--num-samples``). Library code never imports click.
"""

from __future__ import annotations

import errno

import click

from ..errors import FlytError, quote
from ..process import Terminated, install_signal_handlers, quiet_library_warnings, stop_handled

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class Reported(click.ClickException):
    """A library error as click shows it: ``Error: <message>`` and the error's exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


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


def flag_names(command: click.Command) -> dict[str, str]:
    """Setting name -> the flag that sets it in ``command`` (its first visible spelling)."""
    out = dict(getattr(command, "extra_flags", {}))
    for param in command.params:
        if isinstance(param, click.Option) and param.name:
            shown = [o for o in param.opts if o not in getattr(param, "hidden_aliases", ())]
            out.setdefault(param.name, (shown or param.opts)[0])
    return out


class FlytCommand(click.Command):
    """A command with the package's process setup and error path. ``extra_flags`` maps setting
    names that differ from an option's name to its flag (a sampler's ``alpha`` is ``--scs-alpha``)."""

    def __init__(self, *args, extra_flags: dict[str, str] | None = None, **kwargs):
        # every command's own settings (-h as well as --help), not only those of a group it runs under:
        # click keeps the help option of the first context a command makes
        kwargs["context_settings"] = {**CONTEXT_SETTINGS, **(kwargs.get("context_settings") or {})}
        super().__init__(*args, **kwargs)
        self.extra_flags = dict(extra_flags or {})

    def invoke(self, ctx: click.Context):
        install_signal_handlers()
        quiet_library_warnings()
        try:
            return self._invoke(ctx)
        finally:
            stop_handled()  # the command has unwound: a stop signal's watchdog is no longer needed

    def _invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except FlytError as exc:
            raise Reported(exc.render(flag_names(self)), exc.exit_code) from None
        except OSError as exc:
            stop = _signal_behind(exc.__context__)
            if stop is not None:
                raise stop from None
            if exc.errno != errno.ENAMETOOLONG:
                raise
            where = quote(str(exc.filename), 120) if exc.filename else "a path given"
            raise Reported(f"{where}: a name in this path is longer than the file system allows (usually 255 bytes "
                           "per name); choose a shorter one", 2) from None
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
            raise Reported(exc.render(), exc.exit_code) from None


FlytGroup.group_class = FlytGroup


def command(name: str | None = None, **kwargs):
    """``click.command`` for the package's commands."""
    return click.command(name, cls=FlytCommand, context_settings=CONTEXT_SETTINGS, **kwargs)


def group(name: str | None = None, **kwargs):
    """``click.group`` for the package's command groups."""
    return click.group(name, cls=FlytGroup, context_settings=CONTEXT_SETTINGS, **kwargs)


class Option(click.Option):
    """``click.Option`` with ``aliases``: older spellings that still work but stay out of ``--help``."""

    def __init__(self, param_decls=None, *, aliases: tuple[str, ...] = (), **kwargs):
        super().__init__([*(param_decls or ()), *aliases], **kwargs)
        self.hidden_aliases = tuple(aliases)

    def get_help_record(self, ctx: click.Context):
        saved = self.opts, self.secondary_opts
        self.opts = [o for o in self.opts if o not in self.hidden_aliases]
        self.secondary_opts = [o for o in self.secondary_opts if o not in self.hidden_aliases]
        try:
            return super().get_help_record(ctx)
        finally:
            self.opts, self.secondary_opts = saved


def option(*param_decls: str, **kwargs):
    """``click.option`` with the package's :class:`Option` (``aliases=`` for hidden old spellings)."""
    return click.option(*param_decls, cls=Option, **kwargs)


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> list[str] | None:
    """A click callback: ``A, B,C`` -> ``["A", "B", "C"]`` (None when the option is not given); a value
    that names nothing (``''``, ``,``) is refused rather than read as "not given"."""
    if value is None:
        return None
    items = [s.strip() for s in value.split(",") if s.strip()]
    if not items:
        raise click.BadParameter(f"{value!r} names nothing; give A,B,... or leave the option out", ctx, param)
    return items


class HiddenArgument(click.Argument):
    """An optional positional argument kept for old command lines, left out of the usage line."""

    def get_usage_pieces(self, ctx: click.Context) -> list[str]:
        return []
