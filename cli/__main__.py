"""``python -m cli`` is ``sdtui``."""

import sys

from .main import main

sys.exit(main())
