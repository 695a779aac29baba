"""Tiny LLM text encoders with their tokenizers, built locally (no download): for the tiny models of
the families that condition on an LLM (Z-Image, FLUX.2, Qwen-Image).

A tokenizer here is the real tokenizer class over a small byte-level BPE vocabulary written to
disk (``core.families.bpe``: every text tokenizes, the demo's words are one token each), with the
special tokens and the chat template the family's pipeline applies. :func:`write_tokenizer` is
the general part (vocabulary, merges, special tokens, chat template, ``save_pretrained``); each
tokenizer kind is one :class:`TokenizerKind` in :data:`KINDS` (Qwen2 here; Mistral's Tekken beside it).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.families.bpe import byte_symbols, gpt2_pieces, vocabulary

SEED = 1234

#: The words of the chat templates, one token each in the tiny vocabularies.
TEMPLATE_WORDS = ("system", "user", "assistant", "Describe", "image", "the", "by", "of", "and")

#: Qwen2/Qwen3's chat-template special tokens (ChatML and the thinking block), after the vocabulary.
QWEN_SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")

#: A ChatML chat template with Qwen3's generation prompt (``enable_thinking=False`` closes an empty
#: think block), for plain-text messages: what Qwen3's own template renders for them.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}{%- endif %}"
    "{%- endif %}"
)


@dataclass(frozen=True)
class TokenizerKind:
    """One tokenizer family at toy size: the transformers class, how a word splits into byte symbols,
    the special tokens (the first is the pad/end token), the chat template."""

    cls: str
    pieces: Callable[[str], list[list[str]]]
    special: tuple[str, ...]
    chat_template: str
    config: dict[str, Any]


#: Mistral Small 3's control tokens (its Tekken vocabulary: BOS/EOS, the instruction and system-prompt
#: markers, Pixtral's image tokens), in front of the vocabulary as Tekken numbers them.
MISTRAL_SPECIAL = ("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]", "[IMG_BREAK]", "[IMG_END]", "<pad>")

#: Mistral Small 3's chat template (the v7 format) for system and user turns whose content is a list of
#: text parts, as ``Flux2Pipeline`` passes them: BOS, the system prompt, then each user turn in [INST].
MISTRAL_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- set text = message['content'] if message['content'] is string else message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{%- if message['role'] == 'system' %}{{- '[SYSTEM_PROMPT]' + text + '[/SYSTEM_PROMPT]' }}"
    "{%- elif message['role'] == 'user' %}{{- '[INST]' + text + '[/INST]' }}"
    "{%- else %}{{- text + eos_token }}{%- endif %}"
    "{%- endfor %}"
)

KINDS: dict[str, TokenizerKind] = {
    "qwen2": TokenizerKind(
        "Qwen2Tokenizer",
        gpt2_pieces,
        QWEN_SPECIAL,
        QWEN3_CHAT_TEMPLATE,
        {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None, "bos_token": None},
    ),
    # Tekken is a byte-level BPE (tiktoken's); transformers' byte-level BPE class reads it the same way
    # (spaces kept as Ġ, every byte representable), the BOS written by the chat template, not added.
    "mistral": TokenizerKind(
        "GPT2Tokenizer",
        gpt2_pieces,
        MISTRAL_SPECIAL,
        MISTRAL_CHAT_TEMPLATE,
        {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "add_bos_token": False},
    ),
}


def write_tokenizer(out_dir: Path, kind: str, words: tuple[str, ...] | list[str], max_length: int) -> Path:
    """Write a tokenizer folder of ``kind`` over ``words``: vocabulary and merges, its special tokens,
    the chat template, ``model_max_length``; loaded and saved again by its class, as a hub folder is."""
    import transformers

    chosen = KINDS[kind]
    out_dir.mkdir(parents=True, exist_ok=True)
    tokens, merges = vocabulary([*words, *TEMPLATE_WORDS], chosen.pieces, byte_symbols(), replay=True)
    cls = getattr(transformers, chosen.cls)
    pairs = [tuple(m.split(" ")) for m in merges]
    tokenizer = cls(vocab={t: i for i, t in enumerate(tokens)}, merges=pairs, **chosen.config)
    tokenizer.add_special_tokens({"additional_special_tokens": [t for t in chosen.special if t not in tokenizer.get_vocab()]})
    tokenizer.chat_template = chosen.chat_template
    tokenizer.model_max_length = max_length
    tokenizer.save_pretrained(out_dir)
    found = json.loads((out_dir / "tokenizer_config.json").read_text())
    if found.get("tokenizer_class", "").removesuffix("Fast") != chosen.cls.removesuffix("Fast"):
        raise RuntimeError(f"the tiny {kind} tokenizer saved as {found.get('tokenizer_class')}, not {chosen.cls}")
    return out_dir


def qwen3_config(tokenizer: Any, hidden: int = 32, layers: int = 3) -> Any:
    """A tiny ``Qwen3Config`` over a tiny Qwen2 ``tokenizer``'s vocabulary (the table rounded up to 64
    rows): ``hidden`` wide, ``layers`` deep (enough for the hidden layers the family reads),
    grouped-query attention as the real Qwen3 has it."""
    from transformers import Qwen3Config

    ids = tokenizer.convert_tokens_to_ids
    return Qwen3Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=1_000_000.0,
        tie_word_embeddings=True,
        bos_token_id=ids("<|endoftext|>"),
        eos_token_id=ids("<|im_end|>"),
        pad_token_id=ids("<|endoftext|>"),
    )


def qwen3_encoder(config: Any) -> Any:
    """A seeded ``Qwen3Model`` of ``config`` (what Z-Image's ``text_encoder`` is)."""
    import torch
    from transformers import Qwen3Model

    torch.manual_seed(SEED)
    return Qwen3Model(config).eval()
