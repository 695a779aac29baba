"""The loss chart: raw and smoothed, linear or log scale, downsampled to the widget's width."""

from __future__ import annotations

from textual_plotext import PlotextPlot


def thin(xs: list[float], ys: list[float], width: int) -> tuple[list[float], list[float]]:
    """At most about ``width`` points, picked evenly, the last one always kept."""
    from core.monitor import downsample

    if len(xs) <= width:
        return xs, ys
    index = downsample(list(range(len(xs))), width)
    index = [int(i) for i in index]
    if index[-1] != len(xs) - 1:
        index.append(len(xs) - 1)
    return [xs[i] for i in index], [ys[i] for i in index]


class LossChart(PlotextPlot):
    """Loss against step."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.log_scale = False
        self.data: tuple[list[int], list[float], list[float]] = ([], [], [])

    def set_data(self, steps: list[int], losses: list[float], smoothed: list[float]) -> None:
        """Replace the series and redraw."""
        self.data = (steps, losses, smoothed)
        self.redraw()

    def toggle_log(self) -> None:
        """Switch the y axis between linear and log."""
        self.log_scale = not self.log_scale
        self.redraw()

    def on_resize(self) -> None:
        self.redraw()

    def redraw(self) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        steps, losses, smoothed = self.data
        plt.title("loss" + (" (log)" if self.log_scale else ""))
        plt.xlabel("step")
        if steps:
            width = max(self.size.width * 2, 16)
            xs, raw = thin(steps, losses, width)
            _, smooth = thin(steps, smoothed, width)
            plt.yscale("log" if self.log_scale and min(raw) > 0 else "linear")
            plt.plot(xs, raw, label="raw", marker="dot")
            plt.plot(xs, smooth, label="smoothed", marker="braille")
        self.refresh()
