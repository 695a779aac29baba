"""The sdtui Textual app: home, wizard and dashboard screens. Never imports the training stack."""

from __future__ import annotations

import errno
import os
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from tui.context import AppContext

STYLES = Path(__file__).parent / "styles"
DARK_TO_LIGHT = {"textual-dark": "textual-light", "ansi-dark": "ansi-light"}
LIGHT_TO_DARK = {v: k for k, v in DARK_TO_LIGHT.items()}


def default_theme(environ: dict[str, str] | None = None) -> str:
    """ANSI colours inside tmux/screen or without truecolor (they follow the terminal's palette), else textual-dark.

    ``SDTUI_THEME`` picks any Textual theme by name.
    """
    env = os.environ if environ is None else environ
    if env.get("SDTUI_THEME"):
        return env["SDTUI_THEME"]
    if env.get("TMUX") or env.get("TERM", "").startswith("screen") or env.get("COLORTERM") not in ("truecolor", "24bit"):
        return "ansi-dark"
    return "textual-dark"


class SdtuiApp(App):
    """The app; ``start`` is ``home``, ``wizard`` or ``dashboard`` (with ``run``)."""

    TITLE = "sdtui"
    SUB_TITLE = "diffusion model fine-tuning"
    CSS_PATH = [STYLES / "app.tcss", STYLES / "home.tcss", STYLES / "wizard.tcss", STYLES / "dashboard.tcss"]
    #: Screen classes for small terminals (80×24 must stay usable): ``-narrow`` below 100 columns, ``-short`` below 32 rows.
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (32, "-tall")]
    BINDINGS = [
        Binding("ctrl+t", "toggle_theme", "Dark/light", show=False),
        Binding("ctrl+q", "quit", "Quit", priority=True, show=False),
    ]

    def __init__(self, context: AppContext, start: str = "home", run: Any = None, theme: str | None = None) -> None:
        super().__init__()
        self.context = context
        self.start = start
        self.start_run = run
        self.theme = theme or default_theme()

    def on_mount(self) -> None:
        from tui.screens.home import HomeScreen

        self.push_screen(HomeScreen())
        if self.start == "wizard":
            self.open_wizard()
        elif self.start == "dashboard":
            self.open_dashboard(self.start_run)

    def open_wizard(self, state: Any = None, index: int = 0, reached: int = 0) -> None:
        """Open the new-run wizard: with ``state`` (a WizardState) at step ``index``, else fresh
        (filled in with the demo when there is one)."""
        from tui.screens.wizard import WizardScreen

        self.push_screen(WizardScreen(state, index=index, reached=reached))

    def open_dashboard(self, run: Any) -> None:
        """Open the live dashboard of a run (a RunDir)."""
        from tui.screens.dashboard import DashboardScreen

        self.push_screen(DashboardScreen(run))

    def action_toggle_theme(self) -> None:
        """Switch between the dark and the light variant of the current theme."""
        name = self.theme
        self.theme = DARK_TO_LIGHT.get(name) or LIGHT_TO_DARK.get(name) or "textual-light"

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        """Textual's commands, the screen's keys, New run and Dark/light: each title once (a key of the
        app, such as ctrl+t Dark/light, is also one of the screen's active keys)."""
        own = (
            SystemCommand("New run", "Open the wizard for a new training run", self.action_new_run),
            SystemCommand("Dark/light", "Switch between the dark and light theme", self.action_toggle_theme),
        )
        seen: set[str] = set()
        for command in (*super().get_system_commands(screen), *screen_commands(screen), *own):
            if command.title not in seen:
                seen.add(command.title)
                yield command

    def action_new_run(self) -> None:
        """New run from anywhere, through home (which offers an unfinished wizard back)."""
        from tui.screens.home import HomeScreen

        home = self.screen_stack[0] if self.screen_stack else None
        if isinstance(home, HomeScreen):
            home.action_new_run()
        else:
            self.open_wizard()


def screen_commands(screen: Screen) -> Iterable[SystemCommand]:
    """Every key of the screen (and of its focused sdtui widgets) as a palette command, named as in the footer."""
    seen: set[str] = set()
    for active in screen.active_bindings.values():
        binding, node = active.binding, active.node
        if not active.enabled or not binding.description or not type(node).__module__.startswith("tui.") or binding.description in seen:
            continue
        seen.add(binding.description)
        shown = screen.app.get_key_display(binding)
        help_text = f"{binding.tooltip or binding.description} (key: {shown})"
        yield SystemCommand(binding.description, help_text, partial(screen.app.run_action, binding.action, node))


def use_half_blocks(environ: Mapping[str, str], is_tty: bool) -> bool:
    """Whether samples are drawn as half-blocks: ``SDTUI_IMAGES=halfcell``, inside tmux/screen, or off a tty."""
    return environ.get("SDTUI_IMAGES") == "halfcell" or bool(environ.get("TMUX")) or environ.get("TERM", "").startswith("screen") or not is_tty


def prepare_images() -> bool:
    """Pick the image protocol before Textual owns the terminal: True for half-blocks, else textual-image,
    imported now."""
    if use_half_blocks(os.environ, sys.__stdout__.isatty()):
        return True
    import textual_image.widget  # noqa: F401  (queries the terminal once, while it still can)

    return False


def run_app(
    runs_dir: Path,
    runs_reason: str = "",
    gpu_spec: str | None = None,
    start: str = "home",
    run: Any = None,
    demo: Any = None,
) -> int:
    """Run the TUI until the user quits; returns the exit code.

    ``runs_dir`` is the runs folder (shown on home with ``runs_reason``, why it is the one),
    ``gpu_spec`` simulated hardware (None probes), ``start`` home, wizard (with the ``demo``
    workspace) or dashboard (of ``run``).
    """
    context = AppContext(
        runs_dir=runs_dir,
        runs_reason=runs_reason,
        gpu_spec=gpu_spec,
        workdir=getattr(demo, "root", None),
        demo=demo,
        half_block_images=prepare_images(),
    )
    watch_terminal()
    SdtuiApp(context, start=start, run=run).run()
    return 0


def terminal_alive(fd: int) -> bool:
    """False once the terminal on ``fd`` has hung up (its tty answers EIO).

    Only EIO means a hang-up: a pty that is not the process's controlling terminal answers
    ENOTTY from the start (benchmarks and test harnesses drive the app that way) and is alive.
    """
    try:
        os.tcgetpgrp(fd)
    except OSError as exc:
        return exc.errno != errno.EIO
    return True


def watch_terminal(interval_s: float = 2.0) -> None:
    """End the process when its terminal goes away without a SIGHUP reaching it (e.g. the SSH
    session or tmux server died under ``make demo``): otherwise Textual's input thread spins on
    the dead tty. Runs are detached, so nothing of a run is lost."""
    stdin = sys.__stdin__
    if stdin is None or not stdin.isatty():
        return
    fd = stdin.fileno()

    def watch() -> None:
        while terminal_alive(fd):
            time.sleep(interval_s)
        os._exit(129)

    threading.Thread(target=watch, name="sdtui-terminal-watch", daemon=True).start()
