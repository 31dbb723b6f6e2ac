"""Reward statistics for a rollout file: pass rates, pass@k, reward and length distributions.

One streaming pass over the file; memory is one small counter per task plus bounded
distributions (exact value counts up to `Distribution.MAX_DISTINCT` distinct values, then a
fixed-size reservoir sample), so a 10-million-line file costs what its number of tasks costs.

A rollout counts as *correct* when `reward >= threshold` (default 1.0: NeMo Gym verifiers give
1.0 for a solved task, 0.0 otherwise; blackjack's -1/0/1 makes only a win correct). pass@k is the
unbiased estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)` per task, averaged over the
tasks that have at least k rollouts.

Agreement with NeMo Gym 0.7's own numbers (`gym eval profile`, `/aggregate_metrics`; read from
`nemo_gym/reward_profile.py` and `nemo_gym/cli/eval.py` of nemo-gym 0.7.0):
- masked rollouts (`mask_sample: true`) are no measurement: `select_measured` removes them before
  any quality metric, and so does this module (they are counted in `masked`, per task too, and
  tasks whose every rollout is masked in `tasks_fully_masked`, like `coverage/fully_masked_tasks`);
- means are plain means over the measured rollouts (agent level: all rollouts of the agent pooled,
  `RewardProfiler.profile_from_data` -> `describe_dataframe` -> `DataFrame.mean`);
- std is the *sample* standard deviation (ddof=1), `DataFrame.std`'s default there; one value
  gives 0.0 (NeMo Gym fills the NaN of a single value with 0);
- pass@k: `compute_pass_majority_metrics` uses `1 - C(n_incorrect, k)/C(n, k)` per task over the
  tasks with at least k rollouts when rewards are 0/1 (the same as here with threshold 1.0), but
  `max(first k rewards)` when they are not; NeMo Gym reports percentages, this module fractions;
- a (task, repeat) that occurs twice is counted once (`repeated` counts the extra lines; NeMo Gym
  refuses such a file), and the same task index with two prompts (concatenated collections) is
  two tasks, keyed `INDEX@PROMPTHASH`.
With `<stem>_materialized_inputs.jsonl` / `<stem>_failures.jsonl` beside the file, the report also
says how many rollouts were expected, failed and missing per task (`collection`); `gym eval
profile` refuses such a partial run unless told `++allow_partial_rollouts=True`.

Layout: `compute` (`compute_stats` and what it fills in), `distribution` (`Distribution`, bounded
streaming distributions), `report` (`compare_stats`, `plot_stats`).
"""

from __future__ import annotations

# Every name of `gymverl.stats` before it became a package stays importable here.
from gymverl.stats.distribution import Distribution, reward_edges  # noqa: F401
from gymverl.stats.compute import (  # noqa: F401
    DEFAULT_THRESHOLD,
    GROUP_BY_AGENT,
    GROUP_BY_NONE,
    PASS_RATE_BUCKETS,
    Facts,
    GroupStats,
    RolloutStats,
    TaskCounter,
    compute_stats,
    group_of,
    is_failed,
    k_values,
    pass_at_k,
    pass_at_k_table,
    pass_rate_buckets,
    response_chars,
)
from gymverl.stats.report import compare_stats, plot_stats, short_task_label  # noqa: F401

__all__ = [
    "DEFAULT_THRESHOLD",
    "Distribution",
    "GroupStats",
    "RolloutStats",
    "TaskCounter",
    "compare_stats",
    "compute_stats",
    "group_of",
    "is_failed",
    "k_values",
    "pass_at_k",
    "pass_at_k_table",
    "pass_rate_buckets",
    "plot_stats",
    "response_chars",
    "short_task_label",
]
