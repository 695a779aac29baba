"""Captions from local models: the caption layer, the scan reading it, ``sdtui caption`` on tiny
captioners built locally (Florence-2, BLIP, Qwen2.5-VL, the WD14 tagger) on the CPU, the dataset
left byte-identical; where a captioner is placed by the GPU's free memory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from cli.main import main
from core.captions.job import caption_dataset
from core.captions.layer import CaptionerKey, CaptionLayer, content_hash
from core.captions.runtime import load
from core.dataset.scan import scan_dataset
from tests.conftest import write_image


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """Three images, one with the user's own caption file."""
    folder = tmp_path / "data" / "10_sks dog"
    for index, colour in enumerate([(200, 30, 30), (30, 200, 30), (30, 30, 200)]):
        write_image(folder / f"{index}.png", (32 + 8 * index, 32), colour)
    (folder / "0.txt").write_text("my own caption\n")
    return tmp_path / "data"


def test_scan_reads_the_layer_after_caption_files(dataset: Path) -> None:
    layer = CaptionLayer()
    image = dataset / "10_sks dog" / "1.png"
    layer.put(content_hash(image), CaptionerKey("florence2", "m"), "a green square")
    layer.put(content_hash(dataset / "10_sks dog" / "0.png"), CaptionerKey("florence2", "m"), "never used")
    subset = scan_dataset(dataset).subsets[0]
    by_name = {Path(i.path).name: i for i in subset.images}
    assert (by_name["0.png"].caption, by_name["0.png"].caption_source) == ("my own caption", "file")
    assert (by_name["1.png"].caption, by_name["1.png"].caption_source, by_name["1.png"].generated) == ("a green square", "generated", True)
    assert by_name["2.png"].caption is None
    assert (subset.captions_found, subset.captions_missing, subset.captions_generated) == (2, 1, 1)
    assert subset.to_json()["captions_generated"] == 1


def test_layer_survives_a_rename_and_an_edit_wins(dataset: Path) -> None:
    layer = CaptionLayer()
    image = dataset / "10_sks dog" / "1.png"
    layer.put(content_hash(image), CaptionerKey("blip", "m"), "generated")
    image.rename(image.with_name("renamed.png"))
    layer.edit(content_hash(image.with_name("renamed.png")), "  my edit ")
    entry = next(i for i in scan_dataset(dataset).subsets[0].images if i.path.endswith("renamed.png"))
    assert (entry.caption, entry.caption_source) == ("my edit", "edited")


def test_a_damaged_layer_file_counts_as_empty(dataset: Path) -> None:
    layer = CaptionLayer()
    digest = content_hash(dataset / "10_sks dog" / "1.png")
    layer.file(digest).parent.mkdir(parents=True)
    layer.file(digest).write_text("{not json")
    assert layer.caption(digest) is None


@pytest.mark.slow
@pytest.mark.parametrize(("name", "model"), [("florence2", "florence2"), ("blip", "blip"), ("qwen-vl", "qwen-vl"), ("qwen-vl", "qwen3-vl"), ("wd14", "wd14")])
def test_caption_whole_path_leaves_the_dataset_byte_identical(name: str, model: str, dataset: Path, tiny_captioners: dict[str, Path]) -> None:
    before = _tree(dataset)
    events: list[dict] = []
    result = caption_dataset(dataset, name, load, str(tiny_captioners[model]), batch_size=2, emit=events.append)
    assert result.captioned == 2 and _tree(dataset) == before
    kinds = [e["type"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("caption") == 2
    assert events[0]["total"] == 2 and [e["done"] for e in events if e["type"] == "caption"] == [1, 2]
    subset = scan_dataset(dataset).subsets[0]
    generated = [i for i in subset.images if i.generated]
    assert len(generated) == 2 and all(i.caption for i in generated)
    again = caption_dataset(dataset, name, load, str(tiny_captioners[model]))
    assert (again.captioned, again.reused) == (0, 2)


@pytest.mark.slow
def test_write_adds_txt_files_and_never_overwrites(dataset: Path, tiny_captioners: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = dataset / "10_sks dog"
    (folder / "2.txt").write_text("already there\n")
    code = main(["caption", str(dataset), "--model", str(tiny_captioners["florence2"]), "--write", "--json"])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert events[-1]["written"] == [str(folder / "1.txt")]
    assert (folder / "0.txt").read_text() == "my own caption\n"
    assert (folder / "2.txt").read_text() == "already there\n"
    assert (folder / "1.txt").read_text().strip()


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--model", "/nowhere/captioner"], "the captioner model /nowhere/captioner is not a folder"),
        (["--captioner", "wd14", "--model", "/nowhere/tagger"], "the tagger model /nowhere/tagger is not a folder"),
        (["--captioner", "wd14", "--threshold", "1.5"], "--threshold 1.5 is not a probability"),
        (["--captioner", "git"], "there is no captioner 'git'"),
    ],
)
def test_a_missing_model_or_captioner_is_one_sentence(argv: list[str], says: str, dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    before = _tree(dataset)
    assert main(["caption", str(dataset), *argv]) == 2
    err = capsys.readouterr().err
    assert says in err and err.count("\n") == 1 and "Traceback" not in err
    assert _tree(dataset) == before


def test_a_folder_that_is_not_a_model_is_one_sentence(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty_model"
    empty.mkdir()
    assert main(["caption", str(dataset), "--model", str(empty)]) == 2
    err = capsys.readouterr().err
    assert f"the captioner model {empty} could not be loaded" in err and err.count("\n") == 1


def test_caption_stats_count_missing_generated_long_and_frequent(dataset: Path) -> None:
    from core.captions.stats import caption_stats, token_limit

    layer = CaptionLayer()
    layer.put(content_hash(dataset / "10_sks dog" / "1.png"), CaptionerKey("florence2", "m"), " ".join(["dog"] * 90))
    stats = caption_stats(scan_dataset(dataset), token_limit("sd1"))
    assert (stats.images, stats.without_caption, stats.generated, stats.token_limit) == (3, 1, 1, 77)
    assert stats.over_limit == [(str(dataset / "10_sks dog" / "1.png"), 92)]
    assert stats.frequent[0] == ("dog", 90) and not stats.tags
    text = "\n".join(stats.lines())
    assert "2 of 3 images have a caption (1 generated); 1 without one" in text and "1 over the limit of 77" in text


def test_a_long_caption_is_within_a_t5_familys_limit_and_over_clips(dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses

    import core.families
    from core.captions.stats import caption_stats, token_limit

    sd1 = core.families.spec("sd1")
    t5 = dataclasses.replace(sd1.text_encoders[0], name="text_encoder_2", kind="t5", max_tokens=512)
    monkeypatch.setattr(core.families, "spec", lambda name: dataclasses.replace(sd1, text_encoders=(sd1.text_encoders[0], t5)) if name == "t5-family" else sd1)
    CaptionLayer().put(content_hash(dataset / "10_sks dog" / "1.png"), CaptionerKey("qwen-vl", "m"), " ".join(["word"] * 200))
    assert (token_limit("sd1"), token_limit("t5-family")) == (77, 512)
    assert caption_stats(scan_dataset(dataset), token_limit("t5-family")).lines()[1] == "longest caption ~202 tokens, within the limit of 512"
    assert "1 over the limit of 77" in caption_stats(scan_dataset(dataset), token_limit("sd1")).lines()[1]


def test_caption_stats_count_tags_of_tag_lists() -> None:
    from core.captions.stats import is_tag_list

    assert is_tag_list(["1girl, solo, long hair", "1girl, smile, outdoors"])
    assert not is_tag_list(["a photo of a dog on the beach, in the sun"])


@pytest.mark.slow
def test_the_captioning_process_reports_events_and_one_sentence(dataset: Path, tiny_captioners: dict[str, Path]) -> None:
    from core.captions.process import CaptionProcess, CaptionRequest
    from core.errors import UserError

    process = CaptionProcess(CaptionRequest(str(dataset), "florence2", str(tiny_captioners["florence2"]), batch_size=1))
    kinds = [event["type"] for event in process.events()]
    process.finish()
    assert kinds == ["start", "loading", "note", "caption", "caption", "done"]  # the note: no GPU, the CPU
    tagger = CaptionProcess(CaptionRequest(str(dataset), "wd14", str(tiny_captioners["wd14"]), threshold=0.0, character_threshold=0.0, exclude=("toy", "shape")))
    tags = [event["caption"].split(", ") for event in tagger.events() if event["type"] == "caption"]
    tagger.finish()
    assert len(tags) == 2 and all(len(t) == 20 and "toy" not in t and "shape" not in t for t in tags)  # 26 tags less 4 ratings less 2 excluded
    failing = CaptionProcess(CaptionRequest(str(dataset), "blip", str(dataset / "not_a_model")))
    list(failing.events())
    with pytest.raises(UserError, match="not_a_model is not a folder"):
        failing.finish()


GIB = 2**30


@pytest.mark.parametrize(
    ("free_gib", "precision"),
    [(None, "cpu"), (24.0, "16-bit"), (12.0, "8-bit"), (7.0, "nf4"), (3.0, "cpu")],
)
def test_the_precision_is_the_widest_that_fits_the_free_gpu_memory(free_gib: float | None, precision: str) -> None:
    from core.captions.runtime import choose_precision

    # a 7B captioner (Qwen2.5-VL-7B): 16-bit needs 7e9 × 2 × 1.25 + 1.5 GiB ≈ 17.8 GiB, 8-bit ≈ 9.6, nf4 ≈ 5.6
    assert choose_precision(7_000_000_000, None if free_gib is None else int(free_gib * GIB)) == precision


def test_quantized_placements_load_through_bitsandbytes_configs() -> None:
    import torch

    from core.captions.runtime import Placement

    nf4 = Placement("cuda", torch.bfloat16, "nf4").load_kwargs()
    quantization = nf4["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "nf4" and quantization.bnb_4bit_compute_dtype == torch.bfloat16
    assert nf4["device_map"] == {"": 0}
    assert Placement("cuda", torch.bfloat16, "8-bit").load_kwargs()["quantization_config"].load_in_8bit
    assert Placement("cpu", torch.float32, "cpu").load_kwargs() == {"dtype": torch.float32}


@pytest.mark.slow
def test_on_the_cpu_the_captioner_says_so(dataset: Path, tiny_captioners: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["caption", str(dataset), "--captioner", "blip", "--model", str(tiny_captioners["blip"])]) == 0
    assert "no GPU: captioning on the CPU" in capsys.readouterr().out


@pytest.mark.slow
def test_the_qwen_prompt_is_the_users_and_keys_the_layer(dataset: Path, tiny_captioners: dict[str, Path]) -> None:
    seen: list[str] = []

    def spying_load(chosen, model, prompt, tags):  # type: ignore[no-untyped-def]
        seen.append(prompt)
        return load(chosen, model, prompt, tags)

    first = caption_dataset(dataset, "qwen-vl", spying_load, str(tiny_captioners["qwen-vl"]), prompt="tags only please")
    again = caption_dataset(dataset, "qwen-vl", spying_load, str(tiny_captioners["qwen-vl"]), prompt="one short sentence")
    assert seen == ["tags only please", "one short sentence"]
    assert (first.captioned, again.captioned, again.reused) == (2, 2, 0)  # another prompt captions again


def test_the_language_model_families_get_the_natural_language_advice_and_clip_families_none() -> None:
    from core.captions.stats import caption_advice

    assert caption_advice("sd1") is None and caption_advice("sdxl") is None and caption_advice(None) is None
    for family in ("flux", "chroma", "sd35", "zimage", "flux2", "qwenimage"):
        advice = caption_advice(family)
        assert advice is not None and "natural-language sentences" in advice, family
