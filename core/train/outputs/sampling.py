"""Sample images during training: kohya prompt lines rendered with the model being trained."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import write_atomic
from core.families.protocol import PROMPT_KEYWORDS
from core.sample_prompts import SamplePrompt, parse_prompt_line
from core.train.model.loading import Components, unwrap


class SampleError(RuntimeError):
    """Rendering a sample failed; the message names the prompt and the cause."""


@dataclass(frozen=True)
class SampleResult:
    """One rendered sample."""

    path: Path
    prompt_index: int
    prompt: str


@dataclass(frozen=True)
class SampleTexts:
    """The sample prompts' text encoded once at start-up (:func:`encode_sample_prompts`): what the samples
    render from after the text encoders are freed. A few prompt-sized tensors, kept on the CPU."""

    #: The prompt lines they were encoded from (a changed set is encoded again at the next start-up).
    lines: tuple[str, ...]
    #: Per prompt, the keywords replacing its call's prompt text (``prompt_embeds`` …: tensors or lists of them).
    keywords: tuple[dict[str, Any], ...]

    def call(self, index: int, arguments: Mapping[str, Any], device: Any) -> dict[str, Any]:
        """The pipeline call ``arguments`` of prompt ``index`` with its prompt text replaced by the stored embeddings on ``device``."""
        text = {name: _moved(value, device) for name, value in self.keywords[index].items()}
        return {k: v for k, v in arguments.items() if k not in PROMPT_KEYWORDS} | text


def _moved(value: Any, device: Any) -> Any:
    """A tensor, or a list of them (a family's unpadded per-prompt states), on ``device``."""
    return [v.to(device) for v in value] if isinstance(value, list) else value.to(device)


def sample_path(out_dir: str | Path, step: int, index: int) -> Path:
    """``<out_dir>/step{step:06d}_p{index:02d}.png``."""
    return Path(out_dir) / f"step{step:06d}_p{index:02d}.png"


#: kohya's sampler names (``--ss``) → (diffusers scheduler class, extra config), as sd-scripts maps them.
_SAMPLERS: dict[str, tuple[str, dict[str, Any]]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpm_2": ("KDPM2DiscreteScheduler", {}),
    "dpm_2_a": ("KDPM2AncestralDiscreteScheduler", {}),
    "dpmsolver": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver"}),
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "dpmsingle": ("DPMSolverSinglestepScheduler", {}),
}


def sampler_scheduler(name: str, base: Any) -> Any:
    """The diffusers scheduler of kohya sampler ``name`` (``k_`` aliases too) built from ``base``'s config (betas, prediction type);
    a flow-matching model keeps its own Euler scheduler (``euler``) and refuses the DDPM samplers."""
    import diffusers

    if name in ("", "default"):
        return base
    if type(base).__name__.startswith("FlowMatch"):  # a flow-matching model: the DDPM samplers do not apply
        if name.removeprefix("k_") == "euler":
            return base
        raise ValueError(f"the sampler '{name}' is for DDPM models and this model samples with flow matching; use the default sampler (or euler)")
    cls_name, extra = _SAMPLERS[name.removeprefix("k_")]
    return getattr(diffusers, cls_name).from_config(base.config, **extra)


def _parsed(components: Components, prompts: Sequence[str], default_size: int) -> list[SamplePrompt]:
    """The prompt lines read with the family's sampling defaults (``sample_defaults``) and ``default_size``."""
    steps, scale = components.runtime.sample_defaults(components.variant)
    return [parse_prompt_line(line, width=default_size, height=default_size, scale=scale, steps=steps) for line in prompts]


def encode_sample_prompts(
    components: Components,
    prompts: Sequence[str],
    device: Any = "cpu",
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    default_size: int = 512,
    clip_skip: int = 1,
) -> SampleTexts:
    """Encode each prompt line's text (and its negative where the family's call guides with one) as the
    pipeline would while sampling: with the components' text encoders on ``device``, in eval mode, under
    ``no_grad`` and ``autocast()`` (the samples' own context, so the embeddings are the same bits); the
    encoders and the VAE go back where they were after. Raises :class:`SampleError` naming the prompt."""
    import torch

    family_runtime = components.runtime
    pipe = components.pipeline()
    device = torch.device(device)
    keywords: list[dict[str, Any]] = []
    with _inference_mode([unwrap(m) for m in (components.vae, *components.text_encoders)], device):
        for index, prompt in enumerate(_parsed(components, prompts, default_size)):
            try:
                with autocast():
                    text = family_runtime.sample_text(pipe, family_runtime.sample_arguments(pipe, prompt, clip_skip))
            except Exception as exc:
                raise SampleError(f"encoding sample prompt {index} ('{prompt.prompt[:60]}') failed: {type(exc).__name__}: {first_line(exc)}") from exc
            keywords.append({name: _moved(value, "cpu") for name, value in text.items()})
    return SampleTexts(tuple(prompts), tuple(keywords))


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message ("" when it has none)."""
    return str(exc).splitlines()[0] if str(exc) else ""


def _pipeline_modules(pipe: Any, family: Any) -> list[Any]:
    names = (family.denoiser, "vae", *family.text_encoder_names)
    return [getattr(pipe, n) for n in names if getattr(pipe, n, None) is not None]


@contextmanager
def _inference_mode(modules: Sequence[Any], device: Any):
    """Eval mode and ``device`` for the modules; their train flags and devices are restored after.

    A module already on ``device`` (its first parameter) is not moved: an encoder the caches sent
    to the CPU comes back for the sample and leaves again, while a denoiser whose blocks stream
    from host memory (block swap) keeps them there.
    """
    import torch

    state = []
    for module in modules:
        first = next(module.parameters(), None)
        state.append((module, module.training, first.device if first is not None else None))
    try:
        for module, _, old_device in state:
            module.eval()
            if old_device != device:
                module.to(device)
        with torch.no_grad():
            yield
    finally:
        for module, training, old_device in state:
            module.train(training)
            if old_device is not None and old_device != device:
                module.to(old_device)


def render_samples(
    components: Components,
    prompts: Sequence[str],
    step: int,
    out_dir: str | Path,
    device: Any = "cpu",
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
    default_size: int = 512,
    seed: int = 0,
    denoiser: Any = None,
    text_encoders: Sequence[Any] | None = None,
    indices: Sequence[int] | None = None,
    sampler: str = "default",
    clip_skip: int = 1,
    texts: SampleTexts | None = None,
) -> list[SampleResult]:
    """Render each prompt line (kohya syntax: ``--n --w --h --d --l --s --ss``) to a PNG in ``out_dir``.

    ``denoiser``/``text_encoders`` may be the training-wrapped modules of ``components``. A prompt without ``--d`` uses ``seed`` +
    its index; without ``--ss`` it uses ``sampler``; without ``--s`` / ``--l`` the family's sampling steps and guidance
    (``sample_defaults``). The pipeline's arguments are the family's (``sample_arguments``). ``clip_skip`` is kohya's (the text
    layer the run trains with). Runs in eval mode under ``no_grad`` and ``autocast()``, the
    context the training steps run in (the accelerator's, so bf16 and fp16 runs sample in their
    precision on the CPU and the GPU), and restores train mode and devices after. With ``texts`` (the
    same lines, encoded at start-up) the pipeline has no text encoder and renders from those embeddings.
    Raises :class:`SampleError` naming the prompt.
    """
    import torch

    family_runtime = components.runtime
    if texts is not None and texts.lines != tuple(prompts):
        raise SampleError("the sample prompts changed since start-up, where their text was encoded and the text encoders freed; they are encoded again when the run restarts")
    pipe = components.pipeline(denoiser=denoiser, text_encoders=[] if texts is not None else text_encoders)
    base_scheduler = pipe.scheduler
    device = torch.device(device)
    parsed = _parsed(components, prompts, default_size)
    wanted = list(indices) if indices is not None else list(range(len(parsed)))
    results: list[SampleResult] = []
    with _inference_mode([unwrap(m) for m in _pipeline_modules(pipe, components.spec)], device):
        for index in wanted:
            prompt = parsed[index]
            generator = torch.Generator(device="cpu").manual_seed(prompt.seed if prompt.seed is not None else seed + index)
            try:
                pipe.scheduler = sampler_scheduler(prompt.sampler or sampler, base_scheduler)
                arguments = family_runtime.sample_arguments(pipe, prompt, clip_skip)
                if texts is not None:
                    arguments = texts.call(index, arguments, device)
                with autocast():
                    image = pipe(**arguments, generator=generator).images[0]
            except Exception as exc:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                raise SampleError(f"rendering sample prompt {index} ('{prompt.prompt[:60]}') at step {step} failed: {type(exc).__name__}: {first_line(exc)}") from exc
            finally:
                pipe.scheduler = base_scheduler
            path = sample_path(out_dir, step, index)
            write_atomic(path, png_bytes(image, prompts[index]))
            results.append(SampleResult(path, index, prompt.prompt))
    return results


def png_bytes(image: Any, parameters: str) -> bytes:
    """The image as PNG bytes with ``parameters`` (the prompt line) in a text chunk, as A1111 writes it."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
