"""The captioners ``sdtui caption`` offers: their names, default models and prompts (torch-free).

Each runs through transformers' own model classes, never ``trust_remote_code``. WD14 (the booru
tagger) needs ``timm`` or ``onnxruntime``, which are not in sdtui's lock, so it is named (and
refused with the fix) but not offered.
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
    )
}
#: Named on the command line for users who know it from kohya_ss, refused with the reason.
NOT_INSTALLED = {
    "wd14": "the WD14 booru tagger needs timm or onnxruntime, which sdtui does not install; use florence2, qwen-vl or blip",
}
DEFAULT = "florence2"
#: Every name ``--captioner`` accepts (the refused ones too, so the refusal is one sentence, not an argparse error).
NAMES = (*CAPTIONERS, *NOT_INSTALLED)


def captioner(name: str) -> Captioner:
    """The captioner called ``name``; UserError naming the choices otherwise."""
    if name in NOT_INSTALLED:
        raise UserError(NOT_INSTALLED[name])
    if name not in CAPTIONERS:
        raise UserError(f"there is no captioner '{name}'; use one of: {', '.join(CAPTIONERS)}")
    return CAPTIONERS[name]
