"""This rank's batches of an epoch, loaded, and turned into latents and text conditioning."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from core.errors import UserError

if TYPE_CHECKING:
    from .loop import Trainer


class Batches:
    """This rank's batches of an epoch, loaded, and turned into latents and text conditioning."""

    def __init__(self, trainer: Trainer, train_data: Any) -> None:
        self.trainer = trainer
        self.train_data = train_data
        self.fallback: dict[str, Any] | None = None

    def for_epoch(self, epoch: int) -> list[list[int]]:
        """This rank's batches (item indices) of ``epoch``, from the shared schedule code."""
        from .data import batches_for_epoch

        t = self.trainer
        return batches_for_epoch(self.train_data, int(t.settings["batch_size"]), int(t.sched["seed"]), epoch, t.rank, t.world)

    def iterate(self, epoch: int, batches: list[list[int]], start: int) -> Any:
        """``(index, batch, weight)`` from batch ``start`` on; class images paired when there are any.

        A batch whose images all failed to load is replaced by a stand-in with weight 0, so
        every rank still runs the same forward/backward (no rank is left in a collective).
        """
        from .data import class_batches_for_epoch, make_loader

        t = self.trainer
        seed = int(t.sched["seed"])
        classes = class_batches_for_epoch(self.train_data, batches, seed, epoch, t.rank, t.world) if self.train_data.class_items else None
        loader = make_loader(
            self.train_data, batches[start:], seed, epoch, int(t.settings["dataloader_workers"]),
            classes[start:] if classes is not None else None, pin_memory=t.device.type == "cuda",
        )
        for offset, batch in enumerate(loader):
            weight = 1.0
            if batch is None:
                batch, weight = self._stand_in(loader.dataset), 0.0
            elif self.fallback is None:
                self.fallback = batch
            yield start + offset, batch, weight

    def _stand_in(self, dataset: Any) -> dict[str, Any]:
        if self.fallback is None:
            for n in range(len(dataset)):
                found = dataset[n]
                if found is not None:
                    self.fallback = found
                    break
        if self.fallback is None:
            raise UserError("no image of this epoch's batches could be read; run `sdtui scan` on the dataset and fix or remove the files it reports")
        return self.fallback

    def latents(self, batch: dict[str, Any], generator: Any) -> Any:
        """Scaled latents of the batch: from the cache, or encoded now with the VAE."""
        import torch

        t = self.trainer
        if "latents" in batch:
            return batch["latents"].to(t.device, dtype=torch.float32, non_blocking=True)
        vae = t.components.vae
        pixels = batch["pixel_values"].to(t.device, dtype=vae.dtype, non_blocking=True)
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

        t = self.trainer
        if "prompt_embeds" in batch:
            pooled = batch.get("pooled_prompt_embeds")
            embeddings = TextEmbeddings(batch["prompt_embeds"], pooled).to(t.device)
        else:
            captions = batch["captions"]
            if t.method.ti is not None:
                captions = [t.method.ti.expand(c) for c in captions]
            names = ("text_encoder", "text_encoder_2")
            encoders = [t.wrapped.get(name, te) for name, te in zip(names, t.components.text_encoders)]
            ids = tokenize(t.components, captions)
            trained = any(name in t.method.modules for name in names)
            with contextlib.nullcontext() if trained else torch.no_grad():
                embeddings = encode_text(t.components, ids, encoders, int(t.settings["clip_skip"]))
        time_ids = sdxl_time_ids_batch(batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]).to(t.device)
        return embeddings.prompt_embeds, unet_added_conditions(embeddings, time_ids)
