"""The captioners ``sdtui caption`` offers: their names, default models and prompts (torch-free).

Florence-2, Qwen-VL and BLIP run through transformers' own model classes, never
``trust_remote_code``; the WD14 booru tagger runs its ONNX export through onnxruntime (the path
its author maintains), with the thresholds and exclusions of :class:`TagOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.errors import UserError


@dataclass(frozen=True)
class Captioner:
    """One captioner: its name, the model it loads by default, and its default prompt ("" = none)."""

    name: str
    title: str
    default_model: str
    default_prompt: str
    #: Whether ``--prompt`` changes what it writes (Florence-2 and BLIP take a fixed task).
    takes_prompt: bool
    summary: str


#: Florence-2's task for a caption of a few sentences (the processor turns it into its prompt).
FLORENCE2_TASK = "<DETAILED_CAPTION>"
QWEN_PROMPT = "Describe this image in one paragraph for training an image generator: the subject, what it does, the setting, the lighting and the style. Do not start with 'The image shows'."
#: The booru tagger's name.
TAGGER = "wd14"

CAPTIONERS: dict[str, Captioner] = {
    c.name: c
    for c in (
        Captioner("florence2", "Florence-2", "florence-community/Florence-2-large", FLORENCE2_TASK, False, "detailed natural-language captions, fast; 0.8B parameters"),
        Captioner(
            "qwen-vl",
            "Qwen2.5-VL / Qwen3-VL",
            "Qwen/Qwen2.5-VL-7B-Instruct",
            QWEN_PROMPT,
            True,
            "natural language steered by a prompt you can change; for T5/LLM text encoders; 16 GB at bf16",
        ),
        Captioner("blip", "BLIP", "Salesforce/blip-image-captioning-large", "", False, "a short caption; fits the smallest GPU"),
        Captioner(TAGGER, "WD14 tagger", "SmilingWolf/wd-vit-tagger-v3", "", False, "booru tags for anime-style images (CLIP families); small, fast even on the CPU"),
    )
}
DEFAULT = "florence2"
#: Every name ``--captioner`` accepts.
NAMES = tuple(CAPTIONERS)


@dataclass(frozen=True)
class TagOptions:
    """What the booru tagger keeps: general tags at ``threshold`` or above, character tags at
    ``character_threshold`` or above, none of ``exclude`` (written with spaces or underscores)."""

    threshold: float = 0.35
    character_threshold: float = 0.85
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for flag, value in (("--threshold", self.threshold), ("--character-threshold", self.character_threshold)):
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{flag} {value} is not a probability; give a number from 0 to 1 such as 0.35")

    @property
    def excluded(self) -> frozenset[str]:
        """The excluded tags as the tagger writes them (lower case, spaces for underscores)."""
        return frozenset(" ".join(tag.replace("_", " ").split()).lower() for tag in self.exclude if tag.strip())

    def key(self) -> str:
        """The options as one line: part of the caption layer's key, so other options tag again."""
        return f"general>={self.threshold:g} character>={self.character_threshold:g} exclude={','.join(sorted(self.excluded))}"


def parse_tags(text: str) -> tuple[str, ...]:
    """A comma-separated list of tags as a tuple (empty entries left out)."""
    return tuple(tag.strip() for tag in text.split(",") if tag.strip())


def captioner(name: str) -> Captioner:
    """The captioner called ``name``; UserError naming the choices otherwise."""
    if name not in CAPTIONERS:
        raise UserError(f"there is no captioner '{name}'; use one of: {', '.join(CAPTIONERS)}")
    return CAPTIONERS[name]
