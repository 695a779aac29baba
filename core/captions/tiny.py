"""Tiny captioners with random weights, built locally (no downloads): the real Florence-2, BLIP,
Qwen2.5-VL and Qwen3-VL architectures at toy size, with their processors and a word-level tokenizer,
and a WD14 tagger (an ONNX graph with the v3 taggers' input and output, and a small ``selected_tags.csv``).

``sdtui demo`` builds the Florence-2 one at ``WORKDIR/captioner/`` and the tagger at
``WORKDIR/tagger/``; the tests run every captioner's whole path on them. Their captions are random
words from :data:`WORDS` (the tagger's: random tags of :data:`TAGS`). Imports torch (the tagger:
onnx): run in the captioning or building process only.
"""

from __future__ import annotations

from pathlib import Path

SEED = 1234
#: The tiny tokenizers' words; a tiny captioner's caption is a few of them.
WORDS = [
    "a",
    "an",
    "the",
    "of",
    "on",
    "in",
    "with",
    "and",
    "photo",
    "picture",
    "red",
    "green",
    "blue",
    "yellow",
    "white",
    "circle",
    "square",
    "triangle",
    "shape",
    "simple",
    "background",
    "small",
    "large",
    "dog",
    "cat",
    "toy",
    "bright",
]
#: Image side the tiny processors resize to.
IMAGE_SIDE = 16
#: Words in a tiny caption at most.
CAPTION_WORDS = 12
#: The tiny Florence-2's weight scale: large enough that each image gets its own words.
INIT_STD = 1.0


def _generation(model: object, banned: list[int]) -> None:
    """Random words, each once, four to :data:`CAPTION_WORDS`: a caption that reads as words, not one repeated token."""
    config = model.generation_config  # type: ignore[attr-defined]
    config.min_new_tokens = 4
    config.max_new_tokens = CAPTION_WORDS
    config.no_repeat_ngram_size = 1
    config.bad_words_ids = [[token] for token in banned]


def build_florence2(out_dir: str | Path) -> Path:
    """A tiny Florence-2 (DaViT vision tower, BART text model) and its processor in ``out_dir``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPImageProcessor,
        Florence2Config,
        Florence2ForConditionalGeneration,
        Florence2Processor,
        PreTrainedTokenizerFast,
    )

    out = Path(out_dir)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
    vocab = {token: index for index, token in enumerate(special + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=64,
    )
    # one 4×4 grid of the vision tower's patches plus its pooled token
    images = CLIPImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, do_center_crop=False, image_seq_length=(IMAGE_SIDE // 4) ** 2 + 1)
    Florence2Processor(images, tokenizer).save_pretrained(out)
    config = Florence2Config(
        text_config={
            "model_type": "bart",
            "vocab_size": len(vocab),
            "max_position_embeddings": 256,
            "d_model": 16,
            "encoder_layers": 1,
            "decoder_layers": 1,
            "encoder_ffn_dim": 32,
            "decoder_ffn_dim": 32,
            "encoder_attention_heads": 1,
            "decoder_attention_heads": 1,
            "bos_token_id": 0,
            "pad_token_id": 1,
            "eos_token_id": 2,
            "decoder_start_token_id": 2,
            "forced_bos_token_id": 0,
            "init_std": INIT_STD,
        },
        vision_config={
            "depths": [1],
            "patch_size": [7],
            "patch_stride": [4],
            "patch_padding": [3],
            "patch_prenorm": [False],
            "embed_dim": [16],
            "num_heads": [1],
            "num_groups": [1],
            "window_size": 12,
            "projection_dim": 16,
            "initializer_range": INIT_STD,
        },
        image_token_id=vocab["<image>"],
        initializer_range=INIT_STD,
    )
    torch.manual_seed(SEED)
    model = Florence2ForConditionalGeneration(config)
    _generation(model, [vocab["<pad>"], vocab["<unk>"], vocab["<image>"], vocab["<s>"]])
    model.save_pretrained(out)
    return out


def build_blip(out_dir: str | Path) -> Path:
    """A tiny BLIP captioner (ViT vision tower, BERT text decoder) and its processor in ``out_dir``."""
    import torch
    from transformers import (
        BertTokenizerFast,
        BlipConfig,
        BlipForConditionalGeneration,
        BlipImageProcessor,
        BlipProcessor,
    )

    out = Path(out_dir)
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {token: index for index, token in enumerate(special + WORDS)}
    tokenizer = BertTokenizerFast(vocab=vocab, bos_token="[DEC]", model_max_length=64)
    BlipProcessor(BlipImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}), tokenizer).save_pretrained(out)
    config = BlipConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 1,
            "max_position_embeddings": 256,
            "bos_token_id": vocab["[DEC]"],
            "pad_token_id": vocab["[PAD]"],
            "sep_token_id": vocab["[SEP]"],
            "eos_token_id": vocab["[SEP]"],
        },
        vision_config={"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 1, "image_size": IMAGE_SIDE, "patch_size": 8},
        projection_dim=16,
    )
    torch.manual_seed(SEED)
    model = BlipForConditionalGeneration(config)
    _generation(model, [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[MASK]", "[DEC]")])
    model.save_pretrained(out)
    return out


#: The tiny Qwen2.5-VL's chat template (Qwen's turn format).
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


#: The tiny Qwen-VL tokenizers' special tokens (Qwen's names).
QWEN_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<unk>"]


def _qwen_tokenizer(out: Path) -> dict[str, int]:
    """A word-level tokenizer with Qwen's special tokens and chat template saved in ``out``; its vocabulary."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(QWEN_SPECIAL + WORDS + ["user", "assistant"])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<unk>",
        additional_special_tokens=QWEN_SPECIAL[1:7],
        model_max_length=512,
    )
    tokenizer.chat_template = QWEN_TEMPLATE
    tokenizer.save_pretrained(out)
    return vocab


def build_qwen3_vl(out_dir: str | Path) -> Path:
    """A tiny Qwen3-VL (ViT with learned position embeddings and one deepstack layer, a one-layer
    Qwen3 decoder with interleaved M-RoPE), its tokenizer and image processor (64×64 pixels at
    16-pixel patches: 4 image tokens) in ``out_dir``."""
    import torch
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration

    out = Path(out_dir)
    vocab = _qwen_tokenizer(out)
    Qwen2VLImageProcessor(min_pixels=64 * 64, max_pixels=64 * 64, patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3).save_pretrained(out)
    config = Qwen3VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 8,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 1, 1], "mrope_interleaved": True, "rope_theta": 10000.0},
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 16,
            "patch_size": 16,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "num_position_embeddings": 16,
            "deepstack_visual_indexes": [0],
            "in_channels": 3,
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(SEED)
    model = Qwen3VLForConditionalGeneration(config)
    _generation(model, [vocab[t] for t in QWEN_SPECIAL if t != "<|im_end|>"])
    model.save_pretrained(out)
    return out


def build_qwen_vl(out_dir: str | Path) -> Path:
    """A tiny Qwen2.5-VL (windowed ViT, a one-layer Qwen2 decoder with M-RoPE), its tokenizer with a
    chat template and its image processor (56×56 pixels: 4 image tokens) in ``out_dir``."""
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLImageProcessor

    out = Path(out_dir)
    vocab = _qwen_tokenizer(out)
    Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56, patch_size=14, merge_size=2, temporal_patch_size=2).save_pretrained(out)
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(vocab),
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 512,
            "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0},
            "eos_token_id": vocab["<|im_end|>"],
            "pad_token_id": vocab["<|endoftext|>"],
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_heads": 2,
            "out_hidden_size": 16,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "fullatt_block_indexes": [0],
            "window_size": 56,
            "in_channels": 3,
        },
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(SEED)
    model = Qwen2_5_VLForConditionalGeneration(config)
    _generation(model, [vocab[t] for t in QWEN_SPECIAL if t != "<|im_end|>"])
    model.save_pretrained(out)
    return out


#: The tiny tagger's tags (``selected_tags.csv``: name, category): ratings, general tags with
#: underscores and a kaomoji, and characters.
TAGS = [
    *((name, 9) for name in ("general", "sensitive", "questionable", "explicit")),
    *((name, 0) for name in ("simple_background", "white_background", "no_humans", "red_circle", "blue_square", "green_triangle", "yellow_theme", "shape", "solo", "toy")),
    *((name, 0) for name in ("outdoors", "smile", "long_hair", "^_^", "1girl", "cat", "dog", "bright", "geometric_pattern", "still_life")),
    *((name, 4) for name in ("shape_girl_(demo)", "circle_knight")),
]
#: The tiny tagger's input side (the v3 taggers take 448).
TAGGER_SIDE = 32


def build_wd14(out_dir: str | Path) -> Path:
    """A tiny WD14 v3 tagger in ``out_dir``: ``model.onnx`` (NHWC BGR 0–255 input of any batch, one
    random linear layer, sigmoid probabilities out) and its ``selected_tags.csv``."""
    import csv

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(SEED)
    features = TAGGER_SIDE * TAGGER_SIDE * 3
    # inputs centred to -1…1, so the logits of different images spread around the thresholds
    weights = numpy_helper.from_array((rng.standard_normal((features, len(TAGS))) * 2.5 / np.sqrt(features)).astype(np.float32), "weights")
    bias = numpy_helper.from_array((rng.standard_normal(len(TAGS)) * 0.5 - 0.5).astype(np.float32), "bias")
    constants = [
        numpy_helper.from_array(np.array([1 / 127.5], dtype=np.float32), "scale"),
        numpy_helper.from_array(np.array([1.0], dtype=np.float32), "one"),
        numpy_helper.from_array(np.array([-1, features], dtype=np.int64), "flat"),
    ]
    nodes = [
        helper.make_node("Mul", ["input", "scale"], ["scaled"]),
        helper.make_node("Sub", ["scaled", "one"], ["centred"]),
        helper.make_node("Reshape", ["centred", "flat"], ["rows"]),
        helper.make_node("MatMul", ["rows", "weights"], ["product"]),
        helper.make_node("Add", ["product", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_wd14_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", TAGGER_SIDE, TAGGER_SIDE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        [weights, bias, *constants],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(out / "model.onnx"))
    with open(out / "selected_tags.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["tag_id", "name", "category", "count"])
        writer.writerows((index, name, category, 1000 - index) for index, (name, category) in enumerate(TAGS))
    return out


BUILDERS = {"florence2": build_florence2, "blip": build_blip, "qwen-vl": build_qwen_vl, "qwen3-vl": build_qwen3_vl, "wd14": build_wd14}
