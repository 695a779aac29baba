"""The plan: a run config, its dataset scan and the GPUs turned into what the run will be.

``make_plan`` counts the bucketed dataset with the schedule maths (core/plan/schedule.py),
estimates the peak VRAM (core/memory) and the speed (core/plan/throughput.py), and writes
one row per GPU count. ``Plan.to_json()`` is what ``sdtui plan --json`` prints and what the
launcher writes to ``plan.json``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from core.dataset.buckets import bucket_counts, bucket_selector
from core.dataset.scan import overlay_subsets
from core.errors import UserError
from core.families import planned_as, spec
from core.memory.estimator import HEADROOM
from core.memory.techniques import RAM_HEADROOM
from core.settings import FULL_METHODS, optimizer_notes, optimizer_rule_warnings
from core.units import GIB

from .class_images import GENERATE_BATCH, GENERATE_STEPS, ClassImages, class_images, describe
from .fit import RunShape, describe_techniques, judge, run_shape
from .learning_rates import lr_warnings
from .picker import suggest_when_nothing_fits
from .schedule import ScheduleRow, batches_per_rank, schedule_row, warmup_steps
from .throughput import eta_seconds, images_per_second, sample_seconds_per_image
from .validation import ValidationPlan, plan_validation

#: GPU counts every plan shows (plus the detected and the configured count).
GPU_COUNTS = (1, 2, 4, 8)
#: GPUs in one machine beyond which the scaling model assumes several machines.
GPUS_PER_NODE = 8
#: The warning of a plan made without a dataset.
NO_DATASET = "no dataset given: the schedule table (steps, epochs and ETA on 1, 2, 4 and 8 GPUs) needs one; add --data DIR"


@dataclass
class Plan:
    """What a run will be: recipe, VRAM, dataset, and the schedule on each GPU count."""

    model_family: str
    method: str
    recipe: str
    settings: dict[str, Any]
    schedule: dict[str, Any]
    vram_estimate_bytes: int
    gpu: dict[str, Any]
    fits: bool | None
    dataset: dict[str, Any] | None
    counts: dict[Any, int]
    prior_preservation: bool
    images_per_second_per_gpu: float | None
    configured_processes: int
    price_per_gpu_hour: float | None = None
    #: The class images of the run (core/plan/class_images.py); None without a dataset.
    class_images: ClassImages | None = None
    #: Seconds one GPU takes to generate one class image; None without a known GPU.
    class_image_s: float | None = None
    #: The validation loss's images, frequency and cost ([validation]); None when it is off.
    validation: ValidationPlan | None = None
    #: The name the estimate and speed were read under: a variant measured on its own (``sd35-large``), else the family.
    planned_as: str = ""
    #: The memory techniques and their cost (``techniques``, ``cost``, ``slowdown``, ``baseline_gb``), the peaks the estimate stands for.
    memory: dict[str, Any] = field(default_factory=dict)
    #: Whether the VRAM estimate alone fits (``fits`` also needs the host RAM to); None without a GPU.
    vram_fits: bool | None = None
    #: Host RAM: ``need_gb``, ``have_gb`` (None: unknown), ``fits``, ``phase``, ``breakdown`` (GiB).
    ram: dict[str, Any] = field(default_factory=dict)
    #: The picker's choice in words (core.plan.choice: ``composed``, ``over``, ``reasons``); empty when the settings were not picked.
    choice: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def text_encoder_lr(self) -> float | None:
        """The text encoders' learning rate when the run trains them (0 in run.toml: the learning rate), else None."""
        if not self.settings["train_text_encoder"] or self.method == "textual_inversion":
            return None
        return float(self.schedule["text_encoder_lr"]) or float(self.schedule["learning_rate"])

    def row_for(self, gpus: int) -> ScheduleRow:
        """The schedule on ``gpus`` GPUs."""
        return schedule_row(
            self.counts,
            int(self.settings["batch_size"]),
            int(self.schedule["gradient_accumulation"]),
            gpus,
            int(self.schedule["epochs"]),
            int(self.schedule["max_steps"]),
            int(self.schedule["seed"]),
        )

    def total_steps_for(self, num_processes: int) -> int:
        """Optimizer steps of the run on ``num_processes`` GPUs (what the trainer counts to)."""
        return self.row_for(max(1, num_processes)).total_steps

    def generate_s(self, gpus: int) -> float | None:
        """Seconds the trainer spends generating the missing class images on ``gpus`` GPUs (batches
        of GENERATE_BATCH shared round robin): 0 when none are generated, None when unknown."""
        missing = self.class_images.to_generate if self.class_images is not None else 0
        if not missing:
            return 0.0
        if self.class_image_s is None:
            return None
        per_rank = batches_per_rank(-(-missing // GENERATE_BATCH), max(1, gpus))
        return per_rank * GENERATE_BATCH * self.class_image_s

    def gpu_counts(self) -> list[int]:
        """The GPU counts of the table: 1, 2, 4, 8, the detected and the configured count."""
        return sorted(set(GPU_COUNTS) | {n for n in (self.gpu["count"], self.configured_processes) if n > 0})

    def row_json(self, gpus: int) -> dict[str, Any]:
        """One row of the GPU-count table as JSON."""
        row = self.row_for(gpus)
        per_step = row.effective_batch * (2 if self.prior_preservation else 1)
        eta = eta_seconds(
            row.total_steps,
            per_step,
            self.images_per_second_per_gpu,
            gpus,
            self.method,
            num_machines=math.ceil(gpus / GPUS_PER_NODE),
        )
        generate = self.generate_s(gpus)
        eta = eta + generate if eta is not None and generate is not None else None
        if eta is not None and self.validation is not None:
            eta += self.validation.seconds(row.total_steps, self.images_per_second_per_gpu, gpus) or 0.0
        data: dict[str, Any] = {
            "gpus": row.gpus,
            "effective_batch": row.effective_batch,
            "images_per_step": per_step,
            "steps_per_epoch": row.steps_per_epoch,
            "epochs": row.epochs,
            "total_steps": row.total_steps,
            "images_seen": row.images_seen,
            "warmup_steps": warmup_steps(row.total_steps, int(self.schedule["lr_warmup_steps"])),
            "class_images_s": round(generate, 1) if generate is not None else None,
            "eta_s": round(eta, 1) if eta is not None else None,
        }
        if self.price_per_gpu_hour is not None:
            data["cost"] = round(eta / 3600 * gpus * self.price_per_gpu_hour, 2) if eta is not None else None
        return data

    def to_json(self, num_processes: int | None = None) -> dict[str, Any]:
        """The plan as ``sdtui plan --json`` prints it; ``run`` is the row for ``num_processes``."""
        processes = num_processes or self.configured_processes
        return {
            "model_family": self.model_family,
            "method": self.method,
            "recipe": self.recipe,
            "settings": self.settings,
            "vram_estimate_gb": round(self.vram_estimate_bytes / GIB, 2),
            "gpu": self.gpu,
            "fits": self.fits,
            "vram_fits": self.vram_fits,
            "headroom": HEADROOM,
            "memory": dict(self.memory),
            "ram": dict(self.ram),
            "choice": dict(self.choice),
            "prior_preservation": self.prior_preservation,
            "images_per_second_per_gpu": round(self.images_per_second_per_gpu, 3) if self.images_per_second_per_gpu else None,
            "dataset": self._dataset_json(processes),
            "learning_rate": float(self.schedule["learning_rate"]),
            "text_encoder_lr": self.text_encoder_lr,
            "lr_scheduler": self.schedule["lr_scheduler"],
            "lr_warmup_steps": int(self.schedule["lr_warmup_steps"]),
            "warnings": list(self.warnings),
            "notes": list(self.notes),
            "schedule": [self.row_json(n) for n in self.gpu_counts()] if self.dataset is not None else [],
            "run": self.row_json(processes) if self.dataset is not None else None,
            "validation": self._validation_json(processes),
            "price_per_gpu_hour": self.price_per_gpu_hour,
        }

    def _dataset_json(self, processes: int) -> dict[str, Any] | None:
        """``dataset`` with ``class_images`` (``given``, ``to_generate``, ``generate_s`` on ``processes``
        GPUs) when the run uses or generates class images."""
        images = self.class_images
        if self.dataset is None or images is None or not (images.total or images.generates):
            return self.dataset
        generate = self.generate_s(processes)
        return {
            **self.dataset,
            "class_images": {
                "given": images.given,
                "to_generate": images.to_generate,
                "total": images.total,
                "generate_s": round(generate, 1) if generate is not None else None,
            },
        }

    def _validation_json(self, processes: int) -> dict[str, Any] | None:
        if self.validation is None:
            return None
        total = self.row_for(max(1, processes)).total_steps if self.dataset is not None else 0
        return self.validation.to_json(total, self.images_per_second_per_gpu, max(1, processes))


def make_plan(config: Any, scan: Any, gpus: Any, price_per_gpu_hour: float | None = None, ram_bytes: int | None = None, choice: Any = None) -> Plan:
    """Plan ``config`` (a RunConfig) on ``scan`` (a DatasetScan) for ``gpus`` (a GpuSet) on a
    machine with ``ram_bytes`` of RAM (None: unknown, the RAM need is shown but not judged).
    ``choice`` (core.plan.choice.Choice) says what the picker composed and why, when it picked.

    Without a ``scan`` (None) the plan has the recipe, the VRAM estimate and the fit, no
    dataset and no schedule table, and a warning that says the table needs a dataset.
    Without ``price_per_gpu_hour`` the config's ``schedule.price_per_gpu_hour`` prices it (0: no cost).
    """
    if price_per_gpu_hour is None:
        price_per_gpu_hour = float(config.schedule.get("price_per_gpu_hour", 0.0)) or None
    if price_per_gpu_hour is not None and not (math.isfinite(price_per_gpu_hour) and price_per_gpu_hour >= 0):
        raise UserError(f"the price per GPU hour must be a finite number, not negative (got {price_per_gpu_hour}); pass e.g. --price-per-gpu-hour 0.7")
    family, method = config.family, config.method
    spec(family).check_method(method)
    planned = planned_as(family, str(config.model_path))
    settings, schedule, distributed = config.settings, config.schedule, config.distributed
    if int(schedule["epochs"]) <= 0 and int(schedule["max_steps"]) <= 0:
        raise UserError("schedule.epochs and schedule.max_steps are both 0, so the run would never train; give --epochs N or --steps N")
    if scan is not None:
        if config.subsets:
            scan = overlay_subsets(scan, config.subsets)
        if not any(s.images for s in scan.subsets if not s.is_reg):
            raise UserError(f"the dataset {scan.root} has no usable training image; run 'sdtui scan {scan.root}' to see why and fix it")
    validation = plan_validation(config.section("validation"), scan, settings) if hasattr(config, "section") else None
    held = validation.held if validation is not None else frozenset()
    counts = _bucket_counts(scan, bucket_selector(settings), held) if scan is not None else {}
    classes = class_images(method, settings, config.section("method")["class_prompt"], scan.reg_images, scan.images) if scan is not None else None
    shape = run_shape(method, classes.total if classes is not None else None, distributed, ram_bytes, sampling=bool(getattr(config, "prompts", None)))
    prior = shape.prior_preservation
    fit = judge(planned, method, settings, gpus, shape=shape)
    smallest = gpus.smallest
    plan = Plan(
        model_family=family,
        method=method,
        recipe=str(settings.get("recipe") or ""),
        settings=settings,
        schedule=schedule,
        vram_estimate_bytes=int(fit.estimate.total_bytes),
        gpu={
            "count": gpus.count,
            "name": smallest.name if smallest is not None else None,
            "vram_gb": round(smallest.vram_total_bytes / GIB, 1) if smallest is not None else None,
            "simulated": bool(gpus.simulated),
            "reason": gpus.reason,
        },
        fits=fit.fits,
        dataset=_dataset_json(scan, counts, held) if scan is not None else None,
        counts=counts,
        prior_preservation=prior,
        images_per_second_per_gpu=images_per_second(planned, method, settings, smallest, int(schedule["gradient_accumulation"])),
        configured_processes=int(distributed["num_processes"]) * int(distributed["num_machines"]),
        price_per_gpu_hour=price_per_gpu_hour,
        class_images=classes,
        class_image_s=sample_seconds_per_image(planned, settings, smallest, GENERATE_STEPS),
        validation=validation,
        planned_as=planned,
        memory=memory_summary(planned, method, settings, gpus, shape, fit),
        vram_fits=fit.estimate.fits(smallest.vram_total_bytes) if smallest is not None else None,
        ram=ram_summary(fit),
        choice=choice.to_json() if choice is not None else {},
    )
    _explain(plan, scan, gpus, fit, shape)
    plan.warnings += variant_warnings(family, str(config.model_path or ""))
    plan.warnings += _mask_warnings(config, scan)
    plan.warnings += placeholder_warnings(config, scan)
    return plan


def memory_summary(family: str, method: str, settings: dict[str, Any], gpus: Any, shape: RunShape, fit: Any) -> dict[str, Any]:
    """The techniques in use and their cost: how much slower than the same run without them
    (bf16 base, no swap, encoders as mixed precision) and what that one would need; and which
    peak the estimate is (nvidia-smi's: allocated + allocator slack + CUDA context)."""
    est = fit.estimate
    out: dict[str, Any] = {
        "techniques": describe_techniques(settings),
        "cost": list(fit.cost_notes),
        "slowdown": None,
        "baseline_gb": None,
        "peaks_gb": {"nvidia_smi": round(est.gb, 2), "reserved": round(est.reserved_bytes / GIB, 2), "allocated": round(est.allocated_bytes / GIB, 2)},
    }
    if out["techniques"]:
        plain = judge(family, method, dict(settings) | {"base_precision": "auto", "text_encoder_precision": "auto", "blocks_to_swap": 0}, gpus, shape=shape)
        out["baseline_gb"] = round(plain.estimate.gb, 2)
        if plain.images_per_second and fit.images_per_second:
            out["slowdown"] = round(plain.images_per_second / fit.images_per_second, 2)
    return out


def ram_summary(fit: Any) -> dict[str, Any]:
    """The run's host RAM need against the machine's (GiB)."""
    host = fit.estimate.host
    if host is None:
        return {}
    return {
        "need_gb": round(host.gb, 2),
        "have_gb": round(fit.ram_bytes / GIB, 1) if fit.ram_bytes else None,
        "fits": fit.ram_fits,
        "phase": host.phase,
        "breakdown": {k: round(v / GIB, 2) for k, v in host.breakdown.items() if v},
        "training_gb": round(sum(host.training.values()) / GIB, 2),
    }


def _bucket_counts(scan: Any, buckets: Any, held: frozenset[str] = frozenset()) -> dict[tuple[int, int], int]:
    """Items per bucket over the training subsets (less the validation's ``held`` images), each distinct image size bucketed once."""
    items: Counter[tuple[int, int]] = Counter()
    for subset in scan.subsets:
        if not subset.is_reg:
            for image in subset.images:
                if image.path not in held:
                    items[(image.width, image.height)] += subset.repeats
    return bucket_counts(((w, h, n) for (w, h), n in items.items()), buckets)


def _dataset_json(scan: Any, counts: dict[Any, int], held: frozenset[str] = frozenset()) -> dict[str, Any]:
    held_items = sum(s.repeats for s in scan.subsets if not s.is_reg for image in s.images if image.path in held)
    return {
        "root": scan.root,
        "images": scan.images,
        "reg_images": scan.reg_images,
        "items_per_epoch": scan.items_per_epoch - held_items,
        "validation_images": len(held),
        "subsets": [
            {
                "path": s.path,
                "repeats": s.repeats,
                "images": len(s.images),
                "is_reg": s.is_reg,
                "captions": s.captions_found,
                "token": s.token,
            }
            for s in scan.subsets
        ],
        "buckets": {f"{w}x{h}": n for (w, h), n in sorted(counts.items())},
        "problems": sum(p.count for p in scan.problems if p.severity == "error"),
    }


def _mask_warnings(config: Any, scan: Any) -> list[str]:
    """The scan's loss-mask problems when [dataset] mask_dir is set: images without a mask, masks without an image."""
    mask_dir = str(config.section("dataset").get("mask_dir") or "") if hasattr(config, "section") else ""
    if not mask_dir or scan is None:
        return []
    from core.dataset.masks import mask_problems

    paths = [image.path for subset in scan.subsets if not subset.is_reg for image in subset.images]
    return [
        f"{problem.count} files in {problem.path}: {problem.message}; {problem.fix}" if problem.count > 1 else f"{problem.path}: {problem.message}; {problem.fix}"
        for problem in mask_problems(paths, mask_dir)
    ]


def placeholder_warnings(config: Any, scan: Any) -> list[str]:
    """Textual inversion: a warning when no caption (nor the caption prefix or suffix) names the placeholder token."""
    token = str(config.section("method").get("placeholder_token", "")).strip()
    if config.method != "textual_inversion" or not token or scan is None:
        return []
    settings = config.settings
    if token in f"{settings.get('caption_prefix', '')} {settings.get('caption_suffix', '')}":
        return []
    captions = (image.caption if image.caption is not None else s.token for s in scan.subsets if not s.is_reg for image in s.images)
    if any(token in (caption or "") for caption in captions):
        return []
    return [
        f"no caption contains the placeholder token {token}, so the trainer puts it in front of every caption; "
        f"write {token} in the captions where the subject is named (e.g. 'a photo of {token} on a beach')"
    ]


def _explain(plan: Plan, scan: Any, gpus: Any, fit: Any, shape: RunShape) -> None:
    """Fill the plan's warnings and notes: fit, the step-mode trap, prior preservation, data."""
    _explain_fit(plan, gpus, fit, shape)
    plan.warnings += lr_warnings(plan.model_family, plan.method, str(plan.settings["optimizer"]), plan.schedule)
    if scan is None:
        plan.warnings.append(NO_DATASET)
        if plan.prior_preservation:
            plan.notes.append("the estimate assumes prior preservation (one class image per instance image), as DreamBooth usually trains")
        return
    _explain_step_mode(plan)
    _explain_prior_preservation(plan, scan)
    _explain_schedule(plan, scan)


def variant_warnings(family: str, model: str) -> list[str]:
    """The training advice of the variant the model's name says (``Variant.training_note``: Z-Image Turbo, a distilled model)."""
    note = spec(family).variant_of_name(model).training_note
    return [note] if note else []


def _explain_fit(plan: Plan, gpus: Any, fit: Any, shape: RunShape) -> None:
    """The GPU notes (none found, not in the catalog) and, when the estimate does not fit, the warning and what would fit."""
    planned = plan.planned_as or plan.model_family
    if planned != plan.model_family:
        plan.notes.append(f"the estimate and speed are {planned}'s, whose {spec(planned).denoiser} is measured on its own")
    smallest = gpus.smallest
    if smallest is None:
        plan.notes.append(f"no GPU found: {gpus.reason or 'none visible'}; the VRAM fit and the ETA are unknown; plan for hardware with --gpus, e.g. --gpus 2x4090")
    elif plan.images_per_second_per_gpu is None:
        plan.notes.append(f"the GPU '{smallest.name}' is not in the catalog, so the ETA is unknown")
    plan.notes.append(
        f"the VRAM estimate is the peak nvidia-smi shows for the process: {fit.estimate.allocated_bytes / GIB:.1f} GiB of tensors "
        f"(torch.cuda.max_memory_allocated), {fit.estimate.reserved_bytes / GIB:.1f} GiB reserved by the allocator (max_memory_reserved), plus the CUDA context"
    )
    plan.notes += [n for n in fit.estimate.notes if n not in plan.notes]
    plan.notes += list(fit.cost_notes)
    if fit.ram_fits is False:
        loading = fit.estimate.host is not None and fit.estimate.host.phase == "loading"
        fix = (
            "each process reads the denoiser in bf16 before it is quantized or moved to the GPU: use a machine with more RAM or fewer processes"
            if loading
            else "a full fine-tune's swapped blocks keep their weights, gradients and optimizer state there: use a machine with more RAM"
            + (", an optimizer with less state (adafactor)" if fit.settings.get("optimizer") != "adafactor" else "")
            + " or a GPU that holds more blocks (fewer blocks_to_swap)"
            if plan.method in FULL_METHODS and int(fit.settings.get("blocks_to_swap", 0) or 0)
            else "swap fewer blocks (settings.blocks_to_swap), cache text-encoder outputs to disk (cache_text_encoder_outputs_to_disk) or use a machine with more RAM"
        )
        plan.warnings.append(
            f"the run needs about {fit.ram_need_bytes / GIB:.1f} GiB of RAM while {'loading' if loading else 'training'} but the machine has "
            f"{fit.ram_bytes / GIB:.0f} GiB and {RAM_HEADROOM:.0%} stays free; {fix}"
        )
    if plan.fits is False and fit.estimate.fits(smallest.vram_total_bytes):
        return
    if plan.fits is False:
        plan.warnings.append(
            f"the estimated peak VRAM of {fit.estimate.total_bytes / GIB:.1f} GiB does not fit in "
            f"{smallest.vram_total_bytes / GIB:.0f} GiB per GPU with {HEADROOM:.0%} headroom ({smallest.name})"
        )
        from core.recipes import load_recipes

        for tip in suggest_when_nothing_fits(planned, plan.method, gpus, load_recipes(), plan.settings, shape):
            plan.warnings.append(f"to fit: {tip}")


def _explain_step_mode(plan: Plan) -> None:
    """The kohya multi-GPU surprise: in step mode more GPUs mean more epochs."""
    max_steps = int(plan.schedule["max_steps"])
    if max_steps > 0:
        one, two = plan.row_for(1), plan.row_for(2)
        plan.warnings.append(
            f"step mode (schedule.max_steps = {max_steps}): with N GPUs each step sees N× the images, so the run covers "
            f"N× the epochs of one GPU ({round(one.epochs, 2):g} epochs on 1 GPU, {round(two.epochs, 2):g} on 2); kohya users see their epochs "
            "double when they add a GPU; use epoch mode (--epochs N, schedule.max_steps = 0) to keep the images seen the same"
        )


def _explain_prior_preservation(plan: Plan, scan: Any) -> None:
    """How prior preservation pairs the images and where the class images come from; DreamBooth
    without it; regularisation subsets a method ignores."""
    if plan.prior_preservation:
        batch = int(plan.settings["batch_size"])
        plan.notes.append(
            f"prior preservation: each instance image is paired with one class image in the same step, so each GPU "
            f"processes {batch} + {batch} images per batch; the batch doubles, the step count does not "
            f"(class loss weight {float(plan.settings['prior_loss_weight']):g})"
        )
        if plan.class_images is not None:
            plan.notes.append(describe(plan.class_images, plan.generate_s(plan.configured_processes)))
    elif plan.method == "dreambooth":
        plan.notes.append(
            "dreambooth without class images: no prior preservation; add a class folder (--reg DIR) or set method.class_prompt to generate class images, to keep the class from drifting"
        )
    reg_subsets = [s for s in scan.subsets if s.is_reg and s.images]
    if reg_subsets and not plan.prior_preservation:
        plan.warnings.append(f"{len(reg_subsets)} regularisation subset(s) are ignored by {plan.method}; leave --reg out or train dreambooth or lora for prior preservation")


def _explain_schedule(plan: Plan, scan: Any) -> None:
    """The optimizer's rules and notes, a warm-up longer than the run, the scan's errors, and what the LR schedule counts."""
    settings, schedule = plan.settings, plan.schedule
    plan.warnings += optimizer_rule_warnings(str(settings["optimizer"]), float(schedule["learning_rate"]), str(schedule["lr_scheduler"]))
    plan.notes += optimizer_notes(str(settings["optimizer"]))
    warmup = int(schedule["lr_warmup_steps"])
    run_steps = plan.total_steps_for(plan.configured_processes)
    if warmup > run_steps:
        plan.warnings.append(f"the warm-up of {warmup} steps is longer than the run ({run_steps} steps); lower schedule.lr_warmup_steps")
    errors = [p for p in scan.problems if p.severity == "error"]
    if errors:
        plan.warnings.append(f"the dataset scan found {sum(p.count for p in errors)} error(s), e.g. {errors[0].path}: {errors[0].message}; run 'sdtui scan {scan.root}' for all")
    plan.notes.append(
        f"warm-up and the {schedule['lr_scheduler']} LR schedule count optimizer steps of the actual run "
        f"({plan.configured_processes} GPU{'s' if plan.configured_processes != 1 else ''}: {run_steps} steps)"
    )
