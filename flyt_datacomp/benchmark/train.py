"""Train a tiny open_clip CLIP from scratch on a subset for a fixed budget, then score it zero-shot.

One run = one (subset, seed, recipe): ``recipe.steps`` steps of ``recipe.batch_size`` entries
drawn from the subset's index array (its repetitions included), reshuffled at every pass over it,
standard symmetric CLIP loss with a learned temperature (clamped to [0, ln 100] after each step),
AdamW with weight decay on >=2-dim weights only, linear warmup then cosine decay. The run is
deterministic for a seed on one machine: the initialisation and the data order come from the
seed, and the torch thread count is fixed by the recipe.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from ..clip_models import Vocabulary, create_clip
from ..clip_models import tokenizer as make_tokenizer
from ..errors import FlytInputError
from ..flyt.losses import clip_loss
from ..flyt.trainer import cosine_lr
from ..process import torch_threads
from .data import PoolImages
from .recipe import Recipe
from .zeroshot import prompts, zero_shot_accuracy

MAX_LOGIT_SCALE = math.log(100.0)


@dataclass
class TrainingData:
    """Everything a run reads, as tensors: pool images + captions, test images + prompts."""

    images: torch.Tensor  # (M, H, W) uint8
    caption_ids: torch.Tensor  # (M,) into caption_tokens
    caption_tokens: torch.Tensor  # (C, context) compact token ids
    test_images: torch.Tensor  # (T, H, W) uint8
    test_labels: np.ndarray  # (T,)
    prompt_tokens: torch.Tensor  # (K * templates, context)
    num_classes: int
    vocab_size: int

    @classmethod
    def build(cls, pool: PoolImages, test_images: np.ndarray, test_labels: np.ndarray,
              classnames: list[str], templates: list[str], recipe: Recipe) -> TrainingData:
        texts = prompts(classnames, templates)
        vocab = Vocabulary(make_tokenizer(recipe.model_config()), list(pool.captions) + texts)
        if test_labels.min() < 0 or test_labels.max() >= len(classnames):
            raise FlytInputError(f"test labels span {test_labels.min()}..{test_labels.max()} "
                                 f"but there are {len(classnames)} class names")
        return cls(
            images=torch.from_numpy(np.ascontiguousarray(pool.images)),
            caption_ids=torch.from_numpy(pool.caption_ids.astype(np.int64)),
            caption_tokens=torch.from_numpy(vocab.encode(pool.captions)),
            test_images=torch.from_numpy(np.ascontiguousarray(test_images)),
            test_labels=np.asarray(test_labels),
            prompt_tokens=torch.from_numpy(vocab.encode(texts)),
            num_classes=len(classnames),
            vocab_size=len(vocab),
        )


def to_pixels(grey: torch.Tensor, recipe: Recipe) -> torch.Tensor:
    """uint8 (n, H, W) grey -> normalised float (n, 3, H, W)."""
    mean = torch.tensor(recipe.model_config()["image_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(recipe.model_config()["image_std"]).view(1, 3, 1, 1)
    x = grey.float().div_(255.0).unsqueeze(1).expand(-1, 3, -1, -1)
    return (x - mean) / std


def batch_positions(index: np.ndarray, batch_size: int, steps: int, seed: int) -> Iterator[np.ndarray]:
    """``steps`` batches of rows from ``index``: passes over it in a fresh random order each
    (a batch may straddle two passes). Deterministic for a seed."""
    if len(index) == 0:
        raise FlytInputError("the subset has no entry with an image: nothing to train on")
    rng = np.random.default_rng([int(seed), 0xDA7A])
    order = index[rng.permutation(len(index))]
    at = 0
    for _ in range(steps):
        parts, need = [], batch_size
        while need:
            if at == len(order):
                order, at = index[rng.permutation(len(index))], 0
            take = min(need, len(order) - at)
            parts.append(order[at:at + take])
            at, need = at + take, need - take
        yield np.concatenate(parts) if len(parts) > 1 else parts[0]


def build_model(data: TrainingData, recipe: Recipe, seed: int):
    cfg = recipe.model_config()
    cfg["text_cfg"] = {**cfg["text_cfg"], "vocab_size": data.vocab_size}
    return create_clip(cfg, seed=seed)


def train_and_evaluate(data: TrainingData, index: np.ndarray, recipe: Recipe, seed: int, *,
                       progress: bool = True, desc: str = "benchmark: train", device: str = "cpu",
                       on_steps: Callable[[int], None] | None = None,
                       observe: Callable[[int, torch.nn.Module], None] | None = None,
                       observe_at: Collection[int] = ()) -> dict:
    """Train a fresh CLIP on ``index`` (rows of ``data``) and return its zero-shot accuracy.

    ``device`` is where the model runs (the benchmark itself always uses the CPU, whose runs are
    reproducible; ``bench/bench_benchmark_run.py`` times a run on a GPU). Batches are assembled on
    the CPU and moved there.

    Returns ``{"accuracy", "steps", "final_loss", "seconds", "data_seconds", "model_seconds",
    "eval_seconds"}``; ``data_seconds`` is the time spent assembling batches (gathering images and
    tokens, converting pixels), ``model_seconds`` forward, backward and the optimiser step.
    ``on_steps(n)`` is told every few steps how many more are done (a parent's progress bar).
    ``observe(n, model)`` is called after each step count n in ``observe_at``, with the model in
    evaluation mode and without a graph (a diagnostic's look at the run as it trains; the training
    itself is unchanged).
    """
    from ..progress import progress_bar

    start = time.perf_counter()
    data_s = model_s = 0.0
    losses: list[float] = []
    with torch_threads(recipe.threads):
        torch.manual_seed(seed)
        dev = torch.device(device)
        model = build_model(data, recipe, seed).to(dev)
        model.train()
        decay = [p for p in model.parameters() if p.ndim >= 2]
        no_decay = [p for p in model.parameters() if p.ndim < 2]
        opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": recipe.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6,
        )
        warmup = max(1, int(round(recipe.steps * recipe.warmup_fraction)))
        reported = 0
        bar = progress_bar(total=recipe.steps, desc=desc, unit="step", disable=not progress, leave=False)
        for step, rows in enumerate(batch_positions(index, recipe.batch_size, recipe.steps, seed)):
            t0 = time.perf_counter()
            rows_t = torch.from_numpy(rows)
            images = to_pixels(data.images[rows_t], recipe).to(dev, non_blocking=True)
            texts = data.caption_tokens[data.caption_ids[rows_t]].to(dev, non_blocking=True)
            t1 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = cosine_lr(step, recipe.lr, warmup, recipe.steps)
            img = model.encode_image(images, normalize=True)
            txt = model.encode_text(texts, normalize=True)
            loss = clip_loss(img, txt, model.logit_scale.exp())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t2 = time.perf_counter()
            data_s += t1 - t0
            model_s += t2 - t1
            if step % 20 == 0 or step == recipe.steps - 1:
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
                if on_steps is not None:
                    on_steps(step + 1 - reported)
                    reported = step + 1
            bar.update(1)
            if observe is not None and step + 1 in observe_at:
                model.eval()
                with torch.no_grad():
                    observe(step + 1, model)
                model.train()
        bar.close()
        if not math.isfinite(losses[-1]):
            raise FlytInputError(f"benchmark training diverged (loss {losses[-1]}) with recipe {recipe.name}, seed {seed}")
        t3 = time.perf_counter()
        model.eval()
        acc = zero_shot_accuracy(
            lambda x: model.encode_image(x.to(dev), normalize=True).cpu(),
            lambda t: model.encode_text(t.to(dev), normalize=True).cpu(),
            to_pixels(data.test_images, recipe), data.test_labels, data.prompt_tokens, data.num_classes,
        )
        eval_s = time.perf_counter() - t3
    return {"accuracy": acc, "steps": recipe.steps, "final_loss": losses[-1], "loss_curve": losses,
            "seconds": round(time.perf_counter() - start, 3), "data_seconds": round(data_s, 3),
            "model_seconds": round(model_s, 3), "eval_seconds": round(eval_s, 3)}
