"""Reading and writing torch files safely.

Every checkpoint this package reads goes through :func:`load`: ``torch.load`` with
``weights_only=True`` (a planted pickle cannot run code), and one clear error for each way a file
can be wrong (missing, not a torch file at all, truncated or corrupt, holding arbitrary objects).
What the package saves holds only tensors, numbers, strings, lists, tuples and dicts, so it always
loads this way.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from .errors import FlytInputError, quote
from .io import atomic_path

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
_PICKLE_MAGIC = b"\x80"  # the legacy format starts with a pickle protocol opcode


class UnusableCheckpoint(FlytInputError):
    """A torch file that cannot be loaded (the message says why)."""


def save(obj: Any, path: str | os.PathLike, *, before_rename=None) -> None:
    """``torch.save`` to a temporary file, then rename: a crash never leaves a partial file.
    ``before_rename(tmp)`` runs once the temporary file is complete (to record its size and hash
    before the file appears under its name)."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
        if before_rename is not None:
            before_rename(tmp)


def load(path: str | os.PathLike, what: str = "checkpoint") -> Any:
    """Load a torch file with ``weights_only=True``; raise :class:`UnusableCheckpoint` if it is
    missing, not a torch file, truncated or corrupt, or holds objects beyond plain values."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UnusableCheckpoint(f"{what} {path} does not exist")
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise UnusableCheckpoint(f"{what} {path} is empty")
    if not (head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_MAGIC)):
        text = head.decode("utf-8", "replace")
        kind = "a text file" if text.isprintable() or text.strip().isprintable() else "some other kind of file"
        raise UnusableCheckpoint(
            f"{what} {path} is not a PyTorch file: it looks like {kind} (it starts with {quote(text[:24], 40)})"
        )
    unsafe = _unsafe_globals(path)
    if unsafe:
        raise UnusableCheckpoint(
            f"{what} {path} holds Python objects other than tensors and plain values ({', '.join(unsafe[:3])}); "
            "it was not loaded, because unpickling them could run arbitrary code (this package never writes such files)"
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object (a legacy-format file)
        raise UnusableCheckpoint(
            f"{what} {path} holds objects that a weights-only load refuses, or is corrupt ({_first_line(exc)})"
        ) from None
    except Exception as exc:  # zip/stream errors from a truncated or damaged file
        raise UnusableCheckpoint(f"{what} {path} is truncated or corrupt ({_first_line(exc)})") from None


def real_tensor(value: Any, where: str) -> torch.Tensor:
    """``value`` if it is a dense tensor of real numbers (floating point or integer) with its values
    in memory, else one error naming ``where`` and what it is instead (not a tensor, a sparse or
    meta-device tensor, complex or boolean values): ``weights_only`` loads all of these, and torch
    would turn complex numbers into real ones with only a warning."""
    if not isinstance(value, torch.Tensor):
        raise FlytInputError(f"{where} is a {type(value).__name__} ({quote(value, 40)}), not a tensor")
    if value.layout != torch.strided:
        raise FlytInputError(f"{where} is a {str(value.layout).removeprefix('torch.')} tensor, not a dense one")
    if value.device.type == "meta":
        raise FlytInputError(f"{where} is a meta-device tensor, which holds no values")
    if value.is_complex() or value.dtype == torch.bool:
        raise FlytInputError(f"{where} holds {str(value.dtype).removeprefix('torch.')} values, not real numbers")
    return value


def _unsafe_globals(path: str) -> list[str]:
    """Names of the non-allow-listed Python objects a zip-format torch file would unpickle
    (found without unpickling anything); empty when unknown (an old torch, a damaged file)."""
    finder = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if finder is None:
        return []
    try:
        return list(finder(path))
    except Exception:
        return []


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    first = lines[0] if lines else type(exc).__name__
    return first.split(". ")[0][:200]
