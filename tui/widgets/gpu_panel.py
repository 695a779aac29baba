"""The GPUs with their VRAM as a bar, or a plain sentence when there is none."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from tui.format import bar
from tui.sources import GpuRow, gpu_rows, no_gpu_sentence, vram_text


def gpu_line(row: GpuRow, bar_width: int = 20) -> Text:
    """``0 RTX 4090  ████····  3.2/24.0 GiB  bf16  driver 550.54``."""
    text = Text()
    text.append(f"{row.index} ", style="dim")
    text.append(f"{row.name:<22.22}", style="bold")
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
        text.append("  (simulated)", style="dim italic")
    return text


class GpuPanel(Static):
    """Lists a GpuSet."""

    def show(self, gpus: object) -> None:
        """Render the GPUs of a core.gpu.GpuSet."""
        sentence = no_gpu_sentence(gpus)
        if sentence:
            self.update(Text(sentence, style="yellow"))
            return
        self.update(Text("\n").join(gpu_line(row) for row in gpu_rows(gpus)))

