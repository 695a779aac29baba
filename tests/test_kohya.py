"""kohya sd-scripts interchange: dataset_config.toml export/import and sample prompt lines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import tomllib

from core.config import new_config
from core.errors import UserError
from core.kohya import export_kohya, import_kohya, read_kohya
from core.sample_prompts import SamplePrompt, format_prompt_line, parse_prompt_file, parse_prompt_line
from tests.conftest import write_image


def make_config(tmp_path: Path):
    return new_config(
        "sks",
        "/models/sd15",
        "sd1",
        "dreambooth",
        [
            {"path": str(tmp_path / "data" / "40_sks dog"), "repeats": 40, "token": "sks dog"},
            {"path": str(tmp_path / "data" / "5_other"), "repeats": 5, "token": ""},
            {"path": str(tmp_path / "reg" / "1_dog"), "repeats": 1, "token": "dog", "is_reg": True},
        ],
        {"resolution": 768, "batch_size": 2, "shuffle_caption": True, "keep_tokens": 1, "flip_aug": True, "min_bucket_reso": 320},
        prompts=["a photo of sks dog --n blurry, lowres --d 7", "sks dog on a beach --w 512 --h 768 --l 5 --s 20"],
    )


def test_export_writes_sd_scripts_schema_and_prompt_lines(tmp_path: Path) -> None:
    written = export_kohya(make_config(tmp_path), tmp_path / "kohya").written
    assert [p.name for p in written] == ["dataset_config.toml", "sample_prompts.txt", "training_config.toml"]
    data = tomllib.loads(written[0].read_text())
    assert data["general"] == {
        "shuffle_caption": True,
        "keep_tokens": 1,
        "flip_aug": True,
        "random_crop": False,
        "caption_dropout_rate": 0.0,
        "caption_tag_dropout_rate": 0.0,
        "caption_extension": ".txt",
    }
    dataset = data["datasets"][0]
    assert {k: dataset[k] for k in ("resolution", "batch_size", "enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso", "bucket_reso_steps")} == {
        "resolution": 768,
        "batch_size": 2,
        "enable_bucket": True,
        "bucket_no_upscale": False,
        "min_bucket_reso": 320,
        "max_bucket_reso": 2048,
        "bucket_reso_steps": 64,
    }
    assert dataset["subsets"][0] == {"image_dir": str(tmp_path / "data" / "40_sks dog"), "num_repeats": 40, "class_tokens": "sks dog", "caption_extension": ".txt", "is_reg": False}
    assert "class_tokens" not in dataset["subsets"][1] and dataset["subsets"][2]["is_reg"] is True
    assert written[1].read_text().splitlines() == [
        "a photo of sks dog --n blurry, lowres --w 768 --h 768 --d 7 --l 7.5 --s 30",
        "sks dog on a beach --w 512 --h 768 --l 5 --s 20",
    ]


def test_export_writes_only_what_each_sd_scripts_script_accepts(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.set("method.kind", "textual_inversion")
    config.set("settings.caption_prefix", "ohwx")
    general = tomllib.loads(export_kohya(config, tmp_path / "ti").written[0].read_text())["general"]
    # train_textual_inversion.py's ConfigSanitizer has no dropout schema: those keys would be "extra keys not allowed"
    assert "caption_dropout_rate" not in general and "caption_tag_dropout_rate" not in general
    assert general["caption_prefix"] == "ohwx" and "caption_suffix" not in general


def test_export_carries_the_learning_rates_as_sd_scripts_names_them(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.set("settings.train_text_encoder", True)
    config.set("schedule.text_encoder_lr", 1e-6)
    config.set("method.kind", "lora")
    written = export_kohya(config, tmp_path / "kohya").written
    data = tomllib.loads(written[2].read_text())
    args = data["optimizer_arguments"]
    assert {k: args[k] for k in ("optimizer_type", "learning_rate", "lr_scheduler", "lr_warmup_steps", "max_grad_norm")} == {
        "optimizer_type": "AdamW8bit",
        "learning_rate": 2e-6,
        "lr_scheduler": "constant",
        "lr_warmup_steps": 0,
        "max_grad_norm": 1.0,
    }
    assert data["additional_network_arguments"]["unet_lr"] == 2e-6 and data["additional_network_arguments"]["text_encoder_lr"] == 1e-6
    config.set("schedule.text_encoder_lr", 0)
    data = tomllib.loads(export_kohya(config, tmp_path / "kohya2").written[2].read_text())
    assert "text_encoder_lr" not in data["additional_network_arguments"]  # sd-scripts then uses learning_rate, as run.toml's 0 means


def test_export_then_import_gives_the_same_subsets_and_settings(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    written = export_kohya(config, tmp_path / "kohya").written
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


# ---- export: the script's own arguments, a fresh folder, fine-tune metadata, generated class images ----


def _lokr_prodigy(tmp_path: Path, optimizer: str = "prodigy"):
    config = make_config(tmp_path)
    for key, value in {
        "method.kind": "lora",
        "settings.optimizer": optimizer,
        "settings.lora_type": "lokr",
        "settings.lora_rank": 8,
        "settings.lora_alpha": 4.0,
        "settings.lokr_factor": 4,
        "settings.lora_targets": "all",
        "settings.conv_rank": 4,
        "settings.clip_skip": 2,
        "settings.mixed_precision": "bf16",
        "settings.save_precision": "bf16",
        "schedule.lr_scheduler": "cosine_with_restarts",
        "schedule.lr_scheduler_num_cycles": 3,
        "schedule.max_steps": 600,
        "settings.weight_decay": 0.05,
        "settings.prodigy_d_coef": 0.5,
    }.items():
        config.set(key, value)
    return config


@pytest.mark.parametrize("optimizer", ["prodigy", "schedulefree_adamw", "lion"])
def test_export_writes_every_training_argument_sd_scripts_has(tmp_path: Path, optimizer: str) -> None:
    export = export_kohya(_lokr_prodigy(tmp_path, optimizer), tmp_path / "kohya")
    assert export.script == "train_network.py"
    data = tomllib.loads(export.written[2].read_text())
    flat = {k: v for table in data.values() for k, v in table.items()}
    assert flat["pretrained_model_name_or_path"] == "/models/sd15"
    assert flat["network_module"] == "lycoris.kohya" and flat["network_dim"] == 8 and flat["network_alpha"] == 4.0
    assert flat["network_args"] == ["algo=lokr", "factor=4", "conv_dim=4", "conv_alpha=4"]
    assert flat["lr_scheduler"] == "cosine_with_restarts" and flat["lr_scheduler_num_cycles"] == 3
    assert flat["clip_skip"] == 2 and flat["max_train_steps"] == 600 and "max_train_epochs" not in flat
    assert flat["mixed_precision"] == "bf16" and flat["save_precision"] == "bf16" and flat["save_model_as"] == "safetensors"
    assert flat["dataset_config"] == str(export.written[0]) and flat["sample_prompts"] == str(export.written[1])
    assert flat["output_name"] == "sks" and flat["network_train_unet_only"] is True
    expected = {"prodigy": "Prodigy", "schedulefree_adamw": "AdamWScheduleFree", "lion": "Lion"}[optimizer]
    assert flat["optimizer_type"] == expected and "weight_decay=0.05" in flat["optimizer_args"]
    if optimizer == "prodigy":
        assert {"d_coef=0.5", "safeguard_warmup=True", "decouple=True"} <= set(flat["optimizer_args"])


@pytest.mark.parametrize(
    ("method", "family", "script"),
    [
        ("dreambooth", "sd1", "train_db.py"),
        ("finetune", "sd1", "fine_tune.py"),
        ("textual_inversion", "sd1", "train_textual_inversion.py"),
        ("lora", "sdxl", "sdxl_train_network.py"),
        ("dreambooth", "sdxl", "sdxl_train.py"),
    ],
)
def test_export_writes_only_the_options_of_the_script_that_fits_the_method(tmp_path: Path, method: str, family: str, script: str) -> None:
    from core.kohya_args import SCRIPT_FLAGS

    (tmp_path / "data" / "40_sks dog").mkdir(parents=True)
    (tmp_path / "data" / "40_sks dog" / "a.png").write_bytes(_png())
    config = new_config(
        "sks",
        "/models/m",
        family,
        method,
        [{"path": str(tmp_path / "data" / "40_sks dog"), "repeats": 40, "token": "sks dog"}],
        {"train_text_encoder": method != "textual_inversion"},
        method_options={"placeholder_token": "<sks>"} if method == "textual_inversion" else None,
    )
    export = export_kohya(config, tmp_path / "kohya")
    assert export.script == script
    flat = {k for table in tomllib.loads(export.written[2].read_text()).values() for k in table}
    assert flat <= SCRIPT_FLAGS[script] and "pretrained_model_name_or_path" in flat
    if method == "textual_inversion":
        assert "token_string" in flat and "network_dim" not in flat
    if script == "train_db.py":
        assert "learning_rate_te" in flat and "unet_lr" not in flat


def test_export_refuses_a_folder_that_holds_files_and_leaves_nothing_half_written(tmp_path: Path) -> None:
    target = tmp_path / "kohya"
    target.mkdir()
    (target / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="already exists and is not an empty folder"):
        export_kohya(make_config(tmp_path), target)
    assert [p.name for p in target.iterdir()] == ["mine.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_kohya(make_config(tmp_path), empty).written[0].parent == empty
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kohya"]  # no temp folder left


def test_export_names_in_one_sentence_what_has_no_sd_scripts_option(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    config.set("settings.ema", True)
    export = export_kohya(config, tmp_path / "kohya")
    assert export.summary() == "not exported, train_db.py has no option for: settings.ema"
    config = make_config(tmp_path)
    config.set("method.kind", "lora")
    assert export_kohya(config, tmp_path / "k2").summary().endswith("settings.lora_targets = attn (sd-scripts' LoRA also trains the feed-forward layers)")


def _png() -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_finetune_export_has_the_metadata_files_fine_tune_py_reads(tmp_path: Path) -> None:
    folder = tmp_path / "data" / "3_style"
    folder.mkdir(parents=True)
    for name in ("a", "b"):
        (folder / f"{name}.png").write_bytes(_png())
    (folder / "a.txt").write_text("red square, flat")
    config = new_config("ft", "/models/sd15", "sd1", "finetune", [{"path": str(folder), "repeats": 3, "token": "style"}], {})
    export = export_kohya(config, tmp_path / "kohya")
    assert export.script == "fine_tune.py"
    data = tomllib.loads(export.written[0].read_text())
    assert "caption_extension" not in data["general"]  # fine-tuning subsets' schema has none
    subset = data["datasets"][0]["subsets"][0]
    assert set(subset) == {"image_dir", "metadata_file", "num_repeats"} and subset["num_repeats"] == 3
    metadata = json.loads(Path(subset["metadata_file"]).read_text())
    assert metadata == {str(folder / "a.png"): {"caption": "red square, flat"}, str(folder / "b.png"): {"caption": "style"}}


def test_dreambooth_export_lists_the_class_images_the_run_generated(tmp_path: Path) -> None:
    from core.config import save_config

    run = tmp_path / "runs" / "r1"
    (run / "class_images").mkdir(parents=True)
    for n in range(10):
        (run / "class_images" / f"class_{n:05d}.png").write_bytes(_png())
    config = make_config(tmp_path)
    config.set("method.class_prompt", "a photo of a dog")
    save_config(config, run / "run.toml")
    from core.config import load_config

    export = export_kohya(load_config(run / "run.toml", complete=False), tmp_path / "kohya")
    subsets = tomllib.loads(export.written[0].read_text())["datasets"][0]["subsets"]
    generated = subsets[-1]
    assert generated == {"image_dir": str(run / "class_images"), "num_repeats": 1, "class_tokens": "a photo of a dog", "caption_extension": ".txt", "is_reg": True}
    assert sum(1 for s in subsets if s["is_reg"]) == 2


def test_import_keeps_each_subsets_own_caption_extension_and_options_through_run_toml_and_export(tmp_path: Path) -> None:
    from core.config import load_config, save_config
    from core.kohya import run_config_from_kohya

    path = tmp_path / "dataset.toml"
    path.write_text(
        "[general]\ncaption_extension = '.txt'\n[[datasets]]\nresolution = 512\n"
        "  [[datasets.subsets]]\n  image_dir = 'a'\n  num_repeats = 2\n"
        "  [[datasets.subsets]]\n  image_dir = 'b'\n  caption_extension = '.caption'\n  keep_tokens = 2\n  flip_aug = true\n"
    )
    config = load_config(save_config(run_config_from_kohya(path), tmp_path / "run.toml"), complete=False)
    first, second = config.subsets
    assert "caption_extension" not in first and config.section("dataset")["caption_extension"] == ".txt"
    assert (second["caption_extension"], second["keep_tokens"], second["flip_aug"]) == (".caption", 2, True)
    config.set("model.path", "/models/sd15")
    exported = tomllib.loads(export_kohya(config, tmp_path / "kohya").written[0].read_text())["datasets"][0]["subsets"]
    assert exported[0]["caption_extension"] == ".txt" and "flip_aug" not in exported[0]
    assert (exported[1]["caption_extension"], exported[1]["keep_tokens"], exported[1]["flip_aug"]) == (".caption", 2, True)


@pytest.mark.parametrize("method", ["lora", "finetune"])
def test_export_carries_generated_captions_so_sd_scripts_reads_them_and_the_dataset_is_unchanged(tmp_path: Path, method: str) -> None:
    from core.captions.layer import CaptionerKey, CaptionLayer, content_hash
    from tests.test_captions import _tree

    folder = tmp_path / "data" / "3_sks dog"
    folder.mkdir(parents=True)
    for name, colour in (("a", (200, 0, 0)), ("b", (0, 200, 0))):
        write_image(folder / f"{name}.png", (32, 32), colour)
    (folder / "a.txt").write_text("my caption")
    CaptionLayer().put(content_hash(folder / "b.png"), CaptionerKey("florence2", "m"), "a generated caption")
    before = _tree(tmp_path / "data")
    config = new_config("gen", "/models/sd15", "sd1", method, [{"path": str(folder), "repeats": 3, "token": "sks dog"}], {})
    export = export_kohya(config, tmp_path / "kohya")
    subset = tomllib.loads(export.written[0].read_text())["datasets"][0]["subsets"][0]
    if method == "finetune":
        metadata = json.loads(Path(subset["metadata_file"]).read_text())
        assert metadata[str(folder / "b.png")] == {"caption": "a generated caption"}
    else:
        image_dir = Path(subset["image_dir"])
        assert image_dir == tmp_path / "kohya" / "captioned" / "01_3_sks dog"
        assert (image_dir / "b.png").resolve() == folder / "b.png" and (image_dir / "a.png").read_bytes() == (folder / "a.png").read_bytes()
        assert (image_dir / "b.txt").read_text() == "a generated caption\n" and (image_dir / "a.txt").read_text() == "my caption\n"
        assert any("1 generated captions" in note for note in export.notes)
    assert _tree(tmp_path / "data") == before


def test_export_names_the_masked_loss_and_the_validation_it_does_not_carry(tmp_path) -> None:
    from core.config import new_config
    from core.kohya_args import training_arguments

    config = new_config(
        "dog",
        "/models/sd15",
        "sd1",
        "lora",
        [{"path": str(tmp_path), "repeats": 1, "token": "dog"}],
        {"alpha_mask": True},
        validation={"split": 0.1},
        dataset_options={"mask_dir": str(tmp_path)},
    )
    paths = {"dataset_config": "d.toml", "output_dir": "out", "sample_prompts": "p.txt", "logging_dir": "logs"}

    unmapped = training_arguments(config, paths).unmapped

    assert {"settings.alpha_mask", "dataset.mask_dir", "[validation]"} <= set(unmapped)
