"""Sample prompt lines in the syntax sd-scripts and sdtui share:
``prompt --n negative --w 512 --h 512 --d seed --l cfg --s steps --ss sampler``.

Read by run.toml's checks (``core/config.py``), the kohya export and import (``core/kohya.py``),
the wizard and the trainer's sampling.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError
from core.settings import SAMPLERS


@dataclass(frozen=True)
class SamplePrompt:
    """One sample prompt; ``seed`` None means the trainer picks (run seed + prompt index), ``sampler`` "" the run's."""

    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None
    scale: float = 7.5
    steps: int = 30
    sampler: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=())


def parse_prompt_line(line: str, width: int = 512, height: int = 512, scale: float = 7.5, steps: int = 30) -> SamplePrompt:
    """Parse ``prompt --n negative --w 512 --h 512 --d seed --l cfg --s steps --ss sampler``.

    Options left out take the given defaults; other ``--x value`` options are kept in ``extra``.
    A bad value raises UserError naming the option and the rule.
    """
    text = line.strip()
    pieces = re.split(r"(?:^|\s+)--(?=[A-Za-z])", text)
    prompt = pieces[0].strip()
    if not prompt:
        raise UserError(f"sample prompt '{line}' has no prompt text before its options; write e.g. 'a photo of sks dog --w 512 --h 512'")
    values: dict[str, Any] = {"negative": "", "width": width, "height": height, "seed": None, "scale": scale, "steps": steps, "sampler": ""}
    extra: dict[str, str] = {}
    for piece in pieces[1:]:
        match = re.match(r"([A-Za-z]+)\s*(.*)$", piece, re.S)
        if match is None:
            continue
        option, value = match.group(1).lower(), match.group(2).strip()
        if option == "n":
            values["negative"] = value
        elif option in ("w", "h"):
            number = _number(line, option, value, int)
            if number < 64 or number > 4096 or number % 8:
                raise UserError(f"sample prompt '{line}': --{option} must be a multiple of 8 between 64 and 4096, not {value}")
            values["width" if option == "w" else "height"] = number
        elif option == "d":
            values["seed"] = _number(line, option, value, int)
            if values["seed"] < 0:
                raise UserError(f"sample prompt '{line}': --d (seed) must be 0 or more, not {value}")
        elif option == "l":
            values["scale"] = _number(line, option, value, float)
            if values["scale"] < 0:
                raise UserError(f"sample prompt '{line}': --l (guidance scale) must be 0 or more, not {value}")
        elif option == "s":
            values["steps"] = _number(line, option, value, int)
            if not 1 <= values["steps"] <= 1000:
                raise UserError(f"sample prompt '{line}': --s (steps) must be between 1 and 1000, not {value}")
        elif option == "ss":
            if value.lower() not in SAMPLERS:
                raise UserError(f"sample prompt '{line}': --ss (sampler) must be one of {', '.join(SAMPLERS)}, not '{value}'")
            values["sampler"] = value.lower()
        else:
            extra[option] = value
    return SamplePrompt(prompt, extra=tuple(extra.items()), **values)


def _number(line: str, option: str, value: str, kind: type) -> Any:
    try:
        return kind(value)
    except ValueError:
        what = "a whole number" if kind is int else "a number"
        raise UserError(f"sample prompt '{line}': --{option} must be {what}, not '{value}'") from None


def format_prompt_line(prompt: SamplePrompt) -> str:
    """The kohya prompt line of ``prompt`` (every option written out)."""
    parts = [prompt.prompt]
    if prompt.negative:
        parts.append(f"--n {prompt.negative}")
    parts += [f"--w {prompt.width}", f"--h {prompt.height}"]
    if prompt.seed is not None:
        parts.append(f"--d {prompt.seed}")
    parts += [f"--l {prompt.scale:g}", f"--s {prompt.steps}"]
    if prompt.sampler:
        parts.append(f"--ss {prompt.sampler}")
    parts += [f"--{option} {value}".rstrip() for option, value in prompt.extra]
    return " ".join(parts)


def parse_prompt_file(text: str, width: int = 512, height: int = 512) -> list[SamplePrompt]:
    """The prompts of a sample_prompts.txt (blank lines and ``#`` comments skipped)."""
    return [parse_prompt_line(line, width, height) for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
