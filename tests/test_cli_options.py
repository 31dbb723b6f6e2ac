"""One spelling per concept across commands, old spellings as hidden aliases, defaults from the
library, help that reads in panels (issue 13: "Options disagree" and "help")."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from gymverl import limits
from gymverl.cli import OPTION_ALIASES, app
from gymverl.train import TrainOptions

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
GROUP = typer.main.get_command(app)

ROLLOUT = {
    "responses_create_params": {"input": [{"role": "user", "content": "2+2?"}]},
    "response": {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]}]},
    "reward": 1.0,
}


def _options(command: str) -> dict[str, object]:
    """{every option name (visible or hidden): its click parameter} of one command."""
    cmd = GROUP.commands[command]
    return {name: p for p in cmd.params if p.param_type_name == "option" for name in (*p.opts, *p.secondary_opts)}


def test_outputs_are_spelled_output_everywhere():
    for name, cmd in GROUP.commands.items():
        names = _options(name)
        assert "--out" not in names, f"{name} still declares --out"
        if any("output" in (p.name or "") or p.name == "out" for p in cmd.params if p.param_type_name == "option"):
            assert "--output" in names and "-o" in names, name


@pytest.mark.parametrize("command", ["train-offline", "demo"])
def test_old_out_spelling_still_parses_and_is_hidden(command):
    assert OPTION_ALIASES["--out"] == "--output"
    cmd = GROUP.commands[command]
    ctx = cmd.make_context(command, ["--out", "/tmp/x"], resilient_parsing=True)
    assert str(ctx.params["out"]) == "/tmp/x"
    ctx = cmd.make_context(command, ["--out=/tmp/y"], resilient_parsing=True)
    assert str(ctx.params["out"]) == "/tmp/y"
    assert "--out " not in runner.invoke(app, [command, "--help"]).output


def test_train_offline_without_output_names_the_option(tmp_path):
    res = runner.invoke(app, ["train-offline", str(tmp_path / "d.parquet"), "-m", "x/y"])
    assert res.exit_code == 2 and "--output/-o is required" in " ".join(res.stderr.split())


def test_validate_input_kind_and_old_tasks_switch(tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text(json.dumps({"responses_create_params": ROLLOUT["responses_create_params"]}) + "\n")
    for args in (["--input-kind", "tasks"], ["--tasks"]):
        res = runner.invoke(app, ["validate", str(tasks), *args, "--json"])
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["valid"] == 1
    # read as rollouts, a task line (no response) is rejected: the option is what decides
    assert runner.invoke(app, ["validate", str(tasks)]).exit_code == 1
    res = runner.invoke(app, ["validate", str(tasks), "--input-kind", "rollout"])
    assert res.exit_code == 2 and "--input-kind must be rollouts or tasks" in res.stderr
    assert "--tasks" not in runner.invoke(app, ["validate", "--help"]).output


def test_file_valued_tasks_option_means_a_file_everywhere():
    for name in ("stats", "rescore", "to-parquet"):
        assert not getattr(_options(name)["--tasks"], "is_flag", False), name
    assert _options("validate")["--tasks"].hidden


def _default(command: str, option: str):
    return _options(command)[option].default


def test_defaults_come_from_the_library():
    assert _default("rescore", "--concurrency") == limits.DEFAULT_CONCURRENCY
    assert _default("rescore", "--timeout") == limits.DEFAULT_TIMEOUT
    assert _default("rescore", "--retries") == limits.DEFAULT_RETRIES
    assert _default("collect", "--head-url") == limits.DEFAULT_HEAD_URL
    train = {f.name: f.default for f in dataclasses.fields(TrainOptions)}
    cmd = GROUP.commands["train-offline"]
    for p in cmd.params:
        if p.param_type_name == "option" and p.name in train and train[p.name] is not dataclasses.MISSING:
            assert p.default == train[p.name], p.name


def test_boolean_flags_show_no_value_in_help():
    for command in [None, *GROUP.commands]:
        out = runner.invoke(app, [command, "--help"] if command else ["--help"]).output
        assert "<bool>" not in out, command


def test_to_parquet_help_is_grouped_in_panels():
    out = runner.invoke(app, ["to-parquet", "--help"]).output
    panels = [line.split("─ ", 1)[1].split(" ─", 1)[0] for line in out.splitlines() if line.startswith("╭─ ")]
    assert panels == ["Arguments", "Options", "Input", "Rows", "Selection", "Split", "Output", "Performance"]
    cmd = GROUP.commands["to-parquet"]
    assert all(p.rich_help_panel for p in cmd.params if p.param_type_name == "option")


def test_shell_completion_is_on():
    out = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in out and "--show-completion" in out


def test_quiet_prints_no_tables_but_keeps_json_and_errors(tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps(ROLLOUT) + "\n")
    loud = runner.invoke(app, ["validate", str(data)])
    assert loud.exit_code == 0 and "valid" in loud.stdout
    quiet = runner.invoke(app, ["--quiet", "validate", str(data)])
    assert quiet.exit_code == 0 and quiet.stdout.strip() == ""
    res = runner.invoke(app, ["-q", "validate", str(data), "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["valid"] == 1
    res = runner.invoke(app, ["-q", "validate", str(tmp_path / "missing.jsonl")])
    assert res.exit_code == 2 and "error" in res.stderr


def test_each_shared_concept_has_one_spelling_in_every_command():
    """An option named like one of `cli.options.SPELLINGS` has all of that concept's names, in every command."""
    from gymverl.cli.options import SPELLINGS

    for concept, names in SPELLINGS.items():
        declared = set(names[0].split("/")) | set(names[1:])
        for command in GROUP.commands:
            for p in GROUP.commands[command].params:
                opts = {*p.opts, *p.secondary_opts}
                if p.param_type_name == "option" and not p.hidden and opts & declared:
                    assert opts == declared, (command, concept, sorted(opts))


def test_every_cli_default_is_the_librarys() -> None:
    """A command's option default equals the library default of the same name (the dataclass
    field or function parameter the command fills), so `gymverl X` and the library do the same
    thing when an option is left out; a changed library default cannot leave the CLI behind."""
    import dataclasses
    import inspect

    import typer

    import gymverl.collect as collect_mod
    import gymverl.convert as convert_mod
    import gymverl.online as online_mod
    import gymverl.records as records_mod
    import gymverl.rescore as rescore_mod
    import gymverl.select as select_mod
    import gymverl.stats as stats_mod
    import gymverl.train as train_mod
    from gymverl.cli import app

    def library_defaults(*sources: Any) -> dict[str, Any]:
        found: dict[str, Any] = {}
        for src in sources:
            if dataclasses.is_dataclass(src):
                found.update({f.name: f.default for f in dataclasses.fields(src) if f.default is not dataclasses.MISSING and f.name not in found})
            else:
                found.update({p.name: p.default for p in inspect.signature(src).parameters.values()
                              if p.default is not inspect.Parameter.empty and p.name not in found})
        return found

    sources = {
        "to-parquet": (convert_mod.ConvertOptions, select_mod.SelectOptions),
        "train-offline": (train_mod.TrainOptions,),
        "train-online": (online_mod.OnlineOptions,),
        "rescore": (rescore_mod.rescore_file,),
        "collect": (collect_mod.collect,),
        "stats": (stats_mod.compute_stats,),
        "validate": (records_mod.validate_file,),
    }
    from gymverl import limits

    # rescore_file's None means "the /verify client's default" (gymverl.limits), which the CLI shows.
    resolved = {("rescore", "concurrency"): limits.DEFAULT_CONCURRENCY, ("rescore", "timeout"): limits.DEFAULT_TIMEOUT,
                ("rescore", "retries"): limits.DEFAULT_RETRIES}
    commands = typer.main.get_command(app).commands  # type: ignore[attr-defined]
    checked, differ = 0, []
    for name, srcs in sources.items():
        lib = library_defaults(*srcs)
        for p in commands[name].params:
            if p.name in lib:
                checked += 1
                want = resolved.get((name, p.name), lib[p.name])
                if p.default != want and not (p.default is None and want == ()):  # no repeatable option given
                    differ.append(f"{name} {p.name}: CLI {p.default!r}, library {lib[p.name]!r}")
    assert not differ, differ
    assert checked >= 70  # the mapping above still reaches the commands' options


def test_quiet_and_verbose_together_are_a_usage_error(tmp_path):
    """-q and -v contradict each other: one sentence, exit 2, before the command reads anything."""
    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps(ROLLOUT) + "\n")
    for args in (["-q", "-v", "validate", str(data)], ["--quiet", "--verbose", "stats", str(data)]):
        res = runner.invoke(app, args)
        assert res.exit_code == 2, res.output
        assert "--quiet and --verbose contradict each other" in res.stderr and res.stdout == ""
    # the train commands' old -v (after the command name) is the same switch
    res = runner.invoke(app, ["-q", "train-offline", str(tmp_path / "d.parquet"), "-m", "x/y", "-o", str(tmp_path / "o"), "-v"])
    assert res.exit_code == 2 and "--quiet and --verbose" in res.stderr, res.output


def test_verbose_is_global_and_the_train_commands_old_flag_is_hidden():
    out = runner.invoke(app, ["--help"]).output
    assert "--verbose" in out and "-v" in out
    for command in ("train-offline", "train-online"):
        assert "--verbose" not in runner.invoke(app, [command, "--help"]).output, command
        cmd = GROUP.commands[command]
        ctx = cmd.make_context(command, ["d.parquet", "-v"], resilient_parsing=True)
        assert ctx.params["verbose"] is True  # old spelling still parses


def test_verbose_prints_rejection_codes_and_every_shard(tmp_path):
    """--verbose cuts no list short: rejected lines show their code, to-parquet names every shard."""
    data = tmp_path / "r.jsonl"
    data.write_text(json.dumps(ROLLOUT) + "\n" + "not json\n")
    plain = runner.invoke(app, ["validate", str(data)])
    loud = runner.invoke(app, ["-v", "validate", str(data)])
    assert plain.exit_code == loud.exit_code == 1
    assert "invalid_json" in loud.stdout.split("rejected lines", 1)[1].split("rejected by reason")[0]
    assert "invalid_json" not in plain.stdout.split("rejected lines", 1)[1].split("rejected by reason")[0]
    rows = tmp_path / "many.jsonl"
    rows.write_text("".join(json.dumps({**ROLLOUT, "responses_create_params": {"input": [{"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(3)))
    for flags, shown in (([], 1), (["-v"], 3)):
        res = runner.invoke(app, [*flags, "to-parquet", str(rows), "-o", str(tmp_path / f"pq{len(flags)}"), "--shard-size", "1"])
        assert res.exit_code == 0, res.output
        assert len([line for line in res.stdout.splitlines() if line.startswith("train: ")]) == shown, res.stdout


def test_verbose_prints_the_per_task_table_past_show_tasks(tmp_path):
    data = tmp_path / "r.jsonl"
    data.write_text("".join(json.dumps({**ROLLOUT, "responses_create_params": {"input": [{"role": "user", "content": f"q{i}"}]}}) + "\n" for i in range(3)))
    titles = [[line.strip() for line in runner.invoke(app, [*flags, "stats", str(data), "--show-tasks", "1"]).stdout.splitlines()]
              for flags in ([], ["-v"])]
    assert "per task" not in titles[0] and "per task" in titles[1]


NARROW = CliRunner(env={"COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})


def _help_at_80(command: str | None) -> str:
    res = NARROW.invoke(app, [command, "--help"] if command else ["--help"])
    assert res.exit_code == 0, res.output
    return res.output


def test_help_at_80_columns_cuts_nothing_and_lists_each_command_on_one_line():
    """At 80 columns option help was cut with an ellipsis (rescore's --server, --tasks, --side-files
    squeezed into 19 columns; to-parquet's `<stem>_materialized_inputs.jso…`), and the command list
    wrapped most descriptions over two lines."""
    for command in [None, *GROUP.commands]:
        out = _help_at_80(command)
        assert max(len(line) for line in out.splitlines()) <= 80, command
        cut = [line for line in out.splitlines() if re.search(r"…\s*│$", line)]
        assert not cut, (command, cut)
    panel = _help_at_80(None).split("Commands")[1]
    rows = [line.strip("│ ").split()[0] for line in panel.splitlines()[1:] if line.startswith("│")]
    assert rows == list(GROUP.list_commands(None)), rows  # one line per command: no continuation rows


def test_command_help_reflows_at_the_terminal_width():
    """Docstrings hard-wrapped at ~100 characters kept their line breaks in --help, which broke
    sentences mid-line at 80 columns (stats: `... (n rollouts, c` / `correct),`)."""
    from gymverl.cli.core import reflow

    assert reflow("one\n    two\n\n  three\n  four") == "one two\n\nthree four"
    assert reflow("\b\nkeep\nthese lines") == "\b\nkeep\nthese lines"
    for name, cmd in GROUP.commands.items():
        for paragraph in (cmd.help or "").split("\n\n"):
            assert "\n" not in paragraph or paragraph.startswith("\b"), (name, paragraph)
    out = _help_at_80("stats")
    lines = [line.strip() for line in out.splitlines()]
    assert "correct)," not in lines and "2 usage error." not in lines  # the tails of hard-broken lines


def test_input_arguments_have_one_name_per_concept():
    """The input argument was `rollouts`, `INPUT`, `DATA` or `data` depending on the command: now
    ROLLOUTS for rollout files and DATA for parquet, in usage lines, help and errors."""
    from gymverl.cli.options import ARGUMENTS

    want = {"validate": "ROLLOUTS", "rescore": "ROLLOUTS", "stats": "ROLLOUTS", "to-parquet": "ROLLOUTS",
            "preview": "DATA", "train-offline": "DATA", "train-online": "DATA"}
    for name, cmd in GROUP.commands.items():
        args = [p for p in cmd.params if p.param_type_name == "argument"]
        assert all(p.metavar in ARGUMENTS.values() for p in args), (name, [p.metavar for p in args])
        if name in want:
            assert args[0].metavar == want[name], name
            assert f" {{{want[name]}}}" in _help_at_80(name) or f" [{want[name]}]" in _help_at_80(name), name
    res = runner.invoke(app, ["validate"])
    assert res.exit_code == 2 and "ROLLOUTS" in res.output


@pytest.mark.parametrize("command", ["collect", "rescore", "to-parquet", "train-offline", "train-online"])
def test_commands_with_many_options_group_them_in_panels(command):
    cmd = GROUP.commands[command]
    loose = [p.name for p in cmd.params if p.param_type_name == "option" and not p.hidden and not p.rich_help_panel]
    assert loose == [], loose


def test_a_global_flag_after_the_command_says_where_it_goes() -> None:
    """`gymverl validate x -q` was only "No such option: -q"; -q/-v are gymverl's own options."""
    res = runner.invoke(app, ["validate", "x.jsonl", "-q"])
    assert res.exit_code == 2
    text = " ".join(res.output.replace("│", " ").split())
    assert "No such option: -q (-q is an option of gymverl itself: it goes before the command, as in `gymverl -q validate ...`); see `gymverl validate --help`." in text
    res = runner.invoke(app, ["validate", "x.jsonl", "--bogus"])
    assert res.exit_code == 2 and "gymverl itself" not in res.output


def test_a_command_run_with_json_that_fails_prints_json_too(tmp_path: Path) -> None:
    # A script reading stdout of `--json` got nothing when the command stopped with an error (only
    # collect printed one): now every command prints {"ok": false, "exit_code", "message"}, and the
    # sentence on stderr as before. A command that printed its JSON prints no second object.
    from conftest import SAMPLE_DATA

    rollouts = str(SAMPLE_DATA / "rollouts.jsonl")
    for args in (["to-parquet", rollouts, "-o", str(tmp_path / "o"), "-f", "rl", "--min-reward", "1"],
                 ["validate", str(tmp_path / "missing.jsonl")], ["stats", str(tmp_path / "missing.jsonl")]):
        res = runner.invoke(app, [*args, "--json"])
        assert res.exit_code == 2 and json.loads(res.stdout) == {"ok": False, "exit_code": 2, "message": res.stderr.strip().removeprefix("error: ")}, (args, res.output)
        assert runner.invoke(app, args).stdout == ""  # without --json, stdout stays empty
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    res = runner.invoke(app, ["validate", str(empty), "--json"])  # its summary, then exit 1: one object
    assert res.exit_code == 1 and json.loads(res.stdout)["error"] == "file is empty"


@pytest.mark.parametrize(
    "args, says",
    [
        (["to-parquet", "in.jsonl", "-o", "out", "--bogus-opt"], "No such option: --bogus-opt"),
        (["to-parquet", "in.jsonl", "-o", "out", "--min-reward", "abc"], "Invalid value for '--min-reward'"),
        (["validate"], "Missing argument"),
        (["bogus"], "No such command 'bogus'"),
        (["--bogus", "validate", "x"], "No such option: --bogus"),
    ],
)
def test_click_usage_errors_are_one_sentence_and_json_too(args, says) -> None:
    """An unknown option, a value of the wrong type or a missing argument was click's usage box
    ("Usage: ...", "Error" in a frame) and, with --json, nothing on stdout."""
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 2, res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and says in lines[0] and "--help`." in lines[0], res.stderr
    assert "Usage:" not in res.output and "╭" not in res.output
    data = json.loads(res.stdout)
    assert data == {"ok": False, "exit_code": 2, "message": lines[0][len("error: ") :]}


def test_an_unknown_option_is_never_told_an_old_spelling() -> None:
    """The hidden old spellings (OPTION_ALIASES) parse, but the "Possible options" hint names the
    current one: `--bogus-opt` was told "(Possible options: --out)"."""
    res = runner.invoke(app, ["to-parquet", "in.jsonl", "-o", "out", "--bogus-opt"])
    assert res.exit_code == 2
    assert "--out)" not in res.stderr and "--out," not in res.stderr and "Possible options: --output" in res.stderr, res.stderr
