"""Reading parquet and csv files through Python file objects (any fsspec file) without Arrow threads.

Given a Python file object, Arrow's readers read ahead on their own I/O threads (parquet's
``pre_buffer``, the scanner behind ``pq.read_table``, the csv reader even with ``use_threads=False``),
and those threads call into the Python file. One still finishing such a call, or dropping the last
reference to the file, when the interpreter exits (after an error, say) must take the GIL from a
finalising interpreter, and the process aborts with ``terminate called without an active exception``
(exit code 134) in a small share of runs. The readers here keep every call into Python in the
calling thread. Files opened by path (Arrow's own files) need none of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def open_parquet(fh: Any) -> pq.ParquetFile:
    """A parquet file on the Python file object ``fh``, without read-ahead; read it with
    ``use_threads=False`` (as :func:`read_parquet` does)."""
    return pq.ParquetFile(fh, pre_buffer=False)


def read_parquet(fh: Any, columns: Sequence[str] | None = None) -> pa.Table:
    """The ``columns`` (all when None) of the parquet file ``fh``, decoded in this thread."""
    return open_parquet(fh).read(columns=None if columns is None else list(columns), use_threads=False)


def read_csv(fh: Any, **options: Any) -> pa.Table:
    """The csv file ``fh`` (``options`` as for ``pyarrow.csv.read_csv``): read whole, in this thread,
    into memory that Arrow owns, then parsed from there."""
    import pyarrow.csv as pcsv

    fh.seek(0, 2)
    size = fh.tell()
    fh.seek(0)
    buf = pa.allocate_buffer(size)
    view = np.frombuffer(buf, dtype=np.uint8)
    got = 0
    while got < size:
        n = fh.readinto(view[got:])
        if not n:
            raise OSError(f"the file ended after {got:,} of its {size:,} bytes")
        got += n
    del view
    return pcsv.read_csv(pa.BufferReader(buf), **options)
