"""gymverl: turn NeMo Gym environments and rollouts into VeRL training data and training runs.

The public API is `API` below: the modules `__all__` lists and, in each, the names the README
documents (tests/test_public_api.py pins both, and checks the README against them). Modules load
on first use (`gymverl.stats` after `import gymverl`), so `import gymverl` stays cheap; everything
else in the package is internal and may change.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__version__ = "0.1.0"

# module -> the names it offers as public API (what the README's Library and command sections document)
API: dict[str, tuple[str, ...]] = {
    "records": ("iter_checked", "validate_file", "task_key"),
    "messages": ("rollout_messages", "chat_tools"),
    "stats": ("compute_stats", "pass_at_k"),
    "convert": ("ConvertOptions", "convert"),
    "select": ("SelectOptions",),
    "rescore": ("rescore_file",),
    "verify": ("VerifyClient",),
    "reward": ("compute_score", "VerifyFailed"),
    "preview": ("preview",),
    "train": ("TrainOptions", "train_offline"),
    "agent_loop": ("GymverlToolsAgentLoop", "row_tools"),
    "env_loop": ("GymverlEnvAgentLoop", "EnvEpisodeFailed"),
    "online": ("OnlineOptions", "plan_online", "run_online", "build_online_command"),
    "cpu_rollout": ("CPUReplica",),
    "verl_data": ("GymverlSFTDataset", "decode_row"),
    "nemo_gym": ("running_resources_servers",),
    "tiny": ("build_tiny_model",),
    "errors": ("GymverlError", "UsageError", "RunError", "Interrupted"),
}

__all__ = ["__version__", "API", *API]


def __getattr__(name: str) -> ModuleType:
    """Import a public module on first access (`gymverl.records`), as if it were imported here."""
    if name in API:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
