"""LLM text encoding (``core/families/llm_text.py``): the tiny Qwen2 tokenizer built locally, chat
templates, hidden-layer choice, variable-length outputs with masks and how the text cache stores them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from core.families import llm_prompt, llm_text, llm_tiny
from core.families.embeddings import TextEmbeddings, trim_row
from core.families.sd_unet.tiny import WORDS
from core.train.data.text_cache import TextCache, read_entry, stack_rows, write_entry

ZIMAGE_LIKE = llm_prompt.LlmPrompt(llm_prompt.chatml(), (-2,), 64)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The tiny Qwen2 tokenizer (as loaded back from its folder) and a tiny Qwen3 encoder over it."""
    from transformers import AutoTokenizer

    folder = llm_tiny.write_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer", "qwen2", WORDS, 512)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return tokenizer, llm_tiny.qwen3_encoder(llm_tiny.qwen3_config(tokenizer, layers=4))


def test_the_tiny_qwen2_tokenizer_is_written_locally_and_round_trips_any_text(qwen):
    tokenizer, _ = qwen
    assert type(tokenizer).__name__ in ("Qwen2Tokenizer", "Qwen2TokenizerFast")
    for text in ("a photo of sks dog", "Ünïcode, emoji 🐕 and 漢字\nnew line", "<|im_start|>user\nred<|im_end|>"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == text
    words = tokenizer(" photo dog sks", add_special_tokens=False).input_ids
    assert len(words) == 3  # the demo's words are one token each, after a space too
    specials = tokenizer("<|im_start|><|im_end|><think></think><|endoftext|>", add_special_tokens=False).input_ids
    assert len(specials) == 5 and tokenizer.pad_token == "<|endoftext|>"


def test_the_chat_template_renders_what_the_pipelines_apply(qwen):
    tokenizer, _ = qwen
    user = [{"role": "user", "content": "a red circle"}]
    z_image = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    klein = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True, enable_thinking=False)
    assert z_image == llm_prompt.chatml().replace(llm_prompt.CAPTION, "a red circle") == "<|im_start|>user\na red circle<|im_end|>\n<|im_start|>assistant\n"
    assert klein == llm_prompt.LlmPrompt(llm_prompt.chatml(think=llm_prompt.QWEN3_NO_THINKING), (-1,), 8).render("a red circle")
    system = tokenizer.apply_chat_template([{"role": "system", "content": "Describe"}, *user], tokenize=False, add_generation_prompt=True)
    assert system == llm_prompt.chatml(system="Describe").replace(llm_prompt.CAPTION, "a red circle")


def test_tokenize_pads_and_truncates_the_templated_caption_to_the_token_limit(qwen):
    tokenizer, _ = qwen
    ids, mask = llm_text.tokenize(tokenizer, ZIMAGE_LIKE, ["a dog", "dog " * 200])
    assert ids.shape == mask.shape == (2, 64)
    assert int(mask[0].sum()) == len(tokenizer(ZIMAGE_LIKE.render("a dog")).input_ids) < 64
    assert int(mask[1].sum()) == 64  # truncated at the limit
    assert ids[0, -1] == tokenizer.pad_token_id


def test_trimmed_outputs_are_the_valid_tokens_of_the_chosen_layer_as_the_pipeline_selects_them(qwen):
    tokenizer, encoder = qwen
    captions = ["a photo of sks dog", "a red circle on a blue background"]
    ids, mask = llm_text.tokenize(tokenizer, ZIMAGE_LIKE, captions)
    with torch.no_grad():
        out = llm_text.encode(encoder, ZIMAGE_LIKE, ids, mask)
        reference = encoder(input_ids=ids, attention_mask=mask.bool(), output_hidden_states=True).hidden_states[-2]
    valid = out.extra["attention_mask"]
    assert valid.dtype == torch.bool and out.prompt_embeds.shape == (2, int(mask.sum(1).max()), encoder.config.hidden_size)
    for n in range(2):
        assert int(valid[n].sum()) == int(mask[n].sum())
        torch.testing.assert_close(out.prompt_embeds[n][valid[n]], reference[n][mask[n].bool()], atol=1e-5, rtol=1e-5)
        assert not out.prompt_embeds[n][~valid[n]].any()  # zeros after the caption


def test_several_layers_are_joined_and_untrimmed_outputs_keep_every_position(qwen):
    tokenizer, encoder = qwen
    stacked = llm_prompt.LlmPrompt(llm_prompt.chatml(think=llm_prompt.QWEN3_NO_THINKING), (1, 2, 3), 48, trim=False)
    ids, mask = llm_text.tokenize(tokenizer, stacked, ["a dog"])
    with torch.no_grad():
        out = llm_text.encode(encoder, stacked, ids, mask)
        states = encoder(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    width = encoder.config.hidden_size
    assert out.prompt_embeds.shape == (1, 48, 3 * width) and not out.extra  # FLUX.2 reads the padding: no mask
    torch.testing.assert_close(out.prompt_embeds[..., width : 2 * width], states[2], atol=1e-5, rtol=1e-5)


def test_dropped_template_tokens_leave_only_the_caption(qwen):
    tokenizer, encoder = qwen
    head = llm_prompt.chatml(system="Describe the image")
    drop = len(tokenizer(head.split(llm_prompt.CAPTION)[0]).input_ids)
    prompt = llm_prompt.LlmPrompt(head, (-1,), 64, drop_tokens=drop)
    ids, mask = llm_text.tokenize(tokenizer, prompt, ["a dog", "a red circle"])
    with torch.no_grad():
        out = llm_text.encode(encoder, prompt, ids, mask)
    lengths = out.extra["attention_mask"].sum(1).tolist()
    assert lengths == [int(m.sum()) - drop for m in mask]


def test_the_text_cache_stores_each_caption_at_its_length_and_pads_a_batch_to_the_longest(qwen, tmp_path: Path):
    tokenizer, encoder = qwen
    captions = ["a dog", "a photo of sks dog on a beach with a red ball"]
    ids, mask = llm_text.tokenize(tokenizer, ZIMAGE_LIKE, captions)
    with torch.no_grad():
        out = llm_text.encode(encoder, ZIMAGE_LIKE, ids, mask)
    named = out.named()
    cache = TextCache()
    for n, caption in enumerate(captions):
        path = tmp_path / f"{n}.safetensors"
        write_entry(path, trim_row({name: t[n] for name, t in named.items()}))
        cache.files[caption] = path
    short = read_entry(tmp_path / "0.safetensors")
    assert short is not None and short["hidden_states"].shape[0] == int(mask[0].sum()) < out.prompt_embeds.shape[1]
    batch = TextEmbeddings.from_named(cache.stacked(captions))
    assert torch.equal(batch.prompt_embeds, out.prompt_embeds) and torch.equal(batch.extra["attention_mask"], out.extra["attention_mask"])
    alone = cache.stacked(captions[:1])
    assert alone["hidden_states"].shape[1] == int(mask[0].sum())


def test_rows_without_a_prefix_mask_are_kept_whole():
    left_padded = {"hidden_states": torch.ones(4, 2), "attention_mask": torch.tensor([False, True, True, True])}
    assert trim_row(left_padded)["hidden_states"].shape == (4, 2)
    plain = {"hidden_states": torch.ones(3, 2)}
    assert torch.equal(stack_rows([plain, plain])["hidden_states"], torch.ones(2, 3, 2))
