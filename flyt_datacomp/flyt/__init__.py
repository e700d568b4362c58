"""FLYT: the math core, the models, the training data and the trainer.

Math: ``losses`` (embedding-level losses), ``classes`` (downstream class sets and template draws),
``adamw`` (pure AdamW, its diagonal derivative, warm start), ``bilevel`` (the meta-gradient step,
efficient forward-mode and naive oracle), ``distributed`` (data-parallel hook points).
Models: ``models`` (mixing model, GLU head, their checkpoints, scoring a pool), ``features`` (the
one reader of their input features). Data: ``tars``, ``join``, ``stream``, ``upstream_stream``,
``downstream_stream``, ``decode``, ``loader``. Training: ``config``, ``checkpoints``, ``trainer``.
"""

from flyt_datacomp.flyt.adamw import AdamState, AdamWConfig, adamw_step, warmup_adam_state
from flyt_datacomp.flyt.bilevel import StepResult, flyt_step
from flyt_datacomp.flyt.classes import ClassSet, load_classes, sample_class_texts
from flyt_datacomp.flyt.losses import (
    DownstreamLoss,
    make_downstream_loss,
    weighted_clip_loss,
)

__all__ = [
    "AdamState", "AdamWConfig", "ClassSet", "DownstreamLoss", "StepResult", "adamw_step", "flyt_step",
    "load_classes", "make_downstream_loss", "sample_class_texts", "warmup_adam_state", "weighted_clip_loss",
]
