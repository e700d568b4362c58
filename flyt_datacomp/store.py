"""The input-score store: per-example inputs kept beside a pool, one parquet file per metadata shard.

Layout of a store folder (format 2)::

    inputs.json          the manifest: the pool it belongs to and, per input, how it was computed
    <stem>.parquet       per metadata shard <stem>.parquet of the pool: ``uid`` and one float32
                         column per input, rows in the shard's order (NaN where a provider had no value)
    work/                what providers keep: fitted classifiers, joined per-uid files, image-shard passes
    .lock                locked (by the OS) while a run writes the store; a second writer is refused

``inputs.json``::

    {"format": 2, "version": "<package version>", "metadata_dir": "<the pool's folder, as given>",
     "shards": [{"stem": "<stem>", "rows": 123, "uid_sha256": "<digest of the shard's uids>"}, ...],
     "inputs": {"<name>": {"spec": ..., "kind": ..., "provider_version": ..., "params": {...},
                           "sources": {"<file>": {"bytes": 123, "sha256": "..."}},
                           "reads": {"<stored input>": "<its token>"},
                           "token": "<this computation>", "status": "computing" | "complete",
                           "missing": ..., "device": ..., "count": ..., "missing_count": ...,
                           "fill_value": ..., "mean": ..., "std": ..., "min": ..., "max": ...,
                           "extra_uids": ..., "seal": "<digest of the entry's other fields>"}}}

What makes the store trustworthy:

* **It belongs to its pool.** Each shard's ``uid_sha256`` is the digest of the pool shard's uids in row
  order (:func:`flyt_datacomp.uids.uids_digest`); every reader and every run compares it with the
  pool's, so a pool with the same shard names and sizes but other (or reordered) uids is refused.
* **A column is only trusted with its identity.** An input's ``token`` is drawn when its computation
  starts (again on ``--recompute``); every shard file records, in its parquet metadata, the digest of
  its uids and the token of each column it holds. A column without the manifest's token (a shard file
  of another store, a folder reused, a column left by an earlier computation) holds no input: a run
  recomputes it, a reader refuses it.
* **An input's identity includes its content**: the size and sha256 of each file it reads
  (``sources``) and the tokens of the stored inputs it reads (``reads``); a run refuses to resume or
  reuse an input whose files or stored inputs changed, unless told to recompute it.
* **What an input read from the pool is tracked too.** Each shard file records, per input that read
  pool columns or npz arrays, which ones, the sha256 of their values and the pool files' stamps
  (size and modification time); when a stamp differs, the values are read again and compared, so
  metadata regenerated in place (same uids, other values) is refused by readers and by a run, and a
  copy of the pool with new times is not.
* **Values and the manifest are sealed.** Each shard file records the sha256 of each column's
  values, so a column edited with the file's footer kept is refused; each manifest entry carries a
  seal (a digest of its other fields), so a hand-edited entry (a ``fill_value`` changed, ...) is
  refused by readers and named by ``inputs show``, until a run with that input restores it.

A shard file is rewritten (temporary file, then rename) when an input is added, so a kill never
leaves a half-written shard, and a shard that already holds an input's column is never recomputed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from . import __version__
from .errors import FlytInputError, quote
from .io import TEMP_SUFFIX, atomic_path, dumps, local_path, os_lock, write_json

log = logging.getLogger(__name__)

MANIFEST = "inputs.json"
FORMAT = 2
LOCK = ".lock"
WORK = "work"
RESERVED_NAMES = frozenset({"uid"})  # columns of the shard files that are not inputs
STATUSES = ("computing", "complete")
UIDS_KEY = b"flyt_datacomp.uid_sha256"  # shard file metadata: the digest of its uid column
TOKENS_KEY = b"flyt_datacomp.inputs"  # shard file metadata: {column: token of the computation that wrote it}
DIGESTS_KEY = b"flyt_datacomp.sha256"  # shard file metadata: {column: sha256 of its float32 values}
POOL_READS_KEY = b"flyt_datacomp.pool_reads"  # shard file metadata: {column: what it read from the pool shard}
SEAL = "seal"  # a manifest entry's digest of its other fields
_STAMP_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "ETag", "etag", "md5Hash", "created")
NAME_PATTERN = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_HEX = re.compile(r"^[0-9a-f]+$")
_STATISTICS = ("count", "missing_count", "fill_value", "mean", "std", "min", "max")


def shard_stem(parquet_url: str) -> str:
    return os.path.basename(parquet_url)[: -len(".parquet")]


def is_reserved(name: str) -> bool:
    """True for a name the store's layout uses (``uid``, in any case)."""
    return name.lower() in RESERVED_NAMES


def new_token() -> str:
    return secrets.token_hex(8)


def values_sha256(values: np.ndarray) -> str:
    """The digest of a column's values as the store keeps them (float32, little-endian)."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype="<f4").tobytes()).hexdigest()


def data_sha256(columns: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> str:
    """The digest of what a computation read from a pool shard: parquet columns and npz arrays, each
    with its name, dtype and shape."""
    h = hashlib.sha256()
    for kind, part in (("column", columns), ("npz", arrays)):
        for name in sorted(part):
            a = np.asarray(part[name])
            h.update(f"{kind}:{name}:{a.dtype.str}:{a.shape}\0".encode())
            if a.dtype.kind == "O":
                for v in a.ravel():
                    h.update(repr(v).encode() + b"\0")
            else:
                h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def pool_stamps(pool, shard) -> dict[str, str]:
    """The size and modification time (or what the file system offers instead) of a pool shard's
    files, as ``{"parquet": ..., "npz": ...}``; a file that cannot be looked at has none."""
    out = {}
    for which, path in (("parquet", shard.parquet), ("npz", shard.npz)):
        if path is None:
            continue
        try:
            info = pool.fs.info(path)
        except (OSError, ValueError):
            continue
        when = next((info[k] for k in _STAMP_FIELDS if info.get(k) is not None), None)
        out[which] = f"{info.get('size')}:{when}"
    return out


def pool_read(stamps: Mapping[str, str], columns: Mapping[str, np.ndarray], arrays: Mapping[str, np.ndarray]) -> dict:
    """The record of what one input's computation read from a pool shard (``stamps`` taken before)."""
    files = (["parquet"] if columns else []) + (["npz"] if arrays else [])
    return {"columns": sorted(columns), "npz_keys": sorted(arrays), "sha256": data_sha256(columns, arrays),
            "stamps": {f: stamps.get(f) for f in files}}


def entry_seal(entry: Mapping[str, Any]) -> str:
    """The seal of a manifest entry: a digest of its fields other than the seal, as JSON."""
    fields = json.loads(dumps({k: v for k, v in entry.items() if k != SEAL}))
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def hand_edited(entry: Mapping[str, Any]) -> bool:
    """True when a manifest entry's fields no longer match its seal (an entry without a seal, written
    by an older version, cannot be checked)."""
    return SEAL in entry and entry[SEAL] != entry_seal(entry)


@dataclasses.dataclass(frozen=True)
class ShardFile:
    """What a store shard file says about itself (its footer only)."""

    path: Path
    rows: int
    uid_sha256: str | None
    tokens: dict[str, str]  # column -> token of the computation that wrote it
    types: dict[str, pa.DataType]  # column -> type
    digests: dict[str, str] = dataclasses.field(default_factory=dict)  # column -> sha256 of its values
    pool_reads: dict[str, dict] = dataclasses.field(default_factory=dict)  # column -> what it read from the pool

    def holds(self, name: str, token: str) -> bool:
        return self.tokens.get(name) == token and pa.types.is_floating(self.types.get(name, pa.null()))

    def why_not(self, name: str, token: str) -> str:
        if name not in self.types:
            return "it has no such column"
        if self.tokens.get(name) != token:
            return "its column was written by another computation than the manifest records"
        return f"its column holds {self.types[name]} values, not numbers"


class DamagedShard(FlytInputError):
    """A store shard file that does not hold what the manifest says (``why`` says what is wrong)."""

    def __init__(self, message: str, path: Path, why: str):
        super().__init__(message)
        self.path, self.why = path, why
        self.args = (message, path, why)  # rebuilt from these when unpickled (a Ray worker's error)


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    """Turn a failed write of a store file (a full disk, a read-only folder) into one clear error."""
    try:
        yield
    except OSError as exc:
        raise FlytInputError(f"cannot write {path}: {exc.strerror or exc}; the store's earlier files are kept as they "
                             "were: free some space (or fix the folder) and run again to resume") from None


class InputStore:
    """A store folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike):
        self.root = local_path(root, "the input store")
        self.work_dir = self.root / WORK

    # ------------------------------------------------------------------ manifest

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        return self.manifest_path.is_file()

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked to be whole (a damaged or hand-edited one is one error naming the part)."""
        try:
            text = self.manifest_path.read_text()
        except FileNotFoundError:
            raise FlytInputError(f"{self.root} is not an input store (no {MANIFEST}); make one with "
                                 "`flyt-datacomp inputs compute`") from None
        except (OSError, ValueError) as exc:
            raise FlytInputError(f"cannot read {self.manifest_path}: {exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise self._damaged_manifest(f"it is not valid JSON ({exc})") from None
        self._check_manifest(data)
        return data

    def _damaged_manifest(self, why: str) -> FlytInputError:
        return FlytInputError(f"the input store manifest {self.manifest_path} is damaged: {why}; compute the store "
                              "again (into a new folder, or after deleting this one)")

    def _check_manifest(self, data: Any) -> None:
        bad = self._damaged_manifest
        if not isinstance(data, dict):
            raise bad(f"it holds a JSON {type(data).__name__}, not an object")
        fmt = data.get("format")
        if _is_int(fmt) and fmt < FORMAT:
            raise FlytInputError(
                f"the input store {self.root} was made by an older version of flyt-datacomp (store format {fmt}), which "
                "did not record which pool uids and which computation each column holds; compute it again (into a new "
                "folder, or after deleting this one)")
        if _is_int(fmt) and fmt > FORMAT:
            raise FlytInputError(f"the input store {self.root} has format {fmt}, made by a newer version of "
                                 f"flyt-datacomp; this version reads format {FORMAT}: upgrade flyt-datacomp")
        if fmt != FORMAT:
            raise bad(f"'format' is {quote(fmt)}, not {FORMAT}")
        for key, kind in (("metadata_dir", str), ("shards", list), ("inputs", dict)):
            if not isinstance(data.get(key), kind):
                raise bad(f"{quote(key)} is {'missing' if key not in data else 'not a JSON ' + _json_kind(kind)}")
        if not data["shards"]:
            raise bad("'shards' is empty")
        stems = set()
        for i, s in enumerate(data["shards"]):
            where = f"shards[{i}]"
            if not isinstance(s, dict):
                raise bad(f"{where} is not an object")
            stem = s.get("stem")
            if not isinstance(stem, str) or not stem or "/" in stem or "\\" in stem or stem in (".", ".."):
                raise bad(f"{where}.stem is {quote(stem)}, not a file name")
            if stem in stems:
                raise bad(f"shard {quote(stem)} is listed twice")
            stems.add(stem)
            if not _is_int(s.get("rows")) or s["rows"] < 0:
                raise bad(f"{where}.rows is {quote(s.get('rows'))}, not a row count")
            if not _is_digest(s.get("uid_sha256")):
                raise bad(f"{where}.uid_sha256 is {quote(s.get('uid_sha256'))}, not a sha256 digest")
        for name, e in data["inputs"].items():
            where = f"input {quote(name)}"
            if not NAME_PATTERN.match(name) or is_reserved(name):
                raise bad(f"{where} has a name no input may have")
            if not isinstance(e, dict):
                raise bad(f"{where} is not an object")
            for key, kind in (("spec", str), ("kind", str), ("params", dict), ("sources", dict), ("token", str),
                              ("status", str)):
                if not isinstance(e.get(key), kind):
                    raise bad(f"{where}: {quote(key)} is {'missing' if key not in e else 'not a JSON ' + _json_kind(kind)}")
            if e["status"] not in STATUSES:
                raise bad(f"{where}: status {quote(e['status'])} is not one of {', '.join(STATUSES)}")
            if not _HEX.match(e["token"]):
                raise bad(f"{where}: token {quote(e['token'])} is not a hex string")
            reads = e.get("reads", {})
            if not isinstance(reads, dict) or not all(isinstance(t, str) for t in reads.values()):
                raise bad(f"{where}: 'reads' is not a JSON object of tokens")
            required = _STATISTICS if e["status"] == "complete" else ()
            for key in ("count", "missing_count", "extra_uids", "source_uids"):
                if (key in e or key in required) and not (_is_int(e.get(key)) and e[key] >= 0):
                    raise bad(f"{where}: {quote(key)} is {_shown(e, key)}, not a count")
            for key in ("mean", "std", "min", "max", "seconds"):
                if (key in e or key in required) and not _is_number(e.get(key)):
                    raise bad(f"{where}: {quote(key)} is {_shown(e, key)}, not a finite number")
            if "fill_value" in required and "fill_value" not in e:
                raise bad(f"{where}: 'fill_value' is missing")
            if e.get("fill_value") is not None and not _is_number(e["fill_value"]):
                raise bad(f"{where}: 'fill_value' is {_shown(e, 'fill_value')}, not a finite number or null")

    def write_manifest(self, data: dict[str, Any], *, keep_seals: set[str] | frozenset[str] = frozenset()) -> None:
        """Write the manifest, sealing each entry (those named in ``keep_seals`` keep the seal they have:
        a hand-edited entry stays recognisable until a run restores it)."""
        for name, entry in data["inputs"].items():
            if name not in keep_seals:
                entry[SEAL] = entry_seal(entry)
        with _writing(self.manifest_path):
            write_json(self.manifest_path, data)

    # ------------------------------------------------------------------ the folder and its pool

    def check_creatable(self) -> None:
        """Refuse, before anything is written, a folder that is neither a store nor empty (the metadata
        folder, a folder of other files, a store whose ``inputs.json`` was deleted): nothing in it is
        ever touched. A leftover lock file or first manifest of a killed first run does not count."""
        if self.root.exists() and not self.root.is_dir():
            raise FlytInputError(f"the input store {self.root} is not a folder", params=["inputs_dir"])
        if self.exists() or not self.root.exists():
            return
        try:
            names = sorted(os.listdir(self.root))
        except OSError as exc:
            raise FlytInputError(f"cannot list the input store folder {self.root}: {exc.strerror}") from None
        foreign = [n for n in names if n != LOCK and not (n.startswith(f".{MANIFEST}.") and n.endswith(TEMP_SUFFIX))]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise FlytInputError(
                f"{self.root} is not an input store (it has no {MANIFEST}) and holds other files ({shown}); "
                "give `inputs_dir` an empty or new folder (nothing in this one was changed)", params=["inputs_dir"])

    def attach(self, pool) -> dict[str, Any]:
        """Create the store for ``pool``, or check that an existing one belongs to it."""
        self.check_creatable()
        self._check_not_the_pool(pool)
        if not self.exists():
            shards = [{"stem": shard_stem(s.parquet), "rows": s.num_rows, "uid_sha256": d}
                      for s, d in zip(pool.shards, pool.shard_uid_digests)]
            data = {"format": FORMAT, "version": __version__, "metadata_dir": pool.url, "shards": shards, "inputs": {}}
            self.write_manifest(data)
            return data
        data = self.manifest()
        self.check_pool(pool, data)
        return data

    def check_pool(self, pool, data: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """Refuse a pool the store was not made for: other shard names or sizes, or other uids (or the
        same uids in another order) in any shard. A part of a pool (:meth:`~flyt_datacomp.pool.Pool.part`)
        is checked against the whole pool's shard names and sizes and its own shards' uids. Returns the
        manifest's entries of the pool's shards, in the pool's order."""
        data = data or self.manifest()
        mine = [(s["stem"], s["rows"]) for s in data["shards"]]
        theirs = [(shard_stem(s.parquet), s.num_rows) for s in pool.whole_shards or pool.shards]
        if mine != theirs:
            differ = next((f"{a} vs {b}" for a, b in zip(mine, theirs) if a != b), f"{len(mine)} vs {len(theirs)} shards")
            raise FlytInputError(f"the input store {self.root} was made for another pool ({data['metadata_dir']}); "
                                 f"its shards differ from {pool.url}'s ({differ})")
        by_stem = {s["stem"]: s for s in data["shards"]}
        entries = [by_stem[shard_stem(shard.parquet)] for shard in pool.shards]
        for s, shard, digest in zip(entries, pool.shards, pool.shard_uid_digests):
            if s["uid_sha256"] != digest:
                raise FlytInputError(
                    f"the input store {self.root} was made for another pool ({data['metadata_dir']}): {shard.parquet} "
                    f"holds other uids, or the same in another order, than the store's shard {s['stem']} "
                    f"({s['rows']:,} rows alike); compute a store for this pool (into a new folder)")
        return entries

    def _check_not_the_pool(self, pool) -> None:
        with contextlib.suppress(OSError, ValueError, TypeError):
            if self.root.exists() and os.path.samefile(self.root, pool.root):
                raise FlytInputError(f"the input store {self.root} is the pool's metadata folder; give `inputs_dir` "
                                     "a folder of its own", params=["inputs_dir"])

    # ------------------------------------------------------------------ shard files

    def shard_path(self, stem: str) -> Path:
        return self.root / f"{stem}.parquet"

    def shard_file(self, stem: str) -> ShardFile | None:
        """What the shard file's footer says, or None when there is no file; an unreadable file is an error."""
        path = self.shard_path(stem)
        try:
            pf = pq.ParquetFile(path)
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
        except FileNotFoundError:
            return None
        except Exception as exc:  # pyarrow raises several types for a damaged file
            raise self._damaged_shard(path, f"is unreadable ({exc})", reader=False) from None
        meta = schema.metadata or {}
        tokens = {str(k): str(v) for k, v in _footer_dict(meta, TOKENS_KEY).items()}
        digests = {str(k): v for k, v in _footer_dict(meta, DIGESTS_KEY).items() if isinstance(v, str)}
        reads = {str(k): v for k, v in _footer_dict(meta, POOL_READS_KEY).items() if _is_pool_read(v)}
        digest = meta.get(UIDS_KEY)
        types = {f.name: f.type for f in schema if f.name != "uid"}
        return ShardFile(path, rows, digest.decode() if digest else None, tokens, types, digests, reads)

    def _damaged_shard(self, path: Path, why: str, *, reader: bool = True) -> DamagedShard:
        if reader and self.writer_active():
            return DamagedShard(f"shard file {path} of the input store {self.root} {why}, and another run is writing "
                                "the store now: read it when that run has finished", path, why)
        return DamagedShard(f"the input store {self.root} is damaged: shard file {path.name} {why}; "
                            "`flyt-datacomp inputs compute` with the same inputs recomputes what is damaged", path, why)

    def writer_active(self) -> bool:
        """True while a run holds the store's writer lock (a reader's hint; it takes no lock)."""
        if not (self.root / LOCK).is_file():
            return False
        try:
            with os_lock(self.root / LOCK, "busy", required=False):
                return False
        except FlytInputError:
            return True

    def _checked_shard(self, shard: dict[str, Any], names: list[str], entries: dict[str, Any], *,
                       reader: bool = True) -> ShardFile:
        """The shard file of manifest entry ``shard``, checked to hold ``names`` as the manifest records them
        (``reader``: the caller does not hold the writer's lock, so damage may be a writer at work)."""
        path = self.shard_path(shard["stem"])
        try:
            info = self.shard_file(shard["stem"])
        except DamagedShard as exc:
            raise self._damaged_shard(path, exc.why, reader=reader) from None
        why = None
        if info is None:
            why = "is missing"
        elif info.rows != shard["rows"]:
            why = f"has {info.rows:,} rows, the manifest {shard['rows']:,}"
        elif info.uid_sha256 != shard["uid_sha256"]:
            why = ("holds other uids than the manifest records for it (a file of another shard or another store?)"
                   if info.uid_sha256 else "does not record which uids it holds (not written by an input store?)")
        else:
            for name in names:
                if not info.holds(name, entries[name]["token"]):
                    why = f"does not hold input {name!r}: {info.why_not(name, entries[name]['token'])}"
                    break
        if why is not None:
            raise self._damaged_shard(path, why, reader=reader)
        return info

    def held_inputs(self, stem: str, rows: int, uid_sha256: str, tokens: dict[str, str]) -> set[str]:
        """The inputs (of ``tokens``: name -> token) that the shard file holds with the values written
        with them; none when it is missing, unreadable or of other uids (a run then rewrites it)."""
        try:
            info = self.shard_file(stem)
        except DamagedShard:
            return set()
        if info is None or info.rows != rows or info.uid_sha256 != uid_sha256:
            return set()
        held = {n for n, t in tokens.items() if info.holds(n, t)}
        sealed = sorted(n for n in held if n in info.digests)
        if sealed:
            try:
                table = pq.ParquetFile(info.path).read(columns=sealed)
            except Exception:  # pyarrow raises several types for a damaged file
                return set()
            held -= {n for n in sealed if values_sha256(table.column(n).to_numpy()) != info.digests[n]}
        return held

    def read_inputs(self, shard: dict[str, Any], names: list[str], entries: dict[str, Any], *,
                    reader: bool = True) -> dict[str, np.ndarray]:
        """Raw (float32, NaN = no value) columns of one shard (a manifest ``shards`` entry), checked."""
        if not names:
            return {}
        info = self._checked_shard(shard, names, entries, reader=reader)
        try:
            table = pq.ParquetFile(info.path).read(columns=list(names))
        except Exception as exc:
            raise self._damaged_shard(info.path, f"is unreadable ({exc})", reader=reader) from None
        out = {n: np.array(table.column(n).to_numpy(), dtype=np.float32) for n in names}
        for n in names:
            if n in info.digests and values_sha256(out[n]) != info.digests[n]:
                raise self._damaged_shard(info.path, f"holds other values in input {n!r} than were written with it "
                                          "(edited after the store wrote it?)", reader=reader)
        return out

    def write_shard(self, stem: str, uids: pa.Array, columns: dict[str, np.ndarray], rows: int, uid_sha256: str,
                    tokens: dict[str, str], pool_reads: Mapping[str, dict] | None = None) -> None:
        """Add (or replace) ``columns`` in the shard file, atomically. ``tokens`` (name -> token) are every
        input of the manifest: a column of the file that none of them accounts for is dropped, and a file
        of other uids (or a damaged one) is started afresh. ``pool_reads``: for each new column that read
        the pool shard, what it read (:func:`pool_read`)."""
        from .pool import uid_column
        from .uids import uids_digest

        path = self.shard_path(stem)
        table, held, info = None, {}, None
        try:
            info = self.shard_file(stem)
            if info is not None and info.rows == rows and info.uid_sha256 == uid_sha256:
                table = pq.read_table(path)
                if uids_digest(uid_column(table.column("uid"), str(path))) != uid_sha256:
                    table = None
                else:
                    held = {n: t for n, t in info.tokens.items() if tokens.get(n) == t and n in table.column_names}
        except (FlytInputError, OSError, pa.ArrowException, KeyError):
            table = None
        if table is None:
            if uids_digest(uid_column(uids, f"the pool's shard {stem}")) != uid_sha256:
                raise FlytInputError(f"the pool's metadata shard {stem}.parquet changed while the store was computed "
                                     "(its uids are not the ones the run started with); run again")
            table, held = pa.table({"uid": uids}), {}
        table = table.select(["uid", *held])
        for name, values in columns.items():
            values = np.asarray(values, dtype=np.float32)
            if values.shape != (rows,):
                raise RuntimeError(f"input {name} gave shape {values.shape} for a shard of {rows} rows")
            column = pa.array(values, type=pa.float32())
            if name in table.column_names:
                table = table.set_column(table.column_names.index(name), name, column)
            else:
                table = table.append_column(name, column)
            held[name] = tokens[name]
        kept = info.digests if info is not None else {}
        digests = {n: kept[n] for n in held if n not in columns and n in kept}
        digests.update({n: values_sha256(np.asarray(v, dtype=np.float32)) for n, v in columns.items()})
        reads = {n: r for n, r in (info.pool_reads if info is not None else {}).items() if n in held and n not in columns}
        reads.update({n: r for n, r in (pool_reads or {}).items() if n in columns})
        table = table.replace_schema_metadata({UIDS_KEY: uid_sha256.encode(), TOKENS_KEY: json.dumps(held).encode(),
                                               DIGESTS_KEY: json.dumps(digests).encode(),
                                               POOL_READS_KEY: json.dumps(reads).encode()})
        with _writing(path), atomic_path(path) as tmp:
            pq.write_table(table, tmp)

    # ------------------------------------------------------------------ reading inputs

    def input_names(self) -> list[str]:
        """The complete inputs, in the order they were added."""
        return [n for n, e in self.manifest()["inputs"].items() if e["status"] == "complete"]

    def entry(self, name: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        inputs = (data or self.manifest())["inputs"]
        if name not in inputs:
            raise FlytInputError(f"the input store {self.root} has no input {quote(name)} "
                                 f"(inputs: {', '.join(inputs) or 'none'})")
        entry = inputs[name]
        if hand_edited(entry):
            raise FlytInputError(f"input {quote(name)} of the store {self.root} was changed after the store wrote it "
                                 f"(its entry in {MANIFEST} no longer matches its seal: edited by hand?); run "
                                 "`flyt-datacomp inputs compute` with this input again to restore it")
        if entry["status"] != "complete":
            raise FlytInputError(f"input {quote(name)} of the store {self.root} is not complete "
                                 f"({entry['status']}); run `flyt-datacomp inputs compute` again")
        stale = _stale_read(entry, inputs)
        if stale is not None:
            raise FlytInputError(f"input {quote(name)} of the store {self.root} was computed from input {quote(stale)}, "
                                 f"which has been recomputed (or removed) since; recompute {name} "
                                 f"(`flyt-datacomp inputs compute ... --recompute {name}`)")
        return entry

    def iter_columns(self, names: list[str], pool, *, fill: bool = True) -> Iterator[dict[str, np.ndarray]]:
        """The inputs, shard by shard in pool order, as float64 (missing values filled unless ``fill``
        is false: then NaN), after checking that the store belongs to ``pool`` and holds them."""
        data = self.manifest()
        entries = {n: self.entry(n, data) for n in names}
        for shard, pool_shard in zip(self.check_pool(pool, data), pool.shards):
            values = self.read_inputs(shard, list(names), data["inputs"])
            self.check_pool_reads(pool, pool_shard, {n: entries[n]["token"] for n in names})
            out = {}
            for n in names:
                v = values[n].astype(np.float64)
                absent = np.isnan(v)
                if absent.any() and entries[n]["missing_count"] == 0 or np.isinf(v).any():
                    what = "values that are not numbers" if absent.any() else "infinite values"
                    raise self._damaged_shard(self.shard_path(shard["stem"]),
                                              f"holds {what} in input {n!r}, which its manifest entry says has none")
                if fill and entries[n]["fill_value"] is not None:
                    v[absent] = entries[n]["fill_value"]
                out[n] = v
            yield out

    def changed_pool_reads(self, pool, pool_shard, tokens: Mapping[str, str]) -> tuple[dict[str, str], dict[str, dict]]:
        """Which inputs of ``tokens`` (name -> token) that the shard file holds read the pool shard's
        files as they no longer are: ``({name: what changed}, {name: its record with the files'
        current stamps})``, the second for inputs whose files were rewritten with the same values. A
        missing or damaged shard file holds nothing to compare (a run rewrites it, a reader refuses it)."""
        try:
            info = self.shard_file(shard_stem(pool_shard.parquet))
        except DamagedShard:
            return {}, {}
        if info is None:
            return {}, {}
        changed, restamped = {}, {}
        stamps = None
        for name, token in tokens.items():
            record = info.pool_reads.get(name)
            if record is None or not info.holds(name, token):
                continue
            stamps = stamps if stamps is not None else pool_stamps(pool, pool_shard)
            now = {f: stamps.get(f) for f in record["stamps"]}
            if now == record["stamps"]:
                continue
            data = pool.read_shard(pool_shard, record["columns"], record["npz_keys"])
            if data_sha256(data.columns, data.arrays) == record["sha256"]:
                restamped[name] = {**record, "stamps": now}
                continue
            files = {"parquet": pool_shard.parquet, "npz": pool_shard.npz}
            what = ", ".join(record["columns"] + record["npz_keys"])
            changed[name] = (f"the pool's {' and '.join(str(files[f]) for f in record['stamps'])} holds other values "
                             f"({what}) than when it was computed")
        return changed, restamped

    def check_pool_reads(self, pool, pool_shard, tokens: Mapping[str, str]) -> None:
        """Refuse inputs (of ``tokens``: name -> token) computed from what the pool shard no longer
        holds (metadata regenerated in place with the same uids but other values)."""
        changed, restamped = self.changed_pool_reads(pool, pool_shard, tokens)
        if changed:
            name, why = next(iter(changed.items()))
            raise FlytInputError(f"input {quote(name)} of the store {self.root} was computed from the pool, but {why}; "
                                 f"recompute it (`flyt-datacomp inputs compute ... --recompute {name}`)")
        if restamped:
            log.info("the pool's files of shard %s were rewritten with the same values; `flyt-datacomp inputs compute` "
                     "with the same inputs records their new times, so this check reads them no more",
                     shard_stem(pool_shard.parquet))

    def restamp(self, stem: str, records: Mapping[str, dict]) -> None:
        """Record new pool file stamps for inputs whose pool files were rewritten with the same values
        (the writer's lock held), so later reads need not compare the values again."""
        path = self.shard_path(stem)
        table = pq.read_table(path)
        meta = dict(table.schema.metadata or {})
        reads = {**_footer_dict(meta, POOL_READS_KEY), **records}
        meta[POOL_READS_KEY] = json.dumps(reads).encode()
        with _writing(path), atomic_path(path) as tmp:
            pq.write_table(table.replace_schema_metadata(meta), tmp)

    def columns(self, names: list[str], pool, *, fill: bool = True) -> dict[str, np.ndarray]:
        """Several inputs over the whole pool (float64, pool order), read in one pass into one array each."""
        out = {n: np.empty(pool.size, dtype=np.float64) for n in names}
        start = 0
        for part in self.iter_columns(list(names), pool, fill=fill):
            rows = len(part[names[0]]) if names else 0
            for n in names:
                out[n][start:start + rows] = part[n]
            start += rows
        return out

    def column(self, name: str, pool) -> np.ndarray:
        """One input over the whole pool (float64, pool order)."""
        return self.columns([name], pool)[name]

    # ------------------------------------------------------------------ checking the whole store

    def problems(self, data: dict[str, Any] | None = None) -> list[tuple[list[str], str]]:
        """What is damaged in the store's shard files: (the inputs affected, a description) pairs.
        An input still computing is not damaged by the shards it does not hold yet."""
        data = data or self.manifest()
        inputs = data["inputs"]
        out: list[tuple[list[str], str]] = []
        complete = [n for n, e in inputs.items() if e["status"] == "complete"]
        for shard in data["shards"]:
            try:
                self._checked_shard(shard, [], inputs, reader=False)
            except DamagedShard as exc:
                if complete or (inputs and exc.why != "is missing"):  # a first run cut short wrote no file yet
                    out.append((complete or list(inputs), f"shard file {exc.path.name} {exc.why}"))
                continue
            info = self.shard_file(shard["stem"])
            for n in complete:
                if not info.holds(n, inputs[n]["token"]):
                    out.append(([n], f"shard file {info.path.name} does not hold input {n!r}: "
                                     f"{info.why_not(n, inputs[n]['token'])}"))
            sealed = [n for n in complete if n in info.digests and info.holds(n, inputs[n]["token"])]
            if sealed:
                try:
                    table = pq.ParquetFile(info.path).read(columns=sealed)
                except Exception as exc:  # pyarrow raises several types for a damaged file
                    out.append((sealed, f"shard file {info.path.name} is unreadable ({exc})"))
                    continue
                for n in sealed:
                    if values_sha256(table.column(n).to_numpy()) != info.digests[n]:
                        out.append(([n], f"shard file {info.path.name} holds other values in input {n!r} than were "
                                         "written with it (edited after the store wrote it?)"))
        for n, e in inputs.items():
            if hand_edited(e):
                out.append(([n], f"input {n!r} was changed after the store wrote it: its entry in {MANIFEST} no "
                                 "longer matches its seal (edited by hand?)"))
            stale = _stale_read(e, inputs) if e["status"] == "complete" else None
            if stale is not None:
                out.append(([n], f"input {n!r} was computed from input {stale!r}, which has been recomputed (or "
                                 "removed) since"))
        return out

    # ------------------------------------------------------------------ one writer at a time

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's writer lock (:func:`flyt_datacomp.io.os_lock` on ``.lock``); a second
        writer is refused within 0.1 s (a reader's probe holds the lock for microseconds)."""
        if self.root.exists() and not self.root.is_dir():
            raise FlytInputError(f"the input store {self.root} is not a folder", params=["inputs_dir"])
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise FlytInputError(f"cannot create the input store {self.root}: {exc.strerror or exc}") from None
        with os_lock(self.root / LOCK, f"another run is writing the input store {self.root}; wait for it to finish",
                     retries=4):
            yield


def _footer_dict(meta: Mapping[bytes, bytes], key: bytes) -> dict:
    """A JSON object a shard file's footer holds under ``key`` (empty when absent or unreadable)."""
    try:
        value = json.loads(meta.get(key, b"{}"))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _is_pool_read(record: Any) -> bool:
    return (isinstance(record, dict) and isinstance(record.get("sha256"), str) and isinstance(record.get("stamps"), dict)
            and all(isinstance(record.get(k), list) for k in ("columns", "npz_keys")))


def _stale_read(entry: dict[str, Any], inputs: dict[str, Any]) -> str | None:
    """The stored input ``entry`` was computed from that has been recomputed since, if any."""
    for read, token in entry.get("reads", {}).items():
        if not isinstance(inputs.get(read), dict) or inputs[read].get("token") != token:
            return read
    return None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _is_digest(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and bool(_HEX.match(v))


def _json_kind(kind: type) -> str:
    return {str: "string", list: "list", dict: "object"}[kind]


def _shown(entry: dict, key: str) -> str:
    return "missing" if key not in entry else quote(entry[key])
