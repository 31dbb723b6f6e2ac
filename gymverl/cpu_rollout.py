"""A CPU rollout for VeRL 0.9.1 (`actor_rollout_ref.rollout.name=cpu`): transformers' `generate` on the host.

Smoke mode only (tiny models): it lets `python -m verl.trainer.main_ppo` run GRPO steps end to end
on a machine without a GPU, with the same agent loops, reward path and weight sync as a vLLM run.
Loaded in every VeRL process through VeRL's external-module hook, beside the CPU platform plugin
(`gymverl.verl_cpu`):

    VERL_USE_EXTERNAL_MODULES=gymverl.verl_cpu,gymverl.cpu_rollout VERL_PLATFORM=cpu ...
    python -m verl.trainer.main_ppo actor_rollout_ref.rollout.name=cpu trainer.device=cpu ...

Importing it registers, under the name "cpu":
- `CPUReplica` with VeRL's `RolloutReplicaRegistry` (what `LLMServerManager` builds): in hybrid
  mode (`init_hybrid`) it starts one `CPUServer` Ray actor per replica, whose handle is the
  `server_handle` the load balancer gives to `LLMServerClient.generate` (token in, token out);
- `CPURollout` in VeRL's hybrid-worker rollout table (`verl.workers.rollout.base`, which has no
  register function: the table is extended in place): the trainer's `update_weights` (checkpoint
  engine "naive", the hybrid path) hands it the actor's full tensors after every step, and it loads
  them into its replica's `CPUServer` (a named Ray actor) -- the rollout always samples from the
  trainer's current weights.

`CPUServer.generate` answers VeRL's `TokenOutput`: the sampled token ids (stopping at the model's
EOS tokens or the token budget, as vLLM does) and, when asked (`logprobs`), each token's log
probability under the model's raw logits (vLLM's default `logprobs_mode=raw_logprobs`).
Sampling: temperature, top_p, top_k (-1 / 0 = off); temperature 0 is greedy. `sleep` / `wake_up`
and the KV-cache calls are no-ops (nothing to free on the host).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from typing import Any, Generator, Optional

import torch

from verl.workers.rollout import base as _rollout_base
from verl.workers.rollout.base import BaseRollout
from verl.workers.rollout.replica import RolloutReplica, RolloutReplicaRegistry, TokenOutput

logger = logging.getLogger(__name__)

NAME = "cpu"


def server_actor_name(replica_rank: int) -> str:
    """The Ray actor name of replica `replica_rank`'s server (how the hybrid worker finds it)."""
    return f"gymverl_cpu_rollout_server_{replica_rank}"


def _model_path(model_config: Any) -> str:
    # HFModelConfig has local_path (a downloaded copy of an hdfs path); a DictConfig has path.
    for key in ("local_path", "path"):
        value = getattr(model_config, key, None) if not isinstance(model_config, dict) else model_config.get(key)
        if value:
            return str(value)
    raise ValueError("the rollout's model config has no path")


def _cfg(config: Any, key: str, default: Any) -> Any:
    value = getattr(config, key, None) if not isinstance(config, dict) else config.get(key)
    return default if value is None else value


class CPUServer:
    """The model server of one CPU replica (a Ray actor): a transformers causal LM on the host."""

    def __init__(self, rollout_config: Any, model_config: Any, replica_rank: int) -> None:
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(max(1, int(os.environ.get("GYMVERL_CPU_ROLLOUT_THREADS", "1"))))
        path = _model_path(model_config)
        trust = bool(_cfg(model_config, "trust_remote_code", False))
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=trust)
        self.model.eval()
        self.replica_rank = replica_rank
        self.prompt_length = int(_cfg(rollout_config, "prompt_length", 512))
        self.response_length = int(_cfg(rollout_config, "response_length", 512))
        self.max_model_len = int(_cfg(rollout_config, "max_model_len", 0) or self.prompt_length + self.response_length)
        eos = self.model.generation_config.eos_token_id
        self.eos = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.seed = int(_cfg(rollout_config, "seed", 0))
        self.global_steps: Optional[int] = None
        self.weight_loads = 0
        # One generation at a time: the model is shared and the host has few cores.
        self._lock = threading.Lock()
        self._generator = torch.Generator().manual_seed(self.seed + replica_rank)

    # ---- generation ------------------------------------------------------------------------------
    def _sample(self, prompt_ids: list[int], params: dict[str, Any], max_tokens: int, want_logprobs: bool) -> tuple[list[int], Optional[list[float]], str]:
        temperature = float(params.get("temperature", 1.0) or 0.0)
        top_p = float(params.get("top_p", 1.0) or 1.0)
        top_k = int(params.get("top_k", -1) or -1)
        ids = torch.tensor([prompt_ids], dtype=torch.long)
        out: list[int] = []
        lps: list[float] = []
        past = None
        stop = "length"
        with self._lock, torch.no_grad():
            for _ in range(max_tokens):
                res = self.model(input_ids=ids, past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[0, -1].float()
                raw = torch.log_softmax(logits, dim=-1)
                if temperature <= 0:
                    token = int(torch.argmax(logits))
                else:
                    scores = logits / temperature
                    if top_k > 0:
                        kth = torch.topk(scores, min(top_k, scores.numel())).values[-1]
                        scores = scores.masked_fill(scores < kth, float("-inf"))
                    probs = torch.softmax(scores, dim=-1)
                    if top_p < 1.0:
                        sorted_p, order = torch.sort(probs, descending=True)
                        keep = torch.cumsum(sorted_p, 0) - sorted_p < top_p
                        mask = torch.zeros_like(probs, dtype=torch.bool)
                        mask[order[keep]] = True
                        probs = torch.where(mask, probs, torch.zeros_like(probs))
                        probs = probs / probs.sum()
                    token = int(torch.multinomial(probs, 1, generator=self._generator))
                out.append(token)
                lps.append(float(raw[token]))
                if token in self.eos and not params.get("ignore_eos", False):
                    stop = "completed"
                    break
                ids = torch.tensor([[token]], dtype=torch.long)
        return out, (lps if want_logprobs else None), stop

    async def generate(
        self,
        request_id: str,
        *,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        image_data: Any = None,
        video_data: Any = None,
        **_: Any,
    ) -> TokenOutput:
        """Token in, token out (VeRL's server contract, as `vLLMHttpServer.generate`): the token
        budget is `max_tokens` / `max_new_tokens`, else what `response_length` and the context
        (`prompt_length + response_length`) leave."""
        if image_data is not None or video_data is not None:
            raise ValueError("the CPU rollout is text-only")
        params = dict(sampling_params)
        room = self.max_model_len - len(prompt_ids)
        if room < 1:
            raise ValueError(f"Prompt length ({len(prompt_ids)}) leaves no room to generate within {self.max_model_len} tokens")
        if "max_tokens" in params:
            max_tokens = int(params.pop("max_tokens"))
        elif "max_new_tokens" in params:
            max_tokens = int(params.pop("max_new_tokens"))
        else:
            max_tokens = min(self.response_length, self.prompt_length + self.response_length - len(prompt_ids))
        max_tokens = max(1, min(max_tokens, room))
        want = bool(params.pop("logprobs", False))
        token_ids, log_probs, stop = await asyncio.to_thread(self._sample, list(prompt_ids), params, max_tokens, want)
        return TokenOutput(token_ids=token_ids, log_probs=log_probs, stop_reason=stop, extra_fields={"global_steps": self.global_steps})

    # ---- weights -----------------------------------------------------------------------------------
    def load_weights(self, state: dict[str, torch.Tensor], global_steps: Optional[int] = None) -> int:
        """Load the trainer's full tensors (HF names); returns how many were loaded. A name the model
        does not have is an error (a silent partial sync would sample from stale weights)."""
        own = self.model.state_dict()
        unknown = [k for k in state if k not in own]
        if unknown:
            raise KeyError(f"CPU rollout: the trainer sent weights the model does not have: {unknown[:5]}")
        with self._lock, torch.no_grad():
            for name, tensor in state.items():
                own[name].copy_(tensor.to(own[name].dtype))
        self.global_steps = global_steps
        self.weight_loads += 1
        return len(state)

    def state(self) -> dict[str, Any]:
        """What the server holds (for tests): weight loads so far and the last step's number."""
        return {"weight_loads": self.weight_loads, "global_steps": self.global_steps}

    # ---- lifecycle: nothing to free on the host ----------------------------------------------------
    async def wake_up(self) -> None:
        """No-op."""

    async def sleep(self) -> None:
        """No-op."""

    async def clear_kv_cache(self) -> None:
        """No-op (no cache is kept between requests)."""

    async def release_kv_cache(self) -> None:
        """No-op."""

    async def resume_kv_cache(self) -> None:
        """No-op."""

    async def abort_all_requests(self, reject_request: bool = False) -> None:
        """No-op (requests are short; none is aborted)."""

    async def resume_generation(self) -> None:
        """No-op."""

    async def start_profile(self, **_: Any) -> None:
        """No-op."""

    async def stop_profile(self) -> None:
        """No-op."""


class CPUReplica(RolloutReplica):
    """A CPU rollout replica: one `CPUServer` actor (hybrid mode: beside the trainer's workers)."""

    def rollout_worker_use_gpu(self) -> bool:
        """No GPU."""
        return False

    async def launch_servers(self) -> None:
        """Start this replica's `CPUServer` (a named Ray actor, 0 CPUs reserved: it runs only while
        the trainer waits for the rollout)."""
        import ray

        server_cls = ray.remote(CPUServer)
        server = server_cls.options(
            name=server_actor_name(self.replica_rank),
            num_cpus=0,
            max_concurrency=self.max_concurrency,
        ).remote(self.config, self.model_config, self.replica_rank)
        await server.state.remote()  # constructed (the model is loaded) before generation starts
        self.servers = [server]
        self._server_handle = server
        self._server_address = f"cpu-rollout-{self.replica_rank}"


class CPURollout(BaseRollout):
    """The hybrid worker's side of the CPU rollout: forwards the trainer's weights to its replica's server."""

    def __init__(self, config: Any, model_config: Any, device_mesh: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(config, model_config, device_mesh, *args, **kwargs)
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_initialized() else 0
        world = (
            self.config.tensor_model_parallel_size * self.config.data_parallel_size * self.config.pipeline_model_parallel_size
        )
        self.replica_rank = rank // world
        self.is_leader = rank % world == 0

    async def resume(self, tags: list[str]) -> None:
        """No-op (weights and cache stay on the host)."""

    async def release(self) -> None:
        """No-op."""

    async def update_weights(self, weights: Generator[tuple[str, torch.Tensor], None, None], wire_format: str = "named_tensors", **kwargs: Any) -> None:
        """Send the trainer's full tensors to this replica's server (leader rank only; every rank
        drains the generator, which may gather shards collectively)."""
        import ray

        if wire_format != "named_tensors":
            raise ValueError(f"the CPU rollout takes full tensors, not {wire_format!r}")
        state = {name: t.detach().to("cpu").clone() for name, t in weights}
        if not self.is_leader:
            return
        server = ray.get_actor(server_actor_name(self.replica_rank))
        await server.load_weights.remote(state, kwargs.get("global_steps"))


def register() -> None:
    """Register the "cpu" rollout with VeRL (idempotent; done on import)."""
    RolloutReplicaRegistry.register(NAME, lambda: CPUReplica)
    _rollout_base._ROLLOUT_REGISTRY[(NAME, "async")] = f"{__name__}.CPURollout"


register()

__all__ = ["CPURollout", "CPUReplica", "CPUServer", "NAME", "register", "server_actor_name"]
