"""The paper's released subsets as named recipes: ``flyt-datacomp baseline flyt_mflyt_scs`` (or
``filter --name flyt_mflyt_scs``).

Each recipe is the selection the paper made with the authors' released M-FLYT model
(``scoring_models/mflyt.pt``) over their released input scores (imported into an input store with
``flyt-datacomp inputs import``): the mixing model applied to the raw inputs in its order (the
``mixing`` score source), then the paper's sampler at the chosen scale.

* ``flyt_mflyt_scs`` -- M-FLYT + Soft Cap Sampling, the DataComp medium record (ImageNet 40.1%):
  alpha 0.15, G 100K, N 128M at medium; alpha 0.5, G 10K, N 12.8M at small (paper 4.3, C.11).
* ``flyt_mflyt_top20`` -- M-FLYT's top 20% once each (the threshold sampler, DataComp's rule).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from .errors import FlytInputError, quote
from .scales import get_scale
from .selection import Output, Restrict, Sample, ScoreStage, Selection

# The order of the 12 inputs the released mixing model expects (the authors' notebook); the
# column names in their released parquet files may differ: give the store's names in this order.
RELEASED_INPUTS = ("vit-b-32", "vit-l-14", "DFN-Base", "DFN-FT", "CC2M-Classifier", "IN1K-Classifier", "FLYT",
                   "normsim_inf", "negCLIPLoss", "hype_lorentzian_distance", "hype_image_specificity",
                   "hype_text_specificity")


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    sampler: str
    options: dict[str, Any]  # the sampler's options (besides the scale's SCS defaults)
    scales: tuple[str, ...]  # the scales the paper used it at


RECIPES = {r.name: r for r in (
    Recipe("flyt_mflyt_scs", "M-FLYT + SCS with the authors' released model and inputs (medium: alpha 0.15, "
           "G 100K, N 128M; small: alpha 0.5, G 10K, N 12.8M)", "scs", {}, ("small", "medium")),
    Recipe("flyt_mflyt_top20", "M-FLYT's top 20% with the authors' released model and inputs", "threshold",
           {"fraction": 0.2}, ("small", "medium")),
)}


def recipe_selection(name: str, *, metadata_dir: str, output: str, inputs_dir: str | None, mixing_model: str | None,
                     inputs: Sequence[str] = RELEASED_INPUTS, scale: str = "medium", shards_dir: str | None = None,
                     seed: int = 0, overwrite: bool = False, io_threads: int = 4, progress: bool = True,
                     device: str = "cpu") -> Selection:
    """The :class:`~flyt_datacomp.selection.Selection` that recipe ``name`` makes."""
    if name not in RECIPES:
        raise FlytInputError(f"unknown recipe {quote(name)}; the paper's recipes are {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    if not mixing_model:
        raise FlytInputError(f"{name} needs `mixing_model`: the authors' scoring_models/mflyt.pt", params=["mixing_model"])
    if not inputs_dir:
        raise FlytInputError(f"{name} needs `inputs_dir`: an input store holding the released input scores "
                             "(flyt-datacomp inputs import)", params=["inputs_dir"])
    get_scale(scale)
    if scale not in recipe.scales:
        raise FlytInputError(f"{name} is the paper's recipe at {' and '.join(recipe.scales)}, not at {scale}",
                             params=["scale"])
    names = [n.strip() for n in inputs if n.strip()]
    if not names or any("," in n for n in names):
        raise FlytInputError(f"{name}: name the mixing model's inputs in its order, got {list(inputs)}")
    options = dict(recipe.options)
    if recipe.sampler == "scs":
        options["device"] = device
    return Selection(
        metadata_dir=metadata_dir, output=Output(output, overwrite=overwrite), restrict=Restrict(shards_dir=shards_dir),
        score=ScoreStage(f"mixing:{mixing_model}:{','.join(names)}", inputs_dir=inputs_dir),
        sample=Sample(recipe.sampler, options, scale=scale if recipe.sampler == "scs" else None, seed=seed,
                      recipe=name),
        io_threads=io_threads, progress=progress)
