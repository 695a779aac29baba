"""Loading base models for training: folders, single files, hub ids, detection and clear failures."""

from __future__ import annotations

import shutil

import pytest

from core.errors import UserError
from core.families import runtime
from core.train.model.loading import ModelLoadError, load_components


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_folder_loads_with_detected_family(tiny_models, family):
    components = load_components(str(tiny_models(family)))
    assert components.family == family
    assert components.prediction_type == "epsilon"
    assert type(components.noise_scheduler).__name__ == "DDPMScheduler"
    assert len(components.text_encoders) == len(components.tokenizers) == (2 if family == "sdxl" else 1)
    pipe = components.pipeline()
    assert pipe.unet is components.denoiser


@pytest.mark.slow
def test_sd2_is_v_prediction(tmp_path):
    from core.train.model.tiny import build_tiny

    components = load_components(str(build_tiny("sd2", tmp_path / "sd2")))
    assert (components.family, components.prediction_type) == ("sd2", "v_prediction")
    assert components.noise_scheduler.config.prediction_type == "v_prediction"


def test_prediction_type_override_and_768v_heuristic(tiny_models):
    components = load_components(str(tiny_models("sd1")), prediction_type="v_prediction")
    assert components.noise_scheduler.config.prediction_type == "v_prediction"
    assert runtime("sd2").prediction_type({"prediction_type": "epsilon"}, {"sample_size": 96}) == "v_prediction"
    assert runtime("sd2").prediction_type({"prediction_type": "epsilon"}, {"sample_size": 64}) == "epsilon"
    assert runtime("sd1").prediction_type({}, {}) == "epsilon"
    assert runtime("sd1").prediction_type({"prediction_type": "epsilon"}, {"sample_size": 96}) == "epsilon"  # only SD2's 768-v size means v


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.slow
def test_single_file_round_trips_the_weights(tmp_path, tiny_models, family):
    import torch

    from core.train.model.tiny import build_tiny_single_file

    path = build_tiny_single_file(family, tmp_path / f"{family}.safetensors")
    assert not list(path.with_suffix("").glob("*/*.safetensors"))  # the config folder has no weights
    loaded = load_components(str(path))
    reference = load_components(str(tiny_models(family)))
    assert loaded.family == family
    pairs = [(loaded.denoiser, reference.denoiser), (loaded.vae, reference.vae), *zip(loaded.text_encoders, reference.text_encoders)]
    for mine, theirs in pairs:
        a, b = mine.state_dict(), theirs.state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_missing_path_names_the_path_and_fix(tmp_path):
    with pytest.raises(UserError, match=r"does not exist; fix model.path"):
        load_components(str(tmp_path / "nowhere"))


def test_folder_without_model_index(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="not a diffusers model"):
        load_components(str(tmp_path / "empty"))


def test_unloadable_checkpoint_is_one_clear_sentence(tmp_path):
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(UserError) as info:
        load_components(str(bad))
    message = str(info.value)
    assert str(bad) in message and "\n" not in message


def test_truncated_folder_weights_fail_clearly(tmp_path, tiny_models):
    copy = tmp_path / "model"
    shutil.copytree(tiny_models("sd1"), copy)
    weights = copy / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="could not be loaded"):
        load_components(str(copy))


def test_hub_id_offline_fails_fast(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(ModelLoadError, match="offline"):
        load_components("someone/not-a-cached-model")
    assert time.monotonic() - start < 10


@pytest.mark.slow
def test_ckpt_file_loads_with_safe_unpickling(tmp_path):
    import torch
    from safetensors.torch import load_file

    from core.train.model.tiny import build_tiny_single_file

    source = build_tiny_single_file("sd1", tmp_path / "model.safetensors")
    ckpt = tmp_path / "model.ckpt"
    torch.save({"state_dict": load_file(str(source))}, ckpt)
    components = load_components(str(ckpt))
    assert components.family == "sd1"
    expected = load_components(str(source)).denoiser.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in components.denoiser.state_dict().items())


def test_separate_vae_and_missing_vae(tmp_path, tiny_models):
    from core.train.model.tiny import build_tiny

    other = build_tiny("sdxl", tmp_path / "other")  # a different VAE (SDXL scaling factor)
    components = load_components(str(tiny_models("sd1")), vae_path=str(other))
    assert components.vae.config.scaling_factor == 0.13025
    assert components.pipeline().vae is components.vae
    with pytest.raises(ModelLoadError, match=r"model.vae"):
        load_components(str(tiny_models("sd1")), vae_path=str(tmp_path / "no-vae"))


@pytest.mark.parametrize("library", ["os", "sdtui_fake_payload", "diffusers.utils; import os", "transformers.__class__"])
def test_a_model_index_naming_another_module_is_refused_before_any_import(tmp_path, monkeypatch, library):
    import json
    import sys

    from core.families.detect import family_of_folder
    from core.launch.preflight import check_model

    marker = tmp_path / "imported"
    (tmp_path / "sdtui_fake_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass UNet: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    model = tmp_path / "model"
    (model / "unet").mkdir(parents=True)
    (model / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768}))
    (model / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline", "unet": [library, "UNet"], "vae": ["diffusers", "AutoencoderKL"]}))
    for load in (lambda: load_components(str(model)), lambda: family_of_folder(model), lambda: check_model(str(model))):
        with pytest.raises(UserError, match=r"model_index.json names .* for its unet, but model parts are loaded only from diffusers or transformers"):
            load()
    assert not marker.exists() and "sdtui_fake_payload" not in sys.modules
