"""Figures: the histogram of example repetitions in a subset (like the paper's Figure 2)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import numpy as np

TITLE_WIDTH = 64  # characters per title line at the figure's width
TITLE_LINES = 3


def save_repetition_histogram(counts: np.ndarray | Mapping[int, int], path: str | os.PathLike, *, title: str = "") -> None:
    """Bar chart of how many examples were selected 1, 2, 3, ... times (log scale), as a PNG.

    Writes ``path`` directly: callers stage it (see :class:`flyt_datacomp.io.OutputSet`).
    """
    import matplotlib.pyplot as plt

    fig = repetition_figure(counts, title=title)
    try:
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)


def repetition_figure(counts: np.ndarray | Mapping[int, int], *, title: str = ""):
    """The histogram's matplotlib figure: one bar per repetition count, whole-number ticks (a subset
    that takes each example once shows one bar at 1, not ticks from 0.6 to 1.4), and the title
    wrapped to the figure's width (a long score source or path is never clipped). ``counts``: one
    count per example, or their histogram ``{repetitions: examples}``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if isinstance(counts, Mapping):  # already a histogram: {repetitions: examples}
        values = np.array(sorted(k for k, v in counts.items() if k > 0 and v > 0), dtype=np.int64)
        freq = np.array([counts[int(k)] for k in values], dtype=np.int64)
    else:
        counts = np.asarray(counts)
        values, freq = np.unique(counts[counts > 0], return_counts=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.bar(values, freq, width=0.9, color="#3b6ea8")
    ax.set_yscale("log")
    top = int(values.max()) if values.size else 1
    ax.set_xlim(0.4, max(top, 3) + 0.6)
    step = max(1, int(np.ceil(max(top, 3) / 12)))
    ax.set_xticks(np.arange(1, max(top, 3) + 1, step))
    ax.set_xlabel("repetitions of an example in the subset")
    ax.set_ylabel("number of examples")
    ax.set_title(wrap_title(title or "Repetitions per selected example"), fontsize=10)
    fig.tight_layout()
    return fig


def wrap_title(title: str, width: int = TITLE_WIDTH, lines: int = TITLE_LINES) -> str:
    """``title`` in lines of at most ``width`` characters, breaking at spaces and after the separators
    of a spec (``,`` ``:`` ``/``); beyond ``lines`` lines it is cut with an ellipsis."""
    pieces = [p for p in re.split(r"(?<=[,:/ ])", title) if p]
    out: list[str] = []
    current = ""
    for piece in pieces:
        while len(piece) > width:  # one piece longer than a line: cut it
            room = width - len(current)
            out.append(current + piece[:room])
            current, piece = "", piece[room:]
        if len(current) + len(piece.rstrip()) > width and current:
            out.append(current.rstrip())
            current = piece.lstrip()
        else:
            current += piece
    out.append(current.rstrip())
    if len(out) > lines:
        out = out[:lines]
        out[-1] = out[-1][: width - 1] + "…"
    return "\n".join(out)


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
