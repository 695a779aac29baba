"""The losses of fixed-seed tiny runs, bit for bit, as recorded before the trainer was restructured.

A restructuring of the trainer (families, objectives, the loop's parts) must not change what
it computes: each case trains a few steps in this process with one thread and compares every
step's loss with ``tests/data/golden_losses.json``. The last bits of a float sum depend on the
processor's kernels (AVX2 or AVX-512, the CPU's make), so the file holds one set of losses per
machine kind (:func:`machine_key`): on a recorded kind the losses must be bit-identical; on any
other they must agree with every recorded kind to 1e-4 relative, which a change of behaviour
does not. Record this machine's kind before a restructuring (``python -m tests.test_golden_losses``
adds or replaces it; naming cases records only those, e.g. a new family's) and the test holds the restructuring to bit identity here.
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import tomlkit

from tests.conftest import make_kohya
from tests.train_helpers import add_reg_subset, make_run, metrics, train

# every case trains the tiny model: functional
pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "data" / "golden_losses.json"

#: name -> (family, method, settings, model extra, with class images)
CASES: dict[str, tuple[str, str, dict[str, Any], dict[str, Any], bool]] = {
    "sd1-lora-minsnr-offset": ("sd1", "lora", {"min_snr_gamma": 5.0, "noise_offset": 0.05}, {}, False),
    "sd1-dreambooth-prior": ("sd1", "dreambooth", {"prior_loss_weight": 0.5}, {}, True),
    "sd1-textual-inversion": ("sd1", "textual_inversion", {"ti_num_vectors": 2, "ti_init_word": "dog"}, {}, False),
    "sd2-finetune-vpred-minsnr": ("sd2", "finetune", {"min_snr_gamma": 5.0}, {"prediction_type": "v_prediction"}, False),
    "sdxl-lora-text-encoder": ("sdxl", "lora", {"train_text_encoder": True, "clip_skip": 2}, {}, False),
    "sdxl-finetune-cached": ("sdxl", "finetune", {"cache_latents": True, "cache_text_encoder_outputs": True}, {}, False),
    "qwenimage-lora-blocks-cached": ("qwenimage", "lora", {"lora_targets": "attn_ff", "train_double_block_indices": "1", "cache_text_encoder_outputs": True}, {}, False),
    "flux2-lora-all": ("flux2", "lora", {"lora_targets": "all", "flow_weighting": "cosmap"}, {}, False),
    "flux-lora-attn-ff-shift": ("flux", "lora", {"lora_targets": "attn_ff", "guidance_scale": 2.0, "flow_weighting": "cosmap"}, {}, False),
    "sd35-lora-all-clip-mode": ("sd35", "lora", {"lora_targets": "all", "train_text_encoder": True, "flow_sampling": "mode"}, {}, False),
    "zimage-lora-cached-attn-ff": ("zimage", "lora", {"cache_latents": True, "cache_text_encoder_outputs": True, "lora_targets": "attn_ff"}, {}, False),
}
STEPS = 3
#: Relative agreement asked of a machine kind that is not recorded.
OTHER_MACHINE_RTOL = 1e-4


def machine_key() -> str:
    """The processor and torch build whose kernels decide a loss's last bits, e.g. ``AMD EPYC avx512f torch 2.13.0+cpu``."""
    import torch

    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    vector = next((f for f in ("amx_bf16", "avx512f", "avx2") if f in flags), "novec")
    return f"{model} {vector} torch {torch.__version__}"


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
    recorded: dict[str, dict[str, list[float]]] = json.loads(GOLDEN.read_text(encoding="utf-8"))
    losses = run_case(name, tmp_path, tiny_models)
    here = recorded.get(machine_key())
    if here is not None and name in here:
        assert losses == here[name]
    else:
        kinds = [kind for kind, cases in recorded.items() if name in cases]
        assert kinds, f"no machine kind has {name} recorded; run python -m tests.test_golden_losses {name}"
        for kind in kinds:
            assert losses == pytest.approx(recorded[kind][name], rel=OTHER_MACHINE_RTOL), kind


def _record(names: list[str]) -> None:
    """Record ``names`` (default: every case) for this machine kind, keeping its other cases."""
    import tempfile

    from core.train.model.tiny import build_tiny

    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        models: dict[str, Path] = {}

        def model_of(family: str) -> Path:
            if family not in models:
                models[family] = build_tiny(family, root / f"tiny-{family}" / "model")
            return models[family]

        found = {name: run_case(name, root / name, model_of) for name in sorted(names or CASES)}
    recorded = json.loads(GOLDEN.read_text(encoding="utf-8")) if GOLDEN.exists() else {}
    recorded[machine_key()] = {**(recorded.get(machine_key(), {}) if names else {}), **found}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(recorded, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(machine_key(), json.dumps(found, indent=1), file=sys.stderr)


if __name__ == "__main__":
    _record(sys.argv[1:])
