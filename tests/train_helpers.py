"""Helpers for the trainer tests: a run folder for a tiny model, and running the trainer on it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import tomlkit

REPO = Path(__file__).resolve().parents[1]

#: Fast defaults for the tiny models: small images, no 8-bit optimizer, no samples, no saves.
FAST_SETTINGS: dict[str, Any] = {
    "mixed_precision": "no",
    "optimizer": "adamw",
    "gradient_checkpointing": False,
    "cache_latents": False,
    "resolution": 64,
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "bucket_reso_steps": 64,
    "batch_size": 1,
    "lora_rank": 4,
    "lora_alpha": 4,
    "dataloader_workers": 0,
    "channels_last": False,
}
FAST_SCHEDULE: dict[str, Any] = {
    "epochs": 1,
    "max_steps": 0,
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "save_every_epochs": 0,
    "save_every_steps": 0,
    "sample_every_steps": 0,
    "seed": 7,
}


def make_run(
    root: Path,
    model: Path | str,
    dataset: Path,
    family: str = "sd1",
    method: str = "lora",
    settings: dict[str, Any] | None = None,
    schedule: dict[str, Any] | None = None,
    prompts: list[str] | None = None,
    method_extra: dict[str, Any] | None = None,
    processes: int = 1,
    name: str = "tiny",
) -> Path:
    """Write ``root/run.toml`` for the tiny model and a kohya dataset; return the run folder."""
    root.mkdir(parents=True, exist_ok=True)
    subsets = []
    for folder in sorted(p for p in Path(dataset).iterdir() if p.is_dir()):
        repeats, _, token = folder.name.partition("_")
        subsets.append({"path": str(folder), "repeats": int(repeats), "token": token, "is_reg": False})
    doc: dict[str, Any] = {
        "name": name,
        "model": {"path": str(model), "family": family},
        "dataset": {"subsets": subsets},
        "method": {"kind": method, **(method_extra or {})},
        "settings": {**FAST_SETTINGS, **(settings or {})},
        "schedule": {**FAST_SCHEDULE, **(schedule or {})},
        "samples": {"prompts": prompts or []},
        "distributed": {"num_processes": processes},
    }
    (root / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    return root


def add_reg_subset(run_dir: Path, folder: Path, repeats: int = 1, token: str = "dog") -> None:
    """Add a regularisation (class images) subset to run.toml."""
    path = run_dir / "run.toml"
    doc = tomlkit.parse(path.read_text(encoding="utf-8"))
    doc["dataset"]["subsets"].append({"path": str(folder), "repeats": repeats, "token": token, "is_reg": True})
    path.write_text(tomlkit.dumps(doc), encoding="utf-8")


def train(run_dir: Path) -> int:
    """Run the trainer in this process (one rank); return its exit code."""
    from core.train.loop import main

    reset_accelerate()
    return main(str(run_dir))


def launch(
    run_dir: Path,
    processes: int = 2,
    env: dict[str, str] | None = None,
    timeout: float = 240,
    args: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the trainer under ``accelerate launch`` with ``processes`` CPU processes (real DDP, gloo);
    ``args`` are more options of ``python -m core.train`` (``--weights-hash FILE``)."""
    accelerate = Path(sys.executable).with_name("accelerate")
    argv = [str(accelerate), "launch", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    argv += ["--multi_gpu", "--num_processes", str(processes), "--main_process_port", "0"] if processes > 1 else ["--cpu", "--num_processes", "1"]
    argv += ["-m", "core.train", str(run_dir), *(args or [])]
    full_env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(argv, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)


def weight_hashes(path: Path, step: int) -> set[tuple[str, str]]:
    """``(rank, sha256)`` of each rank's trainable weights at ``step``, from a ``--weights-hash`` file."""
    lines = (line.split() for line in path.read_text().splitlines())
    return {(rank, digest) for rank, at, digest in lines if at == str(step)}


def metrics(run_dir: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The lines of metrics.jsonl (of one type when ``kind`` is given)."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [line for line in lines if kind is None or line["type"] == kind]


def status(run_dir: Path) -> dict[str, Any]:
    """status.json as a dict."""
    return json.loads((run_dir / "status.json").read_text(encoding="utf-8"))


def reset_accelerate() -> None:
    """Forget the accelerate state of a previous in-process run (its precision may differ)."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def set_up(run_dir: Path) -> Any:
    """A Trainer that has read its config, loaded the model and built data and optimizer (no steps yet)."""
    from core.train.loop import Trainer

    reset_accelerate()
    trainer = Trainer(run_dir)
    trainer.setup()
    if trainer.folder_lock is not None:  # tests set up several trainers of one folder in one process
        trainer.folder_lock.close()
        trainer.folder_lock = None
    return trainer


def first_batch(trainer: Any) -> dict[str, Any]:
    """The first batch of the trainer's first epoch."""
    data = trainer.session.data
    _, batch, _ = next(iter(data.iterate(0, data.for_epoch(0), 0)))
    return batch


def one_step(trainer: Any) -> float:
    """One micro-batch and one optimizer step on the first batch; returns the loss."""
    loss = trainer.stepper.micro_step(first_batch(trainer), 0, True, 1)
    trainer.stepper.optimizer_step()
    return float(loss)
