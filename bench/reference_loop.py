"""The reference: a plain training loop written the way the diffusers examples do it.

This is what a user runs without sdtui: ``train_text_to_image_lora.py`` (SD1/SD2),
``train_text_to_image_lora_sdxl.py`` and, for full fine-tuning, ``train_text_to_image.py``.
Per step it decodes and transforms each image in the data loader, runs the VAE encoder and
the text encoder(s), predicts the noise with the UNet (peft LoRA on the attention
projections ``to_q/to_k/to_v/to_out.0``, or the whole UNet), takes fp32 ``torch.optim.AdamW``
and reads the loss back with ``.item()``; nothing is cached. It is written from the
examples' structure (not copied) and kept deliberately faithful, not fast.

``python -m bench.reference_loop --model DIR --data DIR --steps N --out times.jsonl`` runs it
and writes one ``{"step", "step_time_s", "images_per_s", "loss"}`` line per step.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


@dataclass
class Components:
    """The parts of an SD pipeline the loop trains with (SDXL has two tokenizers/encoders)."""

    family: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    scheduler: Any


@dataclass
class StepRecord:
    """One optimizer step of the reference loop."""

    step: int
    step_time_s: float
    images_per_s: float
    loss: float


class StepLog:
    """The reference loops' per-step output: each optimizer step timed since the last and written as a
    JSON line to ``handle`` as it happens; :attr:`done` once ``steps`` are recorded."""

    def __init__(self, handle: Any, steps: int) -> None:
        self.handle, self.steps = handle, steps
        self.records: list[StepRecord] = []
        self.last = time.perf_counter()

    @property
    def done(self) -> bool:
        """Whether every step asked for is recorded."""
        return len(self.records) >= self.steps

    def record(self, loss: float, images: int = 1) -> None:
        """Record one optimizer step of ``images`` images with its ``loss``."""
        now = time.perf_counter()
        record = StepRecord(len(self.records) + 1, now - self.last, images / (now - self.last), loss)
        self.last = now
        self.records.append(record)
        self.handle.write(json.dumps(record.__dict__) + "\n")
        self.handle.flush()


#: A transformer reference loop: (model, data, steps, resolution, rank, mixed_precision, out) -> its records.
TransformerReference = Callable[[str, str, int, int, int, str, Path], list[StepRecord]]


def transformer_reference_main(argv: list[str] | None, prog: str, description: str, train: TransformerReference) -> int:
    """The command line of a transformer reference loop (``bench.reference_flux``, ``bench.reference_sd3``):
    train ``train`` and write per-step timings as JSON lines."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--out", required=True)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--mixed-precision", default="bf16", choices=("no", "fp16", "bf16"))
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train(args.model, args.data, args.steps, args.resolution, args.rank, args.mixed_precision, out)
    return 0


@dataclass
class ReferenceSettings:
    """What the example scripts take on the command line that matters for speed."""

    resolution: int = 512
    batch_size: int = 1
    learning_rate: float = 1e-4
    lora: bool = True
    rank: int = 16
    mixed_precision: str = "no"
    max_grad_norm: float = 1.0
    seed: int = 42
    dataloader_workers: int = 0


def load_components(model_dir: str | Path, family: str | None = None, load_dtype: Any = None, lora: bool = True) -> Components:
    """Load a diffusers folder the way the examples do (``from_pretrained`` per subfolder, fp32).

    ``load_dtype`` reads the frozen parts straight into that dtype instead (the examples load
    fp32 and cast, which needs 3× the UNet's bf16 size at once: more than a shared 24 GB machine
    has for SDXL). It changes the load, not a training step; a trained UNet (``lora=False``) stays fp32.
    """
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel, CLIPTextModelWithProjection

    root = Path(model_dir)
    family = family or ("sdxl" if (root / "text_encoder_2").is_dir() else "sd1")
    frozen = {"torch_dtype": load_dtype} if load_dtype is not None else {}
    tokenizers = [AutoTokenizer.from_pretrained(root, subfolder="tokenizer")]
    encoders = [CLIPTextModel.from_pretrained(root, subfolder="text_encoder", **frozen)]
    if family == "sdxl":
        tokenizers.append(AutoTokenizer.from_pretrained(root, subfolder="tokenizer_2"))
        encoders.append(CLIPTextModelWithProjection.from_pretrained(root, subfolder="text_encoder_2", **frozen))
    return Components(
        family=family,
        unet=UNet2DConditionModel.from_pretrained(root, subfolder="unet", **(frozen if lora else {})),
        vae=AutoencoderKL.from_pretrained(root, subfolder="vae", **frozen),
        text_encoders=encoders,
        tokenizers=tokenizers,
        scheduler=DDPMScheduler.from_pretrained(root, subfolder="scheduler"),
    )


def kohya_items(dataset_dir: str | Path) -> list[tuple[Path, str]]:
    """(image, caption) pairs of a kohya folder, each repeated as its ``<repeats>_`` prefix says."""
    items: list[tuple[Path, str]] = []
    for folder in sorted(p for p in Path(dataset_dir).iterdir() if p.is_dir()):
        match = re.match(r"^(\d+)_(.*)$", folder.name)
        if not match:
            continue
        repeats, token = int(match.group(1)), match.group(2).strip()
        for image in sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            caption_file = image.with_suffix(".txt")
            caption = caption_file.read_text(encoding="utf-8").strip() if caption_file.exists() else token
            items.extend([(image, caption)] * repeats)
    if not items:
        raise ValueError(f"no <repeats>_<token> image folders in {dataset_dir}")
    return items


class ImageCaptionDataset:
    """Per item: open, resize the short side, centre-crop, to [-1, 1], tokenize (the examples' transforms)."""

    def __init__(self, items: list[tuple[Path, str]], resolution: int, tokenizers: list[Any]) -> None:
        self.items = items
        self.resolution = resolution
        self.tokenizers = tokenizers

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        import numpy as np
        import torch
        from PIL import Image

        path, caption = self.items[index]
        image = Image.open(path).convert("RGB")
        size = self.resolution
        scale = size / min(image.size)
        image = image.resize((max(size, round(image.width * scale)), max(size, round(image.height * scale))), Image.BILINEAR)
        left, top = (image.width - size) // 2, (image.height - size) // 2
        original = (image.height, image.width)
        image = image.crop((left, top, left + size, top + size))
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        ids = [tok(caption, max_length=tok.model_max_length, padding="max_length", truncation=True, return_tensors="pt").input_ids[0] for tok in self.tokenizers]
        return {"pixel_values": (pixels - 0.5) / 0.5, "input_ids": ids, "original_size": original, "crop_top_left": (top, left)}


def collate(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack a batch as the examples' ``collate_fn`` does."""
    import torch

    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]).to(memory_format=torch.contiguous_format).float(),
        "input_ids": [torch.stack([e["input_ids"][i] for e in examples]) for i in range(len(examples[0]["input_ids"]))],
        "original_size": [e["original_size"] for e in examples],
        "crop_top_left": [e["crop_top_left"] for e in examples],
    }


def _encode_text(components: Components, input_ids: list[Any], device: Any) -> tuple[Any, Any]:
    """Text encoder(s) every step; SDXL concatenates penultimate hidden states and pools the second."""
    if components.family != "sdxl":
        return components.text_encoders[0](input_ids[0].to(device), return_dict=False)[0], None
    hidden, pooled = [], None
    for encoder, ids in zip(components.text_encoders, input_ids):
        out = encoder(ids.to(device), output_hidden_states=True, return_dict=True)
        pooled = out[0]
        hidden.append(out.hidden_states[-2])
    import torch

    return torch.cat(hidden, dim=-1), pooled


def train_reference(
    components: Components,
    items: list[tuple[Path, str]],
    settings: ReferenceSettings,
    steps: int,
    device: str = "cpu",
    on_step: Callable[[StepRecord], None] | None = None,
) -> list[StepRecord]:
    """Train ``steps`` optimizer steps the examples' way and return one record per step."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers.optimization import get_scheduler

    accelerator = Accelerator(mixed_precision=settings.mixed_precision, cpu=device == "cpu")
    torch.manual_seed(settings.seed)
    random.seed(settings.seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(settings.mixed_precision, torch.float32)
    unet, vae = components.unet, components.vae
    for module in (unet, vae, *components.text_encoders):
        module.requires_grad_(False)
    vae.to(accelerator.device, dtype=weight_dtype)
    for encoder in components.text_encoders:
        encoder.to(accelerator.device, dtype=weight_dtype)
    if settings.lora:
        from peft import LoraConfig

        unet.to(accelerator.device, dtype=weight_dtype)
        unet.add_adapter(LoraConfig(r=settings.rank, lora_alpha=settings.rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
        if settings.mixed_precision == "fp16":
            for param in unet.parameters():
                if param.requires_grad:
                    param.data = param.data.float()
    else:
        unet.to(accelerator.device)
        unet.requires_grad_(True)
    unet.train()
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=settings.learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    dataset = ImageCaptionDataset(items, settings.resolution, components.tokenizers)
    loader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=collate, batch_size=settings.batch_size, num_workers=settings.dataloader_workers)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=steps)
    unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    scheduler = components.scheduler
    prediction_type = scheduler.config.prediction_type
    records: list[StepRecord] = []
    last = time.perf_counter()
    while len(records) < steps:
        for batch in loader:
            with accelerator.accumulate(unet):
                latents = vae.encode(batch["pixel_values"].to(dtype=weight_dtype)).latent_dist.sample()
                latents = latents * vae.config.scaling_factor
                noise = torch.randn_like(latents)
                bsz = latents.shape[0]
                timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
                noisy = scheduler.add_noise(latents, noise, timesteps)
                hidden, pooled = _encode_text(components, batch["input_ids"], accelerator.device)
                target = noise if prediction_type == "epsilon" else scheduler.get_velocity(latents, noise, timesteps)
                kwargs: dict[str, Any] = {}
                if components.family == "sdxl":
                    size = settings.resolution
                    time_ids = torch.tensor(
                        [list(o) + list(c) + [size, size] for o, c in zip(batch["original_size"], batch["crop_top_left"])],
                        device=accelerator.device,
                        dtype=weight_dtype,
                    )
                    kwargs["added_cond_kwargs"] = {"time_ids": time_ids, "text_embeds": pooled}
                pred = unet(noisy, timesteps, hidden, return_dict=False, **kwargs)[0]
                loss = F.mse_loss(pred.float(), target.float(), reduction="mean")
                loss_value = accelerator.gather(loss.repeat(bsz)).mean().item()
                accelerator.backward(loss)
                if accelerator.sync_gradients and settings.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(trainable, settings.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()
            if accelerator.sync_gradients:
                now = time.perf_counter()
                record = StepRecord(len(records) + 1, now - last, bsz / (now - last), loss_value)
                last = now
                records.append(record)
                if on_step is not None:
                    on_step(record)
                if len(records) >= steps:
                    break
    accelerator.end_training()
    return records


def main(argv: list[str] | None = None) -> int:
    """Command line: train the reference loop and write per-step timings as JSON lines."""
    parser = argparse.ArgumentParser(prog="python -m bench.reference_loop", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="diffusers model folder")
    parser.add_argument("--data", required=True, help="kohya dataset folder")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", required=True, help="JSON lines file for the per-step records")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--mixed-precision", default="no", choices=("no", "fp16", "bf16"))
    parser.add_argument("--full", action="store_true", help="full UNet fine-tune instead of LoRA")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--lean-load", action="store_true", help="read the frozen weights in the training precision (not fp32 then cast)")
    args = parser.parse_args(argv)
    settings = ReferenceSettings(
        resolution=args.resolution,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        lora=not args.full,
        rank=args.rank,
        mixed_precision=args.mixed_precision,
    )
    import torch

    load_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.mixed_precision) if args.lean_load else None
    components = load_components(args.model, load_dtype=load_dtype, lora=not args.full)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as handle:

        def write(record: StepRecord) -> None:
            handle.write(json.dumps(record.__dict__) + "\n")
            handle.flush()

        train_reference(components, kohya_items(args.data), settings, args.steps, args.device, on_step=write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
