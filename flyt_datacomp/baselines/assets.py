"""The files DataComp's baselines need, where to find them, and how to read them.

Nothing is downloaded at run time. Each asset is a path the user gives (an option of the filter
command) or a file found in a cache folder: ``--assets-dir``, then ``$FLYT_DATACOMP_ASSETS``, then
DataComp's own caches (``~/.cache/datacomp`` and ``~/.cache/fasttext``, where DataComp's
``baselines.py`` downloads them), under DataComp's file names. A missing asset is an error saying
what it is, which option gives it and where DataComp publishes it. The sha256 of every asset used
is recorded in the output's sidecar, with whether it is the file DataComp publishes (a different
file gives a different uid set, so that is worth a note).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FlytInputError, quote
from ..io import file_sha256

_RELEASE = "https://github.com/sagadre/datacomp_baseline_assets/releases/download/v0.1.0-alpha"
CENTROID_SCALES = ("small", "medium", "large", "xlarge")  # DataComp publishes k-means centroids for these pools
IN1K_PARTS = 5  # DataComp's ImageNet-1k train embeddings come in five files


@dataclasses.dataclass(frozen=True)
class Asset:
    key: str
    what: str
    option: str  # the setting that gives its path (an AssetPaths field)
    url: str  # where DataComp publishes it
    sha256: str  # the published file's
    names: tuple[str, ...]  # file names looked for in a cache folder

    def missing(self, searched: list[Path]) -> FlytInputError:
        where = ", ".join(str(d) for d in searched) or "no cache folder"
        return FlytInputError(
            f"missing asset: {self.what}. Give it with `{self.option}` PATH, or put it in a cache folder "
            f"(`assets_dir`; searched {where}) as {' or '.join(self.names)}. DataComp publishes it at {self.url}",
            params=[self.option, "assets_dir"]
        )


def _catalog() -> dict[str, Asset]:
    out = {
        "fasttext": Asset(
            "fasttext", "the fastText language-identification model lid.176.bin", "fasttext_model",
            "https://dl.fbaipublicfiles.com/fasttext/supervised-models/lid.176.bin",
            "7e69ec5451bc261cc7844e49e4792a85d7f09c06789ec800fc4a44aec362764e", ("lid.176.bin",)),
        "imagenet21k_wordnet_ids": Asset(
            "imagenet21k_wordnet_ids", "the list of ImageNet-21k WordNet ids (one 'n01234567' per line)",
            "imagenet21k_wordnet_ids", f"{_RELEASE}/imagenet21k_wordnet_ids.txt",
            "66362bdedf36d933382edca5493fc562dcc17128ce36403c9e730a75f48cb2f2",
            ("imagenet21k_wordnet_ids.pt", "imagenet21k_wordnet_ids.txt")),
    }
    centroid_sha = {
        "small": "23c66a05e49ad77283c1e2b33355c7eb088ac332a944c97ff85d5dfd48a5b251",
        "medium": "028b1721b1d0f139c565b6b0ac99f8a1756f4bae89c36b0ec6d1c6ea9b6f112d",
        "large": "04eeab1069d3540c246cf7ce69323147351a474017fc472e4c50a018ca32240b",
        "xlarge": "3f62e5f8ae3a715ce84e422846fcfce1536d184455ea234790c4a6465c4c6726",
    }
    for scale, sha in centroid_sha.items():
        out[f"{scale}_centroids"] = Asset(
            f"{scale}_centroids", f"the k-means centroids of the {scale} pool's ViT-L/14 image embeddings",
            "centroids", f"{_RELEASE}/{scale}_centroids_l14.pt", sha,
            (f"{scale}_centroids.pt", f"{scale}_centroids_l14.pt"))
    in1k_sha = (
        "304990fd492f40ba90072b80af78d6e8edcab9d042476ef513e03441cf53743b",
        "72f008e6aa3bfb54174fa322963215337f843fc90fd642a9dccc815dd9e7ee76",
        "83c3cc6503b8a50a22cac7023ca6cd61b130ab9725db2a7519f1bec5cabf5493",
        "83faa289f847799ddcd438e5b74df1cb5973c345674896d10ba31ea48bc63804",
        "067a45f4a140a93371876510a2fd9198a89ac1d194ae4063a51b45a6da69cadf",
    )
    for i, sha in enumerate(in1k_sha):
        name = f"in1k_clip_vit_l14_{i}"
        out[name] = Asset(
            name, f"part {i} of {IN1K_PARTS} of the ImageNet-1k train ViT-L/14 image embeddings",
            "in1k_embeddings", f"{_RELEASE}/{name}.pt", sha, (f"{name}.pt",))
    return out


ASSETS = _catalog()


@dataclasses.dataclass(frozen=True)
class AssetPaths:
    """What the user gave: explicit paths (None: look in the cache folders) and an extra cache folder."""

    fasttext_model: str | None = None
    imagenet21k_wordnet_ids: str | None = None
    centroids: str | None = None
    in1k_embeddings: tuple[str, ...] = ()  # the five files, or one folder holding them
    wordnet_data: str | None = None  # an nltk_data folder holding corpora/wordnet (see wordnet.py)
    assets_dir: str | None = None

    def cache_dirs(self) -> list[Path]:
        dirs = [self.assets_dir, os.environ.get("FLYT_DATACOMP_ASSETS"), "~/.cache/datacomp", "~/.cache/fasttext"]
        return [Path(d).expanduser() for d in dirs if d]


def find(key: str, given: str | None, paths: AssetPaths) -> Path:
    """The path of asset ``key``: the one given (which must exist), else the first cache hit."""
    asset = ASSETS[key]
    if given is not None:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FlytInputError(f"{asset.option} {quote(given)} does not exist or is not a file "
                                 f"(it should be {asset.what}; DataComp publishes it at {asset.url})")
        return path
    searched = paths.cache_dirs()
    for folder in searched:
        for name in asset.names:
            if (folder / name).is_file():
                return folder / name
    raise asset.missing(searched)


def fasttext_model(paths: AssetPaths) -> Path:
    return find("fasttext", paths.fasttext_model, paths)


def wordnet_ids_file(paths: AssetPaths) -> Path:
    return find("imagenet21k_wordnet_ids", paths.imagenet21k_wordnet_ids, paths)


def centroids_file(paths: AssetPaths, scale: str | None) -> Path:
    if paths.centroids is None and scale is None:
        raise FlytInputError("the image_based baselines need the pool's k-means centroids: give `image_based_scale` "
                             f"({', '.join(CENTROID_SCALES)}) to use DataComp's, or `centroids` PATH",
                             params=["image_based_scale", "centroids"])
    key = f"{scale}_centroids" if scale is not None else "small_centroids"
    return find(key, paths.centroids, paths)


def in1k_files(paths: AssetPaths) -> list[Path]:
    """The ImageNet-1k embedding files: those given (files, or one folder holding DataComp's five)."""
    given = [Path(p).expanduser() for p in paths.in1k_embeddings]
    if len(given) == 1 and given[0].is_dir():
        return [find(f"in1k_clip_vit_l14_{i}", None, dataclasses.replace(paths, assets_dir=str(given[0])))
                for i in range(IN1K_PARTS)]
    if given:
        for p in given:
            if not p.is_file():
                raise FlytInputError(f"`in1k_embeddings` {quote(str(p))} does not exist or is not a file "
                                     f"(it should be {ASSETS['in1k_clip_vit_l14_0'].what.replace('part 0 of 5', 'a part')})",
                                     params=["in1k_embeddings"])
        return given
    return [find(f"in1k_clip_vit_l14_{i}", None, paths) for i in range(IN1K_PARTS)]


def record(path: Path, key: str | None = None) -> dict[str, Any]:
    """For the sidecar: the file, its sha256 and whether it is the file DataComp publishes as ``key``."""
    sha = file_sha256(path)
    out: dict[str, Any] = {"path": str(path), "sha256": sha}
    if key is not None:
        out["datacomp_file"] = sha == ASSETS[key].sha256
    return out


def identify(path: Path) -> str | None:
    """The catalog key of the published asset with this file's bytes, if any (by file name first)."""
    for key, asset in ASSETS.items():
        if path.name in asset.names:
            return key
    return None


# --------------------------------------------------------------------------- readers


def read_wordnet_ids(path: Path) -> frozenset[int]:
    """WordNet noun offsets from lines like ``n01234567`` (DataComp drops the letter and keeps the number)."""
    ids = set()
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FlytInputError(f"cannot read the WordNet id list {path}: {exc}") from None
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if not text:
            continue
        if len(text) < 2 or not text[1:].isdigit():
            raise FlytInputError(f"the WordNet id list {path} line {number} is {quote(text)}, not an id like 'n01234567'")
        ids.add(int(text[1:]))
    if not ids:
        raise FlytInputError(f"the WordNet id list {path} holds no ids")
    return frozenset(ids)


def _numpy_globals() -> list:
    """What unpickling a plain numpy array needs, under the module names old and new numpy write."""
    import numpy.dtypes

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1
        from numpy.core.multiarray import _reconstruct
    allowed: list = [np.ndarray, np.dtype]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed.append((_reconstruct, f"{module}._reconstruct"))
    allowed += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    return allowed


def read_centroids(path: Path):
    """DataComp's centroid file: ``torch.save`` of a numpy array (k x d). Loaded weights-only, with
    just numpy's array globals allowed. Returns a float32 torch tensor."""
    import torch

    try:
        with torch.serialization.safe_globals(_numpy_globals()):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - unpickling raises many types
        raise FlytInputError(f"cannot read the centroid file {path} as a torch-saved array: {_first_line(exc)}") from None
    tensor = torch.from_numpy(np.asarray(obj)) if not isinstance(obj, torch.Tensor) else obj
    if tensor.ndim != 2 or not tensor.is_floating_point():
        raise FlytInputError(f"the centroid file {path} holds {tuple(tensor.shape)} {tensor.dtype} values, "
                             "not a 2-D float array (k centroids x embedding dim)")
    return tensor.float()


def read_in1k_features(path: Path):
    """One of DataComp's ImageNet embedding files: a dict whose ``image_features`` is an (n x d) tensor."""
    from ..torch_io import load

    obj = load(path, what="ImageNet-1k embedding file")
    features = obj.get("image_features") if isinstance(obj, dict) else None
    if features is None or getattr(features, "ndim", 0) != 2:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise FlytInputError(f"the ImageNet-1k embedding file {path} has no 2-D 'image_features' tensor (it holds {keys})")
    return features


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
