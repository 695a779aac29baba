"""``sdtui gpus`` and ``sdtui recipes``: the hardware found (or simulated) and the recipes for it."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from core.families import FAMILIES
from core.settings import METHODS
from core.units import GIB

from . import common


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``gpus`` and ``recipes``."""
    gpus = sub.add_parser("gpus", help="list the GPUs (or the simulated ones of --gpus)")
    gpus.add_argument("--catalog", action="store_true", help="list the known GPU models (names for --gpus) instead")
    common.add_json(gpus)
    gpus.set_defaults(func=cmd_gpus)

    recipes = sub.add_parser("recipes", help="list the memory-saving recipes with their estimated peak VRAM")
    recipes.add_argument("--family", choices=FAMILIES, help="only recipes for this model family")
    recipes.add_argument("--method", choices=METHODS, help="only recipes for this method")
    common.add_json(recipes)
    recipes.set_defaults(func=cmd_recipes)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip() for line in [header, *rows]]
    return "\n".join(lines)


def format_gpus(gpus: Any, spec: str = "auto") -> str:
    """The GPU table, or one sentence saying why there is none and what to do instead."""
    if not gpus.gpus:
        return (
            f"No usable GPU: {gpus.reason or 'none was found'}.\n"
            "Try the whole flow on the CPU with `sdtui demo`, or plan for hardware you will rent "
            "with `sdtui --gpus 1x24GB plan …` (or 2x4090, 8xH100)."
        )
    rows = []
    for g in gpus.gpus:
        cc = ".".join(map(str, g.compute_capability)) if g.compute_capability else "-"
        free = "-" if g.simulated else f"{g.vram_free_gb:.1f} GiB"
        util = f"{g.utilization}%" if g.utilization is not None else "-"
        speed = f"{g.tflops('bf16'):g}" if g.bf16 else f"{g.tflops('fp16'):g} (fp16)"
        if g.model is None:
            speed += " (guess)"
        rows.append([str(g.index), g.name + (" [MIG]" if g.mig else ""), f"{g.vram_gb:.1f} GiB", free, "yes" if g.bf16 else "no", cc, util, speed])
    out = [table(["#", "GPU", "VRAM", "free", "bf16", "cc", "util", "TFLOP/s"], rows)]
    first = gpus.gpus[0]
    if gpus.simulated:
        out.insert(0, f"Simulated hardware ({spec}): planning only, nothing is probed.")
    else:
        out.append(f"driver {first.driver or '?'}, CUDA {first.cuda_version or '?'}")
    for g in gpus.gpus:
        for p in g.processes:
            held = f"{p.used_bytes / GIB:.1f} GiB" if p.used_bytes else "memory unknown"
            out.append(f"GPU {g.index} is in use by {p.name} (pid {p.pid}, {held})")
    out.extend(gpus.notes)
    return "\n".join(out)


def cmd_gpus(args: argparse.Namespace) -> int:
    """``sdtui gpus [--json]``."""
    from core.gpu import resolve

    if args.catalog:
        return _print_catalog(args.json)
    spec = getattr(args, "gpus", "auto")
    gpus = resolve(spec)
    if args.json:
        common.print_json(gpus.to_json())
    else:
        print(format_gpus(gpus, spec))
    return 0


def _print_catalog(as_json: bool) -> int:
    from dataclasses import asdict

    from core.gpu import CATALOG

    if as_json:
        common.print_json([asdict(m) for m in CATALOG.values()])
        return 0
    rows = [[m.key.upper(), m.name, f"{m.vram_gb:g} GiB", "yes" if m.bf16 else "no", f"{m.tflops_bf16:g}", f"{m.tflops_fp16:g}", f"{m.bandwidth_gbs:g}"] for m in CATALOG.values()]
    print(table(["spec", "GPU", "VRAM", "bf16", "bf16 TFLOP/s", "fp16 TFLOP/s", "GB/s"], rows))
    print("e.g. sdtui --gpus 2x4090 plan …  (dense tensor TFLOP/s from the vendors' datasheets)")
    return 0


def recipe_rows(recipes: Sequence[Any], gpus: Any, family: str | None, method: str | None) -> list[dict[str, Any]]:
    """Each recipe with its estimated peak per family and method (and whether it fits the smallest GPU)."""
    from core.memory import estimate

    smallest = gpus.smallest
    out = []
    for recipe in recipes:
        if (family and family not in recipe.families) or (method and method not in recipe.methods):
            continue
        estimates = {}
        for f in [family] if family else recipe.families:
            for m in [method] if method else recipe.methods:
                found = estimate(f, m, recipe.settings, num_gpus=max(1, gpus.count))
                estimates[f"{f}/{m}"] = {
                    "gb": round(found.gb, 2),
                    "fits": found.fits(smallest.vram_total_bytes) if smallest is not None else None,
                }
        out.append({**recipe.to_json(), "estimates": estimates})
    return out


def cmd_recipes(args: argparse.Namespace) -> int:
    """``sdtui recipes [--family F] [--method M] [--json]``."""
    from core.gpu import resolve
    from core.recipes import load_recipes

    gpus = resolve(getattr(args, "gpus", "auto"))
    rows = recipe_rows(load_recipes(), gpus, args.family, args.method)
    if args.json:
        common.print_json({"gpu": gpus.smallest.to_json() if gpus.smallest else None, "recipes": rows})
        return 0
    smallest = gpus.smallest
    header = ["recipe", "for", "peak VRAM", *(["fits"] if smallest else []), "trade-off"]
    lines = []
    for row in rows:
        for i, (key, est) in enumerate(row["estimates"].items()):
            fits = ["yes" if est["fits"] else "no"] if smallest else []
            lines.append([row["name"] if i == 0 else "", key, f"{est['gb']:.1f} GiB", *fits, row["summary"] if i == 0 else ""])
    print(table(header, lines))
    if smallest:
        from core.memory.estimator import HEADROOM

        print(f"fits = estimated peak with {HEADROOM:.0%} headroom within {smallest.name} ({smallest.vram_gb:.0f} GiB)")
    return 0
