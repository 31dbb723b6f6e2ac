"""Where a decoded completion's reasoning ends and its final answer starts (the one place gymverl decides it).

The rule is NeMo Gym's: a NeMo Gym model server returns the reasoning as a `reasoning` output item
and only the rest as the assistant message, and `/verify` reads the message. What counts as
reasoning (NeMo Gym 0.7.0 source):
- everything up to the *last* closing marker, whether or not the opening marker is in the text
  (the chat template may have opened the block in the generation prompt): e.g.
  `resources_servers/terminus_judge/app.py` and `proof_judge/app.py` take
  `text.split("</think>")[-1]`, `responses_api_agents/stirrup_agent/nemo_client.py` takes
  `content.rsplit("</think>", 1)[-1]`;
- an opening marker with no closing marker after it is reasoning cut off before its end: there is
  no final answer (`resources_servers/frontierscience_judge/app.py` `verify`: "when </think> is
  missing but the model started reasoning (<think> present), treat as no answer"; the same in
  `stirrup_agent/nemo_client.py`, and vLLM's `deepseek_r1` reasoning parser, which NeMo Gym's
  `vllm_model` relies on with `uses_reasoning_parser: true`, returns such an output as reasoning only);
- with no marker at all the text is all answer, unless the chat template opens the block itself
  (`opened`, e.g. DeepSeek-R1, Qwen3-*-Thinking-2507): then it is reasoning that never closed.
The answer text is kept byte for byte (NeMo Gym's `ResponsesConverter` keeps the whitespace around it:
`nemo_gym/responses_converter.py` `_parse_think_tags`, tests in `responses_api_models/vllm_model`).

Markers differ per model family, so they are a setting: a preset name (`PRESETS`, named like
vLLM's `--reasoning-parser` where one exists) or an explicit `"OPEN CLOSE"` pair, optionally with
`+opened` (e.g. `"think+opened"`, `"<think> </think> +opened"`), or `"none"` (no split). Given the
policy's tokenizer (`tokenizer` setting), whether the template opens the block is read from the
chat template itself (`template_opens_reasoning`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

from gymverl.errors import UsageError

ENV_MARKERS = "GYMVERL_REASONING_MARKERS"

# name -> (open, close, opened by the chat template's generation prompt)
PRESETS: dict[str, tuple[str, str, bool]] = {
    # `<think>…</think>` that the model opens itself: Qwen3 (hybrid), QwQ, GLM-4.5, Nemotron reasoning models.
    "think": ("<think>", "</think>", False),
    "qwen3": ("<think>", "</think>", False),
    "glm45": ("<think>", "</think>", False),
    # The chat template appends `<think>\n` to the generation prompt: completions hold only `</think>`.
    "deepseek_r1": ("<think>", "</think>", True),
    "qwen3_thinking": ("<think>", "</think>", True),  # Qwen3-*-Thinking-2507
    "thinking": ("<thinking>", "</thinking>", False),
    "seed_oss": ("<seed:think>", "</seed:think>", False),  # ByteDance Seed-OSS
    "mistral": ("[THINK]", "[/THINK]", False),  # Magistral (2509)
}
DEFAULT = "think"
NONE_NAMES = frozenset({"none", "off", "false", "0", "no"})


@dataclass(frozen=True)
class ReasoningMarkers:
    """How one model family marks reasoning in its decoded text. `open`/`close` None: no reasoning split."""

    open: str | None = "<think>"
    close: str | None = "</think>"
    opened: bool = False  # the chat template opens the block in the generation prompt

    @property
    def enabled(self) -> bool:
        """False for `none`: the completion is all answer."""
        return bool(self.close)


NO_REASONING = ReasoningMarkers(None, None, False)


@dataclass(frozen=True)
class Split:
    """A completion split into reasoning and final answer. `closed`: the reasoning block ended (or there was none)."""

    reasoning: str
    answer: str
    closed: bool


def parse_markers(spec: Any) -> ReasoningMarkers:
    """`ReasoningMarkers` from a setting: a preset name, `"OPEN CLOSE"`, a 2- or 3-item list
    `[open, close(, opened)]`, either form with a trailing `+opened` / `opened` word, `"none"`,
    or a `ReasoningMarkers`. None or "" -> the default preset (`think`). Raises UsageError
    (one sentence naming the presets) for anything else."""
    if isinstance(spec, ReasoningMarkers):
        return spec
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return ReasoningMarkers(*PRESETS[DEFAULT])
    if isinstance(spec, bool):
        return ReasoningMarkers(*PRESETS[DEFAULT]) if spec else NO_REASONING
    if isinstance(spec, str):
        words = spec.replace("+opened", " opened").split()
    else:  # a list (OmegaConf ListConfig included)
        words = [str(w) for w in spec]
    opened = False
    if words and words[-1].lower() in ("opened", "true"):
        opened, words = True, words[:-1]
    if len(words) == 1:
        name = words[0].lower()
        if name in NONE_NAMES:
            return NO_REASONING
        if name in PRESETS:
            o, c, pre_opened = PRESETS[name]
            return ReasoningMarkers(o, c, pre_opened or opened)
    elif len(words) == 2 and all(words):
        return ReasoningMarkers(words[0], words[1], opened)
    raise UsageError(
        f"reasoning_markers {spec!r}: give a preset ({', '.join(PRESETS)}, none), or 'OPEN CLOSE' "
        "(add '+opened' when the chat template opens the reasoning block itself)."
    )


def template_opens_reasoning(tokenizer: Any, markers: ReasoningMarkers, chat_template_kwargs: Mapping[str, Any] | None = None) -> bool:
    """True when the tokenizer's chat template ends its generation prompt inside an open reasoning
    block (DeepSeek-R1, Qwen3-*-Thinking-2507 append `<think>\n`), so completions hold only the close.

    Renders a one-message conversation with `add_generation_prompt=True` (and `chat_template_kwargs`,
    e.g. `{"enable_thinking": False}`, which makes Qwen3 render an already *closed* block: False).
    """
    if not markers.open:
        return False
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True, **dict(chat_template_kwargs or {})
    )
    return isinstance(text, str) and text.rstrip().endswith(markers.open)


_OPENS: dict[tuple[str, str, str], bool] = {}  # (tokenizer path, open marker, kwargs) -> opens?


def _opens_for(path: str, markers: ReasoningMarkers, kwargs: Mapping[str, Any] | None) -> bool:
    key = (path, markers.open or "", repr(sorted(dict(kwargs or {}).items())))
    found = _OPENS.get(key)
    if found is None:
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise UsageError(f"reasoning tokenizer {path}: cannot load it ({exc}).") from None
        found = _OPENS[key] = template_opens_reasoning(tok, markers, kwargs)
    return found


def markers_from_settings(settings: Mapping[str, Any] | None = None) -> ReasoningMarkers:
    """The markers for a run: `settings["reasoning_markers"]`, else `$GYMVERL_REASONING_MARKERS`,
    else `think`. The older `keep_think=True` setting means `none`.

    With `settings["tokenizer"]` (a local Hugging Face tokenizer directory: the policy's), whether the
    chat template opens the block is read from the template itself (`template_opens_reasoning`,
    with `settings["chat_template_kwargs"]`, once per process) instead of trusting the preset."""
    settings = settings or {}
    spec = settings.get("reasoning_markers")
    if spec is None and settings.get("keep_think"):
        return NO_REASONING
    if spec is None:
        spec = os.environ.get(ENV_MARKERS)
    markers = parse_markers(spec)
    path = settings.get("tokenizer")
    if markers.enabled and path:
        opened = _opens_for(str(path), markers, settings.get("chat_template_kwargs"))
        markers = ReasoningMarkers(markers.open, markers.close, opened)
    return markers


def _drop_open(reasoning: str, open_marker: str | None) -> str:
    """The reasoning without its leading opening marker (NeMo Gym's reasoning item holds no tags)."""
    head = reasoning.lstrip()
    return head[len(open_marker) :] if open_marker and head.startswith(open_marker) else reasoning


def split_reasoning(text: str, markers: ReasoningMarkers | None = None) -> Split:
    """Split a decoded completion into (reasoning, final answer) the way NeMo Gym does (module doc).

    Examples with the default markers: `"<think>r</think>a"` -> ("r", "a"); `"r</think>a"` -> ("r", "a");
    `"<think>r</think>x<think>s</think>a"` -> answer "a"; `"<think>r \\boxed{1}"` -> answer "" (not
    closed); `"a"` -> answer "a" (answer "" when `markers.opened`).
    """
    m = markers if markers is not None else ReasoningMarkers(*PRESETS[DEFAULT])
    if not m.enabled:
        return Split("", text, True)
    assert m.close is not None
    end = text.rfind(m.close)
    if end >= 0:
        reasoning, answer = text[:end], text[end + len(m.close) :]
        if m.open and m.open in answer:  # a new block opened after the last close and never closed
            return Split(_drop_open(text, m.open), "", False)
        return Split(_drop_open(reasoning, m.open), answer, True)
    start = text.find(m.open) if m.open else -1
    if start >= 0:
        return Split(text[start + len(m.open or "") :], "", False)
    if m.opened:
        return Split(text, "", False)
    return Split("", text, True)


__all__ = [
    "ENV_MARKERS",
    "NO_REASONING",
    "PRESETS",
    "ReasoningMarkers",
    "Split",
    "markers_from_settings",
    "parse_markers",
    "split_reasoning",
    "template_opens_reasoning",
]
