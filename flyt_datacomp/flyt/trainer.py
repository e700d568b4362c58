"""The FLYT training loop: data, reference model, scoring model, checkpoints and exact resume.

Each step (paper Algorithm 1): scores s = q_phi(features) for an upstream batch, one pure bilevel
step (``bilevel.flyt_step``) giving theta_plus, Adam's new state and dL_down/dphi; phi takes an
AdamW step, theta moves to theta_plus (logit scale clamped to [0, ln 100]). Both learning rates
follow a cosine schedule with linear warmup. A checkpoint holds everything that determines the
rest of the run (models, both optimiser states, schedules (a function of the step), RNG states,
the data positions), so an interrupted run resumes to the same result.

Distributed: under torchrun (``WORLD_SIZE`` > 1) each rank reads B/W upstream and B'/W downstream
examples and ``flyt_step`` all-reduces the sums (paper Appendix A).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..clip_models import Vocabulary, compact_clip, create_clip, image_normalization, resolve_arch
from ..clip_models import tokenizer as make_tokenizer
from ..errors import FlytError, FlytInputError, TrainingDiverged
from ..io import atomic_path, ensure_writable_folder, local_path, provenance, sidecar_path, write_json
from ..pool import Pool
from ..progress import progress_bar
from . import distributed as D
from . import signal
from .adamw import AdamState, AdamWConfig, warmup_adam_state
from .bilevel import LOGIT_SCALE, flyt_step, tf32_matmuls
from .checkpoints import checkpoint_path, find_resume_point, save_checkpoint, verify_checkpoint
from .classes import all_class_texts, load_classes, sample_class_texts
from .config import TrainConfig
from .decode import default_image_transform
from .downstream_stream import DownstreamStream
from .features import IDENTITY_KEY, FeatureSpec, read_features
from .join import UidIndex
from .loader import BatchIterableDataset
from .losses import make_downstream_loss
from .models import GLUHead, MixingModel, save_scoring_model, score_features
from .upstream_stream import UpstreamStream
from .validation import ValidationSet, ZeroShotLoss, load_heldout, validation_gain

log = logging.getLogger(__name__)
MAX_LOGIT_SCALE = math.log(100.0)
SCORING_MODEL_FILE = "scoring_model.pt"
MIXING_WEIGHTS_FILE = "mixing_weights.json"
PROBE_SEED = 7919  # the validation probes' stream and prompt draws: seed + this
PROMPT_DRAWS = 4  # fixed draws of the class prompts the held-out loss averages over


def cosine_lr(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warmup over ``warmup`` steps, then cosine decay to 0 at ``total`` (step is 0-based)."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * min(1.0, progress)))


def _decayed(name: str) -> bool:
    """Whether weight decay applies to a scoring-model parameter: every one but biases, the authors'
    rule (``DifferentiableAdamW`` exempts open_clip's gains and biases; our scoring models have no
    gains, and M-FLYT's weight vector is their ``nn.Linear(k, 1)``'s weight)."""
    return not name.rsplit(".", 1)[-1].startswith("bias")


def scoring_param_groups(scoring: torch.nn.Module, loss: torch.nn.Module, weight_decay: float) -> list[dict]:
    """The scoring optimizer's two parameter groups: weight decay on the scoring model's weights,
    none on its biases (the E-FLYT head's output bias) nor on the downstream loss's temperature."""
    named = list(scoring.named_parameters())
    return [{"params": [p for n, p in named if _decayed(n)], "weight_decay": weight_decay},
            {"params": [p for n, p in named if not _decayed(n)] + list(loss.parameters()), "weight_decay": 0.0}]


def upgrade_scoring_opt_state(saved: dict, scoring: torch.nn.Module, loss: torch.nn.Module) -> dict:
    """A scoring-optimizer state in the layout of :func:`scoring_param_groups`.

    Checkpoints written before biases were exempt from weight decay hold two groups, [every scoring
    parameter], [the loss's parameters]; their per-parameter Adam state is moved to the current
    groups (the groups' hyperparameters are set again at every step). Any other state is returned
    unchanged.
    """
    names = [n for n, _ in scoring.named_parameters()]
    n_scoring, n_loss = len(names), len(list(loss.parameters()))
    groups = saved["param_groups"]
    decayed = [i for i, n in enumerate(names) if _decayed(n)]
    if len(decayed) == n_scoring or [len(g["params"]) for g in groups] != [n_scoring, n_loss]:
        return saved
    old_ids = [*groups[0]["params"], *groups[1]["params"]]  # old position -> state key
    order = decayed + [i for i, n in enumerate(names) if not _decayed(n)] + [n_scoring + j for j in range(n_loss)]
    state = {new: saved["state"][old_ids[old]] for new, old in enumerate(order) if old_ids[old] in saved["state"]}
    return {"state": state, "param_groups": [{**groups[0], "params": list(range(len(decayed)))},
                                             {**groups[1], "params": list(range(len(decayed), n_scoring + n_loss))}]}


class Trainer:
    """Set up from a :class:`TrainConfig` and an output folder; :meth:`run` trains (or resumes)."""

    def __init__(self, cfg: TrainConfig, output_dir: str | os.PathLike, *, progress: bool = True,
                 observer: Callable[..., None] | None = None):
        """``observer(step, upstream batch, scores, StepResult)``, if given, is called after every step
        (on every rank): a way to look at the per-example meta-gradients (``bench/diagnose_signal.py``)."""
        cfg.validate()
        self.cfg = cfg
        self.observer = observer
        self.out = local_path(output_dir, "the output folder")
        ensure_writable_folder(self.out, "output_dir")
        self._check_outputs()
        self.group = D.default_group()
        self.progress = progress and D.rank(self.group) == 0
        self.device = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if cfg.device == "auto" else cfg.device
        )
        if self.device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0 or (self.device.index or 0) >= count:
                raise FlytInputError(f"`device` {cfg.device} asked for, but this machine has {count} CUDA device(s); "
                                     "use `device` cpu or auto", params=["device"])
        use_bf16 = cfg.precision == "bf16" or (cfg.precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if use_bf16 else None
        # TF32 only when asked for (precision tf32); otherwise float32 work on CUDA is true float32
        self.tf32 = cfg.precision == "tf32"
        self.world, self.rank = D.world_size(self.group), D.rank(self.group)
        for name, size in (("batch_size", cfg.batch_size), ("downstream_batch_size", cfg.downstream_batch_size)):
            if size % self.world:
                raise FlytInputError(f"{name} {size} is not divisible by the {self.world} ranks")
        self._setup_data_and_models()

    def _check_outputs(self) -> None:
        """Refuse, before any work, a run folder where something else sits at an output's name."""
        files = ("config.json", "metrics.jsonl", SCORING_MODEL_FILE, MIXING_WEIGHTS_FILE,
                 SCORING_MODEL_FILE + ".json")
        for name in files:
            path = self.out / name
            if os.path.lexists(path) and not path.is_file():
                raise FlytInputError(f"{path} is not a file (a folder or a broken link?): this run writes a file "
                                     "there; move it away or choose another `output_dir`", params=["output_dir"])
        checkpoints = self.out / "checkpoints"
        if os.path.lexists(checkpoints) and not checkpoints.is_dir():
            raise FlytInputError(f"{checkpoints} is not a folder: this run keeps its checkpoints there; move it "
                                 "away or choose another `output_dir`", params=["output_dir"])

    # ------------------------------------------------------------------ setup

    def _setup_data_and_models(self) -> None:
        cfg = self.cfg
        arch = resolve_arch(cfg.reference_arch)
        torch.manual_seed(cfg.seed)
        source = cfg.reference_source
        used = {"checkpoint": "reference_checkpoint", "pretrained": "reference_pretrained"}.get(source)
        for name in ("reference_checkpoint", "reference_pretrained"):
            if getattr(cfg, name) and name != used:
                log.warning("%s is ignored: the reference model starts from %s", name,
                            "random weights (reference_init random)" if source == "random" else f"its {source}")
        self.model = create_clip(arch, seed=cfg.seed,
                                 checkpoint=cfg.reference_checkpoint if source == "checkpoint" else None,
                                 pretrained=cfg.reference_pretrained if source == "pretrained" else None).to(self.device)
        image_size = self.model.visual.image_size
        transform = default_image_transform(image_size if isinstance(image_size, int) else image_size[0],
                                            *image_normalization(arch))
        self.tokenizer = make_tokenizer(arch)
        self.classes = load_classes(cfg.classes)

        pool = Pool(cfg.metadata_dir, progress=self.progress)
        if cfg.compact_vocabulary:
            vocabulary = Vocabulary(self.tokenizer, [str(t) for t in pool.column("text")] + all_class_texts(self.classes))
            self.model, self.tokenizer = compact_clip(self.model, vocabulary).to(self.device), vocabulary
        self.model.eval()  # no dropout: the step must be a deterministic function of its inputs
        self.features = read_features(pool, FeatureSpec.of_config(cfg))  # what scoring the pool reads too
        self.pool_size = pool.size
        common = {"seed": cfg.seed, "shuffle_buffer": cfg.shuffle_buffer, "rank": self.rank, "world_size": self.world}
        self.upstream = UpstreamStream(
            cfg.shards_dir, UidIndex.from_pool(pool), self.features, image_transform=transform,
            tokenizer=self.tokenizer, batch_size=cfg.batch_size // self.world, **common,
        )
        self.downstream = DownstreamStream(
            cfg.downstream_dir, image_transform=transform, num_classes=self.classes.num_classes,
            batch_size=cfg.downstream_batch_size // self.world, holdout_fraction=cfg.validation_fraction, **common,
        )
        self.validation = self._validation_set(transform) if cfg.validation_fraction > 0 and self.rank == 0 else None
        self.best: dict[str, Any] | None = None  # the checkpoint with the largest validation gain so far
        self.judge: dict[str, Any] | None = None  # the reference's state at the start of FLYT (validation)
        if cfg.model == "m-flyt":
            self.scoring: torch.nn.Module = MixingModel.from_pool_features(cfg.inputs, self.features.arrays[0],
                                                                           pairwise=cfg.mixing == "pairwise")
        else:
            self.scoring = GLUHead(self.features.dim, cfg.glu_hidden, cosine_init=cfg.glu_cosine_init, seed=cfg.seed)
        self.scoring.to(self.device)
        self.loss = make_downstream_loss(cfg.downstream_loss).to(self.device)
        self.scoring_opt = torch.optim.AdamW(  # both scoring models always have parameters
            scoring_param_groups(self.scoring, self.loss, cfg.scoring_decay),
            lr=cfg.scoring_lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
        )
        self.class_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.theta = {k: v.detach().clone() for k, v in self.model.named_parameters()}
        self.adam = AdamState.zeros(self.theta)
        self.step = 0
        self.collapse = CollapseWatch(cfg.batch_size, cfg.steps)
        self.up_batches = 0
        self.down_batches = 0
        self.warmed = False

    def _validation_set(self, transform) -> ValidationSet:
        """The held-out downstream examples, the fixed probe batches (the pool's stream under a seed of
        their own) and the fixed prompt draws (see :mod:`~flyt_datacomp.flyt.validation`)."""
        cfg = self.cfg
        images, labels = load_heldout(cfg.downstream_dir, cfg.validation_fraction, transform=transform,
                                      num_classes=self.classes.num_classes, limit=cfg.validation_size)
        probe_stream = UpstreamStream(cfg.shards_dir, self.upstream.index, self.features, image_transform=transform,
                                      tokenizer=self.tokenizer, batch_size=cfg.batch_size, seed=cfg.seed + PROBE_SEED,
                                      shuffle_buffer=cfg.shuffle_buffer)
        batches = probe_stream.batches()
        probes = [{k: b[k] for k in ("images", "texts", "features", "positions")}  # on the CPU; moved one at a time
                  for b in (next(batches) for _ in range(cfg.validation_probes))]
        gen = torch.Generator().manual_seed(cfg.seed + PROBE_SEED)
        prompts = [self._to_device(self.tokenizer(sample_class_texts(self.classes, gen))) for _ in range(PROMPT_DRAWS)]
        log.info("validation: %d held-out downstream examples, %d probe batches", len(labels), len(probes))
        return ValidationSet(self._to_device(images), self._to_device(labels), prompts, probes)

    def validation_gain(self, scoring: torch.nn.Module | None = None, *, at_start: bool = True) -> dict[str, float]:
        """The validation gain of ``scoring`` (default: the run's scoring model; any model reading the
        run's features; see :mod:`~flyt_datacomp.flyt.validation`), judged by one reference step of the
        base ``reference_lr`` from the reference's state at the start of FLYT (``at_start``, kept for
        this: the same judge at every checkpoint, so their gains compare), or from its current state."""
        if self.validation is None:
            raise FlytInputError("validation needs `validation_fraction` > 0", params=["validation_fraction"])
        scoring = self.scoring if scoring is None else scoring.to(self.device)
        data = self.validation
        with torch.no_grad():
            scores = [score_features(scoring, self._to_device(p["features"])) for p in data.probes]
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        if at_start:
            judge = self.judge
            theta = {k: v.to(self.device) for k, v in judge["theta"].items()}
            adam = AdamState({k: v.to(self.device) for k, v in judge["exp_avg"].items()},
                             {k: v.to(self.device) for k, v in judge["exp_avg_sq"].items()}, judge["step"])
        else:
            theta, adam = self.theta, self.adam
        with autocast:
            loss = self.loss if self.cfg.validation_loss == "train" else ZeroShotLoss()
            return validation_gain(self.model, theta, adam, self._ref_cfg(self.cfg.reference_lr), loss, data,
                                   scores, micro_batch_size=self.cfg.micro_batch_size)

    def _validate(self) -> dict[str, float]:
        """The current scoring model's validation gain; remembers the best checkpoint's scoring model."""
        result = self.validation_gain()
        if self.best is None or result["val_gain"] > self.best["val_gain"]:
            self.best = {"step": self.step, "val_gain": result["val_gain"],
                         "scoring": {k: v.detach().cpu().clone() for k, v in self.scoring.state_dict().items()}}
        return result

    def _ref_cfg(self, lr: float) -> AdamWConfig:
        c = self.cfg
        return AdamWConfig(lr=lr, weight_decay=c.weight_decay, betas=(c.beta1, c.beta2), eps=c.eps)

    # ------------------------------------------------------------------ data

    def _batches(self, stream, start: int) -> Iterator[dict[str, Any]]:
        """Decoded batches from ``start``: in this process, or from ``cfg.workers`` DataLoader
        workers (each producing whole batches, so the sequence is the same either way)."""
        if self.cfg.workers == 0:
            return stream.batches(start)
        dataset = BatchIterableDataset(stream, num_workers=self.cfg.workers, start_batch=start)
        return iter(torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=self.cfg.workers,
                                                pin_memory=self.device.type == "cuda"))

    def _upstream_iter(self) -> Iterator[dict[str, Any]]:
        for batch in self._batches(self.upstream, self.up_batches):
            self.up_batches += 1
            yield batch

    def _downstream_iter(self) -> Iterator[dict[str, Any]]:
        for batch in self._batches(self.downstream, self.down_batches):
            self.down_batches += 1
            yield batch

    def _to_device(self, x):
        if isinstance(x, (tuple, list)):
            return type(x)(self._to_device(v) for v in x)
        return x.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"

    def _state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "warmed": self.warmed,
            "theta": {k: v.cpu() for k, v in self.theta.items()},
            "buffers": {k: v.cpu() for k, v in self.model.named_buffers()},  # e.g. BatchNorm's statistics
            "adam": {"exp_avg": {k: v.cpu() for k, v in self.adam.exp_avg.items()},
                     "exp_avg_sq": {k: v.cpu() for k, v in self.adam.exp_avg_sq.items()},
                     "step": self.adam.step},
            "scoring": self.scoring.state_dict(),
            "loss": self.loss.state_dict(),
            "scoring_opt": self.scoring_opt.state_dict(),
            "class_gen": self.class_gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "data": {"upstream_batches": self.up_batches, "downstream_batches": self.down_batches},
            "best": self.best,
            "judge": self.judge,
            "config": dataclasses.asdict(self.cfg),
            "version": __version__,
        }

    def save_checkpoint(self) -> Path:
        path = checkpoint_path(self.checkpoint_dir, self.step)
        if self.rank == 0:
            save_checkpoint(self.checkpoint_dir, self.step, self._state())
        D.barrier()
        return path

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint a resume would start from (the newest usable one), or None."""
        try:
            found = find_resume_point(self.checkpoint_dir)
        except FlytInputError:
            return None
        return found[0] if found else None

    def load_checkpoint(self, path: Path, state: dict[str, Any] | None = None) -> None:
        state = verify_checkpoint(path) if state is None else state
        saved = state["config"]
        now = dataclasses.asdict(self.cfg)
        ignored = {"tensorboard", "device"}  # workers stay: they change the data order
        diff = sorted(k for k in now if k not in ignored and saved.get(k) != now[k])
        if diff:
            detail = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {now[k]!r}" for k in diff)
            raise FlytInputError(f"cannot resume from {path}: the configuration changed ({detail})")
        dev = self.device
        self.step, self.warmed = state["step"], state["warmed"]
        self.theta = {k: v.to(dev) for k, v in state["theta"].items()}
        buffers = dict(self.model.named_buffers())
        with torch.no_grad():
            for k, v in state.get("buffers", {}).items():  # absent in older checkpoints: never changed then
                buffers[k].copy_(v)
        a = state["adam"]
        self.adam = AdamState({k: v.to(dev) for k, v in a["exp_avg"].items()},
                              {k: v.to(dev) for k, v in a["exp_avg_sq"].items()}, a["step"])
        self.scoring.load_state_dict(state["scoring"])
        self.loss.load_state_dict(state["loss"])
        try:
            self.scoring_opt.load_state_dict(upgrade_scoring_opt_state(state["scoring_opt"], self.scoring, self.loss))
        except ValueError as exc:  # parameter groups laid out differently (an older version's checkpoint)
            raise FlytInputError(f"cannot resume from {path}: its scoring optimizer state does not fit this version's "
                                 f"({exc}); start a new `output_dir`", params=["output_dir"]) from None
        self.class_gen.set_state(state["class_gen"])
        torch.set_rng_state(state["torch_rng"])
        self.best = state.get("best")
        self.judge = state.get("judge")
        self.up_batches = state["data"]["upstream_batches"]
        self.down_batches = state["data"]["downstream_batches"]

    # ------------------------------------------------------------------ phases

    def _warm_start(self) -> None:
        """Optional plain CLIP pretraining on the unfiltered pool, then Adam's warm start."""
        cfg = self.cfg
        up = self._upstream_iter()

        def batches(n: int, desc: str):
            for _ in progress_bar(range(n), desc=desc, unit="step", disable=not self.progress or n < 20, leave=False):
                b = next(up)
                yield self._to_device(b["images"]), self._to_device(b["texts"])

        if cfg.reference_pretrain_steps:
            n = cfg.reference_pretrain_steps
            # ordinary CLIP training, as the benchmark's recipe trains: normalisation layers learn their
            # running statistics (BatchNorm's; in eval mode they would stay at their initial 0 and 1)
            self.model.train()
            try:
                self.theta, _ = warmup_adam_state(  # DataComp's schedule: a tenth of linear warm-up, then cosine
                    self.model, batches(n, "reference on the unfiltered pool"), params=self.theta,
                    cfg=self._ref_cfg(cfg.reference_pretrain_lr), reduce_grads=self._mean_over_ranks,
                    lr_schedule=lambda i: cosine_lr(i, cfg.reference_pretrain_lr, max(1, n // 10), n))
            finally:
                self.model.eval()
            self._average_buffers()
        if cfg.adam_warmup_steps:
            self.theta, self.adam = warmup_adam_state(self.model, batches(cfg.adam_warmup_steps, "Adam warm-up"),
                                                      params=self.theta, cfg=self._ref_cfg(cfg.reference_lr),
                                                      reduce_grads=self._mean_over_ranks)
        self._clamp_logit_scale()
        self._check_ranks_agree()
        self.warmed = True
        if self.validation is not None:
            self._keep_judge()

    def _mean_over_ranks(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The mean of each tensor over the ranks (itself on one rank): every rank then takes the same step."""
        if self.world == 1:
            return tensors
        return {k: v / self.world for k, v in D.all_reduce_sum(tensors, self.group).items()}

    def _average_buffers(self) -> None:
        """The model's floating-point buffers (BatchNorm's running statistics) averaged over the ranks,
        each of which saw its own share of the batches."""
        floats = {k: b for k, b in self.model.named_buffers() if b.is_floating_point()}
        if self.world == 1 or not floats:
            return
        with torch.no_grad():
            for k, v in self._mean_over_ranks(floats).items():
                floats[k].copy_(v)

    def _check_ranks_agree(self) -> None:
        """Every rank must hold the same reference model before FLYT starts; a difference is a defect."""
        if self.world == 1:
            return
        with torch.no_grad():
            mine = torch.stack([torch.stack([v.double().sum(), v.double().square().sum()])
                                for v in [*self.theta.values(), *self.model.buffers()]]).reshape(-1)
            every = D.all_gather_cat(mine.unsqueeze(0), self.group)
        differ = [r for r in range(self.world) if not torch.equal(every[r], every[0])]
        if differ:
            raise FlytError(f"the reference model of rank(s) {differ} differs from rank 0's after the warm start")

    def _keep_judge(self) -> None:
        """The reference's state at the start of FLYT, on the CPU: validation's fixed judge."""
        self.judge = {"theta": {k: v.detach().cpu().clone() for k, v in self.theta.items()},
                      "exp_avg": {k: v.detach().cpu().clone() for k, v in self.adam.exp_avg.items()},
                      "exp_avg_sq": {k: v.detach().cpu().clone() for k, v in self.adam.exp_avg_sq.items()},
                      "step": self.adam.step}

    def _clamp_logit_scale(self) -> None:
        if LOGIT_SCALE in self.theta:
            self.theta[LOGIT_SCALE] = self.theta[LOGIT_SCALE].clamp(0, MAX_LOGIT_SCALE)

    def _one_step(self, up: dict[str, Any], down: dict[str, Any]) -> dict[str, float]:
        cfg = self.cfg
        ref_lr = cosine_lr(self.step, cfg.reference_lr, cfg.warmup_steps, cfg.steps)
        scoring_lr = cosine_lr(self.step, cfg.scoring_lr, cfg.warmup_steps, cfg.steps)
        class_tokens = self._to_device(self.tokenizer(sample_class_texts(self.classes, self.class_gen)))
        feats = self._to_device(up["features"])
        scoring_params = dict(self.scoring.named_parameters())
        scores = score_features(self.scoring, feats)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype)
                    if self.autocast_dtype is not None else contextlib.nullcontext())
        matmuls = tf32_matmuls(self.tf32) if self.device.type == "cuda" else contextlib.nullcontext()
        with autocast, matmuls:
            res = flyt_step(
                self.model, self.theta, self.adam, scores,
                (self._to_device(up["images"]), self._to_device(up["texts"])),
                (self._to_device(down["images"]), self._to_device(down["labels"])),
                class_tokens, self.loss, scoring_params=scoring_params, cfg=self._ref_cfg(ref_lr),
                micro_batch_size=cfg.micro_batch_size, group=self.group,
            )
        self._check_finite(res)
        self.theta, self.adam = res.theta_plus, res.adam_state
        self._clamp_logit_scale()
        for group in self.scoring_opt.param_groups:
            group["lr"] = scoring_lr
        for name, p in self.scoring.named_parameters():
            p.grad = res.grad_scoring[name].detach().to(p.dtype)
        for name, p in self.loss.named_parameters():
            p.grad = res.grad_downstream[name].detach().to(p.dtype)
        self.scoring_opt.step()
        self.scoring_opt.zero_grad(set_to_none=True)
        metrics = {"step": self.step + 1, **{k: float(v) for k, v in res.metrics.items()},
                   "reference_lr": ref_lr, "scoring_lr": scoring_lr}
        if isinstance(self.scoring, MixingModel):
            metrics["mixing_weights"] = self.scoring.mixing_weights()
            metrics[signal.KEY] = dict(zip(self.scoring.term_names, res.grad_scoring["weight"].double().cpu().tolist()))
        if self.observer is not None:
            self.observer(self.step + 1, up, scores.detach(), res)
        if hasattr(self.loss, "temperature") and isinstance(self.loss.temperature, torch.Tensor):
            metrics["downstream_temperature"] = float(self.loss.temperature.detach())
        return metrics

    def _check_finite(self, res) -> None:
        values = [torch.as_tensor(v) for v in res.metrics.values()] + list(res.grad_scoring.values())
        if all(torch.isfinite(v).all() for v in values):
            return
        latest = self.latest_checkpoint()
        where = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
        bad = {k: float(v) for k, v in res.metrics.items()}
        raise TrainingDiverged(f"non-finite loss or gradient at step {self.step + 1} ({bad}); {where}")

    # ------------------------------------------------------------------ main loop

    def run(self, *, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``cfg.steps`` (resuming from the latest checkpoint if there is one).

        ``stop_after`` ends this call after that many total steps (to test interruption).
        """
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        found = find_resume_point(self.checkpoint_dir)
        if found is not None:
            latest, state, notes = found
            self.load_checkpoint(latest, state)
            for note in notes:
                log.warning("resume: %s", note)
            log.log(logging.WARNING if notes else logging.INFO, "resumed from %s at step %d", latest, self.step)
        elif self.rank == 0:
            write_json(self.out / "config.json", provenance(config=dataclasses.asdict(cfg)))
        metrics_path = self.out / "metrics.jsonl"
        if self.rank == 0:
            _truncate_metrics(metrics_path, self.step)
        writer = _tensorboard(self.out) if cfg.tensorboard and self.rank == 0 else None
        if not self.warmed:
            self._warm_start()
        up, down = self._upstream_iter(), self._downstream_iter()
        end = min(cfg.steps, stop_after) if stop_after is not None else cfg.steps
        bar = progress_bar(total=cfg.steps, initial=self.step, desc="FLYT", unit="step", disable=not self.progress)
        try:
            while self.step < end:
                t0 = time.perf_counter()
                metrics = self._one_step(next(up), next(down))
                self.step += 1
                metrics["step_time"] = time.perf_counter() - t0
                checkpoint = self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps
                if checkpoint and self.validation is not None:
                    metrics.update(self._validate())
                if self.rank == 0:
                    with open(metrics_path, "a") as fh:
                        fh.write(json.dumps(metrics) + "\n")
                    if writer is not None:
                        for k, v in metrics.items():
                            if isinstance(v, float):
                                writer.add_scalar(k, v, self.step)
                self.collapse.update(metrics["weight_entropy"], self.step)
                bar.set_postfix(down=f"{metrics['down_loss']:.3f}", H=f"{metrics['weight_entropy']:.2f}")
                bar.update(1)
                if checkpoint:
                    self.save_checkpoint()
        finally:
            bar.close()
            if writer is not None:
                writer.close()
        if self.step >= cfg.steps:
            return self.finish()
        return {"step": self.step, "finished": False}

    def finish(self) -> dict[str, Any]:
        """Write the final scoring model (and the mixing weights for M-FLYT)."""
        meta = {"config": dataclasses.asdict(self.cfg), "steps": self.step, "pool_size": self.pool_size,
                IDENTITY_KEY: self.features.identity,
                "warnings": [self.collapse.message] if self.collapse.message else []}
        if self.cfg.workers == 0:  # with workers the join counters live in the worker processes
            meta["upstream_join"] = self.upstream.counters()
            log.info("upstream join: %s", meta["upstream_join"])
        result: dict[str, Any] = {"step": self.step, "finished": True,
                                  "scoring_model": str(self.out / SCORING_MODEL_FILE)}
        if self.rank != 0:
            return result
        if self.best is not None:  # the checkpoint with the largest validation gain
            self.scoring.load_state_dict(self.best["scoring"])
            meta["validation"] = {"selected_step": self.best["step"], "val_gain": self.best["val_gain"],
                                  "fraction": self.cfg.validation_fraction}
            result["selected_step"] = self.best["step"]
        model_path = self.out / SCORING_MODEL_FILE
        save_scoring_model(model_path, self.scoring, meta)
        write_json(sidecar_path(model_path), provenance(output=str(model_path), kind=self.scoring.kind, **meta))
        if isinstance(self.scoring, MixingModel):
            weights = self.scoring.mixing_weights()
            write_json(self.out / MIXING_WEIGHTS_FILE, weights)
            result["mixing_weights"] = weights
            records = signal.read_records(self.out / "metrics.jsonl")
            result["signal"] = {k: {**v, "weight": weights[k]} for k, v in signal.summarize(records).items()
                                if k in weights}  # the weights of the model written
            if signal.plot_signal(records, self.out / signal.SIGNAL_PLOT):
                result["signal_plot"] = str(self.out / signal.SIGNAL_PLOT)
        return result


class CollapseWatch:
    """Warns once when the batch weights collapse onto one or two examples for many steps.

    The weights w = softmax(scores) over a batch of B have entropy ln B when uniform; below
    ``fraction * ln B`` (about exp(0.1 ln B) examples carry the weight: 1.6 of 128, 2.3 of 4096) the
    meta-gradient comes from almost nothing. Collapse is reported after ``patience`` such steps in a
    row (20, or a tenth of a short run).
    """

    def __init__(self, batch_size: int, steps: int, fraction: float = 0.1):
        self.limit = fraction * math.log(batch_size)
        self.patience = max(3, min(20, steps // 10))
        self.run = 0
        self.message: str | None = None

    def update(self, entropy: float, step: int) -> None:
        self.run = self.run + 1 if entropy < self.limit else 0
        if self.run == self.patience and self.message is None:
            self.message = (
                f"the batch weights have collapsed: their entropy stayed below {self.limit:.2f} nats (uniform: "
                f"{self.limit * 10:.2f}) for {self.patience} steps up to step {step}, so each step learns from one "
                "or two examples and the scoring model will rank the pool poorly. Likely causes: a scoring "
                "learning rate too high for these features (scoring_lr), a downstream loss that gives "
                "little signal (plain CE with temperature 1 on a weak reference: try downstream_loss ce_temp), "
                "or scoring features on a large scale"
            )
            log.warning("warning: %s", self.message)


def format_mixing_weights(weights: dict[str, float]) -> str:
    """The learned weights as a small table (the paper's Table 2, left)."""
    width = max(len("input"), *(len(k) for k in weights))
    lines = [f"{'input':<{width}}  weight (on the standardised input)", f"{'-' * width}  {'-' * 10}"]
    lines += [f"{k:<{width}}  {v:+.4f}" for k, v in sorted(weights.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines)


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop metric lines logged after the checkpoint we resume from, and any line a
    kill cut short (a partial last line is what a kill in the middle of an append leaves)."""
    if not path.exists():
        return
    keep, broken = [], 0
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
            step_of_line = int(record["step"])
        except (ValueError, KeyError, TypeError):
            broken += bool(line.strip())
            continue
        if step_of_line <= step:
            keep.append(line)
    if broken:
        log.warning("metrics: dropped %d unreadable line(s) of %s (cut short by a kill?)", broken, path)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise FlytInputError("`tensorboard` needs the tensorboard package: pip install 'flyt-datacomp[tensorboard]'",
                             params=["tensorboard"]) from None
    return SummaryWriter(str(out / "tensorboard"))
