"""One training step: a micro-batch's inputs and loss, its backward pass, and the optimizer step.

The :class:`Stepper` works over the built ``Session`` and reads the run's ``Progress``; noise and
timesteps of each micro-batch come from a generator seeded by (seed, epoch, batch index, rank),
so a resumed run draws exactly what an uninterrupted run draws.
"""

from __future__ import annotations

import contextlib
import hashlib
from typing import Any

from core.train.progress import Progress
from core.train.session import Session
from core.train.status import TrainingFailed, nan_hint


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

        from core.train.masks import per_sample_loss

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
        objective = components.objective
        timesteps = objective.timesteps(bsz, gen, device, latent_size=(int(latents.shape[-2]), int(latents.shape[-1])))
        noisy = objective.noisy(latents, noise, timesteps)
        target = objective.target(latents, noise, timesteps)
        denoiser = session.denoiser()
        dtype = session.model.denoiser_dtype
        model_input = noisy.to(dtype)
        if session.model.channels_last:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        pred = components.runtime.predict(denoiser, model_input, timesteps, hidden.to(dtype), added)
        per_sample = per_sample_loss(pred, target, batch.get("masks"))
        weights = objective.loss_weights(timesteps, s)
        if weights is not None:
            per_sample = per_sample * weights
        if bool(batch["is_class"].any()):
            prior = batch["is_class"].to(device)
            return per_sample[~prior].mean() + float(s["prior_loss_weight"]) * per_sample[prior].mean()
        return per_sample.mean()

    def latents(self, batch: dict[str, Any], generator: Any) -> Any:
        """Normalised fp32 latents of the batch: from the cache, or a posterior sample the family's ``encode_latents`` draws now."""
        import torch

        device = self.session.device
        if "latents" in batch:
            return batch["latents"].to(device, dtype=torch.float32, non_blocking=True)
        components = self.session.components
        pixels = batch["pixel_values"].to(device, dtype=components.vae.dtype, non_blocking=True)
        return components.runtime.encode_latents(components.vae, pixels, generator)

    def conditioning(self, batch: dict[str, Any]) -> tuple[Any, dict[str, Any] | None]:
        """``(encoder_hidden_states, added_cond_kwargs)``: cached outputs or the (trained) text encoders."""
        import torch

        from core.families.embeddings import TextEmbeddings
        from core.train.model.text import encode_text, tokenize

        session = self.session
        method, components = session.method, session.components
        if "text" in batch:
            embeddings = TextEmbeddings.from_named(batch["text"]).to(session.device)
        else:
            captions = batch["captions"]
            if method.ti is not None:
                captions = [method.ti.expand(c) for c in captions]
            ids = tokenize(components, captions)
            trained = any(name in method.modules for name in components.text_encoder_names)
            with contextlib.nullcontext() if trained else torch.no_grad():
                embeddings = encode_text(components, ids, session.text_encoders(), int(session.settings["clip_skip"]))
        return embeddings.prompt_embeds, components.runtime.extra_conditioning(embeddings, batch, session.device, session.settings)

    def optimizer_step(self) -> None:
        """Clip, step the optimizer and its LR schedule (unless fp16 scaling skipped it), the method's and EMA's
        follow-up; a full fine-tune's swapped parameters step on the CPU, on their host masters and gradients."""
        session, optim = self.session, self.session.optim
        if session.model.swap is not None:
            session.model.swap.before_step()  # a full fine-tune's swapped blocks: host masters, host gradients
        if optim.fused is not None:
            optim.fused.stepping = False
            optim.fused.step_deferred()
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
        """The learning rate the optimizer steps with now (``core.train.model.optimizer.current_lr``)."""
        from core.train.model.optimizer import current_lr

        return current_lr(self.session.optim.optimizer, self.session.optim.lr_scheduler)

    def step_size(self) -> float | None:
        """Prodigy's own step size now (d × lr; ``core.train.model.optimizer.estimated_step_size``), else None."""
        from core.train.model.optimizer import estimated_step_size

        return estimated_step_size(self.session.optim.optimizer)


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
