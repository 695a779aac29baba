"""The validation loss: held-out images ([validation] split) or a folder of their own, at fixed timesteps and noise.

:func:`split_items` takes the held-out images out of the training items with the shared
split (``core.plan.schedule.held_out``, which the planner uses too) and adds the images of
``[validation] folder``. :class:`Validator` computes, every ``every_n_steps`` optimizer steps,
the mean denoising loss of those images at the timesteps of sd-scripts' validation
(``core.plan.validation.TIMESTEP_SHARES`` of the schedule) with noise seeded per image and timestep, so the
curve moves only with the model. It runs under ``no_grad`` with the trained modules in eval
mode; each rank takes its share of the images, every rank runs the same number of forwards
(collectives of DDP, FSDP or DeepSpeed stay in step), and the per-image losses are gathered
and averaged in image order: any number of processes gives the value one process gives.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable, Mapping
from typing import Any

from core.config import section_of
from core.folder_watch import again_if_moved
from core.plan.schedule import held_out, image_key
from core.plan.validation import TIMESTEP_SHARES
from core.train.data.captions import with_prefix_suffix
from core.train.data.examples import load_example
from core.train.data.item import TrainItem


def settings_of(config: Any) -> dict[str, Any]:
    """[validation] with defaults filled in, from a RunConfig or a run.toml dict."""
    return section_of(config, "validation")


def enabled(section: Mapping[str, Any]) -> bool:
    """True when [validation] holds images out (split) or names a folder."""
    return float(section["split"]) > 0 or bool(str(section["folder"]).strip())


def split_items(config: Any, items: list[Any], settings: Mapping[str, Any], select: Any) -> tuple[list[Any], list[Any]]:
    """``(training items, validation items)``: the split's held-out images leave the training items;
    the images of ``[validation] folder`` are added to the validation items."""
    section = settings_of(config)
    held = held_out([item.path for item in items], float(section["split"]))
    validation = [item for item in items if item.path in held]
    training = [item for item in items if item.path not in held]
    folder = str(section["folder"]).strip()
    if folder:
        validation += folder_items(folder, settings, select)
    return training, validation


def folder_items(folder: str, settings: Mapping[str, Any], select: Any) -> list[Any]:
    """The images of a validation folder as items (captions from their caption files, else the subset token)."""
    from pathlib import Path

    from core.dataset.scan import scan_dataset
    from core.errors import UserError

    root = Path(folder).expanduser()
    if not root.is_dir():
        raise UserError(f'validation.folder = {folder!r} is not a folder; point it at a folder of validation images or set it to ""')
    scan = scan_dataset(root, resolution=int(settings["resolution"]), bucket_settings=settings, use_cache=False)
    items = []
    for subset in scan.subsets:
        for image in subset.images:
            caption = with_prefix_suffix((image.caption or "").strip() or subset.token.strip(), settings)
            items.append(TrainItem(image.path, caption, image.width, image.height, select(image.width, image.height), 1, False, -1))
    if not items:
        raise UserError(f'the validation folder {root} has no usable image; add png, jpg, webp or bmp images to it or set validation.folder = ""')
    return items


def fixed_timesteps(objective: Any, device: Any) -> Any:
    """The validation timesteps for ``objective``: integers of a DDPM schedule, σ × N for flow matching."""
    import torch

    scheduler = getattr(objective, "scheduler", None)
    if scheduler is not None:
        total = int(scheduler.config.num_train_timesteps)
        return torch.tensor([min(total - 1, round(s * total)) for s in TIMESTEP_SHARES], dtype=torch.long, device=device)
    total = int(objective.num_train_timesteps)
    return torch.tensor([s * total for s in TIMESTEP_SHARES], dtype=torch.float32, device=device)


def noise_seed(seed: int, path: str, timestep_index: int) -> int:
    """The seed of one image's noise at one validation timestep (the same on every rank and run)."""
    key = f"{seed}:{image_key(path)}:{timestep_index}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


class Validator:
    """The validation loss of one rank's share of the validation images, averaged over every rank."""

    def __init__(self, session: Any, stepper: Any, every_n_steps: int, seed: int) -> None:
        self.session = session
        self.stepper = stepper
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.items = list(session.data.train_data.validation_items)
        rank, world = session.rank, session.world
        self.share = math.ceil(len(self.items) / world)
        #: This rank's item indices, padded with its own (or the first) item so every rank runs as many forwards.
        own = list(range(rank, len(self.items), world))
        self.mine = own + [own[0] if own else 0] * (self.share - len(own))
        self.prepared: dict[int, dict[str, Any]] = {}

    def due(self, step: int) -> bool:
        """True after the optimizer steps the validation loss is computed at."""
        return bool(self.items) and step % self.every_n_steps == 0

    def loss(self) -> float:
        """The mean validation loss over every validation image (a collective: every rank calls it)."""
        import torch

        session = self.session
        self._prepare(sorted(set(self.mine) - set(self.prepared)))
        losses = []
        with self._eval(), torch.no_grad():
            for index in self.mine:
                losses.append(self.item_loss(index))
        mine = torch.tensor(losses, dtype=torch.float64, device=session.device)
        everyone = session.acc.gather(mine) if session.world > 1 else mine
        values = everyone.cpu().tolist()
        world = session.world
        by_item = {r + j * world: values[r * self.share + j] for r in range(world) for j in range(self.share) if r + j * world < len(self.items)}
        return math.fsum(by_item[i] for i in range(len(self.items))) / len(self.items)

    def item_loss(self, index: int) -> float:
        """One image's loss, the mean over the fixed timesteps (with its mask and the objective's weights),
        in chunks of the run's batch size (no forward larger than a training one)."""
        import torch

        timesteps = fixed_timesteps(self.session.components.objective, self.session.device)
        chunk = max(1, int(self.session.settings["batch_size"]))
        losses = [self._chunk_loss(index, timesteps[start : start + chunk], start) for start in range(0, len(timesteps), chunk)]
        return float(torch.cat(losses).double().mean())

    def _chunk_loss(self, index: int, timesteps: Any, first: int) -> Any:
        """Per-sample losses of one image at ``timesteps`` (the timestep indices ``first`` on)."""
        import torch

        from core.train.masks import per_sample_loss

        session = self.session
        components, device = session.components, session.device
        example, item = self.prepared[index], self.items[index]
        count = len(timesteps)
        shape = example["latents"].shape
        latents = example["latents"].to(device, torch.float32)[None].expand(count, *shape)
        noise = torch.stack([torch.randn(shape, generator=torch.Generator().manual_seed(noise_seed(self.seed, item.path, first + n))) for n in range(count)]).to(device)
        batch: dict[str, Any] = {
            "captions": [item.caption] * count,
            "original_sizes": [example["original_size"]] * count,
            "crop_top_lefts": [example["crop_top_left"]] * count,
            "target_sizes": [example["target_size"]] * count,
        }
        cache = session.data.train_data.text_cache
        if cache is not None and item.caption in cache:
            batch["text"] = cache.stacked(batch["captions"])
        objective = components.objective
        with session.acc.autocast():
            hidden, added = self.stepper.conditioning(batch)
            noisy = objective.noisy(latents, noise, timesteps)
            target = objective.target(latents, noise, timesteps)
            dtype = session.model.denoiser_dtype
            pred = components.runtime.predict(session.denoiser(), noisy.to(dtype), timesteps, hidden.to(dtype), added)
        mask = example["mask"][None].expand(count, *example["mask"].shape) if example["mask"] is not None else None
        per_sample = per_sample_loss(pred, target, mask)
        weights = objective.loss_weights(timesteps, session.settings)
        return per_sample * weights if weights is not None else per_sample

    def _prepare(self, indices: list[int]) -> None:
        """Encode the latents (VAE mode, centre crop, no flip) and masks of ``indices`` once; the VAE
        visits the compute device for it when it was moved off, and goes back."""
        if not indices:
            return
        vae = self.session.components.vae
        home = next(vae.parameters()).device
        vae.to(self.session.device)
        try:
            for index in indices:
                self.prepared[index] = self._encode(index)
        finally:
            vae.to(home)

    def _encode(self, index: int) -> dict[str, Any]:
        import torch

        from core.train.masks import on_grid

        session = self.session
        item, vae = self.items[index], session.components.vae
        example = load_example(item.path, item.bucket, mask_path=item.mask, alpha_mask=bool(session.settings.get("alpha_mask")))
        with torch.no_grad():
            latents = vae.encode(example.pixels[None].to(session.device, vae.dtype)).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        latents = (latents * float(vae.config.scaling_factor)).float()[0].cpu()
        mask = on_grid(example.mask[None], tuple(latents.shape[-2:]))[0] if example.mask is not None else None
        return {
            "latents": latents,
            "mask": mask,
            "original_size": example.original_size,
            "crop_top_left": example.crop_top_left,
            "target_size": example.target_size,
        }

    @contextlib.contextmanager
    def _eval(self) -> Any:
        """The denoiser and text encoders in eval mode (dropout off) for the duration, then as they were."""
        modules = [self.session.denoiser(), *self.session.text_encoders()]
        modes = [m.training for m in modules]
        for module in modules:
            module.eval()
        try:
            yield
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)


def make_validator(config: Any, session: Any, stepper: Any) -> Validator | None:
    """The run's validator, or None when [validation] is off (or holds no image)."""
    section = settings_of(config)
    if not enabled(section) or not session.data.train_data.validation_items:
        return None
    return Validator(session, stepper, int(section["every_n_steps"]), int(session.sched["seed"]))


def record(validator: Validator, step: int, metrics: Any, session: Any, follow: Callable[[], bool] | None = None) -> float:
    """Compute the validation loss after ``step`` and record it: metrics.jsonl, TensorBoard and W&B
    (``follow``: a move of the run folder in the middle of the TensorBoard write is followed, as in
    :func:`core.folder_watch.again_if_moved`)."""
    from core.train import trackers

    loss = validator.loss()
    metrics.write("validation", step=step, loss=loss)
    again_if_moved(lambda: trackers.log_validation(session.acc, step, loss), follow)
    return loss
