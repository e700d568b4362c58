"""Training data for FLYT: deterministic, exactly resumable batch streams over webdataset shards.

Two streams share one machinery (:class:`ShardStream`):

* :class:`UpstreamStream` reads DataComp image shards (img2dataset layout: ``<key>.jpg``,
  ``<key>.txt``, ``<key>.json``) and joins every sample to its pool position through the ``uid`` in
  its json (never the key, which is positional). A :class:`FeatureTable` indexed by pool position
  supplies the scoring model's input: a float32 ``(N, k)`` table of input scores (M-FLYT) or the
  float16 ``(N, d)`` image and text embeddings (E-FLYT, converted to float32 only per batch).
* :class:`DownstreamStream` reads labelled shards (``<key>.jpg`` + ``<key>.cls``), as written by
  :func:`flyt_datacomp.downstream.build_downstream_shards`.

Determinism and exact resume
----------------------------
A stream belongs to one *slot* ``(rank, world_size, worker_id, num_workers)``; the slot index is
``rank * num_workers + worker_id`` out of ``world_size * num_workers``. For each epoch ``e`` the
sorted shard list is shuffled with ``numpy.random.default_rng([seed, e])`` (the same on every slot)
and dealt round-robin to the slots, so slots read disjoint shards. If there are fewer shards than
slots, every slot reads all shards (in the same shuffled order) and keeps only the raw samples whose
running index ``j`` satisfies ``j % slots == slot``: still disjoint and covering, and no slot is
empty (at the cost of every slot reading every byte; only sensible for small sets).

The slot's samples then pass a per-epoch seeded shuffle buffer and are cut into batches of a fixed
size from the endless concatenation of epochs ``0, 1, 2, ...`` (a batch may straddle two epochs).
Everything is a pure function of ``(seed, shard list, slot, batch_size, shuffle_buffer)``, so
batch ``k`` can be reproduced by streaming and dropping the first ``k * batch_size`` samples; that
skip happens on raw bytes, before any JPEG decoding or tokenisation, so it costs only I/O.
Changing any of those parameters (including the number of workers) changes the stream.

:class:`BatchIterableDataset` wraps a stream for ``torch.utils.data.DataLoader(batch_size=None,
num_workers=W)``: global batch ``i`` always comes from logical stream ``i % W`` (local batch
``i // W``), so the sequence of batches is the same with 0 workers (the main process interleaves
the W logical streams itself) and with W worker processes, and a global start index resumes it.

Counters (``seen``, ``joined``, ``no_features``, ``bad``) live in each stream object; in DataLoader
worker processes they stay in the workers, where they are logged at every epoch end. Use
:func:`scan_upstream` for a whole-folder join report including "features without images".
"""

from __future__ import annotations

import copy
import dataclasses
import io
import json
import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import torch
from PIL import Image

from flyt_datacomp.errors import FlytInputError
from flyt_datacomp.uids import check_uid_array, hex_to_uids, lookup, uid_order

logger = logging.getLogger(__name__)

_JOIN_CHUNK = 256  # raw samples joined to the pool index per vectorised lookup
_MAX_EMPTY_EPOCHS = 20  # consecutive empty epochs a slot of several tolerates before giving up
NOT_READ = b""  # payload of a member that ``iter_tar(extensions=...)`` did not read


# --------------------------------------------------------------------------- shard files


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
        raise FlytInputError(f"shard folder {url} holds no .tar files")
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    prefix = "" if protocol in ("file", "local") else f"{protocol}://"
    return [prefix + posixpath.join(root, n) for n in names]


def iter_tar(url: str, *, extensions: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """Stream a webdataset tar (any fsspec URL) as raw sample dicts.

    Consecutive members sharing a key (the path up to the first ``.`` of the file name) form one
    sample ``{"__key__": key, "__url__": url, "<ext>": bytes, ...}`` with lowercased extensions.
    ``extensions`` restricts which payloads are read (the others are skipped without copying).
    A corrupt or unreadable tar raises :class:`FlytInputError` naming it.
    """
    wanted = None if extensions is None else {e.lower() for e in extensions}
    current: dict[str, Any] | None = None
    try:
        with fsspec.open(url, "rb") as fh, tarfile.open(fileobj=fh, mode="r|*") as tar:
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
                    current[ext] = NOT_READ  # present, payload skipped
    except FlytInputError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise FlytInputError(f"cannot read tar shard {url}: {exc}") from None
    if current is not None:
        yield current


# --------------------------------------------------------------------------- pool join


class UidIndex:
    """Pool uids (``u8,u8`` in pool order) sorted once, for joining sample uids to pool positions."""

    def __init__(self, pool_uids: np.ndarray, sorted_order: np.ndarray | None = None):
        pool_uids = check_uid_array(np.asarray(pool_uids), source="pool uids")
        self.order = uid_order(pool_uids) if sorted_order is None else np.asarray(sorted_order)
        self.sorted = pool_uids[self.order]
        self.size = len(pool_uids)

    @classmethod
    def from_pool(cls, pool) -> UidIndex:
        """Build from a :class:`flyt_datacomp.pool.Pool` (reuses its sort)."""
        return cls(pool.uids, pool.sorted_order)

    def positions(self, uids: np.ndarray) -> np.ndarray:
        """Pool positions of ``u8,u8`` uids; -1 where a uid is not in the pool."""
        pos = lookup(self.sorted, uids)
        out = np.full(len(uids), -1, dtype=np.int64)
        hit = pos >= 0
        out[hit] = self.order[pos[hit]]
        return out


class FeatureTable:
    """Per-pool-position inputs of the scoring model.

    ``FeatureTable(scores)`` (M-FLYT): a ``(N, k)`` table of input scores, kept as float32.
    ``FeatureTable(img, txt)`` (E-FLYT): ``(N, d)`` image and text embeddings, kept in their stored
    dtype (float16; memory maps work) and converted to float32 only when a batch is gathered.
    """

    def __init__(self, table: np.ndarray, txt: np.ndarray | None = None):
        if txt is None:
            table = np.asarray(table, dtype=np.float32)
            if table.ndim == 1:
                table = table[:, None]
            if table.ndim != 2:
                raise FlytInputError(f"score table must be (N, k), got shape {table.shape}")
            self.arrays: tuple[np.ndarray, ...] = (table,)
        else:
            if table.ndim != 2 or txt.shape != table.shape:
                raise FlytInputError(
                    f"image and text embeddings must both be (N, d), got {table.shape} and {txt.shape}"
                )
            self.arrays = (table, txt)
        self.size = len(self.arrays[0])

    @property
    def is_embeddings(self) -> bool:
        return len(self.arrays) == 2

    @classmethod
    def from_pool_embeddings(cls, pool, prefix: str = "b32") -> FeatureTable:
        """E-FLYT features from a pool's npz keys ``<prefix>_img`` / ``<prefix>_txt`` (float16)."""
        return cls(pool.embeddings(f"{prefix}_img"), pool.embeddings(f"{prefix}_txt"))

    def gather(self, positions: np.ndarray) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """float32 tensors for these pool positions: ``(B, k)`` or ``((B, d), (B, d))``."""
        positions = np.asarray(positions, dtype=np.int64)
        out = [torch.from_numpy(np.asarray(a[positions], dtype=np.float32)) for a in self.arrays]
        return (out[0], out[1]) if self.is_embeddings else out[0]


# --------------------------------------------------------------------------- slots and shuffling


@dataclasses.dataclass(frozen=True)
class Slot:
    """Which part of the data one stream reads: a (rank, worker) out of (world_size, num_workers)."""

    rank: int = 0
    world_size: int = 1
    worker_id: int = 0
    num_workers: int = 1

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise FlytInputError(f"rank {self.rank} is out of range for world size {self.world_size}")
        if self.num_workers < 1 or not 0 <= self.worker_id < self.num_workers:
            raise FlytInputError(f"worker id {self.worker_id} is out of range for {self.num_workers} workers")

    @property
    def index(self) -> int:
        return self.rank * self.num_workers + self.worker_id

    @property
    def count(self) -> int:
        return self.world_size * self.num_workers


def assign_shards(shards: Sequence[str], *, seed: int, epoch: int, slot: Slot) -> tuple[list[str], int, int]:
    """This slot's shards for an epoch, as ``(shards, sample_stride, sample_offset)``.

    The shard list is shuffled with ``default_rng([seed, epoch])`` and dealt round-robin. With
    fewer shards than slots, every slot gets all shards and keeps raw samples ``j`` with
    ``j % stride == offset`` (sample-level splitting), so no slot is left empty.
    """
    rng = np.random.default_rng([seed, epoch])
    shuffled = [shards[i] for i in rng.permutation(len(shards))]
    n = slot.count
    if len(shards) >= n:
        return shuffled[slot.index::n], 1, 0
    return shuffled, n, slot.index


def shuffle_buffer(samples: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A seeded shuffle buffer: once ``size`` items are held, emit a random one per new item."""
    if size <= 1:
        yield from samples
        return
    buf: list[Any] = []
    draws = np.empty(0)
    k = 0

    def pick() -> Any:
        nonlocal draws, k
        if k >= len(draws):
            draws, k = rng.random(1024), 0
        i = int(draws[k] * len(buf))
        k += 1
        buf[i], buf[-1] = buf[-1], buf[i]
        return buf.pop()

    for s in samples:
        buf.append(s)
        if len(buf) >= size:
            yield pick()
    while buf:
        yield pick()


# --------------------------------------------------------------------------- decoding helpers


def default_image_transform(image_size: int | tuple[int, int], mean=None, std=None) -> Callable:
    """open_clip's evaluation transform (resize, centre crop, normalise) for ``image_size``;
    ``mean``/``std`` default to open_clip's (OpenAI's) pixel statistics."""
    import open_clip

    return open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)


def decode_image(data: bytes, transform: Callable, where: str) -> torch.Tensor:
    """JPEG (or any PIL format) bytes -> RGB -> ``transform``; errors name the sample."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im = im.convert("RGB")
    except Exception as exc:
        raise FlytInputError(f"cannot decode image of {where}: {exc}") from None
    return transform(im)


# --------------------------------------------------------------------------- the stream machinery


class ShardStream:
    """Deterministic, resumable stream of fixed-size batches over the shards of one folder.

    Subclasses define :meth:`_prepare` (validate / join raw samples, counting the rejects) and
    :meth:`decode` (raw batch -> tensors). ``iter_raw_batches(start)`` yields undecoded batches,
    ``batches(start)`` (and ``iter(stream)``) decoded ones; both are endless.
    """

    kind = "shards"
    _read_extensions: tuple[str, ...] | None = None

    def __init__(
        self,
        shards: str | Sequence[str],
        *,
        batch_size: int,
        seed: int = 0,
        shuffle_buffer: int = 1000,
        rank: int = 0,
        world_size: int = 1,
        worker_id: int = 0,
        num_workers: int = 1,
    ):
        self.shards = list_shards(shards) if isinstance(shards, str) else list(shards)
        if not self.shards:
            raise FlytInputError(f"{self.kind} stream: no shards given")
        if batch_size < 1:
            raise FlytInputError(f"batch size must be positive, got {batch_size}")
        if seed < 0:
            raise FlytInputError(f"seed must be non-negative, got {seed}")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.shuffle_buffer = int(shuffle_buffer)
        self.slot = Slot(rank, world_size, worker_id, num_workers)
        self.reset_counters()

    # -------------------------------------------------------------- configuration

    def with_slot(self, **changes: int) -> ShardStream:
        """A copy reading another slot (``rank``, ``world_size``, ``worker_id``, ``num_workers``)."""
        new = copy.copy(self)
        new.slot = dataclasses.replace(self.slot, **changes)
        new.reset_counters()
        return new

    def reset_counters(self) -> None:
        self.seen = 0  # raw samples of this slot read
        self.bad = 0  # raw samples missing a needed payload or with a malformed one
        self.kept = 0  # samples that entered the shuffle buffer

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen, "bad": self.bad, "kept": self.kept}

    # -------------------------------------------------------------- hooks

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def _empty_message(self, epoch: int) -> str:
        return (
            f"{self.kind} stream (rank {self.slot.rank}, worker {self.slot.worker_id}) got no usable "
            f"samples in epoch {epoch} from {len(self.shards)} shard(s) starting with {self.shards[0]}"
        )

    def _end_of_epoch(self, epoch: int) -> None:
        logger.info(
            "%s stream rank %d/%d worker %d/%d epoch %d done: %s", self.kind, self.slot.rank,
            self.slot.world_size, self.slot.worker_id, self.slot.num_workers, epoch, self.counters(),
        )

    # -------------------------------------------------------------- sample streams

    def _slot_raw(self, epoch: int) -> Iterator[dict[str, Any]]:
        shards, stride, offset = assign_shards(self.shards, seed=self.seed, epoch=epoch, slot=self.slot)
        j = 0
        for url in shards:
            for sample in iter_tar(url, extensions=self._read_extensions):
                if stride == 1 or j % stride == offset:
                    self.seen += 1
                    yield sample
                j += 1

    def _prepared(self, epoch: int) -> Iterator[dict[str, Any]]:
        chunk: list[dict[str, Any]] = []
        for sample in self._slot_raw(epoch):
            chunk.append(sample)
            if len(chunk) >= _JOIN_CHUNK:
                yield from self._prepare(chunk)
                chunk = []
        if chunk:
            yield from self._prepare(chunk)

    def iter_epoch(self, epoch: int) -> Iterator[dict[str, Any]]:
        """This slot's usable raw samples of one epoch, in shuffled order."""
        rng = np.random.default_rng([self.seed, epoch, self.slot.index, self.slot.count, 0x5EED])
        for sample in shuffle_buffer(self._prepared(epoch), self.shuffle_buffer, rng):
            self.kept += 1
            yield sample

    def iter_samples(self) -> Iterator[dict[str, Any]]:
        """The endless concatenation of epochs 0, 1, 2, ...; raises if an epoch is empty."""
        epoch, empty_run = 0, 0
        while True:
            n = 0
            for sample in self.iter_epoch(epoch):
                n += 1
                yield sample
            self._end_of_epoch(epoch)
            # A slot of several may draw only unusable shards in one epoch (they are reshuffled
            # every epoch); a lone slot with an empty epoch has an empty data set.
            empty_run = empty_run + 1 if n == 0 else 0
            if empty_run > (0 if self.slot.count == 1 else _MAX_EMPTY_EPOCHS):
                raise FlytInputError(self._empty_message(epoch))
            epoch += 1

    def iter_raw_batches(self, start_batch: int = 0) -> Iterator[list[dict[str, Any]]]:
        """Undecoded batches ``start_batch, start_batch + 1, ...`` (earlier ones skipped undecoded)."""
        if start_batch < 0:
            raise FlytInputError(f"start batch must be non-negative, got {start_batch}")
        samples = self.iter_samples()
        for _ in range(start_batch * self.batch_size):
            next(samples)
        while True:
            yield [next(samples) for _ in range(self.batch_size)]

    def batches(self, start_batch: int = 0) -> Iterator[dict[str, Any]]:
        """Decoded batches from ``start_batch`` on (endless)."""
        for raw in self.iter_raw_batches(start_batch):
            yield self.decode(raw)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self.batches(0)


def _where(sample: dict[str, Any]) -> str:
    return f"sample {sample['__key__']!r} of {sample['__url__']}"


class UpstreamStream(ShardStream):
    """Image-text pairs joined to pool features by json ``uid``.

    Batches are dicts: ``images`` (B, 3, H, W) float, ``texts`` (B, ctx) long, ``features``
    ((B, k) float32, or a pair of (B, d) float32 for embeddings), ``positions`` (B,) long pool
    positions, ``uids`` (list of B hex strings). Samples lacking jpg/txt/json or with a malformed
    json uid count as ``bad``; samples whose uid is not in the pool count as ``no_features``; both
    are skipped.
    """

    kind = "upstream"

    def __init__(
        self,
        shards: str | Sequence[str],
        index: UidIndex,
        features: FeatureTable,
        *,
        image_transform: Callable,
        tokenizer: Callable,
        batch_size: int,
        **kwargs: Any,
    ):
        super().__init__(shards, batch_size=batch_size, **kwargs)
        if features.size != index.size:
            raise FlytInputError(
                f"feature table has {features.size} rows but the pool has {index.size} uids"
            )
        self.index = index
        self.features = features
        self.image_transform = image_transform
        self.tokenizer = tokenizer

    def reset_counters(self) -> None:
        super().reset_counters()
        self.joined = 0
        self.no_features = 0
        self._joined_bits: np.ndarray | None = None  # bitset over pool positions, built lazily
        self.full_passes = 0  # epochs this slot completed

    def counters(self) -> dict[str, int]:
        return {"seen": self.seen, "joined": self.joined, "no_features": self.no_features, "bad": self.bad}

    @property
    def distinct_joined(self) -> int:
        """Distinct pool positions joined so far by this stream."""
        if self._joined_bits is None:
            return 0
        return int(np.unpackbits(self._joined_bits).sum())

    @property
    def features_without_images(self) -> int | None:
        """Pool size minus distinct joined uids; ``None`` until this stream completed a full pass
        over all shards (only a single-slot stream, world size 1 and one worker, ever does)."""
        if self.full_passes == 0 or self.slot.count != 1:
            return None
        return self.index.size - self.distinct_joined

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ok, hexes = [], []
        for s in chunk:
            if "jpg" not in s or "json" not in s or "txt" not in s:
                self.bad += 1
                continue
            try:
                uid = json.loads(s["json"])["uid"]
                if not isinstance(uid, str) or len(uid) != 32:
                    raise ValueError(uid)
                hexes.append(uid.lower())
            except Exception:
                self.bad += 1
                logger.debug("skipping %s: no valid uid in its json", _where(s))
                continue
            ok.append(s)
        if not ok:
            return []
        try:
            uids = hex_to_uids(hexes)
        except FlytInputError:  # some uid not hex: check them one by one
            good, good_hex = [], []
            for s, h in zip(ok, hexes):
                try:
                    hex_to_uids([h])
                except FlytInputError:
                    self.bad += 1
                    continue
                good.append(s)
                good_hex.append(h)
            ok, hexes = good, good_hex
            if not ok:
                return []
            uids = hex_to_uids(hexes)
        pos = self.index.positions(uids)
        out = []
        hit_positions = pos[pos >= 0]
        for s, h, p in zip(ok, hexes, pos):
            if p < 0:
                self.no_features += 1
                continue
            s["__uid__"] = h
            s["__pos__"] = int(p)
            out.append(s)
        self.joined += len(out)
        if len(hit_positions):
            if self._joined_bits is None:
                self._joined_bits = np.zeros((self.index.size + 7) // 8, dtype=np.uint8)
            np.bitwise_or.at(
                self._joined_bits, hit_positions >> 3, (np.uint8(128) >> (hit_positions & 7)).astype(np.uint8)
            )
        return out

    def _end_of_epoch(self, epoch: int) -> None:
        self.full_passes += 1
        super()._end_of_epoch(epoch)
        missing = self.features_without_images
        if missing is not None and self.full_passes == 1:
            logger.info(
                "upstream: %d of %d pool uids have features but no image in %d shard(s)",
                missing, self.index.size, len(self.shards),
            )

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        images = torch.stack([decode_image(s["jpg"], self.image_transform, _where(s)) for s in raw])
        captions = []
        for s in raw:
            try:
                captions.append(s["txt"].decode("utf-8"))
            except UnicodeDecodeError as exc:
                raise FlytInputError(f"caption of {_where(s)} is not UTF-8: {exc}") from None
        texts = torch.as_tensor(self.tokenizer(captions), dtype=torch.long)
        positions = np.array([s["__pos__"] for s in raw], dtype=np.int64)
        return {
            "images": images,
            "texts": texts,
            "features": self.features.gather(positions),
            "positions": torch.from_numpy(positions),
            "uids": [s["__uid__"] for s in raw],
        }


class DownstreamStream(ShardStream):
    """Labelled images (``<key>.jpg`` + ``<key>.cls``).

    Batches are dicts: ``images`` (B, 3, H, W) float, ``labels`` (B,) long, ``keys`` (list of
    ``"<shard url>:<key>"``). Samples lacking jpg or cls count as ``bad`` and are skipped; a label
    that is not an integer, negative, or (when ``num_classes`` is given) out of range is an error
    naming its shard and key, raised when its batch is built.
    """

    kind = "downstream"

    def __init__(
        self,
        shards: str | Sequence[str],
        *,
        image_transform: Callable,
        batch_size: int,
        num_classes: int | None = None,
        **kwargs: Any,
    ):
        try:
            super().__init__(shards, batch_size=batch_size, **kwargs)
        except FlytInputError as exc:
            if "no .tar" in exc.message:
                raise FlytInputError(f"empty downstream set: {exc.message}") from None
            raise
        if num_classes is not None and num_classes < 1:
            raise FlytInputError(f"num_classes must be positive, got {num_classes}")
        self.image_transform = image_transform
        self.num_classes = num_classes

    def _empty_message(self, epoch: int) -> str:
        return f"empty downstream set: {super()._empty_message(epoch)} (each sample needs a .jpg and a .cls)"

    def _prepare(self, chunk: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for s in chunk:
            if "jpg" not in s or "cls" not in s:
                self.bad += 1
                continue
            out.append(s)
        return out

    def _label(self, s: dict[str, Any]) -> int:
        try:
            label = int(s["cls"].decode("utf-8").strip())
        except (UnicodeDecodeError, ValueError):
            raise FlytInputError(f"label of {_where(s)} is not an integer: {s['cls'][:40]!r}") from None
        if label < 0:
            raise FlytInputError(f"label of {_where(s)} is negative: {label}")
        if self.num_classes is not None and label >= self.num_classes:
            raise FlytInputError(
                f"label of {_where(s)} is {label}, out of range for {self.num_classes} classes"
            )
        return label

    def decode(self, raw: list[dict[str, Any]]) -> dict[str, Any]:
        labels = torch.tensor([self._label(s) for s in raw], dtype=torch.long)
        images = torch.stack([decode_image(s["jpg"], self.image_transform, _where(s)) for s in raw])
        return {"images": images, "labels": labels, "keys": [f"{s['__url__']}:{s['__key__']}" for s in raw]}


# --------------------------------------------------------------------------- DataLoader wrapper


class BatchIterableDataset(torch.utils.data.IterableDataset):
    """A stream as an IterableDataset of whole batches for ``DataLoader(batch_size=None, ...)``.

    ``num_workers`` must equal the DataLoader's ``num_workers`` (0 is allowed and means one
    logical stream). Global batch ``i`` comes from logical stream ``i % max(1, num_workers)``,
    local batch ``i // W``. DataLoader workers are polled round-robin from worker 0, so worker
    ``w`` plays logical stream ``(start_batch + w) % W``, starting at its local batch
    ``(start_batch + w) // W``; with no worker processes the main process interleaves the W
    logical streams itself, producing the identical sequence. The stream's own rank/world size
    are kept; its worker fields are overridden.
    """

    def __init__(self, stream: ShardStream, *, num_workers: int = 0, start_batch: int = 0):
        super().__init__()
        if num_workers < 0:
            raise FlytInputError(f"num_workers must be non-negative, got {num_workers}")
        if start_batch < 0:
            raise FlytInputError(f"start batch must be non-negative, got {start_batch}")
        self.stream = stream
        self.num_workers = num_workers
        self.start_batch = start_batch

    @property
    def logical_streams(self) -> int:
        return max(1, self.num_workers)

    def set_start(self, start_batch: int) -> None:
        """Resume from this global batch index on the next ``iter()``."""
        if start_batch < 0:
            raise FlytInputError(f"start batch must be non-negative, got {start_batch}")
        self.start_batch = start_batch

    def _logical(self, worker: int) -> ShardStream:
        return self.stream.with_slot(worker_id=worker, num_workers=self.logical_streams)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        W, g = self.logical_streams, self.start_batch
        info = torch.utils.data.get_worker_info()
        if info is not None:
            if info.num_workers != W:
                raise FlytInputError(
                    f"the dataset was built for {self.num_workers} workers but the DataLoader runs "
                    f"{info.num_workers}: pass the same num_workers to both"
                )
            first = g + info.id
            stream = self._logical(first % W)
            yield from stream.batches(first // W)
            return
        streams = [self._logical(lg) for lg in range(W)]
        iters = [streams[lg].iter_raw_batches((g - lg + W - 1) // W) for lg in range(W)]
        i = g
        while True:
            lg = i % W
            yield streams[lg].decode(next(iters[lg]))
            i += 1


# --------------------------------------------------------------------------- join report


def scan_upstream(shards: str | Sequence[str], index: UidIndex) -> dict[str, int]:
    """One pass over every shard reading only the json payloads: the join report.

    Returns ``seen``, ``joined``, ``no_features``, ``bad`` (sample lacks jpg/json/txt or a valid
    uid), ``distinct_joined`` and ``features_without_images`` (pool size minus distinct joined
    uids), and logs it.
    """
    stream = UpstreamStream(
        shards, index, _NullFeatures(index.size), image_transform=lambda x: x, tokenizer=lambda x: x,
        batch_size=1, shuffle_buffer=0,
    )
    stream._read_extensions = ("json",)
    for _ in stream._prepared(0):
        pass
    report = dict(stream.counters())
    report["distinct_joined"] = stream.distinct_joined
    report["features_without_images"] = index.size - report["distinct_joined"]
    logger.info("upstream join report for %d shard(s): %s", len(stream.shards), report)
    return report


class _NullFeatures(FeatureTable):
    def __init__(self, size: int):
        self.arrays = ()
        self.size = size
