"""The SD 3.5 reference: a LoRA training loop written the way diffusers' ``train_dreambooth_lora_sd3.py`` does it.

Per step, as the example with per-image captions (``--caption_column``) runs: the data loader
opens, resizes, crops and normalises each image; the VAE encodes it (a posterior sample,
``(z - shift) × scaling``); CLIP-L, CLIP-G (penultimate states, pooled outputs) and T5-XXL (256
tokens) encode its caption and the states are joined as ``StableDiffusion3Pipeline`` joins them;
σ is drawn by the example's default ``--weighting_scheme logit_normal`` (u = sigmoid(N(0, 1)),
then the scheduler's shifted σ at that index), the latents noised ``(1 - σ) x + σ ε``; the
transformer (peft LoRA on the example's default layers, both streams' q/k/v/out) predicts; MSE to
``ε - x``, AdamW, ``.item()`` of the loss. Written from the example's structure (not copied),
faithful, not fast.

``python -m bench.reference_sd3 --model DIR --data DIR --steps N --out times.jsonl`` writes one
``{"step", "step_time_s", "images_per_s", "loss"}`` line per step, as ``bench.reference_loop``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from bench.reference_loop import ImageCaptionDataset, StepLog, StepRecord, collate, kohya_items, transformer_reference_main

#: train_dreambooth_lora_sd3.py's default ``--lora_layers``.
LORA_TARGETS = ["attn.add_k_proj", "attn.add_q_proj", "attn.add_v_proj", "attn.to_add_out", "attn.to_k", "attn.to_out.0", "attn.to_q", "attn.to_v"]


def encode(pipe: Any, input_ids: list[Any], device: Any) -> tuple[Any, Any]:
    """SD3's text conditioning of a batch: (CLIP-L | CLIP-G penultimate states, padded to T5's width) then T5's states; both CLIPs' pooled outputs."""
    import torch
    import torch.nn.functional as F

    states, pooled = [], []
    for encoder, ids in zip((pipe.text_encoder, pipe.text_encoder_2), input_ids[:2]):
        out = encoder(ids.to(device), output_hidden_states=True)
        states.append(out.hidden_states[-2])
        pooled.append(out[0])
    t5 = pipe.text_encoder_3(input_ids[2].to(device))[0]
    clip = torch.cat(states, dim=-1)
    clip = F.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return torch.cat([clip, t5], dim=-2), torch.cat(pooled, dim=-1)


def train_sd3_reference(model: str, data: str, steps: int, resolution: int, rank: int, mixed_precision: str, out: Path, seed: int = 0, device: str = "cpu") -> list[StepRecord]:
    """Train ``steps`` LoRA steps on the SD 3.5 folder ``model`` on ``device`` and write the records to ``out``."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import StableDiffusion3Pipeline
    from peft import LoraConfig

    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=device == "cpu")
    torch.manual_seed(seed)
    random.seed(seed)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision, torch.float32)
    pipe = StableDiffusion3Pipeline.from_pretrained(model, torch_dtype=weight_dtype)
    transformer, vae = pipe.transformer, pipe.vae
    for module in (transformer, vae, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3):
        module.requires_grad_(False)
        module.to(accelerator.device)
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    transformer.train()
    trainable = [p for p in transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4, eps=1e-8)
    pipe.tokenizer_3.model_max_length = 256
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2, pipe.tokenizer_3]
    loader = torch.utils.data.DataLoader(ImageCaptionDataset(kohya_items(data), resolution, tokenizers), shuffle=True, collate_fn=collate, batch_size=1)
    transformer, optimizer, loader = accelerator.prepare(transformer, optimizer, loader)
    scheduler = pipe.scheduler
    sigmas_table = scheduler.sigmas.to(accelerator.device)
    scaling, shift = float(vae.config.scaling_factor), float(vae.config.shift_factor)
    with out.open("w", encoding="utf-8") as handle:
        log = StepLog(handle, steps)
        while not log.done:
            for batch in loader:
                with accelerator.accumulate(transformer):
                    x = (vae.encode(batch["pixel_values"].to(accelerator.device, dtype=weight_dtype)).latent_dist.sample() - shift) * scaling
                    hidden, pooled = encode(pipe, batch["input_ids"], accelerator.device)
                    noise = torch.randn_like(x)
                    u = torch.sigmoid(torch.randn(x.shape[0]))
                    indices = (u * scheduler.config.num_train_timesteps).long()
                    timesteps = scheduler.timesteps[indices].to(accelerator.device)
                    sigma = sigmas_table[indices].view(-1, 1, 1, 1).to(dtype=x.dtype)
                    noisy = (1.0 - sigma) * x + sigma * noise
                    pred = transformer(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=hidden, pooled_projections=pooled, return_dict=False)[0]
                    loss = F.mse_loss(pred.float(), (noise - x).float())
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
    """Command line: train the SD 3.5 reference loop and write per-step timings as JSON lines."""
    return transformer_reference_main(argv, "python -m bench.reference_sd3", __doc__.splitlines()[0], train_sd3_reference)


if __name__ == "__main__":
    raise SystemExit(main())
