"""RL rows for VeRL's `RLHFDataset` (`verl.trainer.main_ppo`, GRPO/PPO): one row per task.

Columns: `data_source`, `prompt` (the task input as chat messages), `ability`,
`reward_model` {style: "rule", ground_truth: str}, `extra_info` {split, index, task_key, nemo_gym,
n, pass_rate, mean_reward, tools}, `agent_name`.

`agent_name` picks VeRL's agent loop per row (`AgentLoopWorker` reads the column): `"gymverl_tools"`
(`gymverl.agent_loop`, which renders the row's own tools through the chat template) when the task has
tools, else VeRL's stock `"single_turn_agent"`; with `agent_loop="env"` (`to-parquet --agent-loop env`)
every row names `"gymverl_env"` (`gymverl.env_loop`, online RL that plays the environment). `extra_info.tools` is a JSON string of the task's tool
schemas in chat-template form, `[{"type": "function", "function": {name, description, parameters}}]`
(converted from the flat Responses-API tools in `responses_create_params.tools` by
`gymverl.messages.chat_tools`), null when the task has none. VeRL's `RLHFDataset` renders only tools
declared globally in `multi_turn.tool_config_path`, so without that loop a function-calling task would
be scored on calls to functions the policy was never shown. `extra_info.nemo_gym` is a JSON string of
{"responses_create_params", "task", "agent_ref"}: everything `gymverl.reward.compute_score` needs
to send a new answer to the task's NeMo Gym `/verify` (it sends `task`'s fields and nothing else;
`reward_model.ground_truth` is not read). NeMo Gym >= 0.5 rollout lines lack the input fields the
verifier does not echo, so `gymverl.convert` joins them onto the record first, from
`<stem>_materialized_inputs.jsonl` or the tasks file (`gymverl.sidecars`). `n` / `pass_rate` / `mean_reward` describe
the collected rollouts of the task (null when converting a tasks file), for curricula.
`images`: the prompt's images (`input_image` parts) as `[{"bytes", "path": null}]`, one `<image>`
placeholder each in the prompt text, as VeRL's `RLHFDataset` reads them (`data.image_key=images`,
its default; training needs a processor, i.e. a vision-language model); null for text-only tasks.
Images that are not inline data URLs are rejected (see `gymverl.messages`).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

import pyarrow as pa

from gymverl.formats import FieldRules, RowError, json_cell
from gymverl.records import agent_name, is_transitions, starts_without_prompt
from gymverl.messages import MessageError, chat_tools, check_placeholders, prompt_messages

# The agent loop names VeRL 0.9.1 looks up in its registry for the `agent_name` column:
# gymverl's own loop (gymverl/agent_loop.py registers it) and the stock single-turn loop
# (`@register("single_turn_agent")` in verl/experimental/agent_loop/single_turn_agent_loop.py).
TOOLS_AGENT = "gymverl_tools"
STOCK_AGENT = "single_turn_agent"
# gymverl's online loop (gymverl/env_loop.py): plays each row's NeMo Gym environment over HTTP.
ENV_AGENT = "gymverl_env"
# `--agent-loop`: "auto" = per row, gymverl_tools or the stock loop (offline-built prompts scored by
# compute_score); "env" = every row gymverl_env (online RL: VeRL reads the column per row, and it wins
# over `agent.default_agent_loop`, so online data must name the env loop itself).
AGENT_LOOPS = ("auto", "env")

# VeRL's multimodal image column (the struct a `datasets` Image feature stores).
IMAGES = pa.list_(pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())]))

SCHEMA = pa.schema(
    [
        pa.field("data_source", pa.string()),
        pa.field(
            "prompt",
            pa.list_(pa.struct([pa.field("role", pa.string()), pa.field("content", pa.string())])),
            nullable=False,
        ),
        pa.field("ability", pa.string()),
        pa.field("reward_model", pa.struct([pa.field("style", pa.string()), pa.field("ground_truth", pa.string())])),
        pa.field(
            "extra_info",
            pa.struct(
                [
                    pa.field("split", pa.string()),
                    pa.field("index", pa.int64()),
                    pa.field("task_key", pa.string()),
                    pa.field("nemo_gym", pa.string()),
                    pa.field("n", pa.int64()),
                    pa.field("pass_rate", pa.float64()),
                    pa.field("mean_reward", pa.float64()),
                    pa.field("tools", pa.string()),
                ]
            ),
        ),
        pa.field("agent_name", pa.string()),
        pa.field("images", IMAGES),
    ]
)


def rl_prompt(record: dict[str, Any], images: list[dict[str, Any]] | None = None) -> list[dict[str, str]]:
    """The task input as `{role, content}` messages (what VeRL's agent loop templates).

    `images`: a list that receives the prompt's images (their `<image>` placeholders are in the
    text); None refuses a prompt with images (RowError `images_not_supported`).
    """
    try:
        messages = prompt_messages(record["responses_create_params"], images=images)
        check_placeholders(messages, images or [])
    except MessageError as exc:
        raise RowError(exc.code, f"cannot convert the prompt to chat messages: {exc}") from None
    out: list[dict[str, str]] = []
    for m in messages:
        # A prompt column holding tool calls would need struct fields that every other row then
        # carries as nulls (the Arrow null-key trap), so such prompts are refused, not mangled.
        if m.get("tool_calls") or m.get("role") == "tool":
            raise RowError("prompt_has_tool_calls", "the task input contains tool calls, which an RL prompt row cannot hold")
        out.append({"role": m["role"], "content": m.get("content") or ""})
    if not out or starts_without_prompt(record, request_only=True):
        # the one "no prompt" rule (validate counts it; sft and dpo reject it under the same name)
        reason = "the task input has no messages" if not out else "the task prompt asks nothing: no message before its first model turn holds text or an image"
        output = (record.get("response") or {}).get("output")
        if is_transitions(output) or "aviary" in str(agent_name(record) or ""):
            # aviary keeps the question in its environment (and in the transitions), not in the
            # request: an RL prompt cannot be made from it; SFT/DPO read the last transition.
            reason += (
                " (NeMo Gym's aviary environment poses its question at /seed_session, so the request "
                "holds none and no RL prompt can be built from it; sft and dpo read aviary's transitions)"
            )
        raise RowError("no_prompt", reason)
    return out


def rl_tools(record: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The task's tools in chat-template form (`[{"type": "function", "function": {...}}]`), None when none.

    Source: `responses_create_params.tools` (Responses-API flat tools, or already chat form).
    Raises RowError("bad_tools") for tools that cannot be converted.
    """
    try:
        tools = chat_tools((record.get("responses_create_params") or {}).get("tools"))
    except MessageError as exc:
        raise RowError("bad_tools", f"cannot convert the task's tools: {exc}") from None
    return tools or None


def rl_row(
    record: dict[str, Any],
    *,
    rules: FieldRules,
    data_source: str,
    ability: str,
    task_key: str,
    stats: tuple[int, float, float] | None = None,
    agent_loop: str = "auto",
    fields: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], bool]:
    """One RL row for the task of `record` (split/index filled in by the writer) and whether it has a ground truth.

    `stats` = (n rollouts, pass rate, mean reward) of the task's collected rollouts, if any.
    `agent_loop`: one of `AGENT_LOOPS` (what the `agent_name` column says).
    `fields`: `rules.task_fields(record)` when the caller has read them already.
    """
    images: list[dict[str, Any]] = []
    prompt = rl_prompt(record, images)
    tools = rl_tools(record)
    if fields is None:
        fields = rules.task_fields(record)
    gt = rules.ground_truth(fields)
    nemo_gym = {
        "responses_create_params": record["responses_create_params"],
        "task": fields,
        "agent_ref": record.get("agent_ref"),
    }
    n, pass_rate, mean_reward = stats if stats is not None else (None, None, None)
    row = {
        "data_source": data_source,
        "prompt": prompt,
        "ability": ability,
        "reward_model": {"style": "rule", "ground_truth": gt if gt is not None else ""},
        "extra_info": {
            "split": None,
            "index": None,
            "task_key": task_key,
            "nemo_gym": json_cell(nemo_gym),
            "n": n,
            "pass_rate": pass_rate,
            "mean_reward": mean_reward,
            "tools": json_cell(tools) if tools else None,
        },
        "agent_name": ENV_AGENT if agent_loop == "env" else (TOOLS_AGENT if tools else STOCK_AGENT),
        "images": images or None,
    }
    return row, gt is not None


def row_tools(extra_info: Any, params: Mapping[str, Any] | None = None) -> list[dict[str, Any]] | None:
    """The row's tool schemas from `extra_info.tools` (format: `gymverl.formats.rl`), None when it has none.

    Returns `[{"type": "function", "function": {"name", "description"?, "parameters"}}]`, the form
    chat templates (and VeRL's `verl/tools/schemas.py`) expect. When the row has no
    `extra_info.tools` (RL parquet written before that column) and `params` (the task's
    `responses_create_params`) is given, the task's Responses-API tools are converted instead
    (`gymverl.messages.chat_tools`). Raises ValueError naming the fault for a value that is not
    such a list: a row whose tools cannot be shown must not train silently without them.
    """
    raw = extra_info.get("tools") if isinstance(extra_info, Mapping) else None
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"extra_info.tools is not valid JSON ({exc})") from None
    if raw is None:  # no column, a null cell or JSON null: the task's own tools, if given
        if not params:
            return None
        try:
            return chat_tools(params.get("tools")) or None
        except MessageError as exc:
            raise ValueError(f"the task's tools cannot be shown to the model: {exc}") from None
    if not isinstance(raw, list) or not all(
        isinstance(t, dict) and isinstance(t.get("function"), dict) and t["function"].get("name") for t in raw
    ):
        raise ValueError('extra_info.tools must be a list of {"type": "function", "function": {"name": ...}} objects')
    return raw or None
