"""Checkpoints, outputs and samples of a run, and the RNG states a checkpoint keeps.

``Saving`` is the part of the ``Trainer`` (``loop.py``) that writes results: only rank 0
writes, every rank takes part.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
from pathlib import Path
from typing import Any

from . import checkpoint as ckpt
from .disk import DiskFull, ensure_space, free_bytes, is_disk_full
from .status import first_line

#: Set to a file path to have every rank append a hash of its trainable weights (DDP tests).
HASH_ENV = "SDTUI_TRAIN_HASH_FILE"


class Saving:
    """Checkpoint, outputs and samples of the ``Trainer``."""

    def save(self, final: bool = False, manual: bool = False) -> None:
        """Checkpoint (resumable state) and outputs; only rank 0 writes, every rank takes part.

        A schedule-free optimizer is in eval mode meanwhile, so both hold its averaged weights.
        A ``manual`` checkpoint (the user's save request) is kept beyond ``keep_checkpoints``.
        """
        with self._eval_weights():
            self._save(final, manual)

    @contextlib.contextmanager
    def _eval_weights(self) -> Any:
        """Schedule-free optimizers switched to their averaged (eval) weights inside the block."""
        from .optim import set_optimizer_mode

        set_optimizer_mode(self.optimizer, train=False)
        try:
            yield
        finally:
            set_optimizer_mode(self.optimizer, train=True)

    def _save(self, final: bool, manual: bool) -> None:
        objects: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": self._gather_rng(),
        }
        self._write_hash()
        if self.acc.is_main_process:
            with self.heartbeat.busy():
                state = {
                    "epoch": self.epoch, "batch_index": self.batch_index, "world": self.world, "total_steps": self.total_steps,
                    "started_at": self.started_at, "session_id": self.session_id,
                }
                path = ckpt.save(self.run.checkpoints, self.step, self.method.trainable_state(), objects, state, int(self.sched["keep_checkpoints"]), manual)
                self.metrics.write("checkpoint", step=self.step, path=str(path.relative_to(self.run.path)), manual=manual)
                if manual:
                    self.metrics.event(
                        f"saved {path.name} as asked; it is kept beyond keep_checkpoints = {int(self.sched['keep_checkpoints'])} "
                        "(which rotates only the periodic checkpoints) until you delete it"
                    )
                self.write_outputs(final)
        self.acc.wait_for_everyone()

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = get_rng()
        if self.world == 1:
            return [mine]
        from accelerate.utils import gather_object

        return list(gather_object([mine]))

    def _write_hash(self) -> None:
        target = os.environ.get(HASH_ENV)
        if not target:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(self.method.trainable_state().items()):
            digest.update(name.encode())
            digest.update(tensor.float().cpu().numpy().tobytes())
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(f"{self.rank} {self.step} {digest.hexdigest()}\n")

    def write_outputs(self, final: bool) -> None:
        """The results in output/ (with the EMA weights when EMA is on), in the method's formats;
        DiskFull before writing when the disk has no room for them (or when a write hits ENOSPC)."""
        needed = self._output_bytes()
        ensure_space(self.run.path, self.run.output, needed, "the output")
        try:
            self._write_outputs(final)
        except Exception as exc:
            if is_disk_full(exc):
                raise DiskFull(self.run.path, free_bytes(self.run.output), needed, "the output") from exc
            raise

    def _output_bytes(self) -> int:
        """An upper bound of what the outputs take: the trained tensors (fp32) in two formats; for
        full models the whole pipeline in 16 bits in two formats."""
        if self.method_kind in ("dreambooth", "finetune"):
            c = self.components
            modules = [c.unet, c.vae, *c.text_encoders]
            return 2 * sum(2 * p.numel() for m in modules for p in m.parameters())
        return 2 * sum(4 * t.numel() for t in self.method.trainable_state().values()) + 64 * 1024

    def _write_outputs(self, final: bool) -> None:
        import torch

        from core.runs import slug

        from . import outputs

        c = self.components
        name = slug(self.config.name)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.settings["save_precision"]]
        with self._ema_weights():
            if self.method_kind == "lora":
                meta = self._lora_metadata(name)
                saved = outputs.save_lora(c, self.run.output, name, meta, c.unet, c.text_encoders, dtype=dtype)
            elif self.method_kind in ("dreambooth", "finetune"):
                saved = outputs.save_full_model(c, self.run.output, name, c.unet, c.text_encoders, dtype=dtype)
            else:
                saved = outputs.save_embeddings(c, self.run.output, self.method.ti.placeholder, self.method.ti.embeddings(), dtype=dtype)
        self.metrics.event(f"{'final ' if final else ''}output at step {self.step}: {saved.single_file.relative_to(self.run.path)}")
        self.status.update(outputs=[str(saved.single_file.resolve()), str(saved.diffusers.resolve())], outputs_step=self.step)

    def _lora_metadata(self, name: str) -> dict[str, str]:
        """sd-scripts' ``ss_*`` and ``modelspec.*`` metadata of the LoRA file saved now."""
        import time
        from importlib.metadata import PackageNotFoundError, version

        from . import kohya_metadata as km
        from .outputs import NETWORK_MODULE, network_args

        c = self.components
        model = self.config.section("model")
        optimizer = type(getattr(self.optimizer, "optimizer", None) or self.optimizer.optimizers[0])
        facts = km.RunFacts(
            family=c.family, v_prediction=c.prediction_type == "v_prediction", model_path=str(c.model_path), vae_path=model["vae"],
            name=name, started_at=self.started_at, session_id=self.session_id, steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps, epochs=math.ceil(self.total_steps / self.steps_per_epoch), world=self.world,
            optimizer=f"{optimizer.__module__}.{optimizer.__name__}", network_module=NETWORK_MODULE[self.settings["lora_type"]],
            network_args=network_args(self.settings),
        )
        if self._ss_metadata is None:  # the start-of-training part (model hashes read the model file once)
            self._ss_metadata = km.ss_metadata(facts, self.settings, self.sched, self.data.train_data, self.config.subsets)
        now = time.time()
        return {
            **self._ss_metadata,
            "ss_training_finished_at": str(now), "ss_steps": str(self.step), "ss_epoch": str(self.epoch),
            **km.model_spec(facts, self.settings, now, _sdtui_version(version, PackageNotFoundError)),
        }

    @contextlib.contextmanager
    def _ema_weights(self) -> Any:
        if self.ema is None:
            yield
            return
        self.ema.store(self.params)
        self.ema.copy_to(self.params)
        try:
            yield
        finally:
            self.ema.restore(self.params)

    def sample(self) -> None:
        """Render the sample prompts (rank 0); a failure is a warning and training goes on."""
        if self.acc.is_main_process and self.config.prompts:
            with self.heartbeat.busy():
                self._sample()
        self.acc.wait_for_everyone()

    def _sample(self) -> None:
        """Render the prompts and record each sample (rank 0)."""
        try:
            from .sampling import render_samples

            prompts = self.config.prompts
            ti = self.method.ti
            if ti is not None:
                prompts = [line.replace(ti.placeholder, " ".join(ti.tokens)) for line in prompts]
            names = ("text_encoder", "text_encoder_2")
            encoders = [self.wrapped.get(n, te) for n, te in zip(names, self.components.text_encoders)]
            with self._eval_weights(), self._ema_weights():
                written = render_samples(
                    self.components, prompts, self.step, self.run.samples, self.device, self.weight_dtype,
                    default_size=int(self.settings["resolution"]), seed=int(self.sched["seed"]),
                    unet=self.wrapped.get("unet", self.components.unet), text_encoders=encoders,
                    sampler=self.config.section("samples")["sampler"], clip_skip=int(self.settings["clip_skip"]),
                )
            from .trackers import log_samples

            log_samples(self.acc, self.step, [(r.prompt_index, Path(r.path)) for r in written])
            for result in written:
                self.metrics.write(
                    "sample", step=self.step, prompt_index=result.prompt_index, prompt=self.config.prompts[result.prompt_index],
                    path=str(Path(result.path).relative_to(self.run.path)),
                )
        except Exception as exc:  # noqa: BLE001 - a sample (even out of memory) must never end the run
            import torch

            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self.metrics.event(f"sampling at step {self.step} failed ({type(exc).__name__}: {first_line(exc)}); training continues", "warning")


def _sdtui_version(version: Any, missing: type[Exception]) -> str:
    try:
        return str(version("sdtui"))
    except missing:
        return "unknown"


def get_rng() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
