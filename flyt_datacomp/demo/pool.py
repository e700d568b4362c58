"""The demo pool as one object: its paths, training the demo presets on it, and its input store.

:func:`~flyt_datacomp.demo.build.build_demo_pool` returns a :class:`DemoPool`. Everything that
works on the demo (the ``filter --demo`` job, ``train --preset m-flyt-demo``, the benchmark's
table) asks it for paths, for a trained scoring model (:meth:`DemoPool.train`) and for its input
store (:meth:`DemoPool.input_store`), so each of those is done in one place.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import FlytInputError
from ..process import torch_threads

DEMO_PRESETS = ("m-flyt-demo", "e-flyt-demo", "m-flyt-demo-all")
STORE_PRESETS = ("m-flyt-demo-all",)  # they mix the inputs of the demo's input store
DEMO_VERSIONS = ("v3", "v4")

# The mini-benchmark's samples seen on each pool version: the recipe of that version
# (benchmark/recipe.py) takes it from here, and the demo's SCS draws as many.
SAMPLES_SEEN = {"v3": 38_400, "v4": 25_600}

# How the demo samples with SCS, shared by `filter --demo` and every SCS row of the benchmark's
# table: a 20K pool wants a larger penalty than the paper's small scale (0.5 at 12.8M); G is 1% of
# the pool; N is the mini-benchmark's samples seen, so a training run sees each draw once, as in
# DataComp where N = pool size = samples seen (docs/benchmark.md, "SCS settings").
DEMO_SCS_ALPHA = 1.0
DEMO_SCS_NUM_SAMPLES = SAMPLES_SEEN["v4"]


def demo_scs_group_size(pool_size: int) -> int:
    return max(1, pool_size // 100)


def demo_scs_num_samples(version: str) -> int:
    """SCS draws N for a demo pool version: its benchmark recipe's samples seen."""
    return SAMPLES_SEEN[version]


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """A scoring model trained on the demo: its file, run folder and (M-FLYT) mixing weights."""

    path: str
    run_dir: Path
    mixing_weights: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class DemoPool:
    """A built demo pool (see :mod:`flyt_datacomp.demo.build` for the layout)."""

    root: Path
    metadata_dir: Path
    shards_dir: Path
    downstream_dir: Path
    downstream_test_dir: Path
    classes_path: Path
    truth_path: Path
    pool_size: int
    reference_checkpoint: Path
    version: str = "v4"  # v4: digits among letters, shapes and textures; v3: digits only

    @classmethod
    def at(cls, root: str | os.PathLike, pool_size: int, version: str = "v4") -> DemoPool:
        root = Path(root)
        return cls(
            root=root,
            metadata_dir=root / "metadata",
            shards_dir=root / "shards",
            downstream_dir=root / "downstream",
            downstream_test_dir=root / "downstream_test",
            classes_path=root / "classes.json",
            truth_path=root / "truth.parquet",
            pool_size=pool_size,
            reference_checkpoint=root / "scorers" / "b32.pt",
            version=version,
        )

    @classmethod
    def open(cls, root: str | os.PathLike) -> DemoPool:
        """A built demo pool folder (one holding ``build.json``)."""
        root = Path(root)
        marker = root / "build.json"
        try:
            record = json.loads(marker.read_text())
            size = int(record["parameters"]["pool_size"])
            version = str(record.get("version_tag", "demo-v3")).removeprefix("demo-")
        except FileNotFoundError:
            raise FlytInputError(f"{root} is not a built demo pool (no build.json); build one with "
                                 "`python -m flyt_datacomp.filter --demo`") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FlytInputError(f"{marker} is not a demo pool's build record: {exc}") from None
        if version not in DEMO_VERSIONS:
            raise FlytInputError(f"{root} is a demo pool of version {version!r}, which this package does not know "
                                 f"(it knows {', '.join(DEMO_VERSIONS)})")
        return cls.at(root, size, version)

    @property
    def description(self) -> str:
        """What the pool holds, in a few words."""
        if self.version == "v3":
            return "digits only"
        return "digits, the task, among letters, shapes and textures"

    # ------------------------------------------------------------------ training the demo presets

    def train_paths(self) -> dict[str, str]:
        """The data and reference-model paths the demo presets train with."""
        return {
            "metadata_dir": str(self.metadata_dir),
            "shards_dir": str(self.shards_dir),
            "downstream_dir": str(self.downstream_dir),
            "classes": str(self.classes_path),
            "reference_checkpoint": str(self.reference_checkpoint),
        }

    def train_config(self, preset: str, overrides: dict[str, Any] | None = None, *, progress: bool = True):
        """The TrainConfig of ``preset`` on this pool (the :data:`STORE_PRESETS` read the demo's input store)."""
        from ..flyt.config import PRESETS, build_config

        overrides = dict(overrides or {})
        if preset in STORE_PRESETS and overrides.get("inputs_dir") is None:
            overrides["inputs_dir"] = str(self.input_store(progress=progress))
        paths = self.train_paths()
        if {**PRESETS.get(preset, {}), **overrides}.get("reference_init") == "random":
            del paths["reference_checkpoint"]  # the reference starts from random weights: no scorer to name
        return build_config(preset, paths, overrides)

    def train(self, preset: str, *, overrides: dict[str, Any] | None = None, runs_dir: str | os.PathLike | None = None,
              threads: int | None = None, progress: bool = True) -> TrainedModel:
        """Train ``preset`` on this pool, once: the run folder ``<runs_dir>/<preset>-<config hash>``
        (default ``<root>/runs``) is reused while the configuration is unchanged (an interrupted run
        resumes). ``threads``: torch's CPU thread count for the run (None: torch's default)."""
        from ..flyt.trainer import MIXING_WEIGHTS_FILE, SCORING_MODEL_FILE, Trainer

        cfg = self.train_config(preset, overrides, progress=progress)
        run_dir = self._run_dir(preset, cfg, runs_dir)
        model = run_dir / SCORING_MODEL_FILE
        if not model.is_file():
            with torch_threads(threads):
                Trainer(cfg, run_dir, progress=progress).run()
        weights_file = run_dir / MIXING_WEIGHTS_FILE
        weights = json.loads(weights_file.read_text()) if weights_file.is_file() else None
        return TrainedModel(str(model), run_dir, weights)

    def is_trained(self, preset: str, *, overrides: dict[str, Any] | None = None,
                   runs_dir: str | os.PathLike | None = None) -> bool:
        """True when :meth:`train` would reuse a finished run of ``preset`` rather than train."""
        from ..flyt.trainer import SCORING_MODEL_FILE

        cfg = self.train_config(preset, overrides, progress=False)
        return (self._run_dir(preset, cfg, runs_dir) / SCORING_MODEL_FILE).is_file()

    def _run_dir(self, preset: str, cfg, runs_dir: str | os.PathLike | None) -> Path:
        digest = hashlib.sha256(json.dumps(cfg.identity(), sort_keys=True).encode()).hexdigest()[:12]
        return Path(runs_dir if runs_dir is not None else self.root / "runs") / f"{preset}-{digest}"

    # ------------------------------------------------------------------ the input store

    def target_embeddings(self, *, progress: bool = True) -> Path:
        """The downstream-train digits embedded by the demo's b32 CLIP (cached beside the store)."""
        from .inputs import target_embeddings

        return target_embeddings(self, progress=progress)

    def input_store(self, *, store_dir: str | os.PathLike | None = None, eflyt_model: str | None = None,
                    classifier_steps: int = 4000, progress: bool = True) -> Path:
        """Compute (or reuse) the demo's input store (default ``<root>/inputs``, with E-FLYT's score
        from the ``e-flyt-demo`` preset unless a model is given); returns its folder."""
        from .inputs import demo_store

        return demo_store(self, store_dir=store_dir, eflyt_model=eflyt_model, classifier_steps=classifier_steps,
                          progress=progress)
