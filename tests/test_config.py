"""run.toml: new → save → load round trip, comments kept, every bad input named with its line, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib

from core.config import apply_overrides, apply_recipe, load_config, new_config, save_config
from core.errors import UserError
from core.settings import SCHEMA, SETTINGS

HAND_WRITTEN = """\
# my dog run
name = "dog"  # the output name

[model]
path = "/models/sd15"  # where the weights live
family = "sd1"

[[dataset.subsets]]
path = "data/10_sks dog"
repeats = 10
token = "sks dog"

[[dataset.subsets]]
path = "/abs/reg/1_dog"
repeats = 1
is_reg = true

[settings]
# chosen on the 12 GB card
batch_size = 1  # keep it small
lora_alpha = 8

[schedule]
epochs = 5
"""


def write(tmp_path: Path, text: str, name: str = "run.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def make(tmp_path: Path, **kw):
    args = dict(
        name="sks",
        model_path="/models/sdxl",
        family="sdxl",
        method="lora",
        subsets=[{"path": str(tmp_path / "10_sks dog"), "repeats": 10, "token": "sks dog"}],
        settings={"batch_size": 2, "resolution": 1024},
        prompts=["a photo of sks dog --w 1024 --h 1024 --d 1"],
    )
    args.update(kw)
    return new_config(**args)


def test_new_config_saves_and_loads_back_identical_with_every_schema_key(tmp_path: Path) -> None:
    config = make(tmp_path, schedule={"max_steps": 300}, distributed={"num_processes": 2})
    path = save_config(config, tmp_path / "run.toml")
    text = path.read_text()
    data = tomllib.loads(text)
    for section, keys in SCHEMA.items():
        table = data if section == "" else data[section]
        assert set(keys) <= set(table), section
    assert "# recompute activations in backward" in text
    loaded = load_config(path)
    assert loaded.to_toml() == text
    assert (loaded.name, loaded.model_path, loaded.family, loaded.method) == ("sks", "/models/sdxl", "sdxl", "lora")
    assert loaded.settings["batch_size"] == 2 and loaded.settings["resolution"] == 1024
    assert loaded.schedule["max_steps"] == 300 and loaded.distributed["num_processes"] == 2
    assert loaded.subsets == [{"path": str(tmp_path / "10_sks dog"), "repeats": 10, "token": "sks dog", "is_reg": False}]
    assert loaded.prompts == ["a photo of sks dog --w 1024 --h 1024 --d 1"]


def test_comments_and_order_survive_load_override_save(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HAND_WRITTEN))
    apply_overrides(config, ["batch_size=4", "schedule.max_steps=400", "settings.gradient_checkpointing=false"])
    text = save_config(config, tmp_path / "out.toml").read_text()
    for comment in ("# my dog run", "# the output name", "# where the weights live", "# chosen on the 12 GB card", "# keep it small"):
        assert comment in text
    assert "batch_size = 4  # keep it small" in text
    assert text.index("[model]") < text.index("[[dataset.subsets]]") < text.index("[settings]") < text.index("[schedule]")
    reloaded = load_config(tmp_path / "out.toml")
    assert reloaded.settings["gradient_checkpointing"] is False and reloaded.schedule["max_steps"] == 400


def test_accessors_fill_defaults_and_coerce_types(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, HAND_WRITTEN))
    assert config.settings["lora_alpha"] == 8.0 and isinstance(config.settings["lora_alpha"], float)
    assert config.settings["optimizer"] == SETTINGS["optimizer"].default
    assert config.schedule["epochs"] == 5 and config.schedule["learning_rate"] == SCHEMA["schedule"]["learning_rate"].default
    assert config.subsets[1] == {"path": "/abs/reg/1_dog", "repeats": 1, "token": "", "is_reg": True}
    assert config.caption_extensions == (".txt", ".caption")
    assert config.get("batch_size") == 1 and config.get("name") == "dog"


def test_a_run_toml_without_a_family_takes_the_models_not_sd1(tmp_path: Path) -> None:
    model = tmp_path / "my-xl"
    (model / "text_encoder_2").mkdir(parents=True)
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionXLPipeline"}')
    config = load_config(write(tmp_path, HAND_WRITTEN.replace('path = "/models/sd15"', f'path = "{model}"').replace('family = "sd1"\n', "")))
    assert config.family == "sdxl"
    unknown = load_config(write(tmp_path, HAND_WRITTEN.replace('path = "/models/sd15"', 'path = "someone/mystery-model"').replace('family = "sd1"\n', "")))
    with pytest.raises(UserError, match="cannot tell the family of hub model 'someone/mystery-model'"):
        _ = unknown.family


def test_relative_subset_paths_are_made_absolute_against_the_file(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    config = load_config(write(tmp_path / "conf", HAND_WRITTEN))
    assert config.subsets[0]["path"] == str(tmp_path / "conf" / "data" / "10_sks dog")
    assert f'path = "{tmp_path / "conf" / "data" / "10_sks dog"}"' in config.to_toml()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('name = "x"\n[model\npath = 1\n', r"run.toml line 2, column \d+: invalid TOML"),
        ("foo = 1\n", r"line 1: unknown section or key 'foo'; known: name and the sections model"),
        ("[trainer]\nx = 1\n", r"line 1: unknown section or key 'trainer'"),
        ('[model]\npath = "m"\n[settings]\nbatchsize = 2\n', r"line 4: unknown key 'batchsize' in \[settings\] \(did you mean 'batch_size'\?\); known keys: recipe,"),
        ('[model]\npath = "m"\n[settings]\nbatch_size = 0\n', r"line 4: settings.batch_size = 0 is not allowed: batch_size must be at least 1"),
        ('[model]\npath = "m"\n[settings]\nbatch_size = "2"\n', r"line 4: settings.batch_size must be a whole number"),
        ('[model]\npath = "m"\n[settings]\noptimizer = "sgd"\n', r"line 4: .*optimizer must be one of adamw, adamw8bit"),
        ('[model]\npath = "m"\n\n[schedule]\nepochs = 3\nseed = -1\n', r"line 6: schedule.seed = -1 is not allowed"),
        ('[model]\nfamily = "sdxl"\n', r"has no \[model\] path; add path ="),
        ('[model]\nfamily = "sd3"\npath = "m"\n', r"line 2: model.family = 'sd3' is not allowed: family must be one of sd1, sd2, sdxl"),
        ('[model]\npath = "m"\n', r"has no \[\[dataset.subsets\]\]; add one"),
        ('[model]\npath = "m"\n[[dataset.subsets]]\nrepeats = 2\n', r"line 3: this \[\[dataset.subsets\]\] has no path"),
        (
            '[model]\npath = "m"\n[[dataset.subsets]]\npath = "a"\n\n[[dataset.subsets]]\npath = "b"\nrepeat = 3\n',
            r"line 8: unknown key 'repeat' in \[\[dataset.subsets\]\] \(did you mean 'repeats'\?\)",
        ),
        ('[model]\npath = "m"\n[[dataset.subsets]]\npath = "a"\nrepeats = 0\n', r"line 5: \[\[dataset.subsets\]\] repeats = 0 is not allowed"),
        ('[model]\npath = "m"\n[[dataset.subsets]]\npath = "a"\n[samples]\nprompts = [\n  "ok",\n  "bad --w 500",\n]\n', r"line 6: sample prompt 'bad --w 500': --w must be a multiple of 8"),
        ('model = "m"\n', r"line 1: model must be a \[model\] section"),
    ],
)
def test_bad_run_toml_is_a_user_error_naming_line_and_rule(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(UserError, match=expected):
        load_config(write(tmp_path, text))


def test_missing_config_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(UserError, match="is a folder"):
        load_config(tmp_path)


def test_overrides_set_values_and_reject_bad_ones(tmp_path: Path) -> None:
    config = make(tmp_path)
    apply_overrides(
        config, ["schedule.max_steps=400", "batch_size=3", "mixed_precision=fp16", "settings.use_dora=true", "schedule.learning_rate=5e-5", "name=other", "samples.prompts=a cat --w 512"]
    )
    assert config.schedule["max_steps"] == 400 and config.settings["batch_size"] == 3
    assert config.settings["mixed_precision"] == "fp16" and config.settings["use_dora"] is True
    assert config.schedule["learning_rate"] == 5e-5 and config.name == "other" and config.prompts == ["a cat --w 512"]
    with pytest.raises(UserError, match=r"unknown setting 'batchsize' in --set; did you mean batch_size\? spell it section.key=value"):
        apply_overrides(config, ["batchsize=2"])
    with pytest.raises(UserError, match=r"unknown setting 'schedule.max_step' in --set; did you mean schedule.max_steps\?"):
        apply_overrides(config, ["schedule.max_step=2"])
    with pytest.raises(UserError, match=r"--set batch_size=two: batch_size must be a whole number"):
        apply_overrides(config, ["batch_size=two"])
    with pytest.raises(UserError, match=r"--set optimizer=sgd: optimizer must be one of"):
        apply_overrides(config, ["optimizer=sgd"])
    with pytest.raises(UserError, match=r"override 'max_steps' is not key=value"):
        apply_overrides(config, ["max_steps"])
    assert config.settings["batch_size"] == 3


def test_apply_recipe_merges_settings_and_names_the_recipe(tmp_path: Path) -> None:
    config = make(tmp_path)
    apply_recipe(config, {"optimizer": "adafactor", "lora_rank": 32, "gradient_checkpointing": True}, "sdxl-lora-12gb")
    assert config.settings["optimizer"] == "adafactor" and config.settings["lora_rank"] == 32
    assert config.settings["recipe"] == "sdxl-lora-12gb" and config.settings["batch_size"] == 2
    with pytest.raises(UserError, match=r"recipe r sets unknown setting 'lora_rnk' \(did you mean 'lora_rank'\?\)"):
        apply_recipe(config, {"lora_rnk": 4}, "r")
    with pytest.raises(UserError, match="lora_rank must be at least 1"):
        apply_recipe(config, {"lora_rank": 0}, "r")


def test_new_config_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="family must be one of sd1, sd2, sdxl"):
        make(tmp_path, family="sd3")
    with pytest.raises(UserError, match=r"unknown setting settings.batchsize \(did you mean 'batch_size'\?\)"):
        make(tmp_path, settings={"batchsize": 2})
    with pytest.raises(UserError, match="a dataset subset has no path"):
        make(tmp_path, subsets=[{"repeats": 2}])
    with pytest.raises(UserError, match="--h must be a whole number"):
        make(tmp_path, prompts=["dog --h big"])


def test_new_config_takes_scan_subsets_and_saving_is_atomic(kohya_dataset, tmp_path: Path) -> None:
    from core.dataset.scan import scan_dataset

    scan = scan_dataset(kohya_dataset(subsets=((10, "sks dog", 2), (2, "cat", 1))), use_cache=False)
    config = make(tmp_path, subsets=scan.subsets)
    assert [(s["repeats"], s["token"]) for s in config.subsets] == [(10, "sks dog"), (2, "cat")]
    target = tmp_path / "runs" / "r1" / "run.toml"
    save_config(config, target)
    assert load_config(target).subsets == config.subsets
    assert [p.name for p in target.parent.iterdir()] == ["run.toml"]


def test_the_kohya_user_settings_take_set_overrides_and_prodigys_rate(tmp_path: Path) -> None:
    config = make(tmp_path)
    apply_overrides(
        config,
        [
            "lora_type=lokr",
            "optimizer=prodigy",
            "schedule.lr_scheduler=cosine_with_restarts",
            "schedule.lr_scheduler_num_cycles=3",
            "clip_skip=2",
            "bucket_no_upscale=true",
            "caption_prefix=ohwx",
            "save_precision=bf16",
            "logging.tensorboard=false",
            "samples.sampler=euler_a",
        ],
    )
    assert config.settings["lora_type"] == "lokr" and config.settings["clip_skip"] == 2 and config.settings["save_precision"] == "bf16"
    assert config.schedule["learning_rate"] == 1.0  # Prodigy's rule, since the same overrides give no rate
    assert config.schedule["lr_scheduler_num_cycles"] == 3 and config.section("logging")["tensorboard"] is False
    again = apply_overrides(make(tmp_path), ["optimizer=prodigy", "schedule.learning_rate=0.5"])
    assert again.schedule["learning_rate"] == 0.5
    fresh = new_config("x", "/m", "sd1", "lora", [{"path": str(tmp_path), "repeats": 1}], {"optimizer": "prodigy"})
    assert fresh.schedule["learning_rate"] == 1.0
    with pytest.raises(UserError, match=r"--set lora_type=lycoris: lora_type must be one of lora, loha, lokr"):
        apply_overrides(config, ["lora_type=lycoris"])
    with pytest.raises(UserError, match=r"--set save_precision=fp8: save_precision must be one of fp16, bf16, fp32"):
        apply_overrides(config, ["save_precision=fp8"])


def test_resolve_is_the_one_merge_and_names_a_bad_value() -> None:
    from core.settings import resolve

    merged = resolve("settings", {"batch_size": 2}, None, {"batch_size": "4", "gradient_checkpointing": "false"})
    assert merged["batch_size"] == 4 and merged["gradient_checkpointing"] is False and merged["ti_num_vectors"] == 4
    with pytest.raises(UserError, match=r"^settings\.batch_size = 0 is not allowed: batch_size must be at least 1$"):
        resolve("settings", {"batch_size": 0})
    with pytest.raises(UserError, match=r"^unknown setting schedule\.learning_rat; known: epochs"):
        resolve("schedule", {"learning_rat": 1e-4})
    assert resolve("subset", {"path": "/d/1_x"}) == {"path": "/d/1_x", "repeats": 1, "token": "", "is_reg": False}


FLOAT_SETTINGS = [(section, key) for section, keys in SCHEMA.items() for key, s in keys.items() if s.type is float]


@pytest.mark.parametrize(("section", "key"), FLOAT_SETTINGS, ids=[f"{s}.{k}" for s, k in FLOAT_SETTINGS])
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", float("nan"), float("inf")])
def test_every_float_setting_refuses_nan_and_inf(section: str, key: str, value: object) -> None:
    config = new_config("x", "/m", "sd1", "lora", [{"path": "/d", "repeats": 1}], {}, {}, [], {})
    with pytest.raises(UserError, match=rf"{section}\.{key}=.*: {key} must be a finite number"):
        apply_overrides(config, [f"{section}.{key}={value}"])


def test_nan_in_run_toml_is_refused_on_load(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text('name = "x"\n[model]\npath = "/m"\n[schedule]\nlearning_rate = nan\n')
    with pytest.raises(UserError, match=r"learning_rate .* must be a finite number"):
        load_config(path)


def test_values_the_family_cannot_take_are_refused_in_one_sentence(tmp_path: Path, monkeypatch) -> None:
    config = make(tmp_path)
    with pytest.raises(UserError, match=r'prediction_type = "flow" is not an objective the sdxl family trains with; set it to auto or to epsilon or v_prediction'):
        apply_overrides(config, ["model.prediction_type=flow"])
    with pytest.raises(UserError, match=r"settings.bucket_reso_steps = 12 does not cut sdxl latents into whole patches; set it to a multiple of 8"):
        apply_overrides(make(tmp_path), ["bucket_reso_steps=12"])
    assert apply_overrides(make(tmp_path), ["bucket_reso_steps=24"]).settings["bucket_reso_steps"] == 24

    from dataclasses import replace

    import core.settings
    from core.families import spec

    packed = replace(spec("sdxl"), objectives=("flow",), bucket_step=16)  # a family whose denoiser packs 2×2 latent patches
    monkeypatch.setattr(core.settings, "spec", lambda name: packed)
    with pytest.raises(UserError, match=r"set it to a multiple of 16"):
        apply_overrides(make(tmp_path), ["bucket_reso_steps=24"])
    assert apply_overrides(make(tmp_path), ["model.prediction_type=flow", "bucket_reso_steps=32"]).section("model")["prediction_type"] == "flow"
