"""`gymverl train-online --dry-run`: the main_ppo argv composes with VeRL 0.9.1's own Hydra config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from gymverl.cli import app
from gymverl.online import LOOP_YAML, OnlineError, OnlineOptions, build_online_command

pytestmark = pytest.mark.verl
runner = CliRunner()


REPO = Path(__file__).resolve().parents[1]


def _env_rows(tmp_path: Path, agent_loop: str = "env") -> Path:
    """RL rows of sample_data/tasks.jsonl as `to-parquet --format rl --agent-loop AGENT_LOOP` writes them."""
    from gymverl.convert import ConvertOptions, convert

    out = tmp_path / f"rl-{agent_loop}.parquet"
    convert(REPO / "sample_data" / "tasks.jsonl", out, ConvertOptions(fmt="rl", agent_loop=agent_loop))
    return out


def test_rows_must_select_the_env_loop(tmp_path: Path) -> None:
    """to-parquet's default rows name gymverl_tools / single_turn_agent, which win over VeRL's
    default_agent_loop: online training would never play their environment, so they are refused."""
    import pyarrow.parquet as pq

    env = _env_rows(tmp_path)
    assert set(pq.read_table(env, columns=["agent_name"]).column("agent_name").to_pylist()) == {"gymverl_env"}
    build_online_command(OnlineOptions(env, "m", tmp_path / "run", ["http://127.0.0.1:1"]), write_loop_yaml=False)
    auto = _env_rows(tmp_path, "auto")
    with pytest.raises(OnlineError, match=r"gymverl_tools, single_turn_agent.*--agent-loop env"):
        build_online_command(OnlineOptions(auto, "m", tmp_path / "run", ["http://127.0.0.1:1"]), write_loop_yaml=False)
    res = runner.invoke(app, ["train-online", str(auto), "--model", "/m", "-o", str(tmp_path / "run"),
                              "--server", "http://127.0.0.1:1", "--dry-run"])
    assert res.exit_code == 2 and "--agent-loop env" in res.output and "Traceback" not in res.output
    not_parquet = tmp_path / "x.parquet"
    not_parquet.write_bytes(b"")
    with pytest.raises(OnlineError, match="not a readable parquet"):
        build_online_command(OnlineOptions(not_parquet, "m", tmp_path / "run", ["http://127.0.0.1:1"]), write_loop_yaml=False)


def compose(argv: list[str]):  # noqa: ANN201
    """VeRL's ppo_trainer.yaml with the overrides of a main_ppo argv (Hydra raises on an unknown key)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    import verl.trainer.main_ppo as main_ppo

    assert argv[1:3] == ["-m", "verl.trainer.main_ppo"]
    overrides = argv[3:]  # as main_ppo gets them (no shell in between: the quotes are Hydra's)
    with initialize_config_dir(config_dir=str(Path(main_ppo.__file__).parent / "config"), version_base=None):
        return hydra_compose(config_name="ppo_trainer", overrides=overrides)


def test_online_argv_composes_with_verl_config(tmp_path: Path) -> None:
    data = _env_rows(tmp_path)
    spec = ["example_multi_step=http://127.0.0.1:9001", "math_with_judge=http://127.0.0.1:9002"]
    argv = build_online_command(OnlineOptions(data, "/models/qwen", tmp_path / "run", spec, n_samples=8, overrides=["trainer.total_epochs=2"]))
    cfg = compose(argv)
    r = cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == "grpo" and r.n == 8 and r.name == "vllm"
    assert r.agent.default_agent_loop == "gymverl_env"
    assert cfg.trainer.total_epochs == 2  # the user's own overrides come last
    assert cfg.reward.custom_reward_function.reward_kwargs.server == " ".join(spec)
    loops = yaml.safe_load(Path(r.agent.agent_loop_config_path).read_text())
    assert loops == [{"name": "gymverl_env", "_target_": "gymverl.env_loop.GymverlEnvAgentLoop", "server": " ".join(spec),
                      "max_turns": 8, "on_failure": "raise"}]
    assert Path(r.agent.agent_loop_config_path) == (tmp_path / "run" / LOOP_YAML).resolve()


def test_online_bad_options_are_one_sentence(tmp_path: Path) -> None:
    data = _env_rows(tmp_path)
    with pytest.raises(OnlineError, match="--rollout"):
        build_online_command(OnlineOptions(data, "m", tmp_path, ["http://x:1"], rollout="tpu"))
    with pytest.raises(OnlineError, match="--server"):
        build_online_command(OnlineOptions(data, "m", tmp_path, []))


def test_cli_train_online_dry_run_prints_argv(tmp_path: Path, tiny_model: Path) -> None:
    data = _env_rows(tmp_path)
    res = runner.invoke(app, ["train-online", str(data), "--model", str(tiny_model), "-o", str(tmp_path / "run"),
                              "--server", "math_with_judge=http://127.0.0.1:9", "--dry-run", "--json", "--", "trainer.total_epochs=3"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["argv"][-1] == "trainer.total_epochs=3"
    compose(plan["argv"])
    res = runner.invoke(app, ["train-online", str(data), "--model", str(tiny_model), "-o", str(tmp_path / "run"),
                              "--server", "math_with_judge=http://127.0.0.1:9", "--dry-run"])
    assert res.exit_code == 0 and "verl.trainer.main_ppo" in res.output, res.output


def test_dry_run_writes_nothing_and_prints_no_verl_import_warnings(tmp_path: Path, tiny_model: Path) -> None:
    """`train-online --dry-run` created OUTDIR/gymverl_agent_loops.yaml and printed VeRL's import-time
    "WARNING: No supported accelerator detected" lines before the plan (a machine without a GPU).
    It now writes nothing; the plan shows the YAML's path and content (the run writes it when it
    starts, as before). A subprocess: this test process may have imported VeRL already."""
    import subprocess
    import sys

    data = _env_rows(tmp_path)
    out = tmp_path / "run"
    before = sorted(p.name for p in tmp_path.iterdir())
    cmd = [sys.executable, "-m", "gymverl.cli", "train-online", str(data), "-m", str(tiny_model), "-o", str(out),
           "--server", "math_with_judge=http://127.0.0.1:9", "--dry-run"]
    res = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**__import__("os").environ, "COLUMNS": "300"})
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not out.exists()
    assert "No supported accelerator" not in res.stdout + res.stderr and "WARNING" not in res.stdout + res.stderr
    assert f"{out.resolve() / LOOP_YAML} (written when the run starts)" in res.stdout and "_target_: gymverl.env_loop.GymverlEnvAgentLoop" in res.stdout
    res = runner.invoke(app, [*cmd[3:], "--json"])
    assert res.exit_code == 0 and not out.exists(), res.output
    plan = json.loads(res.stdout)
    loops = yaml.safe_load(plan["loop_yaml"]["content"])
    assert plan["loop_yaml"]["path"] == str(out.resolve() / LOOP_YAML) and loops[0]["server"].startswith("math_with_judge=http://127.0.0.1:9 ")


def test_dry_run_checks_the_command_with_verls_config_and_sizes_the_batch(tmp_path: Path, tiny_model: Path) -> None:
    import pyarrow.parquet as pq

    data = _env_rows(tmp_path)
    rows = pq.ParquetFile(data).metadata.num_rows
    base = ["train-online", str(data), "--model", str(tiny_model), "-o", str(tmp_path / "run"), "--server", "http://127.0.0.1:1", "--dry-run", "--json"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    cfg = compose(json.loads(res.stdout)["argv"])
    # VeRL's default of 1024 prompts per step (drop_last) would leave these few rows no batch at all
    assert cfg.data.train_batch_size == rows and cfg.actor_rollout_ref.actor.ppo_mini_batch_size == rows
    typo = runner.invoke(app, [*base, "--", "actor_rollout_ref.rolout.n=3"])
    assert typo.exit_code == 2 and "VeRL's config rejects the command" in typo.output and "Traceback" not in typo.output


# ---- train-online runs: preflight, the servers the rows need, the run's lifecycle ---------------------

import os  # noqa: E402
import re  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from importlib.util import find_spec  # noqa: E402

from conftest import marked_processes  # noqa: E402

from gymverl import online  # noqa: E402

MARK = "GYMVERL_ONLINE_TEST_MARK"  # set in what a test starts; every process it leaves behind carries it


def _rows_of(tmp_path: Path, env: Path, servers: tuple[tuple[str, int], ...], name: str = "rows") -> Path:
    """RL rows (`--agent-loop env`) of the first tasks NeMo Gym ships for each `(server, n)`, each
    naming its simple agent (`<server>_simple_agent`), as collected rows do."""
    from gymverl.convert import ConvertOptions, convert
    from gymverl.nemo_gym import package_dir

    tasks = tmp_path / f"{name}.jsonl"
    with tasks.open("w") as f:
        for server, n in servers:
            lines = (package_dir(env) / "resources_servers" / server / "data" / "example.jsonl").read_text().splitlines()
            for line in lines[:n]:
                row = json.loads(line)
                row["agent_ref"] = {"type": "responses_api_agents", "name": f"{server}_simple_agent"}
                f.write(json.dumps(row) + "\n")
    out = tmp_path / f"{name}.parquet"
    convert(tasks, out, ConvertOptions(fmt="rl", agent_loop="env"))
    return out


def _loop_urls(out: Path) -> dict[str, str]:
    """{NAME: URL} of the server specs in OUTDIR's agent-loop YAML (what the rollout workers use)."""
    spec = yaml.safe_load((out / LOOP_YAML).read_text())[0]["server"]
    return dict(part.split("=", 1) for part in spec.split())


def _closed(url: str) -> bool:
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, int(port))) != 0


def test_preflight_refuses_before_anything_starts(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each thing a run needs is checked before a server or VeRL starts: one sentence, exit 2, and
    nothing written to OUTDIR."""
    data = _env_rows(tmp_path)
    out = tmp_path / "run"
    base = ["train-online", str(data), "-o", str(out), "--server", "http://127.0.0.1:1"]

    def refused(*args: str) -> str:
        res = runner.invoke(app, [*base, *args])
        assert res.exit_code == 2, res.output
        assert "Traceback" not in res.output and not out.exists()
        lines = [line for line in res.output.splitlines() if line.startswith("error:")]
        assert len(lines) == 1, res.output
        return lines[0]

    assert "model path does not exist" in refused("--model", str(tmp_path / "no-model"))
    assert "nothing to resume" in refused("--model", str(tiny_model), "--resume")
    if find_spec("vllm") is None:
        assert "--rollout vllm needs the vllm package" in refused("--model", str(tiny_model))
    if find_spec("sglang") is None:
        assert "--rollout sglang needs the sglang package" in refused("--model", str(tiny_model), "--rollout", "sglang")
    # Fault injection: an engine whose package is importable, so the next checks are reached.
    monkeypatch.setitem(online.ROLLOUT_ENGINES, "vllm", online.RolloutEngine("vllm", "json"))
    if find_spec("transfer_queue") is None:
        assert "needs the TransferQueue package" in refused("--model", str(tiny_model))
    import torch

    if not torch.cuda.is_available():
        # VeRL's legacy trainer does not import TransferQueue: the GPU check is next.
        assert "no CUDA GPU is visible here" in refused("--model", str(tiny_model), "--", "trainer.use_v1=false")
    out.mkdir()
    (out / "mine.txt").write_text("x")
    res = runner.invoke(app, [*base, "--model", str(tiny_model)])
    assert res.exit_code == 2 and "output directory exists" in res.output and "--overwrite" in res.output


def test_servers_default_to_the_ones_the_rows_need(tmp_path: Path, tiny_model: Path, nemo_gym_env: Path) -> None:
    """The rows name their agents; each agent's resources server is started unless a --server route
    (or a plain --server URL) serves it; --servers adds more; --dry-run says which and starts none."""
    data = _env_rows(tmp_path)  # agents math_with_judge_simple_agent (3 rows) and xlam_fc_simple_agent (2)
    out = tmp_path / "run"

    def plan(*args: str) -> dict:
        res = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--dry-run", "--json", *args])
        assert res.exit_code == 0, res.output
        return json.loads(res.stdout)

    def loop_urls(p: dict) -> dict[str, str]:  # the agent-loop YAML the plan would write (a dry run writes nothing)
        spec = yaml.safe_load(p["loop_yaml"]["content"])[0]["server"]
        return dict(part.split("=", 1) for part in spec.split())

    p = plan()
    assert p["start_servers"] == ["math_with_judge", "xlam_fc"]
    assert loop_urls(p) == {"math_with_judge": online.PENDING_URL, "xlam_fc": online.PENDING_URL}
    assert not out.exists()  # nothing was started or written
    p = plan("--server", "math_with_judge=http://127.0.0.1:9")
    assert p["start_servers"] == ["xlam_fc"]
    assert loop_urls(p) == {"math_with_judge": "http://127.0.0.1:9", "xlam_fc": online.PENDING_URL}
    assert plan("--server", "http://127.0.0.1:9")["start_servers"] == []
    assert plan("--servers", "mcqa,math_with_judge")["start_servers"] == ["mcqa", "math_with_judge", "xlam_fc"]
    text = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--dry-run"]).output
    assert "servers to start" in text and "math_with_judge, xlam_fc" in text

    res = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--dry-run", "--nemo-gym-env", str(tmp_path / "no-venv")])
    assert res.exit_code == 2 and "NeMo Gym not found at" in res.output, res.output
    res = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--dry-run", "--servers", "math_with_jugde"])
    assert res.exit_code == 2 and "unknown NeMo Gym resources server 'math_with_jugde'" in res.output and "math_with_judge" in res.output

    # Rows whose environment is not installed: refused unless a running server is given for them.
    tasks = tmp_path / "other.jsonl"
    row = json.loads((REPO / "sample_data" / "tasks.jsonl").read_text().splitlines()[0])
    row["agent_ref"] = {"type": "responses_api_agents", "name": "no_such_env_simple_agent"}
    tasks.write_text(json.dumps(row) + "\n")
    from gymverl.convert import ConvertOptions, convert

    other = tmp_path / "other.parquet"
    convert(tasks, other, ConvertOptions(fmt="rl", agent_loop="env"))
    res = runner.invoke(app, ["train-online", str(other), "-m", str(tiny_model), "-o", str(out), "--dry-run"])
    assert res.exit_code == 2 and "1 row(s) play agent 'no_such_env_simple_agent'" in res.output and "neither given" in res.output
    res = runner.invoke(app, ["train-online", str(other), "-m", str(tiny_model), "-o", str(out), "--dry-run", "--json",
                              "--server", "no_such_env=http://127.0.0.1:9"])
    assert res.exit_code == 0 and json.loads(res.stdout)["start_servers"] == [], res.output


def test_run_stops_its_servers_when_the_run_raises(tmp_path: Path, tiny_model: Path, nemo_gym_env: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers start by name from the NeMo Gym venv, answer at the URLs the agent-loop YAML gives
    VeRL, and are stopped when the run raises (fault injection: the runner raises once it has
    checked them; the machine checks are skipped, this machine has no GPU)."""
    from gymverl import train

    data = _rows_of(tmp_path, nemo_gym_env, (("example_multi_step", 1), ("math_with_judge", 1)))
    mark = uuid.uuid4().hex
    monkeypatch.setenv(MARK, mark)
    monkeypatch.setattr(online, "check_runtime", lambda opts: None)
    seen: dict[str, str] = {}

    def injected(plan, on_event=None, **kw):  # noqa: ANN001, ANN202 - fault injection
        seen.update(_loop_urls(plan.out))
        assert all(not _closed(url) for url in seen.values()), seen
        assert plan.argv[plan.argv.index("-m") + 1] == "verl.trainer.main_ppo"
        spec = next(a for a in plan.argv if a.startswith("+reward.custom_reward_function.reward_kwargs.server="))
        assert all(url in spec for url in seen.values())  # the reward function gets the same servers
        raise RuntimeError("injected failure")

    monkeypatch.setattr(train, "run_training", injected)
    plan = online.plan_online(online.OnlineOptions(data, str(tiny_model), tmp_path / "run", [], nemo_gym_env=nemo_gym_env))
    assert plan.start == ["example_multi_step", "math_with_judge"]
    with pytest.raises(RuntimeError, match="injected"):
        online.run_online(plan)
    assert set(seen) == {"example_multi_step", "math_with_judge"} and online.PENDING_URL not in seen.values()
    assert plan.servers == seen
    assert all(_closed(url) for url in seen.values()), seen
    assert marked_processes(MARK, mark) == []


def _cli(args: list[str], mark: str) -> subprocess.Popen:
    """`gymverl` past its machine checks (tests/online_past_preflight.py, fault injection) in a subprocess."""
    env = {**os.environ, "PYTHONPATH": str(REPO), MARK: mark, "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "online_past_preflight.py"), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def test_cli_reports_verls_real_failure_and_stops_the_servers(tmp_path: Path, tiny_model: Path, nemo_gym_env: Path) -> None:
    """Past the preflight, the real main_ppo runs with the started servers; on this machine it fails
    (no TransferQueue / vllm / GPU): one sentence naming VeRL's own error and the log, exit 1, the
    log and the result JSON kept in OUTDIR, the servers stopped, nothing left running."""
    data = _rows_of(tmp_path, nemo_gym_env, (("example_multi_step", 1), ("math_with_judge", 1)))
    out = tmp_path / "run"
    mark = uuid.uuid4().hex
    child = _cli(["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--nemo-gym-env", str(nemo_gym_env)], mark)
    try:
        stdout, stderr = child.communicate(timeout=800)
    finally:
        if child.poll() is None:
            child.kill()
    importlib_ready = bool(find_spec("transfer_queue") and find_spec("vllm"))
    if importlib_ready and child.returncode == 0:  # pragma: no cover - a machine that can train (GPU, vllm)
        pytest.skip("this machine trained for real; the failure path is not reachable here")
    assert child.returncode == 1, (stdout, stderr)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr
    assert re.fullmatch(r"error: VeRL exited with code 1: \w+(Error|Exception): .+; full log: .*train\.log\.", errors[0]), errors[0]
    if not importlib_ready:
        assert "No module named" in errors[0]
    log = out / "train.log"
    assert log.stat().st_size > 0 and "verl" in log.read_text()
    record = json.loads((out / "gymverl-train.json").read_text())
    assert record["result"]["returncode"] == 1 and record["result"]["cause"] in errors[0]
    assert "NeMo Gym servers: example_multi_step http://127.0.0.1:" in stdout
    urls = _loop_urls(out)
    assert set(urls) == {"example_multi_step", "math_with_judge"} and online.PENDING_URL not in urls.values()
    assert urls["example_multi_step"] in " ".join(record["argv"])
    assert all(_closed(url) for url in urls.values()), urls
    assert (out / online.NG_LOG).stat().st_size > 0
    assert marked_processes(MARK, mark) == []


def test_cli_ctrl_c_stops_verl_and_the_servers(tmp_path: Path, tiny_model: Path, nemo_gym_env: Path) -> None:
    """Ctrl-C (SIGINT to gymverl) while VeRL runs: VeRL's process group and the servers stop, exit 130."""
    data = _rows_of(tmp_path, nemo_gym_env, (("example_multi_step", 1), ("math_with_judge", 1)))
    out = tmp_path / "run"
    mark = uuid.uuid4().hex
    child = _cli(["train-online", str(data), "-m", str(tiny_model), "-o", str(out), "--nemo-gym-env", str(nemo_gym_env)], mark)
    try:
        deadline = time.monotonic() + 600
        log = out / "train.log"
        while not (log.exists() and log.stat().st_size > 0) and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)  # train.log is written once the servers are ready and main_ppo runs
        assert child.poll() is None, child.communicate()
        urls = _loop_urls(out)
        assert all(not _closed(url) for url in urls.values()), urls
        assert marked_processes(MARK, mark)  # main_ppo (and Ray), ng_run and the servers
        child.send_signal(signal.SIGINT)
        stdout, stderr = child.communicate(timeout=180)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, (stdout, stderr)
    assert "interrupted" in stderr and "Traceback" not in stderr, stderr
    assert all(_closed(url) for url in urls.values()), urls
    assert marked_processes(MARK, mark) == []


def test_preflight_checks_given_servers_environments_and_the_chat_template(tmp_path: Path, tiny_model: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by a new user: a --server that was down was only found after ~70 s of VeRL start-up (the
    cause buried in train.log); one plain --server URL took rows of two environments; a model without
    a chat template passed. Each is now one sentence before anything starts (exit 2); --dry-run says
    them as notes (it may run on another machine), and says when this machine cannot run the command."""
    from gymverl.nemo_gym import free_port

    data = _env_rows(tmp_path)  # xlam_fc and math_with_judge rows
    out = tmp_path / "run"
    down = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setattr(online, "check_runtime", lambda opts: None)  # fault injection: this machine cannot run VeRL

    def error(*args: str) -> str:
        res = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), *args])
        assert res.exit_code == 2 and "Traceback" not in res.output and not out.exists(), res.output
        return next(line for line in res.output.splitlines() if line.startswith("error:"))

    both = ["--server", f"xlam_fc={down}", "--server", f"math_with_judge={down}"]
    assert f"--server xlam_fc={down} does not answer" in error(*both)
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text((tiny_model / "config.json").read_text())
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            cfg = f.read_text()
            if f.name == "tokenizer_config.json":
                cfg = json.dumps({k: v for k, v in json.loads(cfg).items() if k != "chat_template"})
            (bare / f.name).write_text(cfg)
    assert "has no chat template; VeRL renders every prompt with it" in error("-m", str(bare), *both)
    monkeypatch.undo()
    def notes(*args: str) -> str:
        res = runner.invoke(app, ["train-online", str(data), "-m", str(tiny_model), "-o", str(out), *args, "--dry-run", "--json"])
        assert res.exit_code == 0, res.output
        return " | ".join(json.loads(res.stdout)["notes"])

    said = notes(*both)
    assert f"--server xlam_fc={down} does not answer (" in said and "at the moment; the run will refuse" in said
    assert "the rows play 2 environments (math_with_judge, xlam_fc) but the plain --server URL is one server" in notes("--server", down)
    if find_spec("vllm") is None:
        assert "this machine cannot run it: --rollout vllm needs the vllm package" in notes(*both)
