"""Training configuration: one dataclass, named presets, and JSON/YAML config files.

Precedence: preset < config file < command-line options. Every field can be set by each.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from ..errors import FlytInputError


def _field(default: Any, doc: str, *, choices: tuple[str, ...] | None = None, flag: str | None = None,
           aliases: tuple[str, ...] = (), metavar: str | None = None) -> Any:
    """A TrainConfig field with its command-line help (and its fixed set of values, if it has one;
    ``flag`` and ``aliases``: its command-line spelling when it is not ``--<name-with-dashes>``,
    and older spellings that still work)."""
    metadata: dict[str, Any] = {"help": doc, "aliases": aliases, "metavar": metavar}
    if choices is not None:
        metadata["choices"] = choices
    if flag is not None:
        metadata["flag"] = flag
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


REFERENCE_INITS = ("checkpoint", "pretrained", "random")
MAX_SEED = 2**63 - 1  # the largest seed every generator (torch's too) takes


@dataclasses.dataclass
class TrainConfig:
    """Every training option; ``flyt_datacomp.train`` makes one command-line flag per field."""

    # what to train
    model: str = _field("m-flyt", "m-flyt (a linear mix of standardised input scores) or e-flyt (an FFN-GLU head "
                        "on the pool's CLIP embeddings)", choices=("m-flyt", "e-flyt"))
    inputs: list[str] = _field([], "M-FLYT input scores, comma separated: columns of the pool's parquet files, or "
                               "inputs of the store given by --inputs-dir", flag="--mixing-inputs",
                               aliases=("--inputs",))
    inputs_dir: str | None = _field(None, "an input store (flyt-datacomp inputs compute) whose inputs M-FLYT may mix, "
                                    "standardised with their pool statistics", metavar="STORE")
    embedding_prefix: str = _field("b32", "E-FLYT features: the npz keys <prefix>_img and <prefix>_txt (b32: the "
                                   "OpenAI ViT-B/32 embeddings DataComp ships)")
    glu_hidden: int | None = _field(None, "E-FLYT hidden width (default: twice the embedding width)")
    glu_cosine_init: bool = _field(True, "E-FLYT: start the head close to the cosine similarity of the two embeddings")
    # data
    metadata_dir: str | None = _field(None, "pool metadata folder of parquet/npz pairs (any fsspec URL)",
                                      aliases=("--metadata_dir",), metavar="URL")
    shards_dir: str | None = _field(None, "pool image shards in img2dataset layout (any fsspec URL)", metavar="URL")
    downstream_dir: str | None = _field(None, "labelled downstream shards (jpg + cls), as `flyt-datacomp downstream "
                                        "build` writes them", metavar="URL")
    classes: str = _field("imagenet", "downstream class names and prompt templates: imagenet, digits or a JSON file")
    shuffle_buffer: int = _field(10_000, "samples held by each stream's shuffle buffer", flag="--shuffle-bufsize",
                                 aliases=("--shuffle-buffer",))
    workers: int = _field(0, "DataLoader worker processes per stream (0: read in the training process); part of "
                          "the data order")
    # reference model
    reference_arch: str = _field("ViT-B-32", "open_clip architecture of the reference model, or the offline tiny / "
                                 "tiny-resnet")
    reference_init: str | None = _field(None, "where the reference model's weights come from: checkpoint "
                                        "(--reference-checkpoint), pretrained (--reference-pretrained) or random; "
                                        "unset: the checkpoint if given, else the pretrained tag if given, else random",
                                        choices=REFERENCE_INITS)
    reference_checkpoint: str | None = _field(None, "local open_clip checkpoint to start the reference model from",
                                              metavar="FILE")
    reference_pretrained: str | None = _field(None, "open_clip pretrained tag to start the reference model from "
                                              "(its weights must be reachable)")
    reference_pretrain_steps: int = _field(0, "plain CLIP steps on the unfiltered pool before FLYT (a stand-in for a "
                                           "reference trained on the pool)")
    reference_pretrain_lr: float = _field(1e-3, "learning rate of those plain CLIP steps")
    compact_vocabulary: bool = _field(False, "cut the reference model's token table to the tokens that the pool's "
                                      "captions (its `text` column) and the class prompts use: the same results, "
                                      "much faster steps for a small model whose table would dominate it (the "
                                      "demo's captions use 38 of the 49,408 tokens); it reads every caption, so "
                                      "it is for small pools, not DataComp's")
    adam_warmup_steps: int = _field(5, "plain CLIP-loss AdamW steps that warm the reference optimiser's state "
                                    "(m, v, t) before the first FLYT step")
    # optimisation (paper Table 7)
    steps: int = _field(5000, "FLYT steps")
    warmup_steps: int = _field(100, "linear warm-up steps of both cosine learning-rate schedules")
    batch_size: int = _field(4096, "upstream batch B (global, over all ranks)")
    downstream_batch_size: int = _field(3072, "downstream batch B' (global, over all ranks)")
    reference_lr: float = _field(5e-5, "reference model learning rate")
    scoring_lr: float = _field(1e-3, "scoring model learning rate")
    weight_decay: float = _field(
        0.2, "decoupled AdamW weight decay of the reference model (>= 2-dim weights only), and of the scoring model "
        "unless --scoring-weight-decay is given (every weight but biases); each step shrinks a weight by lr x wd")
    scoring_weight_decay: float | None = _field(
        None, "the scoring model's own decoupled weight decay (default: --weight-decay). With AdamW run long "
        "enough, an M-FLYT weight settles near (mean / RMS of its meta-gradient) / wd, so lr x wd x steps of a "
        "few units lets the weights settle where the task's signal puts them")
    mixing: str = _field("linear", "M-FLYT's model: linear (the paper's: a weight per standardised input) or pairwise "
                         "(also a weight per product of two standardised inputs, which can express 'this AND that')",
                         choices=("linear", "pairwise"))
    beta1: float = _field(0.9, "AdamW beta1 of both optimisers")
    beta2: float = _field(0.98, "AdamW beta2 of both optimisers")
    eps: float = _field(1e-6, "AdamW epsilon of both optimisers")
    downstream_loss: str = _field("ce", "ce (cross entropy, temperature 1), ce_temp (with a learned temperature) or "
                                  "clip (CLIP loss on image / class-prompt pairs)", choices=("ce", "ce_temp", "clip"))
    micro_batch_size: int | None = _field(None, "chunk size of every encoder pass (GradCache-style), to fit B = 4096 "
                                          "on one GPU")
    precision: str = _field("auto", "auto (bf16 autocast on CUDA, fp32 on CPU), fp32, bf16, or tf32: float32 with "
                            "TF32 matrix products and convolutions in the encoders on CUDA (faster, about 10 mantissa "
                            "bits; the losses stay in float32; elsewhere the same as fp32)",
                            choices=("auto", "fp32", "bf16", "tf32"))
    device: str = _field("auto", "auto (CUDA when there is a GPU), cpu or cuda (a config file may name cuda:N)",
                         choices=("auto", "cpu", "cuda"))
    # validation: FLYT's objective on held-out downstream examples
    validation_fraction: float = _field(0.0, "share of the downstream examples held out as a validation split "
                                        "(chosen by a hash of shard name and key; never trained on): at every "
                                        "checkpoint the scoring model's validation gain is measured on it (how much "
                                        "more a reference step on its weighting lowers the held-out loss than an "
                                        "unweighted step, from the reference's state at the start), and the final "
                                        "scoring model is the checkpoint's with the largest gain (0: no validation, "
                                        "the last step's model)")
    validation_loss: str = _field("zero_shot", "the held-out loss validation judges by: zero_shot (the loss of the "
                                  "model's own zero-shot classifier: cross entropy at its own temperature; the same "
                                  "for runs trained with any downstream loss) or train (the run's downstream_loss)",
                                  choices=("zero_shot", "train"))
    validation_size: int = _field(1024, "at most this many held-out examples form the validation set")
    validation_probes: int = _field(4, "fixed upstream batches the validation gain is measured on")
    # bookkeeping
    seed: int = _field(0, "seed of everything random (data order, initialisations, template draws)")
    checkpoint_every: int = _field(500, "steps between checkpoints")
    tensorboard: bool = _field(False, "also log the metrics to TensorBoard (needs the tensorboard extra)")

    def identity(self) -> dict[str, Any]:
        """The fields that identify a training configuration (for the names of cached runs): all of them,
        except the options of :data:`NEUTRAL_AT_DEFAULT` where they hold their default, so adding such an
        option keeps the runs trained before it was there."""
        values = dataclasses.asdict(self)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return {k: v for k, v in values.items() if not (k in NEUTRAL_AT_DEFAULT and v == defaults[k])}

    @property
    def scoring_decay(self) -> float:
        """The scoring model's weight decay (``scoring_weight_decay``, else ``weight_decay``)."""
        return self.weight_decay if self.scoring_weight_decay is None else self.scoring_weight_decay

    @property
    def reference_source(self) -> str:
        """Where the reference weights come from: ``reference_init``, or what the options give."""
        if self.reference_init is not None:
            return self.reference_init
        if self.reference_checkpoint:
            return "checkpoint"
        return "pretrained" if self.reference_pretrained else "random"

    def validate(self) -> None:
        def bad(name: str, why: str) -> FlytInputError:
            return FlytInputError(f"bad training option {name}={getattr(self, name)!r}: {why}")

        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if f.name == "device" and isinstance(value, str) and re.fullmatch(r"cuda:\d+", value):
                continue
            if choices and value is not None and value not in choices:
                raise bad(f.name, f"choose {', '.join(choices[:-1])} or {choices[-1]}")
        if self.model == "m-flyt" and not self.inputs:
            raise bad("inputs", "M-FLYT needs at least one input score column")
        if self.model == "m-flyt" and len(set(self.inputs)) != len(self.inputs):
            raise bad("inputs", "input columns must be distinct")
        if not 0 <= self.validation_fraction < 1:
            raise bad("validation_fraction", "must be in [0, 1)")
        for name in ("steps", "batch_size", "downstream_batch_size", "checkpoint_every", "shuffle_buffer",
                     "validation_size", "validation_probes"):
            if getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        for name in ("warmup_steps", "adam_warmup_steps", "reference_pretrain_steps", "workers"):
            if getattr(self, name) < 0:
                raise bad(name, "must be non-negative")
        for name in ("reference_lr", "scoring_lr", "reference_pretrain_lr", "eps"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise bad(name, "must be a positive number")
        for wd, lr in (("weight_decay", "reference_lr"), ("scoring_weight_decay", "scoring_lr")):
            value = getattr(self, wd)
            if value is not None and not (value >= 0 and getattr(self, lr) * value < 1):
                raise bad(wd, f"must be >= 0 with {lr} x {wd} < 1 (a step shrinks a weight by that share)")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise bad(name, "must be in [0, 1)")
        for name in ("micro_batch_size", "glu_hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise bad(name, "must be at least 1")
        self._validate_seed(bad)
        self._validate_reference_init()
        for name in ("metadata_dir", "shards_dir", "downstream_dir"):
            if not getattr(self, name):
                raise FlytInputError(f"missing training option `{name}`", params=[name])

    def _validate_seed(self, bad) -> None:
        """torch seeds its generators with a 64-bit number."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise bad("seed", f"must be a whole number from 0 to {MAX_SEED:,} (2**63 - 1)")

    def _validate_reference_init(self) -> None:
        if self.reference_init == "checkpoint" and not self.reference_checkpoint:
            raise FlytInputError(
                "the reference model is to start from a checkpoint (`reference_init` checkpoint, which the "
                "m-flyt-base preset sets), but no `reference_checkpoint` was given. The paper's M-FLYT reference is "
                "a ViT-B/32 trained on the unfiltered DataComp medium pool (Table 7); starting from random weights "
                "instead cost 1.8 ImageNet points (0.359 -> 0.341, Table 8). Give `reference_checkpoint` FILE (an "
                "open_clip checkpoint of such a model, e.g. the epoch_latest.pt that `flyt-datacomp eval train` "
                "writes for the unfiltered pool), or `reference_init` random to start from random weights anyway",
                params=["reference_init", "reference_checkpoint"])
        if self.reference_init == "pretrained" and not self.reference_pretrained:
            raise FlytInputError("`reference_init` pretrained needs `reference_pretrained` TAG (an open_clip tag)",
                                 params=["reference_init", "reference_pretrained"])


# options whose default trains as the package did before they existed (a run's identity leaves them out
# where they hold it): the compact vocabulary, the scoring model's own decay, the mixing model, validation
NEUTRAL_AT_DEFAULT = frozenset({"compact_vocabulary", "scoring_weight_decay", "mixing", "validation_fraction",
                                "validation_loss", "validation_size", "validation_probes"})

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
        "reference_init": "checkpoint",  # a ViT-B/32 trained on the unfiltered pool: --reference-checkpoint
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
        "compact_vocabulary": True,  # the same meta-gradients, a fifth less time per step (bench/bench_demo_step.py)
    },
    # M-FLYT over every input the demo's input store holds (the paper's many-input M-FLYT in small):
    # both CLIP scores, s-CLIPLoss of each CLIP, NormSim-inf and a classifier against the target
    # digits, and E-FLYT's score; the store (--inputs-dir) is made by flyt_datacomp.demo.inputs
    # In the paper's regime, scaled to the demo: the reference starts from a CLIP trained on the unfiltered
    # pool (the paper's "DataComp medium" start: here 200 plain CLIP steps, the benchmark recipe's length),
    # decoupled weight decay on the mixing weights long enough for them to settle (lr x decay x steps = 6),
    # cosine after a warm-up, the best checkpoint by the validation gain on a held-out fifth of the
    # downstream digits. Chosen on that validation objective over the 150-step preset, the b32 scorer's
    # start, a learned downstream temperature and pairwise mixing (docs/benchmark.md, "Choosing the FLYT
    # settings on validation").
    "m-flyt-demo-all": {
        **_DEMO,
        "model": "m-flyt",
        "inputs": ["clip_b32_similarity_score", "clip_l14_similarity_score", "neg_clip_loss_b32", "neg_clip_loss_l14",
                   "normsim_digits", "classifier_digits", "eflyt"],
        "downstream_loss": "ce",
        "reference_init": "random", "reference_pretrain_steps": 200, "reference_pretrain_lr": 1e-3,
        "steps": 600, "warmup_steps": 60, "checkpoint_every": 50,
        "scoring_lr": 2e-2, "scoring_weight_decay": 0.5,
        "validation_fraction": 0.2, "compact_vocabulary": True,
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


# what each preset is, for --help and the log (a preset missing here is simply not described)
PRESET_DESCRIPTIONS: dict[str, str] = {
    "m-flyt-base": "the paper's M-FLYT-Base (Table 7): a ViT-B-32 reference started from a checkpoint of a model "
                   "trained on the unfiltered pool (--reference-checkpoint, required; or --reference-init random), "
                   "B 4096, B' 3072, 5000 steps, CE downstream loss",
    "e-flyt-base": "the paper's E-FLYT-Base (Table 7): the reference model starts from OpenAI's ViT-B/32 weights "
                   "(open_clip tag 'openai', or a local copy of them given as --reference-checkpoint), and the "
                   "features are the pool's b32 npz embeddings, which DataComp computed with OpenAI's ViT-B/32; "
                   "CE downstream loss with a learned temperature",
    "m-flyt-demo": "M-FLYT on the built-in digits demo pool (the two CLIP scores and a pure-noise column), on a "
                   "CPU in a few minutes",
    "m-flyt-demo-all": "M-FLYT on the digits demo pool over the 7 inputs of its input store (both CLIP scores, "
                       "s-CLIPLoss of each CLIP, NormSim-inf and a classifier against the target digits, E-FLYT's "
                       "score; the store is computed once), the reference first trained 200 steps on the unfiltered "
                       "pool, 600 steps with the mixing weights' own weight decay and the checkpoint chosen on a "
                       "validation split of the downstream digits",
    "e-flyt-demo": "E-FLYT on the digits demo pool: a GLU head on the pool's b32 embeddings, CE with a learned "
                   "downstream temperature",
}


def load_config_file(path: str) -> dict[str, Any]:
    """Read a JSON or YAML mapping of TrainConfig fields."""
    p = Path(path)
    if not p.is_file():
        raise FlytInputError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        data = _parse_unique(text, yaml_file=p.suffix in (".yaml", ".yml"))
    except FlytInputError as exc:
        raise FlytInputError(f"config file {path}: {exc}") from None
    except Exception as exc:
        raise FlytInputError(f"cannot parse config file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise FlytInputError(f"config file {path} must hold a mapping of option names to values")
    return data


def _parse_unique(text: str, *, yaml_file: bool) -> Any:
    """JSON or YAML whose mappings name each key once (both formats would keep the last value of a
    key given twice, silently)."""
    def unique(pairs) -> dict:
        out = {}
        for key, value, where in pairs:
            if key in out:
                raise FlytInputError(f"option {key!r} is given twice{where}; give it once")
            out[key] = value
        return out

    if not yaml_file:
        return json.loads(text, object_pairs_hook=lambda pairs: unique((k, v, "") for k, v in pairs))
    import yaml

    class UniqueKeys(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            self.flatten_mapping(node)
            return unique((self.construct_object(k, deep=deep), self.construct_object(v, deep=deep),
                           f" (again on line {k.start_mark.line + 1})") for k, v in node.value)

    UniqueKeys.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, UniqueKeys.construct_mapping)
    return yaml.load(text, Loader=UniqueKeys)  # noqa: S506 - a SafeLoader subclass


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
    hints = typing.get_type_hints(TrainConfig)
    return TrainConfig(**{k: _typed(k, v, hints[k]) for k, v in values.items()})


def _typed(name: str, value: Any, annotation: Any) -> Any:
    """``value`` as the type field ``name`` declares (a config file may hold anything)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (annotation,) = [a for a in args if a is not type(None)]
    want, ok = annotation, None
    if want in (int, float) and isinstance(value, str):  # YAML reads 1e-3 as a string
        try:
            value = float(value.strip()) if want is float or not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            pass
    if want is bool:
        ok = value if isinstance(value, bool) else None
    elif want is int:
        if isinstance(value, int) and not isinstance(value, bool):
            ok = value
        elif isinstance(value, float) and value.is_integer():
            ok = int(value)
    elif want is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            ok = float(value)
    elif want is str:
        ok = value if isinstance(value, str) else None
    elif typing.get_origin(want) is list:
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        ok = list(value) if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) else None
    if ok is None:
        kind = {bool: "true or false", int: "a whole number", float: "a finite number", str: "a string"}.get(
            want, "a list of names")
        raise FlytInputError(f"training option `{name}` must be {kind}, got {value!r}", params=[name])
    return ok
