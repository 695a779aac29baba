"""The losses of fixed-seed tiny runs, bit for bit, as recorded before the trainer was restructured.

A restructuring of the trainer (families, objectives, the loop's parts) must not change what
it computes: each case trains a few steps in this process with one thread and compares every
step's loss with ``tests/data/golden_losses.json`` exactly. Record the file again only when a
change of behaviour is intended: ``python -m tests.test_golden_losses``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.conftest import make_kohya
from tests.train_helpers import add_reg_subset, make_run, metrics, train

GOLDEN = Path(__file__).parent / "data" / "golden_losses.json"

#: name -> (family, method, settings, model extra, with class images)
CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], bool]] = {
    "sd1-lora-minsnr-offset": ("sd1", "lora", {"min_snr_gamma": 5.0, "noise_offset": 0.05}, {}, False),
    "sd1-dreambooth-prior": ("sd1", "dreambooth", {"prior_loss_weight": 0.5}, {}, True),
    "sd1-textual-inversion": ("sd1", "textual_inversion", {"ti_num_vectors": 2, "ti_init_word": "dog"}, {}, False),
    "sd2-finetune-vpred-minsnr": ("sd2", "finetune", {"min_snr_gamma": 5.0}, {"prediction_type": "v_prediction"}, False),
    "sdxl-lora-text-encoder": ("sdxl", "lora", {"train_text_encoder": True, "clip_skip": 2}, {}, False),
    "sdxl-finetune-cached": ("sdxl", "finetune", {"cache_latents": True, "cache_text_encoder_outputs": True}, {}, False),
}
STEPS = 3


def run_case(name: str, root: Path, model_of: Callable[[str], Path]) -> list[float]:
    """Train case ``name`` for STEPS steps under ``root`` with one thread; its step losses."""
    import torch

    family, method, settings, model_extra, with_classes = CASES[name]
    data = make_kohya(root / "data", ((2, "sks dog", 2),), (64, 64), True)
    extra = {"placeholder_token": "<sks>"} if method == "textual_inversion" else None
    run = make_run(root / "run", model_of(family), data, family, method, settings=settings, schedule={"max_steps": STEPS}, method_extra=extra)
    if with_classes:
        reg = make_kohya(root / "reg", ((1, "dog", 2),), (64, 64), True)
        add_reg_subset(run, reg / "1_dog")
    if model_extra:
        doc = tomlkit.parse((run / "run.toml").read_text(encoding="utf-8"))
        doc["model"].update(model_extra)
        (run / "run.toml").write_text(tomlkit.dumps(doc), encoding="utf-8")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train(run) == 0
    finally:
        torch.set_num_threads(threads)
    return [float(line["loss"]) for line in metrics(run, "step")]


@pytest.mark.parametrize("name", sorted(CASES))
def test_losses_are_bit_identical_to_the_recorded_ones(name, tmp_path, tiny_models):
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8"))[name]
    assert run_case(name, tmp_path, tiny_models) == recorded


def _record() -> None:
    import tempfile

    from core.train.tiny import build_tiny

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models: dict[str, Path] = {}

        def model_of(family: str) -> Path:
            if family not in models:
                models[family] = build_tiny(family, root / f"tiny-{family}" / "model")
            return models[family]

        found = {name: run_case(name, root / name, model_of) for name in sorted(CASES)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(found, indent=1) + "\n", encoding="utf-8")
    print(json.dumps(found, indent=1), file=sys.stderr)


if __name__ == "__main__":
    _record()
