"""What training will see for one row of a gymverl parquet, rendered with the model's own tokenizer.

`preview(path, tokenizer_dir, row=N, answer=TEXT)` returns a `Preview`: one or more rendered
`Section`s (text, token ids and the *trained* token spans) plus, for RL rows, the agent loop, the
row's tools and the `/verify` body `gymverl.reward.compute_score` would send for `answer`.

Each format is rendered by the code that consumes it, never by a second copy of its templating:

- **rl** (`verl.trainer.main_ppo`): the prompt the policy gets is what VeRL's agent loop builds,
  `ContinuousTokenBuilder.build_initial_tokens(raw_prompt, tools=...)` from
  `verl.utils.tokenizer.continuous_token_wiring.create_continuous_token_builder` (the builder is
  picked by the model's `config.json` `model_type`, as the agent loop worker does). Tools are passed
  when the row's `agent_name` is gymverl's own loop (`gymverl_tools`, which renders the row's
  `extra_info.tools`); VeRL's stock `single_turn_agent` (also the default for rows without an
  `agent_name` column) renders none, and the preview warns when such a row's task has tools. The
  policy trains on what it generates, so the prompt has no trained span. The `/verify` body comes
  from `gymverl.reward.verify_request` (the function compute_score calls; nothing is sent).
- **sft** (`verl.trainer.sft_trainer`): `gymverl.verl_data.GymverlSFTDataset` (VeRL's
  `MultiTurnSFTDataset`) is built on the one row; its `input_ids` are the text and the runs of its
  `loss_mask` are the trained spans. When VeRL's own check (per-turn rendering == whole-conversation
  rendering) fails, training would stop on the row (`data.ignore_input_ids_mismatch`): a warning says so.
- **dpo** (no VeRL trainer; TRL's `DPOTrainer` for conversational rows): the prompt is rendered with
  the generation prompt, each side as the rest of the rendered prompt + response conversation (the
  common-prefix split of TRL's `maybe_apply_chat_template`); prompt and completion are tokenized
  separately and the completion is the trained span. Rows with JSON-string columns (gymverl's
  format so far) and rows with plain message lists are both read (`gymverl.verl_data.decode_row`).

Errors (missing or unreadable file, not a gymverl parquet, no such row, tokenizer directory missing,
no chat template) are `UsageError`s: one sentence, exit code 2.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gymverl.errors import UsageError
from gymverl.formats.rl import ENV_AGENT, STOCK_AGENT, TOOLS_AGENT, row_tools

# The agent-loop names gymverl writes into an RL row's `agent_name` column (see the common design:
# gymverl's own loop renders the row's tools; rows without tools keep VeRL's stock loop).
_IMAGE_COLUMNS = ("images", "videos", "audios")
# Files a Hugging Face tokenizer directory has at least one of (checked before transformers looks).
_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json")


def holds_tokenizer(folder: Path) -> bool:
    """True when directory `folder` has one of a Hugging Face tokenizer's files (`_TOKENIZER_FILES`):
    without them transformers may build an empty tokenizer from config.json alone, or fail obscurely."""
    return any((folder / name).is_file() for name in _TOKENIZER_FILES)


class PreviewError(UsageError):
    """The preview cannot be made (bad file, row, or tokenizer): one sentence, exit code 2."""


@dataclass
class Span:
    """A run of trained tokens: `ids[start:end]` of its section; `char_start:char_end` in its `text`."""

    start: int
    end: int
    char_start: int
    char_end: int
    text: str


@dataclass
class Section:
    """One rendered sequence: the decoded `text`, its `token_ids`, and the spans the loss covers."""

    name: str  # prompt (rl), conversation (sft), chosen / rejected (dpo)
    text: str
    token_ids: list[int]
    trained: list[Span] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        """Number of tokens."""
        return len(self.token_ids)

    @property
    def trained_tokens(self) -> int:
        """Number of tokens the loss covers."""
        return sum(s.end - s.start for s in self.trained)


@dataclass
class VerifyPreview:
    """What compute_score would POST to `/verify` for `answer`, and the agent name it routes by."""

    answer: str
    agent: str | None
    body: dict[str, Any]


@dataclass
class Preview:
    """A rendered row of a gymverl parquet (see the module docstring for how each format is rendered)."""

    path: str
    format: str  # rl | sft | dpo
    row: int
    rows: int
    tokenizer: str
    sections: list[Section]
    agent_name: str | None = None  # rl: the row's agent_name column (None: the column is absent)
    agent_loop: str | None = None  # rl: the loop VeRL runs for the row
    tools: list[dict[str, Any]] | None = None  # rl: tools rendered into the prompt; dpo: the row's tools
    task_tools: int = 0  # rl: tools the task itself has (extra_info.nemo_gym), shown or not
    verify: VerifyPreview | None = None
    data: dict[str, Any] = field(default_factory=dict)  # the row's other columns (reward, data_source, ...)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for `--json` (sections with their token ids and trained spans)."""
        out = asdict(self)
        for sec, d in zip(self.sections, out["sections"]):
            d["tokens"] = sec.tokens
            d["trained_tokens"] = sec.trained_tokens
        return out


# ---- inputs ------------------------------------------------------------------------------------


def load_tokenizer(path: str | Path) -> Any:
    """The Hugging Face tokenizer in local directory `path`; PreviewError when missing, unloadable or template-less.

    Never reaches the network: a path that is not a directory is refused before transformers sees it.
    """
    p = Path(path).expanduser()
    if not p.is_dir():
        raise PreviewError(f"{path}: no such tokenizer directory." if not p.exists() else f"{path}: not a directory (give the model's tokenizer directory).")
    if not holds_tokenizer(p):
        raise PreviewError(f"{path} holds no tokenizer (none of {', '.join(_TOKENIZER_FILES)}).")
    try:
        from transformers import AutoTokenizer

        with _quiet():
            tok = AutoTokenizer.from_pretrained(str(p), local_files_only=True)
    except Exception as exc:  # noqa: BLE001 - any loading failure is one sentence
        first = str(exc).strip().splitlines()[0].rstrip(" :.") if str(exc).strip() else type(exc).__name__
        raise PreviewError(f"cannot load a tokenizer from {path} ({first}).") from None
    if not getattr(tok, "chat_template", None):
        raise PreviewError(f"the tokenizer in {path} has no chat template, so it cannot render what training sees.")
    return tok


def model_type(tokenizer_dir: str | Path) -> str | None:
    """The `model_type` of `config.json` in the tokenizer's directory (VeRL picks its prompt builder by it), or None."""
    try:
        value = json.loads((Path(tokenizer_dir).expanduser() / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def detect_format(columns: list[str]) -> str | None:
    """rl, sft or dpo from a parquet's column names (the schemas of `gymverl.formats`), else None."""
    names = set(columns)
    if "messages" in names:
        return "sft"
    if {"prompt", "chosen", "rejected"} <= names:
        return "dpo"
    if {"prompt", "reward_model", "extra_info"} <= names:
        return "rl"
    return None


def read_row(path: str | Path, row: int) -> tuple[Any, int]:
    """(one-row pyarrow Table, total rows) of parquet `path`; reads only the row group holding `row`."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.exists():
        raise PreviewError(f"{path}: no such file.")
    if p.is_dir():
        shards = sorted(x.name for x in p.glob("*.parquet"))
        hint = f" (it holds {', '.join(shards[:4])}{' …' if len(shards) > 4 else ''})" if shards else ""
        raise PreviewError(f"{path}: is a directory; give one parquet file{hint}.")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise PreviewError(f"{path}: {exc.strerror or exc}.") from None
    if magic != b"PAR1":
        raise PreviewError(f"{path}: not a parquet file (preview reads the parquet `gymverl to-parquet` writes).")
    try:
        pf = pq.ParquetFile(p)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a damaged file
        first = str(exc).strip().splitlines()[0].rstrip(" :.") if str(exc).strip() else type(exc).__name__
        raise PreviewError(f"{path}: not a readable parquet file ({first}).") from None
    total = pf.metadata.num_rows
    if row < 0 or row >= total:
        have = f"rows 0-{total - 1}" if total else "no rows"
        raise PreviewError(f"{path} has no row {row} ({have}).")
    start = 0
    for i in range(pf.num_row_groups):
        n = pf.metadata.row_group(i).num_rows
        if row < start + n:
            return pf.read_row_group(i).slice(row - start, 1), total
        start += n
    raise PreviewError(f"{path} has no row {row} (its row groups hold {start} rows).")  # pragma: no cover - footer disagrees


@contextlib.contextmanager
def _quiet() -> Any:
    """Keep VeRL's and transformers' prints and log lines off stdout (`--json` owns it) and stderr."""
    loggers = [logging.getLogger(n) for n in ("verl", "transformers")] + [
        lg for n, lg in logging.root.manager.loggerDict.items() if isinstance(lg, logging.Logger) and n.startswith(("verl", "/"))
    ]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _json_cell(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes)):
        try:
            return json.loads(value)
        except ValueError:
            raise PreviewError(f"the {what} column does not hold JSON text; is this a gymverl parquet?") from None
    return value


# ---- spans -------------------------------------------------------------------------------------


def decode(tokenizer: Any, ids: list[int]) -> str:
    """Token ids as text, special tokens kept (what the model reads)."""
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def spans_from_mask(tokenizer: Any, ids: list[int], mask: list[int]) -> list[Span]:
    """The runs of `mask == 1` as Spans; character offsets are those of the decoded prefix, so they
    index `decode(tokenizer, ids)`."""
    spans: list[Span] = []
    i, n = 0, len(ids)
    while i < n:
        if not mask[i]:
            i += 1
            continue
        j = i
        while j < n and mask[j]:
            j += 1
        c0 = len(decode(tokenizer, ids[:i]))
        c1 = len(decode(tokenizer, ids[:j]))
        spans.append(Span(start=i, end=j, char_start=c0, char_end=c1, text=decode(tokenizer, ids[i:j])))
        i = j
    return spans


# ---- formats -----------------------------------------------------------------------------------


def _rl(table: Any, tokenizer: Any, tokenizer_dir: str | Path, answer: str | None, pv: Preview) -> None:
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    from gymverl.reward import verify_request

    row = table.to_pylist()[0]
    prompt = row.get("prompt")
    if not isinstance(prompt, list) or not prompt:
        raise PreviewError(f"row {pv.row} has no prompt messages; is this a gymverl rl parquet?")
    extra = row.get("extra_info") or {}
    ng = _json_cell(extra.get("nemo_gym"), "extra_info.nemo_gym") if extra.get("nemo_gym") is not None else None
    rcp = (ng or {}).get("responses_create_params") or {}
    pv.task_tools = len(rcp.get("tools") or [])
    has_column = "agent_name" in table.column_names
    pv.agent_name = row.get("agent_name") if has_column else None
    pv.agent_loop = pv.agent_name or STOCK_AGENT
    try:
        # The loops' own reading of the row (gymverl.formats.rl.row_tools): gymverl_tools shows
        # extra_info.tools; gymverl_env falls back to the task's own tools.
        own_tools = row_tools(extra)
        if pv.agent_loop == ENV_AGENT:
            own_tools = row_tools(extra, rcp)
    except ValueError as exc:
        raise PreviewError(f"row {pv.row}: {exc}; is this a gymverl rl parquet?") from None
    if pv.agent_loop == TOOLS_AGENT:
        tools = own_tools
        if not tools and pv.task_tools:
            pv.warnings.append(f"the row asks for {TOOLS_AGENT} but its extra_info.tools is empty, so the policy sees none of the task's {pv.task_tools} tools.")
    elif pv.agent_loop == ENV_AGENT:
        tools = own_tools  # the prompt of the episode's first turn
        pv.warnings.append(f"{ENV_AGENT} plays the NeMo Gym environment online: this is the prompt of the first turn; later turns add the tool outputs.")
    else:
        tools = None
        shown = len(own_tools) if own_tools else pv.task_tools
        if shown:
            why = (
                "this parquet has no agent_name column, so VeRL runs its default agent loop (single_turn_agent)"
                if not has_column
                else f"its agent loop {pv.agent_loop!r} is not {TOOLS_AGENT!r}"
            )
            pv.warnings.append(
                f"the task has {shown} tool(s) that the policy will not see: {why}, which renders no tools; "
                "write the rows again with `gymverl to-parquet --format rl` (`--agent-loop env` for online RL)."
            )
        if pv.agent_loop != STOCK_AGENT:
            pv.warnings.append(f"agent loop {pv.agent_loop!r} is not one gymverl writes; shown as VeRL's {STOCK_AGENT} renders it.")
    pv.tools = tools
    images = [c for c in _IMAGE_COLUMNS if row.get(c)]
    if images:
        pv.warnings.append(
            f"the row has {', '.join(images)}: VeRL renders them with the model's processor; this preview shows their placeholders as text."
        )

    with _quiet():
        builder = create_continuous_token_builder(tokenizer, hf_model_type=model_type(tokenizer_dir))
        # The agent loop gets RLHFDataset's `raw_prompt`: the row's messages, unchanged for text rows.
        ids = list(builder.build_initial_tokens([dict(m) for m in prompt], tools=tools))
    pv.sections.append(Section(name="prompt", text=decode(tokenizer, ids), token_ids=ids))
    pv.data = {
        "data_source": row.get("data_source"),
        "ground_truth": (row.get("reward_model") or {}).get("ground_truth"),
        "task_key": extra.get("task_key"),
        "index": extra.get("index"),
        "task_fields": sorted(((ng or {}).get("task") or {}).keys()),
        # VeRL picks the builder by the model's config.json model_type; the default one for unknown models.
        "prompt_builder": type(builder).__name__,
    }
    if answer is not None:
        body, agent = verify_request(answer, extra)
        pv.verify = VerifyPreview(answer=answer, agent=agent or row.get("data_source"), body=body)


def _of_the_row(message: str) -> str:
    """The first line of a dataset error about the one-row file preview loads: its "row 0" is the
    row asked for ("cannot load row 2: row 0 has ..." named the wrong row)."""
    first = message.splitlines()[0] if message else ""
    return "it " + first[len("row 0 "):] if first.startswith("row 0 ") else first


def _sft(table: Any, tokenizer: Any, pv: Preview) -> None:
    import pyarrow.parquet as pq

    from gymverl.verl_data import GymverlSFTDataset

    present = [c for c in _IMAGE_COLUMNS if c in table.column_names and table.column(c)[0].is_valid and table.column(c)[0].as_py()]
    if present:
        # Without the model's processor VeRL's dataset cannot load them; the text keeps its placeholders.
        table = table.drop_columns([c for c in _IMAGE_COLUMNS if c in table.column_names])
        pv.warnings.append(
            f"the row has {', '.join(present)}: VeRL renders them with the model's processor; this preview shows their placeholders as text."
        )
    config = {"pad_mode": "no_padding", "max_length": 1 << 30, "truncation": "error"}
    with tempfile.TemporaryDirectory(prefix="gymverl-preview-") as tmp:
        one = str(Path(tmp) / "row.parquet")
        pq.write_table(table, one)
        try:
            with _quiet():
                item = GymverlSFTDataset(one, tokenizer, dict(config))[0]
        except AssertionError as exc:
            if "ignore_input_ids_mismatch" not in str(exc):
                raise PreviewError(f"VeRL's MultiTurnSFTDataset cannot load row {pv.row}: {_of_the_row(str(exc))}") from None
            pv.warnings.append(
                "VeRL's MultiTurnSFTDataset stops on this row (rendering each turn separately differs from rendering the whole "
                "conversation); training needs data.ignore_input_ids_mismatch=true and then sees the text below."
            )
            with _quiet():
                item = GymverlSFTDataset(one, tokenizer, {**config, "ignore_input_ids_mismatch": True})[0]
        except (ValueError, KeyError, TypeError) as exc:
            raise PreviewError(f"VeRL's MultiTurnSFTDataset cannot load row {pv.row}: {_of_the_row(str(exc)) or type(exc).__name__}") from None
    ids = [int(x) for x in item["input_ids"].tolist()]
    mask = [int(x) for x in item["loss_mask"].tolist()]
    pv.sections.append(Section(name="conversation", text=decode(tokenizer, ids), token_ids=ids, trained=spans_from_mask(tokenizer, ids, mask)))
    row = table.to_pylist()[0]
    pv.data = {"data_source": row.get("data_source"), **{k: v for k, v in (row.get("extra_info") or {}).items() if k in ("task_key", "line", "reward")}}


def _dpo(table: Any, tokenizer: Any, pv: Preview) -> None:
    from gymverl.verl_data import decode_row

    try:
        row = decode_row(table.to_pylist()[0])
    except ValueError:
        raise PreviewError(f"row {pv.row}'s prompt/chosen/rejected columns are not JSON text; is this a gymverl dpo parquet?") from None
    prompt, tools = row.get("prompt"), row.get("tools") or None
    if not isinstance(prompt, list):
        raise PreviewError(f"row {pv.row}'s prompt is not a list of chat messages; is this a gymverl dpo parquet?")
    pv.tools = tools
    prompt_text = tokenizer.apply_chat_template(prompt, tools=tools, tokenize=False, add_generation_prompt=True)
    for side in ("chosen", "rejected"):
        response = row.get(side)
        if not isinstance(response, list):
            raise PreviewError(f"row {pv.row}'s {side} is not a list of chat messages; is this a gymverl dpo parquet?")
        full = tokenizer.apply_chat_template(prompt + response, tools=tools, tokenize=False)
        # TRL's split: the prompt is the longest common prefix of the two renderings.
        k = 0
        while k < min(len(prompt_text), len(full)) and prompt_text[k] == full[k]:
            k += 1
        p_ids = tokenizer(full[:k], add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(full[k:], add_special_tokens=False)["input_ids"]
        ids = list(p_ids) + list(c_ids)
        mask = [0] * len(p_ids) + [1] * len(c_ids)
        pv.sections.append(Section(name=side, text=decode(tokenizer, ids), token_ids=ids, trained=spans_from_mask(tokenizer, ids, mask)))
    pv.data = {k: row.get(k) for k in ("data_source", "chosen_reward", "rejected_reward", "margin")}
    pv.data["task_key"] = (row.get("extra_info") or {}).get("task_key")


def preview(path: str | Path, tokenizer_dir: str | Path, *, row: int = 0, answer: str | None = None) -> Preview:
    """Render row `row` (0-based) of gymverl parquet `path` with the tokenizer in `tokenizer_dir`.

    `answer`: rl only, a model answer (decoded completion text) whose `/verify` request to show;
    nothing is sent. Raises PreviewError (exit 2) for a missing/unreadable file, a parquet gymverl
    did not write, a row out of range, a missing tokenizer directory or one without a chat template.
    """
    table, total = read_row(path, row)
    fmt = detect_format(table.column_names)
    if fmt is None:
        raise PreviewError(
            f"{path} is not a gymverl parquet: it has neither the rl (prompt, reward_model, extra_info), "
            f"sft (messages) nor dpo (prompt, chosen, rejected) columns (it has {', '.join(table.column_names[:8]) or 'none'})."
        )
    if answer is not None and fmt != "rl":
        raise PreviewError(f"--answer is for rl parquet (what /verify gets); {path} is {fmt}.")
    tokenizer = load_tokenizer(tokenizer_dir)
    pv = Preview(path=str(path), format=fmt, row=row, rows=total, tokenizer=str(tokenizer_dir), sections=[])
    from jinja2 import TemplateError

    try:
        if fmt == "rl":
            _rl(table, tokenizer, tokenizer_dir, answer, pv)
        elif fmt == "sft":
            _sft(table, tokenizer, pv)
        else:
            _dpo(table, tokenizer, pv)
    except TemplateError as exc:
        # Training would fail on this row the same way: say so, naming the template's own message.
        raise PreviewError(f"the chat template in {tokenizer_dir} cannot render row {row}: {str(exc).strip() or type(exc).__name__}.") from None
    return pv


__all__ = ["Preview", "PreviewError", "Section", "Span", "VerifyPreview", "detect_format", "load_tokenizer", "preview", "read_row", "spans_from_mask"]
