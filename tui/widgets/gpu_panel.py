"""The GPUs with their VRAM as a bar, or a plain sentence when there is none."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import bar
from tui.sources import GpuRow, gpu_rows, no_gpu_sentence, vram_text


def gpu_line(row: GpuRow, bar_width: int = 20, name_width: int = 22) -> Text:
    """``0 RTX 4090  ████····  3.2/24.0 GiB  bf16  driver 550.54``."""
    text = Text()
    text.append(f"{row.index} ", style="dim")
    text.append(f"{row.name:<{name_width}.{name_width}}", style="bold")
    text.append(" ")
    if row.used_bytes is None:
        text.append(" " * bar_width)
    else:
        text.append(bar(row.fraction, bar_width), style="green" if row.fraction < 0.85 else "red")
    text.append(f" {vram_text(row):>15}")
    text.append("  bf16" if row.bf16 else "  fp16", style="cyan" if row.bf16 else "yellow")
    if row.utilization is not None:
        text.append(f"  {row.utilization:>3d}% util")
    text.append(f"  driver {row.driver}" if row.driver else "", style="dim")
    if row.simulated:
        text.append("  simulated", style="dim italic")
    return text


class GpuPanel(Static):
    """Lists a GpuSet, one line per GPU (narrower bar and name below 100 columns)."""

    gpus: object = None

    def show(self, gpus: object) -> None:
        """Render the GPUs of a core.gpu.GpuSet."""
        self.gpus = gpus
        sentence = no_gpu_sentence(gpus)
        self.set_class(bool(sentence), "-no-gpu")
        if sentence:
            self.update(Text(sentence))
            return
        narrow = self.app.size.width < 100
        lines = (gpu_line(row, 10 if narrow else 20, 18 if narrow else 22) for row in gpu_rows(gpus))
        self.update(Text("\n").join(line for line in lines))

    def on_resize(self) -> None:
        if self.gpus is not None:
            self.show(self.gpus)
