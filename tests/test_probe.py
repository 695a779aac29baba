"""The fault probe (bench/probe) as tests: every check of every probe module, one test each.

Checks that train, launch processes or build large trees are marked ``slow``; ``python -m
bench.probe`` runs the same checks from the command line (docs/faults.md).
"""

from __future__ import annotations

import pytest

from bench.probe.__main__ import all_checks, run_check
from bench.probe.base import Check

CHECKS = all_checks()


@pytest.mark.parametrize(
    "check",
    [pytest.param(c, id=c.name, marks=[pytest.mark.slow] if c.slow else []) for c in CHECKS],
)
def test_probe_check_holds(check: Check) -> None:
    problem = run_check(check)
    assert problem is None, f"{check.name}: {problem}"


def test_the_probe_has_checks_for_inputs_and_the_scan() -> None:
    modules = {c.run.__module__ for c in CHECKS}
    assert {"bench.probe.inputs", "bench.probe.scan"} <= modules
    assert len({c.name for c in CHECKS}) == len(CHECKS), "two probe checks share a name"
