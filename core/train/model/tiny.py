"""Tiny models of each family with random weights, built locally in well under a second.

They have the real architecture at toy size with their tokenizers (each family runtime's
``build_tiny``), so the whole training path runs on a
CPU and offline. ``build_tiny`` writes a diffusers folder; ``build_tiny_single_file`` writes
the same weights as one ``.safetensors`` file in the family's original single-file layout.
"""

from __future__ import annotations

from pathlib import Path

from core.families import runtime


def build_tiny(family: str, out_dir: str | Path) -> Path:
    """Write a tiny diffusers model folder of ``family`` to ``out_dir`` and return its path.

    Deterministic (seeded) and loadable offline with the family's pipeline ``from_pretrained``.
    UserError for a family that is not registered.
    """
    return runtime(family).build_tiny(Path(out_dir))


def build_tiny_single_file(family: str, path: str | Path, config_dir: str | Path | None = None) -> Path:
    """Write the tiny model of ``family`` as one ``.safetensors`` file in its original single-file layout.

    Its diffusers config without weights (what ``from_single_file(path, config=...)`` needs
    offline: configs, tokenizers; where the family's original file holds only the denoiser,
    the other parts keep their weights) goes to ``config_dir``, by default a folder beside the file
    named like it without the suffix, where :func:`core.train.model.loading.load_components` looks.
    """
    from core.train.outputs.files import save_original_file

    target = Path(path)
    config = Path(config_dir) if config_dir is not None else target.with_suffix("")
    build_tiny(family, config)
    save_original_file(config, family, target)
    denoiser_only = runtime(family).spec.original_denoiser_only
    for weights in config.glob(f"{runtime(family).spec.denoiser}/*.safetensors" if denoiser_only else "*/*.safetensors"):
        weights.unlink()
    return target
