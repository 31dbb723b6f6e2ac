"""Collect rollouts with NeMo Gym's own collector, then check what it wrote.

gymverl never re-implements rollout collection: it builds the argument list of the installed
NeMo Gym's collector (`gym eval run --no-serve ...` where that exists, else the legacy
`ng_collect_rollouts +key=value ...`; which one, and how each option is spelled, is read from the
installed NeMo Gym, not assumed), runs it as a subprocess in its own process group, follows the
growing output file for progress, forwards Ctrl-C, and validates the output line by line.

Before starting it checks what would otherwise fail late: every task line is valid, the head
server and each agent the tasks name are reachable, and an existing output is not silently lost
(`overwrite=True` replaces it, `resume=True` continues it with NeMo Gym's own resume).

The collector writes its output file itself, incrementally (that is what makes NeMo Gym's resume
work and keeps partial output after a crash), so that file is not written atomically by gymverl.

Layout: `collect` (this module: the whole collection, check -> run -> validate -> verdict),
`collector` (which collector, its argv), `tasks` (the tasks file, expected rollouts), `output`
(the output file, its sidecars and log), `servers` (running servers checked, configs to start
them), `run` (the subprocess and its progress), `quality` (NeMo Gym 0.7.0's health check) and
`result` (`CollectResult` and its verdict).
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

# Every name imported from `gymverl.collect` before it became a package stays importable here.
# `collect` below calls `detect_collector` and `check_servers` through this module's names, so a
# test that patches `gymverl.collect.detect_collector` still reaches the run.
from gymverl.collect.errors import CollectError
from gymverl.collect.collector import (  # noqa: F401
    GYM_FLAGS,
    HYDRA_KEYS,
    Collector,
    _gym_flags,
    _hydra_keys,
    collector_argv,
    detect_collector,
    head_overrides,
)
from gymverl.collect.output import default_log_path, prepare_output, sidecar_paths
from gymverl.collect.tasks import TaskCheck, check_tasks, expected_rollouts
from gymverl.collect.servers import (  # noqa: F401
    _INTERP,
    _get,
    _resolve,
    _server_config,
    agent_config_hint,
    check_servers,
    resolve_server_configs,
    start_hint,
)
from gymverl.collect.run import LineCounter, RunResult, failure_reason, run_collector
from gymverl.collect.quality import QUALITY_SUMMARY, ROLLOUT_VERDICTS, quality_report, quality_sentence  # noqa: F401
from gymverl.collect.result import CollectResult, _verdict
from gymverl.errors import EXIT_FAILED
from gymverl.files import scratch_dir
from gymverl.overrides import override, override_key
from gymverl.limits import DEFAULT_HEAD_URL
from gymverl.nemo_gym import NemoGymError, NemoGymServers, find_env
from gymverl.progress import OnProgress
from gymverl.records import validate_file
from gymverl.sidecars import rollout_pairs, settle_failures


def collect(
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    agent: str | None = None,
    num_samples: int = 1,
    limit: int | None = None,
    concurrency: int | None = None,
    overwrite: bool = False,
    resume: bool = False,
    head_url: str = DEFAULT_HEAD_URL,
    servers: Sequence[str] = (),
    policy_url: str | None = None,
    policy_model: str = "policy",
    policy_api_key: str = "dummy",
    model_type: str = "openai_model",
    nemo_gym_env: str | os.PathLike[str] | None = None,
    extra: Sequence[str] = (),
    log_path: str | os.PathLike[str] | None = None,
    rejects: str | os.PathLike[str] | None = None,
    on_progress: OnProgress | None = None,
    on_stage: Callable[[str, dict[str, Any]], None] | None = None,
    server_startup_timeout: float = 600.0,
) -> CollectResult:
    """Check, run NeMo Gym's collector (starting `servers` for the duration if given), validate the output.

    Raises CollectError (with `.code`) when it cannot start; otherwise returns a CollectResult whose
    `code` is 0 (all expected rollouts written and valid), 1 (collector failed, rollouts missing,
    failed or rejected) or 130 (interrupted).
    """
    stage = on_stage or (lambda name, info: None)
    if num_samples < 1:
        raise CollectError(f"--num-samples must be at least 1, got {num_samples}.")
    if limit is not None and limit < 1:
        raise CollectError(f"--limit must be at least 1, got {limit}.")
    if concurrency is not None and concurrency < 1:
        raise CollectError(f"--concurrency must be at least 1, got {concurrency}.")
    try:
        env = find_env(nemo_gym_env)
    except NemoGymError as exc:
        raise CollectError(str(exc)) from None
    tasks = check_tasks(input, limit=limit, agent=agent)
    stage("tasks", {"tasks": tasks.tasks, "lines": tasks.lines, "agents": dict(tasks.agents)})
    if tasks.rollout_lines:
        stage(
            "warning",
            {"message": f"{tasks.rollout_lines} of the {tasks.tasks} tasks in {tasks.path} are rollouts themselves (they have "
             "`response` and `reward`): each is asked again as a task of its own, so the n rollouts of one task become n "
             "tasks; collect from the NeMo Gym input (tasks) file instead."},
        )
    out = Path(output).resolve()
    prepare_output(out, overwrite=overwrite, resume=resume)
    collector = detect_collector(env)
    expected = expected_rollouts(tasks, num_samples, out, resume)
    if resume and expected != tasks.tasks * num_samples:
        # NeMo Gym's resume replays the first run's materialized inputs, not this run's options.
        stage(
            "warning",
            {"message": f"resuming the earlier run's {expected} rollouts (its materialized inputs); "
             f"this run's --num-samples/--limit ({tasks.tasks} tasks × {num_samples}) do not apply."},
        )
    log = Path(log_path) if log_path else default_log_path(out)

    with contextlib.ExitStack() as stack:
        if servers:
            configs = resolve_server_configs(env, servers, policy_url, model_type, agents=tasks.agents)
            stage("servers", {"configs": [str(c) for c in configs]})
            ng = NemoGymServers(
                configs,
                env=env,
                policy_base_url=policy_url,
                policy_model_name=policy_model,
                policy_api_key=policy_api_key,
                startup_timeout=server_startup_timeout,
                log_path=log.with_name(log.stem.removesuffix("_collect") + "_servers.log"),
            )
            try:
                stack.enter_context(ng)
            except NemoGymError as exc:
                raise CollectError(str(exc), code=EXIT_FAILED) from None
            head_url = f"http://127.0.0.1:{ng.head_port}"
        agent_urls = check_servers(head_url, tasks.agents, env=env)
        if not any(override_key(e) == "hydra.run.dir" for e in extra):
            # NeMo Gym's collector (`gym eval run`, `ng_collect_rollouts`) reads its options through
            # Hydra: left alone it writes outputs/<date>/<time>/ (its own log, which the collect log
            # holds too) into the user's working directory.
            extra = [override("hydra.run.dir", stack.enter_context(scratch_dir(out.parent, kind="hydra"))), *extra]
        argv = collector_argv(
            collector,
            input=tasks.path,
            output=out,
            agent=agent,
            num_samples=num_samples,
            limit=limit,
            concurrency=concurrency,
            resume=resume,
            head_url=head_url,
            extra=extra,
        )
        stage("collect", {"argv": argv, "expected": expected, "log": str(log), "agents": agent_urls})
        started = time.time()
        run = run_collector(argv, env=env, output=out, log_path=log, on_progress=on_progress, total=expected or None)
        # Servers stop here (end of the with-block), before validation reads the file.

    validation = None
    if out.exists():
        stage("validate", {"output": str(out)})
        validation = validate_file(out, rejects=rejects)
    fail_path = sidecar_paths(out)["failures"]
    failures = None
    if fail_path.exists():
        # One line per failed attempt, appended across --resume runs: a (task, repeat) that later
        # succeeded (it is in the output) is history, not a failure.
        present, _ = rollout_pairs(out) if out.exists() else (set(), 0)
        failures = settle_failures(fail_path, present)
    result = CollectResult(
        output=str(out),
        log=str(log),
        argv=argv,
        expected=expected,
        run=run,
        validation=validation,
        failures_path=str(fail_path) if failures is not None and (failures.failed or failures.attempts) else None,
        ok=False,
        code=EXIT_FAILED,
        message="",
        servers=agent_urls,
        failures=failures,
        quality=quality_report(out, since=started),
    )
    _verdict(result)
    return result


__all__ = [
    "DEFAULT_HEAD_URL",
    "CollectError",
    "CollectResult",
    "Collector",
    "LineCounter",
    "RunResult",
    "TaskCheck",
    "agent_config_hint",
    "check_servers",
    "check_tasks",
    "collect",
    "collector_argv",
    "default_log_path",
    "detect_collector",
    "expected_rollouts",
    "failure_reason",
    "head_overrides",
    "prepare_output",
    "quality_report",
    "quality_sentence",
    "resolve_server_configs",
    "run_collector",
    "sidecar_paths",
]
