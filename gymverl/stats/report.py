"""Presenting statistics: `compare_stats` (before/after two files) and `plot_stats` (a PNG)."""

from __future__ import annotations

import os
from typing import Any

from gymverl.stats.distribution import reward_edges
from gymverl.stats.compute import RolloutStats


def _pass_at_k_map(d: dict[str, Any]) -> dict[int, float | None]:
    return {row["k"]: row["pass_at_k"] for row in d["pass_at_k"]}


def _delta(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def compare_stats(before: RolloutStats, after: RolloutStats, top: int = 10) -> dict[str, Any]:
    """Before/after comparison of two files (e.g. before and after training or rescoring)."""
    a = before.to_dict(per_task=False)["overall"]
    b = after.to_dict(per_task=False)["overall"]
    metrics: list[dict[str, Any]] = []

    def row(name: str, x: float | None, y: float | None) -> None:
        metrics.append({"metric": name, "before": x, "after": y, "delta": _delta(x, y)})

    row("rollouts", a["rollouts"], b["rollouts"])
    row("tasks", a["tasks"], b["tasks"])
    row("pass rate", a["pass_rate"], b["pass_rate"])
    row("mean reward", a["reward"]["mean"], b["reward"]["mean"])
    row("median reward", a["reward"]["median"], b["reward"]["median"])
    pa, pb = _pass_at_k_map(a), _pass_at_k_map(b)
    for k in sorted(set(pa) | set(pb)):
        row(f"pass@{k}", pa.get(k), pb.get(k))
    row("tasks all solved", a["tasks_all_solved"], b["tasks_all_solved"])
    row("tasks all failed", a["tasks_all_failed"], b["tasks_all_failed"])
    row("tasks zero variance", a["tasks_zero_variance"], b["tasks_zero_variance"])
    row("incomplete", a["incomplete"], b["incomplete"])
    row("failed", a["failed"], b["failed"])
    if a["length"]["unit"] == b["length"]["unit"]:
        row(f"mean length ({a['length']['unit']})", a["length"]["mean"], b["length"]["mean"])

    improved = regressed = unchanged = 0
    changes: list[dict[str, Any]] = []
    for key, tb in after.tasks.items():
        ta = before.tasks.get(key)
        if ta is None or not ta.n or not tb.n:  # a fully masked task has no pass rate to compare
            continue
        d = tb.pass_rate - ta.pass_rate
        if d > 1e-12:
            improved += 1
        elif d < -1e-12:
            regressed += 1
        else:
            unchanged += 1
        if abs(d) > 1e-12 or abs(tb.mean_reward - ta.mean_reward) > 1e-12:
            changes.append(
                {
                    "task": key,
                    "pass_rate_before": ta.pass_rate,
                    "pass_rate_after": tb.pass_rate,
                    "mean_reward_before": ta.mean_reward,
                    "mean_reward_after": tb.mean_reward,
                }
            )
    changes.sort(key=lambda c: -abs(c["pass_rate_after"] - c["pass_rate_before"]))
    return {
        "before": before.path,
        "after": after.path,
        "threshold": after.threshold,
        "metrics": metrics,
        "tasks": {
            "in_both": improved + regressed + unchanged,
            "only_before": sum(1 for k in before.tasks if k not in after.tasks),
            "only_after": sum(1 for k in after.tasks if k not in before.tasks),
            "improved": improved,
            "regressed": regressed,
            "unchanged": unchanged,
        },
        "top_changes": changes[:top],
    }


def short_task_label(key: str, width: int = 18) -> str:
    """A task key short enough for an axis label: the index keeps its agent prefix's start."""
    if len(key) <= width:
        return key
    head, sep, tail = key.rpartition("#") if "#" in key else key.rpartition("@")
    keep = max(width - len(sep + tail) - 1, 3)
    return f"{head[:keep]}…{sep}{tail}" if head else key[: width - 1] + "…"


def plot_stats(stats: RolloutStats, out: str | os.PathLike[str], against: RolloutStats | None = None) -> None:
    """Write a PNG: reward histogram and pass rate per task (sorted); `against` is drawn as 'before'.

    The file is written atomically and locked while written (`gymverl.files`); `out` must not be
    either rollout file (UsageError, exit 2). ImportError when matplotlib is missing.
    """
    from gymverl.errors import from_os_error
    from gymverl.files import atomic_path, check_outputs, output_lock

    check_outputs([], [stats.path, against.path if against is not None else None], streams=[out])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs: list[tuple[RolloutStats, str | None]] = [(against, "before"), (stats, "after")] if against else [(stats, None)]
    colors = ["#9aa5b1", "#2f6fb0"] if len(runs) == 2 else ["#2f6fb0"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    slot = 0.8 / len(runs)

    # Reward histogram: one bar per value when rewards are discrete (0/1, -1/0/1), else bins.
    discrete = [s.overall.reward.distinct() if s.overall else None for s, _ in runs]
    if all(d is not None for d in discrete):
        values = sorted({v for d in discrete if d for v in d})
        for i, ((s, label), d, color) in enumerate(zip(runs, discrete, colors)):
            xs = [j + (i - (len(runs) - 1) / 2) * slot for j in range(len(values))]
            counts = [(d or {}).get(v, 0) for v in values]
            bars = ax1.bar(xs, counts, width=slot * 0.95, color=color, label=label)
            ax1.bar_label(bars, fontsize=8)
        ax1.set_xticks(range(len(values)), [f"{v:g}" for v in values])
    else:
        lo = min((s.overall.reward.min for s, _ in runs if s.overall and s.overall.reward.min is not None), default=None)
        hi = max((s.overall.reward.max for s, _ in runs if s.overall and s.overall.reward.max is not None), default=None)
        edges = reward_edges(lo, hi, bins=20)
        width = (edges[1] - edges[0]) / len(runs)
        for i, ((s, label), color) in enumerate(zip(runs, colors)):
            assert s.overall is not None
            counts = s.overall.reward.histogram(edges)
            ax1.bar([e + i * width for e in edges[:-1]], counts, width=width * 0.95, align="edge", color=color, label=label)
        ax1.tick_params(axis="x", labelrotation=45)
    total = ", ".join(f"{s.overall.rollouts if s.overall else 0}" for s, _ in runs)
    ax1.set_title(f"reward histogram ({total} rollouts)")
    ax1.set_xlabel("reward")
    ax1.set_ylabel("rollouts")

    # Pass rate per task, sorted by the (after) pass rate; tasks matched by key when comparing.
    measured = [k for k, t in stats.tasks.items() if t.n]  # fully masked tasks have no pass rate
    order = sorted(measured, key=lambda k: (-stats.tasks[k].pass_rate, k))
    if against is not None:
        order += [k for k, t in against.tasks.items() if t.n and k not in stats.tasks]
    if len(order) <= 40:
        for i, ((s, label), color) in enumerate(zip(runs, colors)):
            xs = [j + (i - (len(runs) - 1) / 2) * slot for j in range(len(order))]
            rates = [s.tasks[k].pass_rate if k in s.tasks else 0.0 for k in order]
            bars = ax2.bar(xs, rates, width=slot * 0.95, color=color, label=label)
            if len(order) <= 20:
                ax2.bar_label(bars, labels=[f"{r:.2g}" for r in rates], fontsize=8)
        ax2.set_xticks(range(len(order)), [short_task_label(k) for k in order], rotation=35, ha="right", fontsize=8)
        ax2.set_xlabel("task")
    else:
        for (s, label), color in zip(runs, colors):
            rates = sorted((t.pass_rate for t in s.tasks.values() if t.n), reverse=True)
            ax2.step(range(len(rates)), rates, where="post", color=color, label=label)
        ax2.set_xlabel(f"tasks, sorted by pass rate ({len(stats.tasks)})")
    ax2.set_ylim(0, 1.1)
    ax2.set_ylabel("pass rate")
    ax2.set_title(f"pass rate per task (correct = reward >= {stats.threshold:g})")
    if against is not None:
        ax1.legend()
        ax2.legend()
    title = os.path.basename(str(stats.path))
    if against is not None:
        title = f"before: {os.path.basename(str(against.path))}   after: {title}"
    fig.suptitle(title)
    fig.tight_layout()
    try:
        with output_lock(out), atomic_path(out) as tmp:
            fig.savefig(tmp, format="png", dpi=100)
    except OSError as exc:  # name the plot, not its temp file
        raise from_os_error(exc, str(out)) from None
    finally:
        plt.close(fig)
