"""Which runs folder a command uses: --runs-dir (before or after the subcommand), $SDTUI_RUNS_DIR,
the demo's own, the one last launched into from this working folder, ./runs; and where it says so."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cli.main import build_parser, main
from core.runs import folder as runs_folder
from core.runs.folder import DEFAULTED, ENVIRONMENT, OPTION, OWN, REMEMBERED, remember, resolve
from tests.tui_fixtures import make_run


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder (the working folder) with the demo's runs in demo/runs."""
    folder = tmp_path / "project"
    (folder / "demo" / "runs").mkdir(parents=True)
    monkeypatch.chdir(folder)
    return folder


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# ---- the rule -------------------------------------------------------------------------------------


def test_order_option_environment_own_remembered_default(project: Path) -> None:
    demo_runs = project / "demo" / "runs"
    assert resolve(None, project, {}) == runs_folder.RunsFolder(project / "runs", DEFAULTED)
    remember(demo_runs, project)
    assert resolve(None, project, {}) == runs_folder.RunsFolder(demo_runs, REMEMBERED)
    assert resolve(None, project, {}, own="elsewhere").path == project / "elsewhere"
    assert resolve(None, project, {}, own="elsewhere").source == OWN
    assert resolve(None, project, {"SDTUI_RUNS_DIR": "/srv/runs"}, own="x") == runs_folder.RunsFolder(Path("/srv/runs"), ENVIRONMENT)
    assert resolve("mine", project, {"SDTUI_RUNS_DIR": "/srv/runs"}) == runs_folder.RunsFolder(project / "mine", OPTION)


def test_remembered_per_working_folder_and_forgotten_when_gone(project: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    remember(project / "demo" / "runs", project)
    assert resolve(None, other, {}).source == DEFAULTED
    remember(other / "runs-b", other)
    assert resolve(None, other, {}).source == DEFAULTED, "a runs folder that does not exist is not used"
    (other / "runs-b").mkdir()
    assert resolve(None, other, {}).path == other / "runs-b"
    assert resolve(None, project, {}).path == project / "demo" / "runs"
    (project / "demo" / "runs").rmdir()
    assert resolve(None, project, {}).source == DEFAULTED


def test_only_the_newest_working_folders_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runs_folder, "KEEP", 3)
    for i in range(5):
        (tmp_path / f"w{i}" / "runs").mkdir(parents=True)
        remember(tmp_path / f"w{i}" / "runs", tmp_path / f"w{i}")
    remember(tmp_path / "w2" / "runs", tmp_path / "w2")
    kept = json.loads(runs_folder.memory_file().read_text())["folders"]
    assert list(kept) == [str(tmp_path / f"w{i}") for i in (3, 4, 2)]


@pytest.mark.parametrize("content", [b"", b"\x00\xff", b"[]", b'{"folders": 3}', b'{"folders": {"a": 1}}'])
def test_a_broken_memory_file_means_the_default_and_is_replaced(project: Path, content: bytes) -> None:
    runs_folder.memory_file().parent.mkdir(parents=True)
    runs_folder.memory_file().write_bytes(content)
    assert resolve(None, project, {}).source == DEFAULTED
    remember(project / "demo" / "runs", project)
    assert resolve(None, project, {}).source == REMEMBERED


def test_memory_lives_in_the_users_state_folder(user_dirs: Path) -> None:
    assert runs_folder.memory_file() == user_dirs / "state" / "sdtui" / "runs-folders.json"


# ---- the command line -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv",
    [
        ["--runs-dir", "D", "--gpus", "2x4090", "attach", "r1"],
        ["attach", "r1", "--runs-dir", "D", "--gpus", "2x4090"],
        ["--gpus", "2x4090", "attach", "--runs-dir", "D", "r1"],
        ["--runs-dir", "X", "attach", "r1", "--runs-dir", "D", "--gpus", "2x4090"],
    ],
)
def test_global_options_before_or_after_the_subcommand(argv: list[str]) -> None:
    args = build_parser().parse_args(argv)
    assert (args.command, args.run, args.runs_dir, args.gpus) == ("attach", "r1", "D", "2x4090")


def test_every_subcommand_takes_the_global_options() -> None:
    parser = build_parser()
    for command in ("gpus", "recipes", "runs", "demo", "plan", "scan", "status", "logs", "stop", "save", "sample", "pause", "resume", "attach", "train", "export-kohya"):
        positionals = {
            "scan": ["d"],
            "status": ["r"],
            "logs": ["r"],
            "stop": ["r"],
            "save": ["r"],
            "sample": ["r"],
            "pause": ["r"],
            "resume": ["r"],
            "attach": ["r"],
            "train": ["c.toml"],
            "export-kohya": ["c.toml", "d"],
        }
        args = parser.parse_args([command, *positionals.get(command, []), "--runs-dir", "D", "--gpus", "1x24GB"])
        assert (args.runs_dir, args.gpus) == ("D", "1x24GB"), command
    assert (parser.parse_args(["runs"]).runs_dir, parser.parse_args(["runs"]).gpus) == (None, "auto")


def test_attach_with_runs_dir_after_the_run_is_understood(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "attach", "nope", "--runs-dir", str(tmp_path))
    assert code == 2 and "there is no run 'nope'" in err and "unrecognized" not in err


def test_runs_lists_the_demo_runs_from_the_project_folder(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    demo_runs = project / "demo" / "runs"
    make_run(demo_runs, "shapes-lora-20251009-090000", "finished")
    code, out, _ = run(capsys, "runs")
    assert code == 0 and out.splitlines() == [f"no runs in {project / 'runs'} (the default); start one with: sdtui train CONFIG.toml"]
    remember(demo_runs, project)
    code, out, _ = run(capsys, "runs")
    lines = out.splitlines()
    assert lines[0] == f"runs in {demo_runs} (last used from this folder)"
    assert lines[2].startswith("shapes-lora-20251009-090000") and "finished" in lines[2]
    assert [r["id"] for r in json.loads(run(capsys, "runs", "--json")[1])] == ["shapes-lora-20251009-090000"]
    code, out, _ = run(capsys, "status", "shapes-lora-20251009-090000")
    assert code == 0 and "state     finished" in out
    code, out, _ = run(capsys, "runs", "--runs-dir", str(project / "empty"))
    assert out.startswith(f"no runs in {project / 'empty'} (from --runs-dir)")


def test_the_environment_and_the_option_override_the_remembered_folder(project: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    remember(project / "demo" / "runs", project)
    monkeypatch.setenv("SDTUI_RUNS_DIR", str(project / "from-env"))
    assert run(capsys, "runs")[1].startswith(f"no runs in {project / 'from-env'} (from $SDTUI_RUNS_DIR)")
    assert run(capsys, "runs", "--runs-dir", "opt")[1].startswith(f"no runs in {project / 'opt'} (from --runs-dir)")


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What run_app (the TUI) was asked to open, instead of opening it."""
    calls: list[dict[str, Any]] = []

    def fake(runs_dir: Path, runs_reason: str = "", gpu_spec: str | None = None, **kw: Any) -> int:
        calls.append({"runs_dir": runs_dir, "reason": runs_reason, "gpus": gpu_spec, **kw})
        return 0

    monkeypatch.setattr("tui.app.run_app", fake)
    return calls


def test_home_and_attach_open_the_remembered_folder(project: Path, opened: list[dict[str, Any]]) -> None:
    demo_runs = project / "demo" / "runs"
    run_dir = make_run(demo_runs, "shapes-lora-20251009-090000", "finished")
    remember(demo_runs, project)
    assert main([]) == 0 and main(["--gpus", "1x24GB"]) == 0
    assert main(["attach", "shapes-lora-20251009-090000"]) == 0
    assert [(c["runs_dir"], c["reason"], c["gpus"]) for c in opened] == [
        (demo_runs, "last used from this folder", None),
        (demo_runs, "last used from this folder", "1x24GB"),
        (demo_runs, "last used from this folder", None),
    ]
    assert opened[2]["start"] == "dashboard" and opened[2]["run"].path == run_dir


def test_demo_uses_its_own_runs_folder_unless_told_otherwise(project: Path, opened: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch) -> None:
    from core import demo

    monkeypatch.setattr(demo, "prepare_demo", lambda workdir, overrides, family: demo.workspace(workdir, family))
    assert main(["demo"]) == 0
    assert main(["demo", "--workdir", "d2", "--runs-dir", "elsewhere"]) == 0
    assert [(c["runs_dir"], c["reason"], c["start"]) for c in opened] == [
        (project / "demo" / "runs", "the demo's", "wizard"),
        (project / "elsewhere", "from --runs-dir", "wizard"),
    ]


@pytest.mark.slow
def test_a_launch_is_remembered_for_its_working_folder(project: Path, tiny_models, kohya_dataset, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from core.launch import start
    from tests.test_launch_support import write_config

    monkeypatch.setattr(start, "spawn_supervisor", lambda run, held: 0)
    config = write_config(project, tiny_models("sd1"), kohya_dataset(((2, "sks dog", 2),)))
    code, out, _ = run(capsys, "train", str(config), "--runs-dir", "demo/runs")
    assert code == 0
    run_id = out.strip()
    assert (project / "demo" / "runs" / run_id / "run.toml").is_file()
    lines = run(capsys, "runs")[1].splitlines()
    assert lines[0] == f"runs in {project / 'demo' / 'runs'} (last used from this folder)" and lines[2].startswith(run_id)
