"""The benchmark's frozen training recipe and its hash.

DataComp fixes everything but the data: the model, the batch, the learning rate schedule and the
number of samples seen. :class:`Recipe` is that fixed protocol for the digits pool. Its
:meth:`Recipe.hash` keys the result cache, so changing any field (or :data:`TRAINING_CODE_VERSION`,
bumped whenever the training or evaluation code changes what a run computes) retrains.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from typing import Any

from ..demo.pool import SAMPLES_SEEN
from ..errors import FlytInputError

TRAINING_CODE_VERSION = 1

# Pixel normalisation: black stays 0 (the background carries no signal), as for the demo scorers.
PIXEL_MEAN = (0.0, 0.0, 0.0)
PIXEL_STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """One fixed way of training a CLIP from scratch on a subset and scoring it zero-shot.

    ``arch`` names an offline tiny open_clip config (``flyt_datacomp.clip_models``); its token
    table is cut to the few dozen tokens the demo's captions and prompts use (see
    ``clip_models.Vocabulary``). Training: AdamW (betas 0.9/0.98, eps 1e-6, weight decay on
    >=2-dim weights), linear warmup over ``warmup_fraction`` of the steps then cosine decay,
    ``samples_seen // batch_size`` steps over the subset's entries reshuffled every epoch.
    ``threads`` is the torch CPU thread count inside a run (results are reproducible for a fixed
    count on one machine).
    """

    name: str
    arch: str = "tiny-resnet"
    batch_size: int = 128
    lr: float = 2e-3
    weight_decay: float = 0.1
    warmup_fraction: float = 0.1
    samples_seen: int = SAMPLES_SEEN["v3"]
    threads: int = 1

    def __post_init__(self) -> None:
        from ..clip_models import named_tiny_configs  # imports open_clip: only when a recipe is made

        if self.arch not in named_tiny_configs():
            raise FlytInputError(f"recipe {self.name}: unknown arch {self.arch!r} "
                                 f"(choose from {', '.join(named_tiny_configs())})")
        for field in ("batch_size", "samples_seen", "threads"):
            if getattr(self, field) < 1:
                raise FlytInputError(f"recipe {self.name}: {field} must be at least 1")
        if self.samples_seen < self.batch_size:
            raise FlytInputError(f"recipe {self.name}: samples_seen {self.samples_seen} is below one batch")
        if not self.lr > 0 or not 0 <= self.weight_decay < 1 or not 0 <= self.warmup_fraction < 1:
            raise FlytInputError(f"recipe {self.name}: lr must be > 0, weight_decay and warmup_fraction in [0, 1)")

    @property
    def steps(self) -> int:
        return self.samples_seen // self.batch_size

    def model_config(self) -> dict[str, Any]:
        """The open_clip config dict (before the token table is cut to the used tokens)."""
        from ..clip_models import named_tiny_configs

        cfg = copy.deepcopy(named_tiny_configs()[self.arch])
        cfg["image_mean"], cfg["image_std"] = PIXEL_MEAN, PIXEL_STD
        return cfg

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "steps": self.steps, "model_config": self.model_config(),
                "training_code_version": TRAINING_CODE_VERSION}

    def hash(self) -> str:
        """sha256 of everything that determines a run's result (the display name excluded)."""
        fields = {k: v for k, v in self.as_dict().items() if k != "name"}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


# named recipes, as field overrides of the dataclass defaults (which are the v3 pool's recipe)
RECIPES: dict[str, dict[str, Any]] = {
    # chosen by measurement on the v4 demo pool on the no-filter, random and two oracle rows alone,
    # before any FLYT row was looked at (docs/benchmark.md, "Choosing the recipe")
    "default": {"samples_seen": SAMPLES_SEEN["v4"], "lr": 1e-3},
    # the v3 pool's recipe, chosen the same way on that pool
    "v3": {},
    # a smoke run for tests: seconds, not meaningful accuracies
    "quick": {"batch_size": 32, "samples_seen": 320},
}
# the recipe a demo pool version is benchmarked with unless another is asked for
POOL_RECIPES = {"v3": "v3", "v4": "default"}


def pool_recipe(version: str) -> str:
    """The name of the recipe a demo pool of ``version`` is benchmarked with by default."""
    return POOL_RECIPES[version]


def get_recipe(name: str, **overrides: Any) -> Recipe:
    """A named recipe, optionally with fields replaced (``samples_seen=...``)."""
    if name not in RECIPES:
        raise FlytInputError(f"unknown benchmark recipe {name!r}; choose one of {', '.join(RECIPES)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    label = name + ("+" + ",".join(f"{k}={v}" for k, v in sorted(overrides.items())) if overrides else "")
    return Recipe(label, **{**RECIPES[name], **overrides})
