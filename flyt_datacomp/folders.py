"""What ``overwrite`` may remove: the one decision for every command that empties or replaces a folder.

A command may write into, empty or replace an output folder (or delete an output file) only when

* it is not, does not contain and does not lie inside any of the command's inputs (the shards, the
  subset file, the DataComp checkout, ...), compared as real paths: ``~``, relative paths, ``..``,
  trailing slashes and symbolic links are resolved first, and "is", "contains" and "lies inside"
  are refused alike;
* it is neither the root folder nor the user's home folder (nor a folder above it);
* it is absent or empty, or, with ``overwrite``, carries a marker file by which the same command
  recognises a folder it wrote before (``eval reshard``: ``flyt_reshard.json`` or its
  ``flyt_reshard_partial.json``; ``eval train``: ``flyt_train_start.json`` or ``flyt_train.json``;
  ``downstream build``: ``build.json``; ``train``: ``flyt_run.json``). A marker counts only when it is
  a JSON record naming that command as its writer (:meth:`OutputFolder.record` writes the field), so
  another program's ``build.json`` (or a demo pool's, or another command's) never makes a folder
  ours. Without ``overwrite`` a non-empty folder is refused.

:class:`OutputFolder` makes these checks (:meth:`~OutputFolder.check`, before any long work) and
does the deleting (:meth:`~OutputFolder.empty`, :meth:`~OutputFolder.replace_with`, which check
again first); :func:`check_output_file` does the same for a single output file (``eval evaluate``'s
results). :meth:`~OutputFolder.lock` keeps a second command off a folder that one is writing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from .errors import FlytInputError
from .io import is_url, local_path, os_lock, provenance

Location = str | os.PathLike

WRITER_FIELD = "written_by"  # in a marker: the command that wrote it (and so may empty its folder)
_MARKER_LIMIT = 1 << 20  # a marker is a small JSON record; a larger file is no marker of ours

_SETTING = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def real_path(path: Location) -> Path:
    """``path`` as the file system sees it: ``~`` expanded, absolute, ``..`` and symbolic links resolved
    (as far as the path exists)."""
    return Path(os.path.realpath(local_path(path)))


def _same(a: Path, b: Path) -> bool:
    """The same path, or the same existing file or folder reached by another path (a bind mount)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def relation(path: Path, other: Path) -> str | None:
    """How two real paths overlap: ``"is"``, ``"contains"`` (``other`` lies below ``path``),
    ``"lies inside"`` (``path`` lies below ``other``), or None when they are apart. Existing folders
    are compared by identity too, so a folder mounted at two places is recognised."""
    if _same(path, other):
        return "is"
    if any(_same(path, p) for p in other.parents):
        return "contains"
    if any(_same(other, p) for p in path.parents):
        return "lies inside"
    return None


def _local_pieces(location: Location) -> list[Location]:
    """The local paths in an input location: none for a URL or an fsspec chain; each part of
    ``a::b`` (train.py's several data folders)."""
    if isinstance(location, os.PathLike):
        return [location]
    pieces = [p for p in str(location).split("::") if p]
    if any(is_url(p) for p in pieces):
        return []
    return pieces


def _name(key: str) -> tuple[str, list[str]]:
    """How a message names an input: a setting name becomes "the `name`" (shown as its flag)."""
    if _SETTING.fullmatch(key):
        return f"the `{key}`", [key]
    return key, []


def check_apart(path: Location, inputs: Mapping[str, Location | None], *, what: str,
                params: Sequence[str] = ()) -> Path:
    """Refuse ``path`` when it is, contains or lies inside one of ``inputs`` (name -> location; a
    setting name or a description such as ``"the subset file"``); return its real path.

    ``what`` names ``path`` in the message (``"`output_dir` /x"``), with ``params`` its settings.
    Remote inputs (URLs) cannot overlap a local path and are skipped.
    """
    real = real_path(path)
    for key, location in inputs.items():
        if location is None:
            continue
        for piece in _local_pieces(location):
            other = real_path(piece)
            how = relation(real, other)
            if how is None:
                continue
            name, names = _name(key)
            shown = str(local_path(piece))
            resolved = f" (both resolve to {real})" if how == "is" and str(local_path(path)) != str(real) else ""
            raise FlytInputError(
                f"{what} {how} {name} {shown}{resolved}; an output must be apart from the command's inputs",
                params=[*params, *names],
            )
    return real


@dataclasses.dataclass(frozen=True)
class OutputFolder:
    """An output folder of ``command``, which recognises its own earlier output by ``markers``.

    ``what`` names the folder in messages (``"`output_dir`"``, ``"experiment folder"``) and ``params``
    lists the settings it mentions; ``inputs`` maps each input's setting name (or description) to
    its location.
    """

    path: Path
    command: str
    markers: tuple[str, ...]
    inputs: Mapping[str, Location | None] = dataclasses.field(default_factory=dict)
    what: str = "`output_dir`"
    params: tuple[str, ...] = ("output_dir",)

    def _label(self) -> str:
        path = local_path(self.path)
        try:
            link = f" (a link to {real_path(path)})" if path.is_symlink() and path.exists() else ""
        except OSError:
            link = ""
        return f"{self.what} {path}{link}"

    def _error(self, text: str, *extra: str) -> FlytInputError:
        return FlytInputError(f"{self._label()} {text}", params=[*self.params, *extra])

    def check(self, *, overwrite: bool) -> Path:
        """Refuse the folder unless this command may write into it (emptying it first when
        ``overwrite`` and it holds something); return its real path."""
        try:
            return self._check(overwrite)
        except OSError as exc:  # a name too long, a folder that cannot be listed, ...
            raise self._error(f"cannot be used: {exc}") from None

    def _check(self, overwrite: bool) -> Path:
        real = self.check_place()
        path = local_path(self.path)
        if not path.is_dir() or not any(path.iterdir()):
            return real
        if not overwrite:
            raise self._error("is not empty; set `overwrite` to replace its contents", "overwrite")
        if not self.is_own():
            found = [m for m in self.markers if os.path.lexists(path / m)]
            why = (f"its {found[0]} is no record written by {self.command}" if found
                   else f"it has no {' or '.join(self.markers)}")
            raise self._error(
                f"holds files that {self.command} did not write ({why}); `overwrite` only "
                "empties a folder this command wrote: empty it yourself or choose another folder", "overwrite"
            )
        return real

    def check_place(self) -> Path:
        """The checks that do not depend on what the folder holds: a folder (or nothing) at the path,
        not the root or home folder, apart from every input. Return its real path."""
        try:
            return self._check_place()
        except OSError as exc:
            raise self._error(f"cannot be used: {exc}") from None

    def _check_place(self) -> Path:
        path = local_path(self.path)
        if os.path.lexists(path) and not path.exists():
            raise self._error(f"is a symbolic link to {os.readlink(path)}, which does not exist")
        if path.exists() and not path.is_dir():
            raise self._error("exists and is not a folder")
        real = real_path(path)
        if real == Path(real.anchor):
            raise self._error("is the root folder; give the output a folder of its own")
        home = real_path(Path.home())
        if relation(real, home) in ("is", "contains"):
            raise self._error(f"{'is' if real == home else 'contains'} your home folder {home}; "
                              "give the output a folder of its own")
        check_apart(path, self.inputs, what=self._label(), params=self.params)
        return real

    def record(self, **fields) -> dict:
        """A marker's content: provenance, ``fields``, and this command as the writer that
        :meth:`is_own` looks for."""
        return provenance(**{WRITER_FIELD: self.command}, **fields)

    def is_own(self) -> bool:
        """True when the folder carries one of this command's markers: a plain file holding a JSON
        record that names this command as its writer."""
        path = local_path(self.path)
        return any(written_by(path / m) == self.command for m in self.markers)

    def create(self) -> Path:
        """Create the folder (and its parents) if it is absent; return its path."""
        path = local_path(self.path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise self._error(f"cannot be created: {exc.strerror or exc}") from None
        return path

    def empty(self) -> Path:
        """Check again (as with ``overwrite``), then create the folder or delete everything in it
        (symbolic links inside are removed, never followed; the markers last, so a folder whose
        emptying is cut short is still recognised); return its path."""
        self.check(overwrite=True)
        path = local_path(self.path)
        if path.is_dir():
            try:
                for child in sorted(path.iterdir(), key=lambda c: c.name in self.markers):
                    if child.is_dir() and not child.is_symlink():
                        shutil.rmtree(child)
                    else:
                        child.unlink()
            except OSError as exc:
                raise self._error(f"cannot be emptied: {exc}") from None
        return self.create()

    def replace_with(self, new: Path, *, overwrite: bool) -> Path:
        """Check again, then put the folder ``new`` (a sibling of the real folder, on the same file
        system) in its place, deleting the old one; return the real path. Through a symbolic
        link, the folder it points to is replaced and the link kept."""
        real = self.check(overwrite=overwrite)
        if real.is_dir():
            shutil.rmtree(real)
        os.replace(new, real)
        return real

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an OS lock on the (existing) folder while the block runs; a second command that asks
        for it meanwhile is refused at once. The OS releases it when the holder dies. Where the file
        system cannot lock (some network file systems), the block runs unlocked."""
        with lock_folder(local_path(self.path), f"{self.what} {self.path}", self.params):
            yield


def written_by(marker: Path) -> str | None:
    """The command a marker file names as its writer (None: not a file, not a small JSON record, or
    no writer named)."""
    try:
        if marker.is_symlink() or not marker.is_file() or marker.stat().st_size > _MARKER_LIMIT:
            return None
        record = json.loads(marker.read_bytes())
    except (OSError, ValueError):
        return None
    writer = record.get(WRITER_FIELD) if isinstance(record, dict) else None
    return writer if isinstance(writer, str) else None


@contextlib.contextmanager
def lock_folder(path: Path, label: str, params: Sequence[str] = ()) -> Iterator[None]:
    """The package's lock (:func:`flyt_datacomp.io.os_lock`) on the folder ``path`` itself: no lock
    file is created, so the folder stays as its writer expects it, empty or not; where the file
    system cannot lock, the block runs unlocked."""
    with os_lock(path, f"{label} is in use by another command right now; wait for it to finish or choose another "
                 "folder", params=params, required=False):
        yield


def check_output_file(path: Location, inputs: Mapping[str, Location | None], *, what: str,
                      params: Sequence[str] = ()) -> Path:
    """Refuse to replace or delete the output file ``path`` when it is something other than a
    file (a folder, a broken link) or overlaps one of ``inputs``; return its path."""
    path = local_path(path)
    try:
        if os.path.lexists(path) and not path.is_file():
            kind = "a folder" if path.is_dir() else "not a file"
            raise FlytInputError(f"{what} {path} is {kind}, not a file this command wrote", params=list(params))
    except OSError as exc:
        raise FlytInputError(f"{what} {path} cannot be used: {exc}", params=list(params)) from None
    check_apart(path, inputs, what=f"{what} {path}", params=params)
    return path
