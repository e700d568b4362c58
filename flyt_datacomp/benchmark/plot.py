"""The table as a bar chart: mean zero-shot accuracy per row, seed spread as error bars and dots."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..io import atomic_path


def save_bar_chart(rows: Sequence[dict[str, Any]], path: str | os.PathLike, *, title: str = "",
                   chance: float | None = None) -> None:
    """Horizontal bars (mean accuracy, %), +-1 std error bars and one dot per seed, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["name"] for r in rows]
    means = np.array([100 * r["mean"] for r in rows])
    stds = np.array([100 * r["std"] if r["std"] is not None else 0.0 for r in rows])  # one seed: no error bar
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4), dpi=120)
    try:
        ax.barh(y, means, xerr=stds, color="#3b6ea8", alpha=0.85, capsize=3, error_kw={"elinewidth": 1})
        for yi, r in zip(y, rows):
            seeds = 100 * np.asarray(r["seeds"], dtype=float)
            ax.scatter(seeds, np.full(len(seeds), yi), color="black", s=9, zorder=3)
        if chance is not None:
            ax.axvline(100 * chance, color="grey", linestyle=":", linewidth=1, label="chance")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_yticks(y, names, fontsize=8)
        ax.set_xlabel("zero-shot accuracy on the test digits (%); bars: mean, lines: ±1 std, dots: seeds")
        ax.set_xlim(0, 100)
        ax.set_title(title or "mini-DataComp benchmark on the digits pool", fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
