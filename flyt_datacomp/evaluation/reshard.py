"""``eval reshard``: DataComp's ``resharder.py`` on a subset, with a memory check and a count check.

Facts from DataComp's resharder that this module relies on:

* every input sample whose ``.json`` uid occurs k times in the (sorted) subset is written k times,
  keyed ``<uid>-0`` .. ``<uid>-(k-1)``; uids without an image in the shards are silently skipped,
  and a worker that fails only logs an error: the exit code alone proves nothing;
* ``-j`` worker processes (at most one per input shard) each wrap their stream of output samples in
  webdataset's shuffle with ``--shuffle-bufsize`` as both the buffer size and the initial fill, so
  each worker holds up to that many samples in memory (copies of one example share its bytes);
* each output shard gets ``{:08d}_stats.json`` with ``"successes"``, the samples it really holds.

Before starting we print the shuffle buffer's memory per worker and refuse settings that cannot fit;
afterwards the samples written must equal the subset entries that have an image in the shards.

The resharder needs an empty output folder and renames every file in it at the end, so it writes
into a working folder inside ours; a marker (``flyt_reshard_partial.json``) sits beside it from the
start, so a folder left by a run killed at any moment is still recognised as ours (``overwrite``
then empties it), and a resharder left running by a killed parent writes only to its own working
folder. When it has finished, its files move up and the record replaces the marker.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..console import say
from ..errors import FlytInputError, OutputCheckError
from ..folders import Location, OutputFolder
from ..io import read_json_or_none, temp_folder, write_json
from ..shards import index_shards, list_tars, open_folder
from ..tars import iter_tar
from ..uids import read_subset, uids_to_hex
from .datacomp import Checkout, check_log, has_fields, human_bytes, refuse_managed_flags, run_script

PAPER_SHUFFLE_BUFSIZE = 1_500_000  # the FLYT paper's buffer for repeated subsets
ENTRY_OVERHEAD_BYTES = 400  # one buffered copy: a small dict and its "<uid>-k" key string
RECORD_FILE = "flyt_reshard.json"
PARTIAL_FILE = "flyt_reshard_partial.json"  # a reshard under way or cut short: the folder is ours to redo
WORK_NAME = "resharding"  # the working folder inside the output: .resharding.<host>-<pid>-<token>.flyt-tmp
# resharder.py's flags that this command sets itself, and the setting each comes from
MANAGED_FLAGS = {"--input-dir": "shards_dir", "-i": "shards_dir", "--output-dir": "output_dir", "-o": "output_dir",
                 "--subset-file": "the SUBSET argument", "-s": "the SUBSET argument",
                 "--shuffle-bufsize": "shuffle_bufsize"}


# --------------------------------------------------------------------------- pure core


@dataclasses.dataclass(frozen=True)
class Coverage:
    """How a subset meets the images of a shards folder."""

    entries: int
    distinct_uids: int
    max_repetitions: int
    entries_without_image: int
    uids_without_image: int
    uids_with_several_images: int
    expected_samples: int  # what the resharder must write: sum of copies x images per uid


def coverage(counts: np.ndarray, images: np.ndarray) -> Coverage:
    """``counts``: copies asked per distinct subset uid; ``images``: images of each in the shards."""
    counts = np.asarray(counts, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    absent = images == 0
    return Coverage(
        entries=int(counts.sum()),
        distinct_uids=len(counts),
        max_repetitions=int(counts.max()) if len(counts) else 0,
        entries_without_image=int(counts[absent].sum()),
        uids_without_image=int(absent.sum()),
        uids_with_several_images=int((images > 1).sum()),
        expected_samples=int((counts * images).sum()),
    )


@dataclasses.dataclass(frozen=True)
class BufferEstimate:
    """Memory the resharder's shuffle buffers need."""

    bufsize: int
    workers: int
    held_per_worker: int  # samples one worker's buffer holds at its fullest
    distinct_fraction: float  # share of those that are distinct examples (copies share bytes)
    sample_bytes: float
    bytes_per_worker: int

    @property
    def total_bytes(self) -> int:
        return self.bytes_per_worker * self.workers


def harmonic(k: np.ndarray) -> np.ndarray:
    """H(k) = 1 + 1/2 + ... + 1/k for positive integers ``k``."""
    k = np.asarray(k, dtype=np.int64)
    if len(k) == 0:
        return np.zeros(0)
    table = np.concatenate(([0.0], np.cumsum(1.0 / np.arange(1, int(k.max()) + 1))))
    return table[k]


def estimate_buffer(bufsize: int, workers: int, counts: np.ndarray, images: np.ndarray,
                    sample_bytes: float) -> BufferEstimate:
    """Memory per worker of a shuffle buffer of ``bufsize`` samples over this subset's output.

    A worker's stream brings each example's k copies one after another; the buffer draws a uniform
    random sample each step once full, so a sample stays about ``bufsize`` steps (geometrically), and
    an example stays until the last of its k copies leaves: on average H(k) times as long. In steady
    state the buffer therefore holds ``bufsize * E[H(k)] / E[k]`` distinct examples (k over the
    examples written), each costing its bytes once, plus a small dict per copy. A worker whose whole
    share is smaller than the buffer holds only its share. ``sample_bytes`` is the shards' mean tar
    bytes per sample: the payload plus tar headers, which covers Python's per-object overhead.
    """
    counts = np.asarray(counts, dtype=np.int64)
    images = np.asarray(images, dtype=np.int64)
    written = images > 0
    runs = images[written].astype(np.float64)  # each image of a uid is one run of k copies
    k = counts[written]
    if bufsize <= 0 or runs.sum() == 0:
        return BufferEstimate(max(bufsize, 0), workers, 0, 1.0, sample_bytes, 0)
    mean_k = float((runs * k).sum() / runs.sum())
    mean_h = float((runs * harmonic(k)).sum() / runs.sum())
    fraction = min(1.0, mean_h / mean_k)
    share = math.ceil(float((runs * k).sum()) / max(workers, 1))
    held = min(bufsize, share)
    per_worker = int(held * (fraction * sample_bytes + ENTRY_OVERHEAD_BYTES))
    return BufferEstimate(bufsize, workers, held, fraction, sample_bytes, per_worker)


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, else free physical pages; None when unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_buffer_fits(est: BufferEstimate, available: int | None) -> None:
    """Refuse a shuffle buffer that ``workers`` workers cannot hold in the memory available."""
    if available is None or est.total_bytes <= available:
        return
    raise FlytInputError(
        f"the resharder's shuffle buffer needs about {human_bytes(est.bytes_per_worker)} per worker "
        f"({est.held_per_worker:,} samples, {est.distinct_fraction:.0%} of them distinct examples of "
        f"{est.sample_bytes / 1e3:,.1f} kB), {human_bytes(est.total_bytes)} for {est.workers} workers, but only "
        f"{human_bytes(available)} of memory is available; lower `workers` or `shuffle_bufsize` "
        "(0 turns shuffling off)", params=["workers", "shuffle_bufsize"]
    )


# --------------------------------------------------------------------------- outputs


@dataclasses.dataclass(frozen=True)
class Written:
    """What the resharder wrote, from its per-shard stats (and its meta.json when present)."""

    shards: int
    samples: int
    meta_output_count: int | None


def count_written(output_dir: Path) -> Written:
    """Sum the ``"successes"`` of every output shard's stats file."""
    tars = sorted(output_dir.glob("*.tar"))
    total = 0
    for tar in tars:
        stats = tar.with_name(tar.stem + "_stats.json")
        try:
            total += int(json.loads(stats.read_text())["successes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise OutputCheckError(f"output shard {tar} has no readable stats file {stats.name}: {exc}") from None
    meta = output_dir / "meta.json"
    meta_count = None
    if meta.is_file():
        try:
            meta_count = int(json.loads(meta.read_text())["output_count"])
        except (ValueError, KeyError, TypeError):
            meta_count = None
    return Written(len(tars), total, meta_count)


def copies_written(output_dir: Path) -> collections.Counter:
    """Copies per hex uid in the output shards, from their ``<uid>-<k>.json`` members."""
    copies: collections.Counter = collections.Counter()
    for tar in sorted(output_dir.glob("*.tar")):
        for sample in iter_tar(str(tar), extensions=("json",)):
            if "json" in sample:
                copies[posixpath.basename(sample["__key__"]).rsplit("-", 1)[0]] += 1
    return copies


def compare_copies(expected: dict[str, int], got: collections.Counter) -> list[str]:
    """Descriptions of the uids whose copies differ (at most 5), empty when all match."""
    bad = [u for u in sorted(set(expected) | set(got)) if expected.get(u, 0) != got.get(u, 0)]
    return [f"{u}: expected {expected.get(u, 0)}, found {got.get(u, 0)}" for u in bad[:5]] + (
        [f"... and {len(bad) - 5} more"] if len(bad) > 5 else [])


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- the command


def check_stats_files(shards_dir: str) -> None:
    """DataComp's resharder skips a shard without ``{stem}_stats.json`` (or a ``sizes.json`` entry)."""
    fs, folder = open_folder(shards_dir)
    names = set(posixpath.basename(p.rstrip("/")) for p in fs.ls(folder, detail=False))
    if "sizes.json" in names:
        return
    lacking = [t for t in list_tars(fs, folder) if t[:-4] + "_stats.json" not in names]
    if lacking:
        raise FlytInputError(
            f"{len(lacking)} shard(s) in {shards_dir} have no _stats.json (first: {lacking[0]}); "
            "DataComp's resharder would skip them: restore the img2dataset stats files"
        )


def default_bufsize(counts: np.ndarray) -> int:
    """The paper's 1.5M buffer when the subset repeats uids, no shuffling otherwise."""
    return PAPER_SHUFFLE_BUFSIZE if len(counts) and int(np.max(counts)) > 1 else 0


def print_coverage(cov: Coverage, written: int | None = None) -> None:
    say(f"subset entries:           {cov.entries:,} ({cov.distinct_uids:,} distinct uids, "
               f"up to {cov.max_repetitions} copies)")
    say(f"entries without an image: {cov.entries_without_image:,} "
               f"({cov.uids_without_image:,} uids not in the shards)")
    if cov.uids_with_several_images:
        say(f"uids with several images: {cov.uids_with_several_images:,} (each image is copied)")
    say(f"samples expected:         {cov.expected_samples:,}")
    if written is not None:
        say(f"samples written:          {written:,}")


def reshard(
    checkout: Checkout,
    subset: Path,
    shards_dir: str,
    output_dir: Path,
    *,
    workers: int | None = None,
    shuffle_bufsize: int | None = None,
    overwrite: bool = False,
    verify_copies: bool = False,
    extra_args: Sequence[str] = (),
    log_path: Path | None = None,
    progress: bool = True,
    other_inputs: Mapping[str, Location | None] | None = None,
) -> dict[str, Any]:
    """Check the prerequisites, run DataComp's resharder, check its output; return the record
    (also written to ``output_dir/flyt_reshard.json``). ``output_dir`` must lie apart from the
    inputs, and from ``other_inputs`` (setting name or description -> location)."""
    script = checkout.script("resharder.py")
    env = checkout.require_old_webdataset()
    uids, counts = read_subset(subset)
    if workers is not None and workers < 1:
        raise FlytInputError(f"`workers` must be at least 1, got {workers}", params=["workers"])
    if shuffle_bufsize is not None and shuffle_bufsize < 0:
        raise FlytInputError(f"`shuffle_bufsize` must be 0 (off) or positive, got {shuffle_bufsize}",
                             params=["shuffle_bufsize"])
    refuse_managed_flags(extra_args, MANAGED_FLAGS, "resharder.py")
    folder = output_folder(checkout, subset, shards_dir, output_dir, other_inputs)
    folder.check(overwrite=overwrite)
    check_log(log_path, {**folder.inputs, "output_dir": output_dir})  # the resharder needs the output empty
    check_stats_files(shards_dir)

    index = index_shards(shards_dir, progress=progress)
    images = index.images_of(uids)
    cov = coverage(counts, images)
    print_coverage(cov)
    check_has_images(cov, subset, shards_dir)
    workers = workers or os.cpu_count() or 1
    effective_workers = min(workers, len(index.shards))
    bufsize = default_bufsize(counts) if shuffle_bufsize is None else shuffle_bufsize
    est = estimate_buffer(bufsize, effective_workers, counts, images, index.mean_sample_bytes)
    if bufsize:
        say(f"shuffle buffer:           {bufsize:,} samples per worker; mean sample "
                   f"{index.mean_sample_bytes / 1e3:,.1f} kB in the shards; about "
                   f"{human_bytes(est.bytes_per_worker)} per worker, {human_bytes(est.total_bytes)} for "
                   f"{effective_workers} worker(s)")
        check_buffer_fits(est, available_memory_bytes())
    else:
        say("shuffle buffer:           off (copies of an example stay side by side)")

    folder.create()
    with folder.lock():
        folder.empty()
        with _marked_if_failed(folder, subset, shards_dir):
            write_json(output_dir / PARTIAL_FILE, folder.record(
                output=str(output_dir), inputs={"subset": str(subset), "shards_dir": shards_dir}, state="resharding"))
            work = temp_folder(output_dir / WORK_NAME)  # empty, as the resharder needs; same file system
            cmd = [checkout.python, script, "-i", shards_dir, "-o", work.resolve(), "-s", subset.resolve(),
                   "-j", str(workers), "--shuffle-bufsize", str(bufsize), *extra_args]
            run = run_script(cmd, name="DataComp's resharder.py", log_path=log_path)
            move_up(work, output_dir)

            written = count_written(output_dir)
            print_coverage(cov, written.samples)
            if written.meta_output_count is not None and written.meta_output_count != written.samples:
                raise OutputCheckError(
                    f"the resharder's meta.json in {output_dir} counts {written.meta_output_count:,} samples written, "
                    f"but its shards' stats files add up to {written.samples:,}"
                )
            if written.samples != cov.expected_samples:
                raise OutputCheckError(
                    f"the resharder wrote {written.samples:,} samples to {output_dir}, but {cov.expected_samples:,} "
                    "subset entries have an image in the shards; look for errors in its log above"
                )
            verified = None
            if verify_copies:
                expected = {u: int(c * n) for u, c, n in zip(uids_to_hex(uids), counts, images) if n}
                bad = compare_copies(expected, copies_written(output_dir))
                if bad:
                    raise OutputCheckError(f"copies per uid in {output_dir} differ from the subset: " + "; ".join(bad))
                verified = True
                say("copies per uid:           all match the subset")
            record = folder.record(
                output=str(output_dir),
                inputs={"subset": str(subset.resolve()), "subset_sha256": file_sha256(subset),
                        "shards_dir": shards_dir, "datacomp_dir": str(checkout.root)},
                parameters={"workers": workers, "shuffle_bufsize": bufsize, "extra_args": list(extra_args)},
                datacomp_python={"path": checkout.python, "python": env.python, "webdataset": env.webdataset},
                coverage=dataclasses.asdict(cov),
                shards={"count": len(index.shards), "images": index.num_images,
                        "mean_sample_bytes": index.mean_sample_bytes},
                shuffle_buffer=dataclasses.asdict(est),
                written={"shards": written.shards, "samples": written.samples, "copies_verified": verified},
                seconds=round(run.seconds, 3),
            )
            write_json(output_dir / RECORD_FILE, record)
            (output_dir / PARTIAL_FILE).unlink(missing_ok=True)
            return record


def move_up(work: Path, output_dir: Path) -> None:
    """Move everything the resharder wrote in ``work`` into ``output_dir`` (renames on one file system),
    then remove ``work``: DataComp's train.py reads every subfolder of its data folder too."""
    for child in sorted(work.iterdir()):
        target = output_dir / child.name
        if target.exists() or target.is_symlink():
            raise OutputCheckError(f"the resharder wrote {child.name}, which {output_dir} already holds")
        os.replace(child, target)
    work.rmdir()


def output_folder(checkout: Checkout, subset: Path, shards_dir: str, output_dir: Path,
                  other_inputs: Mapping[str, Location | None] | None = None) -> OutputFolder:
    """The resharded folder, which must lie apart from the shards, the subset, the checkout and
    ``other_inputs`` (those of a command that reshards as one of its stages)."""
    return OutputFolder(
        output_dir, "eval reshard", (RECORD_FILE, PARTIAL_FILE),
        inputs={"shards_dir": shards_dir, "the subset file": subset, "the DataComp checkout": checkout.root,
                **(other_inputs or {})},
    )


def check_has_images(cov: Coverage, subset: Path, shards_dir: str) -> None:
    """Refuse a subset of which no entry has an image in the shards: the resharder would write nothing."""
    if cov.expected_samples:
        return
    why = "it is empty" if not cov.entries else f"none of its {cov.entries:,} entries ({cov.distinct_uids:,} uids) is there"
    raise FlytInputError(
        f"no entry of subset file {subset} has an image in the shards of {shards_dir} ({why}); "
        "nothing to reshard: was the subset made from this pool?"
    )


@contextlib.contextmanager
def _marked_if_failed(folder: OutputFolder, subset: Path, shards_dir: str) -> Iterator[None]:
    """On any failure (Ctrl-C included) leave ``PARTIAL_FILE`` in the output folder, saying why: it holds
    what this command wrote, so a later ``overwrite`` may empty it. (A run killed outright leaves the
    marker written at its start.)"""
    try:
        yield
    except BaseException as exc:
        with contextlib.suppress(OSError):
            write_json(folder.path / PARTIAL_FILE, folder.record(
                output=str(folder.path), inputs={"subset": str(subset), "shards_dir": shards_dir},
                failed=f"{type(exc).__name__}: {exc}"))
        raise


RECORD_FIELDS = {"inputs.subset": str, "inputs.subset_sha256": str, "written.samples": int,
                 "coverage.entries": int, "coverage.distinct_uids": int, "coverage.entries_without_image": int}


def read_record(output_dir: Path) -> dict[str, Any] | None:
    """The record of a finished, checked reshard in ``output_dir`` (None when there is none, or it is
    damaged: the reshard is then redone)."""
    record = read_json_or_none(output_dir / RECORD_FILE)
    return record if has_fields(record, RECORD_FIELDS) else None
