"""Building FLYT's downstream training shards from an ImageFolder tree.

``SRC/<class_dir>/<image files>`` (the ImageNet-train layout; class index = position of the class
folder in sorted order, as torchvision's ImageFolder does) becomes small webdataset shards
``{:08d}.tar`` of ``per_shard`` samples each, globally shuffled with a seed: ``<key>.jpg`` (the image
re-encoded as RGB JPEG, optionally resized so its shorter side is ``image_size``), ``<key>.cls``
(the integer label as text) and ``<key>.json`` (source path, label, class name). Beside them:
``classes.json`` (``{"classnames": [...], "templates": [...]}``; derived from the folder names
unless a class file is given) and ``build.json`` (provenance). Read them back with
:class:`flyt_datacomp.flyt.downstream_stream.DownstreamStream`.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import FlytInputError
from .folders import OutputFolder
from .io import local_path, temp_sibling, write_json
from .progress import progress_bar

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")
DEFAULT_TEMPLATES = ["a photo of a {}."]
BUILD_FILE = "build.json"  # provenance naming this command as its writer: `overwrite` may replace that folder


def _classname(dirname: str) -> str:
    return dirname.replace("_", " ").strip()


def scan_image_folder(src: str | os.PathLike) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class folder names (sorted) and every (image path, label) of an ImageFolder tree."""
    src = Path(src)
    if not src.is_dir():
        raise FlytInputError(f"source folder {src} does not exist or is not a folder")
    class_dirs = sorted(p.name for p in src.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise FlytInputError(f"source folder {src} has no class folders (expected SRC/<class>/<images>)")
    items: list[tuple[Path, int]] = []
    for label, name in enumerate(class_dirs):
        files = sorted(
            p for p in (src / name).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
        )
        if not files:
            logger.warning("class folder %s holds no images (label %d stays unused)", src / name, label)
        items.extend((p, label) for p in files)
    if not items:
        raise FlytInputError(
            f"source folder {src} holds no images (extensions: {', '.join(IMAGE_EXTENSIONS)})"
        )
    return class_dirs, items


def _encode(path: Path, image_size: int | None) -> bytes:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
    except Exception as exc:
        raise FlytInputError(f"cannot read image {path}: {exc}") from None
    if image_size:
        w, h = im.size
        scale = image_size / min(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        if size != im.size:
            im = im.resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(payload))


def _load_class_file(path: str | os.PathLike, num_classes: int) -> dict[str, Any]:
    try:
        obj = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise FlytInputError(f"cannot read class file {path}: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("classnames"), list):
        raise FlytInputError(f"class file {path} must be a JSON object with a 'classnames' list")
    if len(obj["classnames"]) != num_classes:
        raise FlytInputError(
            f"class file {path} lists {len(obj['classnames'])} classes but the source has {num_classes} class folders"
        )
    obj.setdefault("templates", list(DEFAULT_TEMPLATES))
    return obj


def build_downstream_shards(
    src_folder: str | os.PathLike,
    out_folder: str | os.PathLike,
    *,
    per_shard: int = 100,
    seed: int = 0,
    image_size: int | None = None,
    overwrite: bool = False,
    classes: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write ``out_folder`` (atomically: built in a temporary folder, then renamed); return build.json.

    ``classes`` is an optional ``{"classnames", "templates"}`` JSON copied to ``classes.json``
    (its class count must match); without it the class names come from the folder names
    (underscores become spaces) with the template ``"a photo of a {}."``.
    """
    if per_shard < 1:
        raise FlytInputError(f"`per_shard` must be positive, got {per_shard}", params=["per_shard"])
    if image_size is not None and image_size < 1:
        raise FlytInputError(f"`image_size` must be positive, got {image_size}", params=["image_size"])
    if seed < 0:
        raise FlytInputError(f"`seed` must be non-negative, got {seed}", params=["seed"])
    out = local_path(out_folder, "the output folder")
    folder = OutputFolder(out, "downstream build", (BUILD_FILE,), what="output folder", params=(),
                          inputs={"the source folder": src_folder, "the class file": classes})
    real = folder.check(overwrite=overwrite)
    src = Path(src_folder)
    class_dirs, items = scan_image_folder(src)
    if classes is not None:
        class_obj = _load_class_file(classes, len(class_dirs))
    else:
        class_obj = {"classnames": [_classname(c) for c in class_dirs], "templates": list(DEFAULT_TEMPLATES)}

    order = np.random.default_rng(seed).permutation(len(items))
    tmp = temp_sibling(real, create=False)
    try:
        real.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()  # a normal folder (0777 minus the umask), unlike mkdtemp's private one
    except OSError as exc:
        raise FlytInputError(f"cannot write the output folder {out}: {exc}") from None
    try:
        num_shards = (len(items) + per_shard - 1) // per_shard
        bar = progress_bar(total=len(items), desc="building downstream shards", unit="img", disable=not progress)
        for shard in range(num_shards):
            with tarfile.open(tmp / f"{shard:08d}.tar", "w") as tar:
                for n in range(shard * per_shard, min((shard + 1) * per_shard, len(items))):
                    path, label = items[int(order[n])]
                    key = f"{n:09d}"
                    _add(tar, f"{key}.jpg", _encode(path, image_size))
                    _add(tar, f"{key}.cls", str(label).encode())
                    meta = {"src": path.relative_to(src).as_posix(), "label": label,
                            "classname": class_obj["classnames"][label]}
                    _add(tar, f"{key}.json", json.dumps(meta).encode())
                    bar.update(1)
        bar.close()
        write_json(tmp / "classes.json", class_obj)
        info = folder.record(
            src=str(src), output=str(out), count=len(items), per_shard=per_shard, seed=seed,
            image_size=image_size, num_shards=num_shards, num_classes=len(class_dirs),
            class_dirs=class_dirs, classes_file=None if classes is None else str(classes),
        )
        write_json(tmp / BUILD_FILE, info)
        folder.replace_with(tmp, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %d downstream samples in %d shard(s) to %s", len(items), num_shards, out)
    return info
