"""The pinned public API (`gymverl.API` / `gymverl.__all__`) and the README that documents it."""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import gymverl

README = Path(__file__).resolve().parents[1] / "README.md"

# Changing this is changing the public API: update the README (and the CHANGELOG) with it.
PINNED = """
records.iter_checked records.validate_file records.task_key messages.rollout_messages messages.chat_tools
stats.compute_stats stats.pass_at_k convert.ConvertOptions convert.convert select.SelectOptions
rescore.rescore_file verify.VerifyClient reward.compute_score reward.VerifyFailed preview.preview
train.TrainOptions train.train_offline agent_loop.GymverlToolsAgentLoop agent_loop.row_tools
env_loop.GymverlEnvAgentLoop env_loop.EnvEpisodeFailed online.OnlineOptions online.plan_online online.run_online
online.build_online_command cpu_rollout.CPUReplica
verl_data.GymverlSFTDataset verl_data.decode_row
nemo_gym.running_resources_servers tiny.build_tiny_model
errors.GymverlError errors.UsageError errors.RunError errors.Interrupted
""".split()


def test_api_is_pinned():
    assert [f"{m}.{n}" for m, names in gymverl.API.items() for n in names] == PINNED
    assert gymverl.__all__ == ["__version__", "API", *dict.fromkeys(p.split(".")[0] for p in PINNED)]


def test_every_public_name_exists():
    for module, names in gymverl.API.items():
        mod = getattr(gymverl, module)  # lazy: import gymverl, then gymverl.<module>
        assert mod is importlib.import_module(f"gymverl.{module}")
        for name in names:
            assert hasattr(mod, name), f"gymverl.{module}.{name}"
            # a module that declares __all__ must list its public names in it
            if hasattr(mod, "__all__"):
                assert name in mod.__all__, f"gymverl.{module}.__all__ lacks {name}"


def _section(heading: str) -> str:
    """The README text under `heading` up to the next heading of the same or a higher level."""
    text = README.read_text()
    start = text.index(heading + "\n")
    level = heading.split(" ", 1)[0]
    rest = text[start + len(heading) + 1 :]
    end = re.search(rf"^#{{1,{len(level)}}} ", rest, re.M)
    return rest[: end.start()] if end else rest


def _table(section: str) -> list[list[str]]:
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]  # after header + rule


def test_readme_library_table_is_the_api():
    """The README's Library section lists exactly gymverl.API, module by module."""
    table = _table(_section("## Library"))
    documented = {row[0].strip("`").removeprefix("gymverl."): tuple(re.findall(r"`(\w+)`", row[1])) for row in table}
    assert documented == gymverl.API


def test_readme_names_only_public_api():
    """Every `gymverl.<module>.<name>` or `from gymverl.<module> import ...` in the README is public API."""
    text = README.read_text()
    public = {(m, n) for m, names in gymverl.API.items() for n in names}
    named = set(re.findall(r"gymverl\.(\w+)\.(\w+)", text)) - {(m, "py") for m in gymverl.API}
    for module, names in re.findall(r"from gymverl\.(\w+) import ([\w, ]+)", text):
        named |= {(module, n.strip()) for n in names.split(",") if n.strip()}
    assert named <= public, sorted(named - public)


def _help_options(command) -> list[str]:
    """The options `--help` shows for a click command, spelled as the README writes them."""
    shown = []
    for p in command.params:
        if p.param_type_name != "option" or p.hidden or p.name == "help":
            continue
        longs = [o for o in p.opts if o.startswith("--")]
        shorts = [o for o in p.opts if not o.startswith("--")]
        shown.append(longs[0] + "/" + p.secondary_opts[0] if p.secondary_opts else "/".join(longs + shorts))
    return shown


def test_readme_command_reference_matches_help():
    import typer
    from typer.testing import CliRunner

    from gymverl.cli import app

    group = typer.main.get_command(app)
    table = _table(_section("### Command reference"))
    documented = {re.match(r"`([\w-]+)", row[0]).group(1): re.findall(r"`([^`]+)`", row[1]) for row in table}
    commands = list(group.list_commands(None))
    assert list(documented) == ["gymverl", *commands]  # every command, in --help's order
    for name in commands:
        assert documented[name] == _help_options(group.commands[name]), name
    # the global options: what `gymverl --help` prints (typer adds the completion options there)
    out = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}).invoke(app, ["--help"]).output
    shown = re.findall(r"│ (--[\w-]+)(?:\s+(-\w))?", out)
    assert [f"{l}/{s}" if s else l for l, s in shown if l != "--help"] == documented["gymverl"]


def test_unknown_attribute_is_an_attribute_error():
    try:
        gymverl.nope  # noqa: B018
    except AttributeError as exc:
        assert "nope" in str(exc)
    else:
        raise AssertionError("gymverl.nope resolved")


def test_python_dash_m_gymverl_runs_the_cli() -> None:
    """`python -m gymverl` is the `gymverl` command (it said "No module named gymverl.__main__")."""
    r = subprocess.run([sys.executable, "-m", "gymverl", "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"gymverl {gymverl.__version__}", (r.returncode, r.stdout, r.stderr)
    r = subprocess.run([sys.executable, "-m", "gymverl", "validate", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "Usage: python -m gymverl validate" in r.stdout, r.stdout
