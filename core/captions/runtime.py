"""Loading and running a captioner (torch, transformers): imported only in the captioning process.

Every captioner goes through transformers' own classes (no ``trust_remote_code``): Florence-2
(``Florence2ForConditionalGeneration``, the detailed-caption task), Qwen2-VL / Qwen2.5-VL / Qwen3-VL
(the class the model's config names, with a chat prompt) and BLIP (``BlipForConditionalGeneration``).
bf16 on a GPU that has it (else fp16), fp32 on the CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from core.captions.captioners import FLORENCE2_TASK, Captioner
from core.errors import UserError

#: New tokens a caption may have (unless the model's generation config sets its own).
MAX_NEW_TOKENS = 160


def device_and_dtype() -> tuple[str, Any]:
    """The GPU in bf16 (fp16 where it has no bf16), else the CPU in fp32."""
    import torch

    if torch.cuda.is_available():
        return "cuda", torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return "cpu", torch.float32


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
    """A loaded captioner: ``caption(images)`` returns one caption per PIL image."""

    def __init__(
        self, processor: Any, model: Any, device: str, dtype: Any, build: Callable[[Any, list[Any]], dict[str, Any]], decode: Callable[[Any, Any, dict[str, Any]], list[str]]
    ) -> None:
        self.processor, self.model, self.device, self.dtype = processor, model, device, dtype
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


def load(captioner: Captioner, model: str, prompt: str) -> Runner:
    """Load ``model`` (a local folder or a hub id) as ``captioner``; UserError when it cannot be."""
    from transformers.utils import logging

    logging.disable_progress_bar()
    loaders = {"florence2": _florence2, "qwen-vl": _qwen_vl, "blip": _blip}
    return loaders[captioner.name](model, prompt)


def _place(model: Any) -> tuple[Any, str, Any]:
    device, dtype = device_and_dtype()
    return model.to(device=device, dtype=dtype).eval(), device, dtype


def _florence2(model: str, prompt: str) -> Runner:
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    processor = _loaded(model, AutoProcessor.from_pretrained)
    net, device, dtype = _place(_loaded(model, Florence2ForConditionalGeneration.from_pretrained))
    task = prompt or FLORENCE2_TASK

    def build(proc: Any, images: list[Any]) -> dict[str, Any]:
        return dict(proc(text=[task] * len(images), images=images, return_tensors="pt", padding=True))

    def decode(proc: Any, output: Any, inputs: dict[str, Any]) -> list[str]:
        return list(proc.batch_decode(output, skip_special_tokens=True))

    return Runner(processor, net, device, dtype, build, decode)


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
    net, device, dtype = _place(_loaded(model, classes[config.model_type].from_pretrained))
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

    return Runner(tokenizer, net, device, dtype, build, decode)


def _blip(model: str, prompt: str) -> Runner:
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = _loaded(model, BlipProcessor.from_pretrained)
    net, device, dtype = _place(_loaded(model, BlipForConditionalGeneration.from_pretrained))

    def build(proc: Any, images: list[Any]) -> dict[str, Any]:
        return {"pixel_values": proc(images=images, return_tensors="pt")["pixel_values"]}

    def decode(proc: Any, output: Any, inputs: dict[str, Any]) -> list[str]:
        return list(proc.batch_decode(output, skip_special_tokens=True))

    return Runner(processor, net, device, dtype, build, decode)
