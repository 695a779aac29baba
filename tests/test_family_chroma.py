"""Chroma: T5 alone with its padding masked, FLUX.1's BFL and kohya layouts with the approximator, training through `sdtui train`."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.errors import UserError
from core.families import runtime, spec
from core.families.chroma.runtime import transformer_mask
from core.families.detect import detect_family
from core.families.protocol import FamilyRuntime
from core.train.model.loading import load_components
from tests.train_helpers import make_run, metrics, train

CHROMA = runtime("chroma")


def test_chroma_is_a_t5_only_flow_family_without_clip_or_guidance(tiny_models):
    assert isinstance(CHROMA, FamilyRuntime)
    chroma = spec("chroma")
    assert chroma.methods == ("lora", "finetune") and chroma.text_encoder_names == ("text_encoder",)
    assert chroma.text_encoders[0].attention_mask and not chroma.text_encoders[0].trainable
    with pytest.raises(UserError, match="does not train with textual_inversion"):
        chroma.check_method("textual_inversion")
    model = tiny_models("chroma")
    assert detect_family(str(model)) == "chroma"
    with pytest.raises(UserError, match="Chroma embeds none"):
        load_components(str(model), settings={"guidance_scale": 3.5})
    with pytest.raises(UserError, match="Chroma has no CLIP encoder"):
        load_components(str(model), settings={"clip_skip": 2})


def test_the_padding_is_masked_in_the_encoder_and_all_but_the_first_pad_in_the_transformer(tiny_models):
    components = load_components(str(tiny_models("chroma")), settings={})
    tokens = CHROMA.tokenize(components.tokenizers, ["a photo of sks dog", "a red circle on the beach"])
    assert len(tokens) == 2 and tokens[0].shape == tokens[1].shape == (2, 512), "the ids, then the mask"
    embeddings = CHROMA.encode_text(components.text_encoders, tokens, 1)
    torch.testing.assert_close(embeddings.extra["attention_mask"], tokens[1])
    alone = CHROMA.encode_text(components.text_encoders, [tokens[0][:1, :6], tokens[1][:1, :6]], 1)
    torch.testing.assert_close(embeddings.prompt_embeds[0, :6], alone.prompt_embeds[0], rtol=1e-5, atol=1e-5)
    mask = transformer_mask(tokens[1], 4, torch.float32)
    real = int(tokens[1][0].sum())
    assert mask.shape == (2, 516) and mask[0, : real + 1].tolist() == [1.0] * (real + 1) and float(mask[0, real + 1 : 512].sum()) == 0
    assert float(mask[0, 512:].sum()) == 4


def test_a_bfl_file_with_the_approximator_loads_and_detects_as_chroma(tiny_models, tmp_path):
    model = tiny_models("chroma")
    reference = load_components(str(model), settings={}).denoiser
    config = dict(reference.config)
    state = {k: v.contiguous() for k, v in CHROMA.to_original(type("Pipe", (), {"transformer": reference})()).items()}
    assert "distilled_guidance_layer.norms.0.scale" in state and "distilled_guidance_layer.layers.1.in_layer.weight" in state
    assert not any(k.startswith(("time_in", "vector_in", "guidance_in")) or "_mod" in k for k in state)
    file = tmp_path / "chroma-unlocked.safetensors"
    save_file({k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, str(file))
    beside = tmp_path / "chroma-unlocked"
    shutil.copytree(model, beside)
    assert detect_family(str(file)) == "chroma"
    loaded = load_components(str(file), settings={}).denoiser.state_dict()
    for key, value in reference.state_dict().items():
        assert loaded[key].dtype == torch.float32
        torch.testing.assert_close(loaded[key], value, rtol=0.13, atol=0.02, msg=key)
    assert config["approximator_layers"] == 2


@pytest.mark.slow
def test_a_chroma_lora_run_loads_in_chromapipeline_and_its_kohya_file_reads_back(tiny_models, kohya_dataset, tmp_path):
    from diffusers import ChromaPipeline

    model = tiny_models("chroma")
    data = kohya_dataset(((2, "a photo of sks dog", 2),))
    run = make_run(
        tmp_path / "run",
        model,
        data,
        "chroma",
        settings={"lora_targets": "attn_ff", "save_precision": "fp32"},
        schedule={"max_steps": 2, "sample_every_steps": 2},
        prompts=["a photo of sks dog --n blurry --w 64 --h 64 --s 2 --d 3"],
    )
    assert train(run) == 0
    assert len(metrics(run, "step")) == 2 and list((run / "samples").glob("*.png"))
    kohya = load_file(str(run / "output" / "tiny.safetensors"))
    assert "lora_unet_single_blocks_0_linear1.lora_down.weight" in kohya

    def render(pipe: ChromaPipeline) -> torch.Tensor:
        pipe.set_progress_bar_config(disable=True)
        return pipe("a photo of sks dog", negative_prompt="blurry", width=64, height=64, num_inference_steps=2, generator=torch.Generator().manual_seed(1), output_type="pt").images

    with_lora = ChromaPipeline.from_pretrained(model)
    with_lora.load_lora_weights(str(run / "output" / "diffusers"))
    from_diffusers = render(with_lora)
    assert not torch.allclose(render(ChromaPipeline.from_pretrained(model)), from_diffusers, atol=1e-4)

    from peft.utils import set_peft_model_state_dict

    from core.families.protocol import AdapterWeights
    from core.train.model.methods import adapter_config
    from core.train.outputs.files import adapter_state

    components = load_components(str(model), settings={})
    settings = {"lora_rank": 4, "lora_alpha": 4.0, "lora_targets": "attn_ff"}
    names = CHROMA.lora_target_modules(components.denoiser, spec("chroma").lora_targets_of("transformer", "attn_ff"), settings)
    config = adapter_config(settings, names)
    CHROMA.add_adapter(components.denoiser, config)
    adapter = AdapterWeights("transformer", adapter_state(components.denoiser)[0], config)
    set_peft_model_state_dict(components.denoiser, CHROMA.lora_from_file(kohya, adapter, dict(components.denoiser.config)))
    ours = CHROMA.pipeline(
        {"transformer": components.denoiser, "vae": components.vae, "text_encoder": components.text_encoders[0], "tokenizer": components.tokenizers[0], "scheduler": components.scheduler}
    )
    torch.testing.assert_close(render(ours), from_diffusers, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_the_demo_runs_the_whole_flow_on_the_tiny_chroma(tmp_path, tiny_models, tiny_captioners):
    from core.demo import run_headless, workspace

    ws = workspace(tmp_path / "demo", "chroma")
    shutil.copytree(tiny_models("chroma"), ws.model)
    shutil.copytree(tiny_captioners["florence2"], ws.captioner)
    lines: list[str] = []
    overrides = ["schedule.max_steps=2", "schedule.sample_every_steps=0", "schedule.sample_at_start=false"]
    assert run_headless(tmp_path / "demo", overrides=overrides, out=lines.append, family="chroma") == 0, lines
