"""The FLUX.1 reference: a LoRA training loop written the way diffusers' ``train_dreambooth_lora_flux.py`` does it.

Per step, as the example with per-image captions (``--caption_column``) and without
``--cache_latents`` runs: the data loader opens, resizes, crops and normalises each image; the
VAE encodes it (a posterior sample, ``(z - shift) × scaling``); CLIP-L (pooled) and T5-XXL encode
its caption; σ is drawn uniformly (``--weighting_scheme none``), the latents noised
``(1 - σ) x + σ ε`` and packed 2×2; the transformer (peft LoRA on ``to_k/to_q/to_v/to_out.0``, the
example's default layers) predicts with guidance 1.0 (``--guidance_scale``); MSE to ``ε - x``,
AdamW, ``.item()`` of the loss. Written from the example's structure (not copied), faithful, not fast.

``python -m bench.reference_flux --model DIR --data DIR --steps N --out times.jsonl`` writes one
``{"step", "step_time_s", "images_per_s", "loss"}`` line per step, as ``bench.reference_loop``.
"""

from __future__ import annotations

import random
from pathlib import Path

from bench.reference_loop import ImageCaptionDataset, StepLog, StepRecord, collate, kohya_items, transformer_reference_main

LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]


def train_flux_reference(model: str, data: str, steps: int, resolution: int, rank: int, mixed_precision: str, out: Path, seed: int = 0, device: str = "cpu") -> list[StepRecord]:
    """Train ``steps`` LoRA steps on the FLUX.1 folder ``model`` on ``device`` and write the records to ``out``."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import FluxPipeline
    from peft import LoraConfig

    from core.families.flow_mmdit import latents as packing

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    torch.manual_seed(seed)
    random.seed(seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    pipe = FluxPipeline.from_pretrained(model, torch_dtype=weight_dtype)
    transformer, vae = pipe.transformer, pipe.vae
    encoders = (pipe.text_encoder, pipe.text_encoder_2)
    for module in (transformer, vae, *encoders):
        module.requires_grad_(False)
        module.to(accelerator.device)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    transformer.train()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2]
    pipe.tokenizer_2.model_max_length = 512
    loader = torch.utils.data.DataLoader(ImageCaptionDataset(kohya_items(data), resolution, tokenizers), shuffle=True, collate_fn=collate, batch_size=1)
    transformer, optimizer, loader = accelerator.prepare(transformer, optimizer, loader)
    scheduler = pipe.scheduler
    scaling, shift = float(vae.config.scaling_factor), float(vae.config.shift_factor)
    with out.open("w", encoding="utf-8") as handle:
        log = StepLog(handle, steps)
        while not log.done:
            for batch in loader:
                with accelerator.accumulate(transformer):
                    x = (vae.encode(batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)).latent_dist.sample() - shift) * scaling
                    pooled = encoders[0](batch["input_ids"][0].to(accelerator.device), output_hidden_states=False).pooler_output
                    hidden = encoders[1](batch["input_ids"][1].to(accelerator.device), output_hidden_states=False)[0]
                    noise = torch.randn_like(x)
                    indices = (torch.rand(x.shape[0]) * scheduler.config.num_train_timesteps).long()
                    sigma = (indices.float() / scheduler.config.num_train_timesteps).view(-1, 1, 1, 1).to(accelerator.device)
                    noisy = (1.0 - sigma) * x + sigma * noise
                    height, width = x.shape[-2:]
                    guidance = torch.full((x.shape[0],), 1.0, device=accelerator.device) if accelerator.unwrap_model(transformer).config.guidance_embeds else None
                    pred = transformer(
                        hidden_states=packing.pack(noisy),
                        timestep=sigma.flatten().to(weight_dtype),
                        guidance=guidance,
                        pooled_projections=pooled,
                        encoder_hidden_states=hidden,
                        txt_ids=packing.text_ids(hidden.shape[1], x.device, weight_dtype),
                        img_ids=packing.image_ids(height, width, x.device, weight_dtype),
                        return_dict=False,
                    )[0]
                    loss = F.mse_loss(packing.unpack(pred, height, width).float(), (noise - x).float())
                    value = accelerator.gather(loss.detach()).mean().item()
                    accelerator.backward(loss)
                    accelerator.clip_grad_norm_(trainable, 1.0)
                    optimizer.step()
                    optimizer.zero_grad()
                log.record(value)
                if log.done:
                    break
    return log.records


def main(argv: list[str] | None = None) -> int:
    """Command line: train the FLUX.1 reference loop and write per-step timings as JSON lines."""
    return transformer_reference_main(argv, "python -m bench.reference_flux", __doc__.splitlines()[0], train_flux_reference)


if __name__ == "__main__":
    raise SystemExit(main())
