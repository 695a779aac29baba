"""The memory-saving recipes shipped with sdtui, one TOML file each (see core/recipes.py).

This folder is a package only so that the recipes travel with the code: the wheel ships the
.toml files as package data, and core.recipes finds them with importlib.resources wherever
sdtui is installed (a wheel, an editable install, or a checkout on sys.path).
"""
