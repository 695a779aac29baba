"""The fault probe: ``python -m bench.probe [--only TEXT] [--list]``.

Each module of this package holds a ``CHECKS`` list of :class:`bench.probe.base.Check`, one per
way a run, a cache or a command was once found to lose data, lie or crash. A check drives the
real program (the CLI, the supervisor, the tiny trainer) in a scratch folder and says whether
the fault is now held. The runner prints one line per check, ``held`` or ``BROKEN`` with what
went wrong, and exits 1 when any check is broken.
"""
