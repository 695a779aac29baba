"""Sample images during training: kohya prompt lines rendered with the model being trained."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.atomic import write_atomic
from core.sample_prompts import parse_prompt_line
from core.train.model.loading import Components, unwrap


class SampleError(RuntimeError):
    """Rendering a sample failed; the message names the prompt and the cause."""


@dataclass(frozen=True)
class SampleResult:
    """One rendered sample."""

    path: Path
    prompt_index: int
    prompt: str


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
) -> list[SampleResult]:
    """Render each prompt line (kohya syntax: ``--n --w --h --d --l --s --ss``) to a PNG in ``out_dir``.

    ``denoiser``/``text_encoders`` may be the training-wrapped modules of ``components``. A prompt without ``--d`` uses ``seed`` +
    its index; without ``--ss`` it uses ``sampler``; without ``--s`` / ``--l`` the family's sampling steps and guidance
    (``sample_defaults``). The pipeline's arguments are the family's (``sample_arguments``). ``clip_skip`` is kohya's (the text
    layer the run trains with). Runs in eval mode under ``no_grad`` and ``autocast()``, the
    context the training steps run in (the accelerator's, so bf16 and fp16 runs sample in their
    precision on the CPU and the GPU), and restores train mode and devices after. Raises
    :class:`SampleError` naming the prompt.
    """
    import torch

    family_runtime = components.runtime
    pipe = components.pipeline(denoiser=denoiser, text_encoders=text_encoders)
    base_scheduler = pipe.scheduler
    device = torch.device(device)
    steps, scale = family_runtime.sample_defaults(components.variant)
    parsed = [parse_prompt_line(line, width=default_size, height=default_size, scale=scale, steps=steps) for line in prompts]
    wanted = list(indices) if indices is not None else list(range(len(parsed)))
    results: list[SampleResult] = []
    with _inference_mode([unwrap(m) for m in _pipeline_modules(pipe, components.spec)], device):
        for index in wanted:
            prompt = parsed[index]
            generator = torch.Generator(device="cpu").manual_seed(prompt.seed if prompt.seed is not None else seed + index)
            try:
                pipe.scheduler = sampler_scheduler(prompt.sampler or sampler, base_scheduler)
                arguments = family_runtime.sample_arguments(pipe, prompt, clip_skip)
                with autocast():
                    image = pipe(**arguments, generator=generator).images[0]
            except Exception as exc:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                raise SampleError(
                    f"rendering sample prompt {index} ('{prompt.prompt[:60]}') at step {step} failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                ) from exc
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
