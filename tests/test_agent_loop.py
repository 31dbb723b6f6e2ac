"""Issue 12 item 1: the policy sees each RL row's own tools (gymverl.agent_loop, `agent_name` column).

Proof through VeRL 0.9.1's own code: `to-parquet --format rl` -> VeRL's `RLHFDataset` + `collate_fn`
-> `AgentLoopWorker.generate_sequences` (which picks the loop per row by `agent_name`; gymverl's loop
declared through the shipped `agent_loop.yaml`, as a user would) with a real tokenizer and Qwen2.5's
real chat template; only the model is a stand-in returning fixed token ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, SAMPLE_DATA, SHARED
from gymverl.cli import app
from gymverl.formats import RowError
from gymverl.formats.rl import SCHEMA, STOCK_AGENT, TOOLS_AGENT, rl_tools

pytestmark = pytest.mark.verl
runner = CliRunner()
CASE = SHARED / "cases" / "rl-prompt-without-tools"

# A task file of our own: two tools (one without a description), no system message (Qwen2.5's
# template then writes its own), next to a task without tools.
OWN_TASKS = [
    {
        "responses_create_params": {
            "input": [{"role": "user", "content": "Book a table for 2 in Rome and tell me the time there."}],
            "tools": [
                {"type": "function", "name": "book_table", "description": "Reserve a restaurant table.",
                 "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "party_size": {"type": "integer"}},
                                "required": ["city", "party_size"]}, "strict": True},
                {"type": "function", "name": "local_time", "parameters": {"type": "object", "properties": {"tz_city": {"type": "string"}}}},
            ],
        },
        "expected_answers": [{"name": "book_table", "arguments": {"city": "Rome", "party_size": 2}}],
        "agent_ref": {"type": "responses_api_agents", "name": "xlam_fc_simple_agent"},
    },
    {
        "responses_create_params": {"input": [{"role": "user", "content": "What is 2 + 2? Put it in \\boxed{}."}]},
        "expected_answer": "4",
        "agent_ref": {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"},
    },
]


@pytest.fixture(scope="module")
def qwen_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from verl_agent_loop import tiny_model_with_template

    return tiny_model_with_template(tmp_path_factory.mktemp("qwen25-tiny"))


def to_rl(tasks: Path, out: Path) -> list[Path]:
    """`gymverl to-parquet TASKS --format rl` (every row in train) -> the parquet files."""
    res = runner.invoke(app, ["to-parquet", str(tasks), "--format", "rl", "-o", str(out), "--val-fraction", "0"])
    assert res.exit_code == 0, res.output
    files = sorted(out.rglob("*.parquet"))
    assert files
    return files


def expected_tools(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The task's tools as a chat template must get them, written out here from the Responses-API form."""
    out = []
    for t in record["responses_create_params"].get("tools") or []:
        fn = {"name": t["name"]}
        if "description" in t:
            fn["description"] = t["description"]
        fn["parameters"] = t["parameters"]
        out.append({"type": "function", "function": fn})
    return out


def check_tools_visible(model_dir: Path, files: list[Path], tasks: list[dict[str, Any]]) -> None:
    """The whole claim, for the rows of `files` (converted from `tasks`, in order):

    - rows with tools run on gymverl's loop and the prompt the model got holds every tool schema
      verbatim as the chat template renders it (name, description, parameter names), token for token
      what `apply_chat_template(messages, tools=..., add_generation_prompt=True)` gives;
    - rows without tools run on VeRL's stock loop, with no tool block; gymverl's loop renders them
      token for token as the stock loop does;
    - the stock loop on the tool rows (the old behaviour) shows no tool: the fault this fixes.
    """
    from transformers import AutoTokenizer

    from verl_agent_loop import render_prompts

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rows, model = render_prompts(model_dir, files)
    stock, _ = render_prompts(model_dir, files, agent_name=STOCK_AGENT)
    ours, _ = render_prompts(model_dir, files, agent_name=TOOLS_AGENT)
    assert len(rows) == len(tasks) == len(model.prompts)
    assert any(expected_tools(t) for t in tasks) and any(not expected_tools(t) for t in tasks)
    for row, st, own, task in zip(rows, stock, ours, tasks):
        tools = expected_tools(task)
        messages = task["responses_create_params"]["input"]
        want = tok.apply_chat_template(messages, tools=tools or None, add_generation_prompt=True, tokenize=True, return_dict=False)
        if tools:
            assert row.agent_name == TOOLS_AGENT
            assert json.loads(row.extra_info["tools"]) == tools
            for tool in tools:
                assert json.dumps(tool, ensure_ascii=False) in row.text, (tool, row.text)
                assert f'"name": "{tool["function"]["name"]}"' in row.text
                for param in tool["function"]["parameters"]["properties"]:
                    assert f'"{param}":' in row.text
            assert "# Tools" in row.text and "<tools>" in row.text
            assert row.prompt_ids == list(want)
            # The fault: VeRL's stock loop sends the same row without any of its tools.
            assert "<tools>" not in st.text
            assert all(t["function"]["name"] not in st.text for t in tools), st.text
        else:
            assert row.agent_name == STOCK_AGENT and row.extra_info["tools"] is None
            assert "<tools>" not in row.text
            assert row.prompt_ids == st.prompt_ids == own.prompt_ids == list(want)
        assert messages[-1]["content"] in row.text


def test_sample_tasks_tool_rows_show_their_tools_in_verls_agent_loop(qwen_model: Path, tmp_path: Path) -> None:
    tasks_file = SAMPLE_DATA / "tasks.jsonl"
    tasks = [json.loads(x) for x in tasks_file.read_text().splitlines() if x.strip()]
    check_tools_visible(qwen_model, to_rl(tasks_file, tmp_path / "rl"), tasks)


def test_own_tasks_several_tools_and_no_system_message(qwen_model: Path, tmp_path: Path) -> None:
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t) + "\n" for t in OWN_TASKS))
    files = to_rl(tasks_file, tmp_path / "rl")
    check_tools_visible(qwen_model, files, OWN_TASKS)
    from verl_agent_loop import render_prompts

    rows, _ = render_prompts(qwen_model, files)
    assert "You are Qwen" in rows[0].text  # the template's own system turn carries the tools


def test_case_rl_prompt_without_tools(qwen_model: Path, tmp_path: Path) -> None:
    if not (CASE / "tasks.jsonl").is_file():
        pytest.skip(f"case not found at {CASE} (only CI and development sessions have ../shared)")
    tasks = [json.loads(x) for x in (CASE / "tasks.jsonl").read_text().splitlines() if x.strip()]
    check_tools_visible(qwen_model, to_rl(CASE / "tasks.jsonl", tmp_path / "rl"), tasks)


def test_tiny_template_too(tmp_path: Path) -> None:
    """gymverl.tiny's own template (the demo's model) gets the tools the same way."""
    from gymverl.tiny import CHAT_TEMPLATE
    from verl_agent_loop import tiny_model_with_template

    model = tiny_model_with_template(tmp_path / "tiny", CHAT_TEMPLATE)
    tasks_file = SAMPLE_DATA / "tasks.jsonl"
    tasks = [json.loads(x) for x in tasks_file.read_text().splitlines() if x.strip()]
    check_tools_visible(model, to_rl(tasks_file, tmp_path / "rl"), tasks)


def test_overlong_tool_prompt_is_an_error_not_cut(qwen_model: Path, tmp_path: Path) -> None:
    """The stock loop left-truncates an overlong prompt, which would cut the tool block (it comes first)."""
    from verl_agent_loop import render_prompts

    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text(json.dumps(OWN_TASKS[0]) + "\n")
    files = to_rl(tasks_file, tmp_path / "rl")
    with pytest.raises(ValueError, match="rollout.prompt_length=64"):
        render_prompts(qwen_model, files, prompt_length=64)


def test_rl_columns_agent_name_and_tools(tmp_path: Path) -> None:
    files = to_rl(SAMPLE_DATA / "tasks.jsonl", tmp_path / "rl")
    table = pq.read_table(files[0])
    assert table.schema.equals(SCHEMA)
    for row in table.to_pylist():
        ng = json.loads(row["extra_info"]["nemo_gym"])
        has_tools = bool(ng["responses_create_params"].get("tools"))
        assert row["agent_name"] == (TOOLS_AGENT if has_tools else STOCK_AGENT)
        assert (row["extra_info"]["tools"] is not None) == has_tools


def test_rl_tools_conversion_and_errors() -> None:
    assert rl_tools({"responses_create_params": {"input": []}}) is None
    assert rl_tools({"responses_create_params": {"input": [], "tools": []}}) is None
    chat = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}]
    assert rl_tools({"responses_create_params": {"tools": chat}}) == chat  # chat form kept
    assert rl_tools({"responses_create_params": {"tools": [{"type": "function", "name": "f"}]}}) == chat
    for bad in ([{"type": "web_search"}], ["f"], [{"type": "function", "parameters": {}}]):
        with pytest.raises(RowError) as err:
            rl_tools({"responses_create_params": {"tools": bad}})
        assert err.value.code == "bad_tools"


def test_row_tools_refuses_unusable_values() -> None:
    from gymverl.agent_loop import row_tools

    assert row_tools({"tools": None}) is None and row_tools({}) is None and row_tools(None) is None
    good = [{"type": "function", "function": {"name": "f"}}]
    assert row_tools({"tools": json.dumps(good)}) == good
    for bad in ("{not json", json.dumps({"name": "f"}), json.dumps([{"name": "f"}])):
        with pytest.raises(ValueError, match="extra_info.tools"):
            row_tools({"tools": bad})


def test_shipped_agent_loop_config_and_names() -> None:
    """The YAML VeRL loads names gymverl's loop; the stock name is VeRL's own registered one."""
    import hydra.utils

    from gymverl.agent_loop import CONFIG_PATH, GymverlToolsAgentLoop, main_ppo_overrides
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    entries = yaml.safe_load(CONFIG_PATH.read_text())
    assert [e["name"] for e in entries] == [TOOLS_AGENT]
    assert hydra.utils.get_class(entries[0]["_target_"]) is GymverlToolsAgentLoop
    assert STOCK_AGENT in _agent_loop_registry and TOOLS_AGENT in _agent_loop_registry
    assert main_ppo_overrides() == [f"actor_rollout_ref.rollout.agent.agent_loop_config_path={CONFIG_PATH}"]
    assert '"agent_loop.yaml"' in (REPO / "pyproject.toml").read_text()  # shipped as package data
    out = subprocess.run([sys.executable, "-m", "gymverl.agent_loop", "--config-path"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and out.stdout.strip() == str(CONFIG_PATH), out.stderr


def test_max_tokens_counts_the_tools_the_policy_sees(qwen_model: Path, tmp_path: Path) -> None:
    """`to-parquet --format rl --max-tokens` measures the prompt as gymverl's loop renders it: with its tools."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(qwen_model))
    tasks_file = SAMPLE_DATA / "tasks.jsonl"
    tasks = [json.loads(x) for x in tasks_file.read_text().splitlines() if x.strip()]

    def length(task: dict[str, Any], tools: list[dict[str, Any]] | None) -> int:
        ids = tok.apply_chat_template(task["responses_create_params"]["input"], tools=tools, add_generation_prompt=True, tokenize=True, return_dict=False)
        return len(ids)

    limit = max(length(t, None) for t in tasks)  # every prompt fits without its tools
    too_long = [t for t in tasks if expected_tools(t) and length(t, expected_tools(t)) > limit]
    assert too_long
    out = tmp_path / "rl"
    res = runner.invoke(app, ["to-parquet", str(tasks_file), "--format", "rl", "-o", str(out), "--val-fraction", "0",
                              "--max-tokens", str(limit), "--tokenizer", str(qwen_model), "--json"])
    assert res.exit_code == 0, res.output
    rows = [r for f in sorted(out.rglob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert len(rows) == len(tasks) - len(too_long)
    assert sum(json.loads(res.stdout)["filtered"].values()) == len(too_long)


def test_template_that_ignores_tools_is_an_error(tmp_path: Path) -> None:
    """A chat template without a tools branch would silently drop them again: the loop refuses."""
    from gymverl.tiny import CHAT_TEMPLATE
    from verl_agent_loop import render_prompts, tiny_model_with_template

    no_tools = CHAT_TEMPLATE.replace("{% if tools %}", "{% if false %}")
    model = tiny_model_with_template(tmp_path / "m", no_tools)
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text(json.dumps(OWN_TASKS[0]) + "\n")
    with pytest.raises(ValueError, match=r"did not render the row's tools \(book_table, local_time"):
        render_prompts(model, to_rl(tasks_file, tmp_path / "rl"))
