"""Subcommands of this area (being written)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this area's subcommands."""


def cmd_home(args: argparse.Namespace) -> int:
    """The home screen."""
    from tui.app import run_app

    return run_app(args)
