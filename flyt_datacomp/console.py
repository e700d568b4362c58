"""What a library step prints for the person running it (a report, a child process's live output).

Diagnostics go through :mod:`logging`; this is for output that *is* the result, so it goes to
standard output as it comes, flushed.
"""

from __future__ import annotations

import sys


def say(text: str = "", *, end: str = "\n") -> None:
    """Write ``text`` to standard output now."""
    stream = sys.stdout
    try:
        stream.write(text + end)
    except UnicodeEncodeError:  # a terminal that cannot show some character of a child's output
        stream.write((text + end).encode(stream.encoding or "ascii", "replace").decode(stream.encoding or "ascii"))
    stream.flush()
