"""Which NeMo Gym collector is installed and how its command line is spelled.

`gym eval run --no-serve` where that exists (its flags read from `--help`), else the legacy
`ng_collect_rollouts +key=value` (its keys read from `RolloutCollectionConfig`): read from the
installed NeMo Gym, never assumed. `collector_argv` builds the argv (never a shell string).
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import orjson

from gymverl.collect.errors import CollectError
from gymverl.limits import DEFAULT_HEAD_URL
from gymverl.nemo_gym import nemo_gym_version, subprocess_env
from gymverl.overrides import override

# Our option -> the `gym eval run` flag that carries it (checked against `gym eval run --help`).
GYM_FLAGS = {
    "agent": "--agent",
    "input": "--input",
    "output": "--output",
    "limit": "--limit",
    "num_repeats": "--num-repeats",
    "concurrency": "--concurrency",
    "resume": "--resume",
}
# Our option -> the RolloutCollectionConfig field that carries it in the legacy Hydra spelling.
HYDRA_KEYS = {
    "agent": "agent_name",
    "input": "input_jsonl_fpath",
    "output": "output_jsonl_fpath",
    "limit": "limit",
    "num_repeats": "num_repeats",
    "concurrency": "num_samples_in_parallel",
    "resume": "resume_from_cache",
}


@dataclass(frozen=True)
class Collector:
    """The installed NeMo Gym collector: base command, option spelling ("flags" or "hydra"), version."""

    env: Path
    command: tuple[str, ...]
    style: str
    options: dict[str, str]
    version: str | None = None

    def supports(self, option: str) -> bool:
        """True when this collector has `option` (one of GYM_FLAGS' keys)."""
        return option in self.options


def _gym_flags(env: Path) -> dict[str, str] | None:
    """The collection flags `gym eval run --help` lists, or None when there is no usable `gym eval run`."""
    gym = env / "bin" / "gym"
    if not gym.exists():
        return None
    try:
        out = subprocess.run(
            [str(gym), "eval", "run", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = out.stdout
    if out.returncode != 0 or "--no-serve" not in text:
        return None  # without --no-serve, `gym eval run` would start its own servers
    found = {name: flag for name, flag in GYM_FLAGS.items() if re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)}
    return found if {"input", "output"} <= found.keys() else None


def _hydra_keys(env: Path) -> dict[str, str] | None:
    """The legacy collector's config fields (RolloutCollectionConfig), read from the installed package."""
    if not (env / "bin" / "ng_collect_rollouts").exists():
        return None
    probe = (
        "import json\n"
        "try:\n from nemo_gym.rollout_collection import RolloutCollectionConfig as C\n"
        "except ImportError:\n from nemo_gym.cli.eval import RolloutCollectionConfig as C\n"
        "print(json.dumps(sorted(C.model_fields)))\n"
    )
    try:
        out = subprocess.run(
            [str(env / "bin" / "python"), "-c", probe],
            capture_output=True,
            text=True,
            timeout=120,
            env=subprocess_env(env),
            stdin=subprocess.DEVNULL,
        )
        fields = set(orjson.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()
    except (OSError, subprocess.TimeoutExpired, IndexError, orjson.JSONDecodeError):
        return None
    found = {name: key for name, key in HYDRA_KEYS.items() if key in fields}
    return found if {"input", "output"} <= found.keys() else None


def detect_collector(env: Path) -> Collector:
    """Find how the NeMo Gym in `env` collects rollouts: `gym eval run --no-serve`, else `ng_collect_rollouts`."""
    version = nemo_gym_version(env)
    flags = _gym_flags(env)
    if flags is not None:
        return Collector(env, (str(env / "bin" / "gym"), "eval", "run", "--no-serve"), "flags", flags, version)
    keys = _hydra_keys(env)
    if keys is not None:
        return Collector(env, (str(env / "bin" / "ng_collect_rollouts"),), "hydra", keys, version)
    raise CollectError(
        f"no rollout collector found in the NeMo Gym at {env} (neither `gym eval run --no-serve` nor "
        f"`ng_collect_rollouts` with an input/output option); is nemo-gym installed there?"
    )


def head_overrides(head_url: str) -> list[str]:
    """Hydra overrides that point a NeMo Gym client at the head server `head_url`."""
    u = urllib.parse.urlsplit(head_url if "://" in head_url else f"http://{head_url}")
    if not u.hostname or not u.port:
        raise CollectError(f"head server URL {head_url!r} needs a host and a port, e.g. {DEFAULT_HEAD_URL}.")
    return [override("++head_server.host", u.hostname), override("++head_server.port", u.port)]


def collector_argv(
    collector: Collector,
    *,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    agent: str | None = None,
    num_samples: int = 1,
    limit: int | None = None,
    concurrency: int | None = None,
    resume: bool = False,
    head_url: str = DEFAULT_HEAD_URL,
    extra: Sequence[str] = (),
) -> list[str]:
    """The collector's command line as an argv list (never a shell string); `extra` goes last, unchanged."""
    values: dict[str, Any] = {
        "input": str(Path(input).resolve()),
        "output": str(Path(output).resolve()),
        "agent": agent,
        "num_repeats": num_samples if num_samples != 1 else None,
        "limit": limit,
        "concurrency": concurrency,
        "resume": True if resume else None,
    }
    argv = list(collector.command)
    for name, value in values.items():
        if value is None:
            continue
        if name not in collector.options:
            raise CollectError(
                f"the installed NeMo Gym ({collector.version or 'unknown version'}) has no collector option for "
                f"{name.replace('_', '-')}; drop that option or upgrade nemo-gym."
            )
        opt = collector.options[name]
        if collector.style == "flags":
            argv += [opt] if value is True else [opt, str(value)]
        else:
            argv.append(override(f"+{opt}", value))
    return argv + head_overrides(head_url) + list(extra)
