"""Start-up of a run: config, accelerate, the folder lock, the model and its trainable part, data,
optimizer and schedule, resume; each step a function of what it needs, ending in a ``Session``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Collection
from typing import Any

from core.errors import UserError
from core.families import spec
from core.plan import schedule
from core.plan.class_images import class_images
from core.runs.control_file import ControlReader
from core.runs.readers import integer, number
from core.runs.rundir import RunDir
from core.settings import FP16_NEEDS_A_GPU, FULL_METHODS, optimizer_notes, optimizer_rule_warnings, technique_problem
from core.train.data.batches import Batches
from core.train.metrics_writer import EventHandler, MetricsWriter
from core.train.model.methods import setup_method, trained_components
from core.train.model.optimizer import FusedBackward, make_optimizer, make_scheduler, param_groups, set_optimizer_mode
from core.train.outputs import train_state as ckpt
from core.train.phases import Phases
from core.train.progress import Progress
from core.train.saving import set_rng
from core.train.session import Accel, Model, Optimization, Session
from core.train.status import NotOwner, StatusFile


def read_config(run: RunDir) -> Any:
    """The run's ``run.toml`` (a UserError naming the command that writes it when there is none)."""
    from core.config import load_config

    if not run.run_toml.is_file():
        raise UserError(f"{run.run_toml} does not exist; start the run with `sdtui train CONFIG.toml`, which writes it")
    return load_config(run.run_toml)


def start_accelerator(config: Any, run: RunDir) -> Accel:
    """Accelerate with the precision this machine can train in (fallbacks are noted) and the run's trackers."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    from core.train import trackers

    settings = config.settings
    notes: list[str] = []
    precision = settings["mixed_precision"]
    cuda = torch.cuda.is_available() and os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true", "yes")
    if not cuda and precision == "fp16":
        raise UserError(FP16_NEEDS_A_GPU)
    if cuda and precision == "bf16" and not torch.cuda.is_bf16_supported():
        precision = "fp16"
        notes.append("this GPU has no bf16; training with fp16 mixed precision (loss scaling) instead")
    if settings["full_bf16"] and precision == "fp16":
        raise UserError("settings.full_bf16 keeps the weights in bf16, which needs settings.mixed_precision=bf16; set mixed_precision to bf16 or full_bf16 to false")
    find_unused = bool(settings["train_text_encoder"]) or str(config.method) == "textual_inversion"
    acc = Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=1,
        cpu=not cuda,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=find_unused)],
        log_with=trackers.log_with(config.section("logging"), run.path),
    )
    trackers.start(acc, config.section("logging"), run.path.name)
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    return Accel(acc, precision, weight_dtype, notes)


def own_folder(run: RunDir, attempt: str) -> Any:
    """Hold the folder's trainer lock and check that status.json names this attempt (rank 0), then
    delete the unfinished checkpoint folders a killed save left; the held lock, or NotOwner before
    anything is written."""
    import psutil

    from core.procs import describe
    from core.runs.checkpoints import remove_unfinished
    from core.runs.locks import hold, lock

    held = lock(run.trainer_lock)
    if held is None:
        raise NotOwner(f"another trainer is already writing into {run.path}; this one ends without touching it")
    recorded = run.read_status().get("attempt_id")
    if attempt and isinstance(recorded, str) and recorded != attempt:
        held.close()
        raise NotOwner(
            f"{run.path} is not the folder of this attempt (its status.json names attempt {recorded!r}, this trainer was started for {attempt!r}); this trainer ends without touching it"
        )
    hold(held, describe(psutil.Process(), "trainer-rank0"))
    remove_unfinished(run.checkpoints)  # a save killed mid-write left them; nobody else writes here now
    return held


def control_reader(run: RunDir, attempt: str, recorded: dict[str, Any]) -> ControlReader:
    """The reader of this attempt's control.json requests (``recorded``: status.json as start-up found it)."""
    since = number(recorded.get("started_at")) or 0.0  # no supervisor: every request without an attempt id
    return ControlReader(run.control_json, recorded.get("control_done"), attempt=attempt, since=since)


#: Seconds between two reads of control.json while start-up checks for a stop between items.
STOP_CHECK_S = 0.5


def stop_check(control: ControlReader, signalled: Callable[[], bool], clock: Callable[[], float]) -> Callable[[], bool]:
    """``should_stop()`` for the start-up phases: SIGTERM, or a stop request in control.json (read at
    most every STOP_CHECK_S; a stop found stays found)."""
    state = {"at": -1e9, "stop": False}

    def should_stop() -> bool:
        if signalled() or state["stop"]:
            return True
        now = clock()
        if now - state["at"] >= STOP_CHECK_S:
            state["at"] = now
            state["stop"] = any(r["action"] == "stop" for r in control.pending())
        return bool(state["stop"])

    return should_stop


def build_session(
    config: Any,
    accel: Accel,
    run: RunDir,
    attempt: str,
    metrics: MetricsWriter,
    status: StatusFile,
    phases: Phases,
    started_at: float,
    session_id: int,
    control: ControlReader,
    recorded: dict[str, Any],
) -> tuple[Session, Progress]:
    """Record the attempt, load and configure the model, build data, optimizer and schedule, then
    resume from the newest checkpoint: the session and where the run stands (``recorded``: status.json
    as start-up found it)."""
    import torch

    latest = run.latest_checkpoint()
    metrics.write("attempt", attempt=integer(recorded.get("attempt"), 1) or 1, id=attempt or None, resume_step=int(latest.name[5:]) if latest else 0)
    status.update(state="starting", trainer_pids=_pids(accel), error=None, hint=None)
    phases.record_process_start()
    for message in accel.notes:
        metrics.event(message, "warning")
    logging.getLogger("core.train").addHandler(EventHandler(metrics))
    torch.manual_seed(int(config.schedule["seed"]))

    from core.train.model.loading import load_components

    model_section = config.section("model")
    phases.start("load_model")
    components = load_components(
        model_section.get("path", ""),
        model_section.get("prediction_type", "auto"),
        model_section.get("vae", ""),
        model_section.get("config", ""),
        dtypes=_load_dtypes(config, accel),
        settings=config.settings,
        split_files={key: str(model_section.get(key, "") or "") for key in ("denoiser", "clip_l", "clip_g", "t5xxl", "qwen3")},
    )
    model = configure_model(components, config, accel, metrics)
    phases.end()
    data = build_data(config, accel, model, run, metrics, phases)
    optim, progress = build_optimizer(config, accel, model, data, metrics)
    session = Session(config, config.settings, config.schedule, str(config.method), accel, model, data, optim, started_at, session_id)
    resume(session, progress, run, metrics)
    return session, progress


def _load_dtypes(config: Any, accel: Accel) -> dict[str, Any]:
    """The dtype each component is read in: the one ``configure_model`` puts it in (:func:`component_dtypes`).

    Reading straight into it (safetensors memory-mapped, no fp32 copy first) halves the load's
    memory and time for a bf16/fp16 run; ``configure_model`` still casts whatever differs.
    """
    from core.families.loading import detect

    path = config.section("model").get("path", "")
    if not path:
        return {}  # load_components says that no model is set
    family = spec(detect(path))
    kind = str(config.method)
    return component_dtypes(family, kind, config.settings, accel, trained_components(kind, config.settings, family))


def component_dtypes(family: Any, kind: str, settings: dict[str, Any], accel: Accel, trained: Collection[str]) -> dict[str, Any]:
    """The dtype each component trains or runs in, by component name (``"default"`` for any other part).

    Whole modules that are trained (full fine-tuning, textual inversion's encoders) are fp32, or
    bf16 with ``full_bf16``; frozen ones and those carrying adapters run in the autocast dtype;
    the VAE is bf16 under bf16 autocast and fp32 otherwise.
    """
    import torch

    trained_whole = {name for name in trained if kind != "lora"}
    return {
        "default": accel.weight_dtype,
        "vae": torch.bfloat16 if accel.precision == "bf16" else torch.float32,
        **{name: train_dtype(settings) if name in trained_whole else accel.weight_dtype for name in (family.denoiser, *family.text_encoder_names)},
    }


def train_dtype(settings: dict[str, Any]) -> Any:
    """The dtype of trained weights: fp32, or bf16 with ``full_bf16``."""
    import torch

    return torch.bfloat16 if settings["full_bf16"] else torch.float32


def _pids(accel: Accel) -> list[dict[str, Any]]:
    import psutil

    from core.procs import describe

    me = describe(psutil.Process(), f"trainer-rank{accel.rank}")
    if accel.world == 1:
        return [me]
    from accelerate.utils import gather_object

    return list(gather_object([me]))


def configure_model(components: Any, config: Any, accel: Accel, metrics: MetricsWriter) -> Model:
    """Attention, the method's trainable part, dtypes and devices, memory format, checkpointing, train/eval modes, EMA."""
    s = config.settings
    kind = str(config.method)
    c = components
    c.runtime.set_attention(c.denoiser, s["attention"])
    _quantize(c, s, accel.device, metrics)
    method = setup_method(kind, c, s, config.section("method")["placeholder_token"])
    if s["init_lora"]:
        _load_init_lora(kind, c, method, s["init_lora"], metrics)
    trained = set(method.modules)
    dtypes = component_dtypes(c.spec, kind, s, accel, trained)
    for param in method.parameters():
        param.data = param.data.to(train_dtype(s))
    channels_last = _memory_format(c, s, accel.device, metrics)
    problem = technique_problem(kind, s, str(config.section("distributed")["backend"]), accel.world)  # the processes launched, not only those run.toml asks for
    if problem:
        raise UserError(problem)
    swap = _place_denoiser(c, int(s["blocks_to_swap"]), accel.device, dtypes[c.spec.denoiser], metrics, trains=kind in FULL_METHODS)
    _place(c.vae, accel.device, dtypes["vae"])
    for name, te in zip(c.text_encoder_names, c.text_encoders):
        _place(te, accel.device, dtypes[name])
    if s["gradient_checkpointing"]:
        _gradient_checkpointing(c, trained)
    c.denoiser.train(c.spec.denoiser in trained)
    for name, te in zip(c.text_encoder_names, c.text_encoders):
        te.train(name in trained)
    c.vae.eval()
    return Model(c, method, dtypes[c.spec.denoiser], channels_last, _ema(method, s, accel.device, swap), swap)


def _quantize(components: Any, settings: dict[str, Any], device: Any, metrics: MetricsWriter) -> None:
    """Store the frozen base in ``base_precision`` / ``text_encoder_precision`` (``core.train.model.quantize``), before any adapter is added."""
    from core.settings import FP8_WEIGHT_ONLY_NOTE, QUANTIZED_PRECISIONS
    from core.train.model.quantize import quantize, quantized_bytes

    c = components
    chosen = [(c.spec.denoiser, c.denoiser, settings["base_precision"])]
    chosen += [(name, te, settings["text_encoder_precision"]) for name, te in zip(c.text_encoder_names, c.text_encoders)]
    for name, module, precision in chosen:
        if precision not in QUANTIZED_PRECISIONS:
            continue
        before = quantized_bytes(module)
        count = quantize(module, precision, lambda layer, component=name: c.spec.keeps_precision(component, layer), device)
        metrics.event(f"{name}: {count} linear layers stored in {precision} ({before / 2**20:.1f} MiB -> {quantized_bytes(module) / 2**20:.1f} MiB)")
    if any(precision.startswith("fp8") for _, _, precision in chosen):
        metrics.event(FP8_WEIGHT_ONLY_NOTE)


def _place_denoiser(components: Any, count: int, device: Any, dtype: Any, metrics: MetricsWriter, trains: bool = False) -> Any:
    """Put the denoiser on ``device``, its last ``count`` blocks' frozen weights (and, when it ``trains``
    whole, their trained weights with their gradients) in host memory streamed on their turn
    (``core.train.model.block_swap``); the BlockSwap, or None without one."""
    c = components
    if not count:
        _place(c.denoiser, device, dtype)
        return None
    from core.train.model.block_swap import BlockSwap, blocks_of

    blocks = blocks_of(c.denoiser, list(c.spec.swap_blocks))
    if count >= len(blocks):  # a model smaller than the family's reference size (the config check counts that one)
        raise UserError(
            f"settings.blocks_to_swap = {count}, but this model's denoiser has {len(blocks)} blocks and at least one must stay on the GPU; set blocks_to_swap to {len(blocks) - 1} or less"
        )
    _place(c.denoiser, "cpu", dtype)
    swap = BlockSwap(blocks, count, device, trains=trains)
    swap.place(c.denoiser)
    host = sum(t.numel() * t.element_size() for block in swap.swapped.values() for t in block.host)
    host += sum(g.host.numel() * g.host.element_size() for g in swap.grads)
    total = len(swap.modules)
    stepped = ", with their gradients; the optimizer steps them there" if swap.grads else ""
    metrics.event(f"blocks_to_swap = {count}: blocks {total - count + 1}-{total} of {total} stream from CPU memory ({host / 2**20:.1f} MiB held there{stepped})")
    return swap


def _memory_format(components: Any, settings: dict[str, Any], device: Any, metrics: MetricsWriter) -> bool:
    """Put the denoiser in channels-last memory where asked, the family gains from it and the device is a GPU; whether it is."""
    import torch

    # channels-last convolutions are a GPU win; on the CPU they measured 20% slower per step
    # (a tiny model's LoRA, 64 px: 111 ms vs 92 ms), so the CPU keeps the contiguous format
    wanted = bool(settings["channels_last"]) and components.runtime.supports_channels_last
    channels_last = wanted and device.type == "cuda"
    if wanted and not channels_last:
        metrics.event("channels_last is for GPUs (slower on the CPU); the denoiser keeps the contiguous memory format")
    if channels_last:
        components.denoiser.to(memory_format=torch.channels_last)
    return channels_last


def _gradient_checkpointing(components: Any, trained: Collection[str]) -> None:
    """Recompute activations in backward: the denoiser's (the family's hook), and each trained text encoder's."""
    components.runtime.enable_gradient_checkpointing(components.denoiser)
    for name, te in zip(components.text_encoder_names, components.text_encoders):
        if name in trained:
            te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def _ema(method: Any, settings: dict[str, Any], device: Any, swap: Any = None) -> Any:
    """An exponential moving average of the trained parameters, or None when ``settings.ema`` is off."""
    if not settings["ema"]:
        return None
    from diffusers.training_utils import EMAModel

    ema = EMAModel(method.parameters(), decay=float(settings["ema_decay"]))
    place_ema(ema, method.parameters(), device, swap)
    return ema


def place_ema(ema: Any, params: list[Any], device: Any, swap: Any) -> None:
    """Each EMA copy beside its parameter's master: host memory for a swapped block's trained
    parameters (stepped there), ``device`` for the others."""
    host = {id(p) for p in swap.trained_params()} if swap is not None else set()
    ema.shadow_params = [s.to("cpu" if id(p) in host else device) for s, p in zip(ema.shadow_params, params, strict=True)]


def _load_init_lora(kind: str, components: Any, method: Any, path: str, metrics: MetricsWriter) -> None:
    """Start the adapters from an existing LoRA file (a resume's checkpoint still wins, being loaded later)."""
    if kind != "lora":
        raise UserError(f'settings.init_lora continues a LoRA, but method.kind is {kind}; set method.kind = "lora" or clear init_lora')
    from core.train.model.init_lora import load_init_lora

    loaded, fresh = load_init_lora(components, method.modules, path)
    metrics.event(f"starting from the LoRA {path}: {loaded} adapter tensors loaded" + (f", {fresh} start fresh" if fresh else ""))


def build_data(config: Any, accel: Accel, model: Model, run: RunDir, metrics: MetricsWriter, phases: Phases) -> Batches:
    """Items and buckets, class images, then the latent and text-output caches when asked for and valid."""
    import torch

    from core.train.data import items as data

    s = config.settings
    train_data = data.build_items(config, s)
    c = model.components
    device = accel.device
    class_prompt = config.section("method")["class_prompt"]
    from core.train.data.class_images import generated_class_images, prepare_class_images

    made = len(generated_class_images(run.path))  # by an earlier start of this run
    need = class_images(str(config.method), s, class_prompt, len(train_data.class_items), len(train_data.items), made)
    if need.generates:
        metrics.event(
            f"class images for prior preservation ('{class_prompt}'): {need.wanted} wanted, {need.given} given, {made} generated before, "
            f"{need.to_generate} to generate now (settings.generate_class_images = false uses the given ones only)"
        )
        phases.start("class_images", need.wanted, "images")
        ready = prepare_class_images(
            c,
            train_data,
            run.path,
            class_prompt,
            need.wanted,
            device,
            accel.acc.autocast,
            seed=int(config.schedule["seed"]),
            progress=phases.advance,
            rank=accel.rank,
            world=accel.world,
            barrier=accel.acc.wait_for_everyone,
        )
        phases.end(len(ready))
        metrics.event(f"{len(ready)} class images ready")
    offload = device.type == "cuda"
    if s["cache_latents"]:
        _cache_latents(c, train_data, s, accel, metrics, phases)
        if offload and train_data.latents is not None:
            c.vae.to("cpu")
    if s["cache_text_encoder_outputs"]:
        _cache_text(model, train_data, accel, metrics, phases)
        freed = c.spec.encoders_leave(str(config.method), train_data.text_cache is not None) and _free_text_encoders(config, accel, model, metrics)
        if offload and train_data.text_cache is not None and not freed:
            for te in c.text_encoders:
                te.to("cpu")
    if offload:
        torch.cuda.empty_cache()
    return Batches(train_data, s, int(config.schedule["seed"]), accel.rank, accel.world, device)


def _cache_latents(components: Any, train_data: Any, settings: dict[str, Any], accel: Accel, metrics: MetricsWriter, phases: Phases) -> None:
    """Encode the images not in the shared latent cache yet, each rank its share (``core.train.data.latent_cache``)."""
    from core.train.data import items as data
    from core.train.data import latent_cache as latents

    try:
        cache = latents.cache_latents(
            components,
            train_data,
            accel.device,
            components.vae.dtype,
            latents.default_cache_dir(),
            in_memory=not settings["cache_latents_to_disk"],
            rank=accel.rank,
            world=accel.world,
            barrier=accel.acc.wait_for_everyone,
            progress=_phase_progress(phases, "cache_latents", "images"),
        )
    except data.CacheNotValid as exc:
        metrics.event(str(exc), "warning")
        return
    shares = f" (this process's share of {accel.world})" if accel.world > 1 else ""
    phases.end(
        note=f"{cache.encoded} encoded, {cache.reused} reused from the cache folder{shares}, {len(cache)} in all",
        encoded=cache.encoded,
        reused=cache.reused,
        entries=len(cache),
        processes=accel.world,
    )


def _cache_text(model: Model, train_data: Any, accel: Accel, metrics: MetricsWriter, phases: Phases) -> None:
    """Encode every caption once when the text encoders are frozen (an info line when they are not)."""
    from core.train.data import items as data

    if any(name in model.components.text_encoder_names for name in model.method.modules):
        metrics.event("the text encoder is trained, so its outputs are computed every step instead of cached")
        return
    blocker = data.text_cache_blocker(train_data.settings)
    if blocker:
        metrics.event(blocker)
        return
    from core.train.data.text_cache import cache_text_outputs, default_cache_dir

    cache = cache_text_outputs(
        model.components,
        train_data,
        accel.device,
        accel.weight_dtype,
        default_cache_dir(),
        accel.rank,
        accel.world,
        accel.acc.wait_for_everyone,
        progress=_phase_progress(phases, "cache_text", "captions"),
        in_memory=not train_data.settings.get("cache_text_encoder_outputs_to_disk", False),
    )
    phases.end(encoded=cache.encoded, reused=cache.reused, entries=len(cache), processes=accel.world)


def _free_text_encoders(config: Any, accel: Accel, model: Model, metrics: MetricsWriter) -> bool:
    """With every caption cached: encode the sample prompts once (rank 0, which renders the samples),
    keep those embeddings for the run, and drop the text encoders from memory (host and GPU); whether
    they were dropped (a prompt that fails to encode keeps them, and the samples encode their text)."""
    import gc

    import torch

    c = model.components
    prompts = config.prompts
    if prompts and accel.acc.is_main_process:
        from core.train.outputs.sampling import SampleError, encode_sample_prompts

        s = config.settings
        try:
            model.sample_texts = encode_sample_prompts(c, prompts, accel.device, accel.acc.autocast, int(s["resolution"]), int(s["clip_skip"]))
        except SampleError as exc:
            metrics.event(f"{exc}; the text encoders stay for the samples", "warning")
            return False
    from core.train.model.quantize import quantized_bytes

    held = sum(quantized_bytes(te) for te in c.text_encoders)
    c.text_encoders = []
    gc.collect()
    if accel.device.type == "cuda":
        torch.cuda.empty_cache()
    encoded = f"the {len(prompts)} sample prompts are encoded and " if prompts else ""
    metrics.event(f"text-encoder outputs are cached: {encoded}the text encoders ({held / 2**20:.0f} MiB) are freed for the rest of the run")
    return True


def _phase_progress(phases: Phases, name: str, unit: str) -> Callable[[int, int], None]:
    """A cache's ``progress(done, total)`` as the start-up phase ``name``: started at ``done`` 0, then advanced."""

    def progress(done: int, total: int) -> None:
        if done == 0:
            phases.start(name, total, unit)
        else:
            phases.advance(done)

    return progress


def build_optimizer(config: Any, accel: Accel, model: Model, data: Batches, metrics: MetricsWriter) -> tuple[Optimization, Progress]:
    """Steps per epoch and in all (from ``core.plan.schedule``), the prepared modules, the optimizer
    (or the fused backward pass) and its LR schedule; where a fresh run stands."""
    s, sched = config.settings, config.schedule
    acc, method = accel.acc, model.method
    counts = data.train_data.bucket_counts()
    steps_per_epoch = schedule.steps_per_epoch(counts, int(s["batch_size"]), accel.world, int(sched["gradient_accumulation"]))
    if steps_per_epoch == 0:
        raise UserError("the dataset has no training images; add images to a subset folder of the dataset in run.toml (is_reg = false)")
    max_steps = int(sched["max_steps"])
    total_steps = max_steps if max_steps > 0 else int(sched["epochs"]) * steps_per_epoch
    if total_steps <= 0:
        raise UserError("the run has no steps; set schedule.epochs or schedule.max_steps above 0 in run.toml")
    warmup = schedule.warmup_steps(total_steps, int(sched["lr_warmup_steps"]))
    lr = float(sched["learning_rate"])
    params = method.parameters()
    fused = bool(s["fused_backward_pass"])
    if fused and accel.world > 1:
        fused = False
        metrics.event("fused_backward_pass works with one process only (DDP averages gradients after backward); using a normal optimizer step", "warning")
    if fused and accel.precision == "fp16":
        fused = False
        metrics.event("fused_backward_pass cannot use fp16 loss scaling; using a normal optimizer step (use bf16 for the fused pass)", "warning")
    modules = list(method.modules.items())
    # a swapped denoiser is placed already: accelerate's move would bring every block to the device
    placement = [not (model.swap is not None and m is model.components.denoiser) for _, m in modules]
    if model.swap is not None and accel.world > 1:
        keep_swapped_blocks_out_of_ddp(model.components.denoiser, model.swap)
    prepared = acc.prepare(*[m for _, m in modules], device_placement=placement)
    prepared = prepared if isinstance(prepared, tuple) else (prepared,)
    wrapped = dict(zip([n for n, _ in modules], prepared))
    if s["torch_compile"]:
        import torch

        denoiser = model.components.spec.denoiser
        wrapped[denoiser] = torch.compile(wrapped.get(denoiser, model.components.denoiser))
    for warning in optimizer_rule_warnings(s["optimizer"], lr, sched["lr_scheduler"]):
        metrics.event(warning, "warning")
    for note in optimizer_notes(s["optimizer"]):
        metrics.event(note, "info")
    name, shape = s["optimizer"], (int(sched["lr_scheduler_num_cycles"]), float(sched["lr_scheduler_power"]))
    groups = param_groups(method, lr, float(sched["text_encoder_lr"]))
    fused_pass: FusedBackward | None = None
    if fused:
        deferred = model.swap.trained_params() if model.swap is not None else []
        fused_pass = FusedBackward(name, groups, float(s["max_grad_norm"]), warmup, s, deferred=deferred)
        optimizer: Any = fused_pass
        lr_scheduler: Any = fused_pass.make_schedulers(sched["lr_scheduler"], warmup, total_steps, *shape)
    else:
        optimizer = acc.prepare(make_optimizer(name, groups, lr, warmup, s))
        lr_scheduler = make_scheduler(sched["lr_scheduler"], optimizer.optimizer, warmup, total_steps, *shape, optimizer_name=name)
    return Optimization(wrapped, optimizer, lr_scheduler, fused_pass, params), Progress(total_steps, steps_per_epoch)


def keep_swapped_blocks_out_of_ddp(denoiser: Any, swap: Any) -> list[str]:
    """Leave the swapped blocks' frozen tensors out of what DDP broadcasts from rank 0 (every
    parameter when it wraps the module, the buffers before each forward): they live in host
    memory, which NCCL cannot broadcast, each rank streams its own copy, and every rank read the
    same base from the same files. Their names, as DDP reads them."""
    from itertools import chain

    from torch.nn.parallel import DistributedDataParallel

    swapped = {id(t) for block in swap.swapped.values() for t in block.tensors}
    names = [name for name, tensor in chain(denoiser.named_parameters(), denoiser.named_buffers()) if id(tensor) in swapped]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(denoiser, names)
    return names


def resume(session: Session, progress: Progress, run: RunDir, metrics: MetricsWriter) -> None:
    """Load the newest checkpoint into the session (weights, optimizer, schedule, scaler, EMA, this
    rank's RNG, the run's identity) and ``progress``; nothing when there is none."""
    path = run.latest_checkpoint()
    if path is None:
        return
    optim = session.optim
    loaded = ckpt.load(path)
    session.method.load_trainable_state(loaded.tensors)
    objects = loaded.objects
    optim.optimizer.load_state_dict(objects["optimizer"])
    set_optimizer_mode(optim.optimizer, train=True)  # a schedule-free checkpoint holds its eval weights
    optim.lr_scheduler.load_state_dict(objects["lr_scheduler"])
    scaler = session.acc.scaler
    if objects.get("scaler") is not None and scaler is not None:
        scaler.load_state_dict(objects["scaler"])
    ema = session.model.ema
    if objects.get("ema") is not None and ema is not None:
        ema.load_state_dict(objects["ema"])
        place_ema(ema, optim.params, session.device, session.model.swap)
    rng = objects.get("rng") or []
    if session.rank < len(rng):
        set_rng(rng[session.rank])
    state = loaded.state
    progress.step = int(state["step"])
    progress.epoch = int(state.get("epoch", 0))
    progress.batch_index = int(state.get("batch_index", 0))
    session.started_at = float(state.get("started_at", session.started_at))
    session.session_id = int(state.get("session_id", session.session_id))
    if int(state.get("world", session.world)) != session.world:
        metrics.event(f"resumed on {session.world} processes a checkpoint written on {state.get('world')}; the rest of epoch {progress.epoch + 1} starts over", "warning")
        progress.batch_index = 0
    metrics.event(f"resumed from {path.name} at step {progress.step}")


def _place(module: Any, device: Any, dtype: Any) -> None:
    """Move ``module`` to ``device``, casting only when its dtype differs."""
    if next(module.parameters()).dtype == dtype:
        module.to(device)
    else:
        module.to(device, dtype=dtype)
