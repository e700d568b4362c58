"""Training configuration: one dataclass, named presets, and JSON/YAML config files.

Precedence: preset < config file < command-line options. Every field can be set by each.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

from ..errors import FlytInputError


@dataclasses.dataclass
class TrainConfig:
    # what to train
    model: str = "m-flyt"  # "m-flyt" (mixing model over input scores) or "e-flyt" (GLU head on embeddings)
    inputs: list[str] = dataclasses.field(default_factory=list)  # M-FLYT: pool parquet columns
    embedding_prefix: str = "b32"  # E-FLYT: npz keys <prefix>_img / <prefix>_txt
    glu_hidden: int | None = None  # E-FLYT hidden width (default 2 x embedding dim)
    glu_cosine_init: bool = True  # E-FLYT: start close to the CLIP cosine similarity
    # data
    metadata_dir: str | None = None
    shards_dir: str | None = None
    downstream_dir: str | None = None
    classes: str = "imagenet"  # built-in class set name or a classes JSON file
    shuffle_buffer: int = 10_000
    workers: int = 0
    # reference model
    reference_arch: str = "ViT-B-32"  # an open_clip architecture name, or "tiny" / "tiny-resnet"
    reference_checkpoint: str | None = None
    reference_pretrained: str | None = None  # an open_clip pretrained tag (needs reachable weights)
    reference_pretrain_steps: int = 0  # plain CLIP steps on the unfiltered pool before FLYT
    reference_pretrain_lr: float = 1e-3
    adam_warmup_steps: int = 5  # plain weighted-loss steps that warm Adam's (m, v, t)
    # optimisation (paper Table 7)
    steps: int = 5000
    warmup_steps: int = 100
    batch_size: int = 4096
    downstream_batch_size: int = 3072
    reference_lr: float = 5e-5
    scoring_lr: float = 1e-3
    weight_decay: float = 0.2
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    downstream_loss: str = "ce"  # "ce", "ce_temp" or "clip"
    micro_batch_size: int | None = None
    precision: str = "auto"  # "auto" (bf16 autocast on CUDA, fp32 on CPU), "fp32" or "bf16"
    device: str = "auto"
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 500
    tensorboard: bool = False

    def validate(self) -> None:
        def bad(name: str, why: str) -> FlytInputError:
            return FlytInputError(f"bad training option {name}={getattr(self, name)!r}: {why}")

        if self.model not in ("m-flyt", "e-flyt"):
            raise bad("model", "choose m-flyt or e-flyt")
        if self.model == "m-flyt" and not self.inputs:
            raise bad("inputs", "M-FLYT needs at least one input score column")
        if self.model == "m-flyt" and len(set(self.inputs)) != len(self.inputs):
            raise bad("inputs", "input columns must be distinct")
        for name in ("steps", "batch_size", "downstream_batch_size", "checkpoint_every", "shuffle_buffer"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("warmup_steps", "adam_warmup_steps", "reference_pretrain_steps", "workers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be non-negative")
        for name in ("reference_lr", "scoring_lr", "reference_pretrain_lr", "eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise bad(name, "must be a positive number")
        if not 0 <= self.weight_decay < 1:
            raise bad("weight_decay", "must be in [0, 1)")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        if self.downstream_loss not in ("ce", "ce_temp", "clip"):
            raise bad("downstream_loss", "choose ce, ce_temp or clip")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise bad("precision", "choose auto, fp32 or bf16")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise bad("micro_batch_size", "must be at least 1")
        for name in ("metadata_dir", "shards_dir", "downstream_dir"):
            if not getattr(self, name):
                raise FlytInputError(f"missing training option --{name.replace('_', '-')}")


# what the two demo presets share: the digits pool on a CPU, the reference initialised from the
# demo's b32 scorer CLIP (the data and checkpoint paths come from the built pool)
_DEMO: dict[str, Any] = {
    "reference_arch": "tiny-resnet",
    "adam_warmup_steps": 5,
    "classes": "digits",
    "steps": 150, "warmup_steps": 10, "batch_size": 128, "downstream_batch_size": 100,
    "reference_lr": 5e-4, "weight_decay": 0.0,
    "shuffle_buffer": 1000, "checkpoint_every": 50,
}

PRESETS: dict[str, dict[str, Any]] = {
    # paper Table 7, M-FLYT-Base; more inputs (DFN, HYPE, s-CLIPLoss, ...) are extra pool columns
    "m-flyt-base": {
        "model": "m-flyt",
        "inputs": ["clip_b32_similarity_score", "clip_l14_similarity_score"],
        "reference_arch": "ViT-B-32",
        "downstream_loss": "ce",
        "classes": "imagenet",
        "steps": 5000, "warmup_steps": 100, "batch_size": 4096, "downstream_batch_size": 3072,
        "reference_lr": 5e-5, "scoring_lr": 1e-3, "weight_decay": 0.2,
        "micro_batch_size": 512, "workers": 8,
    },
    # paper Table 7, E-FLYT-Base (reference and feature extractor from OpenAI's ViT-B/32)
    "e-flyt-base": {
        "model": "e-flyt",
        "embedding_prefix": "b32",
        "reference_arch": "ViT-B-32",
        "reference_pretrained": "openai",
        "downstream_loss": "ce_temp",
        "classes": "imagenet",
        "steps": 5000, "warmup_steps": 100, "batch_size": 4096, "downstream_batch_size": 3072,
        "reference_lr": 5e-5, "scoring_lr": 1e-3, "weight_decay": 0.2,
        "micro_batch_size": 512, "workers": 8,
    },
    # the built-in digits demo pool on a CPU, in a few minutes
    "m-flyt-demo": {
        **_DEMO,
        "model": "m-flyt",
        "inputs": ["clip_b32_similarity_score", "clip_l14_similarity_score", "noise_score"],
        "downstream_loss": "ce",
        "scoring_lr": 2e-2,
    },
    # E-FLYT on the digits demo pool: a GLU head on the pool's b32 npz embeddings. As in the
    # paper's E-FLYT-Base, CE with a learned downstream temperature and scoring lr 1e-3: with the
    # M-FLYT demo's CE without temperature and lr 0.02 the batch weights collapse onto a few
    # examples within 30 steps while the downstream loss stays at ln 10 (README, E-FLYT demo).
    "e-flyt-demo": {
        **_DEMO,
        "model": "e-flyt",
        "inputs": [],
        "embedding_prefix": "b32",
        "downstream_loss": "ce_temp",
        "scoring_lr": 1e-3,
    },
}


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML mapping of TrainConfig fields."""
    p = Path(path)
    if not p.is_file():
        raise FlytInputError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        if p.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise FlytInputError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise FlytInputError(f"config file {path} must hold a mapping of option names to values")
    return data


def build_config(preset: str | None, file_values: dict[str, Any], overrides: dict[str, Any]) -> TrainConfig:
    """Merge preset, config file and explicit overrides (in that order) into a TrainConfig."""
    values: dict[str, Any] = {}
    if preset is not None:
        if preset not in PRESETS:
            raise FlytInputError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
    values.update(file_values)
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise FlytInputError(f"unknown training option(s) {', '.join(unknown)}")
    return TrainConfig(**values)
