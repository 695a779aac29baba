"""The WD14 booru tagger: the v3 preprocessing (white square, model's side, BGR 0–255), the tag
choice (thresholds, exclusions, ratings left out, kaomoji kept), the loading of a local folder or a
hub id, and the tiny tagger (an ONNX graph built locally) through ``sdtui caption``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli.main import main
from core.captions.captioners import TagOptions
from core.captions.wd14 import CHARACTER, GENERAL, RATING, Tag, Tagger, model_files, prepare, select
from core.errors import UserError
from tests.conftest import write_image


def test_an_image_is_padded_to_a_white_square_resized_and_given_in_bgr_0_to_255() -> None:
    wide = Image.new("RGB", (40, 20), (200, 30, 10))
    row = prepare(wide, 20)
    assert row.shape == (20, 20, 3) and row.dtype == np.float32
    assert row[10, 10].tolist() == [10.0, 30.0, 200.0]  # blue, green, red
    assert row[0, 10].tolist() == row[19, 10].tolist() == [255.0, 255.0, 255.0]  # the padding above and below is white
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert prepare(transparent, 8).min() == 255.0  # transparent parts are white, not black


TAGS = [Tag("general", RATING), Tag("long hair", GENERAL), Tag("^_^", GENERAL), Tag("simple background", GENERAL), Tag("hatsune miku", CHARACTER), Tag("smile", GENERAL)]


def test_tags_above_their_thresholds_characters_first_without_ratings_or_exclusions() -> None:
    probabilities = [0.99, 0.6, 0.5, 0.9, 0.86, 0.2]
    assert select(probabilities, TAGS, TagOptions()) == "hatsune miku, simple background, long hair, ^_^"
    assert select(probabilities, TAGS, TagOptions(threshold=0.55, character_threshold=0.9)) == "simple background, long hair"
    assert select(probabilities, TAGS, TagOptions(exclude=("simple_background", "Long Hair"))) == "hatsune miku, ^_^"


def _folder(tmp_path: Path, tiny_captioners: dict[str, Path]) -> Path:
    """A copy of the tiny tagger as a user's local folder."""
    folder = tmp_path / "tagger"
    folder.mkdir()
    for name in ("model.onnx", "selected_tags.csv"):
        (folder / name).write_bytes((tiny_captioners["wd14"] / name).read_bytes())
    return folder


def test_a_local_folder_and_a_hub_id_give_the_model_and_its_tags(tmp_path: Path, tiny_captioners: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, tiny_captioners)
    assert model_files(str(folder)) == (folder / "model.onnx", folder / "selected_tags.csv")
    fetched: list[tuple[str, str]] = []

    def download(repo_id: str, filename: str) -> str:
        fetched.append((repo_id, filename))
        return str(folder / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    tagger = Tagger("SmilingWolf/wd-vit-tagger-v3", TagOptions())
    assert fetched == [("SmilingWolf/wd-vit-tagger-v3", "model.onnx"), ("SmilingWolf/wd-vit-tagger-v3", "selected_tags.csv")]
    assert tagger.side == 32 and len(tagger.tags) == 26 and tagger.device == "cpu"
    captions = tagger.caption([Image.new("RGB", (50, 30), colour) for colour in ((250, 0, 0), (0, 0, 250))])
    assert len(captions) == 2 and captions[0] != captions[1]
    for caption in captions:
        tags = caption.split(", ")
        assert tags and not {"general", "sensitive", "questionable", "explicit"} & set(tags)
        assert all("_" not in tag or tag == "^_^" for tag in tags)


def test_missing_files_or_a_failed_download_are_one_sentence(tmp_path: Path, tiny_captioners: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _folder(tmp_path, tiny_captioners)
    (folder / "selected_tags.csv").unlink()
    with pytest.raises(UserError, match=r"has no selected_tags.csv; give a folder holding model.onnx and selected_tags.csv"):
        model_files(str(folder))
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id: str, filename: str) -> str:
        raise LocalEntryNotFoundError("cannot find the requested files in the local cache")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(UserError, match=r"the tagger SmilingWolf/wd-vit-tagger-v3 could not be downloaded \(cannot find"):
        model_files("SmilingWolf/wd-vit-tagger-v3")
    (folder / "selected_tags.csv").write_text("not,a\ntag,list\n")
    with pytest.raises(UserError, match="is not a tagger's tag list"):
        Tagger(str(folder), TagOptions())


@pytest.mark.slow
def test_sdtui_caption_tags_with_thresholds_and_exclusions_and_reuses_per_option(tmp_path: Path, tiny_captioners: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "data" / "5_miku"
    for index in range(3):
        write_image(folder / f"{index}.png", (24 + 4 * index, 24), (80 * index, 200 - 60 * index, 40))
    base = ["caption", str(tmp_path / "data"), "--captioner", "wd14", "--model", str(tiny_captioners["wd14"]), "--json"]
    assert main([*base, "--threshold", "0.3", "--batch-size", "2"]) == 0
    first = {e["path"]: e["caption"] for e in map(json.loads, capsys.readouterr().out.splitlines()) if e["type"] == "caption"}
    assert len(first) == 3
    common = sorted(set.intersection(*(set(c.split(", ")) for c in first.values())))
    assert common, first
    assert main([*base, "--threshold", "0.3", "--exclude", ",".join(t.replace(" ", "_") for t in common)]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    second = {e["path"]: e["caption"] for e in events if e["type"] == "caption"}
    assert events[-1]["reused"] == 0 and len(second) == 3  # other options tag again
    for path, caption in second.items():
        assert caption.split(", ") == [t for t in first[path].split(", ") if t not in common]
    assert main([*base, "--threshold", "0.3"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["reused"] == 3
