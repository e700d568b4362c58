"""What every input-score provider shares: its spec, its registry, and the per-shard contract.

An input spec is ``[NAME=]KIND[:ARG...]``: colon-separated arguments, ``key=value`` for options
and bare values for the kind's positional arguments (a path may be an fsspec URL:
``file:s3://bucket/hype.parquet`` is read as one argument). ``NAME`` sets the column's name in the
store (default: the provider's own, e.g. ``neg_clip_loss_b32``).

An input's identity (recorded in ``inputs.json`` and compared on every run) is its spec, the
provider's ``version`` and :meth:`Provider.params`, and the size and sha256 of every file
:meth:`Provider.sources` names: a provider that reads a file lists it there, so a changed file is
never mistaken for the one the stored values came from.

A provider is one registered class. The driver calls :meth:`Provider.fit` once (loading targets,
fitting a classifier, a pass over the image shards), whose result must be small and picklable
(arrays, or paths of files it wrote into the store's work folder); then :meth:`Provider.compute`
turns one metadata shard's data into one float32 value per row (NaN = no value for that row). That
per-shard step is a pure function of (shard data, fitted state, shard name), so any executor may
run it and the bytes are the same.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import os
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np

from ...errors import FlytInputError, quote
from ...progress import progress_bar
from ...registry import KindRegistry
from ...store import NAME_PATTERN as _NAME
from ...store import is_reserved

PROVIDERS = KindRegistry("input provider")


@dataclasses.dataclass(frozen=True)
class Option:
    """A ``key=value`` option of a provider spec."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None


@dataclasses.dataclass
class FitContext:
    """What :meth:`Provider.fit` may use: the pool, the store's work folder, a seed, the device."""

    pool: Any  # flyt_datacomp.pool.Pool
    name: str  # the input's column name in the store
    work_dir: Any  # pathlib.Path inside the store for files a provider keeps (fitted models, joins)
    seed: int
    device: str
    progress: bool
    shards_dir: str | None = None  # image shards, for providers that read images
    sources: dict[str, Any] = dataclasses.field(default_factory=dict)  # {file: {bytes, sha256}} of sources()
    record: dict[str, Any] = dataclasses.field(default_factory=dict)  # facts fit adds to the manifest entry
    recompute: bool = False  # the run recomputes this input: redo what fit keeps in the work folder
    previous: dict[str, Any] | None = None  # the store's entry of this input, when the run continues or reuses it
    shared: dict[Any, Any] = dataclasses.field(default_factory=dict)  # shared by the fits of one run (work done once)
    run_tasks: Any = None  # runs a pass's tasks on a cluster, (fn, tasks) -> (index, result)s; None: this process
    partitions: int | None = None  # with run_tasks: how many parts a pool-wide pass is cut into (None: by size)


class Provider:
    """One kind of input score (see the module docstring)."""

    kind: ClassVar[str]
    version: ClassVar[str] = "1"
    help: ClassVar[str]
    positional: ClassVar[tuple[str, ...]] = ()  # names of the required bare arguments
    options: ClassVar[tuple[Option, ...]] = ()
    uses_gpu: ClassVar[bool] = False  # asks an executor (Ray) for a GPU per task
    columns: tuple[str, ...] = ()  # parquet columns each shard task reads
    npz_keys: tuple[str, ...] = ()  # npz arrays each shard task reads

    def __init__(self, spec: str, args: dict[str, Any]):
        self.spec = spec
        self.args = args

    # ------------------------------------------------------------------ identity

    def default_name(self) -> str:
        return self.kind

    def params(self) -> dict[str, Any]:
        """What the values depend on, recorded in ``inputs.json``."""
        return dict(self.args)

    def sources(self) -> list[str]:
        """The files the values are computed from (paths, URLs or globs): their size and sha256 are
        part of the input's identity."""
        return []

    def stored_inputs(self, pool: Any) -> tuple[str, ...]:
        """Inputs of the store this provider reads (computed before it, in the store or in the same run)."""
        return ()

    # ------------------------------------------------------------------ the work

    def fit(self, ctx: FitContext) -> Any:
        """Pool-level preparation, once, in the driver; the returned state goes to every task."""
        return None

    def compute(self, data: Any, state: Any, shard_name: str) -> np.ndarray:
        """One float32 value per row of the shard (``data`` is a :class:`flyt_datacomp.pool.ShardData`)."""
        raise NotImplementedError


register_provider = PROVIDERS.register  # a provider's ``kind`` is the first word of its specs


def split_spec(text: str) -> list[str]:
    """Split on ':' but keep URL schemes (``s3://x``) and Windows-free paths in one piece."""
    parts: list[str] = []
    for piece in text.split(":"):
        if parts and piece.startswith("//"):
            parts[-1] = f"{parts[-1]}:{piece}"
        else:
            parts.append(piece)
    return parts


def parse_spec(text: str) -> tuple[str, Provider]:
    """``[NAME=]KIND[:ARG...]`` -> (column name, provider)."""
    name = None
    head, sep, rest = text.partition("=")
    if sep and ":" not in head and _NAME.match(head) and head not in PROVIDERS:
        name, text = head, rest
    parts = split_spec(text)
    kind, raw = parts[0], parts[1:]
    if kind not in PROVIDERS:
        raise FlytInputError(f"unknown input kind {quote(kind)} in {quote(text)}; kinds: {', '.join(PROVIDERS)}")
    cls = PROVIDERS[kind]
    options = {o.name: o for o in cls.options}
    args: dict[str, Any] = {o.name: o.default for o in cls.options}
    positional, at = [], []
    for i, arg in enumerate(raw):
        key, eq, value = arg.partition("=")
        if eq and key in options:
            opt = options[key]
            try:
                parsed = opt.parse(value)
            except ValueError:
                raise FlytInputError(f"input {quote(text)}: bad value {quote(value)} for {key}") from None
            if opt.choices is not None and parsed not in opt.choices:
                raise FlytInputError(f"input {quote(text)}: {key} must be one of {', '.join(map(str, opt.choices))}")
            args[key] = parsed
        elif eq and not key.startswith(("/", ".")) and "/" not in key and key not in cls.positional:
            known = ", ".join(options) or "none"
            raise FlytInputError(f"input {quote(text)}: unknown option {quote(key)} for {kind} (options: {known})")
        else:
            positional.append(arg)
            at.append(i)
    if len(positional) > len(cls.positional) == 1 and at[-1] - at[0] == len(at) - 1:
        positional = [":".join(positional)]  # one path or URL holding ':' (/data/a:b/scores, http://host:8080/x)
    if len(positional) != len(cls.positional):
        want = " ".join(f"<{p}>" for p in cls.positional) or "no bare arguments"
        raise FlytInputError(f"input {quote(text)}: {kind} takes {want}, got {len(positional)}")
    args.update(zip(cls.positional, positional))
    provider = cls(text, args)
    name = name or provider.default_name()
    if not _NAME.match(name):
        raise FlytInputError(f"input name {quote(name)} must be letters, digits, '_', '.', '-' (give NAME=SPEC)")
    if is_reserved(name):
        raise FlytInputError(f"input name {quote(name)} is reserved: the store's shard files use it for their own "
                             "column; give the input another name (NAME=SPEC)")
    return name, provider


def source_identities(sources: Sequence[str], *, progress: bool = False) -> dict[str, dict[str, Any]]:
    """``{file: {"bytes": size, "sha256": digest}}`` of every file the paths, URLs or globs name (a
    name that matches nothing is left out: the provider's ``fit`` says it is missing). A file whose
    store already knows its sha256 (a Hugging Face LFS file, an object store's checksum) is not read
    for it; the others are read once per process and file version."""
    import fsspec

    out: dict[str, dict[str, Any]] = {}
    for source in sources:
        try:
            fs, path = fsspec.core.url_to_fs(os.path.expanduser(source))
            if glob.has_magic(path):
                files = sorted(fs.glob(path))
            else:
                files = [path] if fs.isfile(path) else []
            for f in progress_bar(files, desc="hashing the source files", unit="file",
                                  disable=not progress or len(files) < 2):
                key = source if len(files) == 1 and not glob.has_magic(path) else f
                out[key] = _file_identity(fs, f)
        except (OSError, ValueError, ImportError) as exc:
            raise FlytInputError(f"cannot read {quote(source)}: {exc}") from None
    return out


_IDENTITIES: dict[tuple, dict[str, Any]] = {}


def _file_identity(fs: Any, path: str) -> dict[str, Any]:
    info = fs.info(path)
    size = int(info.get("size") or 0)
    known = (info.get("lfs") or {}).get("sha256") if isinstance(info.get("lfs"), dict) else None
    known = known or info.get("sha256")
    if isinstance(known, str) and len(known) == 64:
        return {"bytes": size, "sha256": known}
    memo = (type(fs).__name__, path, size, info.get("mtime") or info.get("LastModified") or info.get("last_modified"))
    if memo[-1] is not None and memo in _IDENTITIES:
        return _IDENTITIES[memo]
    h = hashlib.sha256()
    with fs.open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    identity = {"bytes": size, "sha256": h.hexdigest()}
    if memo[-1] is not None:
        _IDENTITIES[memo] = identity
    return identity
