"""Shared test fixtures: repository paths, the shared real NeMo Gym rollouts, a tiny local model."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO / "sample_data"
# CI lays shared/ beside the clone; a session has it at ../shared too.
SHARED = Path(os.environ.get("GYMVERL_SHARED", REPO.parent / "shared"))
FIXTURES = SHARED / "fixtures" / "nemo_gym_rollouts"
FIXTURE_FILES = sorted(FIXTURES.glob("*.jsonl"))
NO_SHARED = f"shared/ not found at {SHARED} (only CI and development sessions have it beside the repo)"


def fixture_params(name: str = "stem") -> list[object]:
    """`FIXTURE_FILES` as parameters with ids (`p.stem` or `p.name`); without shared/, one parameter
    skipped with the reason (an empty list would skip as "got empty parameter set")."""
    if not FIXTURE_FILES:
        return [pytest.param(None, marks=pytest.mark.skip(reason=NO_SHARED), id="no-shared")]
    return [pytest.param(p, id=getattr(p, name)) for p in FIXTURE_FILES]


def pytest_report_header(config: pytest.Config) -> str:
    """Which NeMo Gym the real-server tests run against (0.7.0 after `make setup`; 0.4.0 with
    `make test-nemo-gym-0.4`), detected from the install, never assumed."""
    from gymverl.nemo_gym import NemoGymError, find_env, nemo_gym_version

    try:
        env = find_env()
    except NemoGymError as exc:
        return f"nemo-gym: none ({exc})"
    return f"nemo-gym: {nemo_gym_version(env) or 'unknown version'} at {env}"


@pytest.fixture(scope="session")
def fixture_files() -> list[Path]:
    """The real rollout files written by NeMo Gym (shared/, never copied into the repo).

    A user's clone has no ../shared: skipped with the reason. Where shared/ exists (CI, sessions)
    but the fixtures are missing, that is a broken checkout: fail loudly."""
    if not SHARED.is_dir():
        pytest.skip(NO_SHARED)
    assert FIXTURE_FILES, f"shared NeMo Gym rollout fixtures not found under {FIXTURES}"
    return FIXTURE_FILES


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2 + BPE tokenizer with a chat template, built locally once per session."""
    from gymverl.tiny import build_tiny_model

    texts = [line for p in [SAMPLE_DATA / "rollouts.jsonl"] for line in p.read_text().splitlines()]
    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"), texts)


@pytest.fixture()
def model_dir(tmp_path: Path, tiny_model: Path) -> Path:
    """Just enough of a model directory for the checks: config.json and a tokenizer with a chat
    template (the plan measures every row with it); the argv tests never load the weights."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def nemo_gym_env() -> Path:
    """The NeMo Gym venv (made by `make setup`); a missing one fails loudly, it is never skipped."""
    from gymverl.nemo_gym import find_env

    return find_env()


@pytest.fixture(scope="session")
def gym_servers(nemo_gym_env: Path, tmp_path_factory: pytest.TempPathFactory):
    """Real NeMo Gym resources servers on 127.0.0.1 for the whole session: math_with_judge
    (rule-based: math-verify), xlam_fc (function-call matching) and mcqa; `.url(name)` gives each URL.

    Whatever release the venv holds (0.7.0 by default, 0.4.0 for `make test-nemo-gym-0.4`):
    `gymverl.nemo_gym` picks the servers' venvs and readiness check for it."""
    from gymverl.nemo_gym import running_resources_servers

    log = tmp_path_factory.mktemp("ng") / "ng_run.log"
    with running_resources_servers(["math_with_judge", "xlam_fc", "mcqa"], env=nemo_gym_env, log_path=log) as servers:
        yield servers


def marked_processes(var: str, mark: str) -> list[str]:
    """Live processes whose environment has `var=mark` (a test marks what it starts: ng_run, its
    servers, Ray, the collector), as "PID name"; zombies are already gone and do not count."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "name", "status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get(var) == mark:
                found.append(f"{p.pid} {p.info['name']}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):  # noqa: ANN201
    """Show the end of ng_run's output in the report when NeMo Gym servers failed to start.

    The error names a log file under the test's temporary folder, which is gone by the time
    anyone reads a CI report; the lines themselves (`NemoGymError.tail`) are what explain it.
    """
    outcome = yield
    report = outcome.get_result()
    tail = getattr(call.excinfo.value, "tail", None) if call.excinfo is not None else None
    if tail:
        report.sections.append(("ng_run output, last lines", str(tail)))
