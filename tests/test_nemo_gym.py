"""gymverl.nemo_gym: finding the NeMo Gym venv and running real NeMo Gym servers on loopback."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from gymverl import nemo_gym
from gymverl.nemo_gym import NemoGymError, find_env, resources_only_config, resources_server_config

from conftest import SAMPLE_DATA


def test_find_env_missing_is_one_clear_sentence(tmp_path: Path) -> None:
    with pytest.raises(NemoGymError) as exc:
        find_env(tmp_path / "nowhere")
    msg = str(exc.value)
    assert "NeMo Gym not found" in msg and "make setup" in msg and "\n" not in msg


def test_find_env_uses_environment_variable(monkeypatch: pytest.MonkeyPatch, nemo_gym_env: Path) -> None:
    monkeypatch.setenv(nemo_gym.ENV_VAR, str(nemo_gym_env))
    assert find_env() == nemo_gym_env
    monkeypatch.setenv(nemo_gym.ENV_VAR, "/definitely/not/here")
    with pytest.raises(NemoGymError, match="/definitely/not/here"):
        find_env()


def test_installed_version_is_the_pinned_one(nemo_gym_env: Path) -> None:
    assert nemo_gym.nemo_gym_version(nemo_gym_env) == "0.4.0"


def test_unknown_resources_server_suggests_close_names(nemo_gym_env: Path) -> None:
    with pytest.raises(NemoGymError, match="unknown NeMo Gym resources server 'mcq'; did you mean mcqa"):
        resources_server_config(nemo_gym_env, "mcq")


def test_resources_only_config_drops_agents(nemo_gym_env: Path, tmp_path: Path) -> None:
    cfg = resources_server_config(nemo_gym_env, "math_with_judge")
    original = yaml.safe_load(cfg.read_text())
    assert any("responses_api_agents" in v for v in original.values())
    out, needs_model = resources_only_config(cfg, tmp_path / "c.yaml")
    kept = yaml.safe_load(out.read_text())
    assert list(kept) == ["math_with_judge"]
    assert needs_model  # its judge reference must resolve to a model server
    _, needs_model = resources_only_config(resources_server_config(nemo_gym_env, "mcqa"), tmp_path / "m.yaml")
    assert not needs_model


def test_argv_keeps_everything_on_loopback(nemo_gym_env: Path) -> None:
    servers = nemo_gym.start_resources_servers(["mcqa"], env=nemo_gym_env)
    argv = servers.argv()
    assert argv[0].endswith("/bin/ng_run")
    assert "++head_server.host=127.0.0.1" in argv
    assert f"++head_server.port={servers.head_port}" in argv
    assert nemo_gym.subprocess_env(nemo_gym_env)["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"


@pytest.mark.nemo_gym
def test_real_servers_verify_sample_rollouts(gym_servers) -> None:
    """The sample rollouts' rewards are exactly what NeMo Gym's own verifiers return."""
    for name in ("math_with_judge", "xlam_fc", "mcqa"):
        assert gym_servers.url(name).startswith("http://127.0.0.1:")
    for line in (SAMPLE_DATA / "rollouts.jsonl").read_text().splitlines():
        row = json.loads(line)
        server = "math_with_judge" if row["agent_ref"]["name"].startswith("math") else "xlam_fc"
        body = {k: v for k, v in row.items() if k != "reward"}
        req = urllib.request.Request(
            gym_servers.url(server) + "/verify", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.load(resp)
        assert answer["reward"] == row["reward"], (row["_ng_task_index"], row["_ng_rollout_index"])


def test_start_failure_is_reported_with_output(nemo_gym_env: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("broken:\n  resources_servers:\n    does_not_exist:\n      entrypoint: app.py\n")
    servers = nemo_gym.NemoGymServers([bad], env=nemo_gym_env, startup_timeout=120)
    with pytest.raises(NemoGymError, match="failed to start|not ready"):
        servers.start()
    assert servers._proc is None  # stopped and reaped
