"""The embedded default: a tiny model of a family (SD 1.5 unless ``--family`` names another), a generated dataset and a run config ready to launch.

No UI here and no torch at import: the tiny model is built in a child process, so that the TUI
that calls this never loads the training stack.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import JobFailed, UserError
from core.runs.states import ENDED_STATES

FAMILY = "sd1"

#: The demo's run config (12 images × 10 repeats, batch 2: 60 steps an epoch, 120 in all): small enough to show a falling loss and new samples within a minute or two on a CPU.
DEMO_SETTINGS: dict[str, Any] = {
    "recipe": "",
    "mixed_precision": "no",
    "gradient_checkpointing": False,
    "optimizer": "adamw",
    "cache_latents": True,
    "cache_text_encoder_outputs": True,
    "train_text_encoder": False,
    "batch_size": 2,
    "resolution": 64,
    "min_bucket_reso": 64,
    "max_bucket_reso": 128,
    "bucket_reso_steps": 32,
    "lora_rank": 4,
    "lora_alpha": 4.0,
    "dataloader_workers": 0,
    "channels_last": False,
}
DEMO_SCHEDULE: dict[str, Any] = {
    "epochs": 2,
    "max_steps": 0,
    "gradient_accumulation": 1,
    "learning_rate": 5e-3,
    "lr_scheduler": "constant",
    "save_every_epochs": 1,
    "save_every_steps": 0,
    "sample_every_steps": 10,
    "sample_at_start": True,
}
DEMO_PROMPTS = [
    "a red circle, simple shape, white background --w 64 --h 64 --s 8 --d 1",
    "a blue square, simple shape, white background --w 64 --h 64 --s 8 --d 2",
]


@dataclass(frozen=True)
class DemoWorkspace:
    """The demo's folders: ``root/model`` (``root/model-<family>`` for another family than the default),
    ``root/dataset``, ``root/runs``, the config ``root/demo.toml`` and the tiny captioner ``root/captioner``."""

    root: Path
    model: Path
    dataset: Path
    runs: Path
    config: Path
    captioner: Path
    family: str = FAMILY


def workspace(workdir: str | Path, family: str = FAMILY) -> DemoWorkspace:
    """The paths of a demo work folder for ``family``'s tiny model (nothing is created)."""
    root = Path(workdir).expanduser().resolve()
    model = root / ("model" if family == FAMILY else f"model-{family}")
    return DemoWorkspace(root, model, root / "dataset", root / "runs", root / "demo.toml", root / "captioner", family)


#: The demo's captioner: the Florence-2 architecture with random weights, so its captions are random words.
CAPTIONER = "florence2"
CAPTIONER_NOTE = "the demo's captioner is a tiny Florence-2 with random weights: its captions are random words"


def build_model(model_dir: Path, captioner_dir: Path | None = None, timeout_s: float = 300.0, family: str = FAMILY) -> Path:
    """Build ``family``'s tiny model into ``model_dir`` and the tiny captioner into ``captioner_dir`` in one
    child process (each skipped when it is already there)."""
    jobs = [("from core.train.model.tiny import build_tiny\nbuild_tiny(sys.argv[1], sys.argv[2])", model_dir / "model_index.json")]
    if captioner_dir is not None:
        jobs.append(("from core.captions.tiny import build_florence2\nbuild_florence2(sys.argv[3])", captioner_dir / "config.json"))
    missing = [(code, marker) for code, marker in jobs if not marker.is_file()]
    if not missing:
        return model_dir
    result = subprocess.run(
        [sys.executable, "-c", "\n".join(["import sys", *(code for code, _ in missing)]), family, str(model_dir), str(captioner_dir)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if result.returncode != 0 or not all(marker.is_file() for _, marker in missing):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise JobFailed(f"building the tiny demo models in {model_dir.parent} failed ({last}); check that the training packages are installed (make setup)")
    return model_dir


def build_dataset(dataset_dir: Path) -> Path:
    """Generate the demo images (shapes and colours with captions) unless they are already there."""
    if dataset_dir.is_dir() and any(dataset_dir.iterdir()):
        return dataset_dir
    from core.dataset.demo_data import make_demo_dataset

    make_demo_dataset(dataset_dir)
    return dataset_dir


def demo_subsets(dataset_dir: Path) -> list[dict[str, Any]]:
    """The kohya subsets of the generated dataset (``<repeats>_<token>`` folders)."""
    subsets = []
    for folder in sorted(p for p in dataset_dir.iterdir() if p.is_dir()):
        repeats, _, token = folder.name.partition("_")
        if not repeats.isdigit():
            continue
        subsets.append({"path": str(folder), "repeats": int(repeats), "token": token, "is_reg": False})
    if not subsets:
        raise UserError(f"the demo dataset {dataset_dir} has no <repeats>_<token> folders; delete it and run sdtui demo again")
    return subsets


def demo_config(ws: DemoWorkspace, overrides: Sequence[str] = ()) -> Any:
    """The demo's RunConfig (core.config) with ``--set`` overrides applied."""
    from core.config import apply_overrides, new_config

    config = new_config(
        name="demo",
        model_path=str(ws.model),
        family=ws.family,
        method="lora",
        subsets=demo_subsets(ws.dataset),
        settings=dict(DEMO_SETTINGS),
        schedule=dict(DEMO_SCHEDULE),
        prompts=list(DEMO_PROMPTS),
    )
    if overrides:
        apply_overrides(config, list(overrides))
    return config


def prepare_demo(workdir: str | Path, overrides: Sequence[str] = (), family: str = FAMILY) -> DemoWorkspace:
    """Build ``family``'s tiny model and the dataset (once) and write ``demo.toml``; returns the workspace."""
    from core.config import save_config
    from core.families import spec

    spec(family)  # a UserError naming the families for an unknown one
    ws = workspace(workdir, family)
    ws.root.mkdir(parents=True, exist_ok=True)
    ws.runs.mkdir(exist_ok=True)
    build_model(ws.model, ws.captioner, family=family)
    build_dataset(ws.dataset)
    save_config(demo_config(ws, overrides), ws.config)
    return ws


def caption_demo(ws: DemoWorkspace, out: Callable[[str], None] = print) -> None:
    """The demo's caption step: the images without a caption file captioned by the tiny captioner in
    the captioning process (into the caption layer; the dataset is not changed)."""
    from core.captions.process import CaptionProcess, CaptionRequest

    out(f"captioning the images without a caption ({CAPTIONER_NOTE})")
    process = CaptionProcess(CaptionRequest(str(ws.dataset), CAPTIONER, str(ws.captioner)))
    for event in process.events():
        if event["type"] == "caption":
            out(f"  {Path(event['path']).name}: {event['caption']}")
    process.finish()


def progress_line(record: dict[str, Any], total: int | None) -> str | None:
    """One printed line for a metrics record worth telling (None for the rest)."""
    kind = record.get("type")
    if kind == "step":
        loss = record.get("loss")
        loss_text = "nan" if loss is None else f"{loss:.4f}"
        ips = record.get("images_per_s")
        speed = f"  {ips:.1f} img/s" if isinstance(ips, (int, float)) else ""
        return f"step {record.get('step')}/{total or '?'}  loss {loss_text}  lr {record.get('lr', 0):.2g}{speed}"
    if kind == "sample":
        return f"sample at step {record.get('step')}: {record.get('path')}"
    if kind == "checkpoint":
        return f"checkpoint at step {record.get('step')}: {record.get('path')}"
    if kind == "event" and record.get("level") in ("warning", "error"):
        return f"{record.get('level')}: {record.get('message')}"
    return None


def follow(run: Any, out: Callable[[str], None] = print, poll_s: float = 1.0, every_steps: int = 10) -> str:
    """Print the progress of a run until it ends; returns the final state."""
    from core.monitor import MetricsTail

    tail = MetricsTail(run.metrics)
    last_state = None
    while True:
        status = run.read_status()
        total = status.get("total_steps")
        for record in tail.poll():
            step = int(record.get("step") or 0)
            if record.get("type") == "step" and step % every_steps and step not in (1, total):
                continue
            line = progress_line(record, total)
            if line:
                out(line)
        state = run.state
        if state != last_state:
            out(f"state: {state}")
            last_state = state
        if state in ENDED_STATES:
            if state != "finished" and status.get("error"):
                out(f"error: {status.get('error')}" + (f" — {status['hint']}" if status.get("hint") else ""))
            return state
        time.sleep(poll_s)


def run_headless(workdir: str | Path, runs_dir: str | Path | None = None, overrides: Sequence[str] = (), out: Callable[[str], None] = print, family: str = FAMILY) -> int:
    """``sdtui demo --headless``: prepare, launch, follow to the end; 0 finished, 1 otherwise."""
    from core.launch.control import stop_run
    from core.launch.start import start_run

    out(f"preparing the demo in {Path(workdir).resolve()} (tiny {family} model, tiny captioner, generated dataset)")
    ws = prepare_demo(workdir, overrides, family)
    caption_demo(ws, out)
    run = start_run(ws.config, Path(runs_dir) if runs_dir else ws.runs, [])
    out(f"run {Path(run.path).name} started in {run.path}")
    try:
        state = follow(run, out)
    except KeyboardInterrupt:
        out("interrupted: stopping the run (it saves first)")
        stop_run(run)
        raise
    out(f"run {Path(run.path).name} {state}; outputs in {run.output}")
    return 0 if state == "finished" else 1
