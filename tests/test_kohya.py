"""kohya sd-scripts interchange: dataset_config.toml export/import and sample prompt lines."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from core.config import new_config
from core.errors import UserError
from core.kohya import export_kohya, import_kohya, read_kohya
from core.sample_prompts import SamplePrompt, format_prompt_line, parse_prompt_file, parse_prompt_line


def make_config(tmp_path: Path):
    return new_config(
        "sks", "/models/sd15", "sd1", "dreambooth",
        [
            {"path": str(tmp_path / "data" / "40_sks dog"), "repeats": 40, "token": "sks dog"},
            {"path": str(tmp_path / "data" / "5_other"), "repeats": 5, "token": ""},
            {"path": str(tmp_path / "reg" / "1_dog"), "repeats": 1, "token": "dog", "is_reg": True},
        ],
        {"resolution": 768, "batch_size": 2, "shuffle_caption": True, "keep_tokens": 1, "flip_aug": True, "min_bucket_reso": 320},
        prompts=["a photo of sks dog --n blurry, lowres --d 7", "sks dog on a beach --w 512 --h 768 --l 5 --s 20"],
    )


def test_export_writes_sd_scripts_schema_and_prompt_lines(tmp_path: Path) -> None:
    written = export_kohya(make_config(tmp_path), tmp_path / "kohya")
    assert [p.name for p in written] == ["dataset_config.toml", "sample_prompts.txt", "training_config.toml"]
    data = tomllib.loads(written[0].read_text())
    assert data["general"] == {"shuffle_caption": True, "keep_tokens": 1, "flip_aug": True, "random_crop": False,
                               "caption_dropout_rate": 0.0, "caption_tag_dropout_rate": 0.0, "caption_extension": ".txt"}
    dataset = data["datasets"][0]
    assert {k: dataset[k] for k in ("resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")} == {
        "resolution": 768, "batch_size": 2, "enable_bucket": True, "bucket_no_upscale": False, "min_bucket_reso": 320, "max_bucket_reso": 2048,
        "bucket_reso_steps": 64}
    assert dataset["subsets"][0] == {"image_dir": str(tmp_path / "data" / "40_sks dog"), "num_repeats": 40, "class_tokens": "sks dog",
                                     "caption_extension": ".txt", "is_reg": False}
    assert "class_tokens" not in dataset["subsets"][1] and dataset["subsets"][2]["is_reg"] is True
    assert written[1].read_text().splitlines() == [
        "a photo of sks dog --n blurry, lowres --w 768 --h 768 --d 7 --l 7.5 --s 30",
        "sks dog on a beach --w 512 --h 768 --l 5 --s 20",
    ]


def test_export_writes_only_what_each_sd_scripts_script_accepts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.set("method.kind", "textual_inversion")
    config.set("settings.caption_prefix", "ohwx")
    general = tomllib.loads(export_kohya(config, tmp_path / "ti")[0].read_text())["general"]
    # train_textual_inversion.py's ConfigSanitizer has no dropout schema: those keys would be "extra keys not allowed"
    assert "caption_dropout_rate" not in general and "caption_tag_dropout_rate" not in general
    assert general["caption_prefix"] == "ohwx" and "caption_suffix" not in general


def test_export_carries_the_learning_rates_as_sd_scripts_names_them(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.set("settings.train_text_encoder", True)
    config.set("schedule.text_encoder_lr", 1e-6)
    written = export_kohya(config, tmp_path / "kohya")
    args = tomllib.loads(written[2].read_text())["optimizer_arguments"]
    # a new DreamBooth run of SD1 starts at 2e-6 (core/plan/learning_rates.py), not the LoRA 1e-4
    assert args == {
        "optimizer_type": "AdamW8bit", "learning_rate": 2e-6, "unet_lr": 2e-6, "text_encoder_lr": 1e-6,
        "lr_scheduler": "constant", "lr_warmup_steps": 0, "max_grad_norm": 1.0,
    }
    config.set("schedule.text_encoder_lr", 0)
    args = tomllib.loads(export_kohya(config, tmp_path / "kohya")[2].read_text())["optimizer_arguments"]
    assert "text_encoder_lr" not in args  # sd-scripts then uses learning_rate, as run.toml's 0 means


def test_export_then_import_gives_the_same_subsets_and_settings(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    written = export_kohya(config, tmp_path / "kohya")
    assert import_kohya(written[0]) == config.subsets
    back = read_kohya(written[0])
    assert back.caption_extension == ".txt" and back.warnings == []
    for key, value in back.settings.items():
        assert config.settings[key] == value, key


def test_import_follows_sd_scripts_fallbacks_and_relative_dirs(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "dataset.toml"
    path.parent.mkdir()
    path.write_text(
        "[general]\nenable_bucket = true\ncaption_extension = '.caption'\nnum_repeats = 3\n"
        "[[datasets]]\nresolution = [1024, 768]\nbatch_size = 4\n"
        "  [[datasets.subsets]]\n  image_dir = 'imgs/a'\n  class_tokens = 'ohwx'\n"
        "  [[datasets.subsets]]\n  image_dir = '/abs/reg'\n  num_repeats = 1\n  is_reg = true\n"
    )
    result = read_kohya(path)
    assert result.subsets == [
        {"path": str(tmp_path / "cfg" / "imgs" / "a"), "repeats": 3, "token": "ohwx", "is_reg": False},
        {"path": "/abs/reg", "repeats": 1, "token": "", "is_reg": True},
    ]
    assert result.settings["resolution"] == 887 and result.settings["batch_size"] == 4
    assert result.caption_extension == ".caption"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[general\n", r"line \d+: invalid TOML"),
        ("[general]\n[[datasets]]\n[[datasets.subsets]]\nmetadata_file = 'm.json'\n", "metadata_file are not supported"),
        ("[general]\n[[datasets]]\n[[datasets.subsets]]\nnum_repeats = 2\n", "has no image_dir"),
        ("[general]\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = 0\n", "repeats must be at least 1"),
        ("[general]\n[[datasets]]\nbatch_size = 0\n[[datasets.subsets]]\nimage_dir = 'a'\n", r"batch_size must be at least 1 \(sd-scripts option batch_size\)"),
        ("[general]\n[[datasets]]\n", r"has no \[\[datasets.subsets\]\]"),
        ("datasets = 3\n", "is not an sd-scripts dataset config"),
    ],
)
def test_bad_kohya_config_is_a_user_error(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "dataset_config.toml"
    path.write_text(text)
    with pytest.raises(UserError, match=expected):
        read_kohya(path)


def test_missing_kohya_config_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        import_kohya(tmp_path / "nope.toml")


def test_parse_prompt_line_reads_every_option_and_defaults_the_rest() -> None:
    full = parse_prompt_line("a dog, 4k --n bad hands, blurry --w 768 --h 512 --d 42 --l 6.5 --s 25")
    assert full == SamplePrompt("a dog, 4k", "bad hands, blurry", 768, 512, 42, 6.5, 25)
    bare = parse_prompt_line("  just a prompt  ", width=1024, height=1024)
    assert bare == SamplePrompt("just a prompt", "", 1024, 1024, None, 7.5, 30)
    kept = parse_prompt_line("x --ss Euler_A --W 640 --cfgr 2")
    assert kept.width == 640 and kept.sampler == "euler_a" and kept.extra == (("cfgr", "2"),)
    assert parse_prompt_line("well-lit room --s 10").prompt == "well-lit room"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("--w 512 --h 512", "has no prompt text"),
        ("dog --w big", "--w must be a whole number, not 'big'"),
        ("dog --h 500", "--h must be a multiple of 8 between 64 and 4096"),
        ("dog --d -1", r"--d \(seed\) must be 0 or more"),
        ("dog --l x", "--l must be a number"),
        ("dog --s 0", r"--s \(steps\) must be between 1 and 1000"),
        ("dog --ss plms", r"--ss \(sampler\) must be one of default, ddim, .*, not 'plms'"),
    ],
)
def test_bad_prompt_lines_name_the_option_and_rule(line: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        parse_prompt_line(line)


def test_format_and_parse_round_trip_and_prompt_files() -> None:
    prompt = SamplePrompt("a cat", "ugly", 640, 832, 3, 4.5, 12, "ddim")
    line = format_prompt_line(prompt)
    assert line == "a cat --n ugly --w 640 --h 832 --d 3 --l 4.5 --s 12 --ss ddim"
    assert parse_prompt_line(line) == prompt
    assert [p.prompt for p in parse_prompt_file("# samples\n\na --w 64\n  b\n")] == ["a", "b"]
