"""LoHa, LoKr and DoRA files of FLUX.1 and Chroma as ComfyUI loads them: every key mapped, none ignored,
and the weights ComfyUI's rules merge equal to the trained model's.

ComfyUI's rules, restated here in our own code from its source (comfy/lora.py ``model_lora_keys_unet``,
``model_lora_keys_clip`` and ``load_lora``; comfy/utils.py ``flux_to_diffusers``; the
comfy/weight_adapter LoHa / LoKr / LoRA adapters and ``weight_decompose``), as we understood them:

* ``lora_unet_`` + every BFL weight name with dots as underscores maps onto that weight (Chroma's
  ComfyUI model class is a Flux subclass, so the same rules hold for it);
* ``lora_transformer_`` + a diffusers module name of ``flux_to_diffusers``' table maps onto a BFL weight,
  q/k/v (and a single block's MLP input) onto their rows of the fused weight, and the final
  ``norm_out.linear`` through a function that swaps the delta's halves (shift/scale order);
* ``lora_te1_text_model_encoder_layers_N_…`` maps onto CLIP-L;
* per module: ``.alpha``; LoRA ``.lora_up.weight`` / ``.lora_down.weight`` (+ ``.dora_scale``); LoHa
  ``.hada_w1_a`` … ; LoKr ``.lokr_w1`` / ``.lokr_w2`` or their ``_a`` / ``_b`` factors; any other key
  is "lora key not loaded";
* LoHa's delta is ``(w1_a·w1_b) ⊙ (w2_a·w2_b) · alpha / rank``; LoKr's ``w1 ⊗ w2``, scaled by
  ``alpha / rank`` only when a factor is decomposed; DoRA rescales each output row of ``W + ΔW``
  (on the slice the key maps to) to ``dora_scale``; a mapped function applies to ΔW only.
"""

from __future__ import annotations

import pytest
import torch

from core.families import runtime, spec
from core.families.flux import layout
from core.train.model.loading import load_components

#: The suffixes ComfyUI's LoRA loader consumes (anything else is reported as not loaded).
COMFY_SUFFIXES = {
    ".alpha",
    ".lora_up.weight",
    ".lora_down.weight",
    ".lora_mid.weight",
    ".dora_scale",
    ".hada_w1_a",
    ".hada_w1_b",
    ".hada_w2_a",
    ".hada_w2_b",
    ".hada_t1",
    ".hada_t2",
    ".lokr_w1",
    ".lokr_w2",
    ".lokr_w1_a",
    ".lokr_w1_b",
    ".lokr_w2_a",
    ".lokr_w2_b",
    ".lokr_t2",
}
#: flux_to_diffusers' double-block, single-block and outside-block tables (diffusers module -> BFL module), restated.
DOUBLE = {
    "attn.to_out.0": "img_attn.proj",
    "norm1.linear": "img_mod.lin",
    "norm1_context.linear": "txt_mod.lin",
    "attn.to_add_out": "txt_attn.proj",
    "ff.net.0.proj": "img_mlp.0",
    "ff.net.2": "img_mlp.2",
    "ff_context.net.0.proj": "txt_mlp.0",
    "ff_context.net.2": "txt_mlp.2",
}
SINGLE = {"norm.linear": "modulation.lin", "proj_out": "linear2"}
BASIC = {
    "proj_out": "final_layer.linear",
    "x_embedder": "img_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
    "context_embedder": "txt_in",
    "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
}
CLIP_MODULES = {
    "mlp.fc1": "mlp_fc1",
    "mlp.fc2": "mlp_fc2",
    "self_attn.k_proj": "self_attn_k_proj",
    "self_attn.q_proj": "self_attn_q_proj",
    "self_attn.v_proj": "self_attn_v_proj",
    "self_attn.out_proj": "self_attn_out_proj",
}

Target = tuple[str, int, int, bool]  # BFL weight, first row, rows (0: all), delta swapped


def comfy_key_map(config: dict, bfl: dict[str, torch.Tensor]) -> dict[str, Target]:
    """ComfyUI's LoRA key -> what it patches, for a FLUX-shaped model (our restatement, see the module docstring)."""
    hidden = int(config["num_attention_heads"]) * int(config["attention_head_dim"])
    found: dict[str, Target] = {"lora_unet_" + k[: -len(".weight")].replace(".", "_"): (k, 0, 0, False) for k in bfl if k.endswith(".weight")}

    def diffusers(name: str, target: Target) -> None:
        if target[0] in bfl:
            found["lora_transformer_" + name.replace(".", "_")] = target

    for i in range(int(config["num_layers"])):
        for j, (img, txt) in enumerate((("to_q", "add_q_proj"), ("to_k", "add_k_proj"), ("to_v", "add_v_proj"))):
            diffusers(f"transformer_blocks.{i}.attn.{img}", (f"double_blocks.{i}.img_attn.qkv.weight", j * hidden, hidden, False))
            diffusers(f"transformer_blocks.{i}.attn.{txt}", (f"double_blocks.{i}.txt_attn.qkv.weight", j * hidden, hidden, False))
        for ours, theirs in DOUBLE.items():
            diffusers(f"transformer_blocks.{i}.{ours}", (f"double_blocks.{i}.{theirs}.weight", 0, 0, False))
    for i in range(int(config["num_single_layers"])):
        for j, part in enumerate(("attn.to_q", "attn.to_k", "attn.to_v")):
            diffusers(f"single_transformer_blocks.{i}.{part}", (f"single_blocks.{i}.linear1.weight", j * hidden, hidden, False))
        diffusers(f"single_transformer_blocks.{i}.proj_mlp", (f"single_blocks.{i}.linear1.weight", 3 * hidden, 4 * hidden, False))
        for ours, theirs in SINGLE.items():
            diffusers(f"single_transformer_blocks.{i}.{ours}", (f"single_blocks.{i}.{theirs}.weight", 0, 0, False))
    for ours, theirs in BASIC.items():
        diffusers(ours, (f"{theirs}.weight", 0, 0, False))
    diffusers("norm_out.linear", ("final_layer.adaLN_modulation.1.weight", 0, 0, True))
    for layer in range(12):
        for ours, theirs in CLIP_MODULES.items():
            found[f"lora_te1_text_model_encoder_layers_{layer}_{theirs}"] = (f"clip_l.transformer.text_model.encoder.layers.{layer}.{ours}.weight", 0, 0, False)
    return found


def comfy_delta(group: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔW of one module's tensors, as ComfyUI's adapters compute it (before DoRA's rescaling)."""
    alpha = float(group[".alpha"]) if ".alpha" in group else None
    if ".hada_w1_a" in group:
        scale = alpha / group[".hada_w1_b"].shape[0] if alpha is not None else 1.0
        return (group[".hada_w1_a"] @ group[".hada_w1_b"]) * (group[".hada_w2_a"] @ group[".hada_w2_b"]) * scale
    if any(k.startswith(".lokr_") for k in group):
        w1 = group[".lokr_w1"] if ".lokr_w1" in group else group[".lokr_w1_a"] @ group[".lokr_w1_b"]
        w2 = group[".lokr_w2"] if ".lokr_w2" in group else group[".lokr_w2_a"] @ group[".lokr_w2_b"]
        rank = group[".lokr_w2_b"].shape[0] if ".lokr_w2_b" in group else group[".lokr_w1_b"].shape[0] if ".lokr_w1_b" in group else None
        return torch.kron(w1, w2) * (alpha / rank if alpha is not None and rank is not None else 1.0)
    down = group[".lora_down.weight"]
    return group[".lora_up.weight"] @ down * (alpha / down.shape[0] if alpha is not None else 1.0)


def comfy_merge(base: dict[str, torch.Tensor], kohya: dict[str, torch.Tensor], keys: dict[str, Target]) -> dict[str, torch.Tensor]:
    """The BFL weights with a kohya/LyCORIS file merged by ComfyUI's rules; AssertionError for a key it would not load."""
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in kohya.items():
        stem, dot, rest = key.partition(".")
        assert stem in keys, f"ComfyUI maps no module to {key}"
        assert dot + rest in COMFY_SUFFIXES, f"ComfyUI does not load {key}"
        groups.setdefault(stem, {})[dot + rest] = tensor.float()
    merged = {k: v.clone() for k, v in base.items()}
    for stem, group in groups.items():
        weight, first, rows, swapped = keys[stem]
        if weight.startswith("clip_l."):
            continue
        delta = comfy_delta(group)
        delta = layout.swap_halves(delta) if swapped else delta
        rows = rows or merged[weight].shape[0]
        piece = merged[weight][first : first + rows] + delta.reshape(rows, -1)
        if ".dora_scale" in group:
            piece = piece * (group[".dora_scale"] / piece.norm(dim=1, keepdim=True))
        merged[weight][first : first + rows] = piece
    return merged


def _trained(family: str, model, lora_type: str, dora: bool):
    """The tiny model with a random (non-zero) adapter of ``lora_type`` on every target (and on CLIP-L where the family has it)."""
    from core.train.model.methods import adapter_config
    from core.train.outputs.files import adapters

    components = load_components(str(model), settings={})
    family_runtime = runtime(family)
    settings = {"lora_rank": 2, "lora_alpha": 3.0, "lora_targets": "all", "lora_type": lora_type, "use_dora": dora, "lokr_factor": -1}
    names = family_runtime.lora_target_modules(components.denoiser, spec(family).lora_targets_of("transformer", "all"), settings)
    family_runtime.add_adapter(components.denoiser, adapter_config(settings, names))
    for encoder, te in zip(components.text_encoders, spec(family).text_encoders):
        if te.kind == "clip_l":
            encoder.add_adapter(adapter_config(settings, list(spec(family).lora_targets_of(te.name, "all"))))
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for module in (components.denoiser, *components.text_encoders):
            for name, param in module.named_parameters():
                if any(marker in name for marker in ("lora_", "hada_", "lokr_")):
                    param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return components, adapters(components)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["flux", "chroma"])
@pytest.mark.parametrize(("lora_type", "dora"), [("loha", False), ("lokr", False), ("lora", True)])
def test_every_key_loads_in_comfyui_and_merges_to_the_trained_model(tiny_models, family, lora_type, dora):
    from peft.tuners.tuners_utils import BaseTunerLayer

    family_runtime = runtime(family)
    components, trained = _trained(family, tiny_models(family), lora_type, dora)
    config = dict(components.denoiser.config)
    modules = family_runtime.global_modules(config)
    extra = family_runtime.extra_names(config)
    base = layout.to_original(
        {k.replace(".base_layer", ""): v for k, v in components.denoiser.state_dict().items() if not any(m in k for m in ("lora_", "hada_", "lokr_"))}, config, modules, extra
    )
    kohya = family_runtime.lora_files(trained, config).kohya
    stems = {key.partition(".")[0] for key in kohya}
    adapted = {name for adapter in trained for name in {key.split(".lora_")[0].split(".hada_")[0].split(".lokr_")[0] for key in adapter.state}}
    assert len(stems) == len(adapted), "one key base per adapted module: the writer dropped or merged none"
    assert any(stem.startswith("lora_te1_") for stem in stems) == (family == "flux")
    merged = comfy_merge(base, kohya, comfy_key_map(config, base))

    for module in components.denoiser.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    expected = layout.to_original(
        {k.replace(".base_layer", ""): v for k, v in components.denoiser.state_dict().items() if not any(m in k for m in ("lora_", "hada_", "lokr_"))}, config, modules, extra
    )
    changed = [key for key in expected if not torch.equal(expected[key], base[key])]
    assert changed, "the adapter changes the model"
    for key in expected:
        torch.testing.assert_close(merged[key], expected[key], rtol=1e-4, atol=1e-5, msg=key)
