"""gymverl's VeRL 0.9.1 agent loop: each RL row's prompt is rendered with the row's OWN tools.

VeRL's stock `SingleTurnAgentLoop` renders no tools, and `ToolAgentLoop` only tools declared globally
in `multi_turn.tool_config_path`, so on function-calling tasks (NeMo Gym's xlam_fc, ...) the policy
would be scored on calls to functions it was never shown. `gymverl to-parquet --format rl` writes
each task's tool schemas (chat-template form, a JSON string) to `extra_info.tools` and the column
`agent_name="gymverl_tools"` on rows that have tools; this loop, registered under that name, passes
them to the chat template (`apply_chat_template(messages, tools=..., add_generation_prompt=True)`,
through VeRL's Continuous Token builder exactly as `ToolAgentLoop` does) and then generates exactly
as `SingleTurnAgentLoop` does. Rows without tools keep `agent_name="single_turn_agent"`.

How VeRL 0.9.1 finds the loop: `AgentLoopWorker` (a Ray actor, its own process) looks `agent_name`
up in `verl.experimental.agent_loop.agent_loop._agent_loop_registry`. `@register` below fills that
registry only in a process that imports this module, which the workers never do by themselves; so
the loop is declared in the YAML list VeRL loads in every worker,
`actor_rollout_ref.rollout.agent.agent_loop_config_path` (shipped as `gymverl/agent_loop.yaml`, whose
`_target_` makes hydra import this module). The override, printed by `python -m gymverl.agent_loop`:

    actor_rollout_ref.rollout.agent.agent_loop_config_path=$(python -m gymverl.agent_loop --config-path)

Structure (so a multi-turn environment loop can grow from it): `row_tools` (what the row declares),
`build_prompt` (messages + tools -> prompt token ids and multimodal inputs), `generate` (one model
turn), `run` (one turn; a multi-turn loop would loop `generate` + tool calls here).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register
from verl.utils.profiler import simple_timer
from verl.utils.rollout_trace import rollout_trace_op
from verl.workers.rollout.replica import TokenOutput

# row_tools lives with the RL row format (no VeRL import), so `gymverl preview` reads a row the same way.
from gymverl.formats.rl import STOCK_AGENT, TOOLS_AGENT, row_tools
from gymverl.overrides import override

logger = logging.getLogger(__name__)
logger.setLevel(os.getenv("VERL_LOGGING_LEVEL", "WARN"))

AGENT_NAME = TOOLS_AGENT
CONFIG_PATH = Path(__file__).with_name("agent_loop.yaml")
CONFIG_OVERRIDE = "actor_rollout_ref.rollout.agent.agent_loop_config_path"

__all__ = ["AGENT_NAME", "CONFIG_PATH", "GymverlToolsAgentLoop", "STOCK_AGENT", "main_ppo_overrides", "row_tools"]


@register(AGENT_NAME)
class GymverlToolsAgentLoop(AgentLoopBase):
    """`SingleTurnAgentLoop` with the row's own tools (`extra_info.tools`) rendered into the prompt.

    Built by VeRL's `AgentLoopWorker` for every row with `agent_name="gymverl_tools"` (hydra
    instantiate with `trainer_config`, `server_manager`, `tokenizer`, `processor`, `dataset_cls`,
    `data_config`, `hf_model_type`, `tools`); `run` gets the row's non-tensor columns (`raw_prompt`,
    `extra_info`, ...) as keyword arguments and returns VeRL's `AgentLoopOutput`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prompt_length = self.rollout_config.prompt_length
        self.response_length = self.rollout_config.response_length

    def _cap_text_prompt_length(self, prompt_ids: list[int]) -> list[int]:
        # The stock loop left-truncates an overlong prompt; here that would cut the tool definitions
        # (the chat template puts them first) and train on calls to functions the policy never saw.
        # RLHFDataset's overlong filter counts prompts without per-row tools, so say how to fix it.
        if len(prompt_ids) > self.prompt_length:
            raise ValueError(
                f"a prompt with its tools is {len(prompt_ids)} tokens, more than rollout.prompt_length="
                f"{self.prompt_length}: raise data.max_prompt_length, or drop such rows with "
                "`gymverl to-parquet --format rl --max-tokens N --tokenizer DIR` (it counts the tools)"
            )
        return prompt_ids

    async def build_prompt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[list[int], dict[str, Any], dict[str, Any], Any]:
        """Messages + tools -> (prompt_ids, multi_modal_data, mm_processor_kwargs, mm_processor_output).

        The same steps as `SingleTurnAgentLoop.run` (multimodal extraction, Continuous Token initial
        render with `add_generation_prompt=True`), with `tools` passed to the chat template.
        """
        multi_modal_data = await self.process_multi_modal_info(messages)
        images = multi_modal_data.get("images")
        videos = multi_modal_data.get("videos")
        audios = multi_modal_data.get("audios")
        mm_processor_kwargs = self._get_mm_processor_kwargs(audios)
        self._assert_mm_supported(bool(multi_modal_data))
        mm_inputs: dict[str, Any] = {}
        prompt_ids = await self.ct_build_initial_tokens(
            messages, tools=tools, images=images, videos=videos, audios=audios, mm_inputs_out=mm_inputs
        )
        mm_processor_output = self.build_sglang_video_payload(videos, mm_inputs)
        if tools:
            self.check_tools_shown(prompt_ids, tools)
        return prompt_ids, multi_modal_data, mm_processor_kwargs, mm_processor_output

    def check_tools_shown(self, prompt_ids: list[int], tools: list[dict[str, Any]]) -> None:
        """Raise ValueError unless every tool's name is in the rendered prompt.

        A chat template that does not use its `tools` variable renders the prompt without them and
        no error: the very fault this loop exists for. Checked per row (one decode) rather than once
        per template, as `apply_chat_template_kwargs` or the messages may select the branch.
        """
        text = self.tokenizer.decode(prompt_ids)
        missing = [t["function"]["name"] for t in tools if t["function"]["name"] not in text]
        if missing:
            raise ValueError(
                f"the chat template did not render the row's tools ({', '.join(missing)} not in the prompt): "
                "use a tool-capable template, e.g. actor_rollout_ref.model.custom_chat_template"
            )

    async def generate(
        self,
        prompt_ids: list[int],
        sampling_params: dict[str, Any],
        *,
        priority: int,
        multi_modal_data: dict[str, Any],
        mm_processor_kwargs: dict[str, Any],
        mm_processor_output: Any,
        metrics: dict[str, Any],
    ) -> TokenOutput:
        """One model turn through VeRL's server manager (token in, token out), as the stock loop does."""
        with simple_timer("generate_sequences", metrics):
            request_id = f"det-{priority}" if getattr(self.rollout_config, "full_determinism", False) else uuid4().hex
            output: TokenOutput = await self.server_manager.generate(
                request_id=request_id,
                prompt_ids=prompt_ids,
                sampling_params=sampling_params,
                image_data=multi_modal_data.get("images"),
                audio_data=multi_modal_data.get("audios"),
                video_data=multi_modal_data.get("videos"),
                mm_processor_output=mm_processor_output,
                mm_processor_kwargs=mm_processor_kwargs,
                priority=priority,
            )
        if metrics.get("num_preempted") is None:
            metrics["num_preempted"] = output.num_preempted if output.num_preempted is not None else -1
        return output

    @rollout_trace_op
    async def run(self, sampling_params: dict[str, Any], priority: int = 0, **kwargs: Any) -> AgentLoopOutput:
        """One single-turn rollout of the row: render (with tools), generate, return VeRL's output."""
        priority = int(priority)  # may arrive as np.int64 from non_tensor_batch
        messages = list(kwargs["raw_prompt"])
        tools = row_tools(kwargs.get("extra_info"))
        prompt_ids, multi_modal_data, mm_processor_kwargs, mm_processor_output = await self.build_prompt(messages, tools)

        metrics: dict[str, Any] = {}
        output = await self.generate(
            prompt_ids,
            sampling_params,
            priority=priority,
            multi_modal_data=multi_modal_data,
            mm_processor_kwargs=mm_processor_kwargs,
            mm_processor_output=mm_processor_output,
            metrics=metrics,
        )
        merge_result, response_mask, response_logprobs = await self.ct_merge_assistant_token(
            prompt_ids,
            output.token_ids,
            [],
            [] if output.log_probs else None,
            assistant_logprobs=output.log_probs if output.log_probs else None,
        )
        response_ids = merge_result.token_ids[-len(response_mask) :] if response_mask else []
        prompt_ids = merge_result.token_ids[: len(merge_result.token_ids) - len(response_mask)]

        result = AgentLoopOutput(
            prompt_ids=prompt_ids,
            response_ids=response_ids[: self.response_length],
            response_mask=response_mask[: self.response_length],
            response_logprobs=response_logprobs[: self.response_length] if response_logprobs else None,
            routed_experts=(
                output.routed_experts[: len(prompt_ids) + self.response_length]
                if output.routed_experts is not None
                else None
            ),
            multi_modal_data=multi_modal_data,
            mm_processor_kwargs=mm_processor_kwargs,
            mm_processor_output=mm_processor_output,
            num_turns=2,
            metrics=metrics,
            extra_fields=output.extra_fields,
        )
        # the same keys as VeRL's single-turn and tool loops, so batches of mixed rows concatenate
        result.extra_fields.update({"turn_scores": [], "tool_rewards": []})
        return result


def main_ppo_overrides() -> list[str]:
    """The `verl.trainer.main_ppo` overrides that make VeRL's workers load this loop (see module doc)."""
    return [override(CONFIG_OVERRIDE, CONFIG_PATH)]


def _main(argv: list[str]) -> int:
    if argv[:1] == ["--config-path"]:
        print(CONFIG_PATH)
        return 0
    if argv:
        print("usage: python -m gymverl.agent_loop [--config-path]", file=sys.stderr)
        return 2
    print("\n".join(main_ppo_overrides()))
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
