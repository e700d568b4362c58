"""The DataComp scale table and this package's per-scale defaults."""

from __future__ import annotations

import dataclasses

from .errors import FlytInputError


@dataclasses.dataclass(frozen=True)
class Scale:
    """One DataComp scale: pool size (= samples seen), DataComp's training recipe, SCS defaults."""

    name: str
    pool_size: int
    model: str
    batch_size: int
    learning_rate: float
    warmup: int
    scs_alpha: float
    scs_group_size: int


# small and medium SCS values are the paper's (section 4.3 and C.11). The paper tunes no larger
# scale; large and xlarge keep medium's alpha and the same number of rounds (pool / 1280). DataComp's
# debug scale (its scale_configs.py: 128K samples, batch 1024, lr 1e-4) takes small's alpha and 1280 rounds.
SCALES: dict[str, Scale] = {
    s.name: s
    for s in (
        Scale("debug", 128_000, "ViT-B-32", 1024, 1e-4, 500, 0.5, 100),
        Scale("small", 12_800_000, "ViT-B-32", 4096, 5e-4, 500, 0.5, 10_000),
        Scale("medium", 128_000_000, "ViT-B-32", 4096, 5e-4, 500, 0.15, 100_000),
        Scale("large", 1_280_000_000, "ViT-B-16", 8192, 5e-4, 500, 0.15, 1_000_000),
        Scale("xlarge", 12_800_000_000, "ViT-L-14", 90112, 1e-3, 10_000, 0.15, 10_000_000),
    )
}


def get_scale(name: str) -> Scale:
    try:
        return SCALES[name]
    except KeyError:
        raise FlytInputError(f"unknown scale {name!r}; choose one of {', '.join(SCALES)}") from None
