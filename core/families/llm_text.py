"""LLM text encoding, shared by the families that condition on a language model's hidden states.

Z-Image (Qwen3-4B), FLUX.2 klein (Qwen3 4B/8B), FLUX.2 dev (Mistral Small 3.1, a
``Mistral3ForConditionalGeneration``) and Qwen-Image (Qwen2.5-VL 7B) read a caption through an
LLM: the caption is wrapped in the chat template (and system prompt) the family's diffusers
pipeline applies, tokenized to a token limit, run through the frozen LLM, and one or several of
its hidden layers become the denoiser's text states. What differs between the families is data,
an :class:`~core.families.llm_prompt.LlmPrompt` in the family's spec; this module does the rest the same way for all.

Two output layouts, as the pipelines do it:

* ``trim`` (Z-Image, Qwen-Image): only the caption's tokens count. The valid tokens of every row
  are moved to the front (``drop_tokens`` of the template's head dropped first, as Qwen-Image drops
  its system prompt), zeros after them, with a boolean ``attention_mask``; the batch is cut to its
  longest row. A position whose mask is 0 is padding the denoiser does not read, so the text cache
  stores each caption at its own length (``core.families.embeddings.trim_row``) and pads a batch
  again (``stack_rows``).
* not ``trim`` (FLUX.2): all ``max_tokens`` positions, padding included, as the transformer was
  trained on them; no mask is returned.

The encoder is never trained: the text cache encodes every caption once, after which the trainer
moves it off the GPU (``core/train/startup.py``). The prompt data is torch-free, in
``core/families/llm_prompt.py``, where a spec imports it from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from core.families.embeddings import TextEmbeddings
from core.families.llm_prompt import LlmPrompt
from core.families.wrappers import unwrap


def tokenize(tokenizer: Any, prompt: LlmPrompt, captions: Sequence[str]) -> tuple[Any, Any]:
    """``(input_ids, attention_mask)``, both ``[batch, max_tokens]`` int64: the templated captions,
    padded and truncated to ``prompt.max_tokens`` on the tokenizer's padding side. The template
    holds every special token, so the tokenizer adds none of its own."""
    out = tokenizer(
        [prompt.render(c) for c in captions],
        padding="max_length",
        max_length=prompt.max_tokens,
        truncation=True,
        add_special_tokens=False,
        return_tensors="pt",
    )
    return out.input_ids, out.attention_mask


def encode(encoder: Any, prompt: LlmPrompt, ids: Any, mask: Any) -> TextEmbeddings:
    """The LLM text states of :func:`tokenize`'s tensors: ``prompt.layers`` joined on the feature axis,
    trimmed to the valid tokens with a boolean ``attention_mask`` where ``prompt.trim`` (see the module)."""
    import torch

    device = next(encoder.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    if prompt.trim:
        used = int(mask.any(dim=0).nonzero().max()) + 1 if bool(mask.any()) else 1
        ids, mask = ids[:, :used], mask[:, :used]  # trailing padding: no valid token attends to it (causal)
    out = backbone(encoder)(input_ids=ids, attention_mask=mask, output_hidden_states=True, use_cache=False, return_dict=True)
    states = torch.cat([out.hidden_states[k] for k in prompt.layers], dim=-1)
    if not prompt.trim:
        return TextEmbeddings(states)
    hidden, valid = compact(states, mask.bool(), prompt.drop_tokens)
    return TextEmbeddings(hidden, None, {"attention_mask": valid})


def compact(states: Any, mask: Any, drop: int = 0) -> tuple[Any, Any]:
    """``(states, mask)`` with each row's valid tokens (less the first ``drop``) moved to the front,
    zeros after them, cut to the longest row (at least one position)."""
    import torch

    rows = [row[keep][drop:] for row, keep in zip(states, mask)]
    longest = max([len(r) for r in rows] + [1])
    hidden = states.new_zeros(len(rows), longest, states.shape[-1])
    valid = torch.zeros(len(rows), longest, dtype=torch.bool, device=states.device)
    for n, row in enumerate(rows):
        hidden[n, : len(row)] = row
        valid[n, : len(row)] = True
    return hidden, valid


def backbone(encoder: Any) -> Any:
    """The part of an LLM that gives hidden states: a causal-LM's inner model (no vocabulary
    projection over every token), the model itself otherwise (``Qwen3Model``)."""
    plain = unwrap(encoder)
    return plain.model if hasattr(plain, "lm_head") and hasattr(plain, "model") else encoder
