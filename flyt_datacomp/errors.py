"""The package's exception types, and how errors quote user values.

Library code raises these plain exceptions (no command-line framework involved); the command shells
turn each into a one-line ``Error: ...`` message and the exit code its type names, in one place
(:mod:`flyt_datacomp.commands`).

* :class:`FlytInputError` (exit 2): bad input from the user, naming the culprit (file, row, option).
* :class:`ExternalToolError` (exit 3): an external program (a DataComp script) failed.
* :class:`OutputCheckError` (exit 4): an output did not pass the check made on it afterwards (say, a
  resharded dataset with the wrong number of samples).
* :class:`TrainingDiverged` (exit 5): training met a non-finite loss or gradient.
"""


class FlytError(Exception):
    """Base class: an error the command line reports as one clean line and ``exit_code``."""

    exit_code = 1

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


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
