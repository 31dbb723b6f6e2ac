"""gymverl.collect without running servers: collector detection and argv, preflight checks,
progress counting, Ctrl-C forwarding, and the CLI's messages and exit codes."""

from __future__ import annotations

import _thread
import gzip
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gymverl import collect as C
from gymverl.cli import app
from gymverl.nemo_gym import free_port, nemo_gym_version, subprocess_env

from conftest import SAMPLE_DATA, SHARED
from policy_server import SAMPLE_SCRIPT, PolicyServer, ScriptedPolicy

TASKS = SAMPLE_DATA / "tasks.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def collector(nemo_gym_env: Path) -> C.Collector:
    return C.detect_collector(nemo_gym_env)


# ---- detection and argv ------------------------------------------------------------------------


def test_detects_gym_eval_run_and_its_flags(collector: C.Collector) -> None:
    assert collector.style == "flags"
    assert collector.command[1:] == ("eval", "run", "--no-serve")
    assert collector.options["num_repeats"] == "--num-repeats"
    assert collector.options["concurrency"] == "--concurrency"
    # Both supported releases (0.7.0, 0.4.0) have `gym eval run --no-serve`; the version is read, not assumed.
    assert collector.version == nemo_gym_version(collector.env) and collector.version in ("0.7.0", "0.4.0")


def test_legacy_hydra_keys_are_read_from_the_installed_package(nemo_gym_env: Path) -> None:
    keys = C._hydra_keys(nemo_gym_env)
    assert keys is not None
    assert keys["num_repeats"] == "num_repeats"
    assert keys["concurrency"] == "num_samples_in_parallel"
    assert keys["resume"] == "resume_from_cache"


def _gym_translation(env: Path, argv: list[str]) -> list[str]:
    """The Hydra overrides NeMo Gym's own `gym` parser makes of our argv (no servers involved)."""
    probe = (
        "import json, sys\n"
        "from nemo_gym.cli.main import build_parser, _merge_config_paths\n"
        "args, rest = build_parser().parse_known_args(sys.argv[1:])\n"
        "assert not [t for t in rest if t.startswith('-')], rest\n"
        "print(json.dumps([t for f in args._command.flags for t in f.translate_to_hydra(args)] + rest))\n"
    )
    out = subprocess.run(
        [str(env / "bin" / "python"), "-c", probe, *argv[1:]], capture_output=True, text=True, env=subprocess_env(env), timeout=120
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_argv_means_what_we_intend_to_nemo_gyms_own_parser(collector: C.Collector, nemo_gym_env: Path, tmp_path: Path) -> None:
    argv = C.collector_argv(
        collector,
        input=TASKS,
        output=tmp_path / "out.jsonl",
        agent="math_with_judge_simple_agent",
        num_samples=4,
        limit=3,
        concurrency=2,
        resume=True,
        head_url="http://127.0.0.1:12345",
        extra=["+responses_create_params.temperature=0.5"],
    )
    assert argv[0].endswith("/bin/gym")
    tokens = _gym_translation(nemo_gym_env, argv)
    assert f"+input_jsonl_fpath={TASKS.resolve()}" in tokens
    assert f"+output_jsonl_fpath={tmp_path / 'out.jsonl'}" in tokens
    for tok in (
        "+agent_name=math_with_judge_simple_agent",
        "+num_repeats=4",
        "+limit=3",
        "+num_samples_in_parallel=2",
        "+resume_from_cache=true",
        "++head_server.host=127.0.0.1",
        "++head_server.port=12345",
    ):
        assert tok in tokens, (tok, tokens)
    assert tokens[-1] == "+responses_create_params.temperature=0.5"  # pass-through, unchanged, last


def test_defaults_leave_nemo_gym_defaults_alone(collector: C.Collector, tmp_path: Path) -> None:
    argv = C.collector_argv(collector, input=TASKS, output=tmp_path / "o.jsonl")
    assert not {"--num-repeats", "--limit", "--concurrency", "--resume", "--agent"} & set(argv)


def test_hydra_style_argv(tmp_path: Path) -> None:
    legacy = C.Collector(Path("/env"), ("/env/bin/ng_collect_rollouts",), "hydra", dict(C.HYDRA_KEYS), "0.2.0")
    argv = C.collector_argv(legacy, input=TASKS, output=tmp_path / "o.jsonl", num_samples=8, resume=True, extra=["+x=1"])
    assert argv[:3] == ["/env/bin/ng_collect_rollouts", f"+input_jsonl_fpath={TASKS.resolve()}", f"+output_jsonl_fpath={tmp_path / 'o.jsonl'}"]
    assert "+num_repeats=8" in argv and "+resume_from_cache=true" in argv and argv[-1] == "+x=1"


def test_missing_collector_option_is_a_clear_error(tmp_path: Path) -> None:
    old = C.Collector(Path("/env"), ("ng_collect_rollouts",), "hydra", {"input": "input_jsonl_fpath", "output": "output_jsonl_fpath"}, "0.1")
    with pytest.raises(C.CollectError, match="no collector option for num-repeats"):
        C.collector_argv(old, input=TASKS, output=tmp_path / "o.jsonl", num_samples=4)


def test_head_url_needs_host_and_port() -> None:
    assert C.head_overrides("127.0.0.1:5") == ["++head_server.host=127.0.0.1", "++head_server.port=5"]
    with pytest.raises(C.CollectError, match="needs a host and a port"):
        C.head_overrides("http://localhost")


# ---- preflight ---------------------------------------------------------------------------------


def test_check_tasks_counts_tasks_and_agents() -> None:
    t = C.check_tasks(TASKS)
    assert (t.lines, t.tasks) == (5, 5)
    assert t.agents == {"math_with_judge_simple_agent": 3, "xlam_fc_simple_agent": 2}
    assert C.check_tasks(TASKS, limit=2).tasks == 2


def test_bad_task_lines_are_reported_by_line(tmp_path: Path) -> None:
    lines = TASKS.read_text().splitlines()
    bad = tmp_path / "t.jsonl"
    bad.write_text("\n".join([lines[0], '{"question": "no prompt"}', lines[1], "{not json", ""]) + "\n")
    with pytest.raises(C.CollectError) as exc:
        C.check_tasks(bad)
    assert exc.value.code == 1
    assert [d["line"] for d in exc.value.details] == [2, 4, 5]
    assert "3 of 5 lines are not valid NeMo Gym tasks (line 2: missing required key 'responses_create_params')" in str(exc.value)


def test_tasks_without_agent_need_agent_option(tmp_path: Path) -> None:
    row = json.loads(TASKS.read_text().splitlines()[0])
    del row["agent_ref"]
    f = tmp_path / "t.jsonl"
    f.write_text(json.dumps(row) + "\n")
    with pytest.raises(C.CollectError, match="line 1 names no agent .*--agent"):
        C.check_tasks(f)
    assert C.check_tasks(f, agent="a").agents == {"a": 1}


def test_gz_and_empty_inputs_are_refused(tmp_path: Path) -> None:
    gz = tmp_path / "t.jsonl.gz"
    with gzip.open(gz, "wb") as f:
        f.write(TASKS.read_bytes())
    with pytest.raises(C.CollectError, match="decompress it first"):
        C.check_tasks(gz)
    empty = tmp_path / "e.jsonl"
    empty.write_text("")
    with pytest.raises(C.CollectError, match="file is empty"):
        C.check_tasks(empty)
    with pytest.raises(C.CollectError, match="no such file"):
        C.check_tasks(tmp_path / "missing.jsonl")


def test_existing_output_is_never_silently_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "r.jsonl"
    out.write_text("old\n")
    side = C.sidecar_paths(out)
    side["failures"].write_text("stale failure\n")
    with pytest.raises(C.CollectError, match="already exists: pass --resume .* or --overwrite"):
        C.prepare_output(out)
    C.prepare_output(out, resume=True)
    assert out.read_text() == "old\n" and side["failures"].exists()
    with pytest.raises(C.CollectError, match="contradict"):
        C.prepare_output(out, overwrite=True, resume=True)
    C.prepare_output(out, overwrite=True)
    assert not out.exists() and not side["failures"].exists()


class _FakeHead(BaseHTTPRequestHandler):
    """Fault injection: a head server (that also answers as every NeMo Gym server it lists) whose
    config points at ports nobody listens on; `config` is filled in by the fixture."""

    config: dict = {}

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(json.dumps(self.config)).encode()  # NeMo Gym sends a JSON string holding YAML
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def fake_head():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHead)
    me, dead = srv.server_address[1], free_port()
    agent = lambda model: {  # noqa: E731
        "host": "127.0.0.1",
        "port": me,
        "resources_server": {"type": "resources_servers", "name": "rs"},
        "model_server": {"type": "responses_api_models", "name": model},
    }
    _FakeHead.config = {
        "head_server": {"host": "127.0.0.1", "port": me},
        "policy_base_url": f"http://127.0.0.1:{dead}/v1",
        "dead_agent": {"responses_api_agents": {"simple_agent": {"host": "127.0.0.1", "port": dead}}},
        "ok_agent": {"responses_api_agents": {"simple_agent": agent("live_model")}},
        "no_policy_agent": {"responses_api_agents": {"simple_agent": agent("policy_model")}},
        "rs": {"resources_servers": {"x": {"host": "127.0.0.1", "port": me}}},
        # An unresolved OmegaConf dump: the upstream URL is an interpolation of a top-level key.
        "policy_model": {"responses_api_models": {"openai_model": {"host": "127.0.0.1", "port": me, "openai_base_url": "${policy_base_url}"}}},
        "live_model": {"responses_api_models": {"openai_model": {"host": "127.0.0.1", "port": me, "openai_base_url": f"http://127.0.0.1:{me}/v1"}}},
    }
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{me}"
    srv.shutdown()
    srv.server_close()


def test_unreachable_head_names_the_ng_run_command(nemo_gym_env: Path) -> None:
    with pytest.raises(C.CollectError) as exc:
        C.check_servers(f"http://127.0.0.1:{free_port()}", ["math_with_judge_simple_agent"], env=nemo_gym_env)
    msg = str(exc.value)
    assert exc.value.code == 2 and "\n" not in msg
    assert "no NeMo Gym head server answers" in msg and "ng_run" in msg
    assert "resources_servers/math_with_judge/configs/math_with_judge.yaml" in msg and "--servers" in msg


def test_agent_not_running_or_not_answering(fake_head: str, nemo_gym_env: Path) -> None:
    with pytest.raises(C.CollectError, match=r"agent 'xlam_fc_simple_agent' is not running .*running agents: dead_agent.*xlam_fc.yaml"):
        C.check_servers(fake_head, ["xlam_fc_simple_agent"], env=nemo_gym_env)
    with pytest.raises(C.CollectError, match="agent 'dead_agent' is configured at http://127.0.0.1:\\d+ but does not answer"):
        C.check_servers(fake_head, ["dead_agent"])
    with pytest.raises(C.CollectError) as exc:
        C.check_servers(fake_head, ["no_policy_agent"])
    assert "the model behind NeMo Gym's 'policy_model' server, http://127.0.0.1:" in str(exc.value)
    assert "does not answer" in str(exc.value) and "start your model server" in str(exc.value)
    urls = C.check_servers(fake_head, ["ok_agent"])
    assert set(urls) == {"ok_agent", "rs", "live_model", "live_model upstream"}
    assert urls["live_model upstream"] == fake_head + "/v1"


# ---- progress, failure reasons, Ctrl-C ----------------------------------------------------------


def test_line_counter_follows_appends_and_recreation(tmp_path: Path) -> None:
    f = tmp_path / "grow.jsonl"
    lc = C.LineCounter(f)
    assert lc.update() == 0
    f.write_bytes(b"a\nb\n")
    assert lc.update() == 2
    with open(f, "ab") as fh:
        fh.write(b"c\npartial")
    assert lc.update() == 3
    f.unlink()
    f.write_bytes(b"x\n")  # the collector removes the output and starts again
    assert lc.update() == 1


def test_failure_reason_picks_the_last_exception(tmp_path: Path) -> None:
    log = tmp_path / "c.log"
    log.write_text(
        "Collecting rollouts: 10%\nTraceback (most recent call last):\n  File x\n"
        "aiohttp.client_exceptions.ClientResponseError: 500, message='Internal Server Error', url='http://127.0.0.1:1/run'\n"
    )
    assert C.failure_reason(log) == "ClientResponseError: 500, message='Internal Server Error', url='http://127.0.0.1:1/run'"
    log.write_text("usage: gym\ngym: error: unrecognized arguments: --bogus\n")
    assert C.failure_reason(log) == "unrecognized arguments: --bogus"


FAKE_COLLECTOR = r"""
import signal, sys, time
out, n, flag = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def stop(sig, frame):
    open(flag, "w").write("SIGINT")
    sys.exit(130)
signal.signal(signal.SIGINT, stop)
for i in range(n):
    with open(out, "a") as f:
        f.write('{"i": %d}\n' % i)
    time.sleep(0.2)
sys.exit(3)
"""


def test_run_collector_reports_progress_and_crash(tmp_path: Path, nemo_gym_env: Path) -> None:
    """Fault injection: a stand-in collector that writes 3 lines then dies with exit code 3."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE_COLLECTOR)
    out = tmp_path / "o.jsonl"
    seen: list[int] = []
    r = C.run_collector(
        [sys.executable, str(script), str(out), "3", str(tmp_path / "flag")],
        env=nemo_gym_env,
        output=out,
        log_path=tmp_path / "log",
        on_progress=lambda ev: seen.append(ev.done),
        poll=0.05,
    )
    assert (r.returncode, r.interrupted, r.written) == (3, False, 3)
    assert seen == sorted(seen) and seen[-1] == 3 and 0 < len(set(seen))


def test_ctrl_c_is_forwarded_to_the_collector_once(tmp_path: Path, nemo_gym_env: Path) -> None:
    script = tmp_path / "fake.py"
    script.write_text(FAKE_COLLECTOR)
    out, flag = tmp_path / "o.jsonl", tmp_path / "flag"
    threading.Timer(1.0, _thread.interrupt_main).start()  # Ctrl-C arrives as KeyboardInterrupt in gymverl
    t0 = time.monotonic()
    r = C.run_collector(
        [sys.executable, str(script), str(out), "1000", str(flag)], env=nemo_gym_env, output=out, log_path=tmp_path / "log", poll=0.05
    )
    assert r.interrupted and r.returncode == 130
    assert flag.read_text() == "SIGINT"  # the collector got SIGINT and shut down by itself
    assert 0 < r.written < 1000 and time.monotonic() - t0 < 10


# ---- the policy server (unit level; the e2e tests drive it through NeMo Gym) --------------------


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.load(resp)


def test_policy_server_speaks_both_apis_deterministically() -> None:
    weather = SAMPLE_SCRIPT[3]
    with PolicyServer(ScriptedPolicy()) as ps:
        args = []
        for _ in range(4):
            r = _post(ps.base_url + "/responses", {"input": [{"role": "user", "content": weather["match"]}]})
            (call,) = r["output"]
            assert call["type"] == "function_call"
            args.append(json.loads(call["arguments"]))
        assert args == [a["tool_call"]["arguments"] for a in weather["answers"]]
        follow = _post(
            ps.base_url + "/responses",
            {"input": [{"role": "user", "content": weather["match"]}, call, {"type": "function_call_output", "call_id": call["call_id"], "output": "{}"}]},
        )
        assert follow["output"][0]["content"][0]["text"] == weather["answers"][3]["then"]
        chat = _post(ps.base_url + "/chat/completions", {"messages": [{"role": "user", "content": SAMPLE_SCRIPT[0]["match"]}]})
        assert chat["choices"][0]["message"]["content"] == SAMPLE_SCRIPT[0]["answers"][0]["text"]
        ps.policy.fail_after = ps.policy.requests
        with pytest.raises(urllib.error.HTTPError) as exc:
            _post(ps.base_url + "/responses", {"input": "x"})
        assert exc.value.code == 400


# ---- CLI ---------------------------------------------------------------------------------------


def _invoke(*args: str):
    return runner.invoke(app, ["collect", *args])


def test_cli_missing_servers_is_exit_2_without_traceback(tmp_path: Path) -> None:
    res = _invoke("-i", str(TASKS), "-o", str(tmp_path / "o.jsonl"), "--head-url", f"http://127.0.0.1:{free_port()}")
    assert res.exit_code == 2, res.output
    assert "no NeMo Gym head server answers" in res.output and "ng_run" in res.output
    assert "Traceback" not in res.output and not (tmp_path / "o.jsonl").exists()


def test_servers_that_cannot_serve_the_tasks_are_refused_before_starting(tmp_path: Path, nemo_gym_env: Path) -> None:
    """`--servers math_with_judge` for tasks that also name xlam_fc's agent: found only after ~40 s
    of starting servers; and without --policy-url ng_run failed on its config ("without an error
    message"). Both are now one sentence, exit 2, before anything starts or is written."""
    base = ["-i", str(TASKS), "-o", str(tmp_path / "o.jsonl"), "--nemo-gym-env", str(nemo_gym_env)]
    started = time.monotonic()
    res = _invoke(*base, "--servers", "math_with_judge", "--policy-url", "http://127.0.0.1:9/v1")
    assert res.exit_code == 2, res.output
    text = " ".join(res.output.split())
    assert "agent 'xlam_fc_simple_agent' (named by the tasks) is defined in none of the configs --servers starts" in text
    assert "add --servers xlam_fc" in text
    res = _invoke(*base, "--limit", "3", "--servers", "math_with_judge")
    assert res.exit_code == 2, res.output
    assert "pass --policy-url" in " ".join(res.output.split())
    assert time.monotonic() - started < 30 and not (tmp_path / "o.jsonl").exists()
    assert "Traceback" not in res.output


def test_a_rollouts_file_given_as_tasks_is_warned_about(tmp_path: Path) -> None:
    """`collect -i rollouts.jsonl` (the rollouts, not their tasks) was taken as 20 tasks without a
    word; each rollout line is a valid task, so it is counted and warned about."""
    got = C.check_tasks(SAMPLE_DATA / "rollouts.jsonl")
    assert got.tasks == 20 and got.rollout_lines == 20
    assert C.check_tasks(TASKS).rollout_lines == 0
    res = _invoke("-i", str(SAMPLE_DATA / "rollouts.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--head-url", f"http://127.0.0.1:{free_port()}")
    assert res.exit_code == 2 and "are rollouts themselves" in " ".join(res.output.split()), res.output


def test_cli_bad_task_line_is_exit_1_with_line_numbers(tmp_path: Path) -> None:
    bad = tmp_path / "t.jsonl"
    bad.write_text(TASKS.read_text() + '{"responses_create_params": {"input": 3}}\n')
    res = _invoke("-i", str(bad), "-o", str(tmp_path / "o.jsonl"))
    assert res.exit_code == 1, res.output
    assert "6" in res.output and "'responses_create_params.input' must be a string or an array" in res.output
    assert "Traceback" not in res.output


def test_cli_existing_output_and_bad_options(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    out.write_text("{}\n")
    res = _invoke("-i", str(TASKS), "-o", str(out))
    assert res.exit_code == 2 and "--overwrite" in res.output
    assert out.read_text() == "{}\n"
    res = _invoke("-i", str(TASKS), "-o", str(tmp_path / "x.jsonl"), "-n", "0")
    assert res.exit_code == 2 and "--num-samples must be at least 1" in res.output
    res = _invoke("-i", str(TASKS), "-o", str(tmp_path / "x.jsonl"), "--bogus")
    assert res.exit_code == 2 and "No such option" in res.output


def test_cli_missing_nemo_gym_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GYMVERL_NEMO_GYM_ENV", str(tmp_path / "nowhere"))
    res = _invoke("-i", str(TASKS), "-o", str(tmp_path / "o.jsonl"))
    assert res.exit_code == 2 and "NeMo Gym not found" in res.output
    res = _invoke("-i", str(TASKS), "-o", str(tmp_path / "o.jsonl"), "--nemo-gym-env", str(tmp_path / "elsewhere"))
    assert res.exit_code == 2 and "elsewhere" in res.output


def test_cli_json_error(tmp_path: Path) -> None:
    res = _invoke("-i", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "o.jsonl"), "--json")
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert data["ok"] is False and "no such file" in data["message"]


def test_sigterm_stops_the_collector_like_ctrl_c(tmp_path: Path, nemo_gym_env: Path) -> None:
    import os
    import signal

    script = tmp_path / "fake.py"
    script.write_text(FAKE_COLLECTOR)
    out, flag = tmp_path / "o.jsonl", tmp_path / "flag"
    before = signal.getsignal(signal.SIGTERM)
    threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
    r = C.run_collector(
        [sys.executable, str(script), str(out), "1000", str(flag)], env=nemo_gym_env, output=out, log_path=tmp_path / "log", poll=0.05
    )
    assert r.interrupted and flag.read_text() == "SIGINT"
    assert signal.getsignal(signal.SIGTERM) is before  # our handler is only installed while collecting


def _result(tmp_path: Path, *, rc: int = 0, written: int = 20, failed: int = 0, valid: int = 20, rejected: int = 0, earlier: int = 0) -> C.CollectResult:
    from gymverl.records import ValidationSummary

    v = ValidationSummary(str(tmp_path / "o.jsonl"))
    v.lines, v.valid, v.rejected = valid + rejected, valid, rejected
    v.rollouts_per_task.update({f"#{i}": 4 for i in range(valid // 4)})
    from gymverl.sidecars import FailedRollout, FailureReport

    fails = FailureReport("f.jsonl", attempts=failed, failed={(t, 0): FailedRollout(1, "x", "", t) for t in range(failed)})
    r = C.CollectResult(
        str(tmp_path / "o.jsonl"), "log", [], 20, C.RunResult(rc, False, written, failed, 1.0, earlier=earlier), v, "f.jsonl", False, 1, "",
        failures=fails,
    )
    C._verdict(r)
    return r


def test_verdict_says_what_is_wrong(tmp_path: Path) -> None:
    ok = _result(tmp_path)
    assert ok.ok and ok.code == 0 and "collected 20 rollouts (5 tasks)" in ok.message
    r = _result(tmp_path, valid=16, failed=4)
    assert r.code == 1 and "4 rollouts failed (see f.jsonl)" in r.message and "16 valid rollouts of 20 expected" in r.message
    r = _result(tmp_path, valid=12)
    assert r.code == 1 and "8 rollouts missing" in r.message
    r = _result(tmp_path, valid=19, rejected=1)
    assert r.code == 1 and "1 lines rejected by validation" in r.message


def test_a_resume_says_what_this_run_collected(tmp_path: Path) -> None:
    """`collect --resume` with nothing left said "collected 20 rollouts", as if this run had."""
    r = _result(tmp_path, written=20, earlier=20)
    assert r.code == 0 and r.message.startswith("nothing was left to collect:") and "already holds all 20 rollouts (5 tasks)" in r.message
    r = _result(tmp_path, written=20, earlier=12)
    assert r.code == 0 and r.message.startswith("collected 8 more rollouts:") and "holds 20 rollouts (5 tasks)" in r.message
    assert _result(tmp_path).message.startswith("collected 20 rollouts (5 tasks) into")


def test_cli_passes_args_after_double_dash_and_reports_a_collector_failure(fake_head: str, tmp_path: Path) -> None:
    """The real NeMo Gym collector against a fake head whose agent cannot /run: it fails before writing."""
    row = json.loads(TASKS.read_text().splitlines()[0])
    row["agent_ref"] = {"type": "responses_api_agents", "name": "ok_agent"}
    tasks = tmp_path / "t.jsonl"
    tasks.write_text(json.dumps(row) + "\n")
    out = tmp_path / "o.jsonl"
    res = runner.invoke(
        app, ["collect", "-i", str(tasks), "-o", str(out), "--head-url", fake_head, "--json", "--", "+responses_create_params.temperature=0.25"]
    )
    assert res.exit_code == 1, res.output
    data = json.loads(res.stdout)
    assert data["argv"][-1] == "+responses_create_params.temperature=0.25"
    assert data["collector_exit_code"] not in (0, None)
    assert data["message"].startswith("NeMo Gym's collector failed (exit code")
    assert "0 valid rollouts of 1 expected" in data["message"] and "Traceback" not in res.output
    assert Path(data["log"]).read_text()  # the collector's own output is kept for the user


def test_expected_rollouts_on_resume_follow_nemo_gyms_materialized_inputs(tmp_path: Path) -> None:
    tasks = C.check_tasks(TASKS)
    out = tmp_path / "r.jsonl"
    assert C.expected_rollouts(tasks, 4, out, resume=True) == 20  # nothing to resume: a fresh run
    out.write_text("")
    C.sidecar_paths(out)["materialized_inputs"].write_text("{}\n" * 10)
    assert C.expected_rollouts(tasks, 4, out, resume=True) == 10
    assert C.expected_rollouts(tasks, 4, out, resume=False) == 20


# ---- failures settled across --resume, NeMo Gym 0.7.0's health check --------------------------


CASE_02 = SHARED / "cases" / "ng07-02-failures-counted-after-resume"


def _no_op_collector(monkeypatch: pytest.MonkeyPatch, env: Path, quality: dict | None = None) -> None:
    """A collector that finds everything already collected (a `--resume` with nothing left) and,
    given `quality`, writes NeMo Gym 0.7.0's health-check files into the output's folder."""
    script = (
        "import json, sys, pathlib\n"
        "args = sys.argv[1:]\n"
        "q = %r\n"
        "if q is not None:\n"
        "    d = pathlib.Path(args[args.index('--output') + 1]).parent\n"
        "    (d / 'quality_summary.json').write_text(json.dumps(q['summary']))\n"
        "    (d / 'rollout_verdicts.jsonl').write_text(''.join(json.dumps(r) + '\\n' for r in q['verdicts']))\n"
    ) % (quality,)
    fake = C.Collector(env, (sys.executable, "-c", script), "flags", dict(C.GYM_FLAGS), "0.7.0")
    monkeypatch.setattr(C, "detect_collector", lambda _env: fake)
    monkeypatch.setattr(C, "check_servers", lambda *a, **k: {})


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _small_resumed_collection(tmp_path: Path, still_failed: bool) -> tuple[Path, Path]:
    """2 tasks x 2 repeats; 3 failed attempts of 2 pairs in the failures file; all pairs present,
    or (still_failed) pair (1, 1) only in the failures file."""
    rows = [json.loads(line) for line in TASKS.read_text().splitlines()[:2]]
    tasks = tmp_path / "tasks.jsonl"
    _write_jsonl(tasks, rows)
    out = tmp_path / "r.jsonl"
    pairs = [(t, r) for t in range(2) for r in range(2)]
    _write_jsonl(out.with_name("r_materialized_inputs.jsonl"), [{**rows[t], "_ng_task_index": t, "_ng_rollout_index": r} for t, r in pairs])
    present = [p for p in pairs if not (still_failed and p == (1, 1))]
    _write_jsonl(out, [{**rows[t], "_ng_task_index": t, "_ng_rollout_index": r, "reward": 1.0,
                        "response": {"output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "56"}]}]}}
                       for t, r in present])
    fail = {"_ng_failure_class": "agent_run_error", "_ng_failure_message": "500"}
    _write_jsonl(out.with_name("r_failures.jsonl"), [
        {**fail, "_ng_task_index": 0, "_ng_rollout_index": 1},
        {**fail, "_ng_task_index": 1, "_ng_rollout_index": 1},
        {**fail, "_ng_task_index": 1, "_ng_rollout_index": 1},
    ])
    return tasks, out


@pytest.mark.parametrize("still_failed", [False, True], ids=["all-retried", "one-still-failed"])
def test_resume_counts_only_rollouts_that_never_succeeded(
    tmp_path: Path, nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch, still_failed: bool
) -> None:
    """ng07-02 (own input): failure rows whose (task, repeat) later succeeded are history."""
    tasks, out = _small_resumed_collection(tmp_path, still_failed)
    _no_op_collector(monkeypatch, nemo_gym_env)
    res = runner.invoke(app, ["collect", "-i", str(tasks), "-o", str(out), "-n", "2", "--resume", "--json"])
    assert "Traceback" not in res.output
    data = json.loads(res.stdout)
    if still_failed:
        assert res.exit_code == 1, res.output
        assert data["failed_rollouts"] == 1 and data["retried_failed_attempts"] == 1
        assert "1 rollouts failed" in data["message"] and "missing" not in data["message"], data["message"]
        assert "1 earlier failed attempt was retried" in data["message"]
    else:
        assert res.exit_code == 0, res.output
        assert data["failed_rollouts"] == 0 and data["retried_failed_attempts"] == 3
        assert data["message"].startswith("nothing was left to collect:") and "holds all 4 rollouts (2 tasks)" in data["message"]
        assert "3 earlier failed attempts were retried" in data["message"]
    assert data["failures"]["attempts"] == 3 and data["failed_attempts_this_run"] == 0
    assert data["quality"] is None  # no health-check files: nothing claimed


def test_resume_of_the_real_07_collection_exits_0(tmp_path: Path, nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ng07-02-failures-counted-after-resume: all 20 rollouts present, 11 old failure rows -> exit 0."""
    if not CASE_02.is_dir():
        pytest.skip(f"shared case not found: {CASE_02}")
    for f in CASE_02.glob("*.jsonl"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    out = tmp_path / "r.jsonl"
    _no_op_collector(monkeypatch, nemo_gym_env)
    res = runner.invoke(app, ["collect", "-i", str(tmp_path / "tasks.jsonl"), "-o", str(out), "-n", "4", "-c", "1", "--resume"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    assert "nothing was left to collect" in text and "holds all 20 rollouts" in text and "11 earlier failed attempts were retried" in text, text


def test_quality_summary_of_07s_collector_is_reported(tmp_path: Path, nemo_gym_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """0.7.0's collector writes quality_summary.json / rollout_verdicts.jsonl beside the output:
    collect reports them (rich and --json); an older one (an earlier run's) is not claimed."""
    tasks, out = _small_resumed_collection(tmp_path, still_failed=False)
    summary = {
        "run": {"verdicts": {"healthy": 3, "unhealthy": 1, "unobserved": 0},
                "issues": {"model_call_error": 1, "empty_response": 0},
                "stats": {"model_call_errors": {"total": 2}}},
        "tasks": {"0": {"flags": []}, "1": {"flags": ["task_consistently_unhealthy"]}},
    }
    verdicts = [{"_ng_task_index": 1, "_ng_rollout_index": 1, "verdict": "unhealthy", "findings": [{"check": "model_call_error"}]}]
    _no_op_collector(monkeypatch, nemo_gym_env, {"summary": summary, "verdicts": verdicts})
    res = runner.invoke(app, ["collect", "-i", str(tasks), "-o", str(out), "-n", "2", "--resume", "--json"])
    assert res.exit_code == 0, res.output
    q = json.loads(res.stdout)["quality"]
    assert (q["rollouts"], q["healthy"], q["unhealthy"], q["unobserved"]) == (4, 3, 1, 0)
    assert q["issues"] == {"model_call_error": 1} and q["flagged_tasks"] == 1 and q["model_call_errors"] == 2
    assert q["unhealthy_examples"] == [{"task": 1, "rollout": 1, "checks": ["model_call_error"]}]
    res = runner.invoke(app, ["collect", "-i", str(tasks), "-o", str(out), "-n", "2", "--resume"])
    text = " ".join(res.output.split())
    assert "NeMo Gym health check: 4 rollouts, 3 healthy, 1 unhealthy" in text and "1 tasks flagged" in text, text
    # An earlier run's files are not this run's report.
    old = time.time() - 3600
    for name in ("quality_summary.json", "rollout_verdicts.jsonl"):
        os.utime(tmp_path / name, (old, old))
    assert C.quality_report(out, since=time.time()) is None
    (tmp_path / "quality_summary.json").write_text("not json")
    bad = C.quality_report(out)
    assert bad is not None and "cannot read it" in bad["error"]


def test_hydra_style_argv_quotes_awkward_paths(tmp_path: Path) -> None:
    """A comma, quote or space in a path reaches ng_collect_rollouts as that path (unquoted, Hydra read
    a comma as a sweep and a `~` as a syntax error)."""
    parser = pytest.importorskip("hydra.core.override_parser.overrides_parser").OverridesParser.create()
    legacy = C.Collector(Path("/env"), ("/env/bin/ng_collect_rollouts",), "hydra", dict(C.HYDRA_KEYS), "0.2.0")
    out = tmp_path / "a,b it's ~x" / "o.jsonl"
    argv = C.collector_argv(legacy, input=TASKS, output=out, agent="my agent", num_samples=2)
    values = {}
    for text in argv[1:]:
        o = parser.parse_override(text)
        assert not o.is_sweep_override(), text
        values[o.key_or_group] = o.value()
    assert values["output_jsonl_fpath"] == str(out.resolve())
    assert values["agent_name"] == "my agent" and values["num_repeats"] == 2
