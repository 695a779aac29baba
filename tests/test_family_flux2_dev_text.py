"""FLUX.2-dev's text side as the real folder ships it: ``tokenizer/`` is a PixtralProcessor (which needs torchvision,
not installed); sdtui reads its tokenizer alone and the processor's chat template, and a missing piece is one sentence."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from core.errors import UserError

CAPTIONS = ["a photo of sks dog", "a red circle"]


@pytest.fixture(scope="module")
def dev_folder(tmp_path_factory) -> Path:
    """The tiny FLUX.2-dev laid out as black-forest-labs/FLUX.2-dev is: model_index names a PixtralProcessor, whose folder
    holds the tokenizer, the processor's and image processor's configs and the chat template as the processor keeps it."""
    from core.families.flux2.tiny import build_dev

    folder = build_dev(tmp_path_factory.mktemp("flux2-dev-processor") / "FLUX.2-dev")
    part = folder / "tokenizer"
    config = json.loads((part / "tokenizer_config.json").read_text())
    jinja = part / "chat_template.jinja"
    template = jinja.read_text() if jinja.is_file() else config["chat_template"]
    jinja.unlink(missing_ok=True)
    config.pop("chat_template", None)
    (part / "tokenizer_config.json").write_text(json.dumps({**config, "processor_class": "PixtralProcessor"}))
    (part / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    processor = {"image_break_token": "[IMG_BREAK]", "image_end_token": "[IMG_END]", "image_token": "[IMG]", "patch_size": 14, "processor_class": "PixtralProcessor", "spatial_merge_size": 2}
    (part / "processor_config.json").write_text(json.dumps(processor))
    images = {"image_processor_type": "PixtralImageProcessorFast", "processor_class": "PixtralProcessor", "patch_size": {"height": 14, "width": 14}, "size": {"longest_edge": 1540}}
    (part / "preprocessor_config.json").write_text(json.dumps(images))
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "tokenizer": ["transformers", "PixtralProcessor"]}))
    return folder


@pytest.mark.slow
def test_the_dev_text_side_loads_without_torchvision_and_encodes_as_flux2_pipeline(dev_folder) -> None:
    from core.train.model.loading import load_components

    if importlib.util.find_spec("torchvision") is None:
        from transformers import PixtralProcessor

        with pytest.raises(ImportError, match="Torchvision"):
            PixtralProcessor.from_pretrained(str(dev_folder / "tokenizer"))  # what loading the processor whole would do
    components = load_components(str(dev_folder))
    assert components.variant == "flux2-dev" and "torchvision" not in sys.modules
    tokenizer = components.tokenizers[0]
    assert not hasattr(tokenizer, "image_processor") and tokenizer.chat_template
    family = components.runtime
    ids = family.tokenize(components.tokenizers, CAPTIONS, components.variant)
    ours = family.encode_text(components.text_encoders, ids, 1)
    states, _ = components.pipeline().encode_prompt(CAPTIONS, device="cpu")  # the pipeline applies the processor's chat template
    assert torch.allclose(ours.prompt_embeds, states, atol=1e-6)


def test_a_dev_folder_missing_a_text_piece_is_refused_in_one_sentence(dev_folder, tmp_path) -> None:
    from core.families import flux2
    from core.families.loading import load_folder

    broken = shutil.copytree(dev_folder, tmp_path / "FLUX.2-dev", ignore=shutil.ignore_patterns("*.safetensors"))
    (broken / "tokenizer" / "chat_template.json").unlink()
    with pytest.raises(UserError) as caught:
        load_folder(broken, flux2.SPEC, None, skip=("transformer", "vae", "text_encoder"))
    message = str(caught.value)
    assert message.startswith(f"The PixtralProcessor in {broken / 'tokenizer'} has no chat template (chat_template.jinja, chat_template.json)")
    assert message.endswith("copy the model's whole tokenizer folder from its hub repository.") and "\n" not in message

    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
        (broken / "tokenizer" / name).unlink(missing_ok=True)
    with pytest.raises(UserError, match=r"has no tokenizer \(tokenizer\.json / tokenizer_config\.json\); copy the model's whole tokenizer folder"):
        load_folder(broken, flux2.SPEC, None, skip=("transformer", "vae", "text_encoder"))


@pytest.mark.slow
def test_a_cached_dev_hub_id_loads_its_tokenizer_without_torchvision(dev_folder, tmp_path, monkeypatch) -> None:
    """The hub id, read from the local Hugging Face cache (offline): the pipeline gets the processor's tokenizer."""
    import huggingface_hub.constants

    from core.train.model.loading import load_components

    cache = tmp_path / "hub"
    repo = cache / "models--black-forest-labs--FLUX.2-dev"
    shutil.copytree(dev_folder, repo / "snapshots" / "0123456789abcdef")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123456789abcdef")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    components = load_components("black-forest-labs/FLUX.2-dev")
    assert components.variant == "flux2-dev" and "torchvision" not in sys.modules
    assert not hasattr(components.tokenizers[0], "image_processor") and components.tokenizers[0].chat_template
