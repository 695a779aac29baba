"""Training objectives, shared by the families: what noise is added, what the denoiser predicts, how losses weigh.

* :class:`DdpmObjective` (``epsilon``, ``v_prediction``): a DDPM noise schedule's ``add_noise``
  and ``get_velocity``, integer timesteps drawn uniformly, min-SNR-γ loss weighting
  (Hang et al. 2023: ``min(SNR, γ) / SNR`` for epsilon, ``/ (SNR + 1)`` for v).
* :class:`FlowObjective` (``flow``): rectified flow as SD 3.x and FLUX.1 train it: ``x_t = (1 - σ)
  x_0 + σ ε``, the target is the velocity ``ε - x_0``, σ drawn ``uniform``, ``logit_normal``
  or by SD3's ``mode`` density, then shifted (``σ' = s σ / (1 + (s - 1) σ)``), and the loss
  weighted ``none``, ``sigma_sqrt`` (σ⁻²) or ``cosmap`` (2 / (π (1 - 2σ + 2σ²))).

An objective's methods take and return torch tensors (torch is imported inside them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.families.flow_mmdit import FLOW_SAMPLINGS, FLOW_SETTINGS, FLOW_WEIGHTINGS

__all__ = ["FLOW_SAMPLINGS", "FLOW_SETTINGS", "FLOW_WEIGHTINGS", "DdpmObjective", "FlowObjective"]


@dataclass
class DdpmObjective:
    """Epsilon or v-prediction over a diffusers DDPM scheduler (its ``alphas_cumprod``)."""

    scheduler: Any
    prediction_type: str

    def timesteps(self, batch_size: int, generator: Any, device: Any, latent_size: tuple[int, int] | None = None) -> Any:
        """Integer timesteps, uniform over the schedule's training steps (the latent size does not matter)."""
        import torch

        return torch.randint(0, self.scheduler.config.num_train_timesteps, (batch_size,), generator=generator, device=device).long()

    def noisy(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """The latents noised to ``timesteps``."""
        return self.scheduler.add_noise(latents, noise, timesteps)

    def target(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """What the denoiser is trained to predict: the noise, or the velocity for v-prediction."""
        if self.prediction_type == "v_prediction":
            return self.scheduler.get_velocity(latents, noise, timesteps)
        return noise

    def loss_weights(self, timesteps: Any, settings: Mapping[str, Any]) -> Any | None:
        """Min-SNR-γ weights per sample when ``settings["min_snr_gamma"]`` is set, else None."""
        gamma = float(settings.get("min_snr_gamma") or 0)
        return min_snr_weights(self.scheduler, timesteps, gamma, self.prediction_type) if gamma else None


def check_objective_settings(spec: Any, prediction_type: str, settings: Mapping[str, Any]) -> None:
    """UserError for run settings the objective cannot honour, never a silent ignore: a
    prediction type the family does not train with, min-SNR-γ (a DDPM weighting) on flow, and
    the flow settings changed on a DDPM objective."""
    from core.errors import UserError

    if prediction_type != "flow":
        changed = [key for key, default in FLOW_SETTINGS.items() if key in settings and settings[key] != default]
        if changed:
            raise UserError(f"settings.{changed[0]} shapes flow matching and the {spec.name} family trains with {prediction_type}; remove it from [settings]")

    if prediction_type not in spec.objectives:
        raise UserError(f"the {spec.name} family trains with {', '.join(spec.objectives)}, not {prediction_type}; remove prediction_type from [model] in run.toml")
    if prediction_type == "flow" and float(settings.get("min_snr_gamma") or 0):
        raise UserError(f"min_snr_gamma weights DDPM timesteps and the {spec.name} family trains with flow matching; set settings.min_snr_gamma = 0")


def min_snr_weights(scheduler: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    """``min(SNR, γ) / SNR`` (epsilon) or ``min(SNR, γ) / (SNR + 1)`` (v-prediction) per timestep."""
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


@dataclass
class FlowObjective:
    """Rectified flow: σ-sampling, shift and loss weighting as SD 3.x / FLUX.1 trainers use them.

    Timesteps given to the denoiser are ``σ × num_train_timesteps`` (floats), as diffusers'
    flow-matching scheduler numbers them.
    """

    sampling: str = "logit_normal"
    shift: float = 1.0
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    weighting: str = "none"
    num_train_timesteps: int = 1000
    #: FLUX.1's resolution-dependent shift: ``(base_shift, max_shift, base_tokens, max_tokens, patch)``;
    #: with it the shift is ``exp(μ)``, μ linear in the batch's image tokens (latent h·w / patch²).
    token_shift: tuple[float, float, int, int, int] | None = None

    def __post_init__(self) -> None:
        if self.sampling not in FLOW_SAMPLINGS:
            raise ValueError(f"flow sampling '{self.sampling}' is not one of {', '.join(FLOW_SAMPLINGS)}")
        if self.weighting not in FLOW_WEIGHTINGS:
            raise ValueError(f"flow weighting '{self.weighting}' is not one of {', '.join(FLOW_WEIGHTINGS)}")
        if self.shift <= 0:
            raise ValueError(f"flow shift must be positive, not {self.shift}")

    def shift_for(self, latent_size: tuple[int, int] | None) -> float:
        """The shift for a batch of latents ``(height, width)``: ``shift``, or FLUX.1's token-count rule."""
        if self.token_shift is None or latent_size is None:
            return self.shift
        base_shift, max_shift, base_tokens, max_tokens, patch = self.token_shift
        tokens = (latent_size[0] // patch) * (latent_size[1] // patch)
        mu = base_shift + (max_shift - base_shift) * (tokens - base_tokens) / (max_tokens - base_tokens)
        return math.exp(mu)

    def sigmas(self, batch_size: int, generator: Any, device: Any, latent_size: tuple[int, int] | None = None) -> Any:
        """σ per sample in (0, 1), drawn by ``sampling`` and then shifted (for the batch's latent size)."""
        import torch

        if self.sampling == "logit_normal":
            normal = torch.randn((batch_size,), generator=generator, device=device)
            u = torch.sigmoid(normal * self.logit_std + self.logit_mean)
        else:
            u = torch.rand((batch_size,), generator=generator, device=device)
            if self.sampling == "mode":
                u = 1 - u - self.mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        return shift_sigmas(u, self.shift_for(latent_size))

    def timesteps(self, batch_size: int, generator: Any, device: Any, latent_size: tuple[int, int] | None = None) -> Any:
        """The denoiser's timesteps: σ × ``num_train_timesteps``."""
        return self.sigmas(batch_size, generator, device, latent_size) * self.num_train_timesteps

    def _sigma(self, timesteps: Any, like: Any) -> Any:
        sigma = (timesteps.float() / self.num_train_timesteps).to(like.device)
        return sigma.view(-1, *([1] * (like.ndim - 1)))

    def noisy(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """``(1 - σ) x_0 + σ ε``."""
        sigma = self._sigma(timesteps, latents)
        return (1 - sigma) * latents + sigma * noise

    def target(self, latents: Any, noise: Any, timesteps: Any) -> Any:
        """The velocity ``ε - x_0`` (constant along the straight path)."""
        return noise - latents

    def loss_weights(self, timesteps: Any, settings: Mapping[str, Any]) -> Any | None:
        """Per-sample weights of ``weighting`` (None for ``none``)."""
        sigma = timesteps.float() / self.num_train_timesteps
        if self.weighting == "sigma_sqrt":
            return sigma**-2.0
        if self.weighting == "cosmap":
            return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma**2))
        return None


def shift_sigmas(sigma: Any, shift: float) -> Any:
    """SD3's resolution shift ``s σ / (1 + (s - 1) σ)``: larger ``s`` moves σ towards 1 (more noise)."""
    return shift * sigma / (1 + (shift - 1) * sigma)
