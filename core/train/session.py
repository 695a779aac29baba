"""The built parts of a run that stay fixed while it trains (``startup.build_session`` makes them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from core.train.data.batches import Batches
from core.train.model.methods import Method


@dataclass
class Accel:
    """The started accelerator and what it decided: precision, this rank, the device."""

    acc: Any
    precision: str
    weight_dtype: Any
    #: Start-up warnings (precision fallbacks) to record once the metrics file is open.
    notes: list[str]

    @property
    def device(self) -> Any:
        return self.acc.device

    @property
    def rank(self) -> int:
        return int(self.acc.process_index)

    @property
    def world(self) -> int:
        return int(self.acc.num_processes)


@dataclass
class Model:
    """The loaded components with the method's trainable part, placed and configured."""

    components: Any
    method: Method
    #: The dtype the denoiser runs in (fp32/bf16 when it is trained in full, else the autocast dtype).
    denoiser_dtype: Any
    channels_last: bool
    ema: Any
    #: The denoiser's block swap (``core.train.model.block_swap.BlockSwap``), or None.
    swap: Any = None
    #: The sample prompts encoded at start-up (``core.train.outputs.sampling.SampleTexts``) when the text
    #: encoders were freed after caching; None while the encoders stay (the samples encode their text).
    sample_texts: Any = None


@dataclass
class Optimization:
    """The prepared trainable modules, the optimizer and its LR schedule."""

    wrapped: dict[str, Any]
    optimizer: Any
    lr_scheduler: Any
    #: The fused backward pass (optimizer steps inside backward), or None.
    fused: Any
    params: list[Any]


@dataclass
class Session:
    """Config, accelerator, model, data and optimizer of one run in one rank."""

    config: Any
    #: run.toml's [settings] and [schedule] with defaults, read once.
    settings: dict[str, Any]
    sched: dict[str, Any]
    method_kind: str
    accel: Accel
    model: Model
    data: Batches
    optim: Optimization
    #: The run's identity in kohya metadata (kept across resumes by the checkpoint state).
    started_at: float
    session_id: int

    @property
    def family(self) -> str:
        return str(self.model.components.family)

    @property
    def acc(self) -> Any:
        return self.accel.acc

    @property
    def device(self) -> Any:
        return self.accel.device

    @property
    def rank(self) -> int:
        return self.accel.rank

    @property
    def world(self) -> int:
        return self.accel.world

    @property
    def components(self) -> Any:
        return self.model.components

    @property
    def method(self) -> Method:
        return self.model.method

    def denoiser(self) -> Any:
        """The denoiser as the step calls it (prepared or compiled when it is trained)."""
        return self.optim.wrapped.get(self.model.components.spec.denoiser, self.model.components.denoiser)

    def text_encoders(self) -> list[Any]:
        """The text encoders as the step calls them (the prepared ones when trained)."""
        components = self.model.components
        return [self.optim.wrapped.get(n, te) for n, te in zip(components.text_encoder_names, components.text_encoders)]
