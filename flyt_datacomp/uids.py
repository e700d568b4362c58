"""DataComp uids: hex <-> ``(u8, u8)`` codec, sorting, and subset files with repetitions.

A DataComp uid is 32 hex characters (128 bits). Subset files store it as a structured numpy record
of dtype exactly ``np.dtype("u8,u8")`` (fields ``f0``, ``f1``: the high and low 64 bits), in a
sorted 1-D array where a uid repeated k times asks the resharder for k copies.

Everything here is vectorised: no Python loop runs per uid.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .errors import FlytInputError, quote
from .io import OutputSet, dumps, file_sha256, is_url, local_path, provenance, sidecar_path
from .process import release_freed_memory

UID_DTYPE = np.dtype("u8,u8")
_NPY_MAGIC = b"\x93NUMPY"

# ASCII byte -> nibble value, 255 for anything that is not a hex digit.
_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i
_HEX_CHARS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# --------------------------------------------------------------------------- hex codec


def hex_to_uids(hex_uids: Any, *, source: str = "input") -> np.ndarray:
    """Convert hex uid strings to a ``u8,u8`` structured array.

    ``hex_uids`` may be a sequence of ``str``/``bytes``, a numpy ``U``/``S``/object array, or a
    ``(n, 32)`` uint8 array of ASCII codes. Every uid must be exactly 32 hex characters; the
    first offender is named in the error together with ``source`` (a file name, say).
    """
    chars = _as_ascii_matrix(hex_uids, source)
    nibbles = _HEX_VALUE[chars]
    bad = (nibbles == 255).any(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FlytInputError(
            f"malformed uid {_describe(hex_uids, i)} at row {i} of {source}: "
            "a uid must be exactly 32 hex characters"
        )
    out = np.empty(len(chars), dtype=UID_DTYPE)
    for field, half in (("f0", nibbles[:, :16]), ("f1", nibbles[:, 16:])):
        acc = np.zeros(len(chars), dtype=np.uint64)
        for k in range(16):  # 16 vectorised passes, one per nibble position
            acc = (acc << np.uint64(4)) | half[:, k].astype(np.uint64)
        out[field] = acc
    return out


def uids_to_hex(uids: np.ndarray) -> np.ndarray:
    """Convert a ``u8,u8`` array to an array of 32-character lowercase hex strings (``U32``)."""
    uids = check_uid_array(uids, source="uids_to_hex input")
    n = len(uids)
    chars = np.empty((n, 32), dtype=np.uint8)
    for half, field in enumerate(("f0", "f1")):
        values = uids[field].astype(np.uint64)
        for k in range(16):
            shift = np.uint64(4 * (15 - k))
            chars[:, 16 * half + k] = _HEX_CHARS[((values >> shift) & np.uint64(15)).astype(np.intp)]
    return chars.view("S32").ravel().astype("U32")


def _as_ascii_matrix(hex_uids: Any, source: str) -> np.ndarray:
    """View uid strings as an ``(n, 32)`` uint8 matrix of ASCII codes, checking lengths."""
    if isinstance(hex_uids, np.ndarray) and hex_uids.dtype == np.uint8 and hex_uids.ndim == 2:
        if hex_uids.shape[1] != 32:
            raise FlytInputError(f"uids in {source} must be 32 characters, got {hex_uids.shape[1]}")
        return hex_uids
    arr = np.asarray(hex_uids)
    if arr.ndim != 1:
        raise FlytInputError(f"uids in {source} must be a 1-D sequence, got shape {arr.shape}")
    if arr.dtype.kind == "O":
        try:
            arr = arr.astype("U")
        except (TypeError, ValueError) as exc:
            raise FlytInputError(f"uids in {source} must be strings: {exc}") from None
    if arr.dtype.kind == "U":
        if arr.size and arr.dtype.itemsize // 4 > 0:
            try:
                arr = np.char.encode(arr, "ascii")
            except UnicodeEncodeError:
                bad = np.flatnonzero([not s.isascii() for s in arr])
                i = int(bad[0])
                raise FlytInputError(f"malformed uid {quote(str(arr[i]))} at row {i} of {source}: not ASCII") from None
        else:
            arr = arr.astype("S1")
    if arr.dtype.kind != "S":
        raise FlytInputError(f"uids in {source} must be strings, got dtype {arr.dtype}")
    lengths = np.char.str_len(arr)
    bad = lengths != 32
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise FlytInputError(
            f"malformed uid {_describe(arr, i)} at row {i} of {source}: "
            f"a uid must be exactly 32 hex characters, this one has {int(lengths[i])}"
        )
    return np.ascontiguousarray(arr.astype("S32")).view(np.uint8).reshape(len(arr), 32)


def _describe(values: Any, i: int) -> str:
    v = values[i]
    if isinstance(v, np.ndarray):
        v = bytes(v)
    if isinstance(v, bytes):
        v = v.decode("ascii", "replace")
    return quote(str(v))


def check_uid_array(uids: Any, *, source: str) -> np.ndarray:
    """Check that ``uids`` is a 1-D array of exactly ``np.dtype("u8,u8")``."""
    if not isinstance(uids, np.ndarray) or uids.dtype != UID_DTYPE:
        dtype = getattr(uids, "dtype", type(uids).__name__)
        raise FlytInputError(f"{source}: expected uids of dtype {UID_DTYPE} (fields f0, f1), got {dtype}")
    if uids.ndim != 1:
        raise FlytInputError(f"{source}: expected a 1-D uid array, got shape {uids.shape}")
    return uids


# --------------------------------------------------------------------------- sorting


def uid_order(uids: np.ndarray) -> np.ndarray:
    """The permutation that sorts ``uids`` lexicographically on ``(f0, f1)``.

    Sorting a structured array directly is very slow (a generic comparison per pair). Instead we
    sort a plain uint64 key holding the top bits of ``f0`` above the row index (numpy's SIMD sort),
    which orders everything except rows that share those top bits; those rare groups (about
    n^2 / 2^(65 - log2 n) rows for random uids) are then put right with a small lexsort.
    The result is exact for any input, random or not.
    """
    uids = check_uid_array(uids, source="uid_order input")
    return split_order(uids["f0"], uids["f1"])


def split_order(f0: np.ndarray, f1: np.ndarray) -> np.ndarray:
    """:func:`uid_order` for uids given as their two halves (``uint64`` arrays of one length)."""
    n = len(f0)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    bits = int(n - 1).bit_length()
    shift = np.uint64(bits)
    mask = np.uint64((1 << bits) - 1)
    key = (f0 >> shift) << shift
    key |= np.arange(n, dtype=np.uint64)
    key.sort()
    order = (key & mask).astype(np.int64)
    key >>= shift  # now the top bits of f0, in sorted order
    same = key[1:] == key[:-1]
    del key
    if same.any():
        # rows in a group of equal top bits: fix their order with an exact lexsort per group
        in_group = np.zeros(n, dtype=bool)
        in_group[1:] |= same
        in_group[:-1] |= same
        pos = np.flatnonzero(in_group)
        group = np.cumsum(~np.concatenate(([False], same)))[pos]
        sub = order[pos]
        fix = np.lexsort((f1[sub], f0[sub], group))
        order[pos] = sub[fix]
    return order


def is_sorted(uids: np.ndarray) -> bool:
    """True when ``uids`` is sorted lexicographically on ``(f0, f1)`` (ties allowed)."""
    f0, f1 = uids["f0"], uids["f1"]
    ok = (f0[1:] > f0[:-1]) | ((f0[1:] == f0[:-1]) & (f1[1:] >= f1[:-1]))
    return bool(ok.all())


def first_duplicate(sorted_uids: np.ndarray) -> int | None:
    """Index of the first entry equal to its successor in a sorted uid array, or None."""
    f0, f1 = sorted_uids["f0"], sorted_uids["f1"]
    dup = (f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1])
    return int(np.flatnonzero(dup)[0]) if dup.any() else None


def uids_digest(uids: np.ndarray) -> str:
    """sha256 (hex) of ``u8,u8`` uids in their order, each as its high then low 64 bits, little-endian:
    two lists of uids have the same digest exactly when they hold the same uids in the same order."""
    uids = check_uid_array(uids, source="uids_digest input")
    records = np.empty(len(uids), dtype=np.dtype([("f0", "<u8"), ("f1", "<u8")]))
    records["f0"], records["f1"] = uids["f0"], uids["f1"]
    return hashlib.sha256(records.tobytes()).hexdigest()


def lookup(sorted_uids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Positions of ``query`` uids in the strictly sorted ``sorted_uids``; -1 where absent."""
    return split_lookup(sorted_uids["f0"], sorted_uids["f1"], query["f0"], query["f1"])


def split_lookup(f0s: np.ndarray, f1s: np.ndarray, q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """:func:`lookup` for uids given as their two halves (contiguous halves are searched in place;
    queries in increasing order are found fastest)."""
    n = len(f0s)
    pos = np.full(len(q0), -1, dtype=np.int64)
    if n == 0 or len(q0) == 0:
        return pos
    lo = np.searchsorted(f0s, q0, side="left")
    at = np.minimum(lo, n - 1)
    same = f0s[at] == q0  # a uid with this f0 is held ...
    run = same & (at + 1 < n)
    run[run] = f0s[at[run] + 1] == q0[run]  # ... and so is another: f0 shared, search f1 below
    single = same & ~run
    hit = single.copy()
    hit[single] = f1s[at[single]] == q1[single]
    pos[hit] = at[hit]
    for j in np.flatnonzero(run):  # rare (a 64-bit collision), so a loop is fine
        hi = int(np.searchsorted(f0s, q0[j], side="right"))
        k = lo[j] + np.searchsorted(f1s[lo[j]:hi], q1[j])
        if k < hi and f1s[k] == q1[j]:
            pos[j] = k
    return pos


class UidIndex:
    """Distinct uids, each with an optional integer (its payload), sorted in buckets by the top bits
    of their high half: about 16 bytes per uid plus the payload, and no copy of the whole set at any
    time, however many uids stream in.

    Uids are added in chunks (:meth:`add`), then :meth:`finish` sorts each bucket and reports the
    first uid added twice; after that :meth:`lookup` and :meth:`contains` answer chunks of queries,
    and :meth:`sorted_buckets` gives every uid in sorted order, bucket by bucket (the buckets
    partition the uids by their leading bits, so their concatenation is sorted).
    """

    def __init__(self, payload_dtype: Any = None, *, bits: int = 8, flush_rows: int = 1 << 22):
        self.payload_dtype = None if payload_dtype is None else np.dtype(payload_dtype)
        self.bits = bits
        self.shift = np.uint64(64 - bits)
        self.flush_rows = flush_rows
        self._pending: list[tuple[np.ndarray, np.ndarray | None]] = []
        self._pending_rows = 0
        self._pieces: list[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]] = [[] for _ in range(1 << bits)]
        self._buckets: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] | None = None
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def add(self, uids: np.ndarray, payload: Any = None) -> None:
        """Add ``uids`` (``u8,u8``) with their payloads (an array, or None without payloads)."""
        if self._buckets is not None:
            raise RuntimeError("UidIndex.add after finish")
        uids = check_uid_array(uids, source="UidIndex.add input")
        if (payload is None) != (self.payload_dtype is None):
            raise ValueError("payloads must be given exactly when the index has a payload dtype")
        if payload is not None:
            payload = np.asarray(payload).astype(self.payload_dtype, copy=False)
            if payload.shape != uids.shape:
                raise ValueError(f"payload shape {payload.shape} differs from the uids' {uids.shape}")
        if len(uids):
            self._pending.append((uids, payload))
            self._pending_rows += len(uids)
            self.size += len(uids)
        if self._pending_rows >= self.flush_rows:
            self._route()

    def _route(self) -> None:
        if not self._pending:
            return
        uids = np.concatenate([u for u, _ in self._pending]) if len(self._pending) > 1 else self._pending[0][0]
        payload = None
        if self.payload_dtype is not None:
            payload = np.concatenate([p for _, p in self._pending]) if len(self._pending) > 1 else self._pending[0][1]
        self._pending, self._pending_rows = [], 0
        f0 = np.ascontiguousarray(uids["f0"])
        bucket = (f0 >> self.shift).astype(np.intp)
        order = np.argsort(bucket, kind="stable")
        sizes = np.bincount(bucket, minlength=len(self._pieces))
        del bucket
        f0 = f0[order]
        f1 = np.ascontiguousarray(uids["f1"])[order]
        if payload is not None:
            payload = payload[order]
        del uids, order
        start = 0
        for b in np.flatnonzero(sizes):
            end = start + int(sizes[b])
            self._pieces[b].append((f0[start:end].copy(), f1[start:end].copy(),
                                    None if payload is None else payload[start:end].copy()))
            start = end

    def finish(self) -> tuple[np.ndarray, Any, Any] | None:
        """Sort every bucket; return the first uid added twice (``(uid, payload, payload)``, payloads
        None without them) in uid order, or None when the uids are distinct."""
        self._route()
        buckets = []
        first = None
        for b, pieces in enumerate(self._pieces):
            if not pieces:
                buckets.append(None)
                continue
            f0 = np.concatenate([p[0] for p in pieces])
            f1 = np.concatenate([p[1] for p in pieces])
            payload = None if self.payload_dtype is None else np.concatenate([p[2] for p in pieces])
            self._pieces[b] = []
            order = split_order(f0, f1)
            f0, f1 = f0[order], f1[order]
            if payload is not None:
                payload = payload[order]
            del order
            if first is None:
                dup = np.flatnonzero((f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1]))
                if dup.size:
                    i = int(dup[0])
                    uid = np.empty(1, dtype=UID_DTYPE)
                    uid["f0"], uid["f1"] = f0[i], f1[i]
                    first = (uid, None if payload is None else payload[i], None if payload is None else payload[i + 1])
            buckets.append((f0, f1, payload))
        self._buckets = buckets
        return first

    def sorted_buckets(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """``(f0, f1, payload)`` of each non-empty bucket, in uid order (after :meth:`finish`)."""
        for bucket in self._finished():
            if bucket is not None:
                yield bucket

    def bucket(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
        """``(f0, f1, payload)`` of bucket ``b`` (the uids whose leading ``bits`` bits are ``b``), sorted,
        or None when it is empty (after :meth:`finish`)."""
        return self._finished()[b]

    def _finished(self) -> list:
        if self._buckets is None:
            raise RuntimeError("UidIndex queried before finish")
        return self._buckets

    def _find(self, query: np.ndarray) -> tuple[np.ndarray, list[tuple[int, np.ndarray, np.ndarray]]]:
        """(found per query, [(bucket, query rows, positions in the bucket)] of the found ones). The
        queries are searched in sorted order, bucket by bucket (sorted queries search fastest)."""
        buckets = self._finished()
        query = check_uid_array(query, source="UidIndex query")
        q0 = np.ascontiguousarray(query["f0"])
        order = np.argsort(q0)
        s0, s1 = q0[order], np.ascontiguousarray(query["f1"])[order]
        edges = np.searchsorted(s0, np.arange(1, len(buckets), dtype=np.uint64) << self.shift)
        found = np.zeros(len(query), dtype=bool)
        hits = []
        for b, (start, end) in enumerate(zip(np.concatenate(([0], edges)), np.concatenate((edges, [len(s0)])))):
            if start == end or buckets[b] is None:
                continue
            f0, f1, _ = buckets[b]
            pos = split_lookup(f0, f1, s0[start:end], s1[start:end])
            ok = pos >= 0
            rows = order[start:end][ok]
            found[rows] = True
            hits.append((b, rows, pos[ok]))
        return found, hits

    def contains(self, query: np.ndarray) -> np.ndarray:
        """For each query uid, whether the index holds it."""
        return self._find(query)[0]

    def lookup(self, query: np.ndarray, missing: int = -1) -> np.ndarray:
        """Each query uid's payload, ``missing`` where the index does not hold it."""
        if self.payload_dtype is None:
            raise RuntimeError("UidIndex.lookup on an index without payloads")
        _, hits = self._find(query)
        out = np.full(len(query), missing, dtype=self.payload_dtype)
        buckets = self._finished()
        for b, rows, pos in hits:
            out[rows] = buckets[b][2][pos]
        return out


# --------------------------------------------------------------------------- subset files


def check_counts(counts: Any, rows: int | None = None) -> np.ndarray:
    """Repetition counts: a 1-D array of non-negative integers (``rows`` of them when given)."""
    counts = np.asarray(counts)
    if rows is not None and counts.shape != (rows,):
        raise FlytInputError(f"subset counts have shape {counts.shape} but uids have shape ({rows},)")
    if counts.dtype.kind not in "iu":
        raise FlytInputError(f"subset counts must be integers, got dtype {counts.dtype}")
    if len(counts) and counts.min() < 0:
        raise FlytInputError("subset counts must be non-negative")
    return counts


def selected_index(uids: np.ndarray | Iterable[np.ndarray], counts: np.ndarray, *, bits: int = 8) -> UidIndex:
    """The uids with a positive count, with their counts, in a :class:`UidIndex` (sorted, checked
    distinct). ``uids``: one array aligned with ``counts``, or consecutive chunks of it (the pool's
    uids shard by shard), so only the selected uids are ever held, once. ``bits``: the index's buckets
    (:class:`UidIndex`)."""
    if isinstance(uids, np.ndarray):
        uids = check_uid_array(uids, source="subset uids")
        counts = check_counts(counts, len(uids))
        chunks: Iterable[np.ndarray] = [uids]
    else:
        counts, chunks = check_counts(counts), uids
    index = UidIndex(counts.dtype if counts.dtype.kind == "i" else np.int64, bits=bits)
    start = 0
    for chunk in chunks:
        chunk = check_uid_array(chunk, source="subset uids")
        c = counts[start:start + len(chunk)]
        if len(c) != len(chunk):
            raise FlytInputError(f"subset counts have shape {counts.shape} but the uids have more rows")
        keep = np.flatnonzero(c > 0)
        index.add(chunk[keep], c[keep])
        start += len(chunk)
    if start != len(counts):
        raise FlytInputError(f"subset counts have shape {counts.shape} but uids have shape ({start},)")
    dup = index.finish()
    if dup is not None:
        raise FlytInputError(f"uid {uids_to_hex(dup[0])[0]} appears more than once in the subset input")
    return index


def distinct_sorted(uids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uids with a positive count, sorted, and their counts (uids must be distinct)."""
    parts = list(selected_index(uids, counts).sorted_buckets())
    kept = np.empty(sum(len(p[0]) for p in parts), dtype=UID_DTYPE)
    if parts:
        kept["f0"] = np.concatenate([p[0] for p in parts])
        kept["f1"] = np.concatenate([p[1] for p in parts])
    reps = np.concatenate([p[2] for p in parts]).astype(np.int64) if parts else np.zeros(0, np.int64)
    return kept, reps


def _save_subset(fh, index: UidIndex, entries: int, chunk: int = 1 << 20) -> str:
    """Write the sorted uids of ``index``, each repeated its count, to ``fh`` in ``np.save``'s exact
    format, a chunk of distinct uids at a time (memory stays bounded however many entries there
    are); return the file's sha256. Checks, on the way, that every uid is larger than the last."""
    h = hashlib.sha256()

    class _Hashing:
        def write(self, data):
            h.update(data)
            return fh.write(data)

    out = _Hashing()
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False, "shape": (int(entries),)}
    np.lib.format.write_array_header_1_0(out, header)
    last = None
    written = 0
    for f0, f1, reps in index.sorted_buckets():
        for a in range(0, len(f0), chunk):
            kept = np.empty(min(chunk, len(f0) - a), dtype=UID_DTYPE)
            kept["f0"], kept["f1"] = f0[a:a + chunk], f1[a:a + chunk]
            # cheap insurance: an unsorted file silently corrupts resharding
            if not is_sorted(kept) or (last is not None and (kept["f0"][0], kept["f1"][0]) <= last):
                raise RuntimeError("internal error: subset is not sorted")
            last = (kept["f0"][-1], kept["f1"][-1])
            block = np.repeat(kept, reps[a:a + chunk])
            written += len(block)
            out.write(block.tobytes())
    if written != entries:
        raise RuntimeError(f"internal error: wrote {written} subset entries, expected {entries}")
    return h.hexdigest()


def subset_stats(counts: np.ndarray) -> dict[str, Any]:
    """Distinct uids, total entries, max repetitions and the histogram of repetition counts."""
    return histogram_stats(repetition_counts(counts))


def repetition_counts(counts: np.ndarray) -> np.ndarray:
    """``h[k]``: how many examples have count ``k`` (``k >= 1``; ``h[0]`` is 0), summed over machines by
    adding (the shorter padded with zeros) and read by :func:`histogram_stats`."""
    counts = np.asarray(counts)
    return np.bincount(counts[counts > 0]) if counts.size and counts.max() > 0 else np.zeros(1, np.int64)


def histogram_stats(hist: np.ndarray) -> dict[str, Any]:
    """:func:`subset_stats` from the histogram of the counts (:func:`repetition_counts`)."""
    hist = np.trim_zeros(np.asarray(hist, dtype=np.int64), "b")
    if hist.size == 0:
        hist = np.zeros(1, np.int64)
    values = np.flatnonzero(hist[1:]) + 1
    return {
        "distinct_uids": int(hist[1:].sum()),
        "total_entries": int((hist * np.arange(len(hist))).sum()),
        "max_repetitions": int(len(hist) - 1),
        "repetition_histogram": {str(int(v)): int(hist[v]) for v in values},
    }


def subset_outputs(path: str | os.PathLike, *, histogram: bool = True) -> list:
    """The files a subset is written as: the ``.npy``, its ``.npy.json`` sidecar, its ``.png``."""
    if not str(path).endswith(".npy"):
        raise FlytInputError(f"subset output {path} must end in .npy")
    if is_url(path):
        files = [str(path), sidecar_path(path)]
        return files + [str(path)[: -len(".npy")] + ".png"] if histogram else files
    local = local_path(path)
    files = [local, sidecar_path(local)]
    return files + [local.with_suffix(".png")] if histogram else files


def subset_file_bytes(entries: int) -> int:
    """Size of a subset ``.npy`` holding ``entries`` uids (128-byte header + 16 bytes per entry)."""
    return 128 + UID_DTYPE.itemsize * int(entries)


def write_subset(
    path: str | os.PathLike,
    uids: np.ndarray | Iterable[np.ndarray],
    counts: np.ndarray,
    *,
    info: dict[str, Any] | None = None,
    overwrite: bool = True,
    histogram_title: str | None = None,
) -> dict[str, Any]:
    """Write a DataComp subset file and its JSON sidecar (and, with ``histogram_title``, the
    repetition histogram PNG) as one atomic output set; return the sidecar dict.

    ``uids`` are distinct ``u8,u8`` uids and ``counts`` their repetition counts (0 = left out);
    ``uids`` may also be an iterable of consecutive chunks of them (a pool's uids shard by shard),
    so that only the selected uids are held, once, bucket-sorted (:func:`selected_index`).
    ``info`` (sampler, parameters, seed, score source, ...) is recorded in the sidecar, together
    with the sha256 of the subset (and histogram) file, so a reader can check the set belongs
    together. ``path`` may be an fsspec URL. Without ``overwrite`` existing files are never replaced.
    """
    files = subset_outputs(path, histogram=histogram_title is not None)
    OutputSet(files, overwrite=overwrite).preflight()
    stats = subset_stats(check_counts(counts))
    # the index is handed over, not kept here: the writer frees it before drawing the histogram
    return write_sorted_subset(path, selected_index(uids, counts), stats, info=info, overwrite=overwrite,
                               histogram_title=histogram_title)


def write_sorted_subset(
    path: str | os.PathLike,
    index: Any,
    stats: dict[str, Any],
    *,
    info: dict[str, Any] | None = None,
    overwrite: bool = True,
    histogram_title: str | None = None,
) -> dict[str, Any]:
    """:func:`write_subset` from uids already sorted: ``index`` has ``sorted_buckets()`` giving
    ``(f0, f1, counts)`` pieces in increasing uid order (a :class:`UidIndex`, or pieces merged from
    several machines), ``stats`` is their :func:`subset_stats`. The pieces are written as they come, so
    the subset is never held whole; the writer checks their order and their total."""
    files = subset_outputs(path, histogram=histogram_title is not None)
    outputs = OutputSet(files, overwrite=overwrite)
    outputs.preflight()
    meta = provenance(output=str(path), **stats, **(info or {}))
    with outputs:
        with open(outputs.staged(files[0]), "wb") as fh:
            meta["files"] = {"subset_sha256": _save_subset(fh, index, stats["total_entries"])}
        del index
        release_freed_memory()
        if histogram_title is not None:
            from .plots import save_repetition_histogram

            meta["histogram"] = str(files[2])
            hist = {int(k): v for k, v in stats["repetition_histogram"].items()}
            save_repetition_histogram(hist, outputs.staged(files[2]), title=histogram_title)
            meta["files"]["histogram_sha256"] = file_sha256(outputs.staged(files[2]))
        outputs.staged(files[1]).write_text(dumps(meta))
    return meta


def read_subset(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Read a subset file (``.npy`` or DataComp's raw headerless form) as (unique uids, counts)."""
    path = local_path(path, "subset file")
    if not path.is_file():
        raise FlytInputError(f"subset file {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(len(_NPY_MAGIC))
    if head == _NPY_MAGIC:
        try:
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise FlytInputError(f"subset file {path} is not a readable .npy file: {exc}") from None
        if arr.dtype != UID_DTYPE:
            raise FlytInputError(
                f"subset file {path} has dtype {arr.dtype}; DataComp needs exactly {UID_DTYPE} "
                "(fields f0, f1)"
            )
        if arr.ndim != 1:
            raise FlytInputError(f"subset file {path} must be 1-D, got shape {arr.shape}")
    else:
        size = path.stat().st_size
        if size % UID_DTYPE.itemsize:
            raise FlytInputError(
                f"subset file {path} is neither a .npy file nor a raw array of {UID_DTYPE} records "
                f"({size} bytes is not a multiple of {UID_DTYPE.itemsize})"
            )
        arr = np.fromfile(path, dtype=UID_DTYPE)
    arr = np.asarray(arr)
    if not is_sorted(arr):
        f0, f1 = arr["f0"], arr["f1"]
        bad = ~((f0[1:] > f0[:-1]) | ((f0[1:] == f0[:-1]) & (f1[1:] >= f1[:-1])))
        i = int(np.flatnonzero(bad)[0])
        raise FlytInputError(
            f"subset file {path} is not sorted (entry {i + 1} is smaller than entry {i}); "
            "DataComp's resharder would silently produce a wrong dataset"
        )
    if len(arr) == 0:
        return arr.copy(), np.zeros(0, dtype=np.int64)
    new = np.ones(len(arr), dtype=bool)
    new[1:] = (arr["f0"][1:] != arr["f0"][:-1]) | (arr["f1"][1:] != arr["f1"][:-1])
    starts = np.flatnonzero(new)
    counts = np.diff(np.append(starts, len(arr)))
    return arr[starts].copy(), counts.astype(np.int64)


def random_uids(n: int, seed: int) -> np.ndarray:
    """``n`` distinct random uids (for tests, benchmarks and the demo pool)."""
    rng = np.random.default_rng(seed)
    out = np.empty(n, dtype=UID_DTYPE)
    out["f0"] = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    out["f1"] = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    return out
