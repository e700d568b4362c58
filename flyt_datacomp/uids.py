"""DataComp uids: hex <-> ``(u8, u8)`` codec, sorting, and subset files with repetitions.

A DataComp uid is 32 hex characters (128 bits). Subset files store it as a structured numpy record
of dtype exactly ``np.dtype("u8,u8")`` (fields ``f0``, ``f1``: the high and low 64 bits), in a
sorted 1-D array where a uid repeated k times asks the resharder for k copies.

Everything here is vectorised: no Python loop runs per uid.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np

from .errors import FlytInputError, quote
from .io import OutputSet, dumps, file_sha256, is_url, local_path, provenance, sidecar_path

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
    n = len(uids)
    if n < 2:
        return np.arange(n, dtype=np.int64)
    f0 = uids["f0"]
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
        fix = np.lexsort((uids["f1"][sub], f0[sub], group))
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
    f0s, f1s = sorted_uids["f0"], sorted_uids["f1"]
    lo = np.searchsorted(f0s, query["f0"], side="left")
    hi = np.searchsorted(f0s, query["f0"], side="right")
    pos = np.full(len(query), -1, dtype=np.int64)
    single = hi - lo == 1
    hit = single.copy()
    hit[single] = f1s[lo[single]] == query["f1"][single]
    pos[hit] = lo[hit]
    multi = np.flatnonzero(hi - lo > 1)  # f0 shared by several uids: search f1 within the run
    for j in multi:  # rare (a 64-bit collision), so a loop is fine
        k = lo[j] + np.searchsorted(f1s[lo[j]:hi[j]], query["f1"][j])
        if k < hi[j] and f1s[k] == query["f1"][j]:
            pos[j] = k
    return pos


# --------------------------------------------------------------------------- subset files


def distinct_sorted(uids: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uids with a positive count, sorted, and their counts (uids must be distinct)."""
    uids = check_uid_array(uids, source="subset uids")
    counts = np.asarray(counts)
    if counts.shape != uids.shape:
        raise FlytInputError(f"subset counts have shape {counts.shape} but uids have shape {uids.shape}")
    if counts.dtype.kind not in "iu":
        raise FlytInputError(f"subset counts must be integers, got dtype {counts.dtype}")
    if len(counts) and counts.min() < 0:
        raise FlytInputError("subset counts must be non-negative")
    keep = np.flatnonzero(counts > 0)
    kept = uids[keep]
    order = uid_order(kept)
    kept = kept[order]
    i = first_duplicate(kept)
    if i is not None:
        raise FlytInputError(f"uid {uids_to_hex(kept[i:i + 1])[0]} appears more than once in the subset input")
    return kept, counts[keep][order].astype(np.int64)


def _save_subset(fh, kept: np.ndarray, reps: np.ndarray, chunk: int = 1 << 20) -> str:
    """Write ``np.repeat(kept, reps)`` to ``fh`` in ``np.save``'s exact format, a chunk of distinct
    uids at a time (memory stays bounded however many entries there are); return its sha256."""
    import hashlib

    h = hashlib.sha256()

    class _Hashing:
        def write(self, data):
            h.update(data)
            return fh.write(data)

    out = _Hashing()
    header = {"descr": np.lib.format.dtype_to_descr(UID_DTYPE), "fortran_order": False,
              "shape": (int(reps.sum()),)}
    np.lib.format.write_array_header_1_0(out, header)
    for a in range(0, len(kept), chunk):
        out.write(np.repeat(kept[a:a + chunk], reps[a:a + chunk]).tobytes())
    return h.hexdigest()


def subset_stats(counts: np.ndarray) -> dict[str, Any]:
    """Distinct uids, total entries, max repetitions and the histogram of repetition counts."""
    counts = np.asarray(counts)
    hist = np.bincount(counts[counts > 0]) if counts.size and counts.max() > 0 else np.zeros(1, np.int64)
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
    uids: np.ndarray,
    counts: np.ndarray,
    *,
    info: dict[str, Any] | None = None,
    overwrite: bool = True,
    histogram_title: str | None = None,
) -> dict[str, Any]:
    """Write a DataComp subset file and its JSON sidecar (and, with ``histogram_title``, the
    repetition histogram PNG) as one atomic output set; return the sidecar dict.

    ``uids`` are distinct ``u8,u8`` uids and ``counts`` their repetition counts (0 = left out).
    ``info`` (sampler, parameters, seed, score source, ...) is recorded in the sidecar, together
    with the sha256 of the subset (and histogram) file, so a reader can check the set belongs
    together. ``path`` may be an fsspec URL. Without ``overwrite`` existing files are never replaced.
    """
    files = subset_outputs(path, histogram=histogram_title is not None)
    outputs = OutputSet(files, overwrite=overwrite)
    outputs.preflight()
    kept, reps = distinct_sorted(uids, counts)
    if not is_sorted(kept):  # cheap insurance: an unsorted file silently corrupts resharding
        raise RuntimeError("internal error: subset is not sorted")
    meta = provenance(output=str(path), **subset_stats(counts), **(info or {}))
    with outputs:
        with open(outputs.staged(files[0]), "wb") as fh:
            meta["files"] = {"subset_sha256": _save_subset(fh, kept, reps)}
        if histogram_title is not None:
            from .plots import save_repetition_histogram

            meta["histogram"] = str(files[2])
            save_repetition_histogram(counts, outputs.staged(files[2]), title=histogram_title)
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
