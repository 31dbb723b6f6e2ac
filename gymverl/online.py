"""`gymverl train-online`: the `python -m verl.trainer.main_ppo` command for online RL on NeMo Gym environments.

The command (an argv list) carries every override the `gymverl_env` agent loop and the reward need:
GRPO, the RL parquet, the model, the rollout engine, `n` samples per prompt, the agent-loop YAML
(written to `OUTDIR/gymverl_agent_loops.yaml`, declaring `gymverl_env` with the resources-server
specs, so VeRL's rollout workers -- other processes -- find the servers without environment
variables), `gymverl_env` as the default loop (every row plays its episode; `reward_score` comes from
the episode's `/verify`), and `gymverl.reward.compute_score` with the same servers for rows routed to
a stateless loop. Hydra must accept it: tests compose it with VeRL's own `ppo_trainer.yaml`.

`--rollout cpu` (smoke mode, tiny models) uses gymverl's CPU rollout replica (gymverl/cpu_rollout.py)
with the CPU platform plugin: `CPU_ROLLOUT_OVERRIDES` join the command and the caller runs it with
`online_env(opts)` in its environment (see `cpu_rollout_note`).

What is not here yet (issue 14): starting the servers (`--servers NAME`), running the command with
train-offline's progress view / resume rules.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gymverl.formats.rl import ENV_AGENT
from gymverl.errors import UsageError
from gymverl.overrides import override
from gymverl.verify import parse_servers

ROLLOUTS = ("vllm", "sglang", "cpu")
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


class OnlineError(UsageError):
    """train-online cannot build its command (one sentence)."""


@dataclass
class OnlineOptions:
    """What `gymverl train-online` was asked for."""

    data: Path
    model: str
    out: Path
    servers: list[str]  # `NAME=URL` (or `URL`) resources-server specs
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


def build_online_command(opts: OnlineOptions, *, write_loop_yaml: bool = True) -> list[str]:
    """The main_ppo argv for `opts` (python executable first); writes the agent-loop YAML into
    `opts.out` unless `write_loop_yaml` is False. Raises OnlineError for unusable options."""
    from gymverl.env_loop import loop_config

    if opts.rollout not in ROLLOUTS:
        raise OnlineError(f"--rollout must be one of {', '.join(ROLLOUTS)}, not {opts.rollout!r}.")
    if opts.algorithm != "grpo":
        raise OnlineError(f"--algorithm {opts.algorithm!r} is not supported yet (grpo only).")
    if opts.n_samples < 1 or opts.nproc < 1:
        raise OnlineError("--n-samples and --nproc must be 1 or more.")
    if opts.on_failure not in ("raise", "mask"):
        raise OnlineError(f"--on-failure must be raise or mask, not {opts.on_failure!r}.")
    if not opts.servers:
        raise OnlineError("give the resources servers with --server NAME=URL (one per environment).")
    parse_servers(opts.servers)  # one sentence for a bad spec
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
    out = opts.out.resolve()
    spec = " ".join(opts.servers)
    loop_yaml = out / LOOP_YAML
    if write_loop_yaml:
        out.mkdir(parents=True, exist_ok=True)
        loop_config(loop_yaml, server=spec, max_turns=opts.max_turns, on_failure=opts.on_failure)
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
        ("actor_rollout_ref.model.path", str(opts.model)),
        ("actor_rollout_ref.rollout.name", opts.rollout),
        ("actor_rollout_ref.rollout.n", opts.n_samples),
        ("actor_rollout_ref.rollout.calculate_log_probs", True),
        ("actor_rollout_ref.rollout.agent.agent_loop_config_path", str(loop_yaml)),
        ("actor_rollout_ref.rollout.agent.default_agent_loop", ENV_AGENT),
        ("reward.custom_reward_function.path", str(reward_py)),
        ("reward.custom_reward_function.name", "compute_score"),
        ("+reward.custom_reward_function.reward_kwargs.server", spec),
        ("trainer.default_local_dir", str(out / "checkpoints")),
        ("trainer.n_gpus_per_node", opts.nproc),
        ("trainer.nnodes", 1),
        ("trainer.logger", ["console"]),
    ]
    if opts.rollout == "cpu":
        settings += CPU_ROLLOUT_OVERRIDES
    argv = [sys.executable, "-m", "verl.trainer.main_ppo", *(override(k, v) for k, v in settings)]
    return argv + list(opts.overrides)


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

    import verl.trainer.main_ppo as main_ppo

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


__all__ = ["CPU_ROLLOUT_ENV", "CPU_ROLLOUT_OVERRIDES", "LOOP_YAML", "OnlineError", "OnlineOptions", "ROLLOUTS", "build_online_command", "check_rows_select_env_loop", "check_with_verl_config", "cpu_rollout_note", "online_env"]
