"""Building open_clip models and tokenizers, including the tiny configs used offline.

No weights are ever downloaded here: a model is built from an open_clip architecture name or an
explicit config dict, randomly initialised, and optionally loaded from a local checkpoint.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import numpy as np
import open_clip
import torch

from .errors import FlytInputError

# A tiny CLIP that trains on a CPU in seconds: 32 px images, patch 8, 2+2 layers of width 64,
# 16-token text context, the full BPE vocabulary so the bundled tokenizer works offline.
TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "layers": 2, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def tiny_clip_config(**overrides: Any) -> dict[str, Any]:
    """A copy of :data:`TINY_CLIP_CONFIG` with top-level or nested ``vision_cfg``/``text_cfg`` overrides."""
    cfg = copy.deepcopy(TINY_CLIP_CONFIG)
    for key, value in overrides.items():
        if key in ("vision_cfg", "text_cfg"):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


def named_tiny_configs() -> dict[str, dict[str, Any]]:
    """Offline configs selectable by name (``--reference-arch tiny-resnet``).

    ``tiny`` is the ViT above; ``tiny-resnet`` swaps in a small ModifiedResNet image tower (layers
    [1, 1, 1, 1], width 16), which learns the digits demo from scratch far more readily than the
    tiny ViT does on these CPUs.
    """
    return {
        "tiny": tiny_clip_config(),
        "tiny-resnet": tiny_clip_config(
            vision_cfg={"layers": [1, 1, 1, 1], "width": 16, "head_width": 32},
            image_mean=(0.0, 0.0, 0.0), image_std=(0.5, 0.5, 0.5),
        ),
    }


def image_normalization(arch: str | dict[str, Any]) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    """(mean, std) for a config dict that sets ``image_mean``/``image_std``; (None, None) means
    open_clip's defaults (OpenAI's statistics)."""
    if isinstance(arch, dict):
        return arch.get("image_mean"), arch.get("image_std")
    return None, None


def resolve_arch(name: str) -> str | dict[str, Any]:
    """A named tiny config as a dict, or an open_clip architecture name unchanged."""
    return named_tiny_configs().get(name, name)


def create_clip(
    arch: str | dict[str, Any],
    *,
    seed: int | None = None,
    checkpoint: str | None = None,
    pretrained: str | None = None,
) -> open_clip.CLIP:
    """Build a CLIP model from an open_clip architecture name or a config dict.

    ``seed`` makes the random initialisation reproducible; ``checkpoint`` loads a local state dict
    (a plain state dict or a dict holding ``state_dict``, as open_clip's training writes);
    ``pretrained`` is an open_clip pretrained tag, only usable where its weights are reachable.
    """
    gen_state = torch.random.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        if isinstance(arch, dict):
            model = open_clip.CLIP(
                embed_dim=arch["embed_dim"],
                vision_cfg=open_clip.model.CLIPVisionCfg(**arch["vision_cfg"]),
                text_cfg=open_clip.model.CLIPTextCfg(**arch["text_cfg"]),
                quick_gelu=arch.get("quick_gelu", False),
            )
        else:
            model = _create_named(arch, pretrained)
    finally:
        if seed is not None:
            torch.random.set_rng_state(gen_state)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model


def _create_named(arch: str, pretrained: str | None) -> open_clip.CLIP:
    if arch not in open_clip.list_models():
        raise FlytInputError(
            f"unknown CLIP architecture {arch!r}: neither an open_clip model name (open_clip.list_models()) "
            f"nor one of the offline configs {', '.join(named_tiny_configs())}"
        )
    try:
        return open_clip.create_model(arch, pretrained=pretrained)
    except RuntimeError as exc:
        if pretrained is None:
            raise
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FlytInputError(
            f"cannot load open_clip's pretrained weights {pretrained!r} for {arch}: {first}. Where the network "
            "is not reachable, save those weights elsewhere and give the file as `reference_checkpoint`",
            params=["reference_checkpoint"]
        ) from None


def load_checkpoint(model: torch.nn.Module, path: str) -> None:
    """Load a local open_clip-style checkpoint into ``model`` (strips a DDP ``module.`` prefix)."""
    from . import torch_io

    state = torch_io.load(path, "reference model checkpoint")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise FlytInputError(f"reference model checkpoint {path} holds no state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        raise FlytInputError(
            f"reference model checkpoint {path} does not fit the reference architecture (`reference_arch`): {detail}",
            params=["reference_arch"]
        ) from None


def context_length(arch: str | dict[str, Any]) -> int:
    """The text context length of an architecture name or config."""
    if isinstance(arch, dict):
        return int(arch["text_cfg"].get("context_length", 77))
    return int(open_clip.get_model_config(arch)["text_cfg"].get("context_length", 77))


def tokenizer(arch: str | dict[str, Any]):
    """open_clip's bundled BPE tokenizer with the architecture's context length (works offline)."""
    return open_clip.get_tokenizer("ViT-B-32", context_length=context_length(arch))


class Vocabulary:
    """The BPE tokens a set of texts uses, renumbered 0..V-1 in id order.

    The demo's captions and prompts use a few dozen of the tokenizer's 49,408 tokens; a model
    whose token table holds only those trains much faster on a CPU (a dense AdamW update over the
    full table would dominate each step). Keeping the ids' order keeps the end-of-text token the
    largest id, which open_clip's argmax pooling relies on, and padding (id 0) at 0.
    Calling it tokenises like the tokenizer, in the compact numbering (a tensor).
    """

    def __init__(self, tokenizer: Any, texts: Sequence[str]):
        self._tokenizer = tokenizer
        tokens = tokenizer(list(texts))
        self.token_ids = np.unique(tokens.numpy())  # sorted, includes padding 0 and start/end
        self._remap = {int(t): i for i, t in enumerate(self.token_ids)}

    def __len__(self) -> int:
        return len(self.token_ids)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Token matrix (n, context) in the compact numbering; unknown tokens are an error."""
        tokens = self._tokenizer(list(texts)).numpy()
        pos = np.searchsorted(self.token_ids, tokens)
        pos = np.clip(pos, 0, len(self.token_ids) - 1)
        bad = self.token_ids[pos] != tokens
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise FlytInputError(f"text {list(texts)[row]!r} uses tokens outside the compact vocabulary "
                                 f"({len(self)} tokens of the texts it was made from)")
        return pos.astype(np.int64)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.from_numpy(self.encode(texts))


def compact_clip(model: open_clip.CLIP, vocabulary: Vocabulary) -> open_clip.CLIP:
    """A copy of ``model`` whose token table holds only the rows of ``vocabulary``'s tokens, for
    texts tokenised by that vocabulary: the same features for those texts (every other row of the
    table never enters a forward pass), at a fraction of the parameters."""
    if not isinstance(getattr(model, "token_embedding", None), torch.nn.Embedding):
        raise FlytInputError(f"a compact vocabulary needs open_clip's CLIP with its own token table, not "
                             f"{type(model).__name__}")
    out = copy.deepcopy(model)
    rows = model.token_embedding.weight.detach()[torch.as_tensor(vocabulary.token_ids)]
    out.token_embedding = torch.nn.Embedding.from_pretrained(rows.clone(), freeze=False)
    out.vocab_size = len(vocabulary)
    return out
