"""Zero-shot accuracy: classify test images by their nearest class-prompt embedding.

Each class is embedded as the normalised mean of its prompts' normalised text embeddings (one
prompt per template of ``classes.json``), as CLIP's and DataComp's zero-shot evaluation does; an
image is assigned the class with the largest cosine similarity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import FlytInputError


def prompts(classnames: Sequence[str], templates: Sequence[str]) -> list[str]:
    """Every class's prompts, class-major: ``templates[j].format(classnames[i])`` at ``i*T + j``."""
    if not classnames or not templates:
        raise FlytInputError("zero-shot evaluation needs at least one class name and one template")
    return [t.format(c) for c in classnames for t in templates]


def class_embeddings(text_embeddings: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(K*T, d) prompt embeddings, class-major -> (K, d) normalised class embeddings."""
    per_class = F.normalize(text_embeddings.float(), dim=-1).reshape(num_classes, -1, text_embeddings.shape[-1])
    return F.normalize(per_class.mean(dim=1), dim=-1)


def accuracy(image_embeddings: torch.Tensor, class_emb: torch.Tensor, labels: np.ndarray | torch.Tensor) -> float:
    """Top-1 accuracy of nearest-class (cosine) predictions."""
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if len(labels) != len(image_embeddings):
        raise FlytInputError(f"{len(labels)} labels for {len(image_embeddings)} images")
    if len(labels) == 0:
        raise FlytInputError("zero-shot evaluation needs at least one test image")
    pred = (F.normalize(image_embeddings.float(), dim=-1) @ class_emb.T).argmax(dim=1)
    return float((pred == labels).float().mean())


@torch.no_grad()
def zero_shot_accuracy(encode_image: Callable[[torch.Tensor], torch.Tensor],
                       encode_text: Callable[[torch.Tensor], torch.Tensor],
                       images: torch.Tensor, labels: np.ndarray, prompt_tokens: torch.Tensor,
                       num_classes: int, batch_size: int = 1000) -> float:
    """Accuracy of a model given as its two encoders, on preprocessed ``images``."""
    img = torch.cat([encode_image(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return accuracy(img, class_embeddings(encode_text(prompt_tokens), num_classes), labels)
