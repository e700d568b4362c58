"""Which uids have an image in a folder of img2dataset shards, and how large the samples are.

img2dataset writes ``{:08d}.tar`` shards, each with a ``{:08d}.parquet`` listing every url it tried
(``status == "success"`` for the ones written to the tar; DataComp's download keeps the ``uid``
column) and a ``{:08d}_stats.json``. A tar holds one sample per downloaded image, keyed by
position, whose ``.json`` member carries the ``uid``. This module reads that index from the
parquet files where they have ``uid`` and ``status`` columns and from the tars' ``.json`` members
otherwise. Only a fraction of a pool downloads, so callers use it to tell which subset or pool
entries can appear in training data at all.

The folder may be any fsspec URL. Shards are read concurrently (I/O bound) with a progress bar.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import posixpath
import tarfile
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np

from .arrow_io import open_parquet
from .errors import FlytInputError
from .parallel import thread_map
from .process import release_freed_memory
from .progress import progress_bar
from .tars import iter_tar, where
from .uids import UID_DTYPE, UidIndex, hex_to_uids, lookup, uid_order, uids_to_hex


@dataclasses.dataclass(frozen=True)
class ShardInfo:
    """One image shard: its tar's name and size, its image count and where the uids came from."""

    name: str
    tar_bytes: int
    num_images: int
    source: str  # "parquet" or "tar"


@dataclasses.dataclass(frozen=True)
class ShardIndex:
    """The images of a shards folder: one uid per image, in shard order (a uid may repeat)."""

    root: str
    shards: tuple[ShardInfo, ...]
    uids: np.ndarray

    @property
    def num_images(self) -> int:
        return len(self.uids)

    @property
    def total_bytes(self) -> int:
        return sum(s.tar_bytes for s in self.shards)

    @property
    def mean_sample_bytes(self) -> float:
        """Mean tar bytes per sample (payload plus tar headers), 0 for an empty folder."""
        return self.total_bytes / self.num_images if self.num_images else 0.0

    def image_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted distinct uids and how many images each has (more than 1 only for duplicates)."""
        ordered = self.uids[uid_order(self.uids)]
        if len(ordered) == 0:
            return ordered, np.zeros(0, dtype=np.int64)
        new = np.ones(len(ordered), dtype=bool)
        new[1:] = (ordered["f0"][1:] != ordered["f0"][:-1]) | (ordered["f1"][1:] != ordered["f1"][:-1])
        starts = np.flatnonzero(new)
        return ordered[starts], np.diff(np.append(starts, len(ordered))).astype(np.int64)

    def images_of(self, query: np.ndarray) -> np.ndarray:
        """For each uid of ``query``, how many images of it the folder holds (0 = not downloaded)."""
        distinct, counts = self.image_counts()
        pos = lookup(distinct, query)
        out = np.zeros(len(query), dtype=np.int64)
        out[pos >= 0] = counts[pos[pos >= 0]]
        return out


def open_folder(root: str | os.PathLike) -> tuple[Any, str]:
    """The fsspec filesystem and path of a folder URL; a clear error when it is not a folder."""
    root = str(root)
    try:
        fs, path = fsspec.core.url_to_fs(root)
        is_dir = fs.isdir(path)
    except (ImportError, ValueError, OSError) as exc:
        raise FlytInputError(f"cannot open shards folder {root}: {exc}") from None
    if not is_dir:
        raise FlytInputError(f"shards folder {root} does not exist or is not a folder")
    return fs, path.rstrip("/")


def list_tars(fs: Any, path: str) -> list[str]:
    """Names of the ``.tar`` files directly inside ``path``, sorted."""
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    return sorted(n for n in names if n.endswith(".tar"))


def _uids_from_parquet(fs: Any, path: str) -> list[str] | None:
    """Successful downloads' uids from an img2dataset parquet, or None when it cannot tell."""
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as fh:
        pf = open_parquet(fh)
        if not {"uid", "status"} <= set(pf.schema_arrow.names):
            return None
        table = pf.read(columns=["uid", "status"], use_threads=False)
    uid = table.column("uid").to_pylist()
    status = table.column("status").to_pylist()
    return [u for u, s in zip(uid, status) if s == "success"]


def _uids_from_tar(fs: Any, path: str) -> list[str]:
    """The ``uid`` of every sample's ``.json`` member, in tar order (what DataComp's resharder reads)."""
    out = []
    for sample in iter_tar(path, extensions=("json",), fs=fs):
        if "json" not in sample:
            continue
        try:
            uid = json.loads(sample["json"]).get("uid")
        except (ValueError, AttributeError) as exc:
            raise FlytInputError(f"{path}: {where(sample)} has a .json member that is not a JSON object: {exc}") from None
        if not isinstance(uid, str):
            raise FlytInputError(f"{path}: {where(sample)} has no uid in its .json member")
        out.append(uid)
    return out


def _read_shard(fs: Any, folder: str, name: str) -> tuple[ShardInfo, np.ndarray]:
    tar_path = f"{folder}/{name}"
    stem = name[: -len(".tar")]
    try:
        hexes = _uids_from_parquet(fs, f"{folder}/{stem}.parquet")
        source = "parquet"
        if hexes is None:
            hexes, source = _uids_from_tar(fs, tar_path), "tar"
        size = int(fs.size(tar_path))
    except (OSError, tarfile.TarError, ValueError) as exc:  # pyarrow's errors derive from these
        raise FlytInputError(f"cannot read shard {tar_path}: {exc}") from None
    uids = hex_to_uids(np.asarray(hexes, dtype=object), source=f"{tar_path} ({source})") if hexes \
        else np.zeros(0, dtype=UID_DTYPE)
    return ShardInfo(name, size, len(uids), source), uids


def check_folder(root: str | os.PathLike) -> tuple[Any, str, list[str]]:
    """(filesystem, folder, tar names) of a shards folder; an error when it is not a folder or
    holds no ``.tar`` shards (a listing: seconds, whatever the download's size)."""
    fs, folder = open_folder(root)
    names = list_tars(fs, folder)
    if not names:
        raise FlytInputError(f"shards folder {root} holds no .tar shards")
    return fs, folder, names


def _each_tar(root, read, desc: str, progress: bool, threads: int) -> Iterator:
    """``read(fs, folder, name)`` for every tar of a shards folder, in name order, on ``threads``
    threads, yielded as they come (a few shards ahead, so nothing folder-sized is held)."""
    fs, folder, names = check_folder(root)
    with progress_bar(total=len(names), desc=desc, unit="shard", disable=not progress) as bar:
        for result in thread_map(lambda n: read(fs, folder, n), names, threads):
            bar.update(1)
            yield result


def index_shards(root: str | os.PathLike, *, progress: bool = True, threads: int = 8) -> ShardIndex:
    """Read which uid each image of a shards folder belongs to (see the module docstring)."""
    results = list(_each_tar(root, _read_shard, "indexing shards", progress, threads))
    infos = tuple(r[0] for r in results)
    uids = np.concatenate([r[1] for r in results]) if results else np.zeros(0, dtype=UID_DTYPE)
    return ShardIndex(str(root), infos, uids)


def iter_downloads(root: str | os.PathLike, *, progress: bool = True, threads: int = 8,
                   desc: str = "reading shard keys") -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Each shard's successful downloads, in shard order: their webdataset keys (int64) and uids
    (``u8,u8``), from img2dataset's per-shard parquet files (``key``, ``uid``, ``status``), or from
    the tars (member names and their ``.json``'s uid) where those lack the columns. Keys are how a
    dataset made from these shards (the FLYT authors' input scores) names examples."""
    yield from _each_tar(root, _keys_of, desc, progress, threads)


def content_digest(root: str | os.PathLike, *, progress: bool = True, threads: int = 4) -> str:
    """A sha256 over what the key join reads of a shards folder: each shard's ``.parquet`` (its name,
    size and content), and its ``.tar`` where the parquet is missing or lacks ``key``, ``uid`` and
    ``status``; the same folder content gives the same digest wherever the folder is."""
    import hashlib

    import pyarrow as pa

    def digest(fs: Any, folder: str, name: str) -> str:
        stem = name[: -len(".tar")]
        parts = []
        try:
            parquet = f"{folder}/{stem}.parquet"
            tar_needed = True
            if fs.exists(parquet):
                with fs.open(parquet, "rb") as fh:
                    data = fh.read()
                parts.append(f"{stem}.parquet:{len(data)}:{hashlib.sha256(data).hexdigest()}")
                with contextlib.suppress(Exception):
                    names = open_parquet(pa.BufferReader(data)).schema_arrow.names
                    tar_needed = not {"key", "uid", "status"} <= set(names)
            if tar_needed:
                h = hashlib.sha256()
                size = 0
                with fs.open(f"{folder}/{name}", "rb") as fh:
                    while block := fh.read(1 << 22):
                        h.update(block)
                        size += len(block)
                parts.append(f"{name}:{size}:{h.hexdigest()}")
        except OSError as exc:
            raise FlytInputError(f"cannot read shard {folder}/{name}: {exc}") from None
        return "\n".join(parts)

    total = hashlib.sha256()
    for part in _each_tar(root, digest, "hashing shard index files", progress, threads):
        total.update(part.encode() + b"\n")
    return total.hexdigest()


def downloaded_mask(root: str | os.PathLike, pool: Any, *, progress: bool = True) -> np.ndarray:
    """For each pool example, whether its uid has an image in the shards folder. One pass over the
    shards builds a sorted index of the downloaded uids (16 bytes each), one pass over the pool's uid
    columns looks each shard's uids up in it."""
    index = UidIndex()
    for _, uids in iter_downloads(root, progress=progress, desc="indexing shards"):
        index.add(uids)
    index.finish()  # a uid with two images is an image all the same
    mask = np.zeros(pool.size, dtype=bool)
    for uids, shard in zip(pool.uid_chunks(desc="finding the downloaded uids"), pool.shards):
        mask[shard.offset:shard.offset + shard.num_rows] = index.contains(uids)
    del index
    release_freed_memory()
    return mask


def join_keys(root: str | os.PathLike, pool: Any, scratch: str | os.PathLike, *,
              progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The download's webdataset keys joined to the pool: every successful download's key (int64,
    sorted) and the pool position of its uid (aligned; -1 for a uid the pool does not hold).

    Compact and streaming: one pass over the shards indexes their uids with each row's place in the
    download (20 bytes a row) and writes the keys, in that order, to a file in ``scratch``; one pass
    over the pool's uid columns finds each pool uid's row; then the keys are read back. A key that
    names two samples, or a uid the pool holds twice, is an error."""
    pos_dtype = np.int32 if pool.size < 2**31 - 1 else np.int64
    index = UidIndex(pos_dtype)
    scratch_file = os.path.join(os.fspath(scratch), f"keys-{os.getpid()}.bin")
    rows = 0
    try:
        with open(scratch_file, "wb") as fh:
            for keys, uids in iter_downloads(root, progress=progress):
                if rows + len(keys) >= np.iinfo(pos_dtype).max:
                    raise FlytInputError(f"the shards at {root} hold more samples than the pool at {pool.url} has rows")
                index.add(uids, np.arange(rows, rows + len(keys), dtype=pos_dtype))
                keys.astype("<i8", copy=False).tofile(fh)
                rows += len(keys)
        twice = index.finish() is not None  # a uid downloaded twice: each of its rows finds the pool example below
        at = np.full(rows, -1, dtype=pos_dtype)
        for uids, shard in zip(pool.uid_chunks(desc="joining the pool's uids"), pool.shards):
            row = index.lookup(uids)
            hit = np.flatnonzero(row >= 0)
            taken = np.flatnonzero(at[row[hit]] >= 0)
            if taken.size:
                i = int(hit[taken[0]])
                raise FlytInputError(f"uid {uids_to_hex(uids[i:i + 1])[0]} appears more than once in the pool "
                                     f"({pool.locate(int(at[row[i]]))} and {pool.locate(shard.offset + i)})")
            at[row[hit]] = shard.offset + hit
        if twice:  # a lookup finds one row of a repeated uid: its other rows get the same pool example
            for same, rows_of in _repeats(index):
                for i in np.concatenate([same, same[::-1]]):
                    a, b = rows_of[i], rows_of[i + 1]
                    at[a] = at[b] = max(at[a], at[b])
        del index
        release_freed_memory()  # the index's buckets, before the keys come back
        keys = np.fromfile(scratch_file, dtype="<i8").astype(np.int64, copy=False)
    finally:
        with contextlib.suppress(OSError):
            os.remove(scratch_file)
    if len(keys) > 1 and not bool((keys[1:] > keys[:-1]).all()):  # shards not in key order: sort
        order = np.argsort(keys, kind="stable")
        keys, at = keys[order], at[order]
        del order
    same = np.flatnonzero(keys[1:] == keys[:-1]) if len(keys) > 1 else np.zeros(0, np.int64)
    if same.size:
        raise FlytInputError(f"key {int(keys[same[0]])} names two samples in the shards at {root}")
    return keys, at


def _repeats(index: UidIndex) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """For each bucket of a finished index with a uid added twice: (the sorted places i whose uid is
    that of place i + 1, the payloads in sorted order)."""
    for f0, f1, payload in index.sorted_buckets():
        same = np.flatnonzero((f0[1:] == f0[:-1]) & (f1[1:] == f1[:-1]))
        if same.size:
            yield same, payload


def _keys_of(fs: Any, folder: str, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One shard's (keys, uids) of its successful downloads."""
    stem = name[: -len(".tar")]
    parquet = f"{folder}/{stem}.parquet"
    try:
        if fs.exists(parquet):
            with fs.open(parquet, "rb") as fh:
                pf = open_parquet(fh)
                if {"key", "uid", "status"} <= set(pf.schema_arrow.names):
                    table = pf.read(columns=["key", "uid", "status"], use_threads=False)
                    import pyarrow.compute as pc

                    table = table.filter(pc.equal(table.column("status"), "success"))
                    if table.num_rows == 0:
                        return np.zeros(0, np.int64), np.zeros(0, dtype=UID_DTYPE)
                    from .pool import uid_column

                    return webdataset_keys(table.column("key"), parquet), uid_column(table.column("uid"), parquet)
        keys, uids = [], []
        for sample in iter_tar(f"{folder}/{name}", extensions=("json",), fs=fs):
            if "json" not in sample:
                continue
            uid = json.loads(sample["json"]).get("uid")
            if not isinstance(uid, str):
                raise FlytInputError(f"{folder}/{name}: {where(sample)} has no uid in its .json member")
            keys.append(posixpath.basename(sample["__key__"]))
            uids.append(uid)
    except (OSError, ValueError, tarfile.TarError) as exc:
        raise FlytInputError(f"cannot read shard {folder}/{name}: {exc}") from None
    return (webdataset_keys(keys, f"{folder}/{name}"),
            hex_to_uids(np.asarray(uids, dtype=object), source=f"{folder}/{name}") if uids else np.zeros(0, dtype=UID_DTYPE))


def webdataset_keys(values: Any, source: str) -> np.ndarray:
    """Webdataset keys (strings of digits, as img2dataset writes them) as int64, vectorised; a
    malformed one is an error naming it. ``values``: a list or a pyarrow string array."""
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else pa.array(values, type=pa.string()) \
        if not isinstance(values, pa.Array) else values
    if len(arr) == 0:
        return np.zeros(0, dtype=np.int64)
    if not pa.types.is_string(arr.type) and not pa.types.is_large_string(arr.type):
        raise FlytInputError(f"the keys of {source} are {arr.type}, not strings of digits")
    good = pc.fill_null(pc.match_substring_regex(arr, r"^[0-9]{1,18}$"), False).to_numpy(zero_copy_only=False)
    if not good.all():
        i = int(np.flatnonzero(~good)[0])
        raise FlytInputError(f"malformed key {arr[i].as_py()!r} at row {i} of {source}: a webdataset key is a string "
                             "of digits (img2dataset's shard number and index)")
    return pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False)
