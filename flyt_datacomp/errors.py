"""Exception types that the CLI shells turn into a clean one-line error and a non-zero exit, and
how errors quote user values.

Library code raises :class:`FlytInputError` with a message naming the culprit (file, row,
option). :class:`ExternalToolError` reports an external program (a DataComp script run as a
subprocess) that failed; :class:`OutputCheckError` reports an output that did not pass the
check made on it afterwards (say, a resharded dataset with the wrong number of samples).
"""

import click


class FlytInputError(click.ClickException):
    """Invalid input supplied by the user (file, option or data)."""

    exit_code = 2


class ExternalToolError(click.ClickException):
    """An external program exited with an error; the message carries its exit code and log tail."""

    exit_code = 3


class OutputCheckError(click.ClickException):
    """An external program finished, but its output failed our check of it."""

    exit_code = 4


def quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a user value can be megabytes long)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value)):,} characters)"
