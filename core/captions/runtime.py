"""Loading and running a captioner (torch, transformers): imported only in the captioning process.

Every captioner goes through transformers' own classes (no ``trust_remote_code``): Florence-2
(``Florence2ForConditionalGeneration``, the detailed-caption task), Qwen2-VL / Qwen2.5-VL / Qwen3-VL
(the class the model's config names, with a chat prompt) and BLIP (``BlipForConditionalGeneration``);
the WD14 tagger goes through onnxruntime (core/captions/wd14.py, no torch).

Placement (:func:`choose_precision`): the GPU in bf16 (fp16 where it has no bf16) when the weights
fit its free memory, else 8-bit, else 4-bit nf4 weights (bitsandbytes, through transformers'
quantization config), else the CPU; the CPU in fp32 when there is no GPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.captions.captioners import FLORENCE2_TASK, TAGGER, Captioner, TagOptions
from core.errors import UserError
from core.units import GIB

#: New tokens a caption may have (unless the model's generation config sets its own).
MAX_NEW_TOKENS = 160
#: The precisions a captioner's weights may take on a GPU, widest first, with their bytes per parameter.
PRECISIONS = (("16-bit", 2.0), ("8-bit", 1.0), ("nf4", 0.5))
#: Free GPU memory a captioner needs beyond its weights: the weights' share again for activations
#: and the generation cache (×1.25), plus CUDA's context and the vision tower's images.
WEIGHT_FACTOR = 1.25
OVERHEAD_BYTES = int(1.5 * GIB)


def choose_precision(parameters: int, free_bytes: int | None) -> str:
    """``16-bit``, ``8-bit`` or ``nf4``: the widest whose weights fit ``free_bytes`` of GPU memory
    (weights × 1.25 + 1.5 GiB); ``cpu`` when there is no GPU (None) or not even nf4 fits."""
    if free_bytes is None:
        return "cpu"
    for name, width in PRECISIONS:
        if parameters * width * WEIGHT_FACTOR + OVERHEAD_BYTES <= free_bytes:
            return name
    return "cpu"


@dataclass(frozen=True)
class Placement:
    """Where and how a captioner runs: its device, its compute dtype, its precision and what to tell the user."""

    device: str
    dtype: Any
    precision: str
    note: str = ""

    @property
    def quantized(self) -> bool:
        return self.precision in ("8-bit", "nf4")

    def load_kwargs(self) -> dict[str, Any]:
        """``from_pretrained``'s arguments: the dtype, and for 8-bit and nf4 the bitsandbytes config on GPU 0."""
        if not self.quantized:
            return {"dtype": self.dtype}
        from transformers import BitsAndBytesConfig

        if self.precision == "8-bit":
            quantization = BitsAndBytesConfig(load_in_8bit=True)
        else:
            quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=self.dtype, bnb_4bit_use_double_quant=True)
        return {"dtype": self.dtype, "quantization_config": quantization, "device_map": {"": 0}}


def placement(parameters: int) -> Placement:
    """Where a captioner of ``parameters`` weights runs, by the GPU's free memory (:func:`choose_precision`)."""
    import torch

    if not torch.cuda.is_available():
        return Placement("cpu", torch.float32, "cpu", "no GPU: captioning on the CPU in fp32 (slow for large captioners)")
    free, _ = torch.cuda.mem_get_info()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    chosen = choose_precision(parameters, free)
    size = f"{parameters / 1e9:.1f}B parameters, {free / GIB:.1f} GiB free on the GPU"
    if chosen == "cpu":
        return Placement("cpu", torch.float32, "cpu", f"the captioner does not fit the GPU even in 4 bits ({size}): captioning on the CPU; free the GPU or choose a smaller captioner")
    note = "" if chosen == "16-bit" else f"the captioner's weights are loaded in {chosen} to fit the GPU ({size})"
    return Placement("cuda", dtype, chosen, note)


def parameter_count(cls: Any, config: Any) -> int:
    """The parameters of ``cls`` built from ``config`` on the meta device (no memory, no weights read)."""
    import torch

    with torch.device("meta"):
        net = cls._from_config(config)
    return sum(p.numel() for p in net.parameters())


def _source(model: str) -> str:
    """A local folder as a path, a hub id as it is; UserError for a path that is not there."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path)
    if path.exists() or model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise UserError(f"the captioner model {model} is not a folder; give a model folder or a hub id such as florence-community/Florence-2-large with --model")
    return model


def _loaded(model: str, load: Callable[[str], Any]) -> Any:
    """``load(source)`` with any failure said in one sentence."""
    source = _source(model)
    try:
        return load(source)
    except UserError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"the captioner model {model} could not be loaded ({reason[:200]}); give a local model folder or a hub id you have downloaded (hf download ID) with --model"
        ) from None


class Runner:
    """A loaded captioner: ``caption(images)`` returns one caption per PIL image; ``note`` says how it was placed."""

    def __init__(self, processor: Any, model: Any, place: Placement, build: Callable[[Any, list[Any]], dict[str, Any]], decode: Callable[[Any, Any, dict[str, Any]], list[str]]) -> None:
        self.processor, self.model, self.device, self.dtype, self.note = processor, model, place.device, place.dtype, place.note
        self._build, self._decode = build, decode

    def caption(self, images: Sequence[Any]) -> list[str]:
        """Captions of a batch of RGB PIL images."""
        import torch

        inputs = self._build(self.processor, list(images))
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device)) if hasattr(v, "to") else v for k, v in inputs.items()}
        with torch.inference_mode():
            limit = self.model.generation_config.max_new_tokens or MAX_NEW_TOKENS
            output = self.model.generate(**inputs, max_new_tokens=limit, do_sample=False)
        return [" ".join(text.split()) for text in self._decode(self.processor, output, inputs)]


def load(captioner: Captioner, model: str, prompt: str, tags: TagOptions | None = None) -> Any:
    """Load ``model`` (a local folder or a hub id) as ``captioner``; UserError when it cannot be."""
    if captioner.name == TAGGER:
        from core.captions.wd14 import Tagger

        return Tagger(model, tags or TagOptions())
    from transformers.utils import logging

    logging.disable_progress_bar()
    loaders = {"florence2": _florence2, "qwen-vl": _qwen_vl, "blip": _blip}
    return loaders[captioner.name](model, prompt)


def _network(model: str, cls: Any) -> tuple[Any, Placement]:
    """``cls`` loaded from ``model`` where :func:`placement` puts it (quantized when the GPU is short)."""
    from transformers import AutoConfig

    config = _loaded(model, AutoConfig.from_pretrained)
    place = placement(parameter_count(cls, config))
    net = _loaded(model, lambda source: cls.from_pretrained(source, **place.load_kwargs()))
    if not place.quantized:
        net = net.to(device=place.device, dtype=place.dtype)
    return net.eval(), place


def _florence2(model: str, prompt: str) -> Runner:
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    processor = _loaded(model, AutoProcessor.from_pretrained)
    net, place = _network(model, Florence2ForConditionalGeneration)
    task = prompt or FLORENCE2_TASK

    def build(proc: Any, images: list[Any]) -> dict[str, Any]:
        return dict(proc(text=[task] * len(images), images=images, return_tensors="pt", padding=True))

    def decode(proc: Any, output: Any, inputs: dict[str, Any]) -> list[str]:
        return list(proc.batch_decode(output, skip_special_tokens=True))

    return Runner(processor, net, place, build, decode)


#: The Qwen-VL chat turn asking about one image, for a tokenizer that carries no chat template.
QWEN_TURN = "<|im_start|>user\n<|vision_start|>{image}<|vision_end|>{prompt}<|im_end|>\n<|im_start|>assistant\n"


def _qwen_vl(model: str, prompt: str) -> Runner:
    """Qwen2-VL / Qwen2.5-VL / Qwen3-VL through the class their config names.

    The prompt is built from the tokenizer's chat template and the image tokens expanded as the
    model's processor does (one per merged patch of the image's grid): the processor class itself
    wants torchvision for its video half, which sdtui does not install.
    """
    from transformers import (
        AutoConfig,
        AutoImageProcessor,
        AutoTokenizer,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLForConditionalGeneration,
        Qwen3VLForConditionalGeneration,
    )

    classes = {"qwen2_vl": Qwen2VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration, "qwen3_vl": Qwen3VLForConditionalGeneration}
    config = _loaded(model, AutoConfig.from_pretrained)
    if config.model_type not in classes:
        raise UserError(f"the captioner model {model} is a {config.model_type} model, not Qwen2-VL, Qwen2.5-VL or Qwen3-VL; give such a model with --model or choose its captioner")
    tokenizer = _loaded(model, AutoTokenizer.from_pretrained)
    tokenizer.padding_side = "left"
    vision = _loaded(model, AutoImageProcessor.from_pretrained)
    net, place = _network(model, classes[config.model_type])
    image_token = tokenizer.convert_ids_to_tokens(config.image_token_id)
    if tokenizer.chat_template:
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        turn = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        turn = QWEN_TURN.format(image=image_token, prompt=prompt)

    def build(proc: Any, images: list[Any]) -> dict[str, Any]:
        pixels = vision(images=images, return_tensors="pt")
        merge = int(vision.merge_size) ** 2
        texts = [turn.replace(image_token, image_token * int(grid.prod() // merge), 1) for grid in pixels["image_grid_thw"]]
        return {**dict(proc(texts, padding=True, return_tensors="pt")), **dict(pixels)}

    def decode(proc: Any, output: Any, inputs: dict[str, Any]) -> list[str]:
        return list(proc.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))

    return Runner(tokenizer, net, place, build, decode)


def _blip(model: str, prompt: str) -> Runner:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = _loaded(model, BlipProcessor.from_pretrained)
    net, place = _network(model, BlipForConditionalGeneration)

    def build(proc: Any, images: list[Any]) -> dict[str, Any]:
        return {"pixel_values": proc(images=images, return_tensors="pt")["pixel_values"]}

    def decode(proc: Any, output: Any, inputs: dict[str, Any]) -> list[str]:
        return list(proc.batch_decode(output, skip_special_tokens=True))

    return Runner(processor, net, place, build, decode)
