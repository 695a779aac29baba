"""The training loop: ``python -m core.train RUN_DIR`` reads run.toml and trains with accelerate.

One optimizer step is ``accumulation`` micro-batches of this rank's share of the epoch
(``core.plan.schedule`` decides which batches and when a step is due, so the planner's step
count is the trainer's). Gradient accumulation is driven here (``no_sync`` on the micro-batches
that do not end a step, the loss divided by the micro-batches of the step) rather than by
accelerate's counter, which would not end a step at an epoch's short end. The LR schedule is
stepped once per optimizer step by this loop, never through accelerate's prepared scheduler
(which steps ``num_processes`` times per call).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from core.errors import UserError
from core.plan import schedule
from core.runs import RunDir

from . import checkpoint as ckpt
from .control import ACTIONS, ControlReader
from .methods import Method, setup_method
from .metrics import EventHandler, MetricsWriter, memory_sample
from .optim import FusedBackward, make_optimizer, make_scheduler
from .status import StatusFile, nan_hint, now, oom_hint

#: How often (in optimizer steps) the loss is read back from a GPU; on the CPU every step.
GPU_LOG_EVERY = 10
#: Seconds between status.json step updates (each is an fsynced atomic write).
STATUS_EVERY_S = 2.0
#: Seconds between control.json polls while paused.
PAUSE_POLL_S = 0.5
#: Set to a file path to have every rank append a hash of its trainable weights (DDP tests).
HASH_ENV = "SDTUI_TRAIN_HASH_FILE"


class TrainingFailed(Exception):
    """The run failed for a reason with a known fix: ``error`` and ``hint`` go into status.json."""

    def __init__(self, error: str, hint: str) -> None:
        super().__init__(error)
        self.error = error
        self.hint = hint


class Trainer:
    """One training run in one process (rank) of ``accelerate launch``."""

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run = RunDir(run_dir)
        self.step = 0
        self.epoch = 0
        self.batch_index = 0
        self.total_steps = 0
        self.stop_signal = False
        self._status_at = 0.0
        self.acc: Any = None
        self.metrics = MetricsWriter(self.run.metrics, enabled=False)
        self.status = StatusFile(self.run.path, enabled=False)

    # ----------------------------------------------------------------- set-up
    def setup(self) -> None:
        """Read the config, start accelerate, load the model, build data, optimizer and schedule."""
        import torch

        from core.config import load_config

        if not self.run.run_toml.is_file():
            raise UserError(f"{self.run.run_toml} does not exist; start the run with `sdtui train CONFIG.toml`, which writes it")
        self.config = load_config(self.run.run_toml)
        self.settings = self.config.settings
        self.sched = self.config.schedule
        self.method_kind = str(self.config.method)
        self._start_accelerator()
        is_main = self.acc.is_main_process
        self.metrics = MetricsWriter(self.run.metrics, enabled=is_main)
        self.status = StatusFile(self.run.path, enabled=is_main)
        self.status.update(state="starting", trainer_pids=self._pids(), error=None, hint=None)
        for message in self.notes:
            self.metrics.event(message, "warning")
        logging.getLogger("core.train").addHandler(EventHandler(self.metrics))
        torch.manual_seed(int(self.sched["seed"]))

        from .models import load_components

        model = self.config.section("model")
        self.components = load_components(model.get("path", ""), model.get("family") or None, model.get("prediction_type", "auto"), model.get("vae", ""))
        self.family = self.components.family
        self._configure_model()
        self.data = self._build_data()
        self._build_optimizer()
        self.control = ControlReader(self.run.control_json, self.status.read().get("control_done", []))
        self._resume()

    def _start_accelerator(self) -> None:
        import torch
        from accelerate import Accelerator
        from accelerate.utils import DistributedDataParallelKwargs

        self.notes: list[str] = []
        precision = self.settings["mixed_precision"]
        cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
        if not cuda and precision == "fp16":
            precision = "bf16" if _cpu_bf16_ok() else "no"
            self.notes.append(f"mixed_precision fp16 needs a GPU; training on the CPU with {precision} instead")
        if cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
            precision = "fp16"
            self.notes.append("this GPU has no bf16; training with fp16 mixed precision (loss scaling) instead")
        if self.settings["full_bf16"] and precision == "fp16":
            raise UserError("settings.full_bf16 keeps the weights in bf16, which needs settings.mixed_precision=bf16; set mixed_precision to bf16 or full_bf16 to false")
        self.precision = precision
        find_unused = bool(self.settings["train_text_encoder"]) or str(self.config.method) == "textual_inversion"
        self.acc = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=1,
            cpu=not cuda,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        )
        self.device = self.acc.device
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    def _pids(self) -> list[dict[str, Any]]:
        import psutil

        from core.launch.procs import describe

        me = describe(psutil.Process(), f"trainer-rank{self.rank}")
        if self.world == 1:
            return [me]
        from accelerate.utils import gather_object

        return list(gather_object([me]))

    def _configure_model(self) -> None:
        """Attention, memory format, checkpointing, the method's trainable part, dtypes and devices."""
        import torch
        from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

        s = self.settings
        c = self.components
        unet = c.unet
        unet.set_attn_processor(AttnProcessor2_0() if s["attention"] == "sdpa" else AttnProcessor())
        self.method: Method = setup_method(self.method_kind, c, s, self.config.section("method")["placeholder_token"])
        trained = set(self.method.modules)
        unet_trained = "unet" in trained
        full = unet_trained and self.method_kind in ("dreambooth", "finetune")
        # frozen parts in the autocast dtype; trained weights fp32 (or bf16 with full_bf16)
        train_dtype = torch.bfloat16 if s["full_bf16"] else torch.float32
        self.unet_dtype = train_dtype if full else self.weight_dtype
        _place(unet, self.device, self.unet_dtype)
        vae_dtype = torch.bfloat16 if self.precision == "bf16" else torch.float32
        _place(c.vae, self.device, vae_dtype)
        for name, te in zip(("text_encoder", "text_encoder_2"), c.text_encoders):
            _place(te, self.device, train_dtype if name in trained and self.method_kind != "lora" else self.weight_dtype)
        for param in self.method.parameters():
            param.data = param.data.to(train_dtype)
        if s["channels_last"]:
            unet.to(memory_format=torch.channels_last)
        if s["gradient_checkpointing"]:
            unet.enable_gradient_checkpointing()
            for name, te in zip(("text_encoder", "text_encoder_2"), c.text_encoders):
                if name in trained:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        unet.train(unet_trained)
        for name, te in zip(("text_encoder", "text_encoder_2"), c.text_encoders):
            te.train(name in trained)
        c.vae.eval()
        self.ema = None
        if s["ema"]:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.method.parameters(), decay=float(s["ema_decay"]))
            self.ema.to(self.device)

    def _build_data(self) -> Batches:
        """Items and buckets, then the latent and text-output caches when asked for and valid."""
        import torch

        from . import data

        train_data = data.build_items(self.config, self.settings)
        s = self.settings
        c = self.components
        class_prompt = self.config.section("method")["class_prompt"]
        if self.method_kind == "dreambooth" and class_prompt.strip() and int(s["class_images_per_instance"]) > 0:
            from .class_images import prepare_class_images

            self.metrics.event(f"preparing class images for prior preservation ('{class_prompt}'); missing ones are generated now")
            with self.acc.main_process_first():
                ready = prepare_class_images(
                    c, train_data, self.run.path, class_prompt, int(s["class_images_per_instance"]), self.device,
                    self.weight_dtype, seed=int(self.sched["seed"]),
                )
            self.metrics.event(f"{len(ready)} class images ready")
        offload = self.device.type == "cuda"
        if s["cache_latents"]:
            folder = self.run.path / "cache" / "latents" if s["cache_latents_to_disk"] else None
            try:
                data.cache_latents(c, train_data, self.device, c.vae.dtype, folder)
                if offload:
                    c.vae.to("cpu")
            except data.CacheNotValid as exc:
                self.metrics.event(str(exc), "warning")
        if s["cache_text_encoder_outputs"]:
            if any(name.startswith("text_encoder") for name in self.method.modules):
                self.metrics.event("the text encoder is trained, so its outputs are not cached", "warning")
            else:
                try:
                    data.cache_text_outputs(c, train_data, self.device, self.weight_dtype)
                    if offload:
                        for te in c.text_encoders:
                            te.to("cpu")
                except data.CacheNotValid as exc:
                    self.metrics.event(str(exc), "warning")
        if offload:
            torch.cuda.empty_cache()
        return Batches(self, train_data)

    def _build_optimizer(self) -> None:
        s = self.settings
        counts = self.data.train_data.bucket_counts()
        self.steps_per_epoch = schedule.steps_per_epoch(counts, int(s["batch_size"]), self.world, int(self.sched["gradient_accumulation"]))
        if self.steps_per_epoch == 0:
            raise UserError("the dataset has no training images; add images to a subset folder of the dataset in run.toml (is_reg = false)")
        max_steps = int(self.sched["max_steps"])
        self.total_steps = max_steps if max_steps > 0 else int(self.sched["epochs"]) * self.steps_per_epoch
        if self.total_steps <= 0:
            raise UserError("the run has no steps; set schedule.epochs or schedule.max_steps above 0 in run.toml")
        warmup = schedule.warmup_steps(self.total_steps, int(self.sched["lr_warmup_steps"]))
        lr = float(self.sched["learning_rate"])
        cuda = self.device.type == "cuda"
        params = self.method.parameters()
        fused = bool(s["fused_backward_pass"])
        if fused and self.world > 1:
            fused = False
            self.metrics.event("fused_backward_pass works with one process only (DDP averages gradients after backward); using a normal optimizer step", "warning")
        if fused and self.precision == "fp16":
            fused = False
            self.metrics.event("fused_backward_pass cannot use fp16 loss scaling; using a normal optimizer step (use bf16 for the fused pass)", "warning")
        modules = list(self.method.modules.items())
        prepared = self.acc.prepare(*[m for _, m in modules])
        prepared = prepared if isinstance(prepared, tuple) else (prepared,)
        self.wrapped = dict(zip([n for n, _ in modules], prepared))
        if s["torch_compile"]:
            import torch

            self.wrapped["unet"] = torch.compile(self.wrapped.get("unet", self.components.unet))
        if fused:
            self.fused: FusedBackward | None = FusedBackward(s["optimizer"], params, lr, cuda, float(s["max_grad_norm"]))
            self.optimizer: Any = self.fused
            self.lr_scheduler: Any = self.fused.make_schedulers(self.sched["lr_scheduler"], warmup, self.total_steps)
        else:
            self.fused = None
            self.optimizer = self.acc.prepare(make_optimizer(s["optimizer"], params, lr, cuda))
            self.lr_scheduler = make_scheduler(self.sched["lr_scheduler"], self.optimizer.optimizer, warmup, self.total_steps)
        self.params = params

    # ----------------------------------------------------------------- resume
    def _resume(self) -> None:
        path = ckpt.latest(self.run.checkpoints)
        if path is None:
            return
        loaded = ckpt.load(path)
        self.method.load_trainable_state(loaded.tensors)
        objects = loaded.objects
        self.optimizer.load_state_dict(objects["optimizer"])
        self.lr_scheduler.load_state_dict(objects["lr_scheduler"])
        if objects.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(objects["scaler"])
        if objects.get("ema") is not None and self.ema is not None:
            self.ema.load_state_dict(objects["ema"])
        rng = objects.get("rng") or []
        if self.rank < len(rng):
            _set_rng(rng[self.rank])
        state = loaded.state
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.batch_index = int(state.get("batch_index", 0))
        if int(state.get("world", self.world)) != self.world:
            self.metrics.event(f"resumed on {self.world} processes a checkpoint written on {state.get('world')}; the rest of epoch {self.epoch + 1} starts over", "warning")
            self.batch_index = 0
        self.metrics.event(f"resumed from {path.name} at step {self.step}")

    # ----------------------------------------------------------------- loop
    def train(self) -> str:
        """Run to the end (or a stop); return the final state."""
        self.status.update(state="running", step=self.step, total_steps=self.total_steps, epoch=self.epoch, steps_per_epoch=self.steps_per_epoch)
        if self.step == 0:
            self.metrics.event(
                f"training {self.method_kind} on {self.family}: {self.total_steps} steps, {self.steps_per_epoch} per epoch, "
                f"{self.world} process(es), {self.data.train_data.items_per_epoch} items per epoch, precision {self.precision}"
            )
            if self.sched["sample_at_start"]:
                self.sample()
        accumulation = int(self.sched["gradient_accumulation"])
        pending: list[tuple[int, int, Any, float, float, int]] = []
        self.log_every = GPU_LOG_EVERY if self.device.type == "cuda" else 1
        while self.step < self.total_steps:
            epoch = self.epoch
            batches = self.data.for_epoch(epoch)
            count = len(batches)
            step_start, images, loss_sum = time.perf_counter(), 0, None
            for index, batch, weight in self.data.iterate(epoch, batches, self.batch_index):
                group_start = index - (index % accumulation)
                group_size = min(accumulation, count - group_start)
                due = schedule.optimizer_step_due(index, count, accumulation)
                loss = self.micro_step(batch, index, due, group_size, weight)
                loss_sum = loss / group_size if loss_sum is None else loss_sum + loss / group_size
                images += len(batch["captions"])
                if not due:
                    continue
                lr = self._current_lr()
                self._optimizer_step()
                self.step += 1
                epoch_done = index + 1 >= count
                self.epoch, self.batch_index = (epoch + 1, 0) if epoch_done else (epoch, index + 1)
                elapsed = time.perf_counter() - step_start
                pending.append((self.step, epoch, self.acc.reduce(loss_sum, "mean"), lr, elapsed, images * self.world))
                step_start, images, loss_sum = time.perf_counter(), 0, None
                if len(pending) >= self.log_every or self.step == self.total_steps:
                    self._flush(pending)
                final = self._after_step(epoch_done, pending)
                if final:
                    return final
                if self.step >= self.total_steps:
                    break
            if self.epoch == epoch and self.step < self.total_steps:  # nothing left of this epoch on this rank
                self.epoch, self.batch_index = epoch + 1, 0
        self._flush(pending)
        self.save(final=True)
        self.status.update(state="finished", step=self.step, epoch=self.epoch, ended_at=now())
        self.metrics.event("training finished")
        return "finished"

    def _after_step(self, epoch_done: bool, pending: list) -> str | None:
        """Epoch bookkeeping, periodic saves and samples, control requests; a final state ends the run."""
        sched = self.sched
        epoch_number = self.epoch  # epochs completed so far (1-based number of the one just ended)
        if epoch_done:
            self._flush(pending)
            self.metrics.write("epoch", epoch=epoch_number, step=self.step)
        last = self.step >= self.total_steps
        save_due = (sched["save_every_steps"] and self.step % sched["save_every_steps"] == 0) or (
            epoch_done and sched["save_every_epochs"] and epoch_number % sched["save_every_epochs"] == 0
        )
        if save_due and not last:
            self._flush(pending)
            self.save()
        sample_due = (sched["sample_every_steps"] and self.step % sched["sample_every_steps"] == 0) or (
            epoch_done and sched["sample_every_epochs"] and epoch_number % sched["sample_every_epochs"] == 0
        )
        if sample_due:
            self._flush(pending)
            self.sample()
        if last:
            return None
        if epoch_done or time.monotonic() - self._status_at >= STATUS_EVERY_S:
            self.status.update(step=self.step, epoch=self.epoch)
            self._status_at = time.monotonic()
        if epoch_done or self.step % self.log_every == 0:  # every rank polls at the same steps
            return self._handle_control(pending)
        return None

    def micro_step(self, batch: dict[str, Any], index: int, due: bool, group_size: int, weight: float = 1.0) -> Any:
        """Forward and backward of one micro-batch; returns its detached loss (0 for a stand-in batch)."""
        if self.fused is not None:
            self.fused.stepping = due
        sync = contextlib.ExitStack()
        if not due:
            for module in self.wrapped.values():
                sync.enter_context(self.acc.no_sync(module))
        with sync:
            with self.acc.autocast():
                loss = self.loss(batch, index) * weight
            if not bool(torch_isfinite(loss)):
                raise TrainingFailed(f"the loss became {float(loss.detach())} (not finite) at step {self.step + 1}", nan_hint(self.settings, float(self.sched["learning_rate"])))
            self.acc.backward(loss / group_size)
        return loss.detach().float()

    def loss(self, batch: dict[str, Any], index: int) -> Any:
        """The denoising loss of a batch (with min-SNR weighting and prior preservation)."""
        import torch
        import torch.nn.functional as F

        s = self.settings
        gen = torch.Generator(device=self.device).manual_seed(_seed(int(self.sched["seed"]), self.epoch, index, self.rank))
        latents = self.data.latents(batch, gen)
        hidden, added = self.data.conditioning(batch)
        bsz = latents.shape[0]
        noise = torch.randn(latents.shape, generator=gen, device=self.device)
        if s["noise_offset"]:
            noise = noise + float(s["noise_offset"]) * torch.randn((bsz, latents.shape[1], 1, 1), generator=gen, device=self.device)
        scheduler = self.components.noise_scheduler
        timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), generator=gen, device=self.device).long()
        noisy = scheduler.add_noise(latents, noise, timesteps)
        target = scheduler.get_velocity(latents, noise, timesteps) if self.components.prediction_type == "v_prediction" else noise
        unet = self.wrapped.get("unet", self.components.unet)
        dtype = self.unet_dtype
        model_input = noisy.to(dtype)
        if s["channels_last"]:
            model_input = model_input.contiguous(memory_format=torch.channels_last)
        kwargs: dict[str, Any] = {"added_cond_kwargs": added} if added is not None else {}
        pred = unet(model_input, timesteps, hidden.to(dtype), **kwargs).sample
        per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        if s["min_snr_gamma"]:
            per_sample = per_sample * _min_snr_weights(scheduler, timesteps, float(s["min_snr_gamma"]), self.components.prediction_type)
        if bool(batch["is_class"].any()):
            prior = batch["is_class"].to(self.device)
            return per_sample[~prior].mean() + float(s["prior_loss_weight"]) * per_sample[prior].mean()
        return per_sample.mean()

    def _optimizer_step(self) -> None:
        if self.fused is not None:
            self.fused.stepping = False
            self.lr_scheduler.step()
        else:
            max_norm = float(self.settings["max_grad_norm"])
            if max_norm > 0:
                self.acc.clip_grad_norm_(self.params, max_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            if not self.optimizer.step_was_skipped:
                self.lr_scheduler.step()
        self.method.after_optimizer_step()
        if self.ema is not None:
            self.ema.step(self.params)

    def _current_lr(self) -> float:
        return float(self.lr_scheduler.get_last_lr()[0])

    def _flush(self, pending: list) -> None:
        """Write the buffered step lines (one host sync for the lot) with every rank's memory."""
        if not pending:
            return
        import torch

        losses = torch.stack([p[2] for p in pending]).float().cpu().tolist()
        mem = self._memory()
        for (step, epoch, _, lr, elapsed, images), loss in zip(pending, losses):
            if not math.isfinite(loss):
                raise TrainingFailed(f"the loss became {loss} (not finite) at step {step}", nan_hint(self.settings, float(self.sched["learning_rate"])))
            self.metrics.write(
                "step", step=step, epoch=epoch + 1, loss=loss, lr=lr,
                images_per_s=round(images / elapsed, 4) if elapsed > 0 else None,
                step_time_s=round(elapsed, 5), mem=mem,
            )
        pending.clear()

    def _memory(self) -> list[dict[str, int]]:
        import torch

        allocated, peak = memory_sample(self.device)
        mine = torch.tensor([allocated, peak], dtype=torch.int64, device=self.device)
        everyone = self.acc.gather(mine.unsqueeze(0)).cpu().tolist() if self.world > 1 else [mine.tolist()]
        return [{"rank": r, "allocated": a, "peak": p} for r, (a, p) in enumerate(everyone)]

    # ----------------------------------------------------------------- control
    def _agree(self, actions: list[str]) -> list[str]:
        """Every rank's view of the actions: rank 0's requests plus any rank's stop signal."""
        import torch

        vector = torch.tensor([1 if a in actions else 0 for a in ACTIONS], dtype=torch.int64, device=self.device)
        if self.world > 1:
            vector = self.acc.reduce(vector, "sum")
        return [a for a, n in zip(ACTIONS, vector.tolist()) if n > 0]

    def _poll(self) -> tuple[list[str], list[dict[str, Any]]]:
        requests = self.control.pending() if self.acc.is_main_process else []
        actions = [r["action"] for r in requests]
        if self.stop_signal:
            actions.append("stop")
        return self._agree(actions), requests

    def _ack(self, requests: list[dict[str, Any]]) -> None:
        for request in requests:
            self.control.mark_done(request)
        if requests:
            last = requests[-1]
            self.status.update(control_ack={"id": last["id"], "action": last["action"], "at": now()}, control_done=self.control.done)

    def _handle_control(self, pending: list) -> str | None:
        """Execute the control requests at a step boundary; ``"stopped"`` ends the run."""
        actions, requests = self._poll()
        if not actions:
            return None
        self._flush(pending)
        if "pause" in actions and "resume" not in actions and "stop" not in actions:
            self._execute(actions, requests)
            self.status.update(state="paused", step=self.step)
            self.metrics.event(f"paused at step {self.step}")
            while "resume" not in actions and "stop" not in actions:
                time.sleep(PAUSE_POLL_S)
                actions, requests = self._poll()
                if actions:
                    self._execute(actions, requests)
            if "resume" in actions and "stop" not in actions:
                self.status.update(state="running")
                self.metrics.event(f"resumed at step {self.step}")
            return "stopped" if "stop" in actions else None
        return "stopped" if self._execute(actions, requests) else None

    def _execute(self, actions: list[str], requests: list[dict[str, Any]]) -> bool:
        """Save / sample / stop as asked (every rank takes part), acknowledge; True when stopped."""
        if "save" in actions and "stop" not in actions:
            self.save()
        if "sample" in actions:
            self.sample()
        self._ack(requests)
        if "stop" in actions:
            self.metrics.event(f"stop requested; saving at step {self.step}")
            self.save(final=True)
            self.status.update(state="stopped", step=self.step, epoch=self.epoch, ended_at=now())
            return True
        return False

    # ----------------------------------------------------------------- saving and samples
    def save(self, final: bool = False) -> None:
        """Checkpoint (resumable state) and outputs; only rank 0 writes, every rank takes part."""
        objects: dict[str, Any] = {
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.lr_scheduler.state_dict(),
            "scaler": self.acc.scaler.state_dict() if self.acc.scaler is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": self._gather_rng(),
        }
        self._write_hash()
        if self.acc.is_main_process:
            state = {"epoch": self.epoch, "batch_index": self.batch_index, "world": self.world, "total_steps": self.total_steps}
            path = ckpt.save(self.run.checkpoints, self.step, self.method.trainable_state(), objects, state, int(self.sched["keep_checkpoints"]))
            self.metrics.write("checkpoint", step=self.step, path=str(path.relative_to(self.run.path)))
            self.write_outputs(final)
        self.acc.wait_for_everyone()

    def _gather_rng(self) -> list[dict[str, Any]]:
        mine = _get_rng()
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
        """The results in output/ (with the EMA weights when EMA is on), in the method's formats."""
        import torch

        from core.runs import slug

        from . import outputs

        c = self.components
        name = slug(self.config.name)
        with self._ema_weights():
            if self.method_kind == "lora":
                meta = outputs.lora_metadata(
                    c, self.settings, name=name, steps=self.step, epoch=self.epoch,
                    num_train_images=len(self.data.train_data.items), learning_rate=float(self.sched["learning_rate"]),
                )
                saved = outputs.save_lora(c, self.run.output, name, meta, c.unet, c.text_encoders)
            elif self.method_kind in ("dreambooth", "finetune"):
                half = torch.bfloat16 if self.precision == "bf16" else torch.float16
                saved = outputs.save_full_model(c, self.run.output, name, c.unet, c.text_encoders, dtype=half)
            else:
                saved = outputs.save_embeddings(c, self.run.output, self.method.ti.placeholder, self.method.ti.embeddings())
        self.metrics.event(f"{'final ' if final else ''}output at step {self.step}: {saved.single_file.relative_to(self.run.path)}")

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
            try:
                from .sampling import render_samples

                prompts = self.config.prompts
                ti = self.method.ti
                if ti is not None:
                    prompts = [line.replace(ti.placeholder, " ".join(ti.tokens)) for line in prompts]
                names = ("text_encoder", "text_encoder_2")
                encoders = [self.wrapped.get(n, te) for n, te in zip(names, self.components.text_encoders)]
                with self._ema_weights():
                    written = render_samples(
                        self.components, prompts, self.step, self.run.samples, self.device, self.weight_dtype,
                        default_size=int(self.settings["resolution"]), seed=int(self.sched["seed"]),
                        unet=self.wrapped.get("unet", self.components.unet), text_encoders=encoders,
                    )
                for result in written:
                    self.metrics.write(
                        "sample", step=self.step, prompt_index=result.prompt_index, prompt=self.config.prompts[result.prompt_index],
                        path=str(Path(result.path).relative_to(self.run.path)),
                    )
            except Exception as exc:  # noqa: BLE001 - a sample (even out of memory) must never end the run
                import torch

                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                self.metrics.event(f"sampling at step {self.step} failed ({type(exc).__name__}: {_first_line(exc)}); training continues", "warning")
        self.acc.wait_for_everyone()


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
                embeddings = encode_text(t.components, ids, encoders)
        time_ids = sdxl_time_ids_batch(batch["original_sizes"], batch["crop_top_lefts"], batch["target_sizes"]).to(t.device)
        return embeddings.prompt_embeds, unet_added_conditions(embeddings, time_ids)


# --------------------------------------------------------------------- helpers
def torch_isfinite(loss: Any) -> Any:
    """True when the loss is finite (a host sync; only on the CPU, where it is free)."""
    if loss.device.type == "cuda":
        return True
    import torch

    return torch.isfinite(loss).all()


def _place(module: Any, device: Any, dtype: Any) -> None:
    """Move ``module`` to ``device``, casting only when its dtype differs."""
    if next(module.parameters()).dtype == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def _seed(seed: int, epoch: int, index: int, rank: int) -> int:
    """A per-micro-batch seed, so noise and timesteps are the same after a resume."""
    key = f"{seed}:{epoch}:{index}:{rank}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def _min_snr_weights(scheduler: Any, timesteps: Any, gamma: float, prediction_type: str) -> Any:
    import torch

    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = alphas / (1 - alphas)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def _cpu_bf16_ok() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except RuntimeError:
        return False


def _get_rng() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng(state: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def main(run_dir: str) -> int:
    """Train the run in ``run_dir``; record the final state; 0 finished or stopped, 1 failed."""
    trainer = Trainer(run_dir)

    def on_term(signum: int, _frame: Any) -> None:
        trainer.stop_signal = True

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        trainer.setup()
        state = trainer.train()
    except Exception as exc:  # noqa: BLE001 - every failure is recorded with its sentence
        error, hint = _describe_failure(trainer, exc)
        if not isinstance(exc, (UserError, TrainingFailed)):
            traceback.print_exc()
        print(f"sdtui-train: {error}" + (f" ({hint})" if hint else ""), file=sys.stderr)
        if trainer.acc is None or trainer.acc.is_main_process:
            StatusFile(trainer.run.path).update(state="failed", error=error, hint=hint or None, step=trainer.step, ended_at=now())
            trainer.metrics.event(error + (f"; {hint}" if hint else ""), "error")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        logger = logging.getLogger("core.train")
        for handler in [h for h in logger.handlers if isinstance(h, EventHandler)]:
            logger.removeHandler(handler)
        trainer.metrics.close()
        _end_process_group()
    return 0 if state in ("finished", "stopped") else 1


def _describe_failure(trainer: Trainer, exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, TrainingFailed):
        return exc.error, exc.hint
    if isinstance(exc, UserError):
        hint = ""
        if type(exc).__name__ == "ModelLoadError":
            hint = "fix model.path in run.toml, then start the run again"
        return str(exc), hint
    if _is_oom(exc):
        settings = getattr(trainer, "settings", {})
        return (
            f"out of memory at step {trainer.step + 1}",
            oom_hint(getattr(trainer, "family", "sd1"), getattr(trainer, "method_kind", "lora"), settings, trainer.step + 1),
        )
    return f"the trainer crashed at step {trainer.step + 1} ({type(exc).__name__}: {_first_line(exc)})", "see train.log for the traceback"


def _end_process_group() -> None:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at exit
        pass

