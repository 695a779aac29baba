"""Compatibility re-export of :mod:`core.families.detect` for ``core/train/model/loading.py`` until the trainer switches over (issue 18)."""

from core.families.detect import LOADED_PARTS, check_loadable, family_of_configs, family_of_file, family_of_folder, model_parts

__all__ = ["LOADED_PARTS", "check_loadable", "family_of_configs", "family_of_file", "family_of_folder", "model_parts"]
