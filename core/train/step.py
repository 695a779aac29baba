"""One training step: the loss of a micro-batch, its backward pass and the optimizer step.

``Stepping`` is the part of the ``Trainer`` (``loop.py``) that computes; noise and timesteps of
each micro-batch come from a generator seeded by (seed, epoch, batch index, rank), so a resumed
run draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from .status import TrainingFailed, nan_hint


class Stepping:
    """Forward, loss, backward and optimizer step of the ``Trainer``."""

    def micro_step(self, batch: dict[str, Any], index: int, due: bool, group_size: int, weight: float = 1.0) -> Any:
        """Forward and backward of one micro-batch; returns its detached loss (0 for a stand-in batch)."""
        if self.fused is not None:
            self.fused.stepping = due
        sync = contextlib.ExitStack()
        if not due:
            for module in self.wrapped.values():
                sync.enter_context(self.acc.no_sync(module))
        with sync:
            with self.acc.autocast():
                loss = self.loss(batch, index) * weight
            if not bool(torch_isfinite(loss)):
                raise TrainingFailed(f"the loss became {float(loss.detach())} (not finite) at step {self.step + 1}", nan_hint(self.settings, float(self.sched["learning_rate"])))
            self.acc.backward(loss / group_size)
        return loss.detach().float()

    def loss(self, batch: dict[str, Any], index: int) -> Any:
        """The denoising loss of a batch (with min-SNR weighting and prior preservation)."""
        import torch
        import torch.nn.functional as F

        s = self.settings
        gen = torch.Generator(device=self.device).manual_seed(micro_batch_seed(int(self.sched["seed"]), self.epoch, index, self.rank))
        latents = self.data.latents(batch, gen)
        hidden, added = self.data.conditioning(batch)
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        if s["noise_offset"]:
            noise = noise + float(s["noise_offset"]) * torch.randn((bsz, latents.shape[1], 1, 1), generator=gen, device=self.device)
        scheduler = self.components.noise_scheduler
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=gen, device=self.device).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps) if self.components.prediction_type == "v_prediction" else noise
        unet = self.wrapped.get("unet", self.components.unet)
        dtype = self.unet_dtype
        model_input = noisy.to(dtype)
        if self.channels_last:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        kwargs: dict[str, Any] = {"added_cond_kwargs": added} if added is not None else {}
        pred = unet(model_input, timesteps, hidden.to(dtype), **kwargs).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if s["min_snr_gamma"]:
            per_sample = per_sample * min_snr_weights(scheduler, timesteps, float(s["min_snr_gamma"]), self.components.prediction_type)
        if bool(batch["is_class"].any()):
            prior = batch["is_class"].to(self.device)
            return per_sample[~prior].mean() + float(s["prior_loss_weight"]) * per_sample[prior].mean()
        return per_sample.mean()

    def _optimizer_step(self) -> None:
        if self.fused is not None:
            self.fused.stepping = False
            self.lr_scheduler.step()
        else:
            max_norm = float(self.settings["max_grad_norm"])
            if max_norm > 0:
                self.acc.clip_grad_norm_(self.params, max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if not self.optimizer.step_was_skipped:
                self.lr_scheduler.step()
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.step(self.params)

    def _current_lr(self) -> float:
        from .optim import current_lr

        return current_lr(self.optimizer, self.lr_scheduler)


def torch_isfinite(loss: Any) -> Any:
    """True when the loss is finite (a host sync; only on the CPU, where it is free)."""
    if loss.device.type == "cuda":
        return True
    import torch

    return torch.isfinite(loss).all()


def micro_batch_seed(seed: int, epoch: int, index: int, rank: int) -> int:
    """A per-micro-batch seed, so noise and timesteps are the same after a resume."""
    key = f"{seed}:{epoch}:{index}:{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def min_snr_weights(scheduler: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr
