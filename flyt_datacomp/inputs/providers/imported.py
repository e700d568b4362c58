"""Per-example scores someone else computed, imported from a folder of parquet files
(``import:SRC:column=COL``), e.g. the FLYT authors' released M-FLYT inputs.

SRC is a parquet file or a folder of them (searched recursively), local or at any fsspec URL
(``hf://datasets/formll/M-FLYT-input-scores`` with huggingface_hub installed). Each row is keyed by
its example's ``uid``, or by the webdataset ``key`` of the user's own download (the authors'
files: ``{key[:8]}_scores.parquet`` with a ``key`` column). Keys are joined to uids through the
downloaded shards' img2dataset parquet files (``key``, ``uid``, ``status``; the tars' ``.json``
members where those are missing), so the download must be the one the keys were made for.

How it scales (DataComp medium: 115M rows of 12 fields against a pool of 128M): nothing per row is
a Python object, and nothing pool-sized is held but the join:

1. :func:`preflight` checks, in seconds, what would otherwise fail late: the files and their
   columns and key column, the first keys against the shards they name, the shards folder, the
   check columns of the pool.
2. The join (:func:`flyt_datacomp.shards.join_keys`): every downloaded key, sorted, with the pool
   position of its uid (12 bytes a row), cached in the store's work folder under the content of
   the shards' parquet files and the pool's uids (``join-<digest>``): a download fixed in place is
   joined afresh, and ``recompute`` joins again in any case. Keyed by uid, the pool's uids are
   indexed instead (:class:`flyt_datacomp.uids.UidIndex`).
3. One pass over SRC, file by file and batch by batch, writes every numeric column into a
   memory-mapped pool-order column (float32 ``.npy``, NaN where the pool example has no row) in
   ``import-<digest>``, so importing 12 fields reads the files once.

The checks, each a clear error:

* a key or uid that appears twice, a key that is not digits, a uid that is not 32 hex characters;
* the join: when a field measures what a pool column measures (``check=clip_b32_similarity_score``
  for the authors' ``vit-b-32``), their correlation over the joined rows must reach ``min_corr``
  (0.99), computed shard by shard: a key-to-uid join against a download with another shard layout
  gives every example someone else's score, and this is how it shows;
* coverage is the store's ``missing`` policy: pool examples without a row are an error unless a
  fill (min or mean) is chosen, which the store records.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...arrow_io import open_parquet
from ...errors import FlytInputError, quote
from ...io import atomic_path
from ...process import release_freed_memory
from ...uids import UidIndex, uids_to_hex
from ..score_rows import batches as _batches
from ..score_rows import correlation_part, merge_parts
from ..score_rows import row_keys as _keys
from .base import FitContext, Option, Provider, register_provider

KEY_MODES = ("auto", "uid", "key")
KEY_COLUMNS = ("uid", "key")


@register_provider
class ImportedInput(Provider):
    kind = "import"
    version = "1"
    help = ("a column of parquet files of per-example scores keyed by uid or by webdataset key "
            "(import:SRC:column=COL; keys are joined to uids through --shards-dir)")
    positional = ("src",)
    options = (
        Option("column", str, None, "the source column to import (default: the input's name)"),
        Option("key", str, "auto", "what keys the rows: uid, key (webdataset key of the download), or auto",
               KEY_MODES),
        Option("check", str, None, "a pool column this field should agree with (its correlation is checked)"),
        Option("min_corr", float, 0.99, "the least correlation with the check column"),
    )
    columns = ("uid",)

    def default_name(self) -> str:
        return self.args["column"] or "imported"

    def sources(self) -> list[str]:
        return [source_glob(self.args["src"])]

    def fit(self, ctx: FitContext) -> Any:
        column = self.args["column"] or ctx.name
        check = self.args["check"]
        if check:
            check_column(ctx.pool, check, f"input {quote(ctx.name)}")
        src, key = self.args["src"], self.args["key"]
        schema = _memo(ctx, ("schema", src, key), lambda: read_schema(src, key))
        shards = shards_identity(ctx, schema)
        before = (ctx.previous or {}).get("shards_sha256")
        if before and shards and before != shards:
            raise FlytInputError(
                f"input {quote(ctx.name)} ({ctx.previous['status']} in the store) was joined to uids through the shards "
                f"at {ctx.shards_dir}, whose index files (img2dataset's parquet files) have changed since: its values "
                f"may belong to other examples. Nothing was imported: set `recompute` {ctx.name} to join and import it "
                "again", params=["recompute"])
        if column not in schema.numeric:
            raise FlytInputError(f"input {quote(self.spec)}: the files at {self.args['src']} have no numeric column "
                                 f"{quote(column)} (columns: {', '.join(schema.numeric)})")
        table = joined_table(self.args["src"], ctx, schema, shards)
        state = (table["folder"], table["fields"].index(column)) if "folder" in table else table["columns"][column]
        ctx.record.update({"source_rows": table["rows"], "source_key": table["key"], "source_files": table["files"],
                           "source_rows_not_in_pool": table["rows_not_in_pool"]})
        if shards:
            ctx.record["shards_sha256"] = shards
        if "cluster" in table:  # joined by buckets: how, and what its workers held at most
            ctx.record["join_cluster"] = table["cluster"]
        if check:
            what = f"input {quote(ctx.name)} ({column} of {self.args['src']})"
            if "folder" in table:
                from .. import bucket_join

                plan = bucket_join.Plan(**table["plan"])  # the check column was checked above
                moments = bucket_join.check_correlation(plan, ctx.pool, column, check, ctx.run_tasks)
                ctx.record["join_check"] = judge_join(moments, check, self.args["min_corr"], what)
            else:
                ctx.record["join_check"] = check_join(state, ctx.pool, check, self.args["min_corr"], what)
        return state

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        shard = data.shard
        if isinstance(state, (tuple, list)):  # joined on a cluster: each shard's fields in a file of their own
            from ..bucket_join import load, shard_values_path

            folder, field = state
            return np.array(load(shard_values_path(folder, shard.parquet), mapped=True)[:, field], dtype=np.float32)
        values = np.load(state, mmap_mode="r")
        return np.array(values[shard.offset: shard.offset + shard.num_rows], dtype=np.float32)


def source_glob(src: str) -> str:
    """The files of SRC as one path or glob: the file itself, or every parquet file below a folder."""
    return src if src.lower().endswith(".parquet") else src.rstrip("/") + "/**/*.parquet"


def list_sources(src: str) -> tuple[Any, list[str]]:
    """(filesystem, the parquet files of SRC in sorted order); an error when there are none."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(os.path.expanduser(src))
        if path.lower().endswith(".parquet"):
            files = [path] if fs.isfile(path) else []
        else:
            files = sorted(f for f in fs.glob(path.rstrip("/") + "/**/*.parquet"))
    except ImportError as exc:
        raise FlytInputError(f"cannot open {src}: {exc} (for hf:// URLs: pip install huggingface_hub)") from None
    except (OSError, ValueError) as exc:
        raise FlytInputError(f"cannot list the score files at {src}: {exc}") from None
    if not files:
        raise FlytInputError(f"no parquet files at {src}")
    return fs, files


# ------------------------------------------------------------------------------------- preflight


@dataclasses.dataclass(frozen=True)
class SourceSchema:
    """What the footers of SRC's files say: the key column and the numeric columns all files share."""

    fs: Any
    files: list[str]
    key: str  # "uid" or "key"
    numeric: list[str]  # numeric columns besides the key, in the first file's order
    other: list[str]  # columns of the first file that are neither keys nor numbers


def read_schema(src: str, key_mode: str = "auto") -> SourceSchema:
    """Every file's footer (no data): each must have the key column and the first file's numeric
    columns, as numbers."""
    import pyarrow as pa

    fs, files = list_sources(src)
    key = numeric = other = None
    for path in files:
        try:
            with fs.open(path, "rb") as fh:
                schema = open_parquet(fh).schema_arrow
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise FlytInputError(f"cannot read score file {path}: {exc}") from None
        types = {f.name: f.type for f in schema}
        if key is None:
            key = _key_mode(list(types), key_mode, path)
            numeric = [n for n, t in types.items() if n not in KEY_COLUMNS and _is_number(t)]
            other = [n for n, t in types.items() if n not in KEY_COLUMNS and not _is_number(t)]
        if key not in types:
            raise FlytInputError(f"score file {path} has no {key!r} column, unlike {files[0]}")
        if not (pa.types.is_string(types[key]) or pa.types.is_large_string(types[key])):
            raise FlytInputError(f"score file {path}: its {key!r} column holds {types[key]}, not strings")
        missing = [n for n in numeric if n not in types]
        if missing:
            raise FlytInputError(f"score file {path} lacks column(s) {', '.join(missing)}, which {files[0]} has")
        wrong = [n for n in numeric if not _is_number(types[n])]
        if wrong:
            raise FlytInputError(f"score file {path}: column {wrong[0]!r} holds {types[wrong[0]]}, not numbers as in "
                                 f"{files[0]}")
    return SourceSchema(fs, files, key, numeric, other)


def _is_number(t: Any) -> bool:
    import pyarrow as pa

    return pa.types.is_floating(t) or pa.types.is_integer(t)


def _key_mode(names: list[str], wanted: str, path: str) -> str:
    if wanted != "auto":
        if wanted not in names:
            raise FlytInputError(f"score file {path} has no {wanted!r} column (columns: {', '.join(names)})")
        return wanted
    for mode in KEY_COLUMNS:
        if mode in names:
            return mode
    raise FlytInputError(f"score file {path} has neither a 'uid' nor a 'key' column (columns: {', '.join(names)})")


def check_column(pool: Any, column: str, what: str) -> None:
    """A check column must be a numeric column of the pool (read from the first file's footer)."""
    if column not in pool.column_names:
        raise FlytInputError(f"{what}: the check column {quote(column)} is not a column of the pool at {pool.url}")
    with pool.fs.open(pool.shards[0].parquet, "rb") as fh:
        kind = open_parquet(fh).schema_arrow.field(column).type
    if not _is_number(kind):
        raise FlytInputError(f"{what}: the check column {quote(column)} of the pool holds {kind}, not numbers: a "
                             "correlation needs a numeric column such as clip_b32_similarity_score")


def preflight(src: str, pool: Any, *, key_mode: str = "auto", shards_dir: str | None = None,
              fields: Sequence[str] = (), checks: dict[str, str] | None = None) -> SourceSchema:
    """Everything that can be checked before the long passes, in seconds: SRC's files, their key
    and numeric columns (``fields`` among them), the shards folder and the first keys against the
    shard they name, and the check columns of the pool."""
    schema = read_schema(src, key_mode)
    if not schema.numeric:
        kinds = f" (its other columns: {', '.join(schema.other)})" if schema.other else ""
        raise FlytInputError(f"the files at {src} have no numeric score column besides their {schema.key!r} "
                             f"column{kinds}: nothing to import")
    unknown = [c for c in fields if c not in schema.numeric]
    if unknown:
        text = f" ({unknown[0]!r} holds no numbers)" if unknown[0] in schema.other else ""
        raise FlytInputError(f"the files at {src} have no numeric column {unknown[0]!r}{text} (numeric columns: "
                             f"{', '.join(schema.numeric)})")
    for name, column in (checks or {}).items():
        check_column(pool, column, f"input {quote(name)}")
    if schema.key == "key":
        if not shards_dir:
            raise _needs_shards(schema.files)
        from ...shards import check_folder

        fs, folder, tars = check_folder(shards_dir)
        _check_first_keys(schema, fs, folder, tars, shards_dir)
    return schema


def _needs_shards(files: list[str]) -> FlytInputError:
    return FlytInputError(f"the score files at {os.path.dirname(files[0])} are keyed by webdataset key: give "
                          "`shards_dir`, the downloaded image shards the keys belong to, to join them to uids",
                          params=["shards_dir"])


def _check_first_keys(schema: SourceSchema, fs: Any, folder: str, tars: list[str], shards_dir: str) -> None:
    """The first key of SRC must be a key of the shard img2dataset's naming puts it in (its leading
    digits are the shard's name): a folder of another download shows here, not after the passes."""
    from ...shards import webdataset_keys

    with schema.fs.open(schema.files[0], "rb") as fh:
        batch = next(open_parquet(fh).iter_batches(batch_size=64, columns=["key"], use_threads=False), None)
    if batch is None or batch.num_rows == 0:
        return
    webdataset_keys(batch.column(0), schema.files[0])  # malformed keys: an error naming the row
    first = batch.column(0)[0].as_py()
    stems = {t[: -len(".tar")] for t in tars}
    width = len(next(iter(stems)))
    stem = first[:width]
    if not all(len(s) == width and s.isdigit() for s in stems) or len(first) <= width:
        return  # not img2dataset's naming: the join itself will tell
    if stem not in stems:
        raise FlytInputError(f"key {first} (the first row of {schema.files[0]}) names shard {stem}, which the shards "
                             f"folder {shards_dir} does not hold ({len(tars):,} shards, {min(stems)} to {max(stems)}): "
                             "are the scores another download's?")
    parquet = f"{folder}/{stem}.parquet"
    if not fs.exists(parquet):
        return
    with fs.open(parquet, "rb") as fh:
        pf = open_parquet(fh)
        if "key" not in pf.schema_arrow.names:
            return
        keys = webdataset_keys(pf.read(columns=["key"], use_threads=False).column("key"), parquet)
    if not (keys == int(first)).any():
        raise FlytInputError(f"key {first} (the first row of {schema.files[0]}) is not a key of shard {parquet}: "
                             "are the scores another download's?")


# ------------------------------------------------------------------------------------- the import


def shards_identity(ctx: FitContext, schema: SourceSchema) -> str | None:
    """For files keyed by webdataset key, the digest of the shards' index files (once per run)."""
    if schema.key != "key":
        return None
    if not ctx.shards_dir:
        raise _needs_shards(schema.files)
    from ...shards import check_folder, content_digest

    check_folder(ctx.shards_dir)
    return _memo(ctx, ("shards", str(ctx.shards_dir)), lambda: content_digest(ctx.shards_dir, progress=ctx.progress))


def joined_table(src: str, ctx: FitContext, schema: SourceSchema, shards: str | None) -> dict[str, Any]:
    """Every numeric column of SRC in pool order, cached in the store's work folder (one pass over
    the files for all the fields of one SRC; see the module docstring)."""
    pool_digest = hashlib.sha256("\n".join(ctx.pool.shard_uid_digests).encode()).hexdigest()
    identity = {"src": src, "key": schema.key, "sources": ctx.sources, "pool": pool_digest, "shards": shards}
    if ctx.run_tasks is not None:  # joined by buckets on a cluster: its own files, planned by the pool's size
        from ..bucket_join import buckets_for

        identity.update(layout="buckets", buckets=buckets_for(ctx.pool, ctx.partitions))
    folder = ctx.work_dir / f"import-{_digest(identity)}"
    redo = ctx.recompute and not _memo(ctx, ("imported", str(folder)), lambda: False, peek=True)
    done = None if redo else _read_record(folder / "import.json", identity)
    if done is None and ctx.run_tasks is not None:
        if redo:  # recomputed: joined afresh, none of the passes' files kept
            shutil.rmtree(folder, ignore_errors=True)
        with _cache_writes(folder):
            done = _bucket_import(schema, ctx, folder, identity)
    elif done is None:
        with _cache_writes(folder):
            join = _join(ctx, schema.key, shards, pool_digest)
            done = _import(schema, ctx, join, folder, identity)
        del join
        release_freed_memory()
        _drop_stale(ctx.work_dir, "import", folder, lambda old: old.get("src") == src and old.get("pool") == pool_digest)
    _memo(ctx, ("imported", str(folder)), lambda: True)
    return done


def _drop_stale(work_dir: Path, kind: str, keep: Path, same_origin) -> None:
    """Remove the caches of ``kind`` that an import of the same origin made before (another content of
    its files or shards): the new one replaces them, and each holds gigabytes at DataComp's scales."""
    for folder in work_dir.glob(f"{kind}-*"):
        if folder == keep:
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
            record = json.loads((folder / f"{kind}.json").read_text())
            if same_origin(record["identity"] if kind == "import" else {**record["identity"], **record}):
                shutil.rmtree(folder, ignore_errors=True)


def _memo(ctx: FitContext, key: tuple, make, *, peek: bool = False) -> Any:
    """A value computed once per run (shared by the fits of one ``compute_inputs`` call)."""
    if key in ctx.shared:
        return ctx.shared[key]
    value = make()
    if not peek:
        ctx.shared[key] = value
    return value


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def _read_record(record: Path, identity: dict[str, Any]) -> dict[str, Any] | None:
    try:
        done = json.loads(record.read_text())
        files = done["columns"].values() if "folder" not in done else done["shard_files"]
        if done.get("identity") == identity and all(os.path.isfile(p) for p in files):
            return done
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass  # redo it
    return None


@contextlib.contextmanager
def _cache_writes(folder: Path) -> Iterator[None]:
    """A failed write into the import's cache (a full disk; numpy reports a short write as an
    ``OSError`` without an errno) is one clear error; what the store committed is kept."""
    try:
        yield
    except OSError as exc:  # the readers report their own files' errors as input errors
        raise FlytInputError(f"cannot write the import's cache in {folder.parent}: {exc.strerror or exc}; the store's "
                             "earlier files are kept as they were: free some space (the import needs about 16 bytes "
                             "per pool example and field, plus 12 per downloaded example) and run again") from None


@dataclasses.dataclass
class Join:
    """How a source row finds its pool position: sorted download keys with their pool positions
    (``key`` mode), or the pool's uids indexed (``uid`` mode)."""

    keys: np.ndarray | None = None
    positions: np.ndarray | None = None
    uids: UidIndex | None = None

    def positions_of(self, batch_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """(pool position per row, -1 where none; whether the row's key is a key of the download;
        the key's index among the download's keys, valid where it is one)."""
        if self.uids is not None:
            pos = self.uids.lookup(batch_keys)
            return pos, pos >= 0, None
        if not len(self.keys):
            return np.full(len(batch_keys), -1), np.zeros(len(batch_keys), bool), None
        i = np.searchsorted(self.keys, batch_keys)
        np.minimum(i, len(self.keys) - 1, out=i)
        known = self.keys[i] == batch_keys
        return np.where(known, self.positions[i], -1), known, i


def _join(ctx: FitContext, mode: str, shards: str | None, pool_digest: str) -> Join:
    """The join for ``mode``: the pool's uids indexed, or the download's keys joined to the pool
    (cached in the work folder by the shards' content and the pool's uids)."""
    if mode == "uid":
        index = UidIndex(np.int32 if ctx.pool.size < 2**31 - 1 else np.int64)
        for uids, shard in zip(ctx.pool.uid_chunks(desc="indexing the pool's uids"), ctx.pool.shards):
            index.add(uids, np.arange(shard.offset, shard.offset + shard.num_rows))
        dup = index.finish()
        if dup is not None:
            a, b = sorted((int(dup[1]), int(dup[2])))
            raise FlytInputError(f"uid {uids_to_hex(dup[0])[0]} appears more than once in the pool "
                                 f"({ctx.pool.locate(a)} and {ctx.pool.locate(b)})")
        return Join(uids=index)
    identity = {"pool": pool_digest, "shards": shards}
    folder = ctx.work_dir / f"join-{_digest(identity)}"
    record = folder / "join.json"
    redo = ctx.recompute and not _memo(ctx, ("joined", str(folder)), lambda: False, peek=True)
    if not redo:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(record.read_text())["identity"] == identity:
                _memo(ctx, ("joined", str(folder)), lambda: True)
                return Join(keys=np.load(folder / "keys.npy"), positions=np.load(folder / "positions.npy"))
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    from ...shards import join_keys

    keys, positions = join_keys(ctx.shards_dir, ctx.pool, folder, progress=ctx.progress)
    for name, values in (("keys", keys), ("positions", positions)):
        with atomic_path(folder / f"{name}.npy") as tmp, open(tmp, "wb") as fh:
            np.save(fh, values)
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps({"identity": identity, "shards_dir": str(ctx.shards_dir), "rows": int(len(keys)),
                                   "rows_in_pool": int((positions >= 0).sum())}))
    _drop_stale(ctx.work_dir, "join", folder, lambda old: old.get("pool") == pool_digest
                and old.get("shards_dir") == str(ctx.shards_dir))
    _memo(ctx, ("joined", str(folder)), lambda: True)
    return Join(keys=keys, positions=positions)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _new_column(path: Path, size: int) -> None:
    """A float32 ``.npy`` of ``size`` NaN, written through the file (not a mapping: no memory held)."""
    block = np.full(min(size, 1 << 20), np.nan, dtype="<f4").tobytes()
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": (size,)})
        left = size
        while left:
            n = min(left, 1 << 20)
            fh.write(block[: 4 * n])
            left -= n


def _import(schema: SourceSchema, ctx: FitContext, join: Join, folder: Path, identity: dict) -> dict[str, Any]:
    """One pass over SRC: each batch's rows find their pool positions, every numeric column is
    written there into its memory-mapped pool-order column."""
    from ...progress import progress_bar

    with contextlib.suppress(FileNotFoundError):
        (folder / "import.json").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {n: folder / f"{_safe(n)}.npy" for n in schema.numeric}
    for path in paths.values():
        _new_column(path, ctx.pool.size)
    filled = np.zeros(ctx.pool.size, dtype=bool)  # pool examples a row was joined to
    seen = None if join.keys is None else np.zeros(len(join.keys), dtype=bool)  # download keys met
    unmatched: list[np.ndarray] = []  # rows that join no pool example (their keys, for the duplicate check)
    rows = known_rows = 0
    where = os.path.dirname(schema.files[0]) or schema.files[0]
    for path in progress_bar(schema.files, desc="importing score files", unit="file", disable=not ctx.progress):
        for batch in _batches(schema, path):
            keys = _keys(batch.column(schema.key), schema.key, path)
            pos, known, index = join.positions_of(keys)
            rows += len(keys)
            known_rows += int(known.sum())
            if seen is not None and index is not None:
                _refuse_twice(join.keys, index[known], seen, "key", where)
            hit = np.flatnonzero(pos >= 0)
            order = hit[np.argsort(pos[hit], kind="stable")]
            at = pos[order]
            twice = np.flatnonzero(at[1:] == at[:-1]) if len(at) > 1 else np.zeros(0, np.int64)
            again = np.flatnonzero(filled[at])
            if twice.size or again.size:
                p = int(at[twice[0]]) if twice.size else int(at[again[0]])
                raise _twice_in_pool(ctx.pool, p, schema.key, where)
            filled[at] = True
            if not known.all():  # rows of no download key (or of no pool uid): held for the duplicate check
                unmatched.append(keys[~known])
            for name, out in paths.items():
                col = batch.column(name)
                if col.null_count:
                    raise FlytInputError(f"score file {path}: column {name!r} has {col.null_count} missing values")
                values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float32)
                column = np.load(out, mmap_mode="r+")
                column[at] = values[order]
                del column  # unmapped: the written pages leave this process's memory
    _refuse_unmatched_twice(unmatched, schema.key, where)
    if schema.key == "key" and rows and not known_rows:
        raise FlytInputError(f"none of the {rows:,} keys of the score files at {where} is a key of the shards at "
                             f"{ctx.shards_dir}: are they another download's?")
    done = {"identity": identity, "columns": {n: str(p) for n, p in paths.items()}, "rows": int(rows),
            "key": schema.key, "files": len(schema.files), "rows_not_in_pool": int(rows - filled.sum())}
    with atomic_path(folder / "import.json") as tmp:
        tmp.write_text(json.dumps(done))
    return done


def _bucket_import(schema: SourceSchema, ctx: FitContext, folder: Path, identity: dict) -> dict[str, Any]:
    """The join by buckets (:mod:`..bucket_join`), each pass a set of tasks on the cluster; the same
    record as :func:`_import`'s, with each metadata shard's fields in a file of its own."""
    from .. import bucket_join

    with contextlib.suppress(FileNotFoundError):
        (folder / "import.json").unlink()
    folder.mkdir(parents=True, exist_ok=True)
    where = os.path.dirname(schema.files[0]) or schema.files[0]
    plan = bucket_join.make_plan(folder, ctx.pool, identity["buckets"], schema.key, schema.numeric, where,
                                 ctx.shards_dir)
    counts = bucket_join.run_join(plan, ctx.pool, schema, ctx.run_tasks, progress=ctx.progress)
    if schema.key == "key" and counts["rows"] and not counts["known"]:
        raise FlytInputError(f"none of the {counts['rows']:,} keys of the score files at {where} is a key of the "
                             f"shards at {ctx.shards_dir}: are they another download's?")
    done = {"identity": identity, "folder": str(folder), "fields": list(schema.numeric),
            "plan": dataclasses.asdict(plan),
            "shard_files": [str(bucket_join.shard_values_path(folder, s.parquet)) for s in ctx.pool.shards],
            "rows": counts["rows"], "key": schema.key, "files": len(schema.files),
            "rows_not_in_pool": counts["rows"] - counts["placed"],
            "cluster": {"buckets": plan.buckets, "shard_groups": len(plan.groups),
                        "worker_peak_rss_bytes": counts["worker_peak_rss_bytes"]}}
    with atomic_path(folder / "import.json") as tmp:
        tmp.write_text(json.dumps(done))
    for stage in ("downloads", "scores", "pool", "keyed", "placed"):  # the passes' rows: only cols/ is read later
        shutil.rmtree(folder / stage, ignore_errors=True)
    return done


def _refuse_twice(keys: np.ndarray, i: np.ndarray, seen: np.ndarray, mode: str, where: str) -> None:
    """A download key met twice (in this batch or before) is an error; else mark the batch's keys."""
    i = np.sort(i)
    twice = np.flatnonzero(i[1:] == i[:-1]) if len(i) > 1 else np.zeros(0, np.int64)
    again = np.flatnonzero(seen[i])
    if twice.size or again.size:
        k = int(keys[i[twice[0]]] if twice.size else keys[i[again[0]]])
        raise FlytInputError(f"the score files at {where} list {mode} {k} more than once")
    seen[i] = True


def _refuse_unmatched_twice(parts: list[np.ndarray], mode: str, where: str) -> None:
    """Rows that join no pool example must not repeat either (their keys are held until the end)."""
    if not parts:
        return
    keys = np.concatenate(parts)
    if mode == "uid":
        index = UidIndex()
        index.add(keys)
        dup = index.finish()
        if dup is not None:
            raise FlytInputError(f"the score files at {where} list uid {uids_to_hex(dup[0])[0]} more than once")
        return
    keys.sort()
    same = np.flatnonzero(keys[1:] == keys[:-1])
    if same.size:
        raise FlytInputError(f"the score files at {where} list key {int(keys[same[0]])} more than once")


def _twice_in_pool(pool: Any, position: int, mode: str, where: str) -> FlytInputError:
    shard = next(s for s in pool.shards if s.offset <= position < s.offset + s.num_rows)
    uids = pool.read_shard(shard, ["uid"]).columns["uid"]
    uid = uids_to_hex(uids[position - shard.offset: position - shard.offset + 1])[0]
    if mode == "uid":
        return FlytInputError(f"the score files at {where} list uid {uid} more than once")
    return FlytInputError(f"two rows of the score files at {where} join to the same pool example (uid {uid}): the "
                          "download holds that uid under two keys")


# ------------------------------------------------------------------------------------- the join check


def check_join(values: np.ndarray | str | os.PathLike, pool: Any, column: str, min_corr: float,
               what: str) -> dict[str, Any]:
    """Refuse ``values`` (pool order, NaN = no row; an array or a ``.npy`` file, read mapped) unless
    they correlate at least ``min_corr`` with the pool column ``column`` over the rows both have;
    the check's record for the manifest. Computed shard by shard (:func:`correlation_part` per
    metadata shard, :func:`merge_parts` combining them exactly), so nothing pool-sized is read at once."""
    check_column(pool, column, what)
    if not isinstance(values, np.ndarray):
        values = np.load(values, mmap_mode="r")
    total = (0, 0.0, 0.0, 0.0, 0.0, 0.0)
    for data in pool.iter_shards([column], desc=f"checking the join against {column}"):
        s = data.shard
        total = merge_parts(total, correlation_part(np.asarray(values[s.offset:s.offset + s.num_rows]),
                                                    data.columns[column]))
    return judge_join(total, column, min_corr, what)


def judge_join(total: tuple[float, ...], column: str, min_corr: float, what: str) -> dict[str, Any]:
    """The join check's verdict on the moments of the joined rows (:func:`correlation_part`, merged)."""
    n = int(total[0])
    if n < 3:
        raise FlytInputError(f"{what}: only {n} rows could be compared with the pool's {column}; the join matched "
                             "(almost) nothing")
    _, _, _, m2a, m2b, cab = total
    corr = 0.0 if m2a <= 0 or m2b <= 0 else float(cab / np.sqrt(m2a * m2b))
    if not corr >= min_corr:
        raise FlytInputError(
            f"{what} correlates {corr:.4f} with the pool's {column} over {n:,} joined rows, below {min_corr}: the "
            "rows were joined to the wrong examples (keys from a download with another shard layout?) or the "
            "field is not the score it is checked against; nothing was imported")
    return {"column": column, "correlation": round(corr, 6), "rows": n, "min": min_corr}


# the authors' names of fields that measure what a DataComp pool column measures (the join check)
KNOWN_CHECKS = {"vit-b-32": "clip_b32_similarity_score", "vit-l-14": "clip_l14_similarity_score"}


def import_specs(src: str, fields: list[tuple[str, str]], *, key: str = "auto", checks: dict[str, str] | None = None,
                 min_corr: float = 0.99, pool_columns: list[str] = ()) -> list[str]:
    """The input specs that import ``fields`` ((store name, source column) pairs) of SRC, each with
    its join check: the one given in ``checks`` (by store name), else the known one when the pool
    has that column."""
    checks = dict(checks or {})
    specs = []
    for name, column in fields:
        check = checks.get(name) or KNOWN_CHECKS.get(column.lower())
        if check is not None and check not in pool_columns:
            check = None if name not in checks else check
        parts = [f"{name}=import", src, f"column={column}", f"key={key}"]
        if check:
            parts += [f"check={check}", f"min_corr={min_corr}"]
        specs.append(":".join(parts))
    return specs
