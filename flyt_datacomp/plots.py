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
