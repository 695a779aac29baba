"""The tiny SD-shaped models: they build fast, deterministically, and run as real pipelines."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from core.errors import UserError


def _pipeline(path: Path, family: str):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    return cls.from_pretrained(path)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_model_loads_and_generates(tiny_models, family):
    import numpy as np
    import torch

    path = tiny_models(family)
    expected = {"model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    if family == "sdxl":
        expected |= {"text_encoder_2", "tokenizer_2"}
    assert expected <= {p.name for p in path.iterdir()}
    pipe = _pipeline(path, family)
    image = pipe("a red circle", num_inference_steps=2, height=32, width=32, generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    assert np.asarray(image).std() > 0


def test_tokenizer_knows_demo_words(tiny_models):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_models("sd1") / "tokenizer")
    ids = tokenizer("a red circle").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 5  # every demo word is a single token
    assert tokenizer.model_max_length == 77
    assert max(tokenizer("zebra! ünïcode").input_ids) < 1000  # byte fallback stays in the vocabulary


def test_build_is_fast_and_deterministic(tmp_path, tiny_models):
    tiny_models("sd1")  # imports warmed
    from core.train.model.tiny import build_tiny

    start = time.perf_counter()
    first = build_tiny("sd1", tmp_path / "a")
    elapsed = time.perf_counter() - start
    second = build_tiny("sd1", tmp_path / "b")

    def digest(p: Path) -> str:
        return hashlib.sha256((p / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()).hexdigest()

    assert digest(first) == digest(second)
    assert elapsed < 3.0  # well under a second on a free core; generous for a shared CI box


def test_sd2_is_v_prediction_with_wide_text(tmp_path):
    import json

    from core.train.model.tiny import build_tiny

    path = build_tiny("sd2", tmp_path / "m")
    assert json.loads((path / "scheduler" / "scheduler_config.json").read_text())["prediction_type"] == "v_prediction"
    assert json.loads((path / "unet" / "config.json").read_text())["cross_attention_dim"] == 1024


def test_unknown_family_is_a_user_error(tmp_path):
    from core.train.model.tiny import build_tiny

    with pytest.raises(UserError, match="sd1, sd2, sdxl"):
        build_tiny("sd3", tmp_path / "m")
