"""Plain text formatting for the screens: sizes, durations, bars. No Textual here."""

from __future__ import annotations

import math
import re
from pathlib import Path

from core.units import GIB, duration, gib, number

__all__ = ["GIB", "bar", "break_lines", "display_path", "duration", "gib", "number", "terminal_lines"]


def bar(fraction: float, width: int) -> str:
    """A bar of ``width`` cells filled to ``fraction`` (clamped to 0..1) with eighth blocks."""
    width = max(width, 1)
    fraction = 0.0 if not math.isfinite(fraction) else min(max(fraction, 0.0), 1.0)
    eighths = int(round(fraction * width * 8))
    full, part = divmod(eighths, 8)
    partial = " ▏▎▍▌▋▊▉"[part] if part and full < width else ""
    return ("█" * full + partial).ljust(width, "·")


def break_lines(text: str, width: int, after: str = "/-_. ") -> list[str]:
    """``text`` (a path, a run id) in lines of at most ``width`` cells, each broken after one of the
    characters in ``after`` (a path after a ``/``, a run id after a ``-``), never inside a name
    unless one name alone is wider than a line."""
    width = max(width, 1)
    pieces = re.findall(f"[^{re.escape(after)}]*[{re.escape(after)}]|[^{re.escape(after)}]+", text)
    lines: list[str] = []
    line = ""
    for piece in pieces:
        if line and len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = ""
        while len(piece) > width:
            lines.append(piece[:width])
            piece = piece[width:]
        line += piece
    if line or not lines:
        lines.append(line.rstrip())
    return lines


def display_path(path: str | Path) -> str:
    """A path as short as it is clear: relative below the current folder, ``~/…`` below home, else absolute."""
    target = Path(path)
    for base, prefix in ((Path.cwd(), ""), (Path.home(), "~/")):
        try:
            rel = target.relative_to(base)
        except ValueError:
            continue
        return prefix + str(rel) if str(rel) != "." else (prefix.rstrip("/") or ".")
    return str(target)


_SET_RUN = re.compile(r"--set \S+?=\S+(?: --set \S+?=\S+)*")
_CLI_PHRASES = (
    (re.compile(r"\(--epochs N, schedule\.max_steps = 0\)"), "(max_steps 0 on this step, epochs above 0)"),
    (re.compile(r"--method (\w+), recipe "), r"method \1, recipe "),
    (re.compile(r"plan for hardware with --gpus, e\.g\. --gpus (\S+)"), r"to plan for hardware you rent, start sdtui --gpus \1"),
    (re.compile(r"give --epochs N or --steps N"), "give epochs or max_steps above 0"),
    (re.compile(r"use it as the class folder: --reg '[^']*'"), "press the button above to use it as the class images folder"),
    (re.compile(r"run 'sdtui scan [^']*' to see why and fix it"), "the Dataset step lists why; fix it there"),
    (re.compile(r"; run 'sdtui scan [^']*' for all"), "; the Dataset step lists them all"),
    (re.compile(r"add a class folder \(--reg DIR\)"), "give a class images folder on the Dataset step"),
    (re.compile(r"leave --reg out"), "clear the class images field on the Dataset step"),
    (re.compile(r"\b(?:settings|schedule|method|samples)\.(\w+)"), r"\1"),
)


def _field_change(field: str, value: str) -> str:
    """``turn on gradient_checkpointing``, ``set batch_size to 1``: a change said as the user makes it."""
    if value in ("true", "false"):
        return f"turn {'on' if value == 'true' else 'off'} {field}"
    return f"set {field} to {value}"


def terminal_lines(lines: list[str]) -> list[str]:
    """Lines as a terminal shows them: a progress bar redrawn with carriage returns keeps its last state."""
    return [line.rstrip("\r").rsplit("\r", 1)[-1] for line in lines]


def tui_terms(text: str) -> str:
    """A core sentence said the TUI's way: ``--set a=true --set b=x`` becomes ``turn on a, set b to x``
    (the fields of the wizard, by their labels), and other command-line options the field or step
    they stand for."""

    def settings(match: re.Match[str]) -> str:
        pairs = [piece.removeprefix("--set ").split("=", 1) for piece in re.findall(r"--set \S+?=\S+", match.group(0))]
        return ", ".join(_field_change(key.rpartition(".")[2], value) for key, value in pairs)

    text = _SET_RUN.sub(settings, text)
    for pattern, replacement in _CLI_PHRASES:
        text = pattern.sub(replacement, text)
    return text
