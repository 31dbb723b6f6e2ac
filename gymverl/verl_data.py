"""VeRL dataset class for gymverl's SFT parquet (JSON-string `messages` / `tools` columns).

Why JSON strings: parquet merges the struct types of nested columns across rows, so a nested
`messages` or `tools` value read back gains `null` keys that only other rows had (another tool's
parameters, `tool_calls: null`, ...), and the chat template renders them. gymverl therefore stores
each row's conversation and tool schemas as JSON text; this class decodes them per row, so every
row renders exactly what it contained.

Point VeRL's SFT trainer at it:

    python -m verl.trainer.sft_trainer ... \\
        data.custom_cls.path=$(python -c 'import gymverl.verl_data as m; print(m.__file__)') \\
        data.custom_cls.name=GymverlSFTDataset

Images: rows with images hold them in the `images` column ({bytes, path} structs) with `<image>`
placeholders in the message text, which `MultiTurnSFTDataset` turns into image content for the
processor (VeRL's `data.image_key`, default `images`); text-only rows hold null there.

Tool-call arguments are stored as the model wrote them (a JSON string, OpenAI form). Chat templates
that JSON-encode arguments themselves (`arguments | tojson`: Qwen2.5, Llama 3.1) need objects
and templates that iterate them (`arguments | items`: Qwen3-Coder, Gemma) need objects too; the
class detects the form by rendering a probe call in both forms (`data.tool_arguments=auto`, the
default; only when some row has a tool call) or takes `+data.tool_arguments=object` / `string`.
A template that renders neither form as written stops the dataset at start-up with one sentence.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from verl.utils.dataset.multiturn_sft_dataset import MultiTurnSFTDataset

from gymverl.formats import JSON_COLUMNS, decode_json, decode_row  # noqa: F401 (re-exported: readers import them from here)
from gymverl.formats.sft import arguments_as_objects, has_tool_calls, non_object_arguments, tool_arguments_form

class GymverlSFTDataset(MultiTurnSFTDataset):
    """`MultiTurnSFTDataset` that reads gymverl's JSON-string `messages` and `tools` columns."""

    def __init__(
        self,
        parquet_files: str | list[str],
        tokenizer: Any,
        config: Any,
        processor: Optional[Any] = None,
        max_samples: int = -1,
    ) -> None:
        mode = (config or {}).get("tool_arguments", "auto")
        if mode not in ("auto", "object", "string"):
            raise ValueError(f"data.tool_arguments must be auto, object or string, got {mode!r}")
        self._tool_arguments_mode = mode
        super().__init__(parquet_files, tokenizer, config, processor=processor, max_samples=max_samples)

    def _read_files_and_process(self) -> None:
        super()._read_files_and_process()
        if self.tools is not None:
            # An empty tool list would still switch some templates into tool mode; None does not.
            # Missing tools come back as pandas NA (pyarrow dtype backend): anything not JSON text is "no tools".
            self.tools = [(json.loads(t) or None) if isinstance(t, (str, bytes)) else None for t in self.tools]
        mode = self._tool_arguments_mode
        with_calls = [i for i, m in enumerate(self.messages) if has_tool_calls(m)]
        if mode == "auto":
            # Rows without tool calls render the same either way: no template needs to be probed.
            mode = tool_arguments_form(self.tokenizer) if with_calls else "string"
        self._object_arguments = mode == "object"
        if self._object_arguments:
            for i in with_calls:
                value = self.messages[i]
                bad = non_object_arguments(json.loads(value) if isinstance(value, (str, bytes)) else value)
                if bad:
                    raise ValueError(
                        f"row {i} has a tool call whose arguments are not a JSON object ({bad[0][:60]!r}), which a chat "
                        "template that needs object arguments cannot render as the model wrote it; rebuild the parquet "
                        "without --keep-malformed-calls (the default drops such rollouts) or set +data.tool_arguments=string."
                    )

    def _build_messages(self, example: dict) -> list:
        images = example.get(self.image_key)
        if images is None or not hasattr(images, "__len__") or len(images) == 0:
            # Text-only rows hold a null `images` cell; MultiTurnSFTDataset treats a present key as
            # "multimodal" and would demand a processor, so the key goes.
            example = {k: v for k, v in example.items() if k != self.image_key}
        else:
            example = {**example, self.image_key: [dict(i) for i in images]}  # process_image writes into them
        value = example[self.messages_key]
        if isinstance(value, (str, bytes)):
            messages = json.loads(value)
            if self._object_arguments:
                messages = arguments_as_objects(messages)
            example = {**example, self.messages_key: messages}
        return super()._build_messages(example)
