"""Samples rendered from prompt embeddings encoded at start-up, after the text encoders are freed (issue 21)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest

from core.families import runtime, spec
from core.train.model.loading import load_components
from core.train.outputs.sampling import SampleError, encode_sample_prompts, render_samples
from tests.train_helpers import make_run, metrics, set_up, train

#: The families that sample from stored embeddings, and whether their sampler guides with a negative prompt.
EMBEDDING_FAMILIES = ("flux", "chroma", "sd35", "zimage", "qwenimage", "flux2")

#: One prompt without guidance, one guided with a negative prompt (classifier-free where the family guides).
PROMPTS = [
    "a photo of sks dog --w 64 --h 64 --s 2 --d 5 --l 1",
    "a red sks dog on grass --n blurry, grey --w 64 --h 64 --s 2 --d 9 --l 4",
]


def _pixels(paths: list[Path]) -> list[bytes]:
    from PIL import Image

    return [Image.open(p).tobytes() for p in paths]


@pytest.mark.slow
@pytest.mark.parametrize("family", EMBEDDING_FAMILIES)
def test_samples_from_stored_embeddings_equal_those_the_encoders_render(family: str, tiny_models: Any, tmp_path: Path) -> None:
    assert spec(family).samples_from_embeddings
    components = load_components(str(tiny_models(family)), settings={})
    texts = encode_sample_prompts(components, PROMPTS, default_size=64)
    assert "prompt_embeds" in texts.keywords[1]
    with_encoders = render_samples(components, PROMPTS, 0, tmp_path / "with", default_size=64)
    components.text_encoders = []  # what start-up does once the caches are built
    without = render_samples(components, PROMPTS, 0, tmp_path / "without", default_size=64, texts=texts)
    assert _pixels([r.path for r in without]) == _pixels([r.path for r in with_encoders])


@pytest.mark.slow
def test_the_guided_prompt_stores_its_negative_embeddings_where_the_sampler_uses_them(tiny_models: Any) -> None:
    components = load_components(str(tiny_models("sd35")), settings={})
    texts = encode_sample_prompts(components, PROMPTS, default_size=64)
    assert "negative_prompt_embeds" not in texts.keywords[0]  # --l 1: no classifier-free guidance
    assert {"negative_prompt_embeds", "negative_pooled_prompt_embeds"} <= set(texts.keywords[1])


@pytest.mark.slow
def test_changed_prompts_are_refused_in_one_sentence_instead_of_rendering_the_old_ones(tiny_models: Any, tmp_path: Path) -> None:
    components = load_components(str(tiny_models("flux")), settings={})
    texts = encode_sample_prompts(components, PROMPTS[:1], default_size=64)
    with pytest.raises(SampleError, match="changed since start-up"):
        render_samples(components, PROMPTS, 0, tmp_path, default_size=64, texts=texts)


def test_only_lora_runs_of_a_family_with_stored_embeddings_free_their_encoders() -> None:
    flux = spec("flux")
    assert flux.encoders_leave("lora", cached=True)
    assert not flux.encoders_leave("lora", cached=False)  # the encoders run every step
    assert not flux.encoders_leave("finetune", cached=True)  # the saved model holds them
    assert not spec("sdxl").encoders_leave("lora", cached=True)  # samples from the text with its CLIPs


def _capture_encoders(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[Any]]:
    """Weak references to the text encoders the trainer loads."""
    from core.train.model import loading

    refs: list[weakref.ref[Any]] = []
    original = loading.load_components

    def load(*args: Any, **kwargs: Any) -> Any:
        components = original(*args, **kwargs)
        refs.extend(weakref.ref(te) for te in components.text_encoders)
        return components

    monkeypatch.setattr(loading, "load_components", load)
    return refs


@pytest.mark.slow
def test_a_flux_lora_run_frees_its_text_encoders_and_samples_from_the_stored_embeddings(tiny_models: Any, kohya_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_models("flux")
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", model, data, "flux", schedule={"max_steps": 2, "sample_every_steps": 2}, prompts=PROMPTS)
    refs = _capture_encoders(monkeypatch)
    trainer = set_up(run)
    session = trainer.session
    gc.collect()
    assert len(refs) == 2 and all(ref() is None for ref in refs)  # CLIP-L and T5 are gone, not only off the GPU
    assert session.components.text_encoders == [] and session.model.sample_texts.lines == tuple(PROMPTS)
    assert any("text encoders" in e["message"] and "freed" in e["message"] for e in metrics(run, "event"))

    trainer.saver.sample()
    rendered = sorted((run / "samples").glob("*.png"))
    assert len(rendered) == 2
    # the same samples with the encoders present (read again from the model folder), same seeds
    encoders = load_components(str(model), settings={}).text_encoders
    again = render_samples(session.components, PROMPTS, 0, tmp_path / "again", default_size=64, seed=int(session.sched["seed"]), denoiser=session.denoiser(), text_encoders=encoders)
    assert _pixels([r.path for r in again]) == _pixels(rendered)


@pytest.mark.slow
def test_a_run_whose_text_encoder_is_trained_keeps_it_and_samples_from_text(tiny_models: Any, kohya_dataset: Any, tmp_path: Path) -> None:
    model = tiny_models("flux")
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", model, data, "flux", settings={"train_text_encoder": True}, schedule={"max_steps": 1}, prompts=PROMPTS[:1])
    trainer = set_up(run)
    assert len(trainer.session.components.text_encoders) == 2 and trainer.session.model.sample_texts is None


@pytest.mark.slow
def test_a_zimage_lora_run_with_samples_finishes_without_its_text_encoder(tiny_models: Any, kohya_dataset: Any, tmp_path: Path) -> None:
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("zimage"), data, "zimage", schedule={"max_steps": 2, "sample_every_steps": 2}, prompts=PROMPTS)
    assert train(run) == 0
    assert len(metrics(run, "sample")) == 2 and not any(e.get("level") == "warning" and "sampl" in e["message"] for e in metrics(run, "event"))
    assert runtime("zimage").spec.samples_from_embeddings


#: A FLUX.1-dev LoRA as the 24 GB recipes train it: latents and text outputs cached, checkpointing.
FLUX_LORA = {"gradient_checkpointing": True, "cache_latents": True, "resolution": 512}


def test_ram_while_training_no_longer_counts_the_encoders_a_lora_run_frees() -> None:
    from core.memory.estimator import estimate

    lora = estimate("flux", "lora", FLUX_LORA).host
    finetune = estimate("flux", "finetune", FLUX_LORA).host  # keeps its encoders to save them
    not_cached = estimate("flux", "lora", FLUX_LORA | {"cache_text_encoder_outputs": False}).host
    assert lora is not None and finetune is not None and not_cached is not None
    t5_and_clip = finetune.training["offloaded_models"] - lora.training["offloaded_models"]
    assert t5_and_clip > 9 * 2**30  # T5-XXL and CLIP-L in bf16
    # the start-up phase still reads them (the peak of a LoRA run's host memory): it says so
    assert lora.phase == "loading" and lora.breakdown["text_encoders"] == t5_and_clip
    assert lora.total_bytes > sum(lora.training.values()) + t5_and_clip
    assert not_cached.training["offloaded_models"] == lora.training["offloaded_models"]  # on the GPU instead


def test_a_sample_no_longer_brings_the_freed_encoders_back_to_the_gpu() -> None:
    from core.memory.data import params
    from core.memory.estimator import estimate

    flux = estimate("flux", "lora", FLUX_LORA, sampling=True)
    assert flux.breakdown["sampling"] < 2**30  # the denoiser's inference activations or the VAE decoder, not T5's 9 GiB
    assert flux.total_bytes < estimate("flux", "lora", FLUX_LORA).total_bytes + 2**30
    # SDXL samples from the prompt text: its CLIP encoders still come back for the sample
    sdxl = estimate("sdxl", "lora", {"gradient_checkpointing": True, "cache_latents": True}, sampling=True)
    clips = sum(params()["sdxl"][name]["params"] * 2 for name in ("text_encoder", "text_encoder_2"))
    assert sdxl.breakdown["sampling"] >= clips


@pytest.mark.slow
def test_a_prompt_set_changed_before_a_resume_is_encoded_at_that_start_up(tiny_models: Any, kohya_dataset: Any, tmp_path: Path) -> None:
    import tomlkit

    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("flux"), data, "flux", schedule={"max_steps": 2, "save_every_steps": 2, "sample_every_steps": 2}, prompts=PROMPTS[:1])
    assert train(run) == 0
    doc = tomlkit.parse((run / "run.toml").read_text(encoding="utf-8"))
    doc["samples"]["prompts"] = PROMPTS[1:]
    doc["schedule"]["max_steps"] = 4
    (run / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    trainer = set_up(run)
    assert trainer.progress.step == 2 and trainer.session.model.sample_texts.lines == tuple(PROMPTS[1:])


@pytest.mark.slow
def test_a_prompt_that_fails_to_encode_keeps_the_encoders_and_training_goes_on(tiny_models: Any, kohya_dataset: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from core.train.outputs import sampling

    def fail(*args: Any, **kwargs: Any) -> Any:
        raise SampleError("encoding sample prompt 0 ('a photo') failed: RuntimeError: out of memory")

    monkeypatch.setattr(sampling, "encode_sample_prompts", fail)
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(tmp_path / "run", tiny_models("flux"), data, "flux", schedule={"max_steps": 1}, prompts=PROMPTS[:1])
    trainer = set_up(run)
    assert len(trainer.session.components.text_encoders) == 2 and trainer.session.model.sample_texts is None
    assert any(e.get("level") == "warning" and "stay for the samples" in e["message"] for e in metrics(run, "event"))
