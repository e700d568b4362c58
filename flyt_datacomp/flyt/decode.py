"""Turning a sample's payload bytes into model inputs: images (through a transform) and captions.

Errors name the sample (its key and shard) so a bad file in a million-sample folder can be found.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image

from flyt_datacomp.errors import FlytInputError


class ImageTransform:
    """open_clip's evaluation transform (resize, centre crop, RGB, to tensor, normalise) for an
    image size, with a batched path: a batch of images that already have the model's size (nothing
    to resize or crop) is converted and normalised as one tensor, with the same operations on the
    same values, so the same floats, at a fraction of the per-image cost (which dominates for small
    images). Anything else goes through open_clip's transform image by image."""

    def __init__(self, image_size: int | tuple[int, int], mean=None, std=None):
        import open_clip
        from torchvision.transforms import Normalize

        self.transform = open_clip.image_transform(image_size, is_train=False, mean=mean, std=std)
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        self.size = (int(size[1]), int(size[0]))  # PIL's (width, height)
        (norm,) = [t for t in self.transform.transforms if isinstance(t, Normalize)]
        self.mean = torch.as_tensor(norm.mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.as_tensor(norm.std, dtype=torch.float32).view(1, -1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.transform(image)

    def batch(self, images: list[Image.Image]) -> torch.Tensor:
        """A (n, 3, H, W) float tensor of RGB images, equal to stacking ``self(image)`` of each."""
        if not images or any(im.size != self.size or im.mode != "RGB" for im in images):
            return torch.stack([self.transform(im) for im in images])
        pixels = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2)
        return pixels.to(torch.float32).div(255).sub(self.mean).div(self.std)


def default_image_transform(image_size: int | tuple[int, int], mean=None, std=None) -> ImageTransform:
    """open_clip's evaluation transform (resize, centre crop, normalise) for ``image_size``;
    ``mean``/``std`` default to open_clip's (OpenAI's) pixel statistics."""
    return ImageTransform(image_size, mean, std)


def _rgb(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except Exception as exc:
        raise FlytInputError(f"cannot decode image of {where}: {exc}") from None


def decode_images(data: list[bytes], transform: Callable, wheres: list[str]) -> torch.Tensor:
    """JPEG (or any PIL format) bytes -> RGB -> ``transform``, stacked (through the transform's batched
    path, if it has one); errors name the sample (``wheres``)."""
    images = [_rgb(d, w) for d, w in zip(data, wheres)]
    if isinstance(transform, ImageTransform):
        return transform.batch(images)
    return torch.stack([transform(im) for im in images])


def decode_text(data: bytes, where: str) -> str:
    """A UTF-8 caption; errors name the sample."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FlytInputError(f"caption of {where} is not UTF-8: {exc}") from None
