"""The repetition histogram: its title is never clipped, its x axis counts whole repetitions."""

import numpy as np
import pytest

from flyt_datacomp.plots import repetition_figure, wrap_title

LONG = "scs on standardized_sum:clip_b32_similarity_score,clip_l14_similarity_score,neg_clip_loss_b32"


@pytest.mark.parametrize("title", [LONG, "threshold on /data/" + "x" * 200 + "/scoring_model.pt", "short"])
def test_the_title_fits_the_figure(title):
    import matplotlib.pyplot as plt

    fig = repetition_figure(np.random.default_rng(0).poisson(2, 500), title=title)
    try:
        fig.canvas.draw()
        box = fig.axes[0].title.get_window_extent()
        assert 0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1, (box, fig.bbox)
    finally:
        plt.close(fig)


def test_wrapping_keeps_every_character_up_to_the_line_limit():
    wrapped = wrap_title(LONG, width=40, lines=5)
    assert all(len(line) <= 40 for line in wrapped.splitlines())
    assert "".join(wrapped.split()) == "".join(LONG.split())  # only line breaks (and spaces at them) added
    assert wrap_title("a" * 500, width=40, lines=3).endswith("\u2026")


@pytest.mark.parametrize("counts, ticks", [(np.ones(50, int), [1, 2, 3]), (np.array([0, 1, 2, 2, 5]), [1, 2, 3, 4, 5])])
def test_the_x_axis_shows_whole_repetitions(counts, ticks):
    import matplotlib.pyplot as plt

    fig = repetition_figure(counts)
    try:
        assert list(fig.axes[0].get_xticks()) == ticks  # a threshold subset: a bar at 1, not ticks 0.6..1.4
    finally:
        plt.close(fig)
