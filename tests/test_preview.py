"""`gymverl preview` shows what VeRL trains on, token for token, for rl, sft and dpo parquet.

Every comparison is against VeRL's own code with a real (tiny, local) tokenizer and chat template:
RL prompts against `RLHFDataset` + the stock `SingleTurnAgentLoop` (run with a recording LLM
server, the one stand-in: there is no inference engine on a CPU box), SFT spans against
`GymverlSFTDataset`'s `input_ids` / `loss_mask`. Parquet comes from sample_data/ via `to-parquet`.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from typer.testing import CliRunner

from conftest import SAMPLE_DATA
from gymverl.cli import app
from gymverl.errors import UsageError
from gymverl.preview import TOOLS_AGENT, PreviewError, preview
from gymverl.verl_data import decode_row

pytestmark = pytest.mark.verl

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """rl / sft / dpo parquet written by `gymverl to-parquet` from sample_data/rollouts.jsonl."""
    out = tmp_path_factory.mktemp("preview-data")
    paths = {}
    for fmt in ("rl", "sft", "dpo"):
        paths[fmt] = out / f"{fmt}.parquet"
        res = runner.invoke(app, ["to-parquet", str(SAMPLE_DATA / "rollouts.jsonl"), "-f", fmt, "-o", str(paths[fmt]), "--json"])
        assert res.exit_code == 0, res.output
    return paths


@pytest.fixture(scope="module")
def tok(tiny_model: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def _rows(path: Path) -> list[dict[str, Any]]:
    return pq.read_table(path).to_pylist()


def _runs(mask: list[int]) -> list[tuple[int, int]]:
    out, i = [], 0
    while i < len(mask):
        if mask[i]:
            j = i
            while j < len(mask) and mask[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


# ---- rl ----------------------------------------------------------------------------------------


class RecordingServer:
    """The LLM server the agent loop calls: records the prompt ids it is given, answers one EOS."""

    def __init__(self, eos: int) -> None:
        self.eos = eos
        self.prompts: list[list[int]] = []

    async def generate(self, *, request_id: str, prompt_ids: list[int], sampling_params: dict[str, Any], **kw: Any) -> Any:
        from verl.workers.rollout.replica import TokenOutput

        self.prompts.append(list(prompt_ids))
        return TokenOutput(token_ids=[self.eos], log_probs=[0.0])


def _agent_loop_prompt_ids(agent_name: str, item: dict[str, Any], tok: Any, tiny_model: Path) -> tuple[list[int], list[int]]:
    """(ids the LLM server got, AgentLoopOutput.prompt_ids) of the agent loop registered as
    `agent_name`, built and run the way VeRL's AgentLoopWorker does (hydra instantiate from the
    registry, `run(sampling_params, **row)` with the RLHFDataset item's non-tensor fields)."""
    import hydra

    try:
        from verl.experimental.agent_loop.agent_loop import DictConfigWrap, ToolListWrap, _agent_loop_registry
    except ModuleNotFoundError as exc:  # VeRL's agent loop imports packages verl does not declare
        pytest.fail(f"VeRL's agent loop cannot be imported: no module {exc.name!r} (pip install '.[verl]' installs it).")
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from gymverl.preview import model_type

    config = OmegaConf.create({"actor_rollout_ref": {"rollout": {"prompt_length": 4096, "response_length": 64}}, "data": {}})
    server = RecordingServer(tok.eos_token_id)
    kwargs = {k: v for k, v in item.items() if not hasattr(v, "shape")}

    async def go() -> Any:
        loop = hydra.utils.instantiate(
            config=_agent_loop_registry[agent_name], trainer_config=DictConfigWrap(config=config), server_manager=server,
            tokenizer=tok, processor=None, hf_model_type=model_type(tiny_model), dataset_cls=RLHFDataset,
            data_config=DictConfigWrap(config.data), tools=ToolListWrap([]),
        )
        return await loop.run({"temperature": 1.0}, **kwargs)

    out = asyncio.run(go())
    assert server.prompts, f"{agent_name} never asked the LLM server"
    return server.prompts[0], list(out.prompt_ids)


def _rlhf(path: Path, tok: Any, tmp_path: Path) -> Any:
    from verl.utils.dataset.rl_dataset import RLHFDataset

    config = OmegaConf.create({"cache_dir": str(tmp_path / "verl-cache"), "prompt_key": "prompt", "filter_overlong_prompts": False})
    return RLHFDataset([str(path)], tok, config)


def test_rl_prompt_equals_rlhf_dataset_and_the_rows_agent_loop(data: dict[str, Path], tok: Any, tiny_model: Path, tmp_path: Path) -> None:
    """Every RL row: the preview's prompt is what the agent loop its `agent_name` selects sends."""
    try:
        import verl.experimental.agent_loop.single_turn_agent_loop  # noqa: F401 - registers single_turn_agent

        import gymverl.agent_loop  # noqa: F401 - registers gymverl_tools
    except ModuleNotFoundError as exc:  # VeRL's agent loop imports packages verl does not declare
        pytest.fail(f"VeRL's agent loop cannot be imported: no module {exc.name!r} (pip install '.[verl]' installs it).")

    ds = _rlhf(data["rl"], tok, tmp_path)
    rows = _rows(data["rl"])
    assert len(ds) == len(rows) >= 2
    seen = set()
    for i, row in enumerate(rows):
        agent = row["agent_name"]
        pv = preview(data["rl"], tiny_model, row=i)
        sent, prompt_ids = _agent_loop_prompt_ids(agent, ds[i], tok, tiny_model)
        (section,) = pv.sections
        assert section.name == "prompt" and section.trained == []
        assert section.token_ids == sent == prompt_ids, f"row {i}"
        assert section.text == tok.decode(sent, skip_special_tokens=False)
        assert pv.agent_name == pv.agent_loop == agent and pv.warnings == []
        if agent == TOOLS_AGENT:
            names = [t["function"]["name"] for t in pv.tools]
            assert names and all(f'"name": "{n}"' in section.text for n in names)
        else:
            assert agent == "single_turn_agent" and pv.tools is None
        seen.add((row["data_source"], agent))
    assert {("math_with_judge_simple_agent", "single_turn_agent"), ("xlam_fc_simple_agent", TOOLS_AGENT)} <= seen


def _without_agent_columns(src: Path, dst: Path) -> Path:
    """The RL parquet as gymverl wrote it before rows carried `agent_name` and `extra_info.tools`."""
    rows = _rows(src)
    for r in rows:
        r.pop("agent_name", None)
        r["extra_info"].pop("tools", None)
    pq.write_table(pa.Table.from_pylist(rows), dst)
    return dst


def test_rl_old_rows_warn_that_task_tools_are_not_shown(data: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    old = _without_agent_columns(data["rl"], tmp_path / "rl-old.parquet")
    rows = _rows(old)
    i = next(k for k, r in enumerate(rows) if r["data_source"] == "xlam_fc_simple_agent")
    pv = preview(old, tiny_model, row=i)
    assert pv.task_tools == 1 and pv.tools is None
    assert "convert_currency" not in pv.sections[0].text
    assert any("no agent_name column" in w and "will not see" in w for w in pv.warnings)
    j = next(k for k, r in enumerate(rows) if r["data_source"] == "math_with_judge_simple_agent")
    assert preview(old, tiny_model, row=j).warnings == []


def _with_agent_columns(src: Path, dst: Path, agent: str, tools: list[dict[str, Any]] | None) -> Path:
    """The RL parquet with the agent_name column and extra_info.tools of the common design added."""
    rows = _rows(src)
    for r in rows:
        r["agent_name"] = agent
        r["extra_info"]["tools"] = json.dumps(tools) if tools else None
    pq.write_table(pa.Table.from_pylist(rows), dst)
    return dst


def test_rl_row_with_gymverl_tools_agent_renders_its_tools(data: dict[str, Path], tok: Any, tiny_model: Path, tmp_path: Path) -> None:
    sft = _rows(data["sft"])
    tools = json.loads(next(r["tools"] for r in sft if r["tools"]))
    path = _with_agent_columns(data["rl"], tmp_path / "rl-tools.parquet", TOOLS_AGENT, tools)
    rows = _rows(path)
    i = next(k for k, r in enumerate(rows) if r["data_source"] == "xlam_fc_simple_agent")
    pv = preview(path, tiny_model, row=i)
    assert pv.agent_name == pv.agent_loop == TOOLS_AGENT and pv.tools == tools and pv.warnings == []
    text = pv.sections[0].text
    fn = tools[0]["function"]
    assert f'"name": "{fn["name"]}"' in text and fn["description"] in text
    expected = tok.apply_chat_template(rows[i]["prompt"], tools=tools, add_generation_prompt=True, tokenize=True)
    expected = expected["input_ids"] if hasattr(expected, "keys") else expected
    assert pv.sections[0].token_ids == list(expected)
    # The same row under the stock loop: no tools in the prompt, and a warning that says so.
    stock = _with_agent_columns(data["rl"], tmp_path / "rl-stock.parquet", "single_turn_agent", tools)
    pv2 = preview(stock, tiny_model, row=i)
    assert pv2.tools is None and fn["description"] not in pv2.sections[0].text
    assert any("will not see" in w and "single_turn_agent" in w for w in pv2.warnings)


def test_rl_prompt_equals_gymverl_tools_agent_loop(data: dict[str, Path], tok: Any, tiny_model: Path, tmp_path: Path) -> None:
    """Where gymverl's own agent loop exists (gymverl/agent_loop.py), its prompt is the preview's."""
    pytest.importorskip("gymverl.agent_loop", reason="gymverl.agent_loop (the gymverl_tools agent loop) is not on this branch")
    from verl.experimental.agent_loop.agent_loop import _agent_loop_registry

    assert TOOLS_AGENT in _agent_loop_registry
    tools = json.loads(next(r["tools"] for r in _rows(data["sft"]) if r["tools"]))
    path = _with_agent_columns(data["rl"], tmp_path / "rl-tools.parquet", TOOLS_AGENT, tools)
    ds = _rlhf(path, tok, tmp_path)
    for i in range(len(ds)):
        sent, _ = _agent_loop_prompt_ids(TOOLS_AGENT, ds[i], tok, tiny_model)
        assert preview(path, tiny_model, row=i).sections[0].token_ids == sent, f"row {i}"


def test_rl_answer_shows_the_verify_body_of_compute_score(data: dict[str, Path], tiny_model: Path) -> None:
    from gymverl.reward import verify_request

    rows = _rows(data["rl"])
    i = next(k for k, r in enumerate(rows) if r["data_source"] == "math_with_judge_simple_agent")
    pv = preview(data["rl"], tiny_model, row=i, answer="\\boxed{56}")
    assert pv.verify is not None and pv.verify.agent == "math_with_judge_simple_agent"
    ref, agent = verify_request("\\boxed{56}", rows[i]["extra_info"])
    body = pv.verify.body
    assert body.keys() == ref.keys() and agent == pv.verify.agent
    assert body["responses_create_params"] == ref["responses_create_params"]
    assert body["response"]["output"][0]["content"][0]["text"] == "\\boxed{56}"
    assert {k: v for k, v in body.items() if k not in ("response",)} == {k: v for k, v in ref.items() if k != "response"}
    assert "expected_answer" in body and "reward" not in body
    # A tool-call answer becomes a function_call item, as compute_score sends it.
    j = next(k for k, r in enumerate(rows) if r["data_source"] == "xlam_fc_simple_agent")
    call = '<tool_call>{"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}}</tool_call>'
    out = preview(data["rl"], tiny_model, row=j, answer=call).verify.body["response"]["output"]
    assert [o["type"] for o in out] == ["function_call"] and out[0]["name"] == "convert_currency"
    assert preview(data["rl"], tiny_model, row=i).verify is None


# ---- sft ---------------------------------------------------------------------------------------


def _sft_items(path: Path, tok: Any, **cfg: Any) -> Any:
    from gymverl.verl_data import GymverlSFTDataset

    return GymverlSFTDataset([str(path)], tok, OmegaConf.create({"max_length": 65536, "truncation": "error", "pad_mode": "no_padding", **cfg}))


def test_sft_spans_equal_gymverl_sft_dataset_loss_mask(data: dict[str, Path], tok: Any, tiny_model: Path) -> None:
    ds = _sft_items(data["sft"], tok)
    rows = _rows(data["sft"])
    assert len(ds) == len(rows)
    for i in range(len(rows)):
        item = ds[i]
        ids, mask = item["input_ids"].tolist(), item["loss_mask"].tolist()
        pv = preview(data["sft"], tiny_model, row=i)
        (sec,) = pv.sections
        assert sec.token_ids == ids, f"row {i}"
        assert [(s.start, s.end) for s in sec.trained] == _runs(mask), f"row {i}"
        assert sec.trained_tokens == sum(mask)
        for s in sec.trained:
            assert s.text == tok.decode(ids[s.start : s.end], skip_special_tokens=False)
            assert sec.text[s.char_start : s.char_end] == s.text
        assert pv.warnings == []
    tool_rows = [i for i, r in enumerate(rows) if r["tools"]]
    assert tool_rows, "sample_data has tool-calling rollouts"
    pv = preview(data["sft"], tiny_model, row=tool_rows[0])
    assert "<tool_call>" in "".join(s.text for s in pv.sections[0].trained)
    assert "<tool_response>" not in "".join(s.text for s in pv.sections[0].trained)


def test_sft_template_mismatch_is_reported_not_hidden(data: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """A template that renders the last turn of a conversation differently (Qwen3 thinking style) makes VeRL's dataset
    stop; the preview says so and shows what training sees with ignore_input_ids_mismatch."""
    from gymverl.tiny import CHAT_TEMPLATE

    tdir = tmp_path / "think-tok"
    shutil.copytree(tiny_model, tdir)
    template = CHAT_TEMPLATE.replace(
        "{% elif message.role == 'assistant' %}<|im_start|>assistant\n",
        "{% elif message.role == 'assistant' %}<|im_start|>assistant\n{% if loop.last and not loop.first %}<think>\n\n</think>\n\n{% endif %}",
    )
    assert template != CHAT_TEMPLATE
    (tdir / "chat_template.jinja").write_text(template)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tdir))
    with pytest.raises(AssertionError):
        _sft_items(data["sft"], tok)[0]
    item = _sft_items(data["sft"], tok, ignore_input_ids_mismatch=True)[0]
    pv = preview(data["sft"], tdir, row=0)
    assert pv.sections[0].token_ids == item["input_ids"].tolist()
    assert [(s.start, s.end) for s in pv.sections[0].trained] == _runs(item["loss_mask"].tolist())
    assert any("ignore_input_ids_mismatch" in w for w in pv.warnings)


# ---- dpo ---------------------------------------------------------------------------------------


def test_dpo_renders_chosen_and_rejected_after_the_same_prompt(data: dict[str, Path], tok: Any, tiny_model: Path) -> None:
    rows = _rows(data["dpo"])
    for i, row in enumerate(rows):
        row = decode_row(row)
        pv = preview(data["dpo"], tiny_model, row=i)
        assert [s.name for s in pv.sections] == ["chosen", "rejected"]
        prompt, tools = row["prompt"], row["tools"] or None
        prompt_text = tok.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
        for sec in pv.sections:
            response = row[sec.name]
            full = tok.apply_chat_template(prompt + response, tools=tools, tokenize=False)
            assert sec.text == full
            (span,) = sec.trained
            assert sec.text[: span.char_start] == prompt_text and span.end == sec.tokens
            assert span.text == full[len(prompt_text) :]
            assert response[-1]["content"] in span.text
        assert pv.sections[0].text != pv.sections[1].text
        assert pv.data["chosen_reward"] > pv.data["rejected_reward"]


def test_dpo_old_json_string_rows_render_like_message_lists(data: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    """DPO rows of the old layout (JSON-string prompt/chosen/rejected) preview the same as today's message lists."""
    rows = _rows(data["dpo"])
    i = next(k for k, r in enumerate(rows) if not r["tools"])
    row = decode_row(rows[i])
    assert isinstance(row["chosen"], list) and isinstance(row["chosen"][0], dict)
    old = {**rows[i], **{k: json.dumps(row[k]) for k in ("prompt", "chosen", "rejected")}}
    path = tmp_path / "dpo-strings.parquet"
    pq.write_table(pa.Table.from_pylist([old]), path)
    assert pa.types.is_string(pq.read_schema(path).field("chosen").type)
    a, b = preview(data["dpo"], tiny_model, row=i), preview(path, tiny_model, row=0)
    assert [(s.text, s.token_ids, s.trained) for s in a.sections] == [(s.text, s.token_ids, s.trained) for s in b.sections]


# ---- CLI ---------------------------------------------------------------------------------------


def test_cli_json_is_the_library_preview(data: dict[str, Path], tiny_model: Path) -> None:
    res = runner.invoke(app, ["preview", str(data["sft"]), "--tokenizer", str(tiny_model), "--row", "12", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)  # nothing but the JSON on stdout (VeRL's prints kept off it)
    expected = preview(data["sft"], tiny_model, row=12).to_dict()
    assert out == json.loads(json.dumps(expected))
    (sec,) = out["sections"]
    assert sec["trained"] and all(sec["text"][s["char_start"] : s["char_end"]] == s["text"] for s in sec["trained"])
    assert {"start", "end", "text"} <= set(sec["trained"][0])

    res = runner.invoke(app, ["preview", str(data["rl"]), "-t", str(tiny_model), "--answer", "\\boxed{56}", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["format"] == "rl" and out["verify"]["body"]["response"]["output"][0]["content"][0]["text"] == "\\boxed{56}"


def test_cli_terminal_output_highlights_trained_spans(data: dict[str, Path], tiny_model: Path) -> None:
    from rich.console import Console
    from rich.style import Style

    from gymverl import cli

    pv = preview(data["sft"], tiny_model, row=0)
    con = Console(record=True, width=400, force_terminal=True, color_system="standard")
    cli.render_section(pv.sections[0], out=con)
    ansi = con.export_text(styles=True)
    style = Style.parse(cli.TRAINED_STYLE)
    trained = pv.sections[0].trained[0].text.split("\n")[0]
    assert trained and style.render(trained, color_system=con._color_system) in ansi
    prompt_line = "What is $7 \\times 8$?" if "7 \\times 8" in pv.sections[0].text else pv.sections[0].text.split("\n")[1]
    assert style.render(prompt_line, color_system=con._color_system) not in ansi

    for fmt in ("rl", "sft", "dpo"):
        res = runner.invoke(app, ["preview", str(data[fmt]), "--tokenizer", str(tiny_model)])
        assert res.exit_code == 0, res.output
        assert f"preview ({fmt})" in res.stdout and "<|im_start|>" in res.stdout


def _cli_error(*args: str) -> str:
    res = runner.invoke(app, ["preview", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    return lines[0]


def test_cli_errors_are_one_sentence_exit_2(data: dict[str, Path], tiny_model: Path, tmp_path: Path) -> None:
    t = str(tiny_model)
    assert "has no row 99" in _cli_error(str(data["rl"]), "-t", t, "--row", "99")
    assert "--row" in _cli_error(str(data["rl"]), "-t", t, "--row", "-1")
    assert "no such file" in _cli_error(str(tmp_path / "nope.parquet"), "-t", t)
    assert "not a parquet file" in _cli_error(str(SAMPLE_DATA / "rollouts.jsonl"), "-t", t)
    assert "is a directory" in _cli_error(str(data["rl"].parent), "-t", t)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), other)
    assert "not a gymverl parquet" in _cli_error(str(other), "-t", t)
    assert "no such tokenizer directory" in _cli_error(str(data["rl"]), "-t", str(tmp_path / "no-tok"))
    (tmp_path / "empty").mkdir()
    assert "holds no tokenizer" in _cli_error(str(data["rl"]), "-t", str(tmp_path / "empty"))
    no_template = tmp_path / "no-template"
    no_template.mkdir()
    for f in tiny_model.glob("tokenizer*"):
        shutil.copy(f, no_template / f.name)
    assert "no chat template" in _cli_error(str(data["sft"]), "-t", str(no_template))
    assert "--answer is for rl" in _cli_error(str(data["sft"]), "-t", t, "--answer", "x")
    refusing = tmp_path / "refusing"
    shutil.copytree(tiny_model, refusing)
    (refusing / "chat_template.jinja").write_text("{{ raise_exception('this template renders nothing') }}")
    for fmt in ("rl", "sft", "dpo"):
        line = _cli_error(str(data[fmt]), "-t", str(refusing))
        assert "cannot render row 0" in line and "this template renders nothing" in line, line
    assert "Missing option" in runner.invoke(app, ["preview", str(data["rl"])]).output


def test_library_errors_are_usage_errors(data: dict[str, Path], tiny_model: Path) -> None:
    with pytest.raises(PreviewError) as exc:
        preview(data["dpo"], tiny_model, row=3)
    assert isinstance(exc.value, UsageError) and exc.value.exit_code == 2


def test_rl_rows_for_the_env_loop_render_their_tools(tok: Any, tiny_model: Path, tmp_path: Path) -> None:
    """`to-parquet --agent-loop env` rows: gymverl_env renders the row's tools like gymverl_tools does,
    so the preview shows them and does not tell the user to rewrite rows gymverl itself wrote."""
    path = tmp_path / "env.parquet"
    res = runner.invoke(app, ["to-parquet", str(SAMPLE_DATA / "tasks.jsonl"), "-f", "rl", "--agent-loop", "env", "-o", str(path), "--json"])
    assert res.exit_code == 0, res.output
    rows = _rows(path)
    seen_tools = False
    for i, row in enumerate(rows):
        pv = preview(path, tiny_model, row=i)
        assert pv.agent_name == pv.agent_loop == "gymverl_env"
        assert not any("will not see" in w or "not one gymverl writes" in w for w in pv.warnings), pv.warnings
        tools = json.loads(row["extra_info"]["tools"]) if row["extra_info"]["tools"] else None
        assert pv.tools == tools
        expected = tok.apply_chat_template(row["prompt"], tools=tools, add_generation_prompt=True, tokenize=True)
        expected = expected["input_ids"] if hasattr(expected, "keys") else expected
        assert pv.sections[0].token_ids == list(expected), f"row {i}"
        if tools:
            seen_tools = True
            assert all(f'"name": "{t["function"]["name"]}"' in pv.sections[0].text for t in tools)
    assert seen_tools


def test_building_the_tiny_model_prints_nothing(tmp_path, capfd):
    """`gymverl demo 2> err` held transformers' "Writing model shards 0%...100%" bar: stderr is for
    warnings and errors."""
    from gymverl.tiny import build_tiny_model

    build_tiny_model(tmp_path / "m")
    out, err = capfd.readouterr()
    assert "Writing model shards" not in err + out, err


def test_a_dataset_error_names_the_row_asked_for() -> None:
    """preview loads the row asked for as a one-row file, so the dataset's own sentence said "row 0"
    ("cannot load row 2: row 0 has a tool call ..."); it now reads "cannot load row 2: it has ..."."""
    from gymverl.preview import _of_the_row

    assert _of_the_row("row 0 has a tool call whose arguments are not a JSON object ('x')\nmore") == (
        "it has a tool call whose arguments are not a JSON object ('x')"
    )
    assert _of_the_row("assertion failed") == "assertion failed" and _of_the_row("") == ""
