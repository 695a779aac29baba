"""What each training method trains: LoRA (peft), DreamBooth, full fine-tune, textual inversion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError
from core.settings import FULL_METHODS, METHODS, resolve


@dataclass
class TextualInversion:
    """The placeholder tokens and, per text encoder, the embedding rows that may change."""

    placeholder: str
    tokens: list[str]
    rows: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (embedding weight, trainable row mask, original copy)

    def expand(self, caption: str) -> str:
        """The caption with the placeholder spelled as all its vectors (prepended when absent)."""
        spelled = " ".join(self.tokens)
        if self.placeholder in caption:
            return caption.replace(self.placeholder, spelled)
        return f"{spelled}, {caption}" if caption else spelled

    def restore_frozen_rows(self) -> None:
        """Put every row but the placeholder rows back to its original value (bit-identical)."""
        import torch

        with torch.no_grad():
            for i, (weight, mask, original) in enumerate(self.rows):
                if original.device != weight.device or original.dtype != weight.dtype:
                    mask, original = mask.to(weight.device), original.to(weight.device, weight.dtype)
                    self.rows[i] = (weight, mask, original)
                keep = ~mask
                weight[keep] = original[keep]

    def embeddings(self) -> list[Any]:
        """The learned vectors of each text encoder, ``[num_vectors, dim]`` each."""
        return [weight.detach()[mask].clone() for weight, mask, _ in self.rows]


@dataclass
class Method:
    """The trainable part of the model for one method."""

    kind: str
    modules: dict[str, Any]  # component name (the denoiser's, each text encoder's) -> module with trainable parameters
    train_text_encoder: bool
    ti: TextualInversion | None = None
    #: The denoiser's component name (the family spec's ``denoiser``).
    denoiser: str = ""

    def named_trainable(self) -> dict[str, Any]:
        """Trainable parameters by ``<module>.<parameter name>``: ``denoiser.…`` for the denoiser, the component name for a text encoder."""
        return {f"{self._role(m)}.{n}": p for m, module in self.modules.items() for n, p in module.named_parameters() if p.requires_grad}

    def _role(self, component: str) -> str:
        return CHECKPOINT_DENOISER if component == self.denoiser else component

    def parameters(self) -> list[Any]:
        """The trainable parameters, in a stable order."""
        return list(self.named_trainable().values())

    def trainable_state(self) -> dict[str, Any]:
        """Detached copies of the trainable tensors (what a checkpoint stores)."""
        return {name: p.detach() for name, p in self.named_trainable().items()}

    def load_trainable_state(self, tensors: dict[str, Any]) -> None:
        """Copy saved trainable tensors back in; a mismatch raises UserError. A checkpoint written
        before the denoiser's key was ``denoiser`` names it by its component name; it reads the same."""
        import torch

        params = self.named_trainable()
        tensors = old_denoiser_keys(tensors, self.denoiser)
        missing = sorted(set(params) - set(tensors))
        reshaped = sorted(n for n in set(params) & set(tensors) if tuple(params[n].shape) != tuple(tensors[n].shape))
        if missing or reshaped:
            what = f"missing {missing[0]}" if missing else f"{reshaped[0]} has another shape"
            raise UserError(f"the checkpoint does not match this run's method and settings ({what}); resume with the settings it was written with or delete the checkpoints folder")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(tensors[name].to(param.dtype))

    def after_optimizer_step(self) -> None:
        """Method-specific fix-ups after an optimizer step (textual inversion restores frozen rows)."""
        if self.ti is not None:
            self.ti.restore_frozen_rows()


#: The key prefix of the denoiser's tensors in a checkpoint (whatever the family calls its denoiser).
CHECKPOINT_DENOISER = "denoiser"


def old_denoiser_keys(tensors: dict[str, Any], component: str) -> dict[str, Any]:
    """A checkpoint's tensors with the denoiser's read under ``denoiser.`` when an older sdtui wrote them
    under the denoiser's component name (``unet.…`` for the SD families)."""
    old = f"{component}."
    if not component or component == CHECKPOINT_DENOISER or not any(k.startswith(old) for k in tensors):
        return tensors
    return {f"{CHECKPOINT_DENOISER}.{k[len(old) :]}" if k.startswith(old) else k: v for k, v in tensors.items()}


def text_encoders(components: Any) -> dict[str, Any]:
    """The text encoders by their diffusers names."""
    return {name: te for name, te in zip(components.text_encoder_names, components.text_encoders) if te is not None}


def setup_method(kind: str, components: Any, settings: dict[str, Any], placeholder_token: str = "") -> Method:
    """Freeze the model and make trainable what ``kind`` trains; return the Method (UserError when the family does not train ``kind``)."""
    if kind not in METHODS:
        raise UserError(f"method.kind={kind!r} is unknown; use {', '.join(METHODS)}")
    components.spec.check_method(kind)
    settings = resolve("settings", settings)
    denoiser = components.denoiser
    encoders = text_encoders(components)
    components.vae.requires_grad_(False)
    denoiser.requires_grad_(False)
    for te in encoders.values():
        te.requires_grad_(False)
    train_te = bool(settings.get("train_text_encoder")) and kind != "textual_inversion"
    if kind == "lora":
        return _lora(components, denoiser, encoders, settings, train_te)
    if kind in FULL_METHODS:
        denoiser.requires_grad_(True)
        modules = {components.spec.denoiser: denoiser}
        if train_te:
            for name, te in encoders.items():
                if name not in components.spec.trainable_text_encoder_names:
                    continue
                te.requires_grad_(True)
                modules[name] = te
        return Method(kind, modules, train_te, denoiser=components.spec.denoiser)
    return _textual_inversion(components, encoders, settings, placeholder_token)


def trained_components(kind: str, settings: dict[str, Any], family: Any) -> set[str]:
    """The components ``kind`` trains, by name, as :func:`setup_method` makes them trainable (known before loading)."""
    if kind == "textual_inversion":
        return set(family.text_encoder_names)
    return {family.denoiser, *(family.trainable_text_encoder_names if settings.get("train_text_encoder") else ())}


def adapter_config(settings: dict[str, Any], target_modules: list[str], conv_modules: list[str] | tuple[str, ...] = ()) -> Any:
    """The peft config of ``settings.lora_type``: LoRA (optionally DoRA), LoHa or LoKr (with
    ``lokr_factor`` as peft's ``decompose_factor``). ``conv_modules`` (full names) take
    ``conv_rank``/``conv_alpha`` when set, as LyCORIS' conv_dim/conv_alpha."""
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    kind = str(settings.get("lora_type", "lora"))
    rank = int(settings.get("lora_rank", 16))
    alpha = float(settings.get("lora_alpha", rank))
    conv_rank, conv_alpha = int(settings.get("conv_rank", 0)), float(settings.get("conv_alpha", 0.0))
    patterns: dict[str, Any] = {}
    if conv_modules and (conv_rank or conv_alpha):
        patterns = {
            "rank_pattern": dict.fromkeys(conv_modules, conv_rank or rank),
            "alpha_pattern": dict.fromkeys(conv_modules, conv_alpha or alpha),
        }
    if kind == "lora":
        return LoraConfig(
            r=rank,
            lora_alpha=alpha,
            lora_dropout=float(settings.get("lora_dropout", 0.0)),
            use_dora=bool(settings.get("use_dora", False)),
            init_lora_weights="gaussian",
            target_modules=target_modules,
            **patterns,
        )
    if settings.get("use_dora"):
        raise UserError(f'settings.use_dora is DoRA, a kind of LoRA; set lora_type = "lora" for DoRA or use_dora = false for {kind}')
    if float(settings.get("lora_dropout", 0.0)) > 0:
        raise UserError(f"settings.lora_dropout is LoRA's input dropout, which peft's {kind} does not have; set lora_dropout = 0 or lora_type = \"lora\"")
    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=target_modules, **patterns)
    return LoKrConfig(r=rank, alpha=alpha, target_modules=target_modules, decompose_factor=int(settings.get("lokr_factor", -1)), **patterns)


def conv_targets(module: Any, targets: tuple[str, ...] | list[str]) -> list[str]:
    """The full names of ``module``'s convolutions that the target suffixes adapt."""
    import torch

    return [name for name, child in module.named_modules() if isinstance(child, torch.nn.Conv2d) and any(name == t or name.endswith(f".{t}") for t in targets)]


def _lora(components: Any, denoiser: Any, encoders: dict[str, Any], settings: dict[str, Any], train_te: bool) -> Method:
    family = components.spec
    targets = str(settings.get("lora_targets", "attn"))
    denoiser_targets = components.runtime.lora_target_modules(denoiser, family.lora_targets_of(family.denoiser, targets), settings)
    components.runtime.add_adapter(denoiser, adapter_config(settings, denoiser_targets, conv_targets(denoiser, denoiser_targets)))
    modules = {family.denoiser: denoiser}
    if train_te:
        for name, te in encoders.items():
            if name not in family.trainable_text_encoder_names:
                continue
            te.add_adapter(adapter_config(settings, list(family.lora_targets_of(name, targets))))
            modules[name] = te
    return Method("lora", modules, train_te, denoiser=family.denoiser)


def _textual_inversion(components: Any, encoders: dict[str, Any], settings: dict[str, Any], placeholder: str) -> Method:
    import torch

    from core.train.model.text import add_placeholder_tokens, placeholder_tokens

    placeholder = placeholder.strip()
    if not placeholder or " " in placeholder:
        raise UserError('method.placeholder_token must be one new word for textual inversion, e.g. placeholder_token = "<sks>"')
    count = int(settings.get("ti_num_vectors", 1))
    try:
        ids_per_encoder = add_placeholder_tokens(components, placeholder, count, str(settings.get("ti_init_word", "")).strip())
    except ValueError as exc:
        raise UserError(f"method.placeholder_token '{placeholder}' is already a word of the tokenizer; choose a made-up word such as '<{placeholder}>'") from exc
    ti = TextualInversion(placeholder, placeholder_tokens(placeholder, count))
    modules = {}
    for (name, te), ids in zip(encoders.items(), ids_per_encoder):
        weight = te.get_input_embeddings().weight
        mask = torch.zeros(weight.shape[0], dtype=torch.bool, device=weight.device)
        mask[ids] = True
        weight.requires_grad_(True)
        weight.register_hook(lambda grad, m=mask: grad * m.to(grad.device, grad.dtype).unsqueeze(1))
        ti.rows.append((weight, mask, weight.detach().clone()))
        modules[name] = te
    return Method("textual_inversion", modules, False, ti, denoiser=components.spec.denoiser)
