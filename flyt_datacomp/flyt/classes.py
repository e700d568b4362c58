"""Downstream class sets: class names plus prompt templates, and the per-step template draw.

A class set is a JSON object ``{"classnames": [...], "templates": [...]}`` (an optional ``"name"``
is kept for display). Each template holds one ``{}`` placeholder for the class name. Two sets ship
with the package: ``imagenet`` (the 1000 ImageNet-1k names and 80 prompt templates in the OpenAI
CLIP / DataComp order and wording; the list repeats "missile" and "sunglasses" exactly as the
original does) and ``digits`` (``zero`` .. ``nine`` with a few templates, for the CPU mini setup).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch

from flyt_datacomp.errors import FlytInputError

BUILTIN_CLASS_SETS = {"imagenet": "imagenet_classes.json", "digits": "digits_classes.json"}


@dataclass(frozen=True)
class ClassSet:
    """Class names and prompt templates of one downstream task."""

    name: str
    classnames: tuple[str, ...]
    templates: tuple[str, ...]

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


def load_classes(name_or_path: str | Path) -> ClassSet:
    """Load a built-in class set (``'imagenet'``, ``'digits'``) or a JSON file of the same format.

    Raises :class:`FlytInputError` for a missing or unreadable file, a bad format, an empty class
    list or a template without a ``{}`` placeholder.
    """
    key = str(name_or_path)
    if key in BUILTIN_CLASS_SETS:
        text = resources.files("flyt_datacomp").joinpath("data", BUILTIN_CLASS_SETS[key]).read_text("utf-8")
        source = f"built-in class set {key!r}"
    else:
        path = Path(key)
        if not path.is_file():
            known = ", ".join(sorted(BUILTIN_CLASS_SETS))
            raise FlytInputError(f"class set {key!r}: no such file (built-in sets: {known})")
        try:
            text = path.read_text("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise FlytInputError(f"class set {key!r}: cannot read file: {exc}") from exc
        source = f"class set file {key!r}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FlytInputError(f"{source}: not valid JSON: {exc}") from exc
    return _validate(data, source, default_name=Path(key).stem)


def _validate(data: object, source: str, default_name: str) -> ClassSet:
    if not isinstance(data, dict):
        raise FlytInputError(f'{source}: expected a JSON object {{"classnames": [...], "templates": [...]}}')
    for field in ("classnames", "templates"):
        value = data.get(field)
        if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
            raise FlytInputError(f"{source}: {field!r} must be a list of non-empty strings")
        if not value:
            raise FlytInputError(f"{source}: {field!r} is empty")
    bad = [t for t in data["templates"] if t.count("{}") != 1]
    if bad:
        raise FlytInputError(f"{source}: every template needs exactly one '{{}}' placeholder, not {bad[0]!r}")
    name = data.get("name", default_name)
    return ClassSet(name=str(name), classnames=tuple(data["classnames"]), templates=tuple(data["templates"]))


def sample_class_texts(classes: ClassSet, generator: torch.Generator | None = None) -> list[str]:
    """One prompt per class, each with a template drawn uniformly at random (paper C.8).

    Called once per training step; ``generator`` makes the draw reproducible.
    """
    idx = torch.randint(len(classes.templates), (classes.num_classes,), generator=generator)
    return [classes.templates[i].replace("{}", c) for i, c in zip(idx.tolist(), classes.classnames)]


def all_class_texts(classes: ClassSet) -> list[str]:
    """Every prompt a step can draw: each template with each class name."""
    return [t.replace("{}", c) for c in classes.classnames for t in classes.templates]
