"""The learning rate, text-encoder rate, LR schedule and warm-up a run starts from.

One home for the rule: :func:`schedule_defaults` takes the family, the method and the
optimizer. The figures come from the peers' documented defaults (sd-scripts docs, OneTrainer
presets, the diffusers examples); each is cited in docs/learning-rates.md. An optimizer
with its own rule (Prodigy at 1.0) is taken from ``core.settings.optimizer_learning_rate``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from core.families import spec
from core.families.spec import LrDefault
from core.settings import optimizer_learning_rate

#: method → the AdamW-family default of every family; a full-weight method's rates are the
#: family's own (its spec's ``full_weight_rates``, sources cited there).
_DEFAULTS: dict[str, LrDefault] = {
    # sd-scripts docs/train_network.md: learning_rate/unet_lr 1e-4, text_encoder_lr 1e-5 ("smaller
    # than U-Net"); diffusers LoRA examples 1e-4 constant, no warm-up.
    "lora": LrDefault(1e-4, 1e-5, "constant", 0),
    # diffusers examples/textual_inversion 5e-4; OneTrainer embedding presets 3e-4, 20 warm-up steps.
    "textual_inversion": LrDefault(5e-4, 0.0, "constant_with_warmup", 20),
}

#: Learning rates outside these bounds are far from what the peers use for the method (AdamW family).
_RANGES: dict[str, tuple[float, float]] = {
    "lora": (1e-5, 2e-3),
    "dreambooth": (1e-7, 2e-5),
    "finetune": (1e-7, 3e-5),
    "textual_inversion": (5e-5, 1e-2),
}

#: Lion takes a rate 3-10× smaller than AdamW (lion-pytorch README, the Lion paper).
LION_FACTOR = 1 / 3


def _base(family: str, method: str) -> LrDefault:
    spec(family).check_method(method)  # a method the family does not train: its sentence, not a missing default
    found = spec(family).full_weight_rates.get(method) or _DEFAULTS.get(method)
    if found is None:
        raise KeyError(f"no learning-rate default for {method} on {family}")
    return found


def schedule_defaults(family: str, method: str, optimizer: str) -> dict[str, Any]:
    """The [schedule] keys a new run of ``method`` on ``family`` with ``optimizer`` starts from.

    An optimizer with its own rate rule (``core.settings.optimizer_learning_rate``: Prodigy's
    1.0, a multiplier of its own step-size estimate) takes it for the UNet and the text encoders.
    """
    base = _base(family, method)
    rule = optimizer_learning_rate(optimizer)
    if rule is not None:
        rates = (rule, rule if base.text_encoder_lr else 0.0)
    else:
        factor = LION_FACTOR if optimizer.startswith("lion") else 1.0
        rates = (base.learning_rate * factor, base.text_encoder_lr * factor)
    return {
        "learning_rate": rates[0],
        "text_encoder_lr": rates[1],
        "lr_scheduler": base.lr_scheduler,
        "lr_warmup_steps": base.lr_warmup_steps,
    }


def usual_range(method: str, optimizer: str) -> tuple[float, float]:
    """The learning rates the peers use for ``method`` with ``optimizer`` (lowest, highest)."""
    rule = optimizer_learning_rate(optimizer)
    if rule is not None:
        return rule / 10, rule * 10
    low, high = _RANGES[method]
    factor = LION_FACTOR if optimizer.startswith("lion") else 1.0
    return low * factor, high * factor


def lr_warnings(family: str, method: str, optimizer: str, schedule: Mapping[str, Any]) -> list[str]:
    """A sentence for each learning rate far outside the method's usual range (an optimizer with
    its own rule is checked by ``core.settings.optimizer_rule_warnings`` instead)."""
    if optimizer_learning_rate(optimizer) is not None:
        return []
    low, high = usual_range(method, optimizer)
    default = schedule_defaults(family, method, optimizer)
    warnings = []
    rates = [("schedule.learning_rate", float(schedule["learning_rate"]), low)]
    if float(schedule.get("text_encoder_lr") or 0) > 0:
        # the text encoders are trained 2-10x slower than the UNet by every peer
        rates.append(("schedule.text_encoder_lr", float(schedule["text_encoder_lr"]), low / 10))
    for key, rate, low in rates:
        if rate > high:
            warnings.append(
                f"{key} = {rate:g} is far above the usual {low:g}-{high:g} for {method} with {optimizer}, so the model may be "
                f"burnt within a few hundred steps; the default is {default[key.split('.')[1]] or default['learning_rate']:g}"
            )
        elif 0 < rate < low:
            warnings.append(
                f"{key} = {rate:g} is far below the usual {low:g}-{high:g} for {method} with {optimizer}, so the run may "
                f"barely learn; the default is {default[key.split('.')[1]] or default['learning_rate']:g}"
            )
        elif rate == 0:
            warnings.append(f"{key} is 0, so nothing is learned; set it to e.g. {default['learning_rate']:g}")
    return warnings
