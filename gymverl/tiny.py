"""Build a tiny local model + tokenizer (no downloads) for smoke runs, the demo and tests.

The tokenizer is a byte-level BPE trained with `tokenizers` on a small built-in corpus (plus any
texts passed in), wrapped as `PreTrainedTokenizerFast` with a ChatML-style chat template that
renders system/user/assistant/tool messages, `tool_calls` and a `tools` list. The model is a
randomly initialised Qwen2 (hidden 64, 2 layers). Needs `transformers` + `tokenizers` + `torch`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

CHAT_TEMPLATE = (
    "{% if tools %}"
    "<|im_start|>system\n"
    "{% if messages[0].role == 'system' %}{{ messages[0].content }}\n\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools><|im_end|>\n"
    "{% elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message.role == 'system' and loop.first %}"
    "{% elif message.role == 'assistant' %}"
    "<|im_start|>assistant\n"
    "{% if message.reasoning_content %}<think>{{ message.reasoning_content }}</think>\n{% endif %}"
    "{{ message.content or '' }}"
    "{% for tc in message.tool_calls or [] %}"
    "\n<tool_call>\n{\"name\": \"{{ tc.function.name }}\", \"arguments\": {{ tc.function.arguments }}}\n</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{% else %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_CORPUS = [
    "system user assistant tool tool_call tool_response tools think",
    '{"name": "get_weather", "arguments": {"city": "Paris"}} {"type": "function", "function": {}}',
    "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ( ) [ ] { } < > $ \\frac",
    "You are a helpful assistant. What is the weather like today? It is sunny and 21 degrees.",
    "Question: which option is correct? Answer: A B C D. The answer is",
]


def build_tokenizer(out_dir: str | Path, texts: Iterable[str] = (), vocab_size: int = 1024):  # noqa: ANN201
    """Train a byte-level BPE tokenizer with a chat template and save it to `out_dir`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = list(_CORPUS) + [t for t in texts if t]
    tok.train_from_iterator(corpus * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 4096
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(
    out_dir: str | Path, texts: Iterable[str] = (), *, hidden: int = 64, layers: int = 2, seed: int = 0
) -> Path:
    """Write a tiny random Qwen2 model + tokenizer to `out_dir` (a Hugging Face model directory)."""
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, texts)
    config = Qwen2Config(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(config)
    from transformers.utils import logging as hf_logging

    # A one-shard model needs no "Writing model shards" bar: on stderr it read as a message of the demo.
    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(str(out), safe_serialization=True)
    finally:
        if was:
            hf_logging.enable_progress_bar()
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, max_new_tokens=16).save_pretrained(str(out))
    return out
