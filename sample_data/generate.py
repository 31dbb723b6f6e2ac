"""Regenerate sample_data/tasks.jsonl and sample_data/rollouts.jsonl (hand-checkable, deterministic).

Two NeMo Gym environments, both scored by rule-based verifiers that ship with nemo-gym:
- math_with_judge (math-verify, `should_use_judge: false`): tasks 0-2, 4 samples each;
  task 0 all solved, task 1 half solved (one answer truncated), task 2 all failed.
- xlam_fc (function-call matching): tasks 3-4, 4 samples each, with different tool schemas;
  each rollout is call -> tool result -> final answer.
Rewards are what those verifiers return for these answers.

Run: python sample_data/generate.py
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
MATH_AGENT = {"type": "responses_api_agents", "name": "math_with_judge_simple_agent"}
FC_AGENT = {"type": "responses_api_agents", "name": "xlam_fc_simple_agent"}
PROMPT = "Solve the following math problem. Make sure to put the answer (and only answer) inside \\boxed{}.\n\n"
FC_SYSTEM = (
    "You are a helpful AI assistant with access to various functions. When you need to use a function to "
    "answer a user's request, call the appropriate function with the correct arguments."
)

WEATHER_TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Get the current weather for a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name, e.g. Paris"}},
        "required": ["city"],
        "additionalProperties": False,
    },
    "strict": True,
}
CURRENCY_TOOL = {
    "type": "function",
    "name": "convert_currency",
    "description": "Convert an amount of money from one currency to another.",
    "parameters": {
        "type": "object",
        "properties": {
            "amount": {"type": "number", "description": "Amount to convert"},
            "from_currency": {"type": "string", "description": "ISO code, e.g. USD"},
            "to_currency": {"type": "string", "description": "ISO code, e.g. EUR"},
        },
        "required": ["amount", "from_currency", "to_currency"],
        "additionalProperties": False,
    },
    "strict": True,
}

MATH_TASKS = [
    # question, expected answer, four sampled answers (text, reward, truncated?)
    (
        "What is $7 \\times 8$?",
        "56",
        [
            ("$7 \\times 8 = 56$.\n\n\\boxed{56}", 1.0, False),
            ("Seven eights are fifty-six, so the answer is \\boxed{56}.", 1.0, False),
            ("\\boxed{56}", 1.0, False),
            ("Multiplying: 7 * 8 = 56. \\boxed{56}", 1.0, False),
        ],
    ),
    (
        "Solve for $x$: $2x + 6 = 14$.",
        "4",
        [
            ("Subtract 6: $2x = 8$, so $x = 4$.\n\n\\boxed{4}", 1.0, False),
            ("$2x = 14 + 6 = 20$, so $x = 10$. \\boxed{10}", 0.0, False),
            ("$2x = 8$ and therefore \\boxed{4}", 1.0, False),
            ("First subtract 6 from both sides to get $2x = 8$. Then divide both", 0.0, True),
        ],
    ),
    (
        "What is $\\frac{1}{2} + \\frac{1}{3}$?",
        "\\frac{5}{6}",
        [
            ("$\\frac{1}{2} + \\frac{1}{3} = \\frac{2}{5}$. \\boxed{\\frac{2}{5}}", 0.0, False),
            ("Adding numerators and denominators: \\boxed{\\frac{2}{5}}", 0.0, False),
            ("\\boxed{\\frac{1}{6}}", 0.0, False),
            ("The sum is \\boxed{0.8}", 0.0, False),
        ],
    ),
]

# What math_with_judge's math-verify reports as `extracted_answer` for each sampled answer above,
# so that rescoring the sample data against the real server changes nothing.
EXTRACTED = {
    **{(0, r): "56" for r in range(4)},
    (1, 0): "4",
    (1, 1): "10",
    (1, 2): "4",
    (1, 3): "Eq(2*x, 8)",
    (2, 0): "2/5",
    (2, 1): "2/5",
    (2, 2): "1/6",
    (2, 3): "0.800000000000000",
}

FC_TASKS = [
    (
        "What's the weather like in Paris right now?",
        [WEATHER_TOOL],
        [{"name": "get_weather", "arguments": {"city": "Paris"}}],
        [
            ({"city": "Paris"}, '{"city": "Paris", "temperature_c": 18, "conditions": "cloudy"}', "It's 18 °C and cloudy in Paris.", 1.0),
            ({"city": "Paris"}, '{"city": "Paris", "temperature_c": 18, "conditions": "cloudy"}', "Paris: cloudy, 18 °C.", 1.0),
            ({"city": "London"}, '{"city": "London", "temperature_c": 14, "conditions": "rain"}', "It's raining in London, 14 °C.", 0.0),
            ({"city": "Paris"}, '{"city": "Paris", "temperature_c": 18, "conditions": "cloudy"}', "Currently cloudy and 18 °C in Paris.", 1.0),
        ],
    ),
    (
        "How much is 100 US dollars in euros?",
        [CURRENCY_TOOL],
        [{"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}}],
        [
            ({"amount": 100, "from_currency": "USD", "to_currency": "EUR"}, '{"result": 92.31, "currency": "EUR"}', "100 USD is about 92.31 EUR.", 1.0),
            ({"amount": 100, "from_currency": "EUR", "to_currency": "USD"}, '{"result": 108.33, "currency": "USD"}', "100 EUR is about 108.33 USD.", 0.0),
            ({"amount": 100, "from_currency": "USD", "to_currency": "EUR"}, '{"result": 92.31, "currency": "EUR"}', "That's 92.31 euros.", 1.0),
            ({"amount": 10, "from_currency": "USD", "to_currency": "EUR"}, '{"result": 9.23, "currency": "EUR"}', "10 USD is 9.23 EUR.", 0.0),
        ],
    ),
]


def response(rid: str, output: list[dict], tools: list[dict], truncated: bool = False) -> dict:
    """A Responses-API response object as NeMo Gym's simple agent returns it."""
    out_tokens = sum(len(json.dumps(o)) // 4 for o in output)
    return {
        "id": f"resp_{rid}",
        "created_at": 1764000000.0,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if truncated else None,
        "instructions": None,
        "metadata": {},
        "model": "policy-model",
        "object": "response",
        "output": output,
        "parallel_tool_calls": True,
        "temperature": 1.0,
        "tool_choice": "auto",
        "tools": tools,
        "top_p": 1.0,
        "background": False,
        "max_output_tokens": 64 if truncated else None,
        "previous_response_id": None,
        "reasoning": None,
        "status": "incomplete" if truncated else "completed",
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": {
            "input_tokens": 60,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": out_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 60 + out_tokens,
        },
        "user": None,
    }


def message(mid: str, text: str, truncated: bool = False) -> dict:
    return {
        "id": f"msg_{mid}",
        "content": [{"annotations": [], "text": text, "type": "output_text", "logprobs": None}],
        "role": "assistant",
        "status": "incomplete" if truncated else "completed",
        "type": "message",
    }


def main() -> None:
    tasks: list[dict] = []
    rollouts: list[dict] = []
    for question, expected, samples in MATH_TASKS:
        t = len(tasks)
        rcp = {"input": [{"role": "user", "content": PROMPT + question}]}
        tasks.append({"responses_create_params": rcp, "question": question, "expected_answer": expected, "agent_ref": MATH_AGENT})
        for r, (text, reward, truncated) in enumerate(samples):
            rid = f"t{t}r{r}"
            extracted = EXTRACTED[(t, r)]
            rollouts.append(
                {
                    "responses_create_params": {**rcp, "temperature": 1.0},
                    "response": response(rid, [message(rid, text, truncated)], [], truncated),
                    "reward": reward,
                    "question": question,
                    "expected_answer": expected,
                    "extracted_answer": extracted,
                    "library_reward": reward,
                    "judge_evaluations": None,
                    "_ng_task_index": t,
                    "_ng_rollout_index": r,
                    "agent_ref": MATH_AGENT,
                }
            )
    for question, tools, expected_calls, samples in FC_TASKS:
        t = len(tasks)
        rcp = {
            "input": [{"role": "system", "content": FC_SYSTEM}, {"role": "user", "content": question}],
            "tools": tools,
        }
        tasks.append({"responses_create_params": rcp, "expected_answers": expected_calls, "agent_ref": FC_AGENT})
        for r, (args, tool_result, final, reward) in enumerate(samples):
            rid = f"t{t}r{r}"
            call_id = f"call_{rid}"
            output = [
                {
                    "arguments": json.dumps(args),
                    "call_id": call_id,
                    "name": tools[0]["name"],
                    "type": "function_call",
                    "id": f"fc_{rid}",
                    "status": "completed",
                },
                {"call_id": call_id, "output": tool_result, "type": "function_call_output", "id": None, "status": None},
                message(rid, final),
            ]
            predicted = [{"name": tools[0]["name"], "arguments": args}]
            rollouts.append(
                {
                    "responses_create_params": {**rcp, "temperature": 1.0},
                    "response": response(rid, output, tools),
                    "reward": reward,
                    "expected_answers": expected_calls,
                    "num_expected": 1,
                    "num_predicted": 1,
                    "num_correct": int(reward),
                    "predicted_calls": predicted,
                    "_ng_task_index": t,
                    "_ng_rollout_index": r,
                    "agent_ref": FC_AGENT,
                }
            )
    with open(HERE / "tasks.jsonl", "w") as f:
        for row in tasks:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    with open(HERE / "rollouts.jsonl", "w") as f:
        for row in rollouts:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
