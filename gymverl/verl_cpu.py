"""A CPU platform plugin for VeRL 0.9.1, so `verl.trainer.sft_trainer` can run a smoke test without a GPU.

VeRL 0.9.1 only registers accelerator platforms (nvidia, npu, rocm). This module registers a
"cpu" platform with VeRL's own `PlatformRegistry` and patches the one place that cannot work on
CPU (the process group init: torchrun's for sft_trainer, and the Ray workers' for main_ppo, which
`train-online --rollout cpu` runs with gymverl.cpu_rollout). It is loaded inside every torchrun worker through VeRL's external
module hook, never imported by gymverl itself:

    VERL_USE_EXTERNAL_MODULES=gymverl.verl_cpu VERL_PLATFORM=cpu VERL_ENGINE_DEVICE=cuda \\
    torchrun --standalone --nproc_per_node=1 -m verl.trainer.sft_trainer trainer.device=cpu \\
        engine.strategy=fsdp2 +model.override_config.attn_implementation=sdpa ...

`VERL_ENGINE_DEVICE=cuda` only selects which registered engine *class* to use (the FSDP engine is
registered for cuda/npu only); the platform still says "cpu", so tensors stay on the CPU.
`gymverl.train.CPU_ENV` / `CPU_OVERRIDES` hold these settings for `train-offline --device cpu`.

Limits (smoke mode, not for real training): float32 on CPU is slow (tiny models only), gloo is the
only collective backend, no flash attention (sdpa), no memory statistics (all report 0),
no profiler, no CUDA-only fused kernels (liger, fused cross-entropy), and it is tested against
VeRL 0.9.1 only.
"""

from __future__ import annotations

import os
import types
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, Optional

import torch

from verl.plugin.platform.platform_base import PlatformBase
from verl.plugin.platform.platform_manager import PlatformRegistry

def _zero(*_args: Any, **_kwargs: Any) -> int:
    return 0


def _noop(*_args: Any, **_kwargs: Any) -> None:
    return None


def _mem_get_info(*_args: Any, **_kwargs: Any) -> tuple[int, int]:
    # (free, total) of host memory; VeRL only logs it.
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES") * size
        return pages * size, total
    except (ValueError, OSError):
        return 0, 0


def _device_module() -> types.ModuleType:
    """`torch.cpu` plus the CUDA-style calls VeRL makes on its device module (memory stats, RNG)."""
    mod = types.ModuleType("gymverl_cpu_device")
    for name in dir(torch.cpu):
        if not name.startswith("__"):
            setattr(mod, name, getattr(torch.cpu, name))
    for name in (
        "memory_allocated",
        "memory_reserved",
        "max_memory_allocated",
        "max_memory_reserved",
    ):
        setattr(mod, name, _zero)
    for name in ("empty_cache", "ipc_collect", "set_per_process_memory_fraction", "reset_peak_memory_stats", "manual_seed", "manual_seed_all"):
        setattr(mod, name, _noop)
    mod.mem_get_info = _mem_get_info
    mod.get_device_name = lambda *_a, **_k: "cpu"
    # The CPU generator is torch's default one; VeRL saves/restores it with checkpoints.
    mod.get_rng_state = lambda *_a, **_k: torch.get_rng_state()
    mod.set_rng_state = lambda state, *_a, **_k: torch.set_rng_state(state)
    mod.is_available = lambda: True
    # `.to(current_device())` must mean the CPU, never `cuda:0`.
    mod.current_device = lambda: "cpu"
    return mod


_DEVICE_MODULE = _device_module()


@PlatformRegistry.register(platform="cpu")
class PlatformCPU(PlatformBase):
    """VeRL platform backend for the host CPU (gloo collectives)."""

    @property
    def device_name(self) -> str:
        """Torch device type."""
        return "cpu"

    @property
    def vendor_name(self) -> str:
        """Vendor key used by VeRL's engine registry."""
        return "cpu"

    @property
    def device_module(self) -> types.ModuleType:
        """The `torch.cpu` shim."""
        return _DEVICE_MODULE

    def is_available(self) -> bool:
        """The CPU is always there."""
        return True

    def is_platform_available(self, use_smi_check: bool = False) -> bool:
        """Never auto-detected: only chosen explicitly with VERL_PLATFORM=cpu."""
        return False

    def current_device(self) -> str:  # type: ignore[override]
        """'cpu' (a string, so `tensor.to(current_device())` stays on the host)."""
        return "cpu"

    def device_count(self) -> int:
        """One host device per process."""
        return 1

    def set_device(self, device_index: int) -> None:
        """No-op."""

    def synchronize(self, device_index: Optional[int] = None) -> None:
        """No-op: CPU ops are synchronous."""

    def manual_seed(self, seed: int) -> None:
        """Seed torch's default (CPU) generator."""
        torch.manual_seed(seed)

    def manual_seed_all(self, seed: int) -> None:
        """Seed torch's default (CPU) generator."""
        torch.manual_seed(seed)

    def set_allocator_settings(self, settings: str) -> None:
        """No-op (no caching allocator on CPU)."""

    def empty_cache(self) -> None:
        """No-op."""

    def get_device_capability(self, device_index: int = 0) -> tuple[Optional[int], Optional[int]]:
        """No compute capability on CPU."""
        return None, None

    def communication_backend_name(self) -> str:
        """gloo."""
        return "gloo"

    def visible_devices_envvar(self) -> str:
        """Not used on CPU; a harmless name."""
        return "GYMVERL_CPU_VISIBLE_DEVICES"

    @contextmanager
    def nvtx_range(self, msg: str):  # noqa: ANN201
        """No-op range."""
        yield

    def profiler_start(self) -> None:
        """No-op."""

    def profiler_stop(self) -> None:
        """No-op."""

    def ray_resource_name(self) -> str:
        """Ray's CPU resource."""
        return "CPU"

    def ray_resource_options(self, num_gpus: float) -> dict[str, Any]:
        """Ask Ray for CPUs instead of GPUs."""
        return {"num_cpus": num_gpus}

    def ray_noset_envvars(self) -> list[str]:
        """None."""
        return []

    def is_ipc_supported(self) -> bool:
        """No CUDA IPC."""
        return False

    def cudart(self) -> Any:
        """No CUDA runtime."""
        return None


def initialize_global_process_group(timeout_second: int = 36000) -> tuple[int, int, int]:
    """A plain gloo process group (VeRL's own builds "cpu:gloo,cpu:gloo", which torch rejects)."""
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(
            backend="gloo",
            timeout=timedelta(seconds=timeout_second),
            init_method=os.environ.get("DIST_INIT_METHOD", None),
        )
    return int(os.environ["LOCAL_RANK"]), int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])


def initialize_global_process_group_ray(timeout_second: Optional[int] = None, backend: Optional[str] = None) -> None:
    """VeRL's Ray-worker process group (main_ppo's workers) on gloo: its default backend string
    "cpu:gloo,cpu:gloo" names the CPU twice, which torch rejects ("Duplicate device type cpu")."""
    if torch.distributed.is_initialized():
        return
    if backend is None or backend.count("cpu:") > 1:
        backend = "gloo"
    torch.distributed.init_process_group(
        backend=backend,
        rank=int(os.environ.get("RANK", 0)),
        world_size=int(os.environ.get("WORLD_SIZE", 1)),
        timeout=timedelta(seconds=timeout_second) if timeout_second is not None else None,
        init_method=os.environ.get("DIST_INIT_METHOD", None),
    )


def _patch() -> None:
    # Only when the CPU platform was asked for, so importing this module elsewhere changes nothing.
    if os.environ.get("VERL_PLATFORM", "").strip().lower() != "cpu":
        return
    import verl.utils.distributed as dist_utils

    # sft_trainer imports this name inside run_sft(), at call time, so the module attribute is enough.
    dist_utils.initialize_global_process_group = initialize_global_process_group
    # main_ppo's Ray workers import this name from the module when their module is first imported,
    # which is after `import verl` has loaded this plugin.
    dist_utils.initialize_global_process_group_ray = initialize_global_process_group_ray


_patch()
