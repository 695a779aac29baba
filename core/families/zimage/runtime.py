"""The Z-Image runtime (Turbo, Base): Qwen3 text states of the valid tokens, list inputs to the
single-stream transformer, ComfyUI's files (imported only by the trainer).

What the transformer expects, as ``ZImagePipeline`` (diffusers 0.42) calls it: a list of latents
``[C, 1, h, w]`` (one frame), the time ``1 - σ`` (the pipeline's ``(1000 - t) / 1000``), a list of
caption states of each caption's own length; it returns the negated velocity, so the prediction
of the flow target ``ε - x₀`` is minus its output.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.families import llm_text, loading, scaled_fp8
from core.families.detect import hub_reachable
from core.families.embeddings import TextEmbeddings
from core.families.flow_mmdit import single_file
from core.families.flow_mmdit.runtime import FlowRuntime
from core.families.lora_files import diffusers_metadata, diffusers_state_dict, from_file, kohya_state_dict
from core.families.objectives import FlowObjective
from core.families.protocol import AdapterWeights, FamilyRuntime, LoadedModel, LoraFiles, ModelSource, SamplePromptLike
from core.families.wrappers import unwrap
from core.families.zimage import HUB_MODELS, PROMPT, SPEC, layout

#: The block list ``settings.train_block_indices`` selects in (the refiners are always trained with the targets).
BLOCKS = "layers"
#: The prefix ComfyUI's Z-Image LoRA loader maps to the model (``comfy/lora.py``, ``z_image_to_diffusers``).
COMFY_PREFIX = "diffusion_model."


def variant_of_name(name: str) -> str:
    """The variant a model's folder, file or hub name says: Base where it names Z-Image but not Turbo, Turbo otherwise."""
    return SPEC.variant_of_name(name).name


def named_variant(name: str) -> str:
    """The variant a folder, file or hub name names itself ("" where its own name names neither)."""
    own = Path(name).name.lower()
    return next((v.name for v in SPEC.variants if v.name == name or (v.name_pattern and re.search(v.name_pattern, own))), "")


def shift_rule(scheduler_config: Mapping[str, Any]) -> tuple[float, bool]:
    """What tells the variants' schedulers apart: the shift and whether it is dynamic."""
    return float(scheduler_config.get("shift", 1.0)), bool(scheduler_config.get("use_dynamic_shifting", False))


def denoiser_file(source: ModelSource) -> str:
    """The transformer file of a source: ``model.denoiser``, or ``model.path`` when it is a single file ("" for a folder or hub id)."""
    return source.denoiser or (source.path if Path(source.path).expanduser().is_file() else "")


def variant_of_source(source: ModelSource, scheduler_config: Mapping[str, Any]) -> str:
    """The variant of a loaded model: a transformer file's own name first (its configs may come from the
    other variant's folder: Base and Turbo share the VAE and text encoder), else the scheduler's shift
    (Turbo 3.0, Base 6.0), else the folder's or hub id's name, else Turbo."""
    file = denoiser_file(source)
    by_scheduler = next((v.name for v in SPEC.variants if shift_rule(SPEC.scheduler_config(v.name)) == shift_rule(scheduler_config)), "")
    chosen = (named_variant(file) or by_scheduler) if file else (by_scheduler or named_variant(source.path))
    return chosen or SPEC.variant().name


def block_indices(text: str, count: int) -> set[int]:
    """``settings.train_block_indices``: ``all`` / empty, ``none``, or ``0,3,5-9`` (ranges inclusive); UserError naming a bad one."""
    from core.families.flow_mmdit.blocks import parse_indices

    return parse_indices(text, count, "train_block_indices")


class ZImageRuntime(FlowRuntime):
    """Z-Image: the shared flow hooks plus its LLM text states, list inputs, files and tiny model."""

    # ---- loading
    def load(self, source: ModelSource, dtypes: Mapping[str, Any] | None = None) -> LoadedModel:
        """The flow base's loading, a ComfyUI text-encoder file read into the Qwen3 model, the variant
        (:func:`variant_of_source`); a transformer file whose name names its variant brings that variant's
        scheduler: a Base file over a Turbo folder trains and samples at Base's shift 6.0, not the folder's 3.0."""
        own = {name: file for name, file in source.text_encoders.items() if Path(file).expanduser().is_file()}
        loaded = super().load(replace(source, text_encoders={n: f for n, f in source.text_encoders.items() if n not in own}), dtypes)
        get = (dtypes or {}).get
        for name, file in own.items():
            index = self.spec.text_encoder_names.index(name)
            loaded.text_encoders[index] = self.text_encoder_from_file(Path(file).expanduser(), loaded.text_encoders[index], get(name, get("default")))
        loaded.source = source
        loaded.variant = variant_of_source(source, dict(loaded.scheduler.config))
        variant_scheduler = self.spec.scheduler_config(loaded.variant)
        if named_variant(denoiser_file(source)) and shift_rule(variant_scheduler) != shift_rule(dict(loaded.scheduler.config)):
            loaded.scheduler = type(loaded.scheduler).from_config({**dict(loaded.scheduler.config), **variant_scheduler})
        return loaded

    def text_encoder_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A Qwen3 text-encoder file (transformers' names, or ComfyUI's ``qwen_3_4b`` causal-LM layout, fp8 or scaled fp8) into a copy of ``like``."""
        import copy

        import torch

        target = dtype or torch.float32
        try:
            tensors, metadata = scaled_fp8.read(path)
            found = scaled_fp8.dequantize(tensors, target, str(path), metadata)
            state = layout.text_encoder_state(found.tensors)
            scales = scaled_fp8.converted_scales(found, layout.text_encoder_state)
        except loading.ModelLoadError:
            raise
        except Exception as exc:
            raise loading.ModelLoadError(f"The text encoder file {path} could not be read ({loading.short(exc)}); give Z-Image's Qwen3-4B .safetensors file.") from exc
        module = copy.deepcopy(like)
        missing, unexpected = module.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise loading.ModelLoadError(
                f"The text encoder file {path} does not fit Z-Image's {type(like).__name__} ({len(missing)} weights missing, {len(unexpected)} unexpected); give the Qwen3-4B file Z-Image uses."
            )
        return scaled_fp8.mark(module.to(dtype=target), scales)

    def denoiser_from_file(self, path: Path, like: Any, dtype: Any) -> Any:
        """A transformer file in the original layout (bf16, fp16, fp8, scaled fp8) into a copy of ``like``."""
        return single_file.read_denoiser(self.spec, path, like, dtype, layout.to_diffusers)

    def single_file_parts(self, path: Path, config: str, dtypes: Mapping[str, Any] | None) -> dict[str, Any]:
        """A transformer-only file (ComfyUI's layout): the other parts from the diffusers folder beside it (or given, or the hub)."""
        folder = loading.config_for_single_file(path, config)
        if folder is not None:
            parts = loading.load_folder(Path(folder), self.spec, dtypes, skip=(self.spec.denoiser,))
            like = self._empty_denoiser(Path(folder) / self.spec.denoiser)
        elif hub_reachable():
            parts, _ = loading.load_hub(HUB_MODELS[variant_of_name(str(path))], dtypes, self.pipeline_extras)
            like = parts[self.spec.denoiser]
        else:
            raise loading.ModelLoadError(
                f"The Z-Image file {path} holds only the transformer and the hub is offline here; put a diffusers folder of the model "
                f"(its VAE, text encoder, tokenizer and configs) next to it named '{path.stem}', or set model.config to one."
            )
        get = (dtypes or {}).get
        parts[self.spec.denoiser] = self.denoiser_from_file(path, like, get(self.spec.denoiser, get("default")))
        return parts

    def _empty_denoiser(self, folder: Path) -> Any:
        """The transformer of a config folder, built from its config (its weights come from the single file)."""
        from diffusers import ZImageTransformer2DModel

        return ZImageTransformer2DModel.from_config(ZImageTransformer2DModel.load_config(str(folder)))

    # ---- objective and adapters
    def objective(self, prediction_type: str, noise_scheduler: Any, settings: Mapping[str, Any]) -> FlowObjective:
        """The flow objective of the model's scheduler (Turbo: shift 3.0); UserError for ``clip_skip`` (Z-Image reads a fixed Qwen3 layer)."""
        if int(settings.get("clip_skip", 1) or 1) != 1:
            raise UserError("settings.clip_skip picks a CLIP layer, and Z-Image reads Qwen3's second-to-last layer as its pipeline does; set clip_skip = 1")
        return super().objective(prediction_type, noise_scheduler, settings)

    def lora_target_modules(self, denoiser: Any, targets: Sequence[str], settings: Mapping[str, Any]) -> list[str]:
        """Full module names: the targets in the refiners and in the main layers ``settings.train_block_indices``
        selects, and for ``all`` the embedders and final layer. UserError when nothing is selected."""
        config = unwrap(denoiser).config
        chosen = block_indices(str(settings.get("train_block_indices", "") or ""), int(config.n_layers))
        names = []
        for name, module in unwrap(denoiser).named_modules():
            if not any(name == t or name.endswith("." + t) for t in targets) or not hasattr(module, "weight") or module.weight.ndim != 2:
                continue
            head, _, rest = name.partition(".")
            if head != BLOCKS or int(rest.split(".", 1)[0]) in chosen:
                names.append(name)
        if not names:
            raise UserError("settings.train_block_indices selects no block to train; select at least one block (e.g. all or 0-29)")
        return names

    # ---- text
    def tokenize(self, tokenizers: Sequence[Any], captions: Sequence[str], variant: str = "") -> list[Any]:
        """The templated captions' ids and attention mask at Z-Image's 512 tokens."""
        ids, mask = llm_text.tokenize(tokenizers[0], PROMPT, captions)
        return [ids, mask]

    def encode_text(self, encoders: Sequence[Any], token_ids: Sequence[Any], clip_skip: int) -> TextEmbeddings:
        """Qwen3's second-to-last hidden states of the valid tokens (moved to the front) and their mask."""
        ids, mask = token_ids
        return llm_text.encode(encoders[0], PROMPT, ids, mask)

    def extra_conditioning(self, embeddings: TextEmbeddings, batch: Mapping[str, Any], device: Any, settings: Mapping[str, Any]) -> dict[str, Any] | None:
        """The caption mask: which of the padded text states are the caption's."""
        mask = embeddings.extra.get("attention_mask")
        if mask is None:
            raise ValueError("Z-Image's conditioning needs the caption mask; encode the captions with this family's encode_text")
        return {"attention_mask": mask.to(device)}

    def predict(self, denoiser: Any, noisy: Any, timesteps: Any, hidden: Any, extra: Mapping[str, Any] | None) -> Any:
        """The transformer on lists (one latent frame and one caption of its own length per sample), negated to ``ε - x₀``."""
        import torch

        if extra is None:
            raise ValueError("Z-Image's transformer needs the caption mask; pass extra_conditioning's output")
        mask = extra["attention_mask"].bool()
        frames = list(noisy.unsqueeze(2).unbind(0))
        captions = [states[keep] for states, keep in zip(hidden.to(noisy.dtype), mask)]
        time = (1000 - timesteps.float()) / 1000
        out = denoiser(frames, time, captions, return_dict=False)[0]
        return -torch.stack(out, dim=0).squeeze(2)

    # ---- sampling
    def sample_arguments(self, pipe: Any, prompt: SamplePromptLike, clip_skip: int) -> dict[str, Any]:
        """ZImagePipeline's call: prompt, negative prompt with CFG (Base), size, steps, guidance (0 = none: Turbo)."""
        arguments: dict[str, Any] = {
            "prompt": prompt.prompt,
            "width": prompt.width,
            "height": prompt.height,
            "num_inference_steps": prompt.steps,
            "guidance_scale": prompt.scale,
            "max_sequence_length": PROMPT.max_tokens,
        }
        if prompt.scale > 0 and prompt.negative:
            arguments["negative_prompt"] = prompt.negative
        return arguments

    def sample_text_calls(self, pipe: Any, arguments: Mapping[str, Any]) -> list[tuple[dict[str, Any], tuple[str | None, ...]]]:
        """ZImagePipeline encodes prompt and negative prompt in one call (classifier-free above 0: Base), as lists of unpadded states."""
        keywords = {
            "prompt": arguments["prompt"],
            "negative_prompt": arguments.get("negative_prompt"),
            "do_classifier_free_guidance": arguments["guidance_scale"] > 0,
            "max_sequence_length": arguments["max_sequence_length"],
        }
        return [(keywords, ("prompt_embeds", "negative_prompt_embeds"))]

    # ---- files other tools read
    def lora_files(self, adapters: Sequence[AdapterWeights], denoiser_config: Mapping[str, Any]) -> LoraFiles:
        """ComfyUI's layout (``diffusion_model.<module>`` with lora_down/lora_up/alpha, LoHa and LoKr keys) and diffusers'."""
        return LoraFiles(
            kohya=kohya_state_dict(adapters, comfy_base),
            diffusers=diffusers_state_dict(adapters),
            diffusers_metadata=diffusers_metadata(adapters),
        )

    def lora_from_file(self, tensors: Mapping[str, Any], adapter: AdapterWeights, denoiser_config: Mapping[str, Any]) -> dict[str, Any]:
        """A ComfyUI-layout or diffusers LoRA file's tensors for one adapter under peft's keys."""
        return from_file(tensors, adapter, comfy_base)

    def kohya_metadata(self, v_prediction: bool, adapter: str = "lora", variant: str = "") -> dict[str, str]:
        """``ss_base_model_version`` and ``modelspec.*`` for Z-Image (architecture per variant)."""
        name = self.spec.variant(variant).name
        return {
            "ss_base_model_version": self.spec.kohya_base_version,
            "ss_v2": str(self.spec.kohya_v2),
            "modelspec.architecture": f"{self.spec.modelspec_architectures[name]}/{adapter}",
            "modelspec.implementation": self.spec.modelspec_implementation,
        }

    def to_original(self, pipe: Any) -> dict[str, Any]:
        """The transformer in the original layout (what ``z_image_turbo_bf16.safetensors`` holds and ComfyUI loads)."""
        return layout.to_original(unwrap(pipe.transformer).state_dict())

    # ---- tiny model and measurement
    def build_tiny(self, out_dir: Path) -> Path:
        """Write the tiny model (seeded, its locally built Qwen2 tokenizer with the chat template) as a diffusers folder."""
        from core.families.zimage import tiny

        self.pipeline_class()(**tiny.parts(out_dir)).save_pretrained(out_dir, safe_serialization=True)
        return out_dir

    def dummy_inputs(self, denoiser_config: Mapping[str, Any], batch: int, resolution: int, dtype: Any, device: Any) -> dict[str, Any]:
        """One transformer forward's inputs at ``resolution``: latent frames, the time, captions at the full 512 tokens."""
        import torch

        side = resolution // 8
        channels = int(denoiser_config["in_channels"])
        width = int(denoiser_config["cap_feat_dim"])
        return {
            "x": [torch.randn(channels, 1, side, side, dtype=dtype, device=device) for _ in range(batch)],
            "t": torch.full((batch,), 0.5, dtype=torch.float32, device=device),
            "cap_feats": [torch.randn(PROMPT.max_tokens, width, dtype=dtype, device=device) for _ in range(batch)],
        }


def comfy_base(component: str, module: str) -> str:
    """The ComfyUI key of one adapted module: ``diffusion_model.`` + its diffusers name (ComfyUI maps it onto the fused original)."""
    return COMFY_PREFIX + module


#: Typed as the Protocol, so mypy checks that this runtime implements every hook.
RUNTIME: FamilyRuntime = ZImageRuntime(SPEC)
