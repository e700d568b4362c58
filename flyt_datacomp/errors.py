"""The package's exception types, and how errors quote user values.

Library code raises these plain exceptions (no command-line framework involved); the command shells
turn each into a one-line ``Error: ...`` message and the exit code its type names, in one place
(:mod:`flyt_datacomp.cli.base`).

Library messages name settings by their Python names in backquotes (`` `num_samples` ``,
`` `overwrite` ``) and list those names in ``params``; the command line shows each as the flag that
sets it (``--num-samples``, ``--overwrite``), so one message reads right from Python and from the shell.

* :class:`FlytInputError` (exit 2): bad input from the user, naming the culprit (file, row, option).
* :class:`ExternalToolError` (exit 3): an external program (a DataComp script) failed.
* :class:`OutputCheckError` (exit 4): an output did not pass the check made on it afterwards (say, a
  resharded dataset with the wrong number of samples).
* :class:`TrainingDiverged` (exit 5): training met a non-finite loss or gradient.
* :class:`WorkerDied` (exit 2): a worker process was killed or ran out of memory.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence


class FlytError(Exception):
    """Base class: an error the command line reports as one clean line and ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str, *, params: Sequence[str] = ()):
        super().__init__(message)
        self.message = message
        self.params = tuple(params)  # setting names in the message, shown as flags on the command line

    def __str__(self) -> str:
        return self.message

    def render(self, flags: Mapping[str, str] | None = None) -> str:
        """The message as the command line shows it: see :func:`render_settings`."""
        return render_settings(self.message, flags, self.params)


_SETTING = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def render_settings(text: str, flags: Mapping[str, str] | None = None, params: Sequence[str] = ()) -> str:
    """``text`` with each setting written as `` `name` `` replaced by the flag that sets it: ``flags[name]``,
    else ``--name-with-dashes`` for the names in ``params``; other backquoted names stay as they are."""
    flags = flags or {}

    def flag(m: re.Match) -> str:
        name = m.group(1)
        if name in flags:
            return flags[name]
        return "--" + name.replace("_", "-") if name in params else m.group(0)

    return _SETTING.sub(flag, text)


class WorkerDied(FlytError):
    """A worker process ended abruptly (killed, or out of memory); the message says which work."""

    exit_code = 2


class FlytInputError(FlytError):
    """Invalid input supplied by the user (file, option or data)."""

    exit_code = 2


class ExternalToolError(FlytError):
    """An external program exited with an error; the message carries its exit code and log tail."""

    exit_code = 3


class OutputCheckError(FlytError):
    """An external program finished, but its output failed our check of it."""

    exit_code = 4


class TrainingDiverged(FlytError):
    """A non-finite loss or gradient stopped training (the message names the last good checkpoint)."""

    exit_code = 5


def quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a user value can be megabytes long)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value)):,} characters)"
