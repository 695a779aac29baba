"""Count the parameters of every SD component on the meta device and write core/memory/params.json.

``python -m bench.measure_params`` builds the real-size denoiser, VAE and text encoder(s) of every
registered family from its spec's classes and configs (``core/families``) on the meta device (no weights, no download, a
few seconds) and records per component: the parameter count, the LoRA "width" per
``lora_targets`` choice (Σ over adapted layers of in·k·k + out, so LoRA params = rank × width)
and the adapted layer count and weight size (LoHa/LoKr build a delta of that size), the largest single tensor (what a fused backward pass holds as
gradient), the fp32 values Adafactor's factored second moment keeps, plus the text encoders'
embedding size for textual inversion; for a quantized base the Linear weights it quantizes
(outside the spec's ``high_precision`` patterns: count, rows, largest), the denoiser's
parameters per swappable block (the spec's ``swap_blocks``, in forward order) and, for a family
with block selection (``block_settings``), the LoRA width inside each selectable block.
``--check`` compares the file with a fresh build instead of writing it; ``--family NAME`` (repeatable)
measures only those families and merges them into the stored file (the others' entries kept). A
variant measured on its own (``FamilySpec.sized_variants``: ``sd35-large``, ``flux2-klein-9b``,
``flux2-dev``) gets an entry of its own under its name.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.atomic import write_json_atomic
from core.families import FAMILIES, spec
from core.families.components import build_component
from core.families.sd_unet import is_lora_target

PARAMS_JSON = Path(__file__).resolve().parents[1] / "core" / "memory" / "params.json"


def build_meta(family: str, kind: str, config: dict[str, Any], variant: str = "") -> Any:
    """Build component ``kind`` of ``family`` (its ``variant``) with the real config on the meta device (its spec's class)."""
    import torch

    with torch.device("meta"):
        return build_component(spec(family), kind, config, variant)


def lora_width(module: Any) -> int:
    """in·k·k + out of a Linear or Conv2d: LoRA adds rank × this many parameters to it."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features + module.out_features
    if isinstance(module, torch.nn.Conv2d):
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw // module.groups + module.out_channels
    return 0


def adafactor_floats(shape: tuple[int, ...]) -> int:
    """fp32 values Adafactor (no momentum) keeps for a tensor: row and column factors when 2-D or more."""
    if len(shape) < 2:
        return max(1, math.prod(shape))
    return math.prod(shape[:-1]) + math.prod(shape[:-2] + shape[-1:])


def describe(family: str, kind: str, model: Any, variant: str = "") -> dict[str, Any]:
    """Parameter count, LoRA widths per target choice, and embedding sizes of one component of ``family``."""
    family_spec = spec(family)
    params = list(model.parameters())
    entry: dict[str, Any] = {
        "class": family_spec.component_class_names(variant)[kind],
        "params": sum(p.numel() for p in params),
        "largest_param": max(p.numel() for p in params),
        "adafactor_state_floats": sum(adafactor_floats(tuple(p.shape)) for p in params),
    }
    if kind == "vae":
        return entry
    entry.update(quantizable(model, lambda name: family_spec.keeps_precision(kind, name)))
    if kind == family_spec.denoiser:
        entry["blocks"] = block_params(model, tuple(family_spec.swap_blocks))
    targets = family_spec.lora_targets["denoiser" if kind == family_spec.denoiser else "text_encoder"]
    entry["lora_width"] = {}
    entry["lora_layers"] = {}
    entry["lora_weight_params"] = {}
    for choice, suffixes in targets.items():
        layers = [m for name, m in model.named_modules() if is_lora_target(name, suffixes) and lora_width(m)]
        entry["lora_width"][choice] = sum(lora_width(m) for m in layers)
        entry["lora_layers"][choice] = len(layers)
        entry["lora_weight_params"][choice] = sum(m.weight.numel() for m in layers)
    if kind == family_spec.denoiser and family_spec.block_settings:
        entry["lora_block_width"] = {choice: block_widths(model, suffixes, tuple(family_spec.block_settings.values())) for choice, suffixes in targets.items()}
    if kind != family_spec.denoiser:
        config = model.config.get_text_config()  # a vision-language encoder's text tower (Qwen2.5-VL, Mistral 3)
        entry["hidden_size"] = config.hidden_size
        entry["token_embedding_params"] = config.vocab_size * config.hidden_size
    return entry


def quantizable(model: Any, keeps: Callable[[str], bool]) -> dict[str, int]:
    """What a quantized base quantizes: the nn.Linear weights whose module name the spec does not
    ``keeps`` in high precision (count, output rows: one scale each per row, and the largest:
    its bf16 copy is the dequantization buffer)."""
    import torch

    linears = [m for name, m in model.named_modules() if type(m) is torch.nn.Linear and not keeps(name)]
    return {
        "quantizable_params": sum(m.weight.numel() for m in linears),
        "quantizable_rows": sum(m.out_features for m in linears),
        "largest_linear": max((m.weight.numel() for m in linears), default=0),
    }


def block_widths(model: Any, suffixes: tuple[str, ...], lists: tuple[str, ...]) -> dict[str, list[int]]:
    """The LoRA width of ``suffixes`` inside each block of each selectable block list (``FamilySpec.block_settings``):
    what a block selection takes off the component's ``lora_width``."""
    out: dict[str, list[int]] = {}
    for name in lists:
        out[name] = [sum(lora_width(m) for sub, m in child.named_modules() if is_lora_target(f"{name}.{index}.{sub}", suffixes)) for index, child in enumerate(model.get_submodule(name))]
    return out


def block_params(model: Any, lists: tuple[str, ...]) -> dict[str, list[int]]:
    """Parameters of each block of each list (a ModuleList: one per child; another module: one block)."""
    import torch

    out: dict[str, list[int]] = {}
    for name in lists:
        module = model.get_submodule(name)
        children = list(module) if isinstance(module, torch.nn.ModuleList) else [module]
        out[name] = [sum(p.numel() for p in child.parameters()) for child in children]
    return out


def measure(families: tuple[str, ...] = FAMILIES) -> dict[str, Any]:
    """The params.json document of ``families`` (default: all), freshly measured."""
    import diffusers
    import transformers

    out: dict[str, Any] = {
        "generated_by": "bench/measure_params.py",
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "families": {},
    }
    for family in families:
        for key, variant in ((family, ""), *((v, v) for v in spec(family).sized_variants)):
            configs = spec(family).component_configs(variant)
            out["families"][key] = {kind: describe(family, kind, build_meta(family, kind, configs[kind], variant), variant) for kind in spec(family).component_classes}
    return out


def strip_versions(doc: dict[str, Any]) -> dict[str, Any]:
    """The measured part of a params.json document (library versions left out)."""
    return doc["families"]


def main(argv: list[str] | None = None) -> int:
    """Write params.json, or with ``--check`` report whether it is up to date."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare with the stored file; exit 1 if it differs")
    parser.add_argument("--family", action="append", choices=FAMILIES, help="measure only this family and merge it into the stored file (repeatable)")
    args = parser.parse_args(argv)
    if args.family and not args.check:
        fresh = measure(tuple(args.family))
        stored = json.loads(PARAMS_JSON.read_text())
        fresh["families"] = {**stored["families"], **fresh["families"]}
    else:
        fresh = measure()
    if args.check:
        stored = json.loads(PARAMS_JSON.read_text())
        same = strip_versions(stored) == strip_versions(fresh)
        print("params.json is up to date" if same else "params.json differs from the configs; rerun without --check")
        return 0 if same else 1
    write_json_atomic(PARAMS_JSON, fresh)
    for family, comps in fresh["families"].items():
        print(family, ", ".join(f"{k}={v['params'] / 1e6:.1f}M" for k, v in comps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
