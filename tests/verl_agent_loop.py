"""Test helpers: drive RL parquet rows through VeRL 0.9.1's own rollout machinery, with a stand-in model.

`render_prompts` loads the parquet with VeRL's `RLHFDataset`, batches it with VeRL's `collate_fn`
into a `DataProto`, and runs `AgentLoopWorker.generate_sequences` -- the code a main_ppo rollout
worker runs: it picks each row's agent loop by its `agent_name` column (gymverl's loop declared
through `actor_rollout_ref.rollout.agent.agent_loop_config_path`, as a user would), and the loop
renders the prompt with the real tokenizer and chat template. Only the model is a stand-in
(`FixedReply`: an `LLMServerClient.generate` that answers fixed token ids and records the prompt ids
it was sent).

`QWEN25_TEMPLATE` is Qwen2.5-Instruct's chat template (tool definitions go into the system turn in
`<tools>`), a real tool-capable template; `tiny_model_with_template` puts it on gymverl.tiny's model.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gymverl.agent_loop import CONFIG_PATH

QWEN25_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\nYou are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": <args-json-object>}\\n</tool_call><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

REPLY = [5, 6, 7]  # the stand-in model's answer (token ids)


def tiny_model_with_template(out_dir: Path, template: str = QWEN25_TEMPLATE) -> Path:
    """gymverl.tiny's Qwen2 model + tokenizer in `out_dir`, with `template` as its chat template."""
    from transformers import AutoTokenizer

    from gymverl.tiny import build_tiny_model

    build_tiny_model(out_dir)
    tok = AutoTokenizer.from_pretrained(str(out_dir))
    tok.chat_template = template
    (out_dir / "chat_template.jinja").unlink(missing_ok=True)
    tok.save_pretrained(str(out_dir))
    return out_dir


class FixedReply:
    """Stand-in for the policy behind VeRL's `LLMServerClient`: answers `REPLY`, records each prompt."""

    def __init__(self) -> None:
        self.prompts: list[list[int]] = []

    async def generate(self, request_id: str, *, prompt_ids: list[int], sampling_params: dict[str, Any], **_: Any):  # noqa: ANN201
        from verl.workers.rollout.replica import TokenOutput

        self.prompts.append(list(prompt_ids))
        return TokenOutput(token_ids=list(REPLY))


def verl_config(model_dir: Path, files: list[Path], *, prompt_length: int = 2048, with_gymverl_loop: bool = True):  # noqa: ANN201
    """main_ppo's own config (`ppo_trainer.yaml`) with the overrides a user passes for gymverl's rl parquet."""
    from hydra import compose, initialize_config_dir

    import verl.trainer.main_ppo as main_ppo

    overrides = [
        f"actor_rollout_ref.model.path={model_dir}",
        f"data.train_files=[{','.join(str(f) for f in files)}]",
        f"data.max_prompt_length={prompt_length}",
        "data.max_response_length=16",
        "actor_rollout_ref.rollout.name=vllm",  # mandatory in the YAML; no server is started here
    ]
    if with_gymverl_loop:
        overrides.append(f"actor_rollout_ref.rollout.agent.agent_loop_config_path={CONFIG_PATH}")
    with initialize_config_dir(config_dir=str(Path(main_ppo.__file__).parent / "config"), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@dataclass
class Rendered:
    """One row as the rollout worker handled it."""

    agent_name: str
    extra_info: dict[str, Any]
    prompt_ids: list[int]  # the prompt in VeRL's output batch (padding removed)
    text: str  # prompt_ids decoded


def render_prompts(model_dir: Path, files: list[Path], *, agent_name: str | None = None, **config_kw: Any) -> tuple[list[Rendered], FixedReply]:
    """Every row of the parquet `files` through RLHFDataset + AgentLoopWorker.generate_sequences.

    `agent_name` forces every row onto that loop (e.g. VeRL's stock "single_turn_agent") instead of
    the row's own column. Returns the rows in dataset order and the stand-in model (its `prompts`).
    """
    from verl import DataProto
    from verl.experimental.agent_loop.agent_loop import AgentLoopWorker
    from verl.utils.dataset.rl_dataset import RLHFDataset, collate_fn

    cfg = verl_config(model_dir, files, **config_kw)
    model = FixedReply()
    worker = AgentLoopWorker(cfg, llm_client=model)
    dataset = RLHFDataset(data_files=[str(f) for f in files], tokenizer=worker.tokenizer, config=cfg.data)
    items = [dataset[i] for i in range(len(dataset))]
    if agent_name is not None:
        for item in items:
            item["agent_name"] = agent_name
    batch = DataProto.from_single_dict(collate_fn(items))
    out = asyncio.run(worker.generate_sequences(batch))
    width = out.batch["prompts"].shape[1]
    rendered = []
    for i, item in enumerate(items):
        mask = out.batch["attention_mask"][i, :width].bool()
        ids = out.batch["prompts"][i][mask].tolist()
        assert out.batch["responses"][i, : len(REPLY)].tolist() == REPLY  # the stand-in's answer came back
        rendered.append(Rendered(str(out.non_tensor_batch["agent_name"][i]), item["extra_info"], ids, worker.tokenizer.decode(ids)))
    assert sorted(map(tuple, model.prompts)) == sorted(tuple(r.prompt_ids) for r in rendered)  # what the model was sent
    return rendered, model
