"""The demo pool's input store: every input the demo can compute, for M-FLYT over many inputs.

As in the paper's Table 2, beyond the two CLIP scores: s-CLIPLoss from each CLIP's embeddings,
NormSim-inf and a target-vs-pool linear classifier against the demo's target-task images (the
clean downstream-train digits, embedded by the demo's b32 CLIP, as ImageNet-train is embedded by
OpenAI's CLIP in the paper), and E-FLYT's score when an E-FLYT model is given. The pool's pure-noise
column is not an input here. The store lives in ``<demo root>/inputs`` and is computed once
(then reused by ``inputs compute``'s resume).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ..io import atomic_path

TARGETS_FILE = "targets_b32.npy"


def demo_input_specs(targets: Path, eflyt_model: str | None = None, *, classifier_steps: int = 4000) -> list[str]:
    specs = [
        "column:clip_b32_similarity_score",
        "column:clip_l14_similarity_score",
        "neg_clip_loss",
        "neg_clip_loss:arch=l14",
        f"normsim_digits=normsim:p=inf:{targets}",
        # the paper's recipe scaled to a 20K pool: 4,000 steps of batch 256 instead of 40,000
        f"classifier_digits=classifier:{targets}:steps={classifier_steps}:warmup={min(500, classifier_steps // 8)}",
    ]
    if eflyt_model is not None:
        specs.append(f"eflyt=model:{eflyt_model}")
    return specs


def target_embeddings(demo, *, progress: bool = True) -> Path:
    """The downstream-train digits embedded by the demo's b32 CLIP (the CLIP of the pool's
    ``b32_img``), L2-normalised, cached beside the store (not in it: a store folder holds the store only)."""
    out = Path(demo.root) / "targets" / TARGETS_FILE
    if out.exists():
        return out
    from PIL import Image

    from ..clip_models import create_clip
    from ..tars import iter_tar, list_shards
    from . import scorers as S

    spec = next(s for s in S.SCORERS if s.name == "b32")
    model = create_clip(spec.config, checkpoint=str(demo.reference_checkpoint)).eval()
    images = []
    for url in list_shards(str(demo.downstream_dir)):
        for sample in iter_tar(url, extensions=("jpg",)):
            images.append(np.asarray(Image.open(io.BytesIO(sample["jpg"])).convert("L"), dtype=np.uint8))
    emb = S.embed_images(model, np.stack(images))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp, open(tmp, "wb") as fh:
        np.save(fh, emb)
    return out


def demo_store(demo, *, store_dir: str | Path | None = None, eflyt_model: str | None = None,
               classifier_steps: int = 4000, progress: bool = True) -> Path:
    """Compute (or reuse) the demo's input store (see :meth:`DemoPool.input_store`)."""
    from ..inputs import compute_inputs

    store = Path(store_dir) if store_dir is not None else Path(demo.root) / "inputs"
    targets = target_embeddings(demo, progress=progress)
    eflyt = eflyt_model if eflyt_model is not None else demo.train("e-flyt-demo", progress=progress).path
    compute_inputs(str(demo.metadata_dir), str(store), demo_input_specs(targets, eflyt, classifier_steps=classifier_steps),
                   device="cpu", progress=progress)
    return store
