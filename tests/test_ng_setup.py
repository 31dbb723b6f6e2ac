"""gymverl.ng_setup: which NeMo Gym is installed, and one venv for all servers when per-server
venvs cannot be built (nemo-gym 0.7.0 on a Python older than its Requires-Python >=3.13.14)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from gymverl import ng_setup
from gymverl.errors import RunError

# What nemo-gym's wheel METADATA looks like: the License field runs over many indented lines,
# some of them whitespace only (the real 0.7.0 file; a parser that stops there loses
# Requires-Python, which comes after it).
METADATA = """Metadata-Version: 2.4
Name: nemo-gym
Version: {version}
Summary: NeMo Gym is a library for building reinforcement learning environments
License:                                  Apache License
                                   Version 2.0, January 2004
        
           TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION
        
Requires-Python: {requires}
Requires-Dist: fastapi

# NeMo Gym
Version: 9.9.9 (body text, not a header)
"""


def fake_venv(
    root: Path,
    *,
    version: str = "0.7.0",
    requires: str = ">=3.13.14",
    python: str = "3.13.0",
    cfg_key: str = "version",
    uv: bool = True,
    installed: tuple[str, ...] = ("tiktoken-0.14.0", "math_verify-0.8.0"),
) -> Path:
    """A NeMo Gym venv as files: pyvenv.cfg, bin/, nemo-gym's dist-info and three server folders."""
    env = root / "venv"
    minor = ".".join(python.split(".")[:2])
    site = env / "lib" / f"python{minor}" / "site-packages"
    (env / "bin").mkdir(parents=True)
    (env / "pyvenv.cfg").write_text(f"home = /usr/bin\ninclude-system-site-packages = false\n{cfg_key} = {python}\n")
    for name in ("python", "activate") + (("uv",) if uv else ()):
        (env / "bin" / name).write_text("")
    dist = site / f"nemo_gym-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(METADATA.format(version=version, requires=requires))
    for pkg in installed:
        (site / f"{pkg}.dist-info").mkdir()
    servers = {
        "resources_servers/mcqa": "-e nemo-gym[dev] @ ../../\ntiktoken\n",
        "resources_servers/math_with_judge": "-e nemo-gym[dev] @ ../../\nmath-verify==0.8.0  # rule-based\n\n",
        "responses_api_agents/simple_agent": "-e nemo-gym[dev] @ ../../\n",
        "responses_api_models/openai_model": "-e nemo-gym[dev] @ ../../\n",
    }
    for folder, reqs in servers.items():
        (site / folder / "configs").mkdir(parents=True)
        (site / folder / "app.py").write_text("")
        (site / folder / "requirements.txt").write_text(reqs)
    (site / "resources_servers/mcqa/configs/mcqa.yaml").write_text(
        yaml.safe_dump(
            {
                "mcqa": {"resources_servers": {"mcqa": {"entrypoint": "app.py", "domain": "knowledge"}}},
                "mcqa_simple_agent": {
                    "responses_api_agents": {
                        "simple_agent": {"entrypoint": "app.py", "resources_server": {"name": "mcqa"}}
                    }
                },
                "not_a_server": {"foo": 1},
            }
        )
    )
    return env


def site_of(env: Path) -> Path:
    return next((env / "lib").glob("python3*/site-packages"))


# ---- version detection ---------------------------------------------------------------------------


def test_read_install_07_on_old_python_says_per_server_venvs_cannot_work(tmp_path: Path) -> None:
    env = fake_venv(tmp_path)
    inst = ng_setup.read_install(env)
    assert inst.version == "0.7.0" and inst.version_tuple == (0, 7, 0)
    assert inst.requires_python == ">=3.13.14"  # found after the multi-line License field
    assert inst.python == (3, 13, 0)
    assert inst.site_packages == site_of(env)
    works, why = inst.per_server_venvs_work()
    assert not works
    assert "3.13.0" in why and ">=3.13.14" in why and "uv" in why
    assert ng_setup.installed_nemo_gym_version(env) == "0.7.0"


def test_read_install_07_on_new_python_uses_per_server_venvs(tmp_path: Path) -> None:
    inst = ng_setup.read_install(fake_venv(tmp_path, python="3.13.14"))
    assert inst.per_server_venvs_work() == (True, "")


def test_read_install_04_uv_style_pyvenv_cfg(tmp_path: Path) -> None:
    # `uv venv` writes `version_info = 3.12.1`; `python -m venv` writes `version = ...`.
    inst = ng_setup.read_install(fake_venv(tmp_path, version="0.4.0", requires=">=3.12", python="3.12.1", cfg_key="version_info"))
    assert (inst.version, inst.python) == ("0.4.0", (3, 12, 1))
    assert inst.per_server_venvs_work() == (True, "")


def test_without_uv_per_server_venvs_cannot_work(tmp_path: Path) -> None:
    inst = ng_setup.read_install(fake_venv(tmp_path, version="0.4.0", requires=">=3.12", python="3.12.1", uv=False))
    works, why = inst.per_server_venvs_work()
    assert not works and "`uv` is not installed" in why


def test_python_version_asked_from_the_venv_python_without_pyvenv_cfg(tmp_path: Path) -> None:
    env = fake_venv(tmp_path)
    (env / "pyvenv.cfg").unlink()
    (env / "bin" / "python").write_text("#!/bin/sh\necho 3.13.2\n")
    (env / "bin" / "python").chmod(0o755)
    assert ng_setup.venv_python_version(env) == (3, 13, 2)
    (env / "bin" / "python").write_text("#!/bin/sh\nexit 3\n")
    with pytest.raises(RunError, match="cannot tell the Python version"):
        ng_setup.venv_python_version(env)


def test_not_a_nemo_gym_venv_is_one_sentence_exit_1(tmp_path: Path) -> None:
    with pytest.raises(RunError) as info:
        ng_setup.read_install(tmp_path)
    assert info.value.exit_code == 1
    assert "no nemo-gym installed" in str(info.value) and "\n" not in str(info.value)
    assert ng_setup.installed_nemo_gym_version(tmp_path) is None


@pytest.mark.parametrize(
    ("python", "spec", "ok"),
    [
        ((3, 13, 0), ">=3.13.14", False),
        ((3, 13, 14), ">=3.13.14", True),
        ((3, 14, 0), ">=3.13.14", True),
        ((3, 12, 1), ">=3.12", True),
        ((3, 11, 7), ">=3.12", False),
        ((3, 12, 1), ">=3.10, <3.13", True),
        ((3, 13, 0), ">=3.10,<3.13", False),
        ((3, 13, 5), "==3.13.*", True),
        ((3, 12, 5), "!=3.12.*", False),
        ((3, 13, 5), "~=3.13.2", True),
        ((3, 14, 0), "~=3.13.2", False),
        ((3, 13, 0), "", True),
    ],
)
def test_python_satisfies(python: tuple[int, int, int], spec: str, ok: bool) -> None:
    assert ng_setup.python_satisfies(python, spec) is ok


def test_python_satisfies_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="cannot read"):
        ng_setup.python_satisfies((3, 13, 0), ">=3.13; python_full_version")


# ---- server folders and requirements -------------------------------------------------------------


def test_config_server_folders_mirror_ng_run(tmp_path: Path) -> None:
    site = site_of(fake_venv(tmp_path))
    assert ng_setup.config_server_folders([site / "resources_servers/mcqa/configs/mcqa.yaml"]) == [
        "resources_servers/mcqa",
        "responses_api_agents/simple_agent",
    ]
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [unclosed")
    with pytest.raises(RunError, match="cannot read NeMo Gym config"):
        ng_setup.config_server_folders([bad])


def test_run_server_folders_add_the_common_ones_that_exist(tmp_path: Path) -> None:
    inst = ng_setup.read_install(fake_venv(tmp_path))
    cfg = inst.site_packages / "resources_servers/mcqa/configs/mcqa.yaml"
    # vllm_model and legacy_agent do not exist in this fake package: not linked.
    assert ng_setup.run_server_folders(inst, [cfg]) == [
        "resources_servers/mcqa",
        "responses_api_agents/simple_agent",
        "responses_api_models/openai_model",
    ]
    other = tmp_path / "other.yaml"
    other.write_text(yaml.safe_dump({"x": {"resources_servers": {"nope": {"entrypoint": "app.py"}}}}))
    with pytest.raises(RunError, match="no server folder resources_servers/nope"):
        ng_setup.run_server_folders(inst, [other])


def test_server_requirements_drop_the_nemo_gym_self_install_and_comments(tmp_path: Path) -> None:
    inst = ng_setup.read_install(fake_venv(tmp_path))
    assert ng_setup.server_requirements(inst, "resources_servers/math_with_judge") == ["math-verify==0.8.0"]
    assert ng_setup.server_requirements(inst, "responses_api_agents/simple_agent") == []
    assert ng_setup.server_requirements(inst, "resources_servers/none") == []


def test_missing_requirements_compare_normalized_names(tmp_path: Path) -> None:
    inst = ng_setup.read_install(fake_venv(tmp_path, installed=("Math_Verify-0.8.0",)))
    # math-verify is installed as Math_Verify (normalized names match); tiktoken is not.
    folders = ["resources_servers/mcqa", "resources_servers/math_with_judge"]
    assert ng_setup.missing_requirements(inst, folders) == {"resources_servers/mcqa": ["tiktoken"]}


# ---- one venv for all servers --------------------------------------------------------------------


def test_server_venv_args_link_every_folder_to_the_one_venv(tmp_path: Path) -> None:
    env = fake_venv(tmp_path)
    cfg = site_of(env) / "resources_servers/mcqa/configs/mcqa.yaml"
    links = tmp_path / "links"
    args = ng_setup.server_venv_args(env, [cfg], links)
    assert args == ["+skip_venv_if_present=true", f"+uv_venv_dir={links}"]
    made = sorted(str(p.relative_to(links)) for p in links.glob("*/*/.venv"))
    assert made == [
        "resources_servers/mcqa/.venv",
        "responses_api_agents/simple_agent/.venv",
        "responses_api_models/openai_model/.venv",
    ]
    for p in links.glob("*/*/.venv"):
        assert p.is_symlink() and p.resolve() == env.resolve()
        # What NeMo Gym checks before it skips the venv set-up (setup_env_command).
        assert (p / "bin" / "python").exists() and (p / "bin" / "activate").exists()
    # Idempotent: a second run (or a concurrent one) leaves the same links and no temp files.
    assert ng_setup.server_venv_args(env, [cfg], links) == args
    assert not list(links.rglob(".venv.tmp-*"))
    # A link to another venv is replaced.
    other = tmp_path / "other"
    stale = links / "resources_servers/mcqa/.venv"
    stale.unlink()
    stale.symlink_to(other)
    ng_setup.server_venv_args(env, [cfg], links)
    assert stale.resolve() == env.resolve()


def test_shared_venv_refuses_a_real_venv_in_its_place_and_a_venv_without_activate(tmp_path: Path) -> None:
    env = fake_venv(tmp_path)
    inst = ng_setup.read_install(env)
    links = tmp_path / "links"
    (links / "resources_servers/mcqa/.venv").mkdir(parents=True)
    with pytest.raises(RunError, match="exists and is not a link"):
        ng_setup.prepare_shared_venv_dir(inst, ["resources_servers/mcqa"], links)
    with pytest.raises(RunError, match="not a NeMo Gym server folder"):
        ng_setup.prepare_shared_venv_dir(inst, ["../../etc"], links)
    (env / "bin" / "activate").unlink()
    with pytest.raises(RunError, match="no bin/activate"):
        ng_setup.prepare_shared_venv_dir(inst, ["resources_servers/math_with_judge"], links)


def test_shared_venv_names_a_server_whose_requirements_are_missing(tmp_path: Path) -> None:
    env = fake_venv(tmp_path, installed=())
    cfg = site_of(env) / "resources_servers/mcqa/configs/mcqa.yaml"
    with pytest.raises(RunError) as info:
        ng_setup.server_venv_args(env, [cfg], tmp_path / "links")
    msg = str(info.value)
    assert "resources_servers/mcqa needs tiktoken" in msg and "make setup" in msg and "\n" not in msg
    assert not (tmp_path / "links").exists()  # nothing half-prepared


# ---- half-built per-server venvs -------------------------------------------------------------------


def half_built(venv: Path, packages: tuple[str, ...] = ()) -> Path:
    """What `uv venv` leaves when the `uv pip install` after it fails: python + activate, no packages."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / "bin" / "activate").write_text("")
    sp = venv / "lib" / "python3.12" / "site-packages"
    sp.mkdir(parents=True)
    for pkg in packages:
        (sp / f"{pkg}.dist-info").mkdir()
    return venv


def test_retry_after_failed_start_removes_half_built_per_server_venvs(tmp_path: Path) -> None:
    env = fake_venv(tmp_path, version="0.4.0", requires=">=3.12", python="3.12.1")
    site = site_of(env)
    cfg = site / "resources_servers/mcqa/configs/mcqa.yaml"
    empty = half_built(site / "resources_servers/mcqa/.venv")
    no_reqs = half_built(site / "responses_api_agents/simple_agent/.venv", ("pip-24.0",))
    complete = half_built(site / "responses_api_models/openai_model/.venv", ("nemo_gym-0.4.0", "openai-2.7.2"))
    linked = site / "resources_servers/math_with_judge/.venv"
    linked.symlink_to(env)
    inst = ng_setup.read_install(env)
    folders = ng_setup.run_server_folders(inst, [cfg]) + ["resources_servers/math_with_judge"]
    assert ng_setup.half_built_venvs(inst, folders) == [empty, no_reqs]

    # Per-server venvs work here (0.4.0 on 3.12): the start removes what a failed start left.
    assert ng_setup.server_venv_args(env, [cfg], tmp_path / "unused") == ["+skip_venv_if_present=true"]
    assert not empty.exists() and not no_reqs.exists()
    assert complete.is_dir() and linked.is_symlink()
    assert not (tmp_path / "unused").exists()

    # A venv with nemo-gym but not the server's own requirements (tiktoken) is half-built too, and
    # one under a `+uv_venv_dir` is found when that dir is given.
    elsewhere = half_built(tmp_path / "uvdir/resources_servers/mcqa/.venv", ("nemo_gym-0.4.0",))
    assert ng_setup.half_built_venvs(inst, ["resources_servers/mcqa"], tmp_path / "uvdir") == [elsewhere]
    assert ng_setup.remove_half_built_venvs(inst, ["resources_servers/mcqa"], tmp_path / "uvdir") == [elsewhere]
    assert not elsewhere.exists()


def test_main_describes_a_venv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env = fake_venv(tmp_path)
    assert ng_setup.main([str(env)]) == 0
    out = capsys.readouterr().out
    assert "nemo-gym 0.7.0 (Requires-Python >=3.13.14)" in out and "per-server venvs: no" in out
    assert "+uv_venv_dir=" in out
    assert ng_setup.main([str(tmp_path / "nothing")]) == 1
    assert "error: " in capsys.readouterr().err
    assert ng_setup.main([]) == 2


# ---- the real nemo-gym 0.7.0 venv --------------------------------------------------------------------


def _real_07_env() -> tuple[Path | None, str]:
    """$GYMVERL_NEMO_GYM_ENV when set (the venv the run was told to use), else ./.nemo-gym-venv."""
    cand = os.environ.get("GYMVERL_NEMO_GYM_ENV") or str(REPO / ".nemo-gym-venv")
    version = ng_setup.installed_nemo_gym_version(cand)
    if version and version.startswith("0.7."):
        return Path(cand), ""
    return None, f"{cand} holds nemo-gym {version or 'nothing'}, not 0.7 (`make setup` installs it)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as resp:  # noqa: S310 - loopback only
        return json.loads(resp.read())


@pytest.mark.nemo_gym
@pytest.mark.slow
def test_real_07_mcqa_runs_from_the_one_venv(tmp_path: Path) -> None:
    """nemo-gym 0.7.0: detected from files; a half-built uv venv is recognised; mcqa starts from
    the link directory and scores the reference answer 1.0 and a non-answer 0.0."""
    env, why = _real_07_env()
    if env is None:
        pytest.skip(why)
    inst = ng_setup.read_install(env)
    assert inst.version_tuple[:2] == (0, 7) and inst.requires_python == ">=3.13.14"
    assert not ng_setup.missing_requirements(inst, ["resources_servers/mcqa"])

    # What NeMo Gym's first step (`uv venv --seed --allow-existing`) leaves when the install fails.
    uvdir = tmp_path / "uvdir"
    venv = uvdir / "resources_servers/mcqa/.venv"
    subprocess.run(
        [str(env / "bin/uv"), "venv", "-q", "--seed", "--allow-existing", "--python", str(env / "bin/python"), str(venv)],
        check=True, env={**os.environ, "UV_PYTHON_DOWNLOADS": "never"}, timeout=120,
    )
    assert ng_setup.half_built_venvs(inst, ["resources_servers/mcqa"], uvdir) == [venv]

    site = inst.site_packages
    shipped = yaml.safe_load((site / "resources_servers/mcqa/configs/mcqa.yaml").read_text())
    cfg = tmp_path / "mcqa.yaml"
    cfg.write_text(yaml.safe_dump({k: v for k, v in shipped.items() if "resources_servers" in v}))
    links = tmp_path / "links"
    args = ng_setup.server_venv_args(env, [cfg], links, force_shared=True)
    head, port = _free_port(), _free_port()
    argv = [
        str(env / "bin/ng_run"), f"+config_paths=[{cfg}]",
        "++head_server.host=127.0.0.1", f"++head_server.port={head}",
        f"++mcqa.resources_servers.mcqa.port={port}", *args,
    ]
    # Ray's socket paths must fit AF_UNIX's 107 bytes: pytest's tmp_path is too deep for them.
    ray_tmp = tempfile.mkdtemp(prefix="gv-ray-", dir="/tmp")
    proc_env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    proc_env.update(
        PATH=f"{env}/bin:{os.environ['PATH']}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1",
    )
    log = tmp_path / "ng_run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=site, env=proc_env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while b"servers ready!" not in log.read_bytes():
            assert proc.poll() is None, f"ng_run exited {proc.returncode}: {log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"not ready: {log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert "Starting `mcqa` from venv " + str(links / "resources_servers/mcqa/.venv") in log.read_text()
        row = json.loads((site / "resources_servers/mcqa/data/example.jsonl").read_text().splitlines()[0])

        def answer(text: str) -> dict:
            return {
                "id": "resp_1", "created_at": 0.0, "model": "m", "object": "response",
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "output": [{"id": "msg_1", "type": "message", "role": "assistant", "status": "completed",
                            "content": [{"type": "output_text", "text": text, "annotations": []}]}],
            }

        base = f"http://127.0.0.1:{port}"
        good = _post(base + "/verify", {**row, "response": answer("\\boxed{%s}" % row["expected_answer"])})
        bad = _post(base + "/verify", {**row, "response": answer("I am not sure.")})
        assert (good["reward"], good["mask_sample"]) == (1.0, False)
        assert (bad["reward"], bad["mask_sample"]) == (0.0, False)
        with urllib.request.urlopen(base + "/reverify_mode", timeout=10) as resp:  # noqa: S310
            assert json.loads(resp.read()) == "stateless"
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=30 if sig == signal.SIGINT else 5)
            except subprocess.TimeoutExpired:
                pass
            time.sleep(0.5)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert not left, f"left running in ng_run's process group: {left}"
