"""Latents of the flow transformer families: 16-channel VAE latents normalised with scaling and shift, 2×2 packing and image ids.

``normalise(z) = (z - shift_factor) * scaling_factor`` (FLUX.1: 0.1159 / 0.3611, SD 3.x:
0.0609 / 1.5305), read from the VAE's own config so a fine-tuned VAE keeps its values.
Packing turns ``[B, C, h, w]`` latents into ``[B, (h/2)(w/2), 4C]`` tokens (FLUX.1, Chroma);
the image ids are each token's ``(0, row, column)`` for the rotary position embedding.
Torch is imported inside the functions.
"""

from __future__ import annotations

from typing import Any


def factors(vae: Any) -> tuple[float, float]:
    """``(scaling_factor, shift_factor)`` of a VAE's config (shift 0 where it has none)."""
    config = vae.config
    return float(config.scaling_factor), float(getattr(config, "shift_factor", None) or 0.0)


def encode_latents(vae: Any, pixels: Any, generator: Any = None) -> Any:
    """fp32 latents ``(z - shift) * scaling`` of ``pixels`` in [-1, 1]: a posterior sample with ``generator``, its mode without."""
    import torch

    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        latents = posterior.sample(generator=generator) if generator is not None else posterior.mode()
    scaling, shift = factors(vae)
    return ((latents - shift) * scaling).float()


def decode_latents(vae: Any, latents: Any) -> Any:
    """Pixels in [-1, 1] of latents normalised as :func:`encode_latents` does."""
    import torch

    scaling, shift = factors(vae)
    with torch.no_grad():
        return vae.decode(latents.to(vae.dtype) / scaling + shift).sample


def pack(latents: Any, patch: int = 2) -> Any:
    """``[B, C, h, w]`` -> ``[B, (h/p)(w/p), C·p²]``: each p×p patch one token (row-major, channels outermost)."""
    b, c, h, w = latents.shape
    grid = latents.reshape(b, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b, (h // patch) * (w // patch), c * patch * patch)


def unpack(tokens: Any, height: int, width: int, patch: int = 2) -> Any:
    """The inverse of :func:`pack` for latents of ``height`` × ``width``."""
    b, _, features = tokens.shape
    c = features // (patch * patch)
    grid = tokens.reshape(b, height // patch, width // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, c, height, width)


def image_ids(height: int, width: int, device: Any, dtype: Any, patch: int = 2) -> Any:
    """``[(h/p)(w/p), 3]`` position ids of the packed tokens of ``height`` × ``width`` latents: ``(0, row, column)``."""
    import torch

    rows, cols = height // patch, width // patch
    ids = torch.zeros(rows, cols, 3, device=device, dtype=dtype)
    ids[..., 1] = torch.arange(rows, device=device, dtype=dtype)[:, None]
    ids[..., 2] = torch.arange(cols, device=device, dtype=dtype)[None, :]
    return ids.reshape(rows * cols, 3)


def text_ids(tokens: int, device: Any, dtype: Any) -> Any:
    """``[tokens, 3]`` zeros: the text tokens' position ids (FLUX.1 and Chroma place every text token at the origin)."""
    import torch

    return torch.zeros(tokens, 3, device=device, dtype=dtype)
