"""`gymverl demo`: the whole pipeline on `sample_data/`, with embedded defaults, in one call.

Steps (each prints what it did and where its output is):
 1. servers   start real NeMo Gym resources servers on 127.0.0.1 (in the background, via ng_run)
 2. model     build a tiny local Qwen2 model + tokenizer (no downloads) for the training step
 3. validate  check the sample rollouts line by line
 4. rescore   re-score them against the running servers' /verify; then stop the servers
 5. stats     pass rate, pass@k, reward and length statistics (+ a PNG)
 6. parquet   convert to VeRL parquet: `rl` (prompts + ground truth) and `sft` (correct rollouts)
 7. preview   what training sees: the prompt of an rl row with tools, rendered by the tiny model's
              chat template the way gymverl's agent loop does (its tools must be in it), and the
              trained tokens of an sft row (`gymverl preview`)
 8. reward    score answers to the rl prompts with `gymverl.reward.compute_score` (the VeRL reward
              function) against the same servers: the reference answer must get 1.0, a non-answer 0.0;
              then stop the servers
 9. train     a short CPU run of VeRL's SFT trainer on the sft parquet with the tiny model

Servers are stopped when they are no longer needed and, whatever happens (Ctrl-C, SIGTERM, an
error), before `run_demo` returns or raises. A step whose gymverl part is missing from this install
is reported as *unavailable*, never faked.

Layout: `run_demo` (this module), `options` (what the demo takes, its data and output folders),
`steps` (`Demo`: the steps in order), `servers` (which server verifies each agent, started in the
background), `parts` (adapters to rescore, convert and the reward function), `report` (step
results, reporters, printed paths and commands).
"""

from __future__ import annotations

from gymverl import proc
# Every name imported from `gymverl.demo` before it became a package stays importable here.
from gymverl.demo.options import (  # noqa: F401
    DEFAULT_OUT,
    REPO_DIR,
    SAMPLE_DATA,
    SKIPPABLE,
    STEPS,
    DemoError,
    DemoOptions,
    check_data,
    fresh_out_dir,
    prepare_out_dir,
)
from gymverl.demo.report import (  # noqa: F401
    FAILED,
    OK,
    SKIPPED,
    UNAVAILABLE,
    DemoReport,
    PlainReporter,
    Reporter,
    StepResult,
    Unavailable,
    _shell,
    display_path,
)
from gymverl.demo.servers import DEMO_SERVERS, _BackgroundServers, agents_in, server_for_agent  # noqa: F401
from gymverl.demo.parts import NON_ANSWER, _rescore, _rescore_api, _score_rl_rows, _to_parquet, reference_answer  # noqa: F401
from gymverl.demo.steps import Demo
from gymverl.jsonl import jsonable  # noqa: F401  (tests check the demo uses the one jsonable)


def run_demo(opts: DemoOptions, reporter: Reporter | None = None) -> DemoReport:
    """Run the demo; raises DemoError for bad options, KeyboardInterrupt after cleanup on Ctrl-C."""
    unknown = set(opts.skip) - set(SKIPPABLE)
    if unknown:
        raise DemoError(f"cannot skip {', '.join(sorted(unknown))}; steps that can be skipped: {', '.join(SKIPPABLE)}.")
    check_data(opts.data)
    out = prepare_out_dir(opts)
    demo = Demo(opts, reporter or PlainReporter(), out)
    with proc.signals_as_interrupt():  # SIGTERM/SIGHUP stop the servers and training as Ctrl-C does
        return demo.run()


__all__ = [
    "DEMO_SERVERS",
    "DemoError",
    "DemoOptions",
    "DemoReport",
    "PlainReporter",
    "Reporter",
    "STEPS",
    "SKIPPABLE",
    "StepResult",
    "display_path",
    "agents_in",
    "fresh_out_dir",
    "run_demo",
    "server_for_agent",
]
