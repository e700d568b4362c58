"""Figures: the histogram of example repetitions in a subset (like the paper's Figure 2)."""

from __future__ import annotations

import os

import numpy as np


def save_repetition_histogram(counts: np.ndarray, path: str | os.PathLike, *, title: str = "") -> None:
    """Bar chart of how many examples were selected 1, 2, 3, ... times (log scale), as a PNG.

    Writes ``path`` directly: callers stage it (see :class:`flyt_datacomp.io.OutputSet`).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(counts)
    values, freq = np.unique(counts[counts > 0], return_counts=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    try:
        ax.bar(values, freq, width=0.9, color="#3b6ea8")
        ax.set_yscale("log")
        ax.set_xlabel("repetitions of an example in the subset")
        ax.set_ylabel("number of examples")
        ax.set_title(title or "Repetitions per selected example")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def save_curves(path: str | os.PathLike, panels: list[tuple[str, np.ndarray, np.ndarray]], names: list[str], *,
                title: str = "") -> None:
    """Panels of curves stacked vertically, one line per name: ``panels`` holds (y label, x (n,),
    y (n, len(names))). Written atomically as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .io import atomic_path

    fig, axes = plt.subplots(len(panels), 1, figsize=(7.5, 2.6 * len(panels) + 0.8), dpi=110, sharex=True,
                             squeeze=False)
    try:
        for ax, (label, x, y) in zip(axes[:, 0], panels):
            y = np.asarray(y).reshape(len(x), -1)
            for k, name in enumerate(names):
                ax.plot(x, y[:, k], label=name, lw=1.2)
            ax.axhline(0, color="#888", lw=0.6)
            ax.set_ylabel(label, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        axes[0, 0].legend(fontsize=7, ncol=2, loc="best")
        if title:
            fig.suptitle(title, fontsize=10)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
