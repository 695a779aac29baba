"""``sdtui demo``: the work folder it prepares, and the headless run to the end."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomlkit

from core.demo import prepare_demo, progress_line, workspace
from core.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FAST = ["--set", "schedule.max_steps=2", "--set", "schedule.sample_every_steps=2", "--set", "schedule.save_every_epochs=0"]


def _seed_model(workdir: Path, tiny_models, tiny_captioners: dict[str, Path]) -> None:
    """Copy the session's tiny model, captioner and tagger in, so the demo does not build others."""
    shutil.copytree(tiny_models("sd1"), workspace(workdir).model)
    shutil.copytree(tiny_captioners["florence2"], workspace(workdir).captioner)
    shutil.copytree(tiny_captioners["wd14"], workspace(workdir).tagger)


def test_prepare_demo_writes_model_dataset_and_config_once(tmp_path: Path, tiny_models, tiny_captioners) -> None:
    _seed_model(tmp_path / "demo", tiny_models, tiny_captioners)
    ws = prepare_demo(tmp_path / "demo", ["schedule.max_steps=7"])
    config = tomlkit.parse(ws.config.read_text())
    assert (ws.model / "model_index.json").is_file()
    images = sorted(ws.dataset.rglob("*.png"))
    assert len(images) == 12 and sum(p.with_suffix(".txt").is_file() for p in images) == 8, "the triangles are left to caption"
    assert (ws.captioner / "config.json").is_file() and (ws.tagger / "model.onnx").is_file() and (ws.tagger / "selected_tags.csv").is_file()
    assert config["model"]["path"] == str(ws.model) and config["model"]["family"] == "sd1"
    assert config["schedule"]["max_steps"] == 7 and config["settings"]["resolution"] == 64
    assert Path(config["dataset"]["subsets"][0]["path"]).parent == ws.dataset
    first = images[0].stat().st_mtime_ns
    prepare_demo(tmp_path / "demo")
    assert images[0].stat().st_mtime_ns == first, "a second demo reuses the generated dataset"


def test_prepare_demo_refuses_a_bad_override(tmp_path: Path, tiny_models, tiny_captioners) -> None:
    _seed_model(tmp_path / "demo", tiny_models, tiny_captioners)
    with pytest.raises(UserError, match="batch_size"):
        prepare_demo(tmp_path / "demo", ["settings.batch_size=0"])


def test_the_demo_builds_its_tiny_tagger_when_it_is_missing(tmp_path: Path) -> None:
    from core.demo import build_model

    model, tagger = tmp_path / "model", tmp_path / "tagger"
    model.mkdir()
    (model / "model_index.json").write_text("{}")  # there already: only the tagger is built
    build_model(model, tagger_dir=tagger)
    assert (tagger / "model.onnx").is_file() and "shape_girl_(demo)" in (tagger / "selected_tags.csv").read_text()


def test_progress_lines() -> None:
    assert progress_line({"type": "step", "step": 10, "loss": 0.5, "lr": 1e-3, "images_per_s": 3.2}, 120) == "step 10/120  loss 0.5000  lr 0.001  3.2 img/s"
    assert progress_line({"type": "sample", "step": 10, "path": "samples/a.png"}, 120) == "sample at step 10: samples/a.png"
    assert progress_line({"type": "event", "level": "info", "message": "x"}, 120) is None


@pytest.mark.slow
def test_headless_demo_trains_to_the_end(tmp_path: Path, tiny_models, tiny_captioners) -> None:
    _seed_model(tmp_path / "demo", tiny_models, tiny_captioners)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--headless", "--workdir", str(tmp_path / "demo"), *FAST],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env={**_env(), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "step 2/2" in result.stdout
    assert "sample at step 2" in result.stdout
    assert "state: finished" in result.stdout
    assert "its captions are random words" in result.stdout
    assert result.stdout.count("_triangle.png: ") == 4, "the demo captions its four uncaptioned images"
    runs = list((tmp_path / "demo" / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.jsonl").is_file()


def test_headless_demo_with_a_bad_override_exits_2(tmp_path: Path, tiny_models, tiny_captioners) -> None:
    _seed_model(tmp_path / "demo", tiny_models, tiny_captioners)
    result = subprocess.run(
        [sys.executable, "-m", "cli", "demo", "--headless", "--workdir", str(tmp_path / "demo"), "--set", "schedule.epochs=-1"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={**_env(), "PYTHONPATH": str(REPO)},
    )
    assert result.returncode == 2
    assert "epochs" in result.stderr and "Traceback" not in result.stderr


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
