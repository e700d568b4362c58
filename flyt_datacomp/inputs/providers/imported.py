"""Per-example scores someone else computed, imported from a folder of parquet files
(``import:SRC:column=COL``), e.g. the FLYT authors' released M-FLYT inputs.

SRC is a parquet file or a folder of them (searched recursively), local or at any fsspec URL
(``hf://datasets/formll/M-FLYT-input-scores`` with huggingface_hub installed). Each row is keyed by
its example's ``uid``, or by the webdataset ``key`` of the user's own download (the authors'
files: ``{key[:8]}_scores.parquet`` with a ``key`` column). Keys are joined to uids through the
downloaded shards' img2dataset parquet files (``key``, ``uid``, ``status``; the tars' ``.json``
members where those are missing), so the download must be the one the keys were made for.

Every field of one SRC is read in one pass and kept in the store's work folder in pool order
(one float32 ``.npy`` per column, NaN where the pool example has no row), so importing 12 fields
reads the files once. The checks, each a clear error:

* a key or uid that appears twice, a key that is not digits, a uid that is not 32 hex characters;
* the join: when a field measures what a pool column measures (``check=clip_b32_similarity_score``
  for the authors' ``vit-b-32``), their correlation over the joined rows must reach ``min_corr``
  (0.99): a key-to-uid join against a download with another shard layout gives every example
  someone else's score, and this is how it shows;
* coverage is the store's ``missing`` policy: pool examples without a row are an error unless a
  fill (min or mean) is chosen, which the store records.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any

import numpy as np

from ...arrow_io import open_parquet, read_parquet
from ...errors import FlytInputError, quote
from ...io import atomic_path
from ...uids import UID_DTYPE, lookup, uid_order, uids_to_hex
from .base import FitContext, Option, Provider, register_provider

KEY_MODES = ("auto", "uid", "key")


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
        table = joined_table(self.args["src"], ctx, self.args["key"])
        if column not in table["columns"]:
            raise FlytInputError(f"input {quote(self.spec)}: the files at {self.args['src']} have no numeric column "
                                 f"{quote(column)} (columns: {', '.join(table['columns'])})")
        path = table["columns"][column]
        ctx.record.update({"source_rows": table["rows"], "source_key": table["key"], "source_files": table["files"],
                           "source_rows_not_in_pool": table["rows_not_in_pool"]})
        check = self.args["check"]
        if check:
            ctx.record["join_check"] = check_join(np.load(path, mmap_mode="r"), ctx.pool, check, self.args["min_corr"],
                                                  f"input {quote(ctx.name)} ({column} of {self.args['src']})")
        return path

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        values = np.load(state, mmap_mode="r")
        shard = data.shard
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


def joined_table(src: str, ctx: FitContext, key_mode: str) -> dict[str, Any]:
    """Every numeric column of SRC in pool order, cached in the store's work folder (one pass over
    the files for all the fields of one SRC)."""
    identity = {"src": src, "key": key_mode, "sources": ctx.sources, "pool": _pool_identity(ctx.pool),
                "shards_dir": ctx.shards_dir if key_mode != "uid" else None}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    folder = ctx.work_dir / f"import-{digest}"
    record = folder / "import.json"
    if record.is_file():
        try:
            done = json.loads(record.read_text())
            if done.get("identity") == identity and all(os.path.isfile(p) for p in done["columns"].values()):
                return done
        except (OSError, ValueError, KeyError, TypeError):
            pass  # redo the import below
    folder.mkdir(parents=True, exist_ok=True)
    fs, files = list_sources(src)
    keys, columns, mode = _read_sources(fs, files, key_mode, ctx.progress)
    positions, not_in_pool = _positions(keys, mode, ctx, files)
    out = {}
    for name, values in columns.items():
        full = np.full(ctx.pool.size, np.nan, dtype=np.float32)
        found = positions >= 0
        full[positions[found]] = values[found]
        path = folder / f"{_safe(name)}.npy"
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.save(fh, full)
        out[name] = str(path)
    done = {"identity": identity, "columns": out, "rows": int(len(positions)), "key": mode, "files": len(files),
            "rows_not_in_pool": int(not_in_pool)}
    with atomic_path(record) as tmp:
        tmp.write_text(json.dumps(done))
    return done


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) + "-" + hashlib.sha256(name.encode()).hexdigest()[:8]


def _pool_identity(pool: Any) -> str:
    """The pool's uids in pool order, hashed (the cache is in pool order)."""
    return hashlib.sha256(np.ascontiguousarray(pool.uids).tobytes()).hexdigest()


def _read_sources(fs: Any, files: list[str], key_mode: str, progress: bool) -> tuple[np.ndarray, dict[str, np.ndarray], str]:
    """(keys as ``u8,u8`` uids or int64 webdataset keys, {column: float32 values}, key mode used)."""
    import pyarrow as pa

    from ...progress import progress_bar

    mode, names, keys, parts = None, None, [], {}
    for path in progress_bar(files, desc="importing score files", unit="file", disable=not progress):
        try:
            with fs.open(path, "rb") as fh:
                table = read_parquet(fh)
        except Exception as exc:  # pyarrow raises several types for a bad file
            raise FlytInputError(f"cannot read score file {path}: {exc}") from None
        if mode is None:
            mode = _key_mode(table.column_names, key_mode, path)
            names = [n for n, t in zip(table.column_names, table.schema.types)
                     if n not in ("uid", "key") and (pa.types.is_floating(t) or pa.types.is_integer(t))]
            if not names:
                raise FlytInputError(f"score file {path} has no numeric column besides its keys")
        if mode not in table.column_names:
            raise FlytInputError(f"score file {path} has no {mode!r} column, unlike {files[0]}")
        missing = [n for n in names if n not in table.column_names]
        if missing:
            raise FlytInputError(f"score file {path} lacks column(s) {', '.join(missing)}, which {files[0]} has")
        keys.append(_keys(table.column(mode), mode, path))
        for n in names:
            col = table.column(n)
            if col.null_count:
                raise FlytInputError(f"score file {path}: column {n!r} has {col.null_count} missing values")
            parts.setdefault(n, []).append(col.to_numpy().astype(np.float32))
    all_keys = np.concatenate(keys)
    columns = {n: np.concatenate(v) for n, v in parts.items()}
    _refuse_duplicates(all_keys, mode, files)
    return all_keys, columns, mode


def _key_mode(names: list[str], wanted: str, path: str) -> str:
    if wanted != "auto":
        if wanted not in names:
            raise FlytInputError(f"score file {path} has no {wanted!r} column (columns: {', '.join(names)})")
        return wanted
    for mode in ("uid", "key"):
        if mode in names:
            return mode
    raise FlytInputError(f"score file {path} has neither a 'uid' nor a 'key' column (columns: {', '.join(names)})")


def _keys(col: Any, mode: str, path: str) -> np.ndarray:
    if col.null_count:
        raise FlytInputError(f"score file {path}: {col.null_count} rows have no {mode}")
    if mode == "uid":
        from ...pool import uid_column

        return uid_column(col, path)
    from ...shards import webdataset_keys

    return webdataset_keys(col, path)


def _refuse_duplicates(keys: np.ndarray, mode: str, files: list[str]) -> None:
    order = uid_order(keys) if mode == "uid" else np.argsort(keys, kind="stable")
    s = keys[order]
    if len(s) < 2:
        return
    same = (s["f0"][1:] == s["f0"][:-1]) & (s["f1"][1:] == s["f1"][:-1]) if mode == "uid" else s[1:] == s[:-1]
    if same.any():
        i = int(np.flatnonzero(same)[0])
        shown = uids_to_hex(s[i:i + 1])[0] if mode == "uid" else str(int(s[i]))
        raise FlytInputError(f"the score files at {os.path.dirname(files[0]) or files[0]} list {mode} {shown} more "
                             "than once")


def _positions(keys: np.ndarray, mode: str, ctx: FitContext, files: list[str]) -> tuple[np.ndarray, int]:
    """Each row's pool position (-1: no pool example) and how many rows match none."""
    pool_uids = ctx.pool.uids
    order = ctx.pool.sorted_order
    if mode == "uid":
        uids = keys
    else:
        if not ctx.shards_dir:
            raise FlytInputError(f"the score files at {os.path.dirname(files[0])} are keyed by webdataset key: give "
                                 "`shards_dir`, the downloaded image shards the keys belong to, to join them to uids",
                                 params=["shards_dir"])
        from ...shards import key_index

        shard_keys, shard_uids = key_index(ctx.shards_dir, progress=ctx.progress)  # sorted by key
        pos = np.searchsorted(shard_keys, keys)
        pos = np.minimum(pos, max(len(shard_keys) - 1, 0))
        found = (len(shard_keys) > 0) & (shard_keys[pos] == keys) if len(shard_keys) else np.zeros(len(keys), bool)
        if not found.any():
            raise FlytInputError(f"none of the {len(keys):,} keys of the score files at {os.path.dirname(files[0])} is "
                                 f"a key of the shards at {ctx.shards_dir}: are they another download's?")
        uids = np.zeros(len(keys), dtype=UID_DTYPE)
        uids[found] = shard_uids[pos[found]]
    at = lookup(pool_uids[order], uids)
    positions = np.where(at >= 0, order[np.maximum(at, 0)], -1)
    if mode != "uid":
        positions = np.where(found, positions, -1)
    matched = np.sort(positions[positions >= 0])
    twice = np.flatnonzero(matched[1:] == matched[:-1])
    if twice.size:
        uid = uids_to_hex(pool_uids[matched[twice[0]]: matched[twice[0]] + 1])[0]
        raise FlytInputError(f"two rows of the score files at {os.path.dirname(files[0])} join to the same pool example "
                             f"(uid {uid}): the download holds that uid under two keys")
    return positions, int((positions < 0).sum())


def check_join(values: np.ndarray, pool: Any, column: str, min_corr: float, what: str) -> dict[str, Any]:
    """Refuse ``values`` (pool order, NaN = no row) unless they correlate at least ``min_corr`` with
    the pool column ``column`` over the rows both have; the check's record for the manifest."""
    if column not in pool.column_names:
        raise FlytInputError(f"{what}: the check column {quote(column)} is not a column of the pool")
    ref = pool.column(column).astype(np.float64)
    both = ~np.isnan(values) & np.isfinite(ref)
    n = int(both.sum())
    if n < 3:
        raise FlytInputError(f"{what}: only {n} rows could be compared with the pool's {column}; the join matched "
                             "(almost) nothing")
    a, b = np.asarray(values, dtype=np.float64)[both], ref[both]
    if a.std() == 0 or b.std() == 0:
        corr = 0.0
    else:
        corr = float(np.corrcoef(a, b)[0, 1])
    if not corr >= min_corr:
        raise FlytInputError(
            f"{what} correlates {corr:.4f} with the pool's {column} over {n:,} joined rows, below {min_corr}: the "
            "rows were joined to the wrong examples (keys from a download with another shard layout?) or the "
            "field is not the score it is checked against; nothing was imported")
    return {"column": column, "correlation": round(corr, 6), "rows": n, "min": min_corr}


# the authors' names of fields that measure what a DataComp pool column measures (the join check)
KNOWN_CHECKS = {"vit-b-32": "clip_b32_similarity_score", "vit-l-14": "clip_l14_similarity_score"}


def source_columns(src: str) -> tuple[list[str], str | None]:
    """The numeric columns of SRC's first parquet file (besides its keys) and its key column."""
    import pyarrow as pa

    fs, files = list_sources(src)
    try:
        with fs.open(files[0], "rb") as fh:
            schema = open_parquet(fh).schema_arrow
    except Exception as exc:
        raise FlytInputError(f"cannot read score file {files[0]}: {exc}") from None
    numeric = [f.name for f in schema if f.name not in ("uid", "key")
               and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    key = next((k for k in ("uid", "key") if k in schema.names), None)
    return numeric, key


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
