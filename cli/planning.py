"""``sdtui scan``, ``sdtui plan``, ``sdtui export-kohya`` and ``sdtui import-kohya``: look before you train."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cli.common import add_json, add_set, print_json, whole_number, writable_folder
from core.dataset.buckets import BUCKET_KEYS
from core.dataset.problems import listed
from core.errors import UserError
from core.families import FAMILIES, planned_as, spec
from core.settings import METHODS


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``scan``, ``plan``, ``export-kohya`` and ``import-kohya``."""
    scan = sub.add_parser("scan", help="scan a kohya-style dataset folder (read-only) and list its problems")
    scan.add_argument("dir", metavar="DIR", help="dataset folder of <repeats>_<token> subfolders")
    scan.add_argument("--resolution", type=whole_number("--resolution", 64), default=512, help="training resolution for the buckets (default 512)")
    scan.add_argument("--reg", metavar="DIR", default=None, help="regularisation / class images folder")
    scan.add_argument("--masks", metavar="DIR", default=None, help="loss-mask folder ([dataset] mask_dir): report images without a mask and masks without an image")
    add_json(scan)
    scan.set_defaults(func=cmd_scan)

    plan = sub.add_parser("plan", help="recipe, VRAM estimate and the schedule on 1, 2, 4 and 8 GPUs")
    plan.add_argument("config", nargs="?", metavar="CONFIG.toml", help="plan this run config instead of --model/--data")
    plan.add_argument("--model", help=f"diffusers folder, .safetensors file, hub id, or {' | '.join(FAMILIES)} to plan without weights")
    plan.add_argument("--data", metavar="DIR", help="dataset folder of <repeats>_<token> subfolders")
    plan.add_argument("--reg", metavar="DIR", help="regularisation / class images folder")
    plan.add_argument("--method", help=f"{' | '.join(METHODS)} (default lora)")
    plan.add_argument("--recipe", help="recipe name (default: the fastest that fits, see sdtui recipes)")
    plan.add_argument("--price-per-gpu-hour", type=float, default=None, metavar="X", help="adds a cost column")
    plan.add_argument("--ram", type=ram_size, default=None, metavar="SIZE", help="the training machine's RAM, e.g. 64GB (default: this machine's, unknown with simulated --gpus)")
    length = plan.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=whole_number("--epochs", 1), metavar="N", help="epoch mode: N epochs")
    length.add_argument("--steps", type=whole_number("--steps", 1), metavar="N", help="step mode: N optimizer steps")
    add_set(plan)
    add_json(plan)
    plan.set_defaults(func=cmd_plan)

    export = sub.add_parser("export-kohya", help="write sd-scripts' dataset config, sample prompts and training arguments for a run config into a new folder")
    export.add_argument("config", metavar="CONFIG.toml", help="the run config")
    export.add_argument("dir", metavar="DIR", help="output folder (new or empty)")
    export.set_defaults(func=cmd_export_kohya)

    imp = sub.add_parser("import-kohya", help="write a run config from kohya's dataset_config.toml (and its sample prompts)")
    imp.add_argument("dataset_config", metavar="DATASET_CONFIG.toml", help="sd-scripts dataset config ([general], [[datasets]], [[datasets.subsets]])")
    imp.add_argument("out", metavar="OUT.toml", help="the run config to write")
    imp.add_argument("--prompts", metavar="FILE", help="sd-scripts sample prompts file (one prompt a line, --n --w --h --d --l --s)")
    imp.add_argument("--model", default="", help="diffusers folder, .safetensors file or hub id (else fill in [model] path before training)")
    imp.add_argument("--method", default="lora", choices=METHODS, help="training method (default lora)")
    imp.add_argument("--name", help="run name (default: the first subset's token and the method)")
    imp.set_defaults(func=cmd_import_kohya)


def cmd_scan(args: argparse.Namespace) -> int:
    """``sdtui scan DIR``: the subsets table and the problems; exit 2 when nothing can train."""
    from core.dataset.scan import scan_dataset

    scan = scan_dataset(args.dir, args.reg, resolution=args.resolution)
    if args.masks:
        scan = with_mask_problems(scan, args.masks)
    if args.json:
        print_json(scan.to_json())
    else:
        print(format_scan(scan))
    blocking = scan.blocking_problem()
    if blocking is not None:
        raise UserError(f"{blocking.path}: {blocking.message}; {blocking.fix}")
    return 0


def with_mask_problems(scan: Any, mask_dir: str) -> Any:
    """``scan`` with the loss-mask folder's problems added (``core.dataset.masks.mask_problems``)."""
    from dataclasses import replace
    from pathlib import Path

    from core.dataset.masks import mask_problems
    from core.dataset.problems import sort_problems

    if not Path(mask_dir).expanduser().is_dir():
        raise UserError(f"--masks {mask_dir}: not a folder; give the folder of loss masks (one per image, same name)")
    paths = [image.path for subset in scan.subsets if not subset.is_reg for image in subset.images]
    return replace(scan, problems=sort_problems(scan.problems + mask_problems(paths, mask_dir)))


def cmd_plan(args: argparse.Namespace) -> int:
    """``sdtui plan``: the plan as a table, or as JSON with ``--json``."""
    from core.gpu import resolve
    from core.plan.planner import make_plan

    extras = list(args.overrides)
    if args.epochs is not None:
        extras += [f"schedule.epochs={args.epochs}", "schedule.max_steps=0"]
    if args.steps is not None:
        extras.append(f"schedule.max_steps={args.steps}")
    gpus = resolve(args.gpus)
    # this machine's RAM judges a plan for its own GPUs; simulated GPUs are another machine's
    ram = args.ram if args.ram is not None else (None if gpus.simulated else machine_ram_bytes())
    choice = None
    if args.config:
        config, scan = _from_config_file(args, extras)
    else:
        config, scan, choice = _from_arguments(args, extras, gpus, ram)
    plan = make_plan(config, scan, gpus, price_per_gpu_hour=args.price_per_gpu_hour, ram_bytes=ram, choice=choice)
    if args.json:
        print_json(plan.to_json())
    else:
        print(format_plan(plan))
    return 0


def cmd_export_kohya(args: argparse.Namespace) -> int:
    """``sdtui export-kohya CONFIG.toml DIR``: sd-scripts' dataset config, prompts, training
    arguments (and a fine-tune's metadata files) in a new folder; what has no sd-scripts option
    goes to stderr in one sentence."""
    import sys

    from core.config import load_config
    from core.kohya import export_kohya

    export = export_kohya(load_config(args.config), writable_folder(args.dir, "the output folder"))
    for path in export.written:
        print(path)
    print(f"run it in sd-scripts with: accelerate launch {export.script} --config_file {export.written[2]}", file=sys.stderr)
    for sentence in [export.summary(), *export.notes]:
        if sentence:
            print(f"note: {sentence}", file=sys.stderr)
    return 0


def cmd_import_kohya(args: argparse.Namespace) -> int:
    """``sdtui import-kohya DATASET_CONFIG.toml [--prompts FILE] OUT.toml``: a run.toml from kohya's files."""
    import sys

    from core.config import save_config
    from core.kohya import run_config_from_kohya

    out = Path(args.out).expanduser()
    if out.is_dir():
        raise UserError(f"output {out} is a folder; give the run config file to write, e.g. {out / 'run.toml'}")
    config = run_config_from_kohya(args.dataset_config, args.prompts, args.model, args.method, args.name)
    print(save_config(config, out))
    if not args.model:
        print(f"note: {out} has no model yet; set [model] path and family there (or give --model), then: sdtui train {out}", file=sys.stderr)
    return 0


def _from_config_file(args: argparse.Namespace, extras: list[str]) -> tuple[Any, Any]:
    """The run config from CONFIG.toml with the overrides, and a scan of its subsets."""
    from core.config import apply_overrides, load_config

    given = [f"--{name}" for name in ("model", "data", "reg", "method", "recipe") if getattr(args, name)]
    if given:
        raise UserError(f"{given[0]} cannot be combined with a run config; edit {args.config} or use --set section.key=value")
    config = apply_overrides(load_config(args.config), extras)
    if not config.subsets:
        raise UserError(f"{args.config} has no [[dataset.subsets]]; add the dataset's subset folders or plan with --data DIR")
    from core.dataset.scan import scan_config

    return config, scan_config(config)


def ram_size(text: str) -> int:
    """``--ram 64GB`` as bytes (argparse names the option when it is not a size)."""
    from core.memory.techniques import parse_ram

    try:
        return parse_ram(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def machine_ram_bytes() -> int | None:
    """This machine's RAM (the plan judges the host memory against it)."""
    from core.gpu import machine_ram_bytes as read

    return read()


def _from_arguments(args: argparse.Namespace, extras: list[str], gpus: Any, ram: int | None = None) -> tuple[Any, Any, Any]:
    """A run config built from --model, --data, --method and --recipe (or the picker's choice),
    the scan of --data (None without it: the plan then has no schedule table) and the picker's
    choice in words (core.plan.choice; None for a recipe named with --recipe)."""
    from core.config import apply_overrides, apply_recipe, new_config
    from core.dataset.scan import scan_dataset
    from core.families.detect import detect_family
    from core.plan.fit import run_shape

    if not args.model:
        raise UserError("sdtui plan needs a base model: give --model with a diffusers folder, a .safetensors file, a hub id, or one of " + ", ".join(FAMILIES))
    if args.reg and not args.data:
        raise UserError("--reg (class images) needs the training images too: add --data DIR")
    method = args.method or "lora"
    if method not in METHODS:
        raise UserError(f"method '{method}' is unknown; use --method with one of {', '.join(METHODS)}")
    family = detect_family(args.model)
    model_path = "" if args.model == family else args.model
    probe = apply_overrides(new_config("plan", model_path, family, method, [], {}), extras)
    overrides = _settings_overrides(probe, extras)
    settings = probe.settings
    resolution = int(overrides.get("resolution", spec(family).native_resolution))
    scan = None
    if args.data:
        scan = scan_dataset(args.data, args.reg, resolution=resolution, bucket_settings={k: settings[k] for k in BUCKET_KEYS})
    distributed = probe.distributed | {"num_processes": max(1, gpus.count)}
    recipe, changes, choice = _choose_recipe(
        args.recipe, planned_as(family, args.model), method, gpus, overrides, run_shape(method, scan.reg_images if scan is not None else None, distributed, ram)
    )
    if scan is None:
        name = f"{family}-{method}"
    else:
        name = f"{_slug(scan.subsets[0].token if scan.subsets else '') or Path(args.data).name}-{method}"
    subsets = scan.subset_configs() if scan is not None else []
    config = new_config(name, model_path, family, method, subsets, {}, distributed=distributed)
    apply_recipe(config, recipe.settings | changes, recipe.name, recipe.schedule)
    apply_overrides(config, extras)
    return config, scan, choice


def _settings_overrides(config: Any, extras: list[str]) -> dict[str, Any]:
    """The [settings] values the user overrode (already checked by apply_overrides)."""
    from core.settings import lookup

    keys = []
    for item in extras:
        section, setting = lookup(item.partition("=")[0].strip())
        if section == "settings":
            keys.append(setting.key)
    settings = config.settings
    return {key: settings[key] for key in keys}


def _choose_recipe(name: str | None, family: str, method: str, gpus: Any, overrides: dict[str, Any], shape: Any) -> tuple[Any, dict[str, Any], Any]:
    """The named recipe as written, or the picker's fastest fitting one for a run of ``shape``
    with the changes the picker composed into it (the least heavy when none fits), and the
    choice in words (None for a named recipe)."""
    from core.families import spec
    from core.plan.choice import choose
    from core.plan.picker import rank_recipes
    from core.recipes import get_recipe, load_recipes

    spec(family).check_method(method)  # a method the family does not train: that sentence, not "no recipe"
    if name:
        recipe = get_recipe(name)
        family = spec(family).name  # a variant planned on its own takes its family's recipes
        if family not in recipe.families or method not in recipe.methods:
            raise UserError(f"recipe '{name}' is for {', '.join(recipe.families)} with {', '.join(recipe.methods)}, not {family} with {method}; list the others with sdtui recipes")
        return recipe, {}, None
    ranked = rank_recipes(family, method, gpus, load_recipes(), overrides, shape)
    if not ranked:
        raise UserError(f"no recipe in the recipes folder trains {family} with {method}; add one or pick another --method")
    changes = {k: v for k, v in ranked[0].changes.items() if k != "recipe"}
    return ranked[0].recipe, changes, choose(family, method, gpus, ranked, overrides, shape)


def _slug(text: str) -> str:
    return "-".join("".join(c if c.isalnum() else " " for c in text.lower()).split())


def _table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """A plain text table (right-aligned where asked)."""
    right = right or set()
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) if rows else len(headers[i]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _size(value: Any) -> str:
    return f"{value[0]}x{value[1]}" if value else "-"


def format_scan(scan: Any) -> str:
    """The human-readable scan: one row per subset, then the problems with their fixes."""
    rows = []
    for s in scan.subsets:
        top = sorted(s.buckets.items(), key=lambda kv: -kv[1])[:3]
        buckets = ", ".join(f"{w}x{h}:{n}" for (w, h), n in top) + (" …" if len(s.buckets) > 3 else "")
        rows.append(
            [
                s.name + (" (reg)" if s.is_reg else ""),
                str(len(s.images)),
                str(s.repeats),
                s.token or "-",
                s.captions_label,
                f"{_size(s.min_size)} … {_size(s.max_size)}",
                buckets or "-",
            ]
        )
    out = [
        f"Dataset {scan.root}" + (f" (class images: {scan.reg_root})" if scan.reg_root else ""),
        f"{scan.images} training images, {scan.items_per_epoch} items per epoch at resolution {scan.resolution}" + (f", {scan.reg_images} class images" if scan.reg_root else ""),
        "",
        _table(["subset", "images", "repeats", "token", "captions found/all", "sizes", "buckets"], rows, {1, 2}),
    ]
    if scan.problems:
        shown, rest = listed(scan.problems)
        out += ["", f"Problems ({len(scan.problems)}):"]
        out += [f"  {p.severity:7} {p.path}: {p.message}\n          fix: {p.fix}" for p in shown]
        out += [f"  {rest}"] if rest else []
    else:
        out += ["", "No problems found."]
    return "\n".join(out)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds >= 86400:
        return f"{seconds // 86400}d {seconds % 86400 // 3600}h"
    if seconds >= 3600:
        return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m {seconds % 60:02d}s"


def _dataset_line(dataset: dict[str, Any] | None) -> str:
    if dataset is None:
        return "Dataset   none given (the schedule table needs --data DIR)"
    return f"Dataset   {dataset['images']} images in {sum(1 for s in dataset['subsets'] if not s['is_reg'])} subset(s), {dataset['items_per_epoch']} items per epoch" + (
        f", {dataset['reg_images']} class images" if dataset["reg_images"] else ""
    )


def _validation_line(validation: dict[str, Any]) -> str:
    """The plan's validation: images, how often, and what it adds to the ETA."""
    source = {"split": "held out of the training images", "folder": "from the validation folder"}.get(validation["source"], "held out and from the folder")
    cost = f", {_duration(validation['cost_s'])} of the ETA" if validation["cost_s"] is not None else ""
    return f"Validation {validation['images']} images {source}, loss every {validation['every_n_steps']} steps at {validation['timesteps']} fixed timesteps: {validation['runs']} times{cost}"


def _recipe_line(data: dict[str, Any]) -> str:
    """The recipe as what it is, ``Recipe    composed for 1 × 12 GiB from flux-lora-48gb: int8 text
    encoders, 52 blocks swapped (bf16, adamw8bit, …)`` when the picker composed it, else
    ``Recipe    NAME: bf16, adamw8bit, …``."""
    settings = data["settings"]
    details = (
        f"{settings['mixed_precision']}, {settings['optimizer']}, checkpointing {'on' if settings['gradient_checkpointing'] else 'off'}, "
        f"batch {settings['batch_size']}, resolution {settings['resolution']}" + (f", LoRA rank {settings['lora_rank']}" if data["method"] == "lora" else "")
    )
    composed = (data["choice"] or {}).get("composed")
    if composed:
        return f"Recipe    {composed} ({details})"
    return f"Recipe    {data['recipe'] or '(own settings)'}: {details}"


def _memory_line(memory: dict[str, Any]) -> str:
    """``Memory    fp8_scaled base, 8 blocks swapped: about 1.4× slower than without them (27.3 GiB)``."""
    if not memory.get("techniques"):
        return "Memory    no memory technique (base and text encoders as mixed precision, no block swap)"
    cost = ""
    if memory.get("slowdown") is not None:
        factor = float(memory["slowdown"])
        pace = f"about {factor:.1f}× slower than" if factor >= 1.05 else "about as fast as"
        cost = f": {pace} without them, which would need {memory['baseline_gb']:.1f} GiB"
    elif memory.get("baseline_gb") is not None:
        cost = f": without them {memory['baseline_gb']:.1f} GiB"
    return f"Memory    {memory['techniques']}{cost}"


def _ram_line(ram: dict[str, Any]) -> str:
    """``RAM       21.3 GiB needed (swapped blocks 12.0, …) of 64 GiB: fits``."""
    if not ram:
        return "RAM       unknown"
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in ram["breakdown"].items())
    later = f"; {ram['training_gb']:.1f} GiB while training" if ram["phase"] == "loading" else ""
    have = (f" of {ram['have_gb']:g} GiB: " + ("fits" if ram["fits"] else "SHORT")) if ram.get("have_gb") else " (the training machine's RAM unknown: give --ram 64GB)"
    return f"RAM       {ram['need_gb']:.1f} GiB needed while {ram['phase']} ({parts}{later}){have}"


def format_plan(plan: Any) -> str:
    """The human-readable plan: recipe, VRAM against the GPU, dataset, GPU-count table, warnings."""
    data = plan.to_json()
    gpu, dataset = data["gpu"], data["dataset"]
    if gpu["name"]:
        verdict = "fits" if data["vram_fits"] else "DOES NOT FIT"
        vram = f"{data['vram_estimate_gb']:.1f} GiB estimated peak of {gpu['vram_gb']:g} GiB per GPU: {verdict} (with {data['headroom']:.0%} headroom)"
        hardware = f"{gpu['count']} × {gpu['name']}" + (" (simulated)" if gpu["simulated"] else "")
    else:
        vram = f"{data['vram_estimate_gb']:.1f} GiB estimated peak (no GPU to compare with)"
        hardware = f"none: {gpu['reason'] or 'no GPU visible'}"  # the reason has parentheses of its own
    speed = data["images_per_second_per_gpu"]
    mode = f"step mode, {plan.schedule['max_steps']} steps" if int(plan.schedule["max_steps"]) > 0 else f"epoch mode, {plan.schedule['epochs']} epochs"
    out = [
        f"Model     {data['model_family']}, method {data['method']}",
        f"GPUs      {hardware}",
        _recipe_line(data),
        *(f"Choice    {reason}" for reason in (data["choice"] or {}).get("reasons", [])),
        f"VRAM      {vram}",
        _memory_line(data["memory"]),
        _ram_line(data["ram"]),
        f"Speed     {speed:.2f} images/s per GPU (model estimate)" if speed else "Speed     unknown (no catalog GPU)",
        _dataset_line(dataset),
        f"Schedule  {mode}, gradient accumulation {plan.schedule['gradient_accumulation']}, "
        f"learning rate {data['learning_rate']:g}"
        + (f", text encoders {data['text_encoder_lr']:g}" if data["text_encoder_lr"] is not None else "")
        + f" ({data['lr_scheduler']}, {data['lr_warmup_steps']} warm-up steps)",
    ]
    if data["validation"]:
        out.append(_validation_line(data["validation"]))
    headers = ["GPUs", "eff. batch", "steps/epoch", "epochs", "total steps", "images seen", "warm-up", "ETA"]
    priced = data["price_per_gpu_hour"] is not None
    if priced:
        headers.append("cost")
    rows = []
    for row in data["schedule"]:
        cells = [
            str(row["gpus"]),
            str(row["effective_batch"]),
            str(row["steps_per_epoch"]),
            f"{round(row['epochs'], 2):g}",
            str(row["total_steps"]),
            str(row["images_seen"]),
            str(row["warmup_steps"]),
            _duration(row["eta_s"]),
        ]
        if priced:
            cells.append(f"{row['cost']:.2f}" if row.get("cost") is not None else "-")
        rows.append(cells)
    if rows:
        out += ["", _table(headers, rows, set(range(len(headers))))]
    if data["warnings"]:
        out += ["", "Warnings:"] + [f"  ! {w}" for w in data["warnings"]]
    if data["notes"]:
        out += ["", "Notes:"] + [f"  - {n}" for n in data["notes"]]
    return "\n".join(out)
