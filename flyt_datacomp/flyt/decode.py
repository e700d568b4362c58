"""Turning a sample's payload bytes into model inputs: images (through a transform) and captions.

Errors name the sample (its key and shard) so a bad file in a million-sample folder can be found.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import torch
from PIL import Image

from flyt_datacomp.errors import FlytInputError


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


def decode_text(data: bytes, where: str) -> str:
    """A UTF-8 caption; errors name the sample."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlytInputError(f"caption of {where} is not UTF-8: {exc}") from None
