"""The loss chart: raw and smoothed, linear or log scale, thinned to the widget's width."""

from __future__ import annotations

import math
from collections.abc import Sequence

from textual_plotext import PlotextPlot


class LossChart(PlotextPlot):
    """Loss against step; ``toggle_log`` switches the y axis."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.log_scale = False
        self.data: tuple[Sequence[float], Sequence[float], Sequence[float]] = ([], [], [])

    def set_data(self, steps: Sequence[float], losses: Sequence[float], smoothed: Sequence[float]) -> None:
        """Replace the series (kept by reference) and redraw."""
        self.data = (steps, losses, smoothed)
        self.redraw()

    def toggle_log(self) -> None:
        """Switch the y axis between linear and log."""
        self.log_scale = not self.log_scale
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        from core.monitor import downsample_xy

        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        steps, losses, smoothed = self.data
        plt.title("loss, smoothed" + (" (log scale)" if self.log_scale else ""))
        width = max(self.size.width * 2, 16)
        xs, raw = downsample_xy(steps, losses, width)
        sx, smooth = downsample_xy(steps, smoothed, width)
        raw_ok = [(x, y) for x, y in zip(xs, raw) if math.isfinite(y)]
        if raw_ok:
            log = self.log_scale and min(y for _, y in raw_ok) > 0
            plt.yscale("log" if log else "linear")
            plt.scatter([x for x, _ in raw_ok], [y for _, y in raw_ok], marker="dot")
            plt.plot(sx, smooth, marker="braille")
        self.refresh()
