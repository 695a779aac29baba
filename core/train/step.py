"""One training step: a micro-batch's inputs and loss, its backward pass, and the optimizer step.

The :class:`Stepper` works over the built ``Session`` and reads the run's ``Progress``; noise and
timesteps of each micro-batch come from a generator seeded by (seed, epoch, batch index, rank),
so a resumed run draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from .progress import Progress
from .session import Session
from .status import TrainingFailed, nan_hint


class Stepper:
    """Forward, loss, backward and optimizer step of one rank."""

    def __init__(self, session: Session, progress: Progress) -> None:
        self.session = session
        self.progress = progress

    def micro_step(self, batch: dict[str, Any], index: int, due: bool, group_size: int, weight: float = 1.0) -> Any:
        """Forward and backward of one micro-batch; returns its detached loss (0 for a stand-in batch)."""
        s, optim = self.session, self.session.optim
        if optim.fused is not None:
            optim.fused.stepping = due
        sync = contextlib.ExitStack()
        if not due:
            for module in optim.wrapped.values():
                sync.enter_context(s.acc.no_sync(module))
        with sync:
            with s.acc.autocast():
                loss = self.loss(batch, index) * weight
            if not bool(torch_isfinite(loss)):
                raise TrainingFailed(
                    f"the loss became {float(loss.detach())} (not finite) at step {self.progress.step + 1}",
                    nan_hint(s.settings, float(s.sched["learning_rate"])),
                )
            s.acc.backward(loss / group_size)
        return loss.detach().float()

    def loss(self, batch: dict[str, Any], index: int) -> Any:
        """The denoising loss of a batch (with min-SNR weighting and prior preservation)."""
        import torch
        import torch.nn.functional as F

        session = self.session
        s = session.settings
        device = session.device
        components = session.components
        gen = torch.Generator(device=device).manual_seed(micro_batch_seed(int(session.sched["seed"]), self.progress.epoch, index, session.rank))
        latents = self.latents(batch, gen)
        hidden, added = self.conditioning(batch)
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen, device=device)
        if s["noise_offset"]:
            noise = noise + float(s["noise_offset"]) * torch.randn((bsz, latents.shape[1], 1, 1), generator=gen, device=device)
        scheduler = components.noise_scheduler
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=gen, device=device).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps) if components.prediction_type == "v_prediction" else noise
        unet = session.denoiser()
        dtype = session.model.unet_dtype
        model_input = noisy.to(dtype)
        if session.model.channels_last:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        kwargs: dict[str, Any] = {"added_cond_kwargs": added} if added is not None else {}
        pred = unet(model_input, timesteps, hidden.to(dtype), **kwargs).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if s["min_snr_gamma"]:
            per_sample = per_sample * min_snr_weights(scheduler, timesteps, float(s["min_snr_gamma"]), components.prediction_type)
        if bool(batch["is_class"].any()):
            prior = batch["is_class"].to(device)
            return per_sample[~prior].mean() + float(s["prior_loss_weight"]) * per_sample[prior].mean()
        return per_sample.mean()

    def latents(self, batch: dict[str, Any], generator: Any) -> Any:
        """Scaled latents of the batch: from the cache, or encoded now with the VAE."""
        import torch

        device = self.session.device
        if "latents" in batch:
            return batch["latents"].to(device, dtype=torch.float32, non_blocking=True)
        vae = self.session.components.vae
        pixels = batch["pixel_values"].to(device, dtype=vae.dtype, non_blocking=True)
        with torch.no_grad():
            latents = vae.encode(pixels).latent_dist.sample(generator=generator)
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return (latents * float(vae.config.scaling_factor)).float()

    def conditioning(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """``(encoder_hidden_states, added_cond_kwargs)``: cached outputs or the (trained) text encoders."""
        import torch

        from .text import TextEmbeddings, encode_text, sdxl_time_ids_batch, tokenize, unet_added_conditions

        session = self.session
        method, components = session.method, session.components
        if "prompt_embeds" in batch:
            pooled = batch.get("pooled_prompt_embeds")
            embeddings = TextEmbeddings(batch["prompt_embeds"], pooled).to(session.device)
        else:
            captions = batch["captions"]
            if method.ti is not None:
                captions = [method.ti.expand(c) for c in captions]
            ids = tokenize(components, captions)
            trained = any(name in method.modules for name in ("text_encoder", "text_encoder_2"))
            with contextlib.nullcontext() if trained else torch.no_grad():
                embeddings = encode_text(components, ids, session.text_encoders(), int(session.settings["clip_skip"]))
        time_ids = sdxl_time_ids_batch(batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]).to(session.device)
        return embeddings.prompt_embeds, unet_added_conditions(embeddings, time_ids)

    def optimizer_step(self) -> None:
        """Clip, step the optimizer and its LR schedule (unless fp16 scaling skipped it), the method's and EMA's follow-up."""
        session, optim = self.session, self.session.optim
        if optim.fused is not None:
            optim.fused.stepping = False
            optim.lr_scheduler.step()
        else:
            max_norm = float(session.settings["max_grad_norm"])
            if max_norm > 0:
                session.acc.clip_grad_norm_(optim.params, max_norm)
            optim.optimizer.step()
            optim.optimizer.zero_grad(set_to_none=True)
            if not optim.optimizer.step_was_skipped:
                optim.lr_scheduler.step()
        session.method.after_optimizer_step()
        if session.model.ema is not None:
            session.model.ema.step(optim.params)

    def current_lr(self) -> float:
        """The learning rate the optimizer steps with now (``core.train.optim.current_lr``)."""
        from .optim import current_lr

        return current_lr(self.session.optim.optimizer, self.session.optim.lr_scheduler)


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
