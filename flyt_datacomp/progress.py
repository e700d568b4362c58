"""The package's one progress-bar style.

``progress_bar`` is tqdm without tqdm's monitor thread. That thread is still alive when a
command exits after reading parquet files; together with pyarrow's thread pool it made 1 in 20
to 26 in 40 error exits end in ``terminate called without an active exception`` (exit code 134)
instead of the intended code. Without the thread the exits are clean.
"""

from __future__ import annotations

from tqdm.auto import tqdm


class progress_bar(tqdm):  # noqa: N801 - used like the function tqdm
    """tqdm with the monitor thread disabled (see the module docstring)."""

    monitor_interval = 0
