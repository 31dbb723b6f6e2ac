"""What the CLI prints: names whole at 80 columns, commands that paste back, data never read as markup."""

from __future__ import annotations

import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console
from typer.testing import CliRunner

from gymverl.cli import app, render_rejections

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample_data" / "rollouts.jsonl"
NARROW = {"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}


def _stats_at_80(path: Path) -> str:
    return CliRunner(env=NARROW).invoke(app, ["stats", str(path)]).output


@pytest.mark.parametrize("columns", [60, 66, 72, 76, 80, 100])
def test_stats_group_names_are_not_broken_mid_word_at_80_columns(columns):
    """The group columns of `stats` are headed by agent names; at 80 columns they used to be folded
    mid-word (`math_with_judge_s` / `imple_agent`). Now they break only after their own separators,
    at any width: at 76 the room was reckoned 2 columns too wide (`math_with_judge` / `_`)."""
    from gymverl.cli.render import render_stats
    from gymverl.stats import compute_stats

    # An explicit width: the CLI's consoles read COLUMNS when first made, so an env per invoke would
    # depend on which test made them (at 80 columns the command itself runs below).
    buf = io.StringIO()
    render_stats(compute_stats(SAMPLE).to_dict(), out=Console(file=buf, width=columns, force_terminal=False))
    out = buf.getvalue() if columns != 80 else _stats_at_80(SAMPLE)
    assert max(len(line) for line in out.splitlines()[1:]) <= columns  # (the title holds the checkout's path)
    header = [line.split("┃")[1:-1] for line in out.split("┡")[0].splitlines() if line.startswith("┃")]
    for col, name in ((2, "math_with_judge_simple_agent"), (3, "xlam_fc_simple_agent")):
        lines = [cells[col].strip() for cells in header if cells[col].strip()]
        assert "".join(lines) == name, lines
        assert all(line.endswith("_") for line in lines[:-1]), lines  # broken after a separator only


def test_wrapped_group_names_break_only_after_separators():
    from gymverl.cli.render import _wrap_name

    assert _wrap_name("math_with_judge_simple_agent", 16).split("\n") == ["math_with_judge_", "simple_agent"]
    assert _wrap_name("short", 3) == "short"  # one piece wider than the room stays whole
    assert "".join(_wrap_name("a/b-c.d_e", 2).split("\n")) == "a/b-c.d_e"


def test_per_task_names_stay_whole_at_80_columns(tmp_path):
    """Task names get the width the number columns do not need: a 28-character name (with its "#N") fits at 80 columns."""
    import json

    name = "resources_server_long_name"
    lines = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    for row in lines:
        row["agent_ref"] = {"type": "responses_api_agents", "name": name}
    p = tmp_path / "r.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = _stats_at_80(p)
    assert re.search(rf"{name}#\d", out), out


def test_rejection_reasons_are_text_not_markup():
    """A reason quoting the input (`[bold]...`) was read as rich markup and lost its brackets."""
    buf = io.StringIO()
    render_rejections([{"line": 3, "reason": "field [bold]x[/bold] is not a string"}], 1, {}, out=Console(file=buf, width=120))
    assert "[bold]x[/bold]" in buf.getvalue()


def test_train_offline_plan_prints_a_command_that_pastes_back(tmp_path, model_dir):
    """The printed VeRL command is shell text: an override with brackets (a Hydra list) used to be
    swallowed as rich markup (`trainer.logger=` with the value gone), and a long command must stay one line."""
    data = tmp_path / "sft.parquet"
    msgs = [[{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}] for i in range(16)]
    pq.write_table(pa.table({"messages": msgs}), data)
    override = "trainer.logger=[console,file]"
    res = CliRunner(env=NARROW).invoke(
        app, ["train-offline", str(data), "-m", str(model_dir), "-o", str(tmp_path / "r"), "--batch-size", "8", "--dry-run", "--", override]
    )
    assert res.exit_code == 0, res.output
    (command,) = [line for line in res.output.splitlines() if "torchrun" in line]
    assert override in shlex.split(command)


def test_python_dash_m_runs_the_package():
    r = subprocess.run([sys.executable, "-m", "gymverl.cli", "--version"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.startswith("gymverl "), r


def test_error_sentences_keep_their_brackets(monkeypatch, tmp_path):
    """Error sentences are text: `pip install 'gymverl[plot]'` lost its `[plot]` (read as a rich
    style), and so did a bracketed option value echoed back."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # fault injection: matplotlib not installed
    res = CliRunner(env=NARROW).invoke(app, ["stats", str(SAMPLE), "--plot", str(tmp_path / "p.png")])
    assert res.exit_code == 2 and "pip install 'gymverl[plot]'" in res.output, res.output
    res = CliRunner(env=NARROW).invoke(app, ["to-parquet", str(SAMPLE), "--dry-run", "--format", "[red]x"])
    assert res.exit_code == 2 and "not '[red]x'" in res.output, res.output


def test_to_parquet_leaves_option_checks_to_the_library(tmp_path):
    """--max-tokens without --tokenizer: the library's one sentence and exit 2 (the CLI used to
    repeat the same check, word for word)."""
    res = CliRunner(env=NARROW).invoke(app, ["to-parquet", str(SAMPLE), "--dry-run", "--max-tokens", "10"])
    assert res.exit_code == 2, res.output
    assert res.output.count("--max-tokens needs --tokenizer (a local Hugging Face tokenizer directory).") == 1


def test_no_progress_residue_when_stderr_is_not_a_terminal(tmp_path):
    """A log file (stderr not a terminal) gets no progress bar and no blank line from one (to-parquet
    left an empty line on stderr; stats and rescore already drew bars on terminals only)."""
    r = subprocess.run(
        # (--min-reward: the one warning a plain sft run prints, failed answers kept, would be stderr too)
        [sys.executable, "-m", "gymverl.cli", "to-parquet", str(SAMPLE), "--dry-run", "--format", "sft", "--min-reward", "1"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", repr(r.stderr)


def test_demo_same_as_commands_stay_on_one_line_at_80_columns():
    """The demo prints the command each step equals ("same as: gymverl ..."): wrapped at 80 columns
    it could not be pasted back; now it is one line that shlex reads back to the same words."""
    from gymverl.cli.render import DemoReporter

    buf = io.StringIO()
    words = ["gymverl", "to-parquet", "gymverl-demo-out/rollouts.rescored.jsonl", "--format", "rl", "-o", "out dir/rl", "--val-fraction", "0.2"]
    DemoReporter(Console(file=buf, width=80)).info("same as: " + shlex.join(words))
    (line,) = buf.getvalue().splitlines()
    assert shlex.split(line.strip().removeprefix("same as: ")) == words


@pytest.mark.parametrize("verbose", [False, True])
def test_steps_view_drives_one_bar_from_verls_events(verbose):
    """train-offline and train-online share one step view: the step count and its note on the bar,
    a line per validation, the total when VeRL says it, stage names, VeRL's other lines with --verbose only."""
    from gymverl.cli.progress import steps_view
    from gymverl.runner import Event

    buf = io.StringIO()
    progress, on_event = steps_view(
        Console(file=buf, width=120), note=("train/loss", "loss {:.4f}"), val=lambda m: f"validation loss {m['val/loss']:.4f}",
        stages={"export": "exporting"}, verbose=verbose,
    )
    task = progress.tasks[0]
    assert task.total is None and task.description == "starting VeRL"
    on_event(Event("line", line="[verl] loading [weights]"))
    on_event(Event("total", total=4))
    on_event(Event("step", step=1, metrics={"train/loss": 1.25}))
    assert (task.completed, task.total, task.description, task.fields["note"]) == (1, 4, "training", "loss 1.2500")
    on_event(Event("step", step=2, metrics={}))
    assert task.completed == 2 and task.fields["note"] == ""
    on_event(Event("val", step=2, metrics={"val/loss": 0.5}))
    on_event(Event("export"))
    assert task.description == "exporting"
    lines = buf.getvalue().splitlines()
    assert "step 2: validation loss 0.5000" in lines
    assert ("[verl] loading [weights]" in lines) is verbose  # echoed as text, brackets kept


def test_run_steps_turns_verls_outcome_into_exit_codes(capsys):
    """The one place both train commands turn a VeRL run into an outcome: its result when it
    finished, its one sentence (RunError, exit 1) when not, exit 130 and what stopped on Ctrl-C."""
    import typer

    from gymverl.cli.progress import run_steps, steps_view
    from gymverl.errors import RunError
    from gymverl.runner import TrainResult

    def view():
        return steps_view(Console(file=io.StringIO()), note=("k", "{}"), val=str)[0]

    ok = TrainResult(returncode=0, steps=3)
    assert run_steps(view(), lambda: ok, lambda: "unused") is ok
    failed = TrainResult(returncode=1, cause="ValueError: boom", log=Path("/o/train.log"))
    with pytest.raises(RunError, match=r"^VeRL exited with code 1: ValueError: boom; full log: /o/train.log\.$"):
        run_steps(view(), lambda: failed, lambda: "unused")

    # What stopped is read when the interrupt comes, not before the run: the run saved a checkpoint
    # meanwhile (the CPU interrupt test caught "no checkpoint was saved yet" printed after one was).
    saved = []

    def interrupted():
        saved.append("global_step_1")
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as exit_:
        run_steps(view(), interrupted, lambda: "VeRL stopped; resume with --resume [x]" if saved else "no checkpoint")
    assert exit_.value.exit_code == 130
    assert "interrupted: VeRL stopped; resume with --resume [x]." in " ".join(capsys.readouterr().err.split())


LONG_NAME = "resources_server_long_name"


def _long_named(path: Path) -> Path:
    """The sample rollouts with agent (task) names of 26 characters, in a file whose path is wider than 80."""
    import json

    rows = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        row["agent_ref"] = {"type": "responses_api_agents", "name": LONG_NAME}
        row["response"]["id"] = f"resp_{i}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _title_path_whole(out: str, head: str, path: Path) -> None:
    """The title starting with `head` holds `path`, broken over lines only after separators."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(head))
    end = next(i for i in range(start, len(lines)) if lines[i][:1] in "┏┌")
    title = [line.strip() for line in lines[start:end]]
    flat, breaks = "", []
    for line in title:
        flat += line
        breaks.append(len(flat))
    at = flat.find(str(path))
    assert at >= 0, title
    inside = [b for b in breaks if at < b < at + len(str(path))]
    assert all(flat[b - 1] in "_/-.:#" for b in inside), title  # the path breaks after separators only


def test_stats_title_and_comparison_keep_paths_and_names_whole_at_80_columns(tmp_path):
    """`stats: PATH (correct = ...)` was wrapped at the summary table's own width (~40 columns), the
    path folded mid-word; --against's per-task changes folded task names (`resources_server_lon` / `g_name#0`)."""
    path = _long_named(tmp_path / ("a_long_directory_name_" * 3) / "rollouts_of_the_math_with_judge_run.jsonl")
    before = path.with_name("before.jsonl")
    before.write_text(path.read_text().replace('"reward": 1.0', '"reward": 0.0'))
    out = CliRunner(env=NARROW).invoke(app, ["stats", str(path), "--against", str(before)]).output
    assert max(len(line) for line in out.splitlines()) <= 80
    _title_path_whole(out, "stats:", path)
    changes = out.split("largest per-task changes", 1)[1]
    assert re.search(rf"│ {LONG_NAME}#\d", changes), changes


def test_rescore_per_task_names_stay_whole_at_80_columns(tmp_path):
    """rescore's per-task table wrapped its headers and folded the task names (`resources_server_l` /
    `ong_name#0`) at 80 columns; its title (IN -> OUT) folded the input path."""
    sys.path.insert(0, str(ROOT / "tests"))
    from fake_verify_server import FakeServer

    path = _long_named(tmp_path / ("a_long_directory_name_" * 3) / "rollouts.jsonl")
    with FakeServer() as srv:
        res = CliRunner(env=NARROW).invoke(app, ["rescore", str(path), "-o", str(tmp_path / "out.jsonl"), "-s", srv.url])
    assert res.exit_code == 0, res.output
    out = res.output
    per_task = out.split("per task", 1)[1].split("└", 1)[0]
    assert max(len(line) for line in per_task.splitlines()) <= 80
    assert len(re.findall(rf"│ {LONG_NAME}#\d", per_task)) == 5, per_task
    _title_path_whole(out, "rescore:", path)


def test_titles_are_text_not_markup():
    """A path in a title (`[x]` in a directory name) was read as rich markup and lost its brackets."""
    from gymverl.cli.render import render_validation

    buf = io.StringIO()
    summary = {"path": "/data/[bold]run[/bold]/r.jsonl", "lines": 0, "valid": 0, "rejected": 0, "tasks": 0,
               "rollouts_per_task": {}, "reward": {"mean": None}, "incomplete": 0}
    render_validation(summary, out=Console(file=buf, width=120))
    assert "validate: /data/[bold]run[/bold]/r.jsonl" in buf.getvalue()


def test_demo_status_lines_wrap_under_themselves():
    """A demo step's status line longer than the terminal went on at column 0 ("(ready before
    rescoring)" under the step's rule); now every wrapped line keeps the 2-space indent, and no
    line carries trailing spaces."""
    from types import SimpleNamespace

    from gymverl.cli.render.training import DemoReporter

    buf = io.StringIO()
    reporter = DemoReporter(out=Console(file=buf, width=80, force_terminal=False))
    summary = "starting math_with_judge, xlam_fc via ng_run in the background (ready before rescoring) [not markup]"
    reporter.done(SimpleNamespace(status="ok", seconds=0.2, summary=summary, outputs=[]))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 2 and all(line.startswith("  ") and line == line.rstrip() and len(line) <= 80 for line in lines), lines
    assert " ".join(line.strip() for line in lines) == f"✓ ok (0.2 s) {summary}"
    # so do its progress lines and warnings (they ran past 80 columns); commands to paste stay whole
    buf.truncate(0), buf.seek(0)
    reporter.info("servers ready after 21 s: math_with_judge http://127.0.0.1:12329, xlam_fc http://127.0.0.1:11719")
    reporter.info("same as: gymverl rescore sample_data/rollouts.jsonl -o demo/rescored.jsonl --failures demo/rescore-failures.jsonl")
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and all(line.startswith("  ") and line == line.rstrip() for line in lines), lines
    assert len(lines[0]) <= 80 and len(lines[1]) <= 80 and len(lines[2]) > 80 and lines[2].startswith("  same as: gymverl rescore")


LONG_DIR = "a_rather_long_directory_name_for_testing/another_long_segment_here"


def _path_lines(out: str, path: str) -> list[str]:
    """The pieces of `path` as `out` shows it over several lines (a table row: its last cell)."""
    cells = [(line.split("│")[-2] if line.count("│") > 1 else line).strip() for line in out.splitlines()]
    m = re.search("\n?".join(map(re.escape, path)), "\n".join(cells))
    assert m is not None, f"{path} not found whole in:\n{out}"
    return m.group().split("\n")


@pytest.mark.parametrize("columns", [50, 80])
def test_paths_break_only_after_their_separators(tmp_path: Path, columns: int) -> None:
    """The output file under a table (`train: .../train.parqu` / `et`) and a path in a note cell
    (`from .../tasks_fi` / `le.jsonl`) were folded wherever the line ended; they now break only
    after their own separators, between directories first."""
    from gymverl.cli.render import Breakable
    from gymverl.cli.render.tables import _facts  # (the collection and to-parquet tables are such tables)

    deep = tmp_path / LONG_DIR
    out_file, note_path = str(deep / "out_dir_long_name" / "train.parquet"), str(deep / "materialized_inputs_of_the_run.jsonl")
    buf = io.StringIO()
    console = Console(file=buf, width=columns, force_terminal=False)
    t = _facts("t", notes=True)
    t.add_row("expected rollouts", "8", f"2 tasks, from {note_path}")
    console.print(t)
    console.print(Breakable(f"train: [bold]{out_file}[/]"))  # as `render_to_parquet` prints it
    out = buf.getvalue()
    assert max(len(line) for line in out.splitlines()) <= columns, out
    for path in (out_file, note_path):
        lines = _path_lines(out, path)
        assert len(lines) > 1 and all(line[-1] in "/_-.:#" for line in lines[:-1]), lines
