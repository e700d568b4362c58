"""Reading webdataset tar shards: listing a folder's shards and streaming a tar as raw samples.

A sample is the run of consecutive tar members that share a key (the member path up to the first
``.`` of its file name), as webdataset groups them; payloads stay undecoded bytes. Local paths and
fsspec URLs (``s3://``, ``gs://``, ``https://`` ...) both work.
"""

from __future__ import annotations

import posixpath
import tarfile
from collections.abc import Iterable, Iterator
from typing import Any

import fsspec

from .errors import FlytInputError


class EmptyShardFolder(FlytInputError):
    """A shard folder that exists but holds no ``.tar`` file."""


def list_shards(folder: str) -> list[str]:
    """The ``*.tar`` files of a folder (local path or fsspec URL), sorted by name, as URLs.

    Raises :class:`FlytInputError` if the folder is missing or holds no tar file.
    """
    url = str(folder)
    try:
        fs, root = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise FlytInputError(f"cannot open shard folder {url}: {exc}") from None
    if not fs.isdir(root):
        raise FlytInputError(f"shard folder {url} does not exist or is not a folder")
    names = sorted(
        posixpath.basename(p.rstrip("/")) for p in fs.ls(root, detail=False) if p.endswith(".tar")
    )
    if not names:
        raise EmptyShardFolder(f"shard folder {url} holds no .tar files")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [prefix + posixpath.join(root, n) for n in names]


def iter_tar(url: str, *, extensions: Iterable[str] | None = None, fs: Any = None) -> Iterator[dict[str, Any]]:
    """Stream a webdataset tar (any fsspec URL, or a path of the filesystem ``fs``) as raw sample dicts.

    Consecutive members sharing a key form one sample ``{"__key__": key, "__url__": url, "<ext>":
    bytes, ...}`` with lowercased extensions. ``extensions`` restricts which payloads are read: the
    others are skipped without copying and appear with an empty payload ``b""``, so a sample still
    shows which members it has. A corrupt or unreadable tar raises :class:`FlytInputError` naming it.
    """
    wanted = None if extensions is None else {e.lower() for e in extensions}
    current: dict[str, Any] | None = None
    try:
        opened = fs.open(url, "rb") if fs is not None else fsspec.open(url, "rb")
        with opened as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                dirname, base = posixpath.split(member.name)
                if "." not in base or base.startswith("."):
                    continue
                stem, ext = base.split(".", 1)
                key = posixpath.join(dirname, stem) if dirname not in ("", ".") else stem
                ext = ext.lower()
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                    current = {"__key__": key, "__url__": url}
                if wanted is None or ext in wanted:
                    data = tar.extractfile(member)
                    current[ext] = data.read() if data is not None else b""
                else:
                    current[ext] = b""  # present, payload not read
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FlytInputError(f"cannot read tar shard {url}: {exc}") from None
    if current is not None:
        yield current


def where(sample: dict[str, Any]) -> str:
    """A raw sample's place, for error messages: its key and its shard."""
    return f"sample {sample['__key__']!r} of {sample['__url__']}"
