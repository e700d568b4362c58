"""A DataComp checkout and its Python: finding them, checking them, running their scripts.

DataComp lives in its own old environment (torch 1.13, numpy 1.23, webdataset 0.2.x), so this
package never imports it. Its scripts run as subprocesses of the user's DataComp Python; what we
need to know about that environment (versions, the checkout's scale table) comes from a small
probe script run the same way. A script's output is streamed live, kept in a log file when asked,
and its last lines are kept for the error message if it fails.
"""

from __future__ import annotations

import codecs
import collections
import dataclasses
import functools
import json
import os
import re
import shlex
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..console import say
from ..errors import ExternalToolError, FlytInputError
from ..folders import check_apart

ENV_DIR = "DATACOMP_DIR"
ENV_PYTHON = "DATACOMP_PYTHON"
# resharder.py uses webdataset.writer.gopen.Pipe, gone in webdataset 0.2.86 (the script then fails
# at import; 0.2.85 runs it).
WEBDATASET_TOO_NEW = (0, 2, 86)
TAIL_LINES = 30

_PROBE = r"""
import importlib.util, json, os, sys
info = {"python": sys.version.split()[0], "executable": sys.executable,
        "torch": importlib.util.find_spec("torch") is not None}
try:
    from importlib.metadata import version
    info["webdataset"] = version("webdataset")
except Exception:
    info["webdataset"] = None
root = sys.argv[1]
if os.path.isfile(os.path.join(root, "scale_configs.py")):
    sys.path.insert(0, root)
    try:
        import scale_configs
        info["scales"] = {s: scale_configs.get_scale_config(s) for s in scale_configs.available_scales()}
    except Exception as exc:
        info["scales_error"] = repr(exc)
print("FLYT-PROBE " + json.dumps(info))
"""


@dataclasses.dataclass(frozen=True)
class Environment:
    """What the probe found in the DataComp Python."""

    python: str
    executable: str
    webdataset: str | None
    torch: bool
    scales: dict[str, dict[str, Any]] | None
    scales_error: str | None = None


@dataclasses.dataclass(frozen=True)
class Checkout:
    """A DataComp checkout and the Python that runs its scripts."""

    root: Path
    python: str

    def script(self, name: str) -> Path:
        """The path of one of DataComp's scripts; an error naming it when it is missing."""
        path = self.root / name
        if not path.is_file():
            raise FlytInputError(
                f"DataComp script {name} not found in {self.root}: `datacomp_dir` (or ${ENV_DIR}) "
                "must be a checkout of the DataComp repository", params=["datacomp_dir"]
            )
        return path

    def environment(self) -> Environment:
        """Probe the DataComp Python (once per process); an error when it does not run."""
        return _probe(self.python, str(self.root))

    def require_old_webdataset(self) -> Environment:
        env = self.environment()
        if env.webdataset is None:
            raise FlytInputError(
                f"the DataComp python {self.python} has no webdataset; DataComp's resharder needs "
                "webdataset older than 0.2.86 (its requirements pin 0.2.31)"
            )
        if version_tuple(env.webdataset) >= WEBDATASET_TOO_NEW:
            raise FlytInputError(
                f"the DataComp python {self.python} has webdataset {env.webdataset}, but DataComp's "
                "resharder needs a version older than 0.2.86 (its requirements pin 0.2.31)"
            )
        return env

    def require_torch(self, script: str) -> Environment:
        env = self.environment()
        if not env.torch:
            raise FlytInputError(f"the DataComp python {self.python} has no torch, which {script} needs")
        return env

    def scales(self) -> dict[str, dict[str, Any]]:
        """The checkout's own scale table (``scale_configs.py``), read by the DataComp Python."""
        self.script("scale_configs.py")
        env = self.environment()
        if not env.scales:
            raise FlytInputError(
                f"cannot read the scales of {self.root / 'scale_configs.py'} with {self.python}"
                + (f": {env.scales_error}" if env.scales_error else "")
            )
        return env.scales

    def scale_config(self, scale: str) -> dict[str, Any]:
        scales = self.scales()
        if scale not in scales:
            raise FlytInputError(
                f"unknown scale {scale!r}: the checkout's scale_configs.py has {', '.join(sorted(scales))}"
            )
        return scales[scale]


def locate(datacomp_dir: str | None, datacomp_python: str | None) -> Checkout:
    """The checkout from ``--datacomp-dir`` / ``$DATACOMP_DIR`` and the Python from
    ``--datacomp-python`` / ``$DATACOMP_PYTHON`` (else ``python``)."""
    root = datacomp_dir or os.environ.get(ENV_DIR)
    if not root:
        raise FlytInputError(f"no DataComp checkout given: give `datacomp_dir` or set ${ENV_DIR}", params=["datacomp_dir"])
    path = Path(root).expanduser()
    if not path.is_dir():
        raise FlytInputError(f"DataComp checkout {path} does not exist or is not a folder")
    python = datacomp_python or os.environ.get(ENV_PYTHON) or "python"
    return Checkout(path.resolve(), python)


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading numeric release parts of a version string: ``"0.2.31"`` -> ``(0, 2, 31)``."""
    parts = []
    for piece in text.split("."):
        m = re.match(r"\d+", piece)
        if not m:
            break
        parts.append(int(m.group()))
        if m.group() != piece:
            break
    return tuple(parts)


@functools.cache
def _probe(python: str, root: str) -> Environment:
    try:
        proc = subprocess.run([python, "-c", _PROBE, root], capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FlytInputError(
            f"the DataComp python {python!r} cannot be started ({exc}); give `datacomp_python` or set "
            f"${ENV_PYTHON}", params=["datacomp_python"]
        ) from None
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("FLYT-PROBE ")]
    if proc.returncode != 0 or not lines:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise FlytInputError(
            f"the DataComp python {python!r} does not run (exit code {proc.returncode}: {last}); "
            f"give `datacomp_python` or set ${ENV_PYTHON}", params=["datacomp_python"]
        )
    info = json.loads(lines[-1][len("FLYT-PROBE "):])
    return Environment(info["python"], info["executable"], info.get("webdataset"), bool(info["torch"]),
                       info.get("scales"), info.get("scales_error"))


# --------------------------------------------------------------------------- records


def has_fields(record: Any, fields: dict[str, type | tuple[type, ...]]) -> bool:
    """True when ``record`` is a dict holding every dotted field (``"written.samples"``) with its type:
    a record file damaged or edited by hand is then not taken for a finished stage."""
    for dotted, kind in fields.items():
        value = record
        for key in dotted.split("."):
            if not isinstance(value, dict) or key not in value:
                return False
            value = value[key]
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            return False
    return True


# --------------------------------------------------------------------------- pass-through arguments


def _short_cluster(arg: str) -> str:
    """The flag letters of a single-dash argument as argparse may read them: ``-vo/x`` is ``-v -o /x``
    when ``-v`` takes no value, so every letter before the first other character may be a flag."""
    letters = ""
    for char in arg[1:]:
        if not char.isalpha():
            break
        letters += char
    return letters


def refuse_managed_flags(args: Sequence[str], managed: dict[str, str], script: str) -> None:
    """Refuse pass-through arguments that would override a flag this command sets itself.

    ``managed`` maps each such flag of the script (``--output-dir``, ``-o``) to the setting of ours
    that gives it. A long flag is caught in every spelling argparse accepts (``--flag=value`` and any
    abbreviation, i.e. a prefix), a short one also with its value attached (``-oVALUE``) and within a
    cluster of short flags (``-vo VALUE``, ``-voVALUE``: argparse reads each letter as a flag until
    one takes a value). The script's other flags are unknown here, so a cluster is refused when any
    of its leading letters is a managed flag.
    """
    longs = {f: s for f, s in managed.items() if f.startswith("--")}
    shorts = {f: s for f, s in managed.items() if not f.startswith("--")}
    for arg in args:
        if arg.startswith("--") and len(arg) > 2:
            name = arg.split("=", 1)[0]
            hits = [f for f in longs if f.startswith(name)]
        elif arg.startswith("-") and len(arg) > 1 and not arg[1].isdigit():
            name = arg
            letters = _short_cluster(arg)
            hits = [f for f in shorts if arg.startswith(f) or (len(f) == 2 and f[1] in letters)]
        else:
            continue
        if hits:
            setting = longs.get(hits[0]) or shorts[hits[0]]
            named = re.fullmatch(r"[A-Za-z_]\w*", setting) is not None
            shown = f"`{setting}`" if named else setting
            raise FlytInputError(
                f"the pass-through argument {name} would override {script}'s {hits[0]}, which this command "
                f"sets itself from {shown}; give {shown} instead", params=[setting] if named else []
            )


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n:,.1f} TiB"


# --------------------------------------------------------------------------- running scripts

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


@dataclasses.dataclass
class ScriptRun:
    """A finished script: its exit code, last output lines and wall time."""

    returncode: int
    tail: list[str]
    seconds: float


class _Tail:
    """Keeps the last complete lines of a byte stream (``\\r`` and ``\\n`` both end a line)."""

    def __init__(self, size: int, markers: Sequence[str]):
        self.lines: collections.deque[str] = collections.deque(maxlen=size)
        self.partial = ""
        self.markers = markers
        self.hit: str | None = None

    def feed(self, text: str) -> None:
        pieces = re.split(r"[\r\n]", self.partial + text)
        self.partial = pieces.pop()
        for piece in pieces:
            self._line(piece)

    def close(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = ""

    def _line(self, line: str) -> None:
        line = _ANSI.sub("", line).rstrip()
        if not line.strip():
            return
        self.lines.append(line)
        if self.hit is None and any(m in line for m in self.markers):
            self.hit = line


def open_log(log_path: Path):
    """``log_path`` opened for appending (its folder created); a one-line error when it cannot be."""
    try:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        return open(log_path, "ab")
    except OSError as exc:
        raise FlytInputError(f"cannot write the log file {log_path} (`log_path`): {exc}", params=["log_path"]) from None


def check_log(log_path: Path | None, inputs: Mapping[str, Any]) -> None:
    """Before any work: the log file must lie apart from the command's inputs (appending to one
    would damage it) and be writable."""
    if log_path is None:
        return
    check_apart(log_path, inputs, what=f"`log_path` {log_path}", params=["log_path"])
    open_log(log_path).close()


def run_script(
    cmd: Sequence[str],
    *,
    name: str,
    log_path: Path | None = None,
    fail_markers: Sequence[str] = (),
    tail_lines: int = TAIL_LINES,
) -> ScriptRun:
    """Run ``cmd``, streaming its output (stdout and stderr together) live to ours.

    The whole output goes to ``log_path`` when given. A non-zero exit, or an exit 0 after a line
    holding one of ``fail_markers`` (scripts that report some errors only in their log), raises
    :class:`ExternalToolError` with the exit code and the last lines.
    """
    cmd = [str(c) for c in cmd]
    say(f"$ {shlex.join(cmd)}")
    tail = _Tail(tail_lines, fail_markers)
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    start = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    log = None
    try:
        if log_path is not None:
            log = open_log(log_path)
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        except OSError as exc:
            raise FlytInputError(f"cannot start {name}: {exc}") from None
        try:
            while chunk := proc.stdout.read1(1 << 16):
                if log is not None:
                    log.write(chunk)
                    log.flush()
                text = decoder.decode(chunk)
                say(text, end="")
                tail.feed(text)
            returncode = proc.wait()
        except BaseException:  # e.g. Ctrl-C: the child got it too; let it finish, then go on
            proc.wait()
            raise
    finally:
        if log is not None:
            log.close()
    tail.close()
    run = ScriptRun(returncode, list(tail.lines), time.perf_counter() - start)
    if returncode != 0:
        raise ExternalToolError(_failure(name, f"failed with exit code {returncode}", run, log_path))
    if tail.hit is not None:
        raise ExternalToolError(_failure(name, f"exited 0 but reported an error ({tail.hit.strip()!r})",
                                         run, log_path))
    return run


def _failure(name: str, what: str, run: ScriptRun, log_path: Path | None) -> str:
    where = f"; full log: {log_path}" if log_path is not None else ""
    lines = "\n".join(f"    {ln}" for ln in run.tail) or "    (no output)"
    return f"{name} {what}{where}. Its last lines:\n{lines}"
