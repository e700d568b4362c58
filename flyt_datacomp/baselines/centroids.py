"""Nearest k-means centroid of each embedding, as DataComp's image-based filter assigns them.

An embedding's centroid is ``argmax_j <x, c_j>`` over the *unnormalised* centroids ``c_j`` (an inner
product, not a cosine: centroid norms matter), computed in float32 from the stored float16
embeddings, in batches, on the chosen torch device; ties go to the lowest index (torch's argmax).
The target centroids are the distinct nearest centroids of the ImageNet-1k training images.
"""

from __future__ import annotations

import numpy as np


def nearest_centroids(features, centroids, *, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """Index of the nearest centroid (largest inner product) for each row of ``features``."""
    import torch

    x = torch.as_tensor(features)
    if x.ndim != 2 or x.shape[1] != centroids.shape[1]:
        raise ValueError(f"embeddings of shape {tuple(x.shape)} do not match centroids of shape {tuple(centroids.shape)}")
    c = centroids.to(device=device, dtype=torch.float32)
    labels = np.empty(x.shape[0], dtype=np.int64)
    with torch.no_grad():
        for start in range(0, x.shape[0], batch_size):
            block = x[start:start + batch_size].to(device=device).float()
            similarity = torch.einsum("ik,jk->ij", block, c)
            labels[start:start + block.shape[0]] = torch.argmax(similarity, dim=1).cpu().numpy()
    return labels


def target_centroids(feature_blocks, centroids, *, batch_size: int = 1024, device: str = "cpu") -> np.ndarray:
    """The sorted distinct nearest centroids of every row of every block (the ImageNet images)."""
    found = [np.unique(nearest_centroids(block, centroids, batch_size=batch_size, device=device)) for block in feature_blocks]
    return np.unique(np.concatenate(found)) if found else np.zeros(0, dtype=np.int64)
