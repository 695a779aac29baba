"""``sdtui scan``, ``sdtui plan`` and ``sdtui export-kohya`` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.main import main

DataFactory = Callable[..., Path]


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_sentence_error(err: str) -> str:
    """The error as the user sees it: one line starting with 'sdtui:', no traceback."""
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sdtui: "), err
    return lines[0]


# ---- scan -------------------------------------------------------------------------------------


def test_scan_table_lists_subsets_and_problems(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4), (3, "style", 2)), captions=False)
    code, out, _ = run(capsys, "scan", str(data))
    assert code == 0
    assert "10_sks dog" in out and "3_style" in out
    assert "46 items per epoch" in out
    assert "without a caption file will be captioned 'sks dog'" in out


def test_scan_json(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import write_image

    data = kohya_dataset(subsets=((5, "sks dog", 3),))
    reg = tmp_path / "class"
    write_image(reg / "c0.png")
    code, out, _ = run(capsys, "scan", str(data), "--reg", str(reg), "--json", "--resolution", "256")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 3 and result["items_per_epoch"] == 15 and result["reg_images"] == 1
    assert [s["is_reg"] for s in result["subsets"]] == [False, True]


def test_scan_without_usable_images_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    corrupt = tmp_path / "corrupt" / "10_sks dog"
    corrupt.mkdir(parents=True)
    (corrupt / "a.png").write_bytes(b"not a png at all")
    (corrupt / "b.jpg").write_bytes(b"")
    code, out, err = run(capsys, "scan", str(tmp_path / "corrupt"))
    assert code == 2
    assert "a.png" in out  # the table still lists every problem
    assert "no usable training image" in one_sentence_error(err)
    (tmp_path / "empty").mkdir()
    code, _, err = run(capsys, "scan", str(tmp_path / "empty"))
    assert code == 2 and "no usable training image" in one_sentence_error(err)


def test_scan_missing_folder_and_bad_resolution(tmp_path: Path, kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "scan", str(tmp_path / "nope"))
    assert code == 2 and out == ""
    assert "does not exist" in one_sentence_error(err)
    code, out, err = run(capsys, "scan", str(kohya_dataset()), "--resolution", "10")
    assert code == 2 and "resolution" in one_sentence_error(err)


# ---- plan ---------------------------------------------------------------------------------------


def test_plan_sdxl_lora_on_two_4090s(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4), (3, "style", 2)))
    code, out, err = run(capsys, "plan", "--model", "sdxl", "--data", str(data), "--method", "lora", "--gpus", "2x4090")
    assert code == 0, err
    assert "Recipe    sdxl-" in out
    assert "2 × GeForce RTX 4090 (simulated)" in out
    assert "GiB estimated peak of 24 GiB per GPU: fits" in out
    table = out[out.index("GPUs  eff. batch") :].splitlines()[2:6]
    assert [line.split()[0] for line in table] == ["1", "2", "4", "8"]


def test_plan_json_in_step_mode(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    code, out, _ = run(
        capsys,
        "--gpus",
        "1x4090",
        "plan",
        "--model",
        "sd1",
        "--data",
        str(data),
        "--recipe",
        "sd15-lora-8gb",
        "--steps",
        "80",
        "--set",
        "batch_size=2",
        "--set",
        "schedule.gradient_accumulation=2",
        "--json",
    )
    assert code == 0
    plan = json.loads(out)
    assert plan["recipe"] == "sd15-lora-8gb" and plan["settings"]["batch_size"] == 2
    assert [r["effective_batch"] for r in plan["schedule"]] == [4, 8, 16, 32]
    assert {r["total_steps"] for r in plan["schedule"]} == {80}
    assert any("step mode" in w for w in plan["warnings"])


def test_plan_from_a_run_config(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.config import new_config, save_config
    from core.dataset.scan import scan_dataset

    data = kohya_dataset(subsets=((10, "sks dog", 4), (2, "style", 3)))
    subsets = scan_dataset(data).subset_configs()
    subsets[0]["repeats"] = 20  # edited in the wizard: the plan follows run.toml, not the folder name
    path = save_config(new_config("dog", "runwayml/stable-diffusion-v1-5", "sd1", "lora", subsets, {"recipe": "sd15-lora-8gb", "batch_size": 1}, {"epochs": 3}), tmp_path / "run.toml")
    code, out, _ = run(capsys, "--gpus", "2x3090", "plan", str(path), "--json")
    assert code == 0
    plan = json.loads(out)
    assert plan["dataset"]["items_per_epoch"] == 86
    assert plan["schedule"][0]["total_steps"] == 3 * 86 and plan["schedule"][1]["total_steps"] == 3 * 43
    code, out, _ = run(capsys, "--gpus", "2x3090", "plan", str(path), "--epochs", "1", "--json")
    assert json.loads(out)["schedule"][0]["total_steps"] == 86


def test_plan_without_recipe_uses_the_fastest_that_fits(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    from core.gpu import parse_spec
    from core.plan.picker import pick_recipes
    from core.recipes import load_recipes

    data = kohya_dataset()
    code, out, _ = run(capsys, "--gpus", "1x4090", "plan", "--model", "sdxl", "--data", str(data), "--json")
    assert code == 0
    assert json.loads(out)["recipe"] == pick_recipes("sdxl", "lora", parse_spec("1x4090"), load_recipes())[0].name


def test_plan_detects_the_family_of_a_model_file(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import struct

    header = json.dumps({"conditioner.embedders.1.model.ln_final.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    model = tmp_path / "my-xl.safetensors"
    model.write_bytes(struct.pack("<Q", len(header)) + header + b"\0\0")
    code, out, _ = run(capsys, "--gpus", "1x4090", "plan", "--model", str(model), "--data", str(kohya_dataset()), "--json")
    assert code == 0 and json.loads(out)["model_family"] == "sdxl"


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gpus", "3xBANANA"], "3xBANANA"),
        (["--method", "dreamboat"], "method 'dreamboat' is unknown"),
        (["--recipe", "no-such-recipe"], "no-such-recipe"),
        (["--set", "batch_size=0"], "batch_size"),
        (["--set", "batch_size=-3"], "batch_size"),
        (["--set", "settings.no_such_key=1"], "no_such_key"),
        (["--epochs", "0"], "--epochs 0"),
        (["--recipe", "sd15-lora-8gb"], "sd15-lora-8gb"),
        (["--price-per-gpu-hour", "-1"], "negative"),
    ],
)
def test_plan_bad_options(argv: list[str], expected: str, kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset()
    gpus = argv[:2] if argv[0] == "--gpus" else ["--gpus", "1x4090"]
    rest = [] if argv[0] == "--gpus" else argv
    code, out, err = run(capsys, *gpus, "plan", "--model", "sdxl", "--data", str(data), *rest)
    assert code == 2 and out == ""
    assert expected in one_sentence_error(err)


def test_plan_bad_paths(tmp_path: Path, kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset()
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt" / "5_x"
    corrupt.mkdir(parents=True)
    (corrupt / "a.png").write_bytes(b"garbage")
    cases = [
        (["--model", "sdxl", "--data", str(tmp_path / "missing")], "does not exist"),
        (["--model", "sdxl", "--data", str(tmp_path / "empty")], "no usable training image"),
        (["--model", "sdxl", "--data", str(tmp_path / "corrupt")], "no usable training image"),
        (["--model", str(tmp_path / "nope.safetensors"), "--data", str(data)], "nope.safetensors"),
        (["--model", "sdxl", "--reg", str(data)], "--reg (class images) needs the training images too: add --data DIR"),
        (["--data", str(data)], "--model"),
    ]
    for argv, expected in cases:
        code, _, err = run(capsys, "--gpus", "1x4090", "plan", *argv)
        assert code == 2, argv
        assert expected in one_sentence_error(err), argv


def test_plan_without_data_gives_recipe_estimate_and_fit(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "plan", "--model", "sd1", "--method", "lora", "--gpus", "1x24GB")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[2].startswith("Recipe    sd15-lora") and lines[2].endswith("LoRA rank 32")
    assert lines[3].startswith("VRAM      ") and lines[3].endswith("of 24 GiB per GPU: fits (with 10% headroom)")
    assert "Dataset   none given (the schedule table needs --data DIR)" in lines
    assert "GPUs" not in [line.split()[0] for line in lines[7:] if line.strip()], "no schedule table without a dataset"
    assert "  ! no dataset given: the schedule table (steps, epochs and ETA on 1, 2, 4 and 8 GPUs) needs one; add --data DIR" in lines


def test_plan_json_without_data_has_an_empty_schedule_and_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--method", "lora", "--gpus", "1x8GB", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["schedule"] == [] and plan["dataset"] is None and plan["run"] is None
    assert plan["fits"] is True and plan["recipe"] == "sdxl-lora-8gb" and plan["vram_estimate_gb"] < 8
    assert any(w.startswith("no dataset given: the schedule table") and w.endswith("add --data DIR") for w in plan["warnings"])


def test_plan_without_data_says_when_nothing_fits(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--method", "finetune", "--gpus", "1x6GB", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["fits"] is False
    assert any(w.startswith("to fit: ") for w in plan["warnings"])


def test_plan_bad_config_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[settings\nbatch_size = 1\n')
    code, _, err = run(capsys, "plan", str(bad))
    assert code == 2 and "bad.toml" in one_sentence_error(err)
    code, _, err = run(capsys, "plan", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in one_sentence_error(err)


# ---- export-kohya and the real console script -----------------------------------------------------


def test_export_kohya(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.config import new_config, save_config
    from core.dataset.scan import scan_dataset

    subsets = scan_dataset(kohya_dataset()).subset_configs()
    path = save_config(new_config("dog", "runwayml/stable-diffusion-v1-5", "sd1", "lora", subsets, {}, prompts=["a photo of sks dog --w 512 --h 512"]), tmp_path / "run.toml")
    code, out, _ = run(capsys, "export-kohya", str(path), str(tmp_path / "kohya"))
    assert code == 0
    written = [Path(line) for line in out.splitlines()]
    assert written and all(p.is_file() for p in written)
    assert "10_sks dog" in (tmp_path / "kohya" / "dataset_config.toml").read_text()
    code, _, err = run(capsys, "export-kohya", str(tmp_path / "missing.toml"), str(tmp_path / "k2"))
    assert code == 2 and "missing.toml" in one_sentence_error(err)
    code, _, err = run(capsys, "export-kohya", str(path), str(path))
    assert code == 2 and "is a file" in one_sentence_error(err)
    code, _, err = run(capsys, "export-kohya", str(path), str(tmp_path / "kohya"))
    assert code == 2 and "is not an empty folder" in one_sentence_error(err)


def test_export_kohya_of_a_prodigy_lokr_run_says_what_has_no_sd_scripts_option(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.config import new_config, save_config
    from core.dataset.scan import scan_dataset

    subsets = scan_dataset(kohya_dataset()).subset_configs()
    settings = {"optimizer": "prodigy", "lora_type": "lokr", "clip_skip": 2, "ema": True}
    path = save_config(new_config("dog", "/models/sd15.safetensors", "sd1", "lora", subsets, settings), tmp_path / "run.toml")
    code, _, err = run(capsys, "export-kohya", str(path), str(tmp_path / "kohya"))
    assert code == 0 and "Traceback" not in err
    text = (tmp_path / "kohya" / "training_config.toml").read_text()
    assert 'optimizer_type = "Prodigy"' in text and 'network_module = "lycoris.kohya"' in text and "clip_skip = 2" in text
    assert f"accelerate launch train_network.py --config_file {tmp_path / 'kohya' / 'training_config.toml'}" in err
    assert "note: not exported, train_network.py has no option for: settings.ema, settings.lora_targets = attn" in err


def test_bucket_sides_that_do_not_frame_the_resolution_are_refused(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.config import new_config, save_config
    from core.dataset.scan import scan_dataset

    subsets = scan_dataset(kohya_dataset()).subset_configs()
    path = save_config(new_config("dog", "/models/sd15.safetensors", "sd1", "lora", subsets, {"resolution": 64, "min_bucket_reso": 256}), tmp_path / "run.toml")
    for argv in (("export-kohya", str(path), str(tmp_path / "kohya")), ("plan", str(path))):
        code, _, err = run(capsys, *argv)
        assert code == 2 and "settings.min_bucket_reso = 256 is larger than settings.resolution = 64; set min_bucket_reso to 64 or less" in one_sentence_error(err)
    assert not (tmp_path / "kohya").exists()
    path = save_config(new_config("dog", "/models/sd15.safetensors", "sd1", "lora", subsets, {"resolution": 512}), tmp_path / "ok.toml")
    code, _, err = run(capsys, "plan", str(path), "--set", "max_bucket_reso=256")
    assert code == 2 and "settings.max_bucket_reso = 256 is smaller than settings.resolution = 512" in one_sentence_error(err)


def test_console_script(kohya_dataset: DataFactory, tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("sdtui")
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    data = kohya_dataset()
    ok = subprocess.run([str(script), "plan", "--model", "sdxl", "--data", str(data), "--gpus", "2x4090"], capture_output=True, text=True, env=env, timeout=60)
    assert ok.returncode == 0, ok.stderr
    assert "24 GiB" in ok.stdout
    bad = subprocess.run([str(script), "plan", "--model", "sdxl", "--data", str(tmp_path / "nope")], capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "does not exist" in bad.stderr


def test_memory_is_written_in_one_named_unit(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    import re

    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--data", str(data), "--method", "finetune", "--gpus", "1x8GB", "--set", "optimizer=adamw")
    assert code == 0 and "GiB estimated peak of 8 GiB per GPU: DOES NOT FIT" in out
    assert "does not fit in 8 GiB per GPU" in out
    code, catalog, _ = run(capsys, "gpus", "--catalog")
    assert code == 0 and "24 GiB" in catalog
    for text in (out, catalog):
        assert not re.search(r"\d GB\b", text), text


def test_plan_of_an_unrecognised_model_folder_exits_2_with_one_sentence(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "mystery"
    (folder / "unet").mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "SomePipeline"}))
    (folder / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 320}))
    code, out, err = run(capsys, "--gpus", "1x4090", "plan", "--model", str(folder), "--data", str(kohya_dataset()), "--json")
    assert code == 2 and out == ""
    assert "is no model family sdtui recognises" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_plan_json_has_the_validation_entry_and_its_cost_in_the_eta(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str]) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 8),))
    base = ("--gpus", "1x4090", "plan", "--model", "sd1", "--data", str(data), "--recipe", "sd15-lora-8gb", "--steps", "40")
    _, out, _ = run(capsys, *base, "--json")
    plain = json.loads(out)
    code, out, _ = run(capsys, *base, "--set", "validation.split=0.25", "--set", "validation.every_n_steps=10", "--json")
    assert code == 0
    plan = json.loads(out)

    assert plain["validation"] is None
    entry = plan["validation"]
    assert (entry["source"], entry["images"], entry["held_out"], entry["every_n_steps"], entry["runs"]) == ("split", 2, 2, 10, 4)
    assert entry["cost_s"] > 0
    assert plan["dataset"]["items_per_epoch"] == 60 and plain["dataset"]["items_per_epoch"] == 80  # the held-out images never train
    assert plan["run"]["eta_s"] == pytest.approx(plain["run"]["eta_s"] + entry["cost_s"], abs=0.2)
    code, out, _ = run(capsys, *base, "--set", "validation.split=0.25", "--set", "validation.every_n_steps=10")
    assert "Validation 2 images held out of the training images, loss every 10 steps at 5 fixed timesteps: 4 times" in out


@pytest.mark.parametrize(
    ("setting", "wording"),
    [
        ("validation.split=0.5", "--set validation.split=0.5: split must be below 0.5"),
        ("validation.every_n_steps=0", "--set validation.every_n_steps=0: every_n_steps must be at least 1"),
    ],
)
def test_validation_settings_out_of_range_are_one_sentence(kohya_dataset: DataFactory, capsys: pytest.CaptureFixture[str], setting: str, wording: str) -> None:
    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    code, _, err = run(capsys, "plan", "--model", "sd1", "--data", str(data), "--set", setting)
    assert code == 2
    assert wording in one_sentence_error(err)


def test_a_validation_folder_that_is_not_there_is_one_sentence(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from core.config import new_config, save_config
    from core.dataset.scan import scan_dataset

    data = kohya_dataset(subsets=((10, "sks dog", 4),))
    config = new_config("dog", "runwayml/stable-diffusion-v1-5", "sd1", "lora", scan_dataset(data).subset_configs(), {"recipe": "sd15-lora-8gb"})
    config.set("validation.folder", str(tmp_path / "nowhere"))
    path = save_config(config, tmp_path / "run.toml")
    code, _, err = run(capsys, "plan", str(path))
    assert code == 2
    assert "validation.folder = " in one_sentence_error(err) and "is not a folder" in err


def test_scan_and_plan_report_images_without_a_mask_and_masks_without_an_image(kohya_dataset: DataFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    data = kohya_dataset(subsets=((10, "sks dog", 2),))
    masks = tmp_path / "masks"
    masks.mkdir()
    Image.new("L", (8, 8), 255).save(masks / "img000.png")
    Image.new("L", (8, 8), 255).save(masks / "stray.png")

    code, out, _ = run(capsys, "scan", str(data), "--masks", str(masks), "--json")
    assert code == 0
    found = {(Path(p["path"]).name, p["severity"]) for p in json.loads(out)["problems"]}
    assert {("img001.png", "warning"), ("stray.png", "warning")} <= found and ("img000.png", "warning") not in found
    code, out, _ = run(capsys, "plan", "--model", "sd1", "--data", str(data), "--set", f"dataset.mask_dir={masks}", "--json")
    warnings = json.loads(out)["warnings"]
    assert any("img001.png: the image has no mask in the mask folder" in w for w in warnings)
    assert any("stray.png: the mask has no training image with the same name" in w for w in warnings)


def test_plan_shows_the_ram_need_and_says_when_the_machine_is_short(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--method", "lora", "--gpus", "1x6GB", "--ram", "64GB")
    assert code == 0 and "RAM       " in out and "of 64 GiB: fits" in out
    assert "Memory    " in out and " base" in out  # a quantized base opens SDXL LoRA on 6 GB
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--method", "lora", "--gpus", "1x6GB", "--ram", "6GB", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["fits"] is False and plan["ram"]["fits"] is False and plan["ram"]["have_gb"] == 6
    assert any("GiB of RAM while loading" in w and "more RAM" in w for w in plan["warnings"])
    # without --ram, simulated GPUs are another machine's: the need is shown, not judged
    code, out, _ = run(capsys, "plan", "--model", "sdxl", "--method", "lora", "--gpus", "1x24GB", "--json")
    assert json.loads(out)["ram"]["have_gb"] is None and json.loads(out)["ram"]["need_gb"] > 2


def test_a_bad_ram_size_is_one_sentence(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["plan", "--model", "sdxl", "--ram", "lots"])
    assert exit_info.value.code == 2 and "like 64GB" in capsys.readouterr().err


def test_the_plan_says_which_peak_it_estimates(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "plan", "--model", "sd1", "--method", "lora", "--gpus", "1x24GB", "--json")
    plan = json.loads(out)
    peaks = plan["memory"]["peaks_gb"]
    assert code == 0 and peaks["allocated"] < peaks["reserved"] < peaks["nvidia_smi"] == plan["vram_estimate_gb"]
    assert any("nvidia-smi" in n and "max_memory_allocated" in n for n in plan["notes"])


def test_a_variant_with_more_blocks_than_its_family_default_may_swap_them(capsys: pytest.CaptureFixture[str]) -> None:
    """FLUX.2 [dev] has 56 blocks where the default klein 4B has 25: the plan's 52 swapped blocks are checked against dev's."""
    assert main(["plan", "--model", "flux2-dev", "--method", "lora", "--gpus", "1x24GB", "--ram", "128GB"]) == 0
    out = capsys.readouterr().out
    assert "blocks swapped" in out and "fits" in next(line for line in out.splitlines() if line.startswith("VRAM"))
    assert main(["plan", "--model", "flux2-dev", "--method", "lora", "--gpus", "1x24GB", "--set", "blocks_to_swap=56"]) == 2
    assert "the flux2-dev denoiser has 56 blocks" in capsys.readouterr().err
