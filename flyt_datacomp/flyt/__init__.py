"""FLYT: the math core, the models, the training data and the trainer.

Math: ``losses`` (embedding-level losses), ``classes`` (downstream class sets and template draws),
``adamw`` (pure AdamW, its diagonal derivative, warm start), ``bilevel`` (the meta-gradient step,
efficient forward-mode and naive oracle), ``distributed`` (data-parallel hook points).
Models: ``models`` (mixing model, GLU head, their checkpoints, scoring a pool), ``features`` (the
one reader of their input features). Data: ``join``, ``stream``, ``upstream_stream``,
``downstream_stream``, ``decode``, ``loader``. Training: ``config``, ``checkpoints``, ``trainer``.

Import the modules themselves (``from flyt_datacomp.flyt.bilevel import flyt_step``): the package
imports nothing on its own, so reading the training configuration does not load torch.
"""
