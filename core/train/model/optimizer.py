"""Optimizers, the LR schedule and the fused backward pass.

Prodigy (``prodigyopt``) estimates its own step size, so its learning rate is a multiplier
(1.0 by the rule in ``core.settings``); it runs with decoupled weight decay, bias correction and
the run's ``prodigy_d_coef`` and ``prodigy_safeguard_warmup``. Every optimizer but Adafactor takes
the run's ``weight_decay`` and (when set) ``beta1``/``beta2``; plain Lion is bitsandbytes' 32-bit one. Schedule-free AdamW (``schedulefree``) keeps its own schedule: the LR
schedule is constant (sd-scripts uses a dummy one too), its warm-up is the optimizer's, and its
``train()``/``eval()`` switch the weights between the training point and the averaged point,
which is what samples and saved outputs must see (:func:`set_optimizer_mode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from core.errors import UserError
from core.settings import OPTIMIZERS, SCHEDULE_FREE_OPTIMIZERS, optimizer_betas, resolve


def param_groups(method: Any, learning_rate: float, text_encoder_lr: float) -> list[dict[str, Any]]:
    """The optimizer's parameter groups: the denoiser's (or textual inversion's embeddings) at
    ``learning_rate``, the trained text encoders' at ``text_encoder_lr`` (0: ``learning_rate``),
    as sd-scripts' ``--text_encoder_lr`` does."""
    te_lr = text_encoder_lr or learning_rate
    groups: list[dict[str, Any]] = []
    for name, module in method.modules.items():
        params = [p for p in module.parameters() if p.requires_grad]
        separate = method.train_text_encoder and name != method.denoiser
        if params:
            groups.append({"params": params, "lr": te_lr if separate else learning_rate, "name": name})
    return groups


def make_optimizer(name: str, params: Sequence[Any], lr: float, warmup: int = 0, settings: Mapping[str, Any] | None = None) -> Any:
    """One optimizer of kind ``name`` (one of ``core.settings.OPTIMIZERS``) over ``params``
    (tensors, or groups of them each with its own ``lr``).

    ``warmup`` (optimizer steps) is used by the optimizers that schedule themselves; ``settings``
    (run.toml's [settings], defaults when None) gives weight_decay, beta1/beta2 and Prodigy's
    d_coef and safeguard_warmup.
    """
    import torch

    s = resolve("settings", settings)
    options: dict[str, Any] = {"lr": lr, "weight_decay": float(s["weight_decay"])}
    betas = optimizer_betas({**s, "optimizer": name})
    if betas is not None:
        options["betas"] = betas
    if name == "adamw":
        # fused on the CPU too (torch >= 2.4): one kernel over all tensors instead of a Python loop per
        # parameter; 0.44 s instead of 0.87 s a step for 72 M parameters in 700 tensors here
        return torch.optim.AdamW(params, fused=True, **options)
    if name in ("adamw8bit", "lion8bit", "lion"):
        try:
            import bitsandbytes as bnb
        except ImportError as exc:
            raise UserError(f"settings.optimizer={name} needs bitsandbytes, which does not import here ({exc}); install it or set settings.optimizer=adamw") from exc
        if name == "lion":
            return bnb.optim.Lion(params, optim_bits=32, **options)
        cls = bnb.optim.AdamW8bit if name == "adamw8bit" else bnb.optim.Lion8bit
        return cls(params, **options)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=lr, relative_step=False, scale_parameter=False, warmup_init=False)
    if name == "prodigy":
        from prodigyopt import Prodigy

        return Prodigy(
            params,
            decouple=True,
            use_bias_correction=True,
            safeguard_warmup=bool(s["prodigy_safeguard_warmup"]),
            d_coef=float(s["prodigy_d_coef"]),
            **options,
        )
    if name == "schedulefree_adamw":
        from schedulefree import AdamWScheduleFree

        optimizer = AdamWScheduleFree(params, warmup_steps=warmup, **options)
        optimizer.train()
        return optimizer
    raise UserError(f"settings.optimizer={name!r} is unknown; use one of {', '.join(OPTIMIZERS)}")


def make_scheduler(name: str, optimizer: Any, warmup: int, total: int, num_cycles: int = 1, power: float = 1.0, optimizer_name: str = "") -> Any:
    """The LR schedule, stepped once per optimizer step by the loop (never by accelerate).

    kohya's schedules (diffusers' implementations, the ones sd-scripts calls):
    ``cosine_with_restarts`` has ``num_cycles`` hard restarts, ``polynomial`` decays with
    ``power`` to 1e-7. A schedule-free optimizer gets a constant schedule.
    """
    from diffusers.optimization import get_scheduler

    if optimizer_name in SCHEDULE_FREE_OPTIMIZERS:
        return get_scheduler("constant", optimizer)
    return get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=max(1, total), num_cycles=num_cycles, power=power)


def set_optimizer_mode(optimizer: Any, train: bool) -> None:
    """Switch a schedule-free optimizer (also inside accelerate's wrapper or the fused pass) to train or eval weights."""
    inner = getattr(optimizer, "optimizers", None) or [getattr(optimizer, "optimizer", optimizer)]
    for opt in inner:
        switch = getattr(opt, "train" if train else "eval", None)
        if callable(switch) and "train_mode" in opt.param_groups[0]:
            switch()


def current_lr(optimizer: Any, scheduler: Any) -> float:
    """The learning rate of the coming step: the schedule's rate; schedule-free: the rate after its
    own warm-up. Prodigy's rate is the multiplier of its estimate (:func:`estimated_step_size`)."""
    group = optimizer.param_groups[0]
    lr = float(scheduler.get_last_lr()[0])
    if "train_mode" in group and "warmup_steps" in group:
        k, warmup = int(group["k"]), int(group["warmup_steps"])
        return lr * ((k + 1) / warmup if k < warmup else 1.0)
    return lr


def estimated_step_size(optimizer: Any) -> float | None:
    """The step size an optimizer that estimates its own takes now (Prodigy: d × lr, which starts at
    d0 = 1e-6 and grows over the first steps), or None for the others."""
    group = optimizer.param_groups[0]
    if "d" in group and "d0" in group:
        return float(group["d"]) * float(group["lr"])
    return None


class FusedBackward:
    """One optimizer (and LR schedule) per parameter, stepped from inside backward.

    ``register_post_accumulate_grad_hook`` runs after a parameter's gradient is accumulated;
    when ``stepping`` is set (the micro-batch that ends an optimizer step) the hook clips that
    gradient, steps its optimizer and frees the gradient at once, so the whole model's
    gradients never exist together. The ``deferred`` parameters (a full fine-tune's swapped
    blocks, whose gradients go to host memory) get no hook: :meth:`step_deferred` steps them on
    the CPU after the backward pass, each alike (its own clip, optimizer and schedule).
    """

    def __init__(
        self,
        name: str,
        groups: Iterable[dict[str, Any]],
        max_grad_norm: float,
        warmup: int = 0,
        settings: Mapping[str, Any] | None = None,
        deferred: Iterable[Any] = (),
    ) -> None:
        self.name = name
        pairs = [(p, group["lr"]) for group in groups for p in group["params"] if p.requires_grad]
        self.params = [p for p, _ in pairs]
        self.optimizers = [make_optimizer(name, [p], lr, warmup, settings) for p, lr in pairs]
        self.schedulers: list[Any] = []
        self.max_grad_norm = max_grad_norm
        self.stepping = False
        later = {id(p) for p in deferred}
        self._deferred = [opt for p, opt in zip(self.params, self.optimizers) if id(p) in later]
        self._handles = [p.register_post_accumulate_grad_hook(self._hook(opt)) for p, opt in zip(self.params, self.optimizers) if id(p) not in later]

    def _hook(self, optimizer: Any) -> Callable[[Any], None]:
        def step(param: Any) -> None:
            if self.stepping:
                self._step(optimizer)

        return step

    def _step(self, optimizer: Any) -> None:
        import torch

        if self.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(optimizer.param_groups[0]["params"], self.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def step_deferred(self) -> None:
        """Step the deferred parameters that have a gradient (their gradients in place, after the backward pass)."""
        for optimizer in self._deferred:
            if optimizer.param_groups[0]["params"][0].grad is not None:
                self._step(optimizer)

    def make_schedulers(self, name: str, warmup: int, total: int, num_cycles: int = 1, power: float = 1.0) -> FusedSchedulers:
        """One LR schedule per parameter optimizer, driven together."""
        self.schedulers = [make_scheduler(name, opt, warmup, total, num_cycles, power, self.name) for opt in self.optimizers]
        return FusedSchedulers(self.schedulers)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """Every parameter optimizer's group (the first is the denoiser's, for reading the learning rate)."""
        return [group for opt in self.optimizers for group in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Nothing to do: each hook frees its gradient after stepping."""

    def state_dict(self) -> dict[str, Any]:
        """All parameter optimizers' states."""
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`."""
        for opt, saved in zip(self.optimizers, state["optimizers"], strict=True):
            opt.load_state_dict(saved)

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()


class FusedSchedulers:
    """Several LR schedules stepped as one."""

    def __init__(self, schedulers: list[Any]) -> None:
        self.schedulers = schedulers

    def step(self) -> None:
        """Advance every schedule by one optimizer step."""
        for scheduler in self.schedulers:
            scheduler.step()

    def get_last_lr(self) -> list[float]:
        """The current learning rate."""
        return self.schedulers[0].get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """All schedules' states."""
        return {"schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the states saved by :meth:`state_dict`."""
        for scheduler, saved in zip(self.schedulers, state["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
