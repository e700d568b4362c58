"""The benchmark's data: the demo pool's images decoded once, subsets as index arrays.

Training reads the pool's img2dataset image shards (like DataComp's ``train.py`` reads the
resharded subset), never its metadata. The 32x32 JPEGs are decoded once into a grey ``uint8``
array cached beside the pool (``<pool>/benchmark/images.npz``, keyed by the shards' names, sizes
and modification times), with each example's caption stored as an index into the list of
distinct captions. A subset ``.npy`` then becomes an index array into that cache with each
example repeated as often as the subset repeats its uid; uids without an image in the shards
(failed downloads, or uids of another pool) are skipped and counted.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import FlytInputError
from ..io import atomic_path
from ..progress import progress_bar
from ..tars import iter_tar, list_shards
from ..uids import UID_DTYPE, hex_to_uids, lookup, read_subset

CACHE_FORMAT = 1


@dataclass
class PoolImages:
    """Every pool example that has an image: sorted uids, grey images, caption indices."""

    uids: np.ndarray  # (M,) u8,u8, strictly sorted
    images: np.ndarray  # (M, H, W) uint8, grey
    caption_ids: np.ndarray  # (M,) int32 into ``captions``
    captions: list[str]  # distinct captions
    fingerprint: str  # of the shards they were decoded from

    def __len__(self) -> int:
        return len(self.uids)


@dataclass
class SubsetIndex:
    """A subset as rows of :class:`PoolImages` (repeated as often as the subset repeats a uid)."""

    index: np.ndarray  # (entries with an image,) int64
    distinct: int  # distinct uids in the subset file
    entries: int  # entries (rows) in the subset file
    distinct_with_image: int
    entries_with_image: int
    distinct_not_in_pool: int = 0  # uids the pool does not have at all (not only no image)

    @property
    def skipped_distinct(self) -> int:
        return self.distinct - self.distinct_with_image

    @property
    def skipped_entries(self) -> int:
        return self.entries - self.entries_with_image

    def stats(self) -> dict[str, int]:
        return {"distinct": self.distinct, "entries": self.entries,
                "distinct_with_image": self.distinct_with_image, "entries_with_image": self.entries_with_image,
                "skipped_distinct": self.skipped_distinct, "skipped_entries": self.skipped_entries,
                "distinct_not_in_pool": self.distinct_not_in_pool}


def shards_fingerprint(shards_dir: str | os.PathLike) -> str:
    """sha256 over a folder's tar shards' names, sizes and modification times (no reading)."""
    h = hashlib.sha256(f"format{CACHE_FORMAT}".encode())
    for url in list_shards(str(shards_dir)):
        st = os.stat(url)
        h.update(f"{os.path.basename(url)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()


def load_pool_images(shards_dir: str | os.PathLike, cache_path: str | os.PathLike | None = None, *,
                     progress: bool = True) -> PoolImages:
    """Decode the image shards (once; later calls read ``cache_path`` if its fingerprint matches)."""
    fingerprint = shards_fingerprint(shards_dir)
    if cache_path is not None and Path(cache_path).is_file():
        cached = _read_cache(Path(cache_path))
        if cached is not None and cached.fingerprint == fingerprint:
            return cached
    images = decode_shards(shards_dir, fingerprint, progress=progress)
    if cache_path is not None:
        _write_cache(Path(cache_path), images)
    return images


def decode_shards(shards_dir: str | os.PathLike, fingerprint: str = "", *, progress: bool = True) -> PoolImages:
    """Read every ``jpg`` + ``txt`` + ``json`` sample of the shards, keyed by the json ``uid``
    (img2dataset keys are positional). A uid seen twice keeps its first sample. Images must all
    have one size."""
    hexes: list[str] = []
    grey: list[np.ndarray] = []
    texts: list[str] = []
    for url in progress_bar(list_shards(str(shards_dir)), desc="benchmark: decode shards", disable=not progress, leave=False):
        for s in iter_tar(url, extensions=("jpg", "txt", "json")):
            where = f"{url}:{s['__key__']}"
            if not all(k in s for k in ("jpg", "txt", "json")):
                continue  # not a complete image-text sample
            try:
                uid = json.loads(s["json"])["uid"]
            except (ValueError, KeyError, TypeError):
                raise FlytInputError(f"sample {where} has no readable uid in its .json") from None
            try:
                with Image.open(io.BytesIO(s["jpg"])) as im:
                    arr = np.asarray(im.convert("L"), dtype=np.uint8)
            except Exception as exc:
                raise FlytInputError(f"cannot decode the image of sample {where}: {exc}") from None
            if grey and arr.shape != grey[0].shape:
                raise FlytInputError(f"image of sample {where} is {arr.shape[1]}x{arr.shape[0]}, "
                                     f"the others {grey[0].shape[1]}x{grey[0].shape[0]}")
            hexes.append(uid)
            grey.append(arr)
            texts.append(s["txt"].decode("utf-8"))
    if not hexes:
        raise FlytInputError(f"the image shards in {shards_dir} hold no jpg+txt+json samples")
    hex_arr = np.char.lower(np.asarray(hexes, dtype=str))
    hex_to_uids(hex_arr, source=f"the .json uids of {shards_dir}")  # validates every uid
    # lowercase hex order is (f0, f1) order; return_index picks each uid's first sample
    _, first = np.unique(hex_arr, return_index=True)
    captions, caption_ids = np.unique(np.asarray(texts, dtype=str)[first], return_inverse=True)
    return PoolImages(
        uids=hex_to_uids(hex_arr[first]), images=np.stack(grey)[first],
        caption_ids=caption_ids.reshape(-1).astype(np.int32), captions=captions.tolist(), fingerprint=fingerprint,
    )


def _write_cache(path: Path, data: PoolImages) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:  # a file object: savez would add ".npz"
        np.savez(fh, uid_f0=data.uids["f0"], uid_f1=data.uids["f1"], images=data.images,
                 caption_ids=data.caption_ids, captions=np.asarray(data.captions, dtype=str),
                 fingerprint=np.asarray(data.fingerprint))


def _read_cache(path: Path) -> PoolImages | None:
    """The cached arrays, or None when the file is unreadable (then it is rebuilt)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            uids = np.empty(len(z["uid_f0"]), dtype=UID_DTYPE)
            uids["f0"], uids["f1"] = z["uid_f0"], z["uid_f1"]
            return PoolImages(uids=uids, images=z["images"], caption_ids=z["caption_ids"],
                              captions=z["captions"].tolist(), fingerprint=str(z["fingerprint"]))
    except (OSError, ValueError, KeyError, EOFError):
        return None


def subset_index(subset_path: str | os.PathLike, pool: PoolImages, pool_uids: np.ndarray | None = None) -> SubsetIndex:
    """The subset's entries as rows of ``pool``, repetitions kept, uids without an image skipped.
    ``pool_uids`` (sorted): every uid of the pool, to count the subset's uids that are not in it."""
    uids, counts = read_subset(subset_path)
    pos = lookup(pool.uids, uids)
    have = pos >= 0
    if len(uids) and not have.any():
        raise FlytInputError(f"none of the {len(uids):,} uids of subset {subset_path} has an image in the pool's "
                             "shards: is it a subset of another pool?")
    outside = 0 if pool_uids is None else int((lookup(pool_uids, uids) < 0).sum())
    return SubsetIndex(
        index=np.repeat(pos[have], counts[have]),
        distinct=int(len(uids)), entries=int(counts.sum()),
        distinct_with_image=int(have.sum()), entries_with_image=int(counts[have].sum()),
        distinct_not_in_pool=outside,
    )


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------- text


def load_labelled_images(folder: str | os.PathLike,
                         keep: Callable[[str, str], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A labelled webdataset folder (``jpg`` + ``cls``) as grey uint8 images and int labels
    (``keep(shard url, key)``: only the samples it accepts)."""
    images, labels = [], []
    for url in list_shards(str(folder)):
        for s in iter_tar(url, extensions=("jpg", "cls")):
            if "jpg" not in s or "cls" not in s or (keep is not None and not keep(url, s["__key__"])):
                continue
            try:
                labels.append(int(s["cls"].decode().strip()))
                with Image.open(io.BytesIO(s["jpg"])) as im:
                    images.append(np.asarray(im.convert("L"), dtype=np.uint8))
            except Exception as exc:
                raise FlytInputError(f"cannot read labelled sample {url}:{s['__key__']}: {exc}") from None
    if not images:
        raise FlytInputError(f"labelled folder {folder} holds no jpg+cls samples")
    return np.stack(images), np.asarray(labels, dtype=np.int64)
