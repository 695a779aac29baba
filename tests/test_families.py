"""The model families: one package each, a torch-free spec the planner reads, a runtime only the trainer imports."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from core.errors import UserError
from core.families import FAMILIES, detection_order, runtime, spec, specs, variant_names
from core.families.detect import family_of_configs
from core.families.objectives import FlowObjective, shift_sigmas
from core.families.spec import OBJECTIVES
from core.memory import data
from core.recipes import load_recipes
from core.settings import METHODS, SCHEMA

REPO = Path(__file__).resolve().parents[1]
#: The transformer families DESIGN.md plans, and their ``--model`` names, before they are registered.
PLANNED = ("sd35", "sd3", "flux", "flux2", "chroma", "zimage", "z-image", "qwenimage", "qwen-image", "mmdit", "hidream", "auraflow", "pixart", "sana")


def _family_words() -> str:
    """Every family and variant name of the registry plus the planned ones, as a regex: letters and
    digits may be split by ``-``, ``_``, a space or a dot (``sd_35``, ``flux-dev``, ``Flux.1``); an
    ``is_<name>`` predicate is caught by the same words."""
    names = {*FAMILIES, *variant_names(), *PLANNED}
    words = {re.sub(r"[-_ .]", "", n) for n in names}
    spelled = ["[-_ .]?".join(re.escape(ch) for ch in word) for word in sorted(words, key=len, reverse=True)]
    return rf"(?<![a-z])(?:{'|'.join(spelled)})(?![a-z])"


#: What naming a family looks like in code or prose: the registry's names, the planned transformer
#: families, predicates such as ``is_flux()``, "XL", "SD 1.5", "Stable Diffusion 3" …
FAMILY_NAMES = re.compile(_family_words() + r"|\bsd[-_ ]?[123](\.\d)?\b|\bxl\b|stable diffusion [123x]", re.IGNORECASE)


def test_the_trainer_never_names_a_family() -> None:
    """core/train/ reaches everything family-specific through the family runtime and spec."""
    files = sorted((REPO / "core" / "train").rglob("*.py"))
    hits = [f"{p.relative_to(REPO)}:{n}: {line.strip()}" for p in files for n, line in enumerate(p.read_text().splitlines(), 1) if FAMILY_NAMES.search(line)]
    assert len(files) > 20 and hits == []


@pytest.mark.parametrize(
    "line",
    [
        'if family == "sdxl":',
        "components.is_sdxl",
        "# SD1 only",
        'TINY = ("sd1", "sd2")',
        "for SD 1.5",
        '"XL" in name',
        "if model.is_flux():",
        'family in ("sd35", "chroma")',
        "# FLUX.1 packs latents",
        "sd_35 shift",
        "Chroma has no pooled vector",
        'name == "qwen-image"',
        "Z-Image turbo",
        "sd2-base",
    ],
)
def test_the_family_name_check_sees_a_branch(line: str) -> None:
    assert FAMILY_NAMES.search(line)


@pytest.mark.parametrize("line", ["influx of batches", "chromatic noise", "denoiser = runtime.denoiser", "sdpa attention", "fluxion"])
def test_the_family_name_check_lets_ordinary_words_pass(line: str) -> None:
    assert not FAMILY_NAMES.search(line)


def test_the_registry_is_the_settings_choice_and_covers_every_table() -> None:
    assert SCHEMA["model"]["family"].choices == FAMILIES == tuple(s.name for s in specs())
    assert {s.name for s in detection_order()} == set(FAMILIES)
    recipes = load_recipes()
    assert recipes and all(set(r.families) <= set(FAMILIES) for r in recipes)
    for family in specs():
        assert set(family.methods) <= set(METHODS) and family.objective in family.objectives and set(family.objectives) <= set(OBJECTIVES)
        measured = data.params()[family.name]
        assert {family.denoiser, *family.text_encoder_names} <= set(measured), "params.json measures every trained component"
        assert set(family.configs) == set(family.component_classes) == set(measured)
        assert set(data.activations()[family.denoiser][family.name]), "activations.json has the denoiser's fits"
        assert family.native_resolution % 64 == 0 and family.denoiser_tflops > 0 and family.text_encoder_tflops > 0
        assert len({te.kohya_prefix for te in family.text_encoders}) == len(family.text_encoders)
        if "textual_inversion" in family.methods:  # an embedding file per encoder only where embeddings are trained
            assert len({te.embedding_file for te in family.text_encoders}) == len(family.text_encoders)


def test_an_unknown_family_is_one_sentence_naming_the_known_ones() -> None:
    with pytest.raises(UserError, match=r"unknown model family 'sd9'; use one of sd1, sd2, sdxl"):
        spec("sd9")
    with pytest.raises(UserError, match="sd9"):
        runtime("sd9")


def test_a_method_the_family_does_not_train_is_refused_in_one_sentence() -> None:
    from dataclasses import replace

    adapters_only = replace(spec("sdxl"), methods=("lora",))
    adapters_only.check_method("lora")
    with pytest.raises(UserError, match="the sdxl family does not train with finetune; use one of lora"):
        adapters_only.check_method("finetune")


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_recognises_its_own_reference_configs(name: str) -> None:
    family = spec(name)
    parts = {*family.configs, *family.tokenizer_names, "scheduler"}
    assert family_of_configs(parts, family.pipeline_class, dict(family.configs[family.denoiser]), dict(family.configs["text_encoder"])) == name
    # without the pipeline's class name and the folder's parts: from the UNet config alone
    assert family_of_configs(set(), "", dict(family.configs[family.denoiser])) == name


def test_the_spec_packages_import_no_training_stack() -> None:
    import subprocess
    import sys

    code = "import sys, core.families, core.families.objectives, core.families.clip\nprint(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'diffusers', 'transformers', 'peft'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


# ---- the flow objective (rectified flow), tested on its maths: no flow family exists yet


def test_shift_moves_sigma_towards_noise_and_keeps_the_ends() -> None:
    torch = pytest.importorskip("torch")
    sigma = torch.linspace(0, 1, 11)
    assert torch.equal(shift_sigmas(sigma, 1.0), sigma)
    shifted = shift_sigmas(sigma, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1 and bool((shifted[1:-1] > sigma[1:-1]).all())
    assert float(shift_sigmas(torch.tensor(0.5), 3.0)) == pytest.approx(0.75)  # 3·0.5 / (1 + 2·0.5)
    assert bool((shifted[1:] > shifted[:-1]).all()), "the shift is monotone"


def test_flow_noises_on_the_straight_path_and_targets_its_velocity() -> None:
    torch = pytest.importorskip("torch")
    objective = FlowObjective(sampling="uniform")
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(4, 4, 8, 8, generator=gen), torch.randn(4, 4, 8, 8, generator=gen)
    timesteps = objective.timesteps(4, gen, "cpu")
    sigma = (timesteps / 1000).view(-1, 1, 1, 1)
    noisy = objective.noisy(latents, noise, timesteps)
    target = objective.target(latents, noise, timesteps)
    torch.testing.assert_close(noisy, (1 - sigma) * latents + sigma * noise)
    torch.testing.assert_close(noisy - sigma * target, latents)  # one Euler step of the velocity back to the data
    torch.testing.assert_close(noisy + (1 - sigma) * target, noise)  # … and forward to the noise
    ends = torch.tensor([0.0, 1000.0])
    torch.testing.assert_close(objective.noisy(latents[:2], noise[:2], ends), torch.stack([latents[0], noise[1]]))


def test_flow_timestep_densities() -> None:
    torch = pytest.importorskip("torch")
    n = 200_000

    def sigmas(**kwargs: object) -> object:
        return FlowObjective(**kwargs).sigmas(n, torch.Generator().manual_seed(1), "cpu")

    uniform = sigmas(sampling="uniform")
    assert float(uniform.min()) > 0 and float(uniform.max()) < 1 and float(uniform.mean()) == pytest.approx(0.5, abs=0.01)
    logit = sigmas(sampling="logit_normal", logit_mean=1.0, logit_std=1.0)
    assert float(logit.median()) == pytest.approx(1 / (1 + math.exp(-1.0)), abs=0.01)  # the median of sigmoid(N(1, 1))
    assert float(sigmas(sampling="logit_normal").median()) == pytest.approx(0.5, abs=0.01)
    flat = sigmas(sampling="mode", mode_scale=0.0)
    assert float(flat.mean()) == pytest.approx(0.5, abs=0.01) and float(flat.std()) == pytest.approx(math.sqrt(1 / 12), abs=0.01)
    peaked = sigmas(sampling="mode", mode_scale=1.29)
    middle = lambda s: float(((s > 0.35) & (s < 0.65)).float().mean())  # noqa: E731
    assert middle(peaked) > middle(flat) + 0.05, "SD3's mode density puts more samples in the middle"
    shifted = sigmas(sampling="uniform", shift=3.0)
    assert float(shifted.mean()) > 0.6


def test_flow_loss_weightings() -> None:
    torch = pytest.importorskip("torch")
    t = torch.tensor([250.0, 500.0, 750.0])
    sigma = t / 1000
    assert FlowObjective(weighting="none").loss_weights(t, {}) is None
    torch.testing.assert_close(FlowObjective(weighting="sigma_sqrt").loss_weights(t, {}), sigma**-2)
    cosmap = FlowObjective(weighting="cosmap").loss_weights(t, {})
    assert float(cosmap[1]) == pytest.approx(4 / math.pi)  # 2 / (π (1 - 1 + 0.5))
    assert float(cosmap[0]) == pytest.approx(float(cosmap[2])), "cosmap is symmetric about σ = 0.5"


@pytest.mark.parametrize("bad", [{"sampling": "cubic"}, {"weighting": "snr"}, {"shift": 0.0}])
def test_a_flow_objective_refuses_unknown_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"^flow (sampling|weighting|shift) "):
        FlowObjective(**bad)


def test_a_flow_shift_can_follow_the_batchs_latent_size() -> None:
    import torch

    flux_like = FlowObjective(sampling="uniform", token_shift=(0.5, 1.15, 256, 4096, 2))
    assert flux_like.shift_for((32, 32)) == pytest.approx(math.exp(0.5))  # 256 tokens
    assert flux_like.shift_for((128, 128)) == pytest.approx(math.exp(1.15))  # 4096 tokens
    assert flux_like.shift_for(None) == 1.0
    small = flux_like.timesteps(64, torch.Generator().manual_seed(0), "cpu", (32, 32))
    large = flux_like.timesteps(64, torch.Generator().manual_seed(0), "cpu", (128, 128))
    assert bool((large > small).all())  # a larger image is noised more
