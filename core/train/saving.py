"""Checkpoints, outputs and samples of a run, and the RNG states a checkpoint keeps.

The :class:`Saver` writes the results of the built ``Session`` at the run's ``Progress``: only
rank 0 writes, every rank takes part.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.folder_watch import again_if_moved
from core.settings import FULL_METHODS
from core.train.disk import DiskFull, ensure_space, free_bytes, is_disk_full
from core.train.metrics_writer import MetricsWriter
from core.train.outputs import train_state as ckpt
from core.train.progress import Progress
from core.train.session import Session
from core.train.status import Heartbeat, StatusFile, first_line


class Saver:
    """Checkpoints, outputs and samples of one rank (rank 0 writes them).

    ``weights_hash``: a file every rank appends ``RANK STEP SHA256`` of its trainable weights to
    at each checkpoint (how the DDP tests see that the ranks hold the same weights), or None.
    """

    def __init__(
        self,
        session: Session,
        progress: Progress,
        run: Any,
        metrics: MetricsWriter,
        status: StatusFile,
        heartbeat: Heartbeat,
        weights_hash: Path | None = None,
        follow: Callable[[], bool] | None = None,
    ) -> None:
        self.session = session
        self.progress = progress
        self.run = run
        self.metrics = metrics
        self.status = status
        self.heartbeat = heartbeat
        self.weights_hash = weights_hash
        self._ss_metadata: dict[str, str] | None = None
        #: Follows a move of the run folder (True when it was moved): a save the move cut short is
        #: written again at the new path.
        self.follow = follow

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
        from core.train.model.optimizer import set_optimizer_mode

        set_optimizer_mode(self.session.optim.optimizer, train=False)
        try:
            yield
        finally:
            set_optimizer_mode(self.session.optim.optimizer, train=True)

    def _save(self, final: bool, manual: bool) -> None:
        session, optim = self.session, self.session.optim
        acc, ema = session.acc, session.model.ema
        objects: dict[str, Any] = {
            "optimizer": optim.optimizer.state_dict(),
            "lr_scheduler": optim.lr_scheduler.state_dict(),
            "scaler": acc.scaler.state_dict() if acc.scaler is not None else None,
            "ema": ema.state_dict() if ema is not None else None,
            "rng": self._gather_rng(),
        }
        self._write_hash()
        if acc.is_main_process:
            with self.heartbeat.busy():
                again_if_moved(lambda: self._write_checkpoint(objects, final, manual), self.follow)
        acc.wait_for_everyone()

    def _write_checkpoint(self, objects: dict[str, Any], final: bool, manual: bool) -> None:
        """Rank 0: the checkpoint folder, its metrics line and the outputs."""
        session, progress = self.session, self.progress
        state = {
            "epoch": progress.epoch,
            "batch_index": progress.batch_index,
            "world": session.world,
            "total_steps": progress.total_steps,
            "started_at": session.started_at,
            "session_id": session.session_id,
        }
        keep = int(session.sched["keep_checkpoints"])
        path = ckpt.save(self.run.checkpoints, progress.step, session.method.trainable_state(), objects, state, keep, manual)
        self.metrics.write("checkpoint", step=progress.step, path=str(path.relative_to(self.run.path)), manual=manual)
        if manual:
            self.metrics.event(f"saved {path.name} as asked; it is kept beyond keep_checkpoints = {keep} (which rotates only the periodic checkpoints) until you delete it")
        self.write_outputs(final)

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = get_rng()
        if self.session.world == 1:
            return [mine]
        from accelerate.utils import gather_object

        return list(gather_object([mine]))

    def _write_hash(self) -> None:
        if self.weights_hash is None:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(self.session.method.trainable_state().items()):
            digest.update(name.encode())
            digest.update(tensor.float().cpu().numpy().tobytes())
        with open(self.weights_hash, "a", encoding="utf-8") as handle:
            handle.write(f"{self.session.rank} {self.progress.step} {digest.hexdigest()}\n")

    @property
    def output_dir(self) -> Path:
        """Where the results go: ``settings.output_dir`` when set, else output/ in the run folder."""
        chosen = str(self.session.settings["output_dir"]).strip()
        return Path(chosen).expanduser().absolute() if chosen else self.run.output

    def write_outputs(self, final: bool) -> None:
        """The results in the output folder (with the EMA weights when EMA is on), in the method's formats;
        DiskFull before writing when the disk has no room for them (or when a write hits ENOSPC)."""
        needed = self._output_bytes()
        out = self.output_dir
        out.mkdir(parents=True, exist_ok=True)
        ensure_space(self.run.path, out, needed, "the output")
        try:
            self._write_outputs(final, out)
        except Exception as exc:
            if is_disk_full(exc):
                raise DiskFull(self.run.path, free_bytes(out), needed, "the output") from exc
            raise

    def _output_bytes(self) -> int:
        """An upper bound of what the outputs take: the trained tensors (fp32) in two formats; for
        full models the whole pipeline in 16 bits in two formats."""
        if self.session.method_kind in FULL_METHODS:
            c = self.session.components
            modules = [c.denoiser, c.vae, *c.text_encoders]
            return 2 * sum(2 * p.numel() for m in modules for p in m.parameters())
        return 2 * sum(4 * t.numel() for t in self.session.method.trainable_state().values()) + 64 * 1024

    def _write_outputs(self, final: bool, out: Path) -> None:
        import torch

        from core.runs.listing import slug
        from core.train.outputs import files as outputs

        session = self.session
        c = session.components
        kind = session.method_kind
        name = slug(session.settings["output_name"] or session.config.name)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[session.settings["save_precision"]]
        with self._ema_weights():
            if kind == "lora":
                meta = self._lora_metadata(name)
                saved = outputs.save_lora(c, out, name, meta, c.denoiser, c.text_encoders, dtype=dtype)
            elif kind in FULL_METHODS:
                saved = outputs.save_full_model(c, out, name, c.denoiser, c.text_encoders, dtype=dtype)
            else:
                ti = session.method.ti
                saved = outputs.save_embeddings(c, out, ti.placeholder, ti.embeddings(), dtype=dtype)
        step = self.progress.step
        shown = saved.single_file.relative_to(self.run.path) if saved.single_file.is_relative_to(self.run.path) else saved.single_file
        self.metrics.event(f"{'final ' if final else ''}output at step {step}: {shown}")
        self.status.update(outputs=[str(saved.single_file.resolve()), str(saved.diffusers.resolve())], outputs_step=step)

    def _lora_metadata(self, name: str) -> dict[str, str]:
        """sd-scripts' ``ss_*`` and ``modelspec.*`` metadata of the LoRA file saved now."""
        import time
        from importlib.metadata import PackageNotFoundError, version

        from core.train.outputs import kohya_metadata as km
        from core.train.outputs.files import NETWORK_MODULE, network_args

        session, progress = self.session, self.progress
        c = session.components
        settings = session.settings
        model = session.config.section("model")
        optimizer = session.optim.optimizer
        optimizer = type(getattr(optimizer, "optimizer", None) or optimizer.optimizers[0])
        facts = km.RunFacts(
            family=c.family,
            v_prediction=c.prediction_type == "v_prediction",
            model_path=str(c.model_path),
            vae_path=model["vae"],
            name=name,
            started_at=session.started_at,
            session_id=session.session_id,
            steps_per_epoch=progress.steps_per_epoch,
            total_steps=progress.total_steps,
            epochs=math.ceil(progress.total_steps / progress.steps_per_epoch),
            world=session.world,
            optimizer=f"{optimizer.__module__}.{optimizer.__name__}",
            network_module=NETWORK_MODULE[settings["lora_type"]],
            network_args=network_args(settings),
            family_values=c.runtime.kohya_metadata(c.prediction_type == "v_prediction", variant=c.variant),
        )
        if self._ss_metadata is None:  # the start-of-training part (model hashes read the model file once)
            self._ss_metadata = km.ss_metadata(facts, settings, session.sched, session.data.train_data, session.config.subsets)
        now = time.time()
        return {
            **self._ss_metadata,
            "ss_training_finished_at": str(now),
            "ss_steps": str(progress.step),
            "ss_epoch": str(epochs_trained(progress.step, progress.steps_per_epoch)),
            **km.model_spec(facts, settings, now, _sdtui_version(version, PackageNotFoundError)),
        }

    @contextlib.contextmanager
    def _ema_weights(self) -> Any:
        ema, params = self.session.model.ema, self.session.optim.params
        if ema is None:
            yield
            return
        ema.store(params)
        ema.copy_to(params)
        try:
            yield
        finally:
            ema.restore(params)

    def sample(self) -> None:
        """Render the sample prompts (rank 0); a failure is a warning and training goes on."""
        if self.session.acc.is_main_process and self.session.config.prompts:
            with self.heartbeat.busy():
                self._sample()
        self.session.acc.wait_for_everyone()

    def _sample(self) -> None:
        """Render the prompts and record each sample (rank 0)."""
        session = self.session
        step = self.progress.step
        try:
            from core.train.outputs.sampling import render_samples

            prompts = session.config.prompts
            ti = session.method.ti
            if ti is not None:
                prompts = [line.replace(ti.placeholder, " ".join(ti.tokens)) for line in prompts]
            with self._eval_weights(), self._ema_weights():
                written = render_samples(
                    session.components,
                    prompts,
                    step,
                    self.run.samples,
                    session.device,
                    session.acc.autocast,
                    default_size=int(session.settings["resolution"]),
                    seed=int(session.sched["seed"]),
                    denoiser=session.denoiser(),
                    text_encoders=session.text_encoders(),
                    sampler=session.config.section("samples")["sampler"],
                    clip_skip=int(session.settings["clip_skip"]),
                    texts=session.model.sample_texts,
                )
            from core.train.trackers import log_samples

            log_samples(session.acc, step, [(r.prompt_index, Path(r.path)) for r in written])
            for result in written:
                self.metrics.write(
                    "sample",
                    step=step,
                    prompt_index=result.prompt_index,
                    prompt=session.config.prompts[result.prompt_index],
                    path=str(Path(result.path).relative_to(self.run.path)),
                )
            self.status.update(sample_error=None)
        except Exception as exc:  # noqa: BLE001 - a sample (even out of memory) must never end the run
            import torch

            if session.device.type == "cuda":
                torch.cuda.empty_cache()
            self._sample_failed(f"sampling at step {step} failed ({type(exc).__name__}: {first_line(exc)}); training continues")

    def _sample_failed(self, message: str) -> None:
        """A failed sample where the user looks: status.json ``sample_error`` (the dashboard's notice
        line and ``sdtui status``, cleared by the next sample that renders), train.log and metrics."""
        self.status.update(sample_error=message)
        print(f"sdtui-train: warning: {message}", flush=True)
        self.metrics.event(message, "warning")


def epochs_trained(step: int, steps_per_epoch: int) -> int:
    """sd-scripts' ``ss_epoch``: the epochs the steps so far reach into (a started epoch counts, as
    its final save of a step-mode run writes ceil(max_train_steps / steps per epoch))."""
    return math.ceil(step / steps_per_epoch) if steps_per_epoch > 0 else 0


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
