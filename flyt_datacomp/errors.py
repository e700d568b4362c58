"""The one exception type for bad user input, and how errors quote user values.

Library code raises :class:`FlytInputError` with a message naming the culprit (file, row,
option); the CLI shells turn it into a clean one-line error and a non-zero exit.
"""

import click


class FlytInputError(click.ClickException):
    """Invalid input supplied by the user (file, option or data)."""

    exit_code = 2


def quote(value: object, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters (a user value can be megabytes long)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(str(value)):,} characters)"
