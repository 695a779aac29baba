"""Probe checks for bad input at the command line: numbers, paths and settings that once crashed,
started a doomed run or answered with a lie (issue 19).

Each check runs the real CLI (``python -m cli``) in its scratch folder, with the user folders
(cache, state) inside it, and holds when the answer is exit 2 with one sentence on stderr that
says what is wrong (no traceback, nothing started).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.probe.base import Check
from core.settings import SCHEMA

REPO = Path(__file__).resolve().parents[2]


def sdtui(args: Sequence[str], scratch: Path, timeout: float = 120, prefix: Sequence[str] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``sdtui ARGS`` (``python -m cli``) in ``scratch``, offline, with its user folders in it."""
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        XDG_CACHE_HOME=str(scratch / ".cache"),
        XDG_STATE_HOME=str(scratch / ".state"),
        XDG_DATA_HOME=str(scratch / ".data"),
    )
    env.pop("SDTUI_RUNS_DIR", None)
    command = [*prefix, sys.executable, "-m", "cli", *args]
    return subprocess.run(command, cwd=scratch, env=env, capture_output=True, text=True, timeout=timeout)


def refused(result: subprocess.CompletedProcess[str], *words: str) -> str | None:
    """None when the CLI refused with exit 2 and one ``sdtui:`` sentence holding ``words``; else what it did."""
    lines = result.stderr.strip().splitlines()
    said = lines[-1][:200] if lines else "nothing"
    if "Traceback" in result.stderr:
        return f"printed a traceback ending in {said!r}"
    if result.returncode != 2:
        return f"exit {result.returncode} instead of 2 (stderr: {said!r}; stdout: {result.stdout.strip()[:120]!r})"
    if len(lines) != 1 or not lines[0].startswith("sdtui: "):
        return f"stderr is not one 'sdtui:' sentence: {result.stderr.strip()[:200]!r}"
    missing = [w for w in words if w.lower() not in lines[0].lower()]
    return f"the sentence {lines[0]!r} does not name {', '.join(missing)}" if missing else None


def dataset(scratch: Path, images: int = 2) -> Path:
    """A kohya dataset with ``images`` small PNGs in ``10_probe dog``."""
    from PIL import Image

    folder = scratch / "dataset" / "10_probe dog"
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(images):
        Image.new("RGB", (64, 64), (40 * n % 255, 90, 160)).save(folder / f"img{n}.png")
    return folder.parent


def model_folder(scratch: Path, unet: Sequence[str] = ("diffusers", "UNet2DConditionModel")) -> Path:
    """A diffusers-shaped SD1 folder (configs only; nothing here is ever loaded) whose model_index.json names ``unet``."""
    model = scratch / "model"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        (model / part).mkdir(parents=True, exist_ok=True)
    (model / "unet" / "config.json").write_text(json.dumps({"cross_attention_dim": 768, "sample_size": 64}))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "unet": list(unet),
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDPMScheduler"],
    }
    (model / "model_index.json").write_text(json.dumps(index))
    return model


def run_config(scratch: Path, extra: str = "", model: Path | None = None) -> Path:
    """A run.toml for the probe's model folder and dataset, with ``extra`` TOML lines appended."""
    model = model or model_folder(scratch)
    subset = next(dataset(scratch).iterdir())
    config = scratch / "run.toml"
    config.write_text(f'name = "probe"\n[model]\npath = "{model}"\nfamily = "sd1"\n[[dataset.subsets]]\npath = "{subset}"\nrepeats = 10\ntoken = "probe dog"\n{extra}')
    return config


def float_settings() -> list[str]:
    """Every float setting of run.toml as ``section.key`` (settings added later are covered too)."""
    return [f"{section}.{key}" if section else key for section, keys in SCHEMA.items() for key, s in keys.items() if s.type is float]


def _every_float_refuses(value: str) -> Check:
    def run(scratch: Path) -> str | None:
        for name in float_settings():
            problem = refused(sdtui(["--gpus", "1x4090", "plan", "--model", "sd1", "--set", f"{name}={value}"], scratch), name.rpartition(".")[2])
            if problem:
                return f"--set {name}={value}: {problem}"
        return None

    return Check(f"inputs: --set SETTING={value} is refused for every float setting (plan)", run, slow=True)


def _nan_in_run_toml(scratch: Path) -> str | None:
    config = run_config(scratch, "[schedule]\nlearning_rate = nan\n")
    runs = scratch / "runs"
    problem = refused(sdtui(["train", str(config), "--runs-dir", str(runs)], scratch), "learning_rate", "finite")
    if problem is None and runs.is_dir() and any(runs.iterdir()):
        return "train refused the config but left a run folder behind"
    return problem


def _nan_on_train(scratch: Path) -> str | None:
    config = run_config(scratch)
    runs = scratch / "runs"
    problem = refused(sdtui(["train", str(config), "--runs-dir", str(runs), "--set", "settings.caption_dropout_rate=nan"], scratch), "caption_dropout_rate")
    if problem is None and runs.is_dir() and any(runs.iterdir()):
        return "train refused the setting but left a run folder behind"
    return problem


def _readonly_prefix(folder: Path) -> list[str] | None:
    """A command prefix under which ``folder`` is read-only: a private read-only bind mount (root),
    or nothing after ``chmod a-w`` (any other user); None when neither can be had."""
    if os.geteuid() != 0:
        for path in (folder, *folder.iterdir()):
            path.chmod(path.stat().st_mode & ~0o222)
        return []
    if shutil.which("unshare") is None:
        return None
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    probe = subprocess.run(["unshare", "-m", "sh", "-c", script, str(folder), "true"], capture_output=True)
    return ["unshare", "-m", "sh", "-c", script, str(folder)] if probe.returncode == 0 else None


def _resume_read_only(scratch: Path) -> str | None:
    config = run_config(scratch)
    run = scratch / "runs" / "probe-run"
    run.mkdir(parents=True)
    shutil.copy(config, run / "run.toml")
    (run / "status.json").write_text(json.dumps({"state": "failed", "step": 0, "error": "the probe failed it"}))
    prefix = _readonly_prefix(run)
    if prefix is None:
        return "cannot make a read-only folder here (needs a non-root user, or root with unshare)"
    try:
        return refused(sdtui(["resume", str(run)], scratch, prefix=prefix), str(run), "writ")
    finally:
        for path in (run, *run.iterdir()):
            path.chmod(path.stat().st_mode | 0o200)


def _foreign_module(scratch: Path) -> str | None:
    """model_index.json naming a module of the scratch folder: refused before it is imported."""
    marker = scratch / "imported"
    (scratch / "probe_payload.py").write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil: pass\n")
    model = model_folder(scratch, ("probe_payload", "Evil"))
    for args in (["--gpus", "1x4090", "plan", "--model", str(model)], ["train", str(run_config(scratch, model=model)), "--runs-dir", str(scratch / "runs")]):
        problem = refused(sdtui(args, scratch), "probe_payload", "diffusers")
        if problem:
            return f"{args[2] if args[0] == '--gpus' else 'train'}: {problem}"
        if marker.exists():
            return "the module named in model_index.json was imported"
    return None


def _os_module(scratch: Path) -> str | None:
    return refused(sdtui(["--gpus", "1x4090", "plan", "--model", str(model_folder(scratch, ("os", "system")))], scratch), "'os'")


#: (name, the CLI arguments with {config}, {run} and {scratch} filled in, words the sentence must hold)
BAD_INPUTS: list[tuple[str, list[str], tuple[str, ...]]] = [
    ("export-kohya into /proc/self", ["export-kohya", "{config}", "/proc/self"], ("/proc/self",)),
    ("export-kohya into a file", ["export-kohya", "{config}", "{config}"], ("is a file",)),
    ("demo --workdir /proc/nope", ["demo", "--headless", "--workdir", "/proc/nope"], ("/proc/nope",)),
    ("demo --workdir a file", ["demo", "--headless", "--workdir", "{config}"], ("is a file",)),
    ("--runs-dir a file: runs", ["--runs-dir", "/etc/passwd", "runs"], ("/etc/passwd", "not a folder")),
    ("--runs-dir a file: runs --json", ["runs", "--json", "--runs-dir", "/etc/passwd"], ("/etc/passwd",)),
    ("--runs-dir a file: status", ["status", "x", "--runs-dir", "/etc/passwd"], ("/etc/passwd",)),
    ("--runs-dir a file: train", ["train", "{config}", "--runs-dir", "/etc/passwd"], ("/etc/passwd",)),
    ("--runs-dir a file: attach", ["attach", "x", "--runs-dir", "/etc/passwd"], ("/etc/passwd",)),
    ("logs -n -5", ["logs", "{run}", "-n", "-5"], ("-n", "-5")),
    ("logs -n 0", ["logs", "{run}", "-n", "0"], ("-n",)),
    ("logs -n many", ["logs", "{run}", "-n", "many"], ("-n",)),
    ("stop --grace nan", ["stop", "{run}", "--grace", "nan"], ("--grace",)),
    ("stop --grace -1", ["stop", "{run}", "--grace", "-1"], ("--grace",)),
    ("save --wait inf", ["save", "{run}", "--wait", "inf"], ("--wait",)),
    ("pause --wait -3", ["pause", "{run}", "--wait", "-3"], ("--wait",)),
    ("scan --resolution 0", ["scan", "{scratch}/dataset", "--resolution", "0"], ("--resolution",)),
    ("scan --resolution 100000", ["scan", "{scratch}/dataset", "--resolution", "100000"], ("resolution",)),
    ("scan of a file", ["scan", "/etc/passwd"], ("/etc/passwd",)),
    ("scan --reg of a file", ["scan", "{scratch}/dataset", "--reg", "/etc/passwd"], ("/etc/passwd",)),
    ("plan --epochs -1", ["--gpus", "1x4090", "plan", "--model", "sd1", "--epochs", "-1"], ("--epochs",)),
    ("plan --steps 0", ["--gpus", "1x4090", "plan", "--model", "sd1", "--steps", "0"], ("--steps",)),
    ("plan --price-per-gpu-hour nan", ["--gpus", "1x4090", "plan", "--model", "sd1", "--price-per-gpu-hour", "nan"], ("price",)),
    ("plan --data a file", ["--gpus", "1x4090", "plan", "--model", "sd1", "--data", "/etc/passwd"], ("/etc/passwd",)),
    ("plan --model a missing path", ["--gpus", "1x4090", "plan", "--model", "/proc/nope/model"], ("/proc/nope/model",)),
    ("plan of a folder as CONFIG", ["--gpus", "1x4090", "plan", "/proc/self"], ("/proc/self",)),
    ("train of a folder as CONFIG", ["train", "/proc/self", "--runs-dir", "{scratch}/runs"], ("/proc/self",)),
    ("import-kohya into /proc/nope", ["import-kohya", "{kohya}", "/proc/nope/out.toml"], ("/proc/nope",)),
    ("import-kohya --prompts a folder", ["import-kohya", "{kohya}", "{scratch}/out.toml", "--prompts", "/proc/self"], ("/proc/self",)),
    ("train /dev/zero as CONFIG", ["train", "/dev/zero", "--runs-dir", "{scratch}/runs"], ("/dev/zero", "not a regular file")),
    ("export-kohya /dev/zero as CONFIG", ["export-kohya", "/dev/zero", "{scratch}/out"], ("/dev/zero",)),
    ("import-kohya /dev/zero", ["import-kohya", "/dev/zero", "{scratch}/out.toml"], ("/dev/zero",)),
    ("import-kohya --prompts /dev/zero", ["import-kohya", "{kohya}", "{scratch}/out.toml", "--prompts", "/dev/zero"], ("/dev/zero",)),
    ("--set of a bad number", ["--gpus", "1x4090", "plan", "--model", "sd1", "--set", "schedule.learning_rate=fast"], ("learning_rate",)),
]


def _bad_input(args: list[str], words: tuple[str, ...]) -> Check:
    def run(scratch: Path) -> str | None:
        config = run_config(scratch)
        run_folder = scratch / "runs" / "probe-run"
        run_folder.mkdir(parents=True)
        shutil.copy(config, run_folder / "run.toml")
        (run_folder / "status.json").write_text(json.dumps({"state": "stopped", "step": 0}))
        kohya = scratch / "kohya.toml"
        kohya.write_text(f'[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "{next(dataset(scratch).iterdir())}"\nnum_repeats = 10\n')
        filled = [a.format(config=config, run=run_folder, scratch=scratch, kohya=kohya) for a in args]
        return refused(sdtui(filled, scratch, timeout=60), *[w.format(config=config, scratch=scratch) for w in words])

    return run


CHECKS: list[Check] = [
    *(Check(f"inputs: {name}", _bad_input(args, words)) for name, args, words in BAD_INPUTS),
    Check("inputs: learning_rate = nan in run.toml is refused by train", _nan_in_run_toml),
    Check("inputs: train --set caption_dropout_rate=nan is refused", _nan_on_train),
    _every_float_refuses("nan"),
    _every_float_refuses("inf"),
    Check("inputs: resume of a read-only run folder is one sentence", _resume_read_only),
    Check("inputs: model_index.json naming os is refused", _os_module),
    Check("inputs: model_index.json naming another module is refused before it is imported (plan, train)", _foreign_module),
]
