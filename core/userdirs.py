"""Where sdtui keeps the user's own files, never inside the installed package.

platformdirs picks the folders; on Linux they follow the XDG base directories:

* data (``$XDG_DATA_HOME/sdtui``, ~/.local/share/sdtui): measured calibration points;
* cache (``$XDG_CACHE_HOME/sdtui``, ~/.cache/sdtui): dataset scan caches, safe to delete;
* state (``$XDG_STATE_HOME/sdtui``, ~/.local/state/sdtui): the runs folder last used per
  working folder.
"""

from __future__ import annotations

from pathlib import Path

import platformdirs

APP = "sdtui"


def data_dir() -> Path:
    """The user's data folder for sdtui (not created)."""
    return platformdirs.user_data_path(APP, appauthor=False)


def cache_dir() -> Path:
    """The user's cache folder for sdtui (not created)."""
    return platformdirs.user_cache_path(APP, appauthor=False)


def state_dir() -> Path:
    """The user's state folder for sdtui (not created)."""
    return platformdirs.user_state_path(APP, appauthor=False)
