"""T5 text encoding, shared by the families that condition on T5-XXL (FLUX.1, Chroma, SD 3.x); T5 is never trained.

* ``T5_XXL`` (in ``core/families/flow_mmdit/__init__.py``, torch-free for the specs): the encoder
  config FLUX.1 and SD 3.5 ship as ``text_encoder_2`` / ``text_encoder_3``.
* :func:`tokenize`: ids and the padding mask at a family's token limit (FLUX.1-dev 512, schnell
  and SD 3.5 256); :func:`encode`: the last hidden states, the padding masked where the family
  masks it (Chroma) and visible where it does not (FLUX.1 and SD 3.x attend to the pad tokens).
* :func:`write_tokenizer` / :func:`tiny_encoder`: a T5 tokenizer built here (a Unigram
  ``tokenizer.json`` over the tiny captions' words, no download) and a seeded toy encoder, for
  the tiny models of these families.

Torch and transformers are imported inside the functions.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

#: T5's special tokens and their ids (SentencePiece's order in every T5 vocabulary).
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
#: SentencePiece's word-start mark.
WORD_START = "\u2581"
#: Score of a whole caption word and of a single character: Viterbi picks whole words first.
_WORD_SCORE, _CHAR_SCORE = -1.0, -8.0
#: The tiny encoder's width, heads and layers (a toy: the real one is :data:`T5_XXL`).
TINY_WIDTH = 32
SEED = 4321


def vocabulary(words: Sequence[str]) -> list[tuple[str, float]]:
    """A Unigram vocabulary: the special tokens, each word with its word-start mark, and every
    printable character alone and word-initial (so any caption tokenizes without ``<unk>``)."""
    pieces: list[tuple[str, float]] = [(PAD, 0.0), (EOS, 0.0), (UNK, 0.0)]
    seen = {PAD, EOS, UNK}
    for word in dict.fromkeys(words):
        if WORD_START + word not in seen:
            pieces.append((WORD_START + word, _WORD_SCORE))
            seen.add(WORD_START + word)
    for char in [WORD_START, *(c for c in string.printable if not c.isspace())]:
        for piece in (char, WORD_START + char):
            if piece not in seen:
                pieces.append((piece, _CHAR_SCORE))
                seen.add(piece)
    return pieces


def tokenizer_json(words: Sequence[str]) -> str:
    """The ``tokenizer.json`` of a T5-style Unigram tokenizer over ``words`` (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    pieces = vocabulary(words)
    tokenizer = Tokenizer(Unigram(pieces, unk_id=2, byte_fallback=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(" {2,}"), " ")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.decoder = decoders.Metaspace(replacement=WORD_START, prepend_scheme="always")
    tokenizer.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B {EOS}", special_tokens=[(EOS, 1)])
    return tokenizer.to_str()


def write_tokenizer(out_dir: Path, words: Sequence[str], max_length: int) -> Path:
    """Write a ``T5TokenizerFast`` folder over ``words`` (tokenizer.json built here, re-saved as transformers does)."""
    from transformers import T5TokenizerFast

    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "tokenizer.json").write_text(tokenizer_json(words), encoding="utf-8")
    config = {"tokenizer_class": "T5TokenizerFast", "model_max_length": max_length, "pad_token": PAD, "eos_token": EOS, "unk_token": UNK, "extra_ids": 0}
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    T5TokenizerFast.from_pretrained(out_dir).save_pretrained(out_dir)
    return out_dir


def tiny_config(vocab_size: int, width: int = TINY_WIDTH) -> Any:
    """A toy T5 v1.1 encoder config (gated GELU, relative positions) over a vocabulary of ``vocab_size``."""
    from transformers import T5Config

    return T5Config(
        vocab_size=vocab_size,
        d_model=width,
        d_kv=width // 4,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        feed_forward_proj="gated-gelu",
        dense_act_fn="gelu_new",
        is_gated_act=True,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


def tiny_encoder(words: Sequence[str], width: int = TINY_WIDTH) -> Any:
    """A seeded toy ``T5EncoderModel`` over the vocabulary of :func:`vocabulary` (``words``), in eval mode as a loaded one is."""
    import torch
    from transformers import T5EncoderModel

    torch.manual_seed(SEED)
    return T5EncoderModel(tiny_config(len(vocabulary(words)), width)).eval()


def tokenize(tokenizer: Any, captions: Sequence[str], max_length: int) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)``, both ``[batch, max_length]``: padded and truncated to ``max_length`` (the EOS kept)."""
    out = tokenizer(list(captions), padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    return out.input_ids, out.attention_mask


def encode(encoder: Any, ids: Any, mask: Any | None) -> Any:
    """T5's last hidden states ``[batch, tokens, width]``; ``mask`` hides the padding from the encoder's
    attention (None: every token attends to the pad tokens, as FLUX.1 and SD 3.x were trained)."""
    device = next(encoder.parameters()).device
    kwargs = {"attention_mask": mask.to(device)} if mask is not None else {}
    return encoder(ids.to(device), return_dict=True, **kwargs).last_hidden_state
