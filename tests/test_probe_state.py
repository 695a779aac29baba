"""The fault probe's checks of damaged state (``bench/probe/state.py``, issue 19) all hold."""

from __future__ import annotations

import pytest

from bench.probe.__main__ import run_check
from bench.probe.state import CHECKS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("check", CHECKS, ids=[c.name for c in CHECKS])
def test_probe_check_holds(check) -> None:
    assert run_check(check) is None
