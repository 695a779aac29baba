"""Start-up of a run: config, accelerate, the model and its trainable part, data, optimizer, resume.

``Startup`` is the part of the ``Trainer`` (``loop.py``) that runs before the first step.
"""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

from core.errors import UserError
from core.plan import schedule
from core.runfiles import integer, number
from core.settings import optimizer_rule_warnings

from . import checkpoint as ckpt
from .batches import Batches
from .control import ControlReader
from .methods import Method, setup_method
from .metrics import EventHandler, MetricsWriter, ProgressLog
from .optim import FusedBackward, make_optimizer, make_scheduler, param_groups, set_optimizer_mode
from .phases import Phases
from .saving import set_rng
from .status import Heartbeat, NotOwner, StatusFile


class Startup:
    """Set-up and resume of the ``Trainer``."""

    def setup(self) -> None:
        """Read the config, start accelerate, own the folder (rank 0), load the model, build data,
        optimizer and schedule, resume from the newest checkpoint."""
        from core.config import load_config

        if not self.run.run_toml.is_file():
            raise UserError(f"{self.run.run_toml} does not exist; start the run with `sdtui train CONFIG.toml`, which writes it")
        self.config = load_config(self.run.run_toml)
        self.started_at = time.time()
        self.session_id = random.randint(0, 2**31 - 1)
        self._ss_metadata: dict[str, str] | None = None
        self.settings = self.config.settings
        self.sched = self.config.schedule
        self.method_kind = str(self.config.method)
        self._start_accelerator()
        is_main = self.acc.is_main_process
        if is_main:
            self._own_folder()
        self.metrics = MetricsWriter(self.run.metrics, enabled=is_main)
        self.status = StatusFile(self.run.path, enabled=is_main)
        self.heartbeat = Heartbeat(self.run.heartbeat, enabled=is_main)
        with self.heartbeat.busy():
            self._load()
        self.started = True

    def _own_folder(self) -> None:
        """Hold the folder's trainer lock and check that status.json names this attempt (rank 0);
        NotOwner otherwise, before anything is written."""
        import psutil

        from core.procs import describe
        from core.runs import hold, lock

        held = lock(self.run.trainer_lock)
        if held is None:
            raise NotOwner(f"another trainer is already writing into {self.run.path}; this one ends without touching it")
        recorded = self.run.read_status().get("attempt_id")
        if self.attempt and isinstance(recorded, str) and recorded != self.attempt:
            held.close()
            raise NotOwner(
                f"{self.run.path} is not the folder of this attempt (its status.json names attempt {recorded!r}, this trainer was started for {self.attempt!r}); "
                "this trainer ends without touching it"
            )
        hold(held, describe(psutil.Process(), "trainer-rank0"))
        self.folder_lock = held
        self.reserve.make()

    def _load(self) -> None:
        import torch

        status = self.status.read()
        latest = self.run.latest_checkpoint()
        self.metrics.write("attempt", attempt=integer(status.get("attempt"), 1) or 1, id=self.attempt or None, resume_step=int(latest.name[5:]) if latest else 0)
        self.status.update(state="starting", trainer_pids=self._pids(), error=None, hint=None)
        self.phases = Phases(self.status, self.metrics, enabled=self.acc.is_main_process)
        self.phases.record_process_start()
        for message in self.notes:
            self.metrics.event(message, "warning")
        logging.getLogger("core.train").addHandler(EventHandler(self.metrics))
        torch.manual_seed(int(self.sched["seed"]))

        from .models import load_components

        model = self.config.section("model")
        self.phases.start("load_model")
        self.components = load_components(
            model.get("path", ""), model.get("family") or None, model.get("prediction_type", "auto"), model.get("vae", ""),
            dtypes=self._load_dtypes(),
        )
        self.family = self.components.family
        self._configure_model()
        self.phases.end()
        self.data = self._build_data()
        self._build_optimizer()
        since = number(status.get("started_at")) or 0.0  # no supervisor: every request without an attempt id
        self.control = ControlReader(self.run.control_json, status.get("control_done"), attempt=self.attempt, since=since)
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
        from . import trackers

        self.acc = Accelerator(
            mixed_precision=precision,
            gradient_accumulation_steps=1,
            cpu=not cuda,
            kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
            log_with=trackers.log_with(self.config.section("logging"), self.run.path),
        )
        trackers.start(self.acc, self.config.section("logging"), self.run.path.name)
        self.device = self.acc.device
        self.rank = self.acc.process_index
        self.world = self.acc.num_processes
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)

    def _load_dtypes(self) -> dict[str, Any]:
        """The dtype each component is read in: the one ``_configure_model`` puts it in.

        Reading straight into it (safetensors memory-mapped, no fp32 copy first) halves the load's
        memory and time for a bf16/fp16 run; ``_configure_model`` still casts whatever differs.
        """
        import torch

        train_dtype = torch.bfloat16 if self.settings["full_bf16"] else torch.float32
        full = self.method_kind in ("dreambooth", "finetune")
        text_trained = bool(self.settings["train_text_encoder"]) and self.method_kind != "lora"
        return {
            "default": self.weight_dtype,
            "unet": train_dtype if full else self.weight_dtype,
            "vae": torch.bfloat16 if self.precision == "bf16" else torch.float32,
            "text_encoder": train_dtype if text_trained else self.weight_dtype,
            "text_encoder_2": train_dtype if text_trained else self.weight_dtype,
        }

    def _pids(self) -> list[dict[str, Any]]:
        import psutil

        from core.procs import describe

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
        if s["init_lora"]:
            self._load_init_lora(s["init_lora"])
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
        # channels-last convolutions are a GPU win; on the CPU they measured 20% slower per step
        # (tiny SD1 LoRA, 64 px: 111 ms vs 92 ms), so the CPU keeps the contiguous format
        self.channels_last = bool(s["channels_last"]) and self.device.type == "cuda"
        if s["channels_last"] and not self.channels_last:
            self.metrics.event("channels_last is for GPUs (slower on the CPU); the UNet keeps the contiguous memory format")
        if self.channels_last:
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

    def _load_init_lora(self, path: str) -> None:
        """Start the adapters from an existing LoRA file (a resume's checkpoint still wins, being loaded later)."""
        if self.method_kind != "lora":
            raise UserError(f"settings.init_lora continues a LoRA, but method.kind is {self.method_kind}; set method.kind = \"lora\" or clear init_lora")
        from .init_lora import load_init_lora

        loaded, fresh = load_init_lora(self.components, self.method.modules, path)
        self.metrics.event(f"starting from the LoRA {path}: {loaded} adapter tensors loaded" + (f", {fresh} start fresh" if fresh else ""))

    def _build_data(self) -> Batches:
        """Items and buckets, class images, then the latent and text-output caches when asked for and valid."""
        import torch

        from . import data

        train_data = data.build_items(self.config, self.settings)
        s = self.settings
        c = self.components
        class_prompt = self.config.section("method")["class_prompt"]
        if self.method_kind == "dreambooth" and class_prompt.strip() and int(s["class_images_per_instance"]) > 0:
            from .class_images import prepare_class_images

            self.metrics.event(f"preparing class images for prior preservation ('{class_prompt}'); missing ones are generated now")
            self.phases.start("class_images", int(s["class_images_per_instance"]) * len(train_data.items), "images")
            with self.acc.main_process_first():
                ready = prepare_class_images(
                    c, train_data, self.run.path, class_prompt, int(s["class_images_per_instance"]), self.device,
                    self.weight_dtype, seed=int(self.sched["seed"]), progress=self.phases.advance,
                )
            self.phases.end(len(ready))
            self.metrics.event(f"{len(ready)} class images ready")
        offload = self.device.type == "cuda"
        if s["cache_latents"]:
            self._cache_latents(train_data)
            if offload and train_data.latents is not None:
                c.vae.to("cpu")
        if s["cache_text_encoder_outputs"]:
            self._cache_text(train_data)
            if offload and train_data.text_cache is not None:
                for te in c.text_encoders:
                    te.to("cpu")
        if offload:
            torch.cuda.empty_cache()
        return Batches(self, train_data)

    def _cache_latents(self, train_data: Any) -> None:
        """Encode the images not in the shared latent cache yet, each rank its share (``core.train.latents``)."""
        from . import data, latents

        try:
            cache = latents.cache_latents(
                self.components, train_data, self.device, self.components.vae.dtype, latents.default_cache_dir(),
                in_memory=not self.settings["cache_latents_to_disk"], rank=self.rank, world=self.world,
                barrier=self.acc.wait_for_everyone, progress=self._latent_progress,
            )
        except data.CacheNotValid as exc:
            self.metrics.event(str(exc), "warning")
            return
        shares = f" (this process's share of {self.world})" if self.world > 1 else ""
        self.phases.end(
            note=f"{cache.encoded} encoded, {cache.reused} reused from the cache folder{shares}, {len(cache)} in all",
            encoded=cache.encoded, reused=cache.reused, entries=len(cache), processes=self.world,
        )

    def _latent_progress(self, done: int, total: int) -> None:
        if done == 0:
            self.phases.start("cache_latents", total, "images")
        else:
            self.phases.advance(done)

    def _cache_text(self, train_data: Any) -> None:
        """Encode every caption once when the text encoders are frozen (an info line when they are not)."""
        from . import data

        if any(name.startswith("text_encoder") for name in self.method.modules):
            self.metrics.event("the text encoder is trained, so its outputs are computed every step instead of cached")
            return
        blocker = data.text_cache_blocker(train_data.settings)
        if blocker:
            self.metrics.event(blocker)
            return
        self.phases.start("cache_text", len(data.distinct_captions(train_data)), "captions")
        data.cache_text_outputs(self.components, train_data, self.device, self.weight_dtype, progress=self.phases.advance)
        self.phases.end()

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
        self.progress = ProgressLog(self.total_steps, enabled=self.metrics.enabled)
        warmup = schedule.warmup_steps(self.total_steps, int(self.sched["lr_warmup_steps"]))
        lr = float(self.sched["learning_rate"])
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
        self._note_optimizer_rules(lr)
        name, shape = s["optimizer"], (int(self.sched["lr_scheduler_num_cycles"]), float(self.sched["lr_scheduler_power"]))
        groups = param_groups(self.method, lr, float(self.sched["text_encoder_lr"]))
        if fused:
            self.fused: FusedBackward | None = FusedBackward(name, groups, float(s["max_grad_norm"]), warmup)
            self.optimizer: Any = self.fused
            self.lr_scheduler: Any = self.fused.make_schedulers(self.sched["lr_scheduler"], warmup, self.total_steps, *shape)
        else:
            self.fused = None
            self.optimizer = self.acc.prepare(make_optimizer(name, groups, lr, warmup))
            self.lr_scheduler = make_scheduler(self.sched["lr_scheduler"], self.optimizer.optimizer, warmup, self.total_steps, *shape, optimizer_name=name)
        self.params = params

    def _note_optimizer_rules(self, lr: float) -> None:
        """Events when the schedule does not follow the optimizer's rules (Prodigy's lr, schedule-free's own schedule)."""
        for warning in optimizer_rule_warnings(self.settings["optimizer"], lr, self.sched["lr_scheduler"]):
            self.metrics.event(warning, "warning")

    def _resume(self) -> None:
        path = self.run.latest_checkpoint()
        if path is None:
            return
        loaded = ckpt.load(path)
        self.method.load_trainable_state(loaded.tensors)
        objects = loaded.objects
        self.optimizer.load_state_dict(objects["optimizer"])
        set_optimizer_mode(self.optimizer, train=True)  # a schedule-free checkpoint holds its eval weights
        self.lr_scheduler.load_state_dict(objects["lr_scheduler"])
        if objects.get("scaler") is not None and self.acc.scaler is not None:
            self.acc.scaler.load_state_dict(objects["scaler"])
        if objects.get("ema") is not None and self.ema is not None:
            self.ema.load_state_dict(objects["ema"])
        rng = objects.get("rng") or []
        if self.rank < len(rng):
            set_rng(rng[self.rank])
        state = loaded.state
        self.step = int(state["step"])
        self.epoch = int(state.get("epoch", 0))
        self.batch_index = int(state.get("batch_index", 0))
        self.started_at = float(state.get("started_at", self.started_at))
        self.session_id = int(state.get("session_id", self.session_id))
        if int(state.get("world", self.world)) != self.world:
            self.metrics.event(f"resumed on {self.world} processes a checkpoint written on {state.get('world')}; the rest of epoch {self.epoch + 1} starts over", "warning")
            self.batch_index = 0
        self.metrics.event(f"resumed from {path.name} at step {self.step}")


def _place(module: Any, device: Any, dtype: Any) -> None:
    """Move ``module`` to ``device``, casting only when its dtype differs."""
    if next(module.parameters()).dtype == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)


def _cpu_bf16_ok() -> bool:
    import torch

    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.ones(2, 2) @ torch.ones(2, 2)
        return True
    except RuntimeError:
        return False
