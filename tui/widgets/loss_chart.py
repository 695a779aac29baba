"""The loss chart: raw and smoothed training loss and the validation loss, linear or log scale, thinned to the widget's width."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from textual_plotext import PlotextPlot

#: The validation series' colour and marker: apart from the training loss's default colours.
VALIDATION_COLOR = "orange"
VALIDATION_MARKER = "◆"


class LossChart(PlotextPlot):
    """Loss against step (and the validation loss, with a legend, when there is one); ``toggle_log`` switches the y axis."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.log_scale = False
        self.data: tuple[Sequence[float], Sequence[float], Sequence[float]] = ([], [], [])
        self.validation: tuple[Sequence[float], Sequence[float]] = ([], [])

    def set_data(
        self,
        steps: Sequence[float],
        losses: Sequence[float],
        smoothed: Sequence[float],
        validation: tuple[Sequence[float], Sequence[float]] = ([], []),
    ) -> None:
        """Replace the series (kept by reference) and redraw; ``validation`` is (steps, losses)."""
        self.data = (steps, losses, smoothed)
        self.validation = validation
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
        width = max(self.size.width * 2, 16)
        xs, raw = downsample_xy(steps, losses, width)
        sx, smooth = evenly(steps, smoothed, width)
        raw_ok = [(x, y) for x, y in zip(xs, raw) if math.isfinite(y)]
        vx, vy = evenly(*self.validation, width)
        val_ok = [(x, y) for x, y in zip(vx, vy) if math.isfinite(y)]
        # plotext's own log scale transforms the data again on every build, so the log is taken here.
        log = self.log_scale and bool(raw_ok) and min(y for _, y in raw_ok + val_ok) > 0 and min(smooth, default=1) > 0
        scale = math.log10 if log else float
        plt.title("loss: raw (dots) · smoothed (line)" + (" · validation" if val_ok else "") + (" (log scale)" if log else ""))
        labelled = bool(val_ok)
        if raw_ok:
            plt.scatter([x for x, _ in raw_ok], [scale(y) for _, y in raw_ok], marker="dot")
            smooth_ok = [(x, scale(y)) for x, y in zip(sx, smooth) if math.isfinite(y)]
            plt.plot([x for x, _ in smooth_ok], [y for _, y in smooth_ok], marker="braille", label="training" if labelled else None)
            if log:
                plt.yticks(*log_ticks([y for _, y in raw_ok + val_ok] + [10**y for _, y in smooth_ok]))
        if val_ok:
            plt.plot([x for x, _ in val_ok], [scale(y) for _, y in val_ok], marker=VALIDATION_MARKER, color=VALIDATION_COLOR, label="validation")
        self.refresh()


def log_ticks(values: Sequence[float], count: int = 5) -> tuple[list[float], list[str]]:
    """Positions (log10) and labels (the losses themselves) for a log-scale axis: round values, each
    label different from the others, whatever the range (a loss that moves in its third digit included)."""
    low, high = min(values), max(values)
    if high / low < 1 + 1e-9:
        return [math.log10(low)], [f"{low:.4g}"]
    if high / low >= 10:
        ticks = [10.0**e * m for e in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1) for m in (1, 2, 5)]
        inside = [t for t in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
        if len(inside) > count:
            inside = [t for t in inside if f"{t:.0e}".startswith("1")]  # the powers of ten only
        while len(inside) > count:
            inside = inside[::2]
    else:
        step = nice_step((high - low) / (count - 1))
        inside = [k * step for k in range(math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9) + 1)]
    labels = distinct_labels(inside)
    return [math.log10(t) for t in inside], labels


def nice_step(raw: float) -> float:
    """The 1, 2 or 5 times a power of ten nearest above ``raw``: axis ticks at round values."""
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw * (1 - 1e-9))


def distinct_labels(ticks: Sequence[float]) -> list[str]:
    """The shortest labels (up to 8 significant digits) that tell every tick apart."""
    for digits in range(2, 9):
        labels = [f"{t:.{digits}g}" for t in ticks]
        if len(set(labels)) == len(labels):
            return labels
    return labels


def evenly(xs: Sequence[float], ys: Sequence[float], width: int) -> tuple[list[float], list[float]]:
    """At most ``width`` evenly spaced points of a smooth curve (first and last kept)."""
    n = min(len(xs), len(ys))
    if n == 0:
        return [], []
    index = np.unique(np.linspace(0, n - 1, min(n, width)).astype(int))
    return [float(xs[i]) for i in index], [float(ys[i]) for i in index]
