"""SD 3.5 after the machine went down: the whole run tree killed -9 after a checkpoint, then ``sdtui resume``
continues from that checkpoint to the end with the losses and learning rates of an uninterrupted run."""

from __future__ import annotations

from pathlib import Path

import pytest

from core.gpu import GpuSet
from core.launch.start import start_run
from tests.test_faults_runs import checkpoint_step, kill_tree
from tests.test_launch_support import no_leftovers, sdtui, wait_ended, wait_for  # noqa: F401 (no_leftovers is a fixture)
from tests.train_helpers import make_run, metrics

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("no_leftovers")]
CPU = GpuSet([], reason="test: CPU only")
#: 16 steps with a checkpoint every 4 and a cosine schedule: a resume that restarted the schedule or the data order shows in the losses.
SCHEDULE = {"max_steps": 16, "save_every_steps": 4, "keep_checkpoints": 2, "lr_scheduler": "cosine", "lr_warmup_steps": 2}


def _launched(root: Path, model: Path, data: Path) -> Path:
    """A tiny SD 3.5 LoRA run.toml (both CLIPs trained, every target), for ``sdtui train``'s launcher."""
    return make_run(root, model, data, "sd35", settings={"lora_targets": "all", "train_text_encoder": True}, schedule=SCHEDULE) / "run.toml"


def test_a_killed_sd35_run_resumes_from_its_checkpoint_with_the_losses_of_an_uninterrupted_one(tmp_path: Path, tiny_models, kohya_dataset) -> None:
    model = tiny_models("sd35")
    data = kohya_dataset(((4, "a photo of sks dog", 4),))
    runs = tmp_path / "runs"
    whole = start_run(_launched(tmp_path / "whole", model, data), runs, gpus=CPU)
    assert wait_ended(whole, 600)["state"] == "finished"
    reference = {m["step"]: m for m in metrics(whole.path, "step")}
    assert sorted(reference) == list(range(1, 17))

    run = start_run(_launched(tmp_path / "run", model, data), runs, gpus=CPU, allow_concurrent=True)
    wait_for(lambda: checkpoint_step(run) >= 4, 600, "the checkpoint of step 4")
    kill_tree(run)
    checkpoint = checkpoint_step(run)
    before = [m["step"] for m in metrics(run.path, "step")]
    assert checkpoint < 16 and before[-1] < 16, "killed before the end"

    resumed = sdtui(["resume", run.id, "--runs-dir", str(runs)], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"from step-{checkpoint}" in resumed.stdout
    final = wait_ended(run, 600)
    assert (final["state"], final["attempt"], final["step"]) == ("finished", 2, 16)
    lines = metrics(run.path, "step")
    assert [m["step"] for m in lines[len(before) :]] == list(range(checkpoint + 1, 17)), "the resume went on from the checkpoint, no step twice"
    last = {m["step"]: m for m in lines}
    assert sorted(last) == list(range(1, 17))
    for step, line in last.items():
        assert line["loss"] == pytest.approx(reference[step]["loss"], rel=1e-4), step
        assert line["lr"] == pytest.approx(reference[step]["lr"]), step
    assert (run.path / "output" / "tiny.safetensors").is_file()
