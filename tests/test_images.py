"""Images in rollouts (`input_image` parts, as NeMo Gym's vlm_eval_kit and circle_click write them):
carried into VeRL's multimodal columns (an `images` column and `<image>` placeholders) for rl and sft,
refused with a named reason where they cannot be carried, never silently dropped."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image
from typer.testing import CliRunner

from conftest import SHARED
from gymverl.cli import app
from gymverl.convert import ConvertOptions, convert
from gymverl.messages import ContentError, check_placeholders, items_to_messages, prompt_messages

CASE = SHARED / "cases" / "images-dropped"
runner = CliRunner()


def _png(color: str = "red", size: tuple[int, int] = (30, 20)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _image_part(url: str) -> dict[str, Any]:
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def _rollout(task: int, rollout: int, reward: float, image_url: str, answer: str = "red") -> dict[str, Any]:
    return {
        "responses_create_params": {
            "input": [
                {"role": "system", "content": "Answer with one word."},
                {"role": "user", "content": [_image_part(image_url), {"type": "input_text", "text": "What colour is the image?"}]},
            ]
        },
        "response": {"id": f"r{task}-{rollout}", "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": answer}]}]},
        "reward": reward,
        "expected_answer": "red",
        "_ng_task_index": task,
        "_ng_rollout_index": rollout,
        "agent_ref": {"name": "vlm_agent"},
    }


@pytest.fixture()
def image_rollouts(tmp_path: Path) -> tuple[Path, bytes]:
    png = _png()
    recs = [
        _rollout(0, 0, 1.0, _data_url(png)),
        _rollout(0, 1, 0.0, _data_url(png), answer="blue"),
        _rollout(1, 0, 1.0, "https://example.com/cat.png"),  # line 3: not inline
    ]
    p = tmp_path / "vlm.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return p, png


# ---- the conversion ----------------------------------------------------------------------------


def test_image_parts_become_placeholders_and_image_bytes() -> None:
    png, jpg = _png(), _png("blue")
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="JPEG")
    jpg = buf.getvalue()
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "Compare "}, _image_part(_data_url(png)), {"type": "input_text", "text": " and "},
                                     {"type": "image_url", "image_url": {"url": _data_url(jpg, "image/jpeg")}}]},
        {"type": "function_call", "call_id": "c1", "name": "look", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "screen: "}, _image_part(_data_url(png))]},
    ]
    images: list[dict[str, Any]] = []
    msgs = items_to_messages(items, images=images)
    assert msgs[0] == {"role": "user", "content": "Compare <image> and <image>"}
    assert msgs[2] == {"role": "tool", "tool_call_id": "c1", "content": "screen: <image>"}
    assert images == [{"bytes": png, "path": None}, {"bytes": jpg, "path": None}, {"bytes": png, "path": None}]
    check_placeholders(msgs, images)


@pytest.mark.parametrize(
    ("part", "code"),
    [
        (_image_part("https://example.com/a.png"), "image_not_inline"),
        (_image_part("/data/images/a.png"), "image_not_inline"),
        ({"type": "input_image", "file_id": "file-123"}, "image_not_inline"),
        (_image_part("data:image/png;base64,not base64!"), "bad_image"),
        (_image_part(_data_url(b"hello, not an image")), "bad_image"),
        (_image_part("data:image/png,rawbytes"), "bad_image"),
        ({"type": "input_file", "file_data": "eA==", "filename": "a.txt"}, "unsupported_content"),
        ({"type": "input_audio", "input_audio": {"data": "eA==", "format": "wav"}}, "unsupported_content"),
    ],
)
def test_content_that_cannot_be_carried_is_refused_by_name(part: dict[str, Any], code: str) -> None:
    rcp = {"input": [{"role": "user", "content": [part, {"type": "input_text", "text": "q"}]}]}
    with pytest.raises(ContentError) as err:
        prompt_messages(rcp, images=[])
    assert err.value.code == code and "\n" not in str(err.value)


def test_a_format_without_images_refuses_them_and_stray_placeholders_are_refused() -> None:
    rcp = {"input": [{"role": "user", "content": [_image_part(_data_url(_png())), {"type": "input_text", "text": "q"}]}]}
    with pytest.raises(ContentError) as err:
        prompt_messages(rcp)  # no images list: the caller's format cannot carry them
    assert err.value.code == "images_not_supported"
    # A literal "<image>" in the text would shift every image by one in VeRL.
    rcp["input"][0]["content"][1]["text"] = "Is <image> a tag?"
    images: list[dict[str, Any]] = []
    msgs = prompt_messages(rcp, images=images)
    with pytest.raises(ContentError) as err:
        check_placeholders(msgs, images)
    assert err.value.code == "placeholder_in_text"
    check_placeholders([{"role": "user", "content": "Is <image> a tag?"}], [])  # text-only rows: VeRL splits nothing


def test_to_parquet_carries_images_into_rl_and_sft_and_dpo_refuses_them(image_rollouts: tuple[Path, bytes], tmp_path: Path) -> None:
    src, png = image_rollouts
    for fmt in ("rl", "sft"):
        rejects = tmp_path / f"{fmt}.rejects.jsonl"
        s = convert(src, tmp_path / fmt, ConvertOptions(fmt=fmt, rejects_path=rejects))
        assert s.accounted == s.lines == 3
        assert [(r["line"], r["code"]) for r in map(json.loads, rejects.read_text().splitlines())] == [(3, "image_not_inline")]
        rows = pq.read_table(s.files["train"][0]).to_pylist()
        assert rows and all(r["images"] == [{"bytes": png, "path": None}] for r in rows)
        assert s.image_rows == s.images == len(rows) == (1 if fmt == "rl" else 2)
        for r in rows:
            msgs = r["prompt"] if fmt == "rl" else json.loads(r["messages"])
            assert msgs[1] == {"role": "user", "content": "<image>What colour is the image?"}
    # dpo writes no image encoding: both sides of the pair are refused by name (and the URL line too).
    rejects = tmp_path / "dpo.rejects.jsonl"
    s = convert(src, tmp_path / "dpo", ConvertOptions(fmt="dpo", rejects_path=rejects))
    assert s.accounted == s.lines == 3 and not s.files
    codes = sorted((r["line"], r["code"]) for r in map(json.loads, rejects.read_text().splitlines()))
    assert codes == [(1, "images_not_supported"), (2, "images_not_supported")]
    assert s.filtered["unpaired"] == 1  # line 3's task had no pair to begin with


def test_cli_reports_image_rejections(image_rollouts: tuple[Path, bytes], tmp_path: Path) -> None:
    src, _ = image_rollouts
    res = runner.invoke(app, ["to-parquet", str(src), "-f", "sft", "-o", str(tmp_path / "o"), "--json"])
    assert res.exit_code == 1 and "Traceback" not in res.output  # 1: some input was rejected
    out = json.loads(res.output[res.output.index("{"):])
    assert out["rows"]["train"] == 2 and out["rejected"] == 1 and out["images"] == {"rows": 2, "images": 2}
    text = runner.invoke(app, ["to-parquet", str(src), "-f", "sft", "-o", str(tmp_path / "o2")]).output
    assert "with images" in text and "image_not_inline" in text
    assert "image_not_inline" in json.dumps(out)


# ---- VeRL reads them -----------------------------------------------------------------------------

# A chat template that renders image content parts, for a processor built without downloads.
VL_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message.role }}\n"
    "{% if message.content is string %}{{ message.content }}{% else %}{% for part in message.content %}"
    "{% if part.type == 'image' %}<image>{% elif part.type == 'text' %}{{ part.text }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def processor(tiny_model: Path) -> Any:
    """A real LLaVA processor (CLIP image processor, PIL backend) around the tiny tokenizer: no downloads."""
    import warnings

    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    tok = AutoTokenizer.from_pretrained(str(tiny_model))
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ip = CLIPImageProcessor(size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28})
    return LlavaProcessor(image_processor=ip, tokenizer=tok, chat_template=VL_TEMPLATE, patch_size=14, vision_feature_select_strategy="full")


def _rlhf_items(files: list[str], processor: Any, tmp_path: Path) -> list[dict[str, Any]]:
    from verl.utils.dataset.rl_dataset import RLHFDataset

    # filter_overlong_prompts off: VeRL's length filter for images needs qwen_vl_utils (not installed here).
    config = OmegaConf.create({"cache_dir": str(tmp_path / "verl-cache"), "prompt_key": "prompt", "max_prompt_length": 8192,
                               "filter_overlong_prompts": False})
    ds = RLHFDataset(files, processor.tokenizer, config, processor=processor)
    return [ds[i] for i in range(len(ds))]


def _check_vl_prompt(item: dict[str, Any], processor: Any, want: list[Image.Image]) -> None:
    """The raw prompt VeRL's agent loop gets holds the images where the input had them, and the
    processor turns them into image tokens and pixels."""
    parts = [p for m in item["raw_prompt"] if isinstance(m["content"], list) for p in m["content"]]
    got = [p["image"] for p in parts if p["type"] == "image"]
    assert [g.size for g in got] == [w.size for w in want]
    assert [g.convert("RGB").tobytes() for g in got] == [w.convert("RGB").tobytes() for w in want]
    text = processor.apply_chat_template(item["raw_prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=got, return_tensors="pt")
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((inputs["input_ids"][0] == image_id).sum()) == 4 * len(want)  # 28x28 crop, 14px patches
    assert tuple(inputs["pixel_values"].shape) == (len(want), 3, 28, 28)


def test_rlhf_dataset_with_a_processor_sees_the_images(image_rollouts: tuple[Path, bytes], processor: Any, tmp_path: Path) -> None:
    src, png = image_rollouts
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    items = _rlhf_items(s.files["train"], processor, tmp_path)
    assert len(items) == 1
    _check_vl_prompt(items[0], processor, [Image.open(io.BytesIO(png))])
    assert items[0]["raw_prompt"][1]["content"][1] == {"type": "text", "text": "What colour is the image?"}


@pytest.mark.parametrize("name", ["vlm_eval_kit_rollouts.jsonl", "circle_click_rollouts.jsonl"])
def test_real_nemo_gym_image_rollouts_reach_verl(name: str, processor: Any, tmp_path: Path) -> None:
    if not CASE.is_dir():
        pytest.skip(f"shared case {CASE} not present")
    src = CASE / name
    recs = [json.loads(line) for line in src.read_text().splitlines()]
    s = convert(src, tmp_path / "rl", ConvertOptions(fmt="rl"))
    assert s.rejected == 0 and s.rows["train"] == len({r["_ng_task_index"] for r in recs})
    rows = pq.read_table(s.files["train"][0]).to_pylist()
    items = _rlhf_items(s.files["train"], processor, tmp_path)
    assert len(items) == len(rows)
    for row, item in zip(rows, items):
        want = [Image.open(io.BytesIO(i["bytes"])) for i in row["images"]]
        assert len(want) == 1
        _check_vl_prompt(item, processor, want)
    # Every input image reached a row, byte for byte.
    originals = {base64.b64decode(p["image_url"].split(",", 1)[1]) for r in recs for m in r["responses_create_params"]["input"]
                 if isinstance(m.get("content"), list) for p in m["content"] if p.get("type") == "input_image"}
    assert {i["bytes"] for row in rows for i in row["images"]} == originals
    # The sft rows carry them too, with the trained answer after the image.
    s = convert(src, tmp_path / "sft", ConvertOptions(fmt="sft"))
    assert s.rejected == 0 and s.rows["train"] == len(recs)
    for row in pq.read_table(s.files["train"][0]).to_pylist():
        msgs = json.loads(row["messages"])
        assert sum(m["content"].count("<image>") for m in msgs) == len(row["images"]) == 1


def test_sft_dataset_with_a_processor_sees_the_images(image_rollouts: tuple[Path, bytes], processor: Any, tmp_path: Path) -> None:
    pytest.importorskip("qwen_vl_utils", reason="VeRL's MultiTurnSFTDataset opens images with qwen_vl_utils (not installed)")
    from gymverl.verl_data import GymverlSFTDataset

    src, png = image_rollouts
    s = convert(src, tmp_path / "sft", ConvertOptions(fmt="sft"))
    ds = GymverlSFTDataset(s.files["train"], processor.tokenizer, OmegaConf.create({"max_length": 4096, "truncation": "error"}), processor=processor)
    item = ds[0]
    image_id = processor.tokenizer.convert_tokens_to_ids("<image>")
    assert int((item["input_ids"] == image_id).sum()) > 0


@pytest.mark.parametrize("cmd", ["validate", "stats"])
def test_validate_and_stats_read_image_rollouts(cmd: str, image_rollouts: tuple[Path, bytes]) -> None:
    srcs = [image_rollouts[0]] + ([CASE / "vlm_eval_kit_rollouts.jsonl", CASE / "circle_click_rollouts.jsonl"] if CASE.is_dir() else [])
    for src in srcs:
        res = runner.invoke(app, [cmd, str(src)])
        assert res.exit_code == 0, res.output
        assert "Traceback" not in res.output


def test_an_earlier_output_without_the_images_column_is_still_recognised(tmp_path: Path) -> None:
    """A val.parquet from a run before the images column is still gymverl's: cleaned up as stale."""
    import pyarrow as pa

    from gymverl.convert import _is_gymverl_output
    from gymverl.formats import rl as rl_fmt

    old = pa.schema([f for f in rl_fmt.SCHEMA if f.name != "images"])
    path = tmp_path / "val.parquet"
    pq.write_table(old.empty_table(), path)
    assert _is_gymverl_output(path)
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"prompt": ["x"]}), other)
    assert not _is_gymverl_output(other)


def test_validate_names_the_prompts_to_parquet_will_reject(tmp_path: Path) -> None:
    """validate called every line below valid, and to-parquet then rejected 4 of them (an image URL,
    an image that does not open, a file part, `<image>` written in the instructions beside an
    image). validate now counts them by code with their lines, on its fast path and its exact path
    alike, and they are exactly the lines to-parquet rejects, for rl and sft."""
    from gymverl import records
    from gymverl.records import validate_file

    png = _data_url(_png())
    recs = [
        _rollout(0, 0, 1.0, png),
        _rollout(1, 0, 1.0, "https://example.com/cat.png"),  # line 2
        _rollout(2, 0, 1.0, "data:image/png;base64," + base64.b64encode(b"not a png").decode()),  # line 3
        _rollout(3, 0, 1.0, png),
        _rollout(4, 0, 1.0, png),  # line 5: instructions with a placeholder of their own
        _rollout(5, 0, 1.0, png),  # same input, instructions without one: carried
    ]
    recs[3]["responses_create_params"]["input"][1]["content"].append({"type": "input_file", "file_id": "file-1"})  # line 4
    recs[4]["responses_create_params"]["instructions"] = "Look at <image> first."
    recs[5]["responses_create_params"]["instructions"] = "Look closely."
    src = tmp_path / "mixed.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in recs))
    want = {"image_not_inline": 1, "bad_image": 1, "unsupported_content": 1, "placeholder_in_text": 1}

    fast = validate_file(src).to_dict()
    saved = records._msgspec
    records._msgspec = None  # the exact (orjson) path for every line
    try:
        exact = validate_file(src).to_dict()
    finally:
        records._msgspec = saved
    assert fast == exact
    assert fast["valid"] == 6 and fast["uncarried_prompts"] == {"rollouts": 4, "lines": [2, 3, 4, 5], "by_reason": want}
    for fmt in ("rl", "sft"):
        s = convert(src, tmp_path / fmt, ConvertOptions(fmt=fmt))
        assert {r["line"]: r["code"] for r in s.rejections} == dict(zip([2, 3, 4, 5], ["image_not_inline", "bad_image", "unsupported_content", "placeholder_in_text"])), (fmt, s.rejections)
    res = runner.invoke(app, ["validate", str(src)], env={"COLUMNS": "120"})
    assert res.exit_code == 0 and "prompt no row can carry (to-parquet rejects)" in res.output, res.output
