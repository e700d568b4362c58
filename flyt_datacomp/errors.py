"""The one exception type for bad user input.

Library code raises :class:`FlytInputError` with a message naming the culprit (file, row,
option); the CLI shells turn it into a clean one-line error and a non-zero exit.
"""

import click


class FlytInputError(click.ClickException):
    """Invalid input supplied by the user (file, option or data)."""

    exit_code = 2
