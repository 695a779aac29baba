"""The picker, the plan, the wizard and preflight judge a fit with the same inputs.

Pure functions only (no torch, no files): the dataset is a DatasetScan built in memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.config import apply_recipe, new_config
from core.dataset.scan import DatasetScan, ImageEntry, Subset
from core.gpu import parse_spec
from core.launch.preflight import check_fit
from core.plan.class_images import class_images as class_image_rule
from core.plan.fit import run_shape
from core.plan.learning_rates import schedule_defaults
from core.plan.picker import pick_recipes, rank_recipes
from core.plan.planner import make_plan
from core.recipes import load_recipes
from core.settings import FAMILIES, METHODS, defaults, resolve

RECIPES = load_recipes()
GPU_SPECS = ("1x8GB", "1x12GB", "1x4090", "2x4090", "1x3060", "2x3060", "1x24GB", "4xA100-40GB", "2xA100-80GB", "8xH100", "1xL4", "1x48GB")


def memory_scan(class_images: int, size: tuple[int, int] = (1024, 1024)) -> DatasetScan:
    """A scanned dataset held in memory: 8 instance images, and a class folder when asked."""

    def subset(path: str, count: int, is_reg: bool) -> Subset:
        images = [ImageEntry(f"{path}/{i:03d}.png", size[0], size[1], "png") for i in range(count)]
        return Subset(path, path.rsplit("/", 1)[1], 10 if not is_reg else 1, "sks dog" if not is_reg else "dog", is_reg, images, count, 0, size, size)

    subsets = [subset("/data/10_sks dog", 8, False)]
    if class_images:
        subsets.append(subset("/reg/1_dog", class_images, True))
    return DatasetScan("/data", subsets, [], 1024, [], "/reg" if class_images else None)


def config_for(family: str, method: str, recipe: Any, overrides: dict[str, Any], scan: DatasetScan, gpus: Any, backend: str = "ddp") -> Any:
    """The run config the wizard or ``sdtui plan`` writes for this recipe and these overrides."""
    config = new_config("t", "", family, method, scan.subset_configs(), {}, distributed={"num_processes": max(1, gpus.count), "backend": backend})
    apply_recipe(config, recipe.settings, recipe.name, recipe.schedule)
    for key, value in overrides.items():
        config.set(f"settings.{key}", value)
    return config


def test_sdxl_lora_with_a_class_folder_on_two_4090s_fits_where_the_picker_says_it_does() -> None:
    """The reported bug: the picker said sdxl-lora-24gb-fast fits at 15.4 GB, the plan said 23.3 GB does not fit."""
    gpus = parse_spec("2x4090")
    scan = memory_scan(class_images=50)
    shape = run_shape("lora", scan.reg_images, {"num_processes": 2})
    assert shape.prior_preservation
    ranked = {f.name: f for f in rank_recipes("sdxl", "lora", gpus, RECIPES, shape=shape)}
    fast = ranked["sdxl-lora-24gb-fast"]
    plan = make_plan(config_for("sdxl", "lora", fast.recipe, fast.changes, scan, gpus), scan, gpus)
    assert plan.prior_preservation
    assert plan.vram_estimate_bytes == fast.estimate.total_bytes
    assert plan.fits is fast.fits
    chosen = pick_recipes("sdxl", "lora", gpus, RECIPES, shape=shape)[0]
    plan = make_plan(config_for("sdxl", "lora", chosen.recipe, chosen.changes, scan, gpus), scan, gpus)
    assert plan.fits and not [w for w in plan.warnings if "does not fit" in w]
    # Without the class folder the same recipe is lighter: the pairing is what was missing.
    alone = rank_recipes("sdxl", "lora", gpus, RECIPES)
    assert {f.name: f for f in alone}["sdxl-lora-24gb-fast"].baseline.estimate.total_bytes < fast.baseline.estimate.total_bytes


#: The class prompt of every example: DreamBooth runs generate their class images from it.
CLASS_PROMPT = "a photo of a dog"


@dataclass
class PlainConfig:
    """What make_plan reads of a RunConfig, resolved the way RunConfig resolves it (a tomlkit
    document per example would make thousands of examples take minutes)."""

    family: str
    method: str
    settings: dict[str, Any]
    schedule: dict[str, Any]
    distributed: dict[str, Any]
    subsets: list[dict[str, Any]] = field(default_factory=list)
    method_section: dict[str, Any] = field(default_factory=lambda: {"class_prompt": CLASS_PROMPT})
    #: No model file: the plan is of the family's default variant.
    model_path: str = ""

    def section(self, name: str) -> dict[str, Any]:
        """The other sections make_plan reads: [method] (the class prompt), [validation] (off) and [dataset] (no masks)."""
        return {"method": self.method_section, "validation": resolve("validation"), "dataset": resolve("dataset")}[name]


def plain_config(family: str, method: str, recipe: Any, overrides: dict[str, Any], scan: DatasetScan, gpus: Any, backend: str) -> PlainConfig:
    settings = recipe.resolved_settings(overrides)
    schedule = resolve("schedule", schedule_defaults(family, method, settings["optimizer"]), recipe.schedule)
    distributed = resolve("distributed", {"num_processes": max(1, gpus.count), "backend": backend})
    return PlainConfig(family, method, settings, schedule, distributed, scan.subset_configs())


def test_the_plain_config_reads_as_the_run_config_does() -> None:
    gpus = parse_spec("2x4090")
    scan = memory_scan(20)
    recipe = next(r for r in RECIPES if r.name == "sdxl-finetune-24gb")
    real = config_for("sdxl", "finetune", recipe, {"batch_size": 2}, scan, gpus, "deepspeed")
    plain = plain_config("sdxl", "finetune", recipe, {"batch_size": 2}, scan, gpus, "deepspeed")
    assert (real.settings, real.schedule, real.distributed, real.subsets) == (plain.settings, plain.schedule, plain.distributed, plain.subsets)


OVERRIDES = st.fixed_dictionaries(
    {},
    optional={
        "gradient_checkpointing": st.booleans(),
        "batch_size": st.integers(1, 4),
        "resolution": st.sampled_from([512, 768, 1024]),
        "train_text_encoder": st.booleans(),
        "ema": st.booleans(),
        "optimizer": st.sampled_from(["adamw", "adamw8bit", "adafactor", "lion8bit"]),
        "cache_latents": st.booleans(),
        "cache_text_encoder_outputs": st.booleans(),
        "lora_rank": st.sampled_from([4, 16, 64]),
        "mixed_precision": st.sampled_from(["bf16", "fp16", "no"]),
    },
)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(FAMILIES),
    method=st.sampled_from(METHODS),
    overrides=OVERRIDES,
    class_images=st.sampled_from([0, 0, 20, 200]),
    spec=st.sampled_from(GPU_SPECS),
    backend=st.sampled_from(["ddp", "ddp", "deepspeed", "fsdp"]),
)
def test_whatever_the_picker_calls_fitting_plan_and_preflight_call_fitting(
    family: str,
    method: str,
    overrides: dict[str, Any],
    class_images: int,
    spec: str,
    backend: str,
) -> None:
    gpus = parse_spec(spec)
    scan = memory_scan(class_images)
    # the class images the run will have: the given ones and, for DreamBooth, those the trainer generates
    classes = class_image_rule(method, defaults("settings"), CLASS_PROMPT, scan.reg_images, scan.images)
    shape = run_shape(method, classes.total, {"num_processes": gpus.count, "backend": backend})
    for fit in rank_recipes(family, method, gpus, RECIPES, overrides, shape):
        plan = make_plan(plain_config(family, method, fit.recipe, overrides | fit.changes, scan, gpus, backend), scan, gpus)
        assert plan.vram_estimate_bytes == fit.estimate.total_bytes, fit.name
        assert plan.fits is fit.fits, fit.name
        if fit.fits:
            check_fit(plan, force=False)


def test_sdtui_plan_with_a_class_folder_never_picks_a_recipe_it_then_calls_too_big(kohya_dataset, tmp_path, capsys, monkeypatch) -> None:
    import json

    from cli.main import main
    from tests.conftest import write_image

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    for n in range(6):
        write_image(tmp_path / "class" / f"dog{n}.png")
    assert main(["plan", "--model", "sdxl", "--data", str(data), "--reg", str(tmp_path / "class"), "--gpus", "2x4090", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["prior_preservation"] and plan["fits"] is True
    assert not [w for w in plan["warnings"] if "does not fit" in w]
    picked = {f.name: f for f in rank_recipes("sdxl", "lora", parse_spec("2x4090"), RECIPES, shape=run_shape("lora", 6, {"num_processes": 2}))}
    assert plan["vram_estimate_gb"] == round(picked[plan["recipe"]].estimate.total_bytes / 2**30, 2)


def test_the_wizards_recipe_and_schedule_steps_agree_with_a_class_folder(tmp_path) -> None:
    from tui.wizard_state import WizardState

    state = WizardState(gpus=parse_spec("2x4090"), base_dir=tmp_path)
    state.family, state.method = "sdxl", "lora"
    state.use_scan(memory_scan(class_images=50))
    ranked = state.recipes()
    state.choose_recipe(next(f for f in ranked if f.fits))
    assert state.judge().fits and state.judge().estimate.total_bytes == state.plan().vram_estimate_bytes
    assert state.plan().fits and state.plan().prior_preservation
