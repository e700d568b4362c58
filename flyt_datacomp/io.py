"""Output files: atomic writes, output sets committed together, and their JSON sidecars.

Every output of the package is first written to a temporary file beside its destination and only
then moved into place, so a failure never leaves a half-written file at an output path. Temporary
files are named ``.<name>.<host>-<pid>-<token>.flyt-tmp``: a later run recognises the ones whose
process is gone and removes them. They are created like a normal file (mode 0666 minus the umask),
so collaborators can read outputs on shared file systems.

:class:`OutputSet` writes several files that belong together (a subset, its sidecar and its
histogram) and commits them as one: nothing at the destination changes until every file is
complete; the renames run with SIGINT/SIGTERM/SIGHUP deferred and are rolled back if one fails, and
a commit cut short by ``kill -9`` or a power cut leaves a journal that the next run on the same
output completes. Outputs at fsspec URLs (``s3://...``) are staged locally and uploaded object by
object under a temporary name, then moved into place, so no partial object is ever visible.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .errors import FlytInputError, quote

log = logging.getLogger(__name__)

TEMP_SUFFIX = ".flyt-tmp"  # a file being written
BACKUP_SUFFIX = ".flyt-old"  # the previous version of an output, kept during a commit
JOURNAL_SUFFIX = ".flyt-commit"  # a commit in progress
_OURS = re.compile(r"^\.(?P<name>.+)\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)-[0-9a-f]+(?P<kind>\.flyt-(?:tmp|old|commit))$")


# --------------------------------------------------------------------------- paths and names


_LOCAL_PROTOCOLS = ("file", "local")


def split_location(path: str | os.PathLike) -> tuple[str | None, str]:
    """The one place a user-given path or URL is told apart: ``(None, local path)`` for a file on
    this machine, or ``(protocol, url)`` for any other fsspec location.

    Local are plain paths and the URL forms of the local filesystem: ``file:///abs``, ``file:/abs``,
    ``file:rel``, ``local:///abs`` (``file://rel`` and ``local://rel`` are relative, as fsspec reads
    them). Everything with another protocol (``s3://``, ``memory://``, a chain ``a::b://``) is remote.
    """
    if isinstance(path, os.PathLike):
        return None, os.fspath(path)
    text = str(path)
    if "::" in text:
        return text.split("::", 1)[0].split("://", 1)[0], text
    protocol, sep, rest = text.partition("://")
    if sep and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*", protocol):
        if protocol.lower() in _LOCAL_PROTOCOLS:
            return None, rest or "."
        return protocol.lower(), text
    for local in _LOCAL_PROTOCOLS:
        if text.lower().startswith(local + ":"):
            return None, text[len(local) + 1:] or "."
    return None, text


def is_url(path: str | os.PathLike) -> bool:
    """True for a location that is not on this machine's filesystem (``s3://...``)."""
    return split_location(path)[0] is not None


def local_path(path: str | os.PathLike, what: str = "path") -> Path:
    """A local path from a plain path or a ``file:``/``local:`` URL; a remote URL is an input error
    naming ``what`` (a local path is needed there)."""
    protocol, where = split_location(path)
    if protocol is not None:
        raise FlytInputError(f"{what} must be a local path, got the {protocol} URL {path}")
    return Path(where).expanduser()


def sidecar_path(output: str | os.PathLike) -> Any:
    """The sidecar of ``out.npy`` is ``out.npy.json`` (a str for URLs, a Path otherwise)."""
    if is_url(output):
        return str(output) + ".json"
    output = local_path(output)
    return output.with_name(output.name + ".json")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def _token_name(target_name: str, suffix: str) -> str:
    return f".{target_name}.{_host()}-{os.getpid()}-{secrets.token_hex(4)}{suffix}"


def name_limit(folder: Path) -> int:
    """The longest file name (in bytes) the file system at ``folder`` (or its nearest existing parent)
    allows: 255 on the usual Linux and macOS file systems."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        return int(os.pathconf(probe, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def check_name_length(target: Path, option: str = "output") -> None:
    """Refuse, before any work, an output whose name (or the temporary names written beside it while
    it is committed) is longer than the file system allows."""
    limit = name_limit(target.parent)
    extra = len(os.fsencode(_token_name("", JOURNAL_SUFFIX)))
    for part in target.parts:
        if len(os.fsencode(part)) > limit:
            raise FlytInputError(f"`{option}` {quote(str(target), 120)}: the name {quote(part, 60)} is "
                                 f"{len(os.fsencode(part))} bytes long, more than the {limit} bytes a name may have "
                                 "here; choose a shorter one", params=[option])
    size = len(os.fsencode(target.name))
    if size + extra > limit:
        raise FlytInputError(f"`{option}` {quote(str(target), 120)}: its name is {size} bytes long, and the temporary "
                             f"files written beside it while it is committed add {extra} bytes, more than the {limit} "
                             f"bytes a name may have here; choose a name of at most {limit - extra} bytes",
                             params=[option])


def _create_exclusive(path: Path) -> None:
    """Create an empty file that must not exist yet, honouring the umask like a normal write."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))


def temp_sibling(target: Path, suffix: str = TEMP_SUFFIX, *, create: bool = True) -> Path:
    """A fresh, recognisable temporary path in ``target``'s folder (created empty by default)."""
    while True:
        path = target.parent / _token_name(target.name, suffix)
        if not create:
            if not os.path.lexists(path):
                return path
            continue
        try:
            _create_exclusive(path)
            return path
        except FileExistsError:  # pragma: no cover - a 32-bit token collision
            continue


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner_gone(match: re.Match) -> bool:
    """True when the file's writer ran on this host and has exited."""
    return match["host"] == _host() and not _process_alive(int(match["pid"]))


# --------------------------------------------------------------------------- single files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, temp_named_after: Path | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` if the block succeeds.

    The temporary name is made from ``path``'s name, or from ``temp_named_after`` (a file in the same
    folder) when stale-file cleanup should treat it as that file's.

    On any exception (Ctrl-C included) the temporary file is removed and ``path`` is untouched.
    The temporary name ends in ``.flyt-tmp``: writers that pick a format from the extension
    (``np.save``, matplotlib) must be given a file handle or an explicit format.
    """
    path = local_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(temp_named_after if temp_named_after is not None else path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        failed = write_failure(exc, path)
        if failed is not None:
            raise failed from None
        raise


_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO)


def write_failure(exc: BaseException, target: Any) -> FlytInputError | None:
    """The input error for a write that the file system refused (a full disk, a quota, a read-only
    or failing device), or None for any other exception."""
    if not isinstance(exc, OSError):
        return None
    code = exc.errno if isinstance(exc.errno, int) else None
    if code is None:  # pyarrow's IO errors carry the errno only in their text
        text = str(exc)
        code = next((c for c in _WRITE_ERRNOS if os.strerror(c) in text), None)
    if code not in _WRITE_ERRNOS:
        return None
    return FlytInputError(f"cannot write {target}: {os.strerror(code)}; what was there before is unchanged")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(dumps(obj))


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_DEFERRED_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold back SIGINT, SIGTERM and SIGHUP for the duration of the block (main thread only).

    A signal that arrives meanwhile is acted on when the block ends, so a Ctrl-C can never cut a
    commit in half. (Python runs signal handlers in the main thread whichever thread the OS
    delivers a signal to, so swapping the handlers is reliable where masking one thread is not.)
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    old = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in _DEFERRED_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        if pending:
            sig, handler = pending[0], old[pending[0]]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


# --------------------------------------------------------------------------- output sets


class OutputExistsError(FlytInputError):
    """An output path is taken and the caller did not ask to replace it."""


class OutputSet:
    """Files written together and committed as one (see the module docstring).

    Use :meth:`preflight` before any long work (it fails early on a folder that cannot be written,
    a directory in the way, or an existing output without ``overwrite``), then::

        with outputs:                      # stages a temporary file per target
            write(outputs.staged(target))  # write each file completely
        # committed here; on an exception nothing at the destination changed

    Without ``overwrite`` the commit refuses to replace a file that appeared after the run began
    (it uses an exclusive, no-replace link), so two runs on one output never silently replace each
    other's result.
    """

    def __init__(self, targets: Sequence[str | os.PathLike], *, overwrite: bool, option: str = "output"):
        if not targets:
            raise ValueError("an output set needs at least one target")
        self.remote = is_url(targets[0])
        if any(is_url(t) != self.remote for t in targets):
            raise FlytInputError("outputs of one set must all be local or all be URLs")
        self.targets = [str(t) if self.remote else local_path(t) for t in targets]
        self.overwrite = overwrite
        self.option = option
        self._staged: dict[Any, Path] = {}
        self._stage_dir: Path | None = None

    # ------------------------------------------------------------------ checks before work

    def preflight(self) -> None:
        """Fail now, with a clear message, if the outputs cannot be written later."""
        if self.remote:
            self._preflight_remote()
            return
        for target in self.targets:
            check_name_length(target, self.option)
        for folder in dict.fromkeys(t.parent for t in self.targets):
            ensure_writable_folder(folder, self.option)
        for target in self.targets:
            recover_interrupted(target)
        for target in self.targets:
            if target.is_dir():
                raise FlytInputError(f"output path {target} is a directory; choose another `{self.option}`",
                                     params=[self.option])
            if not self.overwrite and os.path.lexists(target):
                raise OutputExistsError(f"output {target} already exists; set `overwrite` to replace it",
                                        params=["overwrite"])

    def _preflight_remote(self) -> None:
        import fsspec

        for target in self.targets:
            try:
                fs, path = fsspec.core.url_to_fs(target)
            except (ImportError, ValueError) as exc:
                raise FlytInputError(f"cannot open output location {target}: {exc}") from None
            parent = path.rsplit("/", 1)[0] if "/" in path else path
            try:
                fs.makedirs(parent, exist_ok=True)
                probe = f"{parent}/{_token_name('write-probe', TEMP_SUFFIX)}"
                fs.pipe_file(probe, b"")
                fs.rm_file(probe)
            except Exception as exc:
                raise FlytInputError(f"output location {target} is not writable: {exc}") from None
            if fs.isdir(path):
                raise FlytInputError(f"output path {target} is a directory; choose another `{self.option}`",
                                     params=[self.option])
            if not self.overwrite and fs.exists(path):
                raise OutputExistsError(f"output {target} already exists; set `overwrite` to replace it",
                                        params=["overwrite"])

    # ------------------------------------------------------------------ staging and commit

    def staged(self, target: str | os.PathLike) -> Path:
        """The local temporary file to write ``target``'s content into."""
        key = str(target) if self.remote else local_path(target)
        try:
            return self._staged[key]
        except KeyError:
            raise KeyError(f"{target} is not a target of this output set") from None

    def __enter__(self) -> OutputSet:
        try:
            if self.remote:
                self._stage_dir = Path(tempfile.mkdtemp(prefix="flyt-stage-"))
                for i, target in enumerate(self.targets):
                    self._staged[target] = self._stage_dir / f"{i}-{target.rsplit('/', 1)[-1]}"
                    _create_exclusive(self._staged[target])
            else:
                for target in self.targets:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    self._staged[target] = temp_sibling(target)
        except BaseException:
            self._discard()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                if self.remote:
                    self._commit_remote()
                else:
                    self._commit_local()
        finally:
            self._discard()
        failed = write_failure(exc, self.targets[0]) if exc is not None else None
        if failed is not None:  # staging a file failed: nothing at the destination changed
            raise failed from None

    def _discard(self) -> None:
        for tmp in self._staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        if self._stage_dir is not None:
            shutil.rmtree(self._stage_dir, ignore_errors=True)
        self._staged = {}

    def _commit_local(self) -> None:
        entries = []
        for target in self.targets:
            tmp = self._staged[target]
            _fsync(tmp)
            entries.append({"temp": str(tmp), "target": str(target), "backup": None})
        journal = temp_sibling(self.targets[0], JOURNAL_SUFFIX, create=False)
        done: list[dict] = []
        with signals_deferred():
            try:
                if self.overwrite:  # name the backups first, so the journal lists every file we create
                    for e in entries:
                        if os.path.lexists(e["target"]) and not os.path.isdir(e["target"]):
                            e["backup"] = str(temp_sibling(Path(e["target"]), BACKUP_SUFFIX, create=False))
                _write_journal(journal, entries)
                for e in entries:
                    if e["backup"]:
                        _link_or_copy(Path(e["target"]), Path(e["backup"]))
                try:
                    for e in entries:
                        _place(Path(e["temp"]), Path(e["target"]), replace=self.overwrite)
                        done.append(e)
                except BaseException:
                    _roll_back(done)
                    raise
            except FileExistsError as exc:
                raise OutputExistsError(
                    f"output {exc.filename} appeared while this run was working (another run writing the "
                    f"same output?); it was left untouched and none of this run's outputs were written; "
                    f"set `overwrite` to replace it or choose another `{self.option}`", params=["overwrite", self.option]
                ) from None
            except OSError as exc:
                where = exc.filename or self.targets[0]
                raise FlytInputError(f"cannot write output {where}: {exc.strerror}; nothing was changed") from None
            finally:
                for e in entries:
                    if e["backup"]:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(e["backup"])
                with contextlib.suppress(FileNotFoundError):
                    journal.unlink()

    def _commit_remote(self) -> None:
        import fsspec

        moved = []
        for target in self.targets:
            fs, path = fsspec.core.url_to_fs(target)
            if not self.overwrite and fs.exists(path):
                raise OutputExistsError(
                    f"output {target} appeared while this run was working; it was left untouched; "
                    f"set `overwrite` to replace it or choose another `{self.option}`", params=["overwrite", self.option]
                )
            parent, name = path.rsplit("/", 1) if "/" in path else ("", path)
            tmp = f"{parent}/{_token_name(name, TEMP_SUFFIX)}" if parent else _token_name(name, TEMP_SUFFIX)
            try:
                fs.put_file(str(self._staged[target]), tmp)
                fs.mv(tmp, path)
                moved.append(target)
            except BaseException as exc:
                with contextlib.suppress(Exception):
                    if fs.exists(tmp):
                        fs.rm_file(tmp)
                if isinstance(exc, Exception):
                    done = f" ({', '.join(moved)} already written)" if moved else ""
                    raise FlytInputError(f"cannot upload output {target}: {exc}{done}") from None
                raise


def ensure_writable_folder(folder: str | os.PathLike, option: str = "output") -> None:
    """Create ``folder`` if needed and check that a file can be written in it, before any work."""
    folder = local_path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FlytInputError(f"cannot create output folder {folder} ({exc.strerror}); choose another `{option}`",
                             params=[option]) from None
    if not folder.is_dir():
        raise FlytInputError(f"output folder {folder} is not a folder; choose another `{option}`", params=[option])
    try:
        temp_sibling(folder / "write-probe").unlink()
    except OSError as exc:
        raise FlytInputError(f"output folder {folder} is not writable ({exc.strerror}); choose another `{option}`",
                             params=[option]) from None


def check_creatable(path: str | os.PathLike, option: str, *, folder: bool) -> None:
    """Refuse, without creating anything, a ``path`` a command could not write later: a folder where a
    file belongs (or the reverse), a file in the way of a folder to create, a folder that cannot be
    written, or a name longer than the file system allows."""
    path = local_path(path)
    what = "folder" if folder else "file"
    try:
        if not folder:
            check_name_length(path, option)
        if path.exists() and path.is_dir() != folder:
            kind = "a folder" if path.is_dir() else "a file"
            raise FlytInputError(f"`{option}` {path} is {kind}, not the {what} this command writes", params=[option])
        probe = path if folder else path.parent
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
        if not probe.is_dir():
            raise FlytInputError(f"cannot create `{option}` {path}: {probe} is a file, not a folder", params=[option])
        if not os.access(probe, os.W_OK | os.X_OK):
            raise FlytInputError(f"cannot create `{option}` {path}: {probe} is not writable", params=[option])
    except OSError as exc:
        raise FlytInputError(f"`{option}` {path} cannot be used: {exc.strerror or exc}", params=[option]) from None


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK, errno.EXDEV):
            raise
        shutil.copy2(src, dst)


def _place(tmp: Path, target: Path, *, replace: bool) -> None:
    """Move ``tmp`` onto ``target``: replacing it, or (``replace=False``) only if it is absent."""
    if replace:
        os.replace(tmp, target)
        return
    try:
        os.link(tmp, target)  # atomic, and fails if target exists
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, "exists", str(target)) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        _create_exclusive(target)  # no hard links here: reserve the name, then fill it
        os.replace(tmp, target)
        return
    os.unlink(tmp)


def _roll_back(done: list[dict]) -> None:
    for e in reversed(done):
        with contextlib.suppress(OSError):
            if e["backup"]:
                os.replace(e["backup"], e["target"])
                e["backup"] = None
            else:
                os.unlink(e["target"])


def _write_journal(journal: Path, entries: list[dict]) -> None:
    """Write the journal atomically; its temporary file is named after the first target, so that
    the stale-file cleanup of that target also removes it if this process dies mid-write."""
    with atomic_path(journal, temp_named_after=Path(entries[0]["target"])) as tmp:
        tmp.write_text(json.dumps({"host": _host(), "pid": os.getpid(), "entries": entries}))


def recover_interrupted(target: Path) -> None:
    """Finish commits to ``target`` that a dead process left half done; remove its stale files.

    A journal exists only after every file of its set was complete, so the commit is rolled
    forward: the remaining temporary files are moved into place and the backups of the old
    versions (all named in the journal, made only after it was written) are removed.
    """
    folder = target.parent
    if not folder.is_dir():
        return
    prefix = f".{target.name}."
    for name in sorted(os.listdir(folder)):
        m = _OURS.match(name)
        if not (name.startswith(prefix) and m and m["kind"] == JOURNAL_SUFFIX and _owner_gone(m)):
            continue
        path = folder / name
        try:
            entries = json.loads(path.read_text())["entries"]
        except (OSError, ValueError, KeyError, TypeError):
            entries = []
        for e in entries:
            with contextlib.suppress(OSError):
                if os.path.exists(e["temp"]):
                    os.replace(e["temp"], e["target"])
                if e.get("backup") and os.path.exists(e["backup"]):
                    os.unlink(e["backup"])
        log.warning("completed an interrupted commit of %s left by a killed run", ", ".join(e["target"] for e in entries))
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    for name in sorted(os.listdir(folder)):
        m = _OURS.match(name)
        if m and name.startswith(prefix) and m["kind"] != JOURNAL_SUFFIX and _owner_gone(m):
            with contextlib.suppress(FileNotFoundError):
                (folder / name).unlink()
                log.info("removed %s, left by a run that was killed", folder / name)


def temp_folder(target: Path) -> Path:
    """A fresh, empty folder beside ``target`` under a recognisable temporary name (made with the
    umask, like any folder), to be renamed onto ``target`` when complete; see
    :func:`remove_dead_temp_folders`."""
    while True:
        path = target.parent / _token_name(target.name, TEMP_SUFFIX)
        try:
            path.mkdir()
            return path
        except FileExistsError:  # pragma: no cover - a 32-bit token collision
            continue


def remove_dead_temp_folders(target: Path) -> None:
    """Remove the :func:`temp_folder` folders of ``target`` whose process ran on this host and has
    died (a ``kill -9`` mid-build): they can never be completed."""
    folder, prefix = target.parent, f".{target.name}."
    if not folder.is_dir():
        return
    for name in sorted(os.listdir(folder)):
        m = _OURS.match(name)
        if m and name.startswith(prefix) and m["kind"] == TEMP_SUFFIX and _owner_gone(m) and (folder / name).is_dir():
            shutil.rmtree(folder / name, ignore_errors=True)
            log.info("removed %s, left by a run that was killed", folder / name)


@contextlib.contextmanager
def os_lock(path: str | os.PathLike, busy: str, *, params: Sequence[str] = (), retries: int = 0,
            required: bool = True) -> Iterator[None]:
    """The package's one lock: an exclusive, non-blocking OS lock (``flock``; a byte-range lock on
    Windows) on the file or folder ``path``, held while the block runs and released by the OS when
    the holder exits or dies, so it never goes stale. A file is created if missing and never removed
    or rewritten (a waiter on a removed file would lock another inode than the next one); a folder
    is locked as it is. When another process holds it, ``retries`` short waits, then ``busy`` as an
    input error. Where the file system cannot lock: an error, or with ``required=False`` the block
    runs unlocked."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY) if path.is_dir() else os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        if not required:
            yield
            return
        raise FlytInputError(f"cannot open {path} to lock it: {exc.strerror or exc}") from None
    try:
        for attempt in range(retries + 1):
            held = _try_lock(fd, path, required=required)
            if held is not False:
                break
            if attempt == retries:
                raise FlytInputError(busy, params=params)
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


def _try_lock(fd: int, path: Path, *, required: bool) -> bool | None:
    """True when locked, False when another process holds the lock, None when the file system has no
    locks and the lock is not required."""
    try:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        else:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        if not required:
            return None
        raise FlytInputError(f"cannot lock {path} ({exc.strerror or exc}): its file system does not support "
                             "locks; use a local disk") from None
    return True


def check_free_space(folder: str | os.PathLike, nbytes: int, what: str) -> None:
    """Refuse, before any work, to write ``nbytes`` into a local folder that cannot hold them."""
    folder = local_path(folder)
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return
    if nbytes > free:
        raise FlytInputError(
            f"{what} would take {format_bytes(nbytes)} but {probe} has only {format_bytes(free)} free"
        )


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


# --------------------------------------------------------------------------- sidecars


def read_json_or_none(path: str | os.PathLike) -> Any:
    """The JSON content of ``path``, or None when it is missing or not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def provenance(**fields: Any) -> dict:
    """The fields every sidecar carries, plus ``fields``."""
    return {
        "package": "flyt-datacomp",
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **fields,
    }


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")
