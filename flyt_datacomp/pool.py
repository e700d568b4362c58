"""Reading a DataComp pool's metadata: parquet + npz pairs in a folder at any fsspec URL.

The pool is the concatenation of its metadata shards in a stable (sorted by file name) order;
every later step (scores, training joins, sampling) addresses an example by its position in
that order. Only the parquet columns and npz keys that a caller asks for are read, one shard at a
time. Embeddings are returned as stored (float16); converting them is the consumer's choice.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import posixpath
import sys
import threading
import zipfile
from collections.abc import Iterator, Sequence
from functools import cached_property

import fsspec
import numpy as np

from .arrow_io import open_parquet
from .errors import FlytInputError
from .parallel import thread_map
from .progress import progress_bar
from .uids import first_duplicate, hex_to_uids, uid_order, uids_digest, uids_to_hex

# numpy parses every .npy header with ast.literal_eval. In threaded programs CPython's AST constructor can
# fail with a spurious "AST constructor recursion depth mismatch" (CPython gh-106905; seen here on 3.11.7
# while the pool read npz files on several threads). Its fix went into CPython's 3.12 and newer branches;
# to be safe the pool's threads take turns parsing headers below 3.13.
NPY_HEADERS = threading.Lock() if sys.version_info < (3, 13) else contextlib.nullcontext()


@dataclasses.dataclass(frozen=True)
class MetadataShard:
    """One parquet/npz pair: its URLs, row count and first row's pool position."""

    index: int
    parquet: str
    npz: str | None
    num_rows: int
    offset: int


@dataclasses.dataclass
class ShardData:
    """What :meth:`Pool.iter_shards` yields: requested columns and npz arrays of one shard."""

    shard: MetadataShard
    columns: dict[str, np.ndarray]
    arrays: dict[str, np.ndarray]


class Pool:
    """A DataComp metadata folder (local path or fsspec URL such as ``s3://bucket/metadata``)."""

    whole_shards: list[MetadataShard] | None = None  # a part of a pool (:meth:`part`): the shards of the whole

    def __init__(self, metadata_dir: str, *, progress: bool = True, workers: int = 1):
        self.url = str(metadata_dir)
        self.progress = progress
        if workers < 1:
            raise FlytInputError(f"`workers` must be at least 1, got {workers}", params=["workers"])
        self.workers = workers
        try:
            self.fs, self.root = fsspec.core.url_to_fs(self.url)
        except (ImportError, ValueError) as exc:
            raise FlytInputError(f"cannot open metadata folder {self.url}: {exc}") from None
        self.shards = self._discover()

    def __getstate__(self) -> dict:
        """Pickled (to send to worker processes) without the cached whole-pool arrays."""
        state = dict(self.__dict__)
        for cached in ("_uid_index", "column_names"):
            state.pop(cached, None)
        return state

    def part(self, indices: Sequence[int]) -> Pool:
        """A pool of the given shards only, its positions starting at 0: what one worker of a
        pool too large for one machine reads, one shard at a time (a worker has about one CPU, and
        reading four shards at once took a medium partition's worker from 0.5 to 1.1 GB). Its
        :attr:`whole_shards` are this pool's, against which an input store checks the part."""
        part = copy.copy(self)
        part.__dict__ = {k: v for k, v in self.__getstate__().items() if k != "shard_uid_digests"}
        part.progress, part.workers = False, 1
        part.whole_shards = self.whole_shards or self.shards
        offset, chosen = 0, []
        for i, index in enumerate(indices):
            shard = self.shards[index]
            chosen.append(MetadataShard(i, shard.parquet, shard.npz, shard.num_rows, offset))
            offset += shard.num_rows
        part.shards = chosen
        return part

    # ------------------------------------------------------------------ discovery

    def _discover(self) -> list[MetadataShard]:
        if not self.fs.isdir(self.root):
            raise FlytInputError(f"metadata folder {self.url} does not exist or is not a folder")
        names = sorted(posixpath.basename(p.rstrip("/")) for p in self.fs.ls(self.root, detail=False))
        stems = [n[: -len(".parquet")] for n in names if n.endswith(".parquet")]
        if not stems:
            raise FlytInputError(f"metadata folder {self.url} holds no .parquet files")
        present = set(names)

        def inspect(stem: str) -> tuple[str, str | None, int]:
            parquet = self._join(stem + ".parquet")
            npz = self._join(stem + ".npz") if stem + ".npz" in present else None
            try:
                with self.fs.open(parquet, "rb") as fh:
                    pf = open_parquet(fh)
                    rows = pf.metadata.num_rows
                    schema_names = pf.schema_arrow.names
            except Exception as exc:  # pyarrow raises several types for a bad file
                raise FlytInputError(f"cannot read parquet file {parquet}: {exc}") from None
            if "uid" not in schema_names:
                raise FlytInputError(f"parquet file {parquet} has no 'uid' column (columns: {schema_names})")
            if npz is not None:
                self._check_npz_rows(npz, parquet, rows)
            return parquet, npz, rows

        shards, offset = [], 0
        for i, (parquet, npz, rows) in enumerate(thread_map(inspect, stems, self.workers)):
            shards.append(MetadataShard(i, parquet, npz, rows, offset))
            offset += rows
        return shards

    def _check_npz_rows(self, npz: str, parquet: str, rows: int) -> None:
        """Compare every npz array's row count with the parquet's, reading only array headers."""
        try:
            with self.fs.open(npz, "rb") as fh, zipfile.ZipFile(fh) as zf:
                for name in zf.namelist():
                    with zf.open(name) as member:
                        major, _ = np.lib.format.read_magic(member)
                        read_header = (
                            np.lib.format.read_array_header_1_0 if major == 1
                            else np.lib.format.read_array_header_2_0
                        )
                        with NPY_HEADERS:
                            shape = read_header(member)[0]
                    if not shape or shape[0] != rows:
                        key = name.removesuffix(".npy")
                        raise FlytInputError(
                            f"npz file {npz} key {key!r} has {shape[0] if shape else 0} rows but "
                            f"{parquet} has {rows}: the pair is misaligned"
                        )
        except FlytInputError:
            raise
        except Exception as exc:
            raise FlytInputError(f"cannot read npz file {npz}: {exc}") from None

    def _join(self, name: str) -> str:
        path = posixpath.join(self.root, name)
        protocol = self.fs.protocol if isinstance(self.fs.protocol, str) else self.fs.protocol[0]
        return path if protocol in ("file", "local") else f"{protocol}://{path}"

    # ------------------------------------------------------------------ sizes and schema

    @property
    def size(self) -> int:
        return sum(s.num_rows for s in self.shards)

    def __len__(self) -> int:
        return self.size

    @cached_property
    def column_names(self) -> list[str]:
        with self.fs.open(self.shards[0].parquet, "rb") as fh:
            return list(open_parquet(fh).schema_arrow.names)

    # ------------------------------------------------------------------ reading

    def iter_shards(
        self,
        columns: Sequence[str] = (),
        npz_keys: Sequence[str] = (),
        *,
        desc: str = "reading metadata",
        no_missing: Sequence[str] = (),
    ) -> Iterator[ShardData]:
        """Yield each shard's requested parquet columns (numpy) and npz arrays, in pool order.

        A null in one of the ``no_missing`` columns is an input error naming its file and row.
        """
        columns, npz_keys = list(columns), list(npz_keys)

        def read(shard: MetadataShard) -> ShardData:
            return self.read_shard(shard, columns, npz_keys, no_missing=no_missing)

        bar = progress_bar(total=len(self.shards), desc=desc, unit="shard", disable=not self.progress)
        with bar:
            for data in thread_map(read, self.shards, self.workers):
                bar.update(1)
                yield data

    def read_shard(self, shard: MetadataShard, columns: Sequence[str] = (), npz_keys: Sequence[str] = (), *,
                   no_missing: Sequence[str] = ()) -> ShardData:
        """One shard's requested parquet columns and npz arrays."""
        cols = self._read_columns(shard, list(columns), no_missing) if columns else {}
        arrays = self._read_npz(shard, list(npz_keys)) if npz_keys else {}
        return ShardData(shard, cols, arrays)

    def _read_columns(self, shard: MetadataShard, columns: list[str], no_missing: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """The columns of one shard, decoded in this thread (see :mod:`flyt_datacomp.arrow_io`); shards are
        read in parallel by :func:`~flyt_datacomp.parallel.thread_map`."""
        try:
            with self.fs.open(shard.parquet, "rb") as fh:
                pf = open_parquet(fh)
                missing = [c for c in columns if c not in pf.schema_arrow.names]
                if missing:
                    raise FlytInputError(
                        f"parquet file {shard.parquet} has no column {missing[0]!r} "
                        f"(columns: {pf.schema_arrow.names})"
                    )
                table = pf.read(columns=columns, use_threads=False)
        except FlytInputError:
            raise
        except Exception as exc:
            raise FlytInputError(f"cannot read parquet file {shard.parquet}: {exc}") from None
        if table.num_rows != shard.num_rows:
            raise FlytInputError(f"parquet file {shard.parquet} changed while reading")
        out = {}
        for name in columns:
            col = table.column(name)
            if name in no_missing and col.null_count:
                first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise FlytInputError(
                    f"column {name!r} has {col.null_count} missing values (nulls) in {shard.parquet}; "
                    f"the first is at row {first}"
                )
            if name == "uid":
                out[name] = uid_column(col, shard.parquet)
            else:
                out[name] = col.to_numpy()
        return out

    def _read_npz(self, shard: MetadataShard, keys: list[str]) -> dict[str, np.ndarray]:
        if shard.npz is None:
            raise FlytInputError(f"parquet file {shard.parquet} has no matching .npz file beside it")
        try:
            with self.fs.open(shard.npz, "rb") as fh, np.load(fh, allow_pickle=False) as npz:
                missing = [k for k in keys if k not in npz.files]
                if missing:
                    raise FlytInputError(f"npz file {shard.npz} has no key {missing[0]!r} (keys: {npz.files})")
                with NPY_HEADERS:  # an array's header and data are read together
                    arrays = {k: npz[k] for k in keys}
        except FlytInputError:
            raise
        except Exception as exc:
            raise FlytInputError(f"cannot read npz file {shard.npz}: {exc}") from None
        for k, a in arrays.items():
            if len(a) != shard.num_rows:
                raise FlytInputError(
                    f"npz file {shard.npz} key {k!r} has {len(a)} rows but {shard.parquet} has "
                    f"{shard.num_rows}: the pair is misaligned"
                )
        return arrays

    # ------------------------------------------------------------------ whole-pool views

    @cached_property
    def _uid_index(self) -> tuple[np.ndarray, np.ndarray]:
        """(uids in pool order, the permutation that sorts them), checked for duplicates."""
        uids = np.concatenate([d.columns["uid"] for d in self.iter_shards(["uid"], desc="reading uids")])
        order = uid_order(uids)
        s = uids[order]
        i = first_duplicate(s)
        if i is not None:
            where = [self.locate(int(p)) for p in np.sort(order[i:i + 2])]
            raise FlytInputError(
                f"uid {uids_to_hex(s[i:i + 1])[0]} appears more than once in the pool "
                f"({where[0]} and {where[1]})"
            )
        return uids, order

    @cached_property
    def shard_uid_digests(self) -> list[str]:
        """Per shard, in pool order, the digest of its uids in row order
        (:func:`~flyt_datacomp.uids.uids_digest`): what proves that an input store belongs to this pool.
        From :attr:`uids` when already read, else one pass over the uid columns that keeps only the digests."""
        if "_uid_index" in self.__dict__:
            uids = self._uid_index[0]
            return [uids_digest(uids[s.offset:s.offset + s.num_rows]) for s in self.shards]
        return [uids_digest(d.columns["uid"]) for d in self.iter_shards(["uid"], desc="reading uids")]

    @property
    def uids(self) -> np.ndarray:
        """All uids (``u8,u8``) in pool order, checked for duplicates across the pool."""
        return self._uid_index[0]

    @property
    def sorted_order(self) -> np.ndarray:
        """The permutation that sorts :attr:`uids` (pool positions in uid order)."""
        return self._uid_index[1]

    def column(self, name: str, dtype: np.dtype | str | None = None, *, allow_missing: bool = True) -> np.ndarray:
        """One parquet column over the whole pool, in pool order (nulls an error unless allowed),
        filled shard by shard into one array (the whole column is held once)."""
        no_missing = () if allow_missing else (name,)
        out = None
        for d in self.iter_shards([name], desc=f"reading {name}", no_missing=no_missing):
            part = d.columns[name]
            want = np.dtype(dtype) if dtype is not None else part.dtype
            if out is None:
                out = np.empty(self.size, dtype=want)
            elif dtype is None and part.dtype != out.dtype:  # shards disagree: the type np.concatenate would give
                out = out.astype(np.result_type(out, part))
            out[d.shard.offset:d.shard.offset + d.shard.num_rows] = part
        return out

    def uid_chunks(self, desc: str = "reading uids") -> Iterator[np.ndarray]:
        """The pool's uids (``u8,u8``) shard by shard, in pool order: slices of :attr:`uids` when
        those were read already, else one shard's uid column at a time (nothing pool-sized held)."""
        if "_uid_index" in self.__dict__:
            uids = self._uid_index[0]
            for s in self.shards:
                yield uids[s.offset:s.offset + s.num_rows]
            return
        digests = []
        for d in self.iter_shards(["uid"], desc=desc):
            digests.append(uids_digest(d.columns["uid"]))
            yield d.columns["uid"]
        self.__dict__.setdefault("shard_uid_digests", digests)  # a whole pass: the store's pool check needs no other

    def embeddings(self, key: str) -> np.ndarray:
        """One npz array over the whole pool (stays in its stored dtype, float16 for DataComp)."""
        parts = [d.arrays[key] for d in self.iter_shards(npz_keys=[key], desc=f"reading {key}")]
        return np.concatenate(parts)

    def locate(self, position: int) -> str:
        for s in self.shards:
            if s.offset <= position < s.offset + s.num_rows:
                return f"{s.parquet} row {position - s.offset}"
        return f"position {position}"


def uid_column(col, source: str) -> np.ndarray:
    """Convert a pyarrow uid column to ``u8,u8`` without materialising Python strings."""
    import pyarrow as pa

    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if col.null_count:
        i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise FlytInputError(f"missing uid at row {i} of {source}")
    large = pa.types.is_large_string(col.type) or pa.types.is_large_binary(col.type)
    if large or pa.types.is_string(col.type) or pa.types.is_binary(col.type):
        offset_type = np.int64 if large else np.int32
        offsets = np.frombuffer(col.buffers()[1], dtype=offset_type)[col.offset: col.offset + len(col) + 1]
        lengths = np.diff(offsets)
        if len(col) and (lengths == 32).all():
            data = np.frombuffer(col.buffers()[2], dtype=np.uint8)[offsets[0]: offsets[-1]]
            return hex_to_uids(data.reshape(len(col), 32), source=source)
    return hex_to_uids(col.to_numpy(zero_copy_only=False), source=source)


def plan_partitions(pool: Pool, count: int) -> list[list[int]]:
    """``count`` groups of consecutive shard indices (one per shard when the pool has fewer), each cut
    at the shard boundary nearest to a multiple of ``pool.size / count`` rows."""
    n = len(pool.shards)
    count = max(1, min(count, n))
    ends = np.cumsum([s.num_rows for s in pool.shards])
    edges = [0]
    for j in range(1, count):
        target = j * pool.size / count
        cut = int(np.searchsorted(ends, target, side="left")) + 1  # shards [0, cut) reach the target
        if cut > 1 and target - ends[cut - 2] < ends[cut - 1] - target:
            cut -= 1  # the boundary before the last shard is nearer
        edges.append(min(max(cut, edges[-1] + 1), n - (count - j)))
    edges.append(n)
    return [list(range(a, b)) for a, b in zip(edges[:-1], edges[1:])]
