"""What an LLM-conditioned family's pipeline does to a caption before its text encoder reads it, as
data a torch-free spec holds (``core/families/llm_text.py`` encodes with it).

The facts, from diffusers 0.42's pipelines:

* Z-Image (``ZImagePipeline._encode_prompt``): Qwen3's chat template with ``enable_thinking=True``
  (a user turn, then the assistant header), 512 tokens, ``hidden_states[-2]``, the valid tokens only.
* FLUX.2 klein (``Flux2KleinPipeline._get_qwen3_prompt_embeds``): the same template with
  ``enable_thinking=False`` (an empty think block after the header), 512 tokens, layers 9, 18, 27
  joined, every position kept.
* FLUX.2 dev (``Flux2Pipeline._get_mistral_3_small_prompt_embeds``): Mistral's template with the
  pipeline's system message, no generation prompt, 512 tokens, layers 10, 20, 30 joined, every position kept.
* Qwen-Image (``QwenImagePipeline._get_qwen_prompt_embeds``): ChatML with a system turn ("Describe
  the image by detailing …"), the template's first 34 tokens dropped, 1024 + 34 tokens,
  ``hidden_states[-1]``, the valid tokens only.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Where the caption goes in :attr:`LlmPrompt.template`.
CAPTION = "{prompt}"
#: What of an LLM text encoder keeps the compute precision under ``text_encoder_precision``: the
#: token embedding and every RMSNorm (the attention and MLP projections are quantized).
LLM_HIGH_PRECISION = ("*embed_tokens", "*norm*")


@dataclass(frozen=True)
class LlmPrompt:
    """How one family's pipeline turns a caption into its LLM text states (all of it facts of the pipeline).

    ``template`` is the text the LLM reads, the chat template (and system prompt) already applied,
    with :data:`CAPTION` where the caption goes; ``layers`` are the indices into the encoder's
    ``hidden_states`` (0 = the embeddings, -1 = the last layer after the final norm) whose states
    are joined on the feature axis; ``max_tokens`` the token limit of the templated text (padded
    and truncated to it); ``drop_tokens`` the template's leading tokens left out of the output;
    ``trim`` keeps only the valid tokens (variable length, with a mask); ``source`` cites the pipeline.
    """

    template: str
    layers: tuple[int, ...]
    max_tokens: int
    drop_tokens: int = 0
    trim: bool = True
    source: str = ""

    def render(self, caption: str) -> str:
        """The text the LLM reads for ``caption``."""
        return self.template.replace(CAPTION, caption)

    @property
    def width_factor(self) -> int:
        """How many hidden layers are joined: the text states are this times the encoder's hidden size wide."""
        return len(self.layers)


def chatml(user: str = CAPTION, system: str = "", think: str | None = None) -> str:
    """A ChatML conversation (Qwen2/2.5/3) ending in the assistant's turn, as ``apply_chat_template(…,
    add_generation_prompt=True)`` renders it: an optional system turn, the user turn, then the
    assistant header and, where given, ``think`` (Qwen3 with ``enable_thinking=False`` adds an empty
    ``<think>`` block there)."""
    turns = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return f"{turns}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n{think or ''}"


#: What Qwen3's chat template adds after the assistant header with ``enable_thinking=False``.
QWEN3_NO_THINKING = "<think>\n\n</think>\n\n"
