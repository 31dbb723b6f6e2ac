"""`gymverl train-online`: online RL on NeMo Gym environments with VeRL's `python -m verl.trainer.main_ppo`.

The command (an argv list) carries every override the `gymverl_env` agent loop and the reward need:
GRPO, the RL parquet, the model, the rollout engine, `n` samples per prompt, the agent-loop YAML
(written to `OUTDIR/gymverl_agent_loops.yaml`, declaring `gymverl_env` with the resources-server
specs, so VeRL's rollout workers -- other processes -- find the servers without environment
variables), `gymverl_env` as the default loop (every row plays its episode; `reward_score` comes from
the episode's `/verify`), and `gymverl.reward.compute_score` with the same servers for rows routed to
a stateless loop. Hydra must accept it: tests compose it with VeRL's own `ppo_trainer.yaml`.

Servers: each row names its agent (`extra_info.nemo_gym.agent_ref`, e.g.
`example_multi_step_simple_agent`); its resources server (`example_multi_step`, NeMo Gym's naming,
else the shipped config that defines the agent) is used from `--server NAME=URL` when given, else
started on 127.0.0.1 from the NeMo Gym venv for the run (`gymverl.nemo_gym.running_resources_servers`,
the starter `rescore`/`demo` use; `--servers NAME` starts more) and stopped after it, on every path.

Running (`run_online`): the same runner as train-offline (`gymverl.train.run_training`: progress
events, OUTDIR/train.log, metrics.jsonl, gymverl-train.json, Ctrl-C stops VeRL's process group),
with the servers started first and stopped last.

`--rollout cpu` (smoke mode, tiny models) uses gymverl's CPU rollout replica (gymverl/cpu_rollout.py)
with the CPU platform plugin: `CPU_ROLLOUT_OVERRIDES` join the command and `CPU_ROLLOUT_ENV` its
environment (`online_env`; see `cpu_rollout_note`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from gymverl.formats.rl import ENV_AGENT
from gymverl.errors import UsageError
from gymverl.overrides import override, override_key
from gymverl.runner import RunPlan, StepKeys
from gymverl.verify import parse_servers, unreachable_servers  # noqa: F401 (unreachable_servers: re-exported)


@dataclass(frozen=True)
class RolloutEngine:
    """A `--rollout` choice: VeRL's `actor_rollout_ref.rollout.name`, the package its replica imports,
    and whether it needs CUDA GPUs (a CPU replica, once registered, would not)."""

    name: str
    package: Optional[str]
    gpu: bool = True


# `--rollout` choices; add an entry to offer another registered RolloutReplica.
ROLLOUT_ENGINES: dict[str, RolloutEngine] = {
    "vllm": RolloutEngine("vllm", "vllm"),
    "sglang": RolloutEngine("sglang", "sglang"),
    # gymverl's own replica (gymverl/cpu_rollout.py): transformers on CPU, smoke mode for tiny models.
    "cpu": RolloutEngine("cpu", None, gpu=False),
}
ROLLOUTS = tuple(ROLLOUT_ENGINES)
# `--rollout cpu` (smoke mode, tiny models): VeRL's CPU platform plugin and gymverl's CPU rollout
# replica (gymverl/cpu_rollout.py), loaded in every VeRL process by its external-module hook.
CPU_ROLLOUT_ENV = {
    "VERL_USE_EXTERNAL_MODULES": "gymverl.verl_cpu,gymverl.cpu_rollout",
    "VERL_PLATFORM": "cpu",
    # The FSDP engine is registered for cuda/npu only; this picks its class, not the device.
    "VERL_ENGINE_DEVICE": "cuda",
    "TOKENIZERS_PARALLELISM": "false",
}
# What main_ppo needs on a host without a GPU (each one a blocker met on VeRL 0.9.1, see cpu_rollout_note).
CPU_ROLLOUT_OVERRIDES: list[tuple[str, object]] = [
    ("trainer.device", "cpu"),
    # The v1 trainer (the default) needs the transfer_queue package; the legacy RayPPOTrainer does not.
    ("trainer.use_v1", False),
    # ResourcePoolManager only counts Ray "GPU" resources; a logical one (nothing asks for it: the
    # CPU platform makes the workers ask Ray for CPUs).
    ("+ray_kwargs.ray_init.num_gpus", 1),
    ("ray_kwargs.ray_init.num_cpus", 4),
    ("actor_rollout_ref.actor.strategy", "fsdp2"),
    ("actor_rollout_ref.model.use_remove_padding", False),
    ("+actor_rollout_ref.model.override_config.attn_implementation", "sdpa"),
    ("actor_rollout_ref.model.enable_gradient_checkpointing", False),
    ("actor_rollout_ref.actor.use_torch_compile", False),
    ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", 1),
    ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", 1),
    ("actor_rollout_ref.rollout.tensor_model_parallel_size", 1),
    # VeRL's defaults start 8 agent-loop, 8 reward and 8 dataloader workers.
    ("actor_rollout_ref.rollout.agent.num_workers", 1),
    ("reward.num_workers", 1),
    ("data.dataloader_num_workers", 0),
]
# VeRL 0.9.1's defaults (verl/trainer/config/data/legacy_data.yaml, actor/actor.yaml): prompts per
# step and per actor update. Capped to the dataset, so a small one still makes a batch.
VERL_PPO_BATCH_SIZE = 1024
VERL_PPO_MINI_BATCH_SIZE = 256
LOOP_YAML = "gymverl_agent_loops.yaml"
NG_LOG = "ng_run.log"  # the servers' output, in OUTDIR
# What a not-yet-started server's URL reads as in a plan (--dry-run): chosen when it starts.
PENDING_URL = "http://127.0.0.1:<port>"
# main_ppo's console lines (verl/trainer/ppo/metric_utils.py): the policy-gradient loss, tokens per
# step, the rollouts' mean reward; validation lines carry `val-core/...` / `val-aux/...`.
PPO_KEYS = StepKeys(loss="actor/pg_loss", tokens="perf/total_num_tokens", val_prefix="val-", reward="critic/score/mean")
# main_ppo's driver shuts Ray down itself after SIGINT; then proc's ladder reaches every worker.
PPO_GRACE = 30.0


class OnlineError(UsageError):
    """train-online cannot build its command (one sentence)."""


@dataclass
class OnlineOptions:
    """What `gymverl train-online` was asked for."""

    data: Path
    model: str
    out: Path
    servers: list[str]  # `NAME=URL` (or `URL`) specs of running resources servers
    val: Optional[Path] = None
    nproc: int = 1
    rollout: str = "vllm"
    algorithm: str = "grpo"
    n_samples: int = 4
    max_turns: int = 8
    max_prompt_length: int = 4096
    max_response_length: int = 2048
    on_failure: str = "raise"
    overrides: list[str] = field(default_factory=list)
    start: list[str] = field(default_factory=list)  # resources servers to start (`--servers NAME`)
    nemo_gym_env: Optional[Path] = None  # where they start from (default: gymverl.nemo_gym.find_env)
    server_timeout: float = 600.0  # seconds the servers get to become ready
    micro_batch_size: int = 4  # rows per forward pass per GPU (actor update and log-prob passes)
    resume: bool = False
    overwrite: bool = False


@dataclass
class OnlinePlan(RunPlan):
    """A checked train-online run: the main_ppo command and the servers to start for it.

    `argv` shows servers still to start at PENDING_URL until `run_online` has started them.
    """

    options: OnlineOptions
    rows: int
    start: list[str]  # resources servers gymverl starts (and stops) for the run
    agents: dict[str, str]  # agent (rows' agent_ref) -> the resources server it plays, for started ones
    servers: dict[str, str] = field(default_factory=dict)  # started server -> URL (once running)
    notes: list[str] = field(default_factory=list)
    loop_yaml: str = ""  # the agent-loop YAML the run writes into OUTDIR (LOOP_YAML) when it starts


def _check_options(opts: OnlineOptions) -> None:
    if opts.rollout not in ROLLOUT_ENGINES:
        raise OnlineError(f"--rollout must be one of {', '.join(ROLLOUTS)}, not {opts.rollout!r}.")
    if opts.algorithm != "grpo":
        raise OnlineError(f"--algorithm {opts.algorithm!r} is not supported yet (grpo only).")
    if opts.n_samples < 1 or opts.nproc < 1 or opts.micro_batch_size < 1:
        raise OnlineError("--n-samples, --nproc and the micro batch size must be 1 or more.")
    if opts.on_failure not in ("raise", "mask"):
        raise OnlineError(f"--on-failure must be raise or mask, not {opts.on_failure!r}.")
    if opts.servers:
        parse_servers(opts.servers)  # one sentence for a bad spec


def _count_rows(opts: OnlineOptions) -> int:
    if not opts.data.exists():
        raise OnlineError(f"data file not found: {opts.data}")
    if opts.val is not None and not opts.val.exists():
        raise OnlineError(f"--val file not found: {opts.val}")
    rows = 0
    for path in (opts.data, opts.val):
        if path is not None:
            n = check_rows_select_env_loop(path)
            rows = n if path is opts.data else rows
    if rows < 1:
        raise OnlineError(f"{opts.data}: has no rows to train on.")
    return rows


def server_specs_for(opts: OnlineOptions, started: Mapping[str, str], agents: Mapping[str, str] | None = None) -> list[str]:
    """The `NAME=URL` specs the loop and the reward get: the user's `--server` specs, then
    `NAME=URL` per started server, plus `AGENT=URL` for a row agent whose name does not start with
    its server's (the loop routes an agent to the longest NAME it starts with)."""
    specs = list(opts.servers)
    for name, url in started.items():
        specs.append(f"{name}={url}")
    for agent, name in (agents or {}).items():
        if name in started and not agent.startswith(name):
            specs.append(f"{agent}={started[name]}")
    return specs


def agent_loop_yaml(opts: OnlineOptions, started: Mapping[str, str] | None = None, agents: Mapping[str, str] | None = None) -> str:
    """The text of the agent-loop YAML (`OUTDIR/gymverl_agent_loops.yaml`) that `build_online_command`
    writes for `opts`: the `gymverl_env` loop with its server specs (`server_specs_for`), max turns
    and failure policy. `started`/`agents` as in `build_online_command`."""
    from gymverl.env_loop import loop_config_text

    spec = " ".join(server_specs_for(opts, started or {}, agents))
    return loop_config_text(server=spec, max_turns=opts.max_turns, on_failure=opts.on_failure)


def build_online_command(
    opts: OnlineOptions,
    *,
    write_loop_yaml: bool = True,
    started: Mapping[str, str] | None = None,
    agents: Mapping[str, str] | None = None,
    rows: Optional[int] = None,
) -> list[str]:
    """The main_ppo argv for `opts` (python executable first); writes the agent-loop YAML into
    `opts.out` unless `write_loop_yaml` is False. `started`: {resources server: URL} of servers
    gymverl started (or will: PENDING_URL), `agents`: {row agent: its server} for them. Raises
    OnlineError for unusable options. The user's pass-through overrides win over gymverl's for the
    same key (Hydra refuses a key given twice). `rows`: DATA's row count when already checked
    (`check_rows_select_env_loop`), so the parquet is not read again."""
    _check_options(opts)
    if not opts.servers and not started:
        raise OnlineError("give the resources servers with --server NAME=URL or start them with --servers NAME (one per environment).")
    rows = _count_rows(opts) if rows is None else rows
    out = opts.out.resolve()
    spec = " ".join(server_specs_for(opts, started or {}, agents))
    loop_yaml = out / LOOP_YAML
    if write_loop_yaml:
        out.mkdir(parents=True, exist_ok=True)
        loop_yaml.write_text(agent_loop_yaml(opts, started, agents))
    reward_py = Path(__import__("gymverl.reward", fromlist=["x"]).__file__).resolve()
    val = (opts.val or opts.data).resolve()
    # One builder quotes every value by Hydra's grammar (gymverl.overrides): a comma or space in a
    # path or server spec must not become a sweep or split the argument.
    settings: list[tuple[str, object]] = [
        ("algorithm.adv_estimator", opts.algorithm),
        ("data.train_files", [str(opts.data.resolve())]),
        ("data.val_files", [str(val)]),
        ("data.max_prompt_length", opts.max_prompt_length),
        ("data.max_response_length", opts.max_response_length),
        # VeRL's default (1024 prompts per step, drop_last) leaves a small dataset with no batch at
        # all, and says so only after Ray and the rollout engine have started on the GPUs.
        ("data.train_batch_size", min(VERL_PPO_BATCH_SIZE, rows)),
        ("actor_rollout_ref.actor.ppo_mini_batch_size", min(VERL_PPO_MINI_BATCH_SIZE, rows)),
        # VeRL 0.9.1 has no default for these and stops (an AssertionError building its actor
        # config) when none is set and dynamic batching is off.
        ("actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu", opts.micro_batch_size),
        ("actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu", opts.micro_batch_size),
        ("actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu", opts.micro_batch_size),
        # Absolute: Ray's workers need not share this working directory (a Hub id stays as given).
        ("actor_rollout_ref.model.path", str(Path(opts.model).expanduser().resolve()) if Path(opts.model).expanduser().exists() else str(opts.model)),
        ("actor_rollout_ref.rollout.name", ROLLOUT_ENGINES[opts.rollout].name),
        ("actor_rollout_ref.rollout.n", opts.n_samples),
        ("actor_rollout_ref.rollout.calculate_log_probs", True),
        ("actor_rollout_ref.rollout.agent.agent_loop_config_path", str(loop_yaml)),
        ("actor_rollout_ref.rollout.agent.default_agent_loop", ENV_AGENT),
        ("reward.custom_reward_function.path", str(reward_py)),
        ("reward.custom_reward_function.name", "compute_score"),
        ("+reward.custom_reward_function.reward_kwargs.server", spec),
        ("trainer.default_local_dir", str(out / "checkpoints")),
        # gymverl checks OUTDIR itself (train.check_out_dir): resume only when asked, never by accident.
        ("trainer.resume_mode", "auto" if opts.resume else "disable"),
        ("trainer.n_gpus_per_node", opts.nproc),
        ("trainer.nnodes", 1),
        # console: the progress view reads its step lines; file: OUTDIR/metrics.jsonl (VERL_FILE_LOGGER_PATH).
        ("trainer.logger", ["console", "file"]),
        # Hydra would otherwise write outputs/<date>/<time>/ into the user's working directory.
        ("hydra.run.dir", str(out / "hydra")),
    ]
    if opts.rollout == "cpu":
        settings += CPU_ROLLOUT_OVERRIDES
    # One value per key (Hydra refuses a key given twice): a later setting replaces an earlier one.
    ours = [override(k, v) for k, v in dict(settings).items()]
    user_keys = {override_key(o) for o in opts.overrides}
    ours = [o for o in ours if override_key(o) not in user_keys]
    return [sys.executable, "-m", "verl.trainer.main_ppo", *ours, *opts.overrides]


def row_agents(path: Path) -> dict[Optional[str], int]:
    """{agent name (the row's `extra_info.nemo_gym.agent_ref`), or None: row count} of RL parquet `path`."""
    import orjson
    import pyarrow.parquet as pq

    from gymverl.records import agent_name

    counts: dict[Optional[str], int] = {}
    if "extra_info" not in pq.read_schema(path).names:
        rows = pq.ParquetFile(path).metadata.num_rows
        return {None: rows} if rows else {}
    for extra in pq.read_table(path, columns=["extra_info"]).column("extra_info").to_pylist():
        if isinstance(extra, (str, bytes)):
            try:
                extra = orjson.loads(extra)
            except orjson.JSONDecodeError:
                extra = None
        raw = extra.get("nemo_gym") if isinstance(extra, dict) else None
        try:
            ng = orjson.loads(raw) if isinstance(raw, (str, bytes)) else raw
        except orjson.JSONDecodeError:
            ng = None
        name = agent_name(ng) if isinstance(ng, dict) else None
        counts[name] = counts.get(name, 0) + 1
    return counts


def resources_server_for_agent(env: Path, agent: str) -> Optional[str]:
    """The installed NeMo Gym resources server (folder name) that plays `agent`'s tasks, or None.

    NeMo Gym's naming first (`example_multi_step_simple_agent` -> `example_multi_step`,
    `gymverl.demo.server_for_agent`), else the server folder of the shipped config that defines the
    agent (`gymverl.collect.agent_config_hint`)."""
    from gymverl.collect import agent_config_hint
    from gymverl.demo import server_for_agent
    from gymverl.nemo_gym import package_dir

    root = package_dir(env) / "resources_servers"
    name = server_for_agent(agent)
    if (root / name / "configs").is_dir():
        return name
    hint = agent_config_hint(env, agent)
    if hint and hint.startswith("resources_servers/"):
        return hint.split("/")[1]
    return None


def _routed(agent: str, names: Any) -> Optional[str]:
    """The NAME among `names` that routes `agent` (the same rule as the loop: exact, else the longest prefix)."""
    names = list(names)
    if agent in names:
        return agent
    prefixes = [n for n in names if agent.startswith(n)]
    return max(prefixes, key=len) if prefixes else None


def plan_servers(opts: OnlineOptions, agents: Mapping[Optional[str], int]) -> tuple[list[str], dict[str, str], list[str]]:
    """(servers to start, {agent: started server}, notes) for rows playing `agents` ({agent: rows}).

    An agent routed by a `--server NAME=URL` uses it; else one of `--servers` that routes it; else
    a plain `--server URL` (the loop's default); else its resources server is started too. Raises
    OnlineError (one sentence) for an agent whose server is neither given nor installed, an unknown
    `--servers` name, rows naming no agent with nothing to send them to, or no NeMo Gym venv."""
    from gymverl.demo import server_for_agent
    from gymverl.nemo_gym import NemoGymError, find_env, resources_server_config

    pool, routes = parse_servers(opts.servers) if opts.servers else ([], {})
    start = list(dict.fromkeys(n.strip() for s in opts.start for n in s.split(",") if n.strip()))
    env: Optional[Path] = None

    def nemo_gym() -> Path:
        nonlocal env
        if env is None:
            try:
                env = find_env(opts.nemo_gym_env)
            except NemoGymError as exc:
                raise OnlineError(str(exc)) from None
        return env

    for name in start:
        try:
            resources_server_config(nemo_gym(), name)
        except NemoGymError as exc:
            raise OnlineError(f"--servers: {exc}") from None
    mapped: dict[str, str] = {}
    notes: list[str] = []
    to_pool: list[str] = []
    for agent, count in agents.items():
        if agent is None or _routed(agent, routes):
            continue
        named = _routed(agent, start)
        if named:
            mapped[agent] = named
            continue
        if pool:
            to_pool.append(agent)  # the loop sends agents without a route to the plain --server URL
            continue
        name = resources_server_for_agent(nemo_gym(), agent)
        if name is None:
            raise OnlineError(
                f"{count} row(s) play agent {agent!r}, whose resources server is neither given (--server NAME=URL, "
                f"--servers NAME) nor installed in the NeMo Gym venv {nemo_gym()}."
            )
        mapped[agent] = name
        if name not in start:
            start.append(name)
            notes.append(f"starting {name} for the {count} row(s) of agent {agent}")
    envs = sorted({server_for_agent(a) for a in to_pool})
    if len(envs) > 1:
        # One resources server plays one environment: the episodes of the others will fail there
        # (a failure, never a reward), so say it up front.
        notes.append(
            f"the rows play {len(envs)} environments ({', '.join(envs)}) but the plain --server URL is one server: "
            "give one --server NAME=URL per environment unless it serves them all"
        )
    nameless = agents.get(None, 0)
    if nameless and not pool:
        only = list(dict.fromkeys([*routes, *start]))
        if len(only) != 1:
            raise OnlineError(
                f"{nameless} row(s) name no agent (agent_ref), so gymverl cannot tell which resources server plays them; "
                "give it with --server URL."
            )
    return start, mapped, notes


def _check_chat_template(model: str) -> None:
    """OnlineError unless local model directory `model` has a tokenizer with a chat template (VeRL
    renders every prompt, tools included, with it)."""
    from gymverl.train import TrainError, load_tokenizer

    try:
        load_tokenizer(model)
    except TrainError as exc:
        raise OnlineError(str(exc).replace("SFT needs one", "VeRL renders every prompt with it")) from None


def check_runtime(opts: OnlineOptions) -> None:
    """What main_ppo needs on this machine, checked before anything starts (OnlineError, one sentence):
    the rollout engine's package, VeRL's TransferQueue (its V1 PPO trainer imports it), CUDA GPUs."""
    from gymverl.train import check_gpus

    engine = ROLLOUT_ENGINES[opts.rollout]
    if engine.package and importlib.util.find_spec(engine.package) is None:
        raise OnlineError(
            f"--rollout {opts.rollout} needs the {engine.package} package, which is not installed in this Python "
            f"({sys.executable}); install the {engine.package} version VeRL 0.9.1 supports beside the torch you have, "
            "or use --rollout cpu for a CPU smoke run with a tiny model."
        )
    v1 = [o.split("=", 1)[1].strip().lower() for o in opts.overrides if "=" in o and override_key(o) == "trainer.use_v1"]
    legacy = v1[-1] in ("false", "0") if v1 else opts.rollout == "cpu"  # CPU_ROLLOUT_OVERRIDES: use_v1=False
    if not legacy and importlib.util.find_spec("transfer_queue") is None:
        # verl/trainer/main_ppo.py (TaskRunnerV1.run) imports it inside a Ray actor, after Ray has started.
        raise OnlineError(
            "VeRL's PPO trainer (main_ppo, trainer.use_v1) needs the TransferQueue package, which is not installed "
            f"in this Python ({sys.executable}); install it with pip install 'TransferQueue>=0.1.10' (VeRL's verl-core extra)."
        )
    if engine.gpu:
        check_gpus(opts.nproc, none_visible=f"--rollout {opts.rollout} rolls out and trains on CUDA GPUs, but no CUDA GPU is visible here "
                   "(--rollout cpu runs a smoke test on the CPU with a tiny model).")


def _check_out(opts: OnlineOptions) -> Optional[str]:
    from gymverl.train import check_out_dir

    out = opts.out
    # A directory holding only the agent-loop YAML (which --dry-run wrote in earlier versions) counts as new.
    if out.is_dir() and [p.name for p in out.iterdir()] == [LOOP_YAML]:
        return None
    return check_out_dir(out, opts.resume, opts.overwrite)


def plan_online(opts: OnlineOptions, *, dry_run: bool = False) -> OnlinePlan:
    """Check everything a user expects checked before anything starts, and build the command.

    Each problem is one sentence (OnlineError / TrainError, exit 2): options and overrides, the
    rows (RL parquet naming the env loop), the model path and its chat template, OUTDIR
    (`train.check_out_dir`: --resume / --overwrite), the servers the rows need (`plan_servers`), this
    machine (`check_runtime`: rollout engine, TransferQueue, GPUs) and that every `--server` answers
    (with `dry_run` these two become notes: a dry run may be made elsewhere); then VeRL's own config
    must accept the command (`check_with_verl_config`). Starts nothing; with `dry_run` it writes the agent-loop YAML
    (servers still to start at PENDING_URL)."""
    from gymverl.runner import METRICS
    from gymverl.train import check_model, check_overrides

    _check_options(opts)
    check_overrides(opts.overrides)
    rows = _count_rows(opts)
    agents: dict[Optional[str], int] = {}
    for path in filter(None, (opts.data, opts.val)):
        for agent, n in row_agents(path).items():
            agents[agent] = agents.get(agent, 0) + n
    notes: list[str] = []
    note = check_model(opts.model)
    if note:
        notes.append(note)
    note = _check_out(opts)
    if note:
        notes.append(note)
    if Path(opts.model).expanduser().is_dir():
        _check_chat_template(opts.model)
    start, mapped, server_notes = plan_servers(opts, agents)
    notes += server_notes
    if not opts.servers and not start:
        raise OnlineError("give the resources servers with --server NAME=URL or start them with --servers NAME (one per environment).")
    if dry_run:
        try:  # a dry run may be made on another machine than the run: say it, do not refuse
            check_runtime(opts)
        except UsageError as exc:
            notes.append(f"this machine cannot run it: {exc}")
    else:
        check_runtime(opts)
    down = unreachable_servers(opts.servers)
    if down and not dry_run:
        raise OnlineError(
            f"--server {down[0]} {down[1]}; start that resources server, or leave it out and train-online starts the "
            "rows' servers itself (--servers NAME)."
        )
    if down:
        notes.append(f"--server {down[0]} {down[1]} at the moment; the run will refuse to start until it is a running resources server")
    pending = {name: PENDING_URL for name in start}
    # Nothing is written here, dry run or not: `run_online` writes the YAML once its servers run.
    argv = build_online_command(opts, write_loop_yaml=False, started=pending, agents=mapped, rows=rows)
    check_with_verl_config(argv)
    env = {
        "PYTHONUNBUFFERED": "1",  # step lines must reach the progress view as they happen
        "VERL_FILE_LOGGER_PATH": str(opts.out.resolve() / METRICS),
        **online_env(opts),
    }
    return OnlinePlan(
        options=opts, argv=argv, env=env, rows=rows, start=start, agents=mapped, notes=notes,
        loop_yaml=agent_loop_yaml(opts, pending, mapped),
    )


def run_online(
    plan: OnlinePlan,
    on_event: Optional[Callable[[Any], None]] = None,
    on_servers: Optional[Callable[[str, dict[str, str]], None]] = None,
) -> Any:
    """Start the plan's servers, write the agent-loop YAML pointing at them, run main_ppo with
    train-offline's runner (`gymverl.train.run_training`), and stop the servers: on success, on
    failure, on an exception and on Ctrl-C/SIGTERM (then KeyboardInterrupt propagates).

    `on_servers(stage, urls)`: "starting" (urls empty) before the servers start, "ready" once they
    answer. Returns the `gymverl.train.TrainResult` (returncode != 0: VeRL failed; `cause` is its
    error line). A server that fails to start raises `gymverl.nemo_gym.NemoGymError` (exit 1).
    """
    from gymverl import train
    from gymverl.nemo_gym import running_resources_servers

    opts = plan.options
    out = plan.out
    if opts.overwrite and out.exists():
        shutil.rmtree(out)  # _check_out made sure it is a gymverl directory
        # Emptied now: the runner must not delete the servers' log and the YAML written below.
        plan.options = opts = replace(opts, overwrite=False)
    out.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        if plan.start:
            if on_servers:
                on_servers("starting", {})
            servers = stack.enter_context(
                running_resources_servers(plan.start, env=opts.nemo_gym_env, log_path=out / NG_LOG, startup_timeout=opts.server_timeout)
            )
            plan.servers = {name: servers.url(name) for name in plan.start}
            if on_servers:
                on_servers("ready", dict(plan.servers))
        plan.argv = build_online_command(opts, started=plan.servers, agents=plan.agents, rows=plan.rows)
        return train.run_training(plan, on_event, keys=PPO_KEYS, grace=PPO_GRACE)


def online_env(opts: OnlineOptions) -> dict[str, str]:
    """Environment variables the main_ppo command of `opts` needs beyond the caller's own
    (`--rollout cpu`: `CPU_ROLLOUT_ENV`; none otherwise)."""
    return dict(CPU_ROLLOUT_ENV) if opts.rollout == "cpu" else {}


def check_rows_select_env_loop(path: Path) -> int:
    """Refuse RL parquet whose rows name another agent loop than `gymverl_env` (OnlineError, one sentence).

    VeRL 0.9.1's `AgentLoopWorker` takes each row's `agent_name` column over
    `agent.default_agent_loop`, so rows written by `to-parquet --format rl` (`gymverl_tools` /
    `single_turn_agent`) would be generated single-turn and never play the environment; and a
    batch mixing loops breaks VeRL's reward assembly (it takes the reward keys of the first sample).
    Rows without the column use the default loop (gymverl_env) and pass. Returns the row count.
    """
    import pyarrow.parquet as pq

    try:
        data = pq.ParquetFile(path)  # footer only; the one column below is all that is read
    except (OSError, ValueError) as exc:
        raise OnlineError(f"{path}: not a readable parquet file ({exc}).") from None
    rows = data.metadata.num_rows
    if "agent_name" not in data.schema_arrow.names:
        return rows
    names = set(data.read(columns=["agent_name"]).column("agent_name").to_pylist())
    other = sorted(str(n) for n in names - {ENV_AGENT})
    if other:
        raise OnlineError(
            f"{path}: rows name the agent loop(s) {', '.join(other)}, so VeRL would not play their environment; "
            f"write the data for online training with `gymverl to-parquet --format rl --agent-loop env`."
        )
    return rows


def check_with_verl_config(argv: list[str]) -> None:
    """Compose VeRL's own `ppo_trainer` Hydra config with the overrides of a main_ppo `argv`, as
    main_ppo will; a typo'd key or a bad value is one sentence (OnlineError) now, not after Ray
    and the rollout engine have started."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import logging

    # VeRL logs "No supported accelerator detected" (and more) while main_ppo is imported, on a
    # machine without a GPU: gymverl only reads its config here, so those lines are not the plan's.
    logging.disable(logging.WARNING)
    try:
        import verl.trainer.main_ppo as main_ppo
    finally:
        logging.disable(logging.NOTSET)

    overrides = argv[3:]  # after `python -m verl.trainer.main_ppo`
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(main_ppo.__file__).parent / "config"), version_base=None):
            compose(config_name="ppo_trainer", overrides=overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's errors have several types; each is one sentence here
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise OnlineError(f"VeRL's config rejects the command: {first}") from None
    finally:
        GlobalHydra.instance().clear()


def cpu_rollout_note() -> str:
    """How `--rollout cpu` works with VeRL 0.9.1 and what it needed (checked by tests/test_cpu_rollout.py)."""
    return (
        "VeRL 0.9.1 ships rollout replicas only for vllm, sglang and trtllm; gymverl registers a CPU one "
        "(gymverl/cpu_rollout.py: RolloutReplicaRegistry 'cpu', a transformers-generate server actor answering "
        "token ids + raw logprobs, sleep/wake_up no-ops, the trainer's weights loaded after every step through the "
        "'naive' checkpoint engine). main_ppo then needs, on a host without a GPU: trainer.use_v1=false (the v1 "
        "trainer imports transfer_queue), a logical Ray GPU (+ray_kwargs.ray_init.num_gpus=1: ResourcePoolManager "
        "counts only GPU/NPU resources), gymverl.verl_cpu's gloo process group for the Ray workers (VeRL's backend "
        "string 'cpu:gloo,cpu:gloo' is rejected by torch), rollout.tensor_model_parallel_size=1, fsdp2 with sdpa "
        "and no remove-padding. Smoke mode: float32, one sequence at a time, tiny models only."
    )


__all__ = [
    "CPU_ROLLOUT_ENV",
    "CPU_ROLLOUT_OVERRIDES",
    "LOOP_YAML",
    "agent_loop_yaml",
    "NG_LOG",
    "OnlineError",
    "OnlineOptions",
    "OnlinePlan",
    "PENDING_URL",
    "ROLLOUTS",
    "ROLLOUT_ENGINES",
    "RolloutEngine",
    "build_online_command",
    "check_rows_select_env_loop",
    "check_runtime",
    "check_with_verl_config",
    "cpu_rollout_note",
    "online_env",
    "plan_online",
    "plan_servers",
    "resources_server_for_agent",
    "row_agents",
    "run_online",
    "server_specs_for",
]
