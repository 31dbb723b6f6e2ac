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


def test_cli_train_online_dry_run_prints_argv(tmp_path: Path) -> None:
    data = _env_rows(tmp_path)
    res = runner.invoke(app, ["train-online", str(data), "--model", "/m", "-o", str(tmp_path / "run"),
                              "--server", "math_with_judge=http://127.0.0.1:9", "--dry-run", "--json", "--", "trainer.total_epochs=3"])
    assert res.exit_code == 0, res.output
    plan = json.loads(res.stdout)
    assert plan["argv"][-1] == "trainer.total_epochs=3"
    compose(plan["argv"])
    res = runner.invoke(app, ["train-online", str(data), "--model", "/m", "-o", str(tmp_path / "run"),
                              "--server", "math_with_judge=http://127.0.0.1:9", "--dry-run"])
    assert res.exit_code == 0 and "verl.trainer.main_ppo" in res.output, res.output
    res = runner.invoke(app, ["train-online", str(data), "--model", "/m", "-o", str(tmp_path / "run2"),
                              "--server", "math_with_judge=http://127.0.0.1:9"])
    assert res.exit_code == 2 and "--dry-run" in res.output


def test_dry_run_checks_the_command_with_verls_config_and_sizes_the_batch(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    data = _env_rows(tmp_path)
    rows = pq.ParquetFile(data).metadata.num_rows
    base = ["train-online", str(data), "--model", "/m", "-o", str(tmp_path / "run"), "--server", "http://127.0.0.1:1", "--dry-run", "--json"]
    res = runner.invoke(app, base)
    assert res.exit_code == 0, res.output
    cfg = compose(json.loads(res.stdout)["argv"])
    # VeRL's default of 1024 prompts per step (drop_last) would leave these few rows no batch at all
    assert cfg.data.train_batch_size == rows and cfg.actor_rollout_ref.actor.ppo_mini_batch_size == rows
    typo = runner.invoke(app, [*base, "--", "actor_rollout_ref.rolout.n=3"])
    assert typo.exit_code == 2 and "VeRL's config rejects the command" in typo.output and "Traceback" not in typo.output
