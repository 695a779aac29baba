"""Compatibility re-export of :mod:`core.families.detect` for ``core/train/models.py`` until the trainer switches over (issue 18)."""

from core.families.detect import family_of_configs, family_of_file, family_of_folder

__all__ = ["family_of_configs", "family_of_file", "family_of_folder"]
