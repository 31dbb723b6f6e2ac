"""Two-pass conversion for task-level rules (rl rows per task, dpo pairs, best-of-n, solved/unsolved,
dedup): pass 1 spills selection facts by task key, pass 2 decides and writes one partition at a time."""

from __future__ import annotations

import tempfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import msgspec
import orjson

from gymverl.formats import RowError
from gymverl.formats import dpo as dpo_fmt
from gymverl.formats import fast as fast_fmt
from gymverl.jsonl import Line
from gymverl.records import Checked, _FastRollouts, _fast_summary, agent_name, is_incomplete, task_key
from gymverl.schema import Facts
from gymverl.sidecars import merge_fields, prompt_key
from gymverl.select import Member, dedup_key, pair_task, record_status, select_task, split_of, task_status
from gymverl.files import scratch_dir

from gymverl.convert.options import ConvertError
from gymverl.convert.results import LineResult, MetaResult, Rejected
from gymverl.convert.rows import _Ctx, _content_facts, _dpo_build, _fast_sft_row, _rl_row, _rl_too_long, _sft_build, _too_long_rollout
from gymverl.convert.spill import _Partitions, _read_groups, _read_slots, _spill_error


class _FastPass1:
    """`_pass1_result` without dedup or --max-tokens, or None (then the exact path handles the line).

    Pass 1 needs only the selection facts. `validate`'s check reads them quickest, but only from
    rollouts with a task index; the SFT reader (prompts checked, not converted) takes the others. A
    file whose rollouts have no index soon stops trying the first.
    """

    def __init__(self, ctx: _Ctx, reader: fast_fmt.FastSFT) -> None:
        self.ctx = ctx
        self.reader = reader
        self.check: _FastMeta | None = _FastMeta(facts=ctx.opts.fmt != "rl")
        self.tried = self.hits = 0

    def __call__(self, line: Line) -> LineResult | None:
        found = None
        if self.check is not None:
            self.tried += 1
            found = self.check(line.data)
            if found is not None:
                self.hits += 1
                (reward, key, _agent, incomplete, masked, malformed, empty, _no_prompt, _fault), ri, params = found
            elif self.tried >= 1000 and self.hits * 2 < self.tried:
                self.check = None
        if found is None:
            got = self.reader.decode(line.data, rows=False)
            if got is None:
                return None
            reward, key, incomplete, masked, ri = got.reward, got.key, got.incomplete, got.masked, got.rollout_index
            malformed, empty, params = got.malformed, got.empty, got.rec.responses_create_params
        sel = self.ctx.opts.select
        if self.ctx.opts.fmt == "rl":
            status = "masked" if masked and sel.drop_masked else None
        else:
            status = record_status(reward, incomplete, sel, masked, malformed, empty)
        return MetaResult(key, line.number, reward, status, None, ri, _PRINTS(key, params), line.data if status is None else b"")


class _FastMeta(_FastRollouts):
    """`validate`'s fast check, also handing back the rollout index (for repeated-rollout checks).

    `facts=False` (rl): without the sft/dpo content checks, which rl rows never use.
    """

    def __init__(self, facts: bool = True) -> None:
        super().__init__()
        # rl reads no content, but its parts are still decoded (typed, texts raw): the schema's
        # content-part rule (`parts_ok`) must hold on this path too, or every line would decline
        # to the slower full decode (as it did when contents were left raw here).
        self.facts = facts

    def __call__(self, data: bytes) -> tuple[Facts, int | None, Any] | None:  # type: ignore[override]
        try:  # (a byte order mark, which orjson rejects and simdjson skips, fails msgspec's decode)
            self._parser.parse(data)  # validation only: the lazy document is dropped at once
            rec = self._decode(data)
        except Exception:  # noqa: BLE001 - any doubt goes to the exact path
            return None
        got = _fast_summary(rec, self.facts)
        return None if got is None else (got, rec.rollout_index, rec.responses_create_params)


def _pass1_result(ctx: _Ctx, c: Checked) -> LineResult:
    """Grouped pass 1: one line -> its selection facts (+ raw line if still in the running) or a rejection."""
    if c.record is None:
        return Rejected(c.line, c.code or "unknown", c.reason or "", c.raw)
    rec = c.record
    sel = ctx.opts.select
    key = task_key(rec)
    masked = rec.get("mask_sample") is True
    status = "masked" if masked and sel.drop_masked else None
    if ctx.opts.fmt != "rl":
        status = record_status(float(rec["reward"]), is_incomplete(rec), sel, masked, *_content_facts(rec, sel))
        if status is None and ctx.counter is not None:
            try:
                status = "max_tokens" if _too_long_rollout(ctx, rec) else None
            except RowError as exc:
                return Rejected(c.line, exc.code, exc.reason, c.raw)
    dk = dedup_key(rec) if sel.dedup and status is None else None
    ri = rec.get("_ng_rollout_index")
    ri = ri if isinstance(ri, int) and not isinstance(ri, bool) and ri >= 0 else None
    return MetaResult(key, c.line, float(rec["reward"]), status, dk, ri, _PRINTS.of_record(rec), c.raw if status is None else b"")


class _PromptPrints:
    """A fingerprint of a rollout's prompt: CRC-32 of its raw `input`, `instructions` and `tools`.

    Pass 1 spills it with the selection facts, so that pass 2 can tell when one task key holds two
    prompts (an environment dealing each rollout its own start; concatenated collections) without
    keeping any prompt. Equal
    fingerprints are taken as one prompt; different ones are settled by comparing the prompts
    (`_check_one_prompt`): the same prompt written two ways (another key order, a dict-path line)
    differs here, not there. The last fingerprint of recent task keys is remembered with its
    prompt, as a task's rollouts mostly arrive together: most lines then cost a memcmp, not a CRC.
    """

    def __init__(self, size: int = 512) -> None:
        self._recent: dict[str, tuple[Any, Any, Any, int]] = {}
        self.size = size

    def __call__(self, key: str, params: Any) -> int:
        """The fingerprint of a typed record's prompt (`schema.Params`, raw JSON values)."""
        inp, ins, tools = params.input, params.instructions, params.tools
        seen = self._recent.get(key)
        if seen is not None and seen[0] == inp and seen[1] == ins and seen[2] == tools:
            return seen[3]
        crc = zlib.crc32(tools, zlib.crc32(ins, zlib.crc32(inp)))
        if len(self._recent) >= self.size:
            self._recent.clear()
        # their own copies: never keep a line alive
        self._recent[key] = (msgspec.Raw(bytes(inp)), msgspec.Raw(bytes(ins)), msgspec.Raw(bytes(tools)), crc)
        return crc

    @staticmethod
    def of_record(rec: dict[str, Any]) -> int:
        """The fingerprint of a plain record (the dict path): of its prompt as orjson writes it."""
        rcp = rec.get("responses_create_params") or {}
        return zlib.crc32(orjson.dumps([rcp.get("input"), rcp.get("instructions"), rcp.get("tools")]))


_PRINTS = _PromptPrints()  # (per process: the workers of -j each hold their own)


def _convert_grouped(ctx: _Ctx, lines: Iterator[LineResult], total: int | None) -> None:
    """Two passes: spill valid rollouts to task-hash partitions, then decide and write task by task.

    Rows are built in the second pass and only for rollouts that are kept, so a heavy filter
    (best-of-n, unsolved tasks) also saves the conversion work of everything it drops.
    """
    s = ctx.summary
    n_parts = 1 if not total else max(1, min(128, -(-total // ctx.opts.partition_bytes)))
    if ctx.opts.tmp_dir is not None:
        tmp_parent = Path(ctx.opts.tmp_dir)
    elif not ctx.opts.dry_run:
        # Beside the output: the user sized that disk for this data; /tmp may be small.
        tmp_parent = ctx.sink.dir
    else:
        tmp_parent = Path(tempfile.gettempdir())
    try:
        tmp_parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _spill_error(exc, tmp_parent) from None
    with scratch_dir(tmp_parent, kind="spill") as root:
        parts = _Partitions(root, n_parts)
        try:
            for r in lines:
                s.lines += 1
                if type(r) is Rejected:
                    ctx.reject(r.line, r.code, r.reason, r.raw)
                    continue
                parts.add(r)
        except BaseException:
            parts.close(quiet=True)  # the first error (or the interrupt) is what the user sees
            raise
        parts.close()
        s.tasks = 0
        for i in range(n_parts):
            _finish_partition(ctx, *parts.paths(i))


def _finish_partition(ctx: _Ctx, meta_path: Path, data_path: Path) -> None:
    s, sel, fmt = ctx.summary, ctx.opts.select, ctx.opts.fmt
    groups = _read_groups(meta_path)
    mixed = [key for key, members in groups.items() if len({m.prompt for m in members}) > 1]
    repeated = [key for key, members in groups.items() if _repeats_rollouts(members)]
    if mixed or repeated:
        # Both checks compare prompts of rollouts read back from the partition: read and key each once.
        kept = {key: [m for m in groups[key] if m.status is None] for key in mixed}
        twice = _repeated_pairs(groups, repeated)
        prompts = _prompt_keys(data_path, {m.slot for ms in (*kept.values(), *twice.values()) for m in ms})
        _check_one_prompt(ctx, kept, prompts)
        _settle_repeats(ctx, groups, repeated, twice, prompts)
    # Decide every task first, then read back only the rollouts that become rows.
    plan: list[tuple[str, str, Any]] = []  # rl: (task key, split, (measured rollouts, statistics))
    pending: list[tuple[str, str, list[Member], list[str | None]]] = []  # sft/dpo: (task key, split, rollouts, pass-1 statuses)
    needed: set[int] = set()
    for key, members in groups.items():
        s.tasks = (s.tasks or 0) + 1
        split = split_of(key, sel.val_fraction, sel.split_seed)
        if fmt == "rl":
            # Masked and repeated rollouts are no measurement: left out of the task's statistics.
            measured = [m for m in members if m.status is None]
            for m in members:
                if m.status is not None:
                    s.filtered[m.status] += 1
            if not measured:
                s.tasks_dropped[_drop_reason(members)] += 1
                continue
            verdict = task_status(measured, sel)
            if verdict:
                s.filtered[verdict] += len(measured)
                s.tasks_dropped[verdict] += 1
                continue
            rewards = [m.reward for m in measured]
            stats = (len(rewards), sum(r >= sel.solved_threshold for r in rewards) / len(rewards), sum(rewards) / len(rewards))
            plan.append((key, split, (measured, stats)))
            needed.add(measured[0].slot)
            continue
        pending.append((key, split, members, [m.status for m in members]))
    raws = _read_slots(data_path, needed)
    for key, split, (members, stats) in plan:
        _emit_rl(ctx, key, split, members, stats, raws[members[0].slot])
    # sft / dpo: rows are chosen among the rollouts whose rows can be built. A chosen rollout whose
    # row fails (rejected with its reason) leaves its task, and the task is chosen again without
    # it: a broken best rollout gives way to the next, a broken pair side to another pair, as if
    # pass 1 had rejected the line. Nothing of a task is written or counted until it settles.
    raws = {}
    while pending:
        chosen = []
        needed = set()
        for key, split, members, before in pending:
            for m, status in zip(members, before):
                m.status = status  # pass 1's verdicts; selection starts again from them
            select_task(members, sel)
            what: Any = [m for m in members if m.status is None] if fmt == "sft" else pair_task(members, sel)
            needed.update(m.slot for m in (what if fmt == "sft" else [m for p in what for m in p]))
            chosen.append((key, split, members, before, what))
        raws.update(_read_slots(data_path, needed - raws.keys()))
        pending = []
        for key, split, members, before, what in chosen:
            built = _build_sft(ctx, key, what, raws) if fmt == "sft" else _build_dpo(ctx, key, what, raws)
            if built.failed:
                gone = {id(m) for m in built.failed}
                left = [(m, status) for m, status in zip(members, before) if id(m) not in gone]
                pending.append((key, split, [m for m, _ in left], [status for _, status in left]))
                continue
            for m in members:
                if m.status is not None:
                    s.filtered[m.status] += 1
            for status in built.filtered:
                s.filtered[status] += 1
            for row in built.rows:
                ctx.write(split, row)
            s.kept_lines += len(built.rows) * (1 if fmt == "sft" else 2)  # a dpo row holds two rollouts
            if built.rows:
                s.tasks_by_split[split] += 1
            elif not what:
                s.tasks_dropped[_drop_reason(members)] += 1


def _prompt_keys(data_path: Path, slots: set[int]) -> dict[int, str]:
    """`sidecars.prompt_key` of the rollouts in `slots` of a partition's data file (one read)."""
    return {slot: prompt_key(orjson.loads(raw)) for slot, raw in _read_slots(data_path, slots).items()}


def _check_one_prompt(ctx: _Ctx, kept: dict[str, list[Member]], prompts: dict[int, str]) -> None:
    """Task keys whose rollouts' prompt fingerprints differ: the same prompt written two ways, or not.

    Different prompts under one task index are counted for a warning, never merged silently: an
    environment that deals each rollout its own start (NeMo Gym's blackjack: each rollout's hand is in
    its prompt) writes them so, and so do collections each numbered from 0 and concatenated without
    rollout indexes that repeat (those that repeat stop the conversion: `_settle_repeats`). `kept`:
    per task key, only the rollouts still in the running (a rollout a rule removed in pass 1 makes
    no row); `prompts`: their `_prompt_keys`.
    """
    for key, ms in kept.items():
        first: dict[str, int] = {}
        for m in sorted(ms, key=lambda m: m.line):
            first.setdefault(prompts[m.slot], m.line)
        if len(first) > 1:
            a, b = sorted(first.values())[:2]
            s = ctx.summary
            s.mixed_prompt_tasks += 1
            if len(s.mixed_prompt_examples) < 3:
                s.mixed_prompt_examples.append(f"{key} (lines {a} and {b})")


def _repeats_rollouts(members: list[Member]) -> bool:
    """True when two rollouts of one task key carry the same `_ng_rollout_index`."""
    # Set and count run in C: no per-rollout Python work on the common path (no repeats).
    ris = [m.rollout for m in members]
    distinct = set(ris)
    nones = ris.count(None)
    return len(distinct) - (1 if nones else 0) < len(ris) - nones


def _repeated_pairs(groups: dict[str, list[Member]], keys: list[str]) -> dict[tuple[str, int], list[Member]]:
    """(task key, rollout index) -> its rollouts still in the running, for pairs that occur twice."""
    by_pair: dict[tuple[str, int], list[Member]] = {}
    for key in keys:
        for m in groups[key]:
            if m.rollout is not None and m.status is None:
                by_pair.setdefault((key, m.rollout), []).append(m)
    return {pair: ms for pair, ms in by_pair.items() if len(ms) > 1}


def _settle_repeats(
    ctx: _Ctx, groups: dict[str, list[Member]], keys: list[str], twice: dict[tuple[str, int], list[Member]], prompts: dict[int, str]
) -> None:
    """Task keys whose (task, repeat) pairs occur twice (`twice`: `_repeated_pairs`; `prompts`:
    their `_prompt_keys`): the same rollout repeated, or two tasks.

    Two prompts under one task index are different tasks (collections each numbered from 0 and
    concatenated): merging them would put one prompt's rollouts under the other (wrong pass
    rates, a prompt dropped from rl, pairs across prompts in dpo), so the conversion stops with
    one sentence. The same prompt twice is one rollout written twice: the later lines are
    counted under `repeated_rollout`.
    """
    for (key, ri), ms in twice.items():
        if len({prompts[m.slot] for m in ms}) > 1:
            lines = sorted(m.line for m in ms)
            raise ConvertError(
                f"{ctx.summary.input}: lines {lines[0]} and {lines[1]} are rollout {ri} of task {key} but have different prompts, "
                "as when collections each numbered from 0 are concatenated; convert each collection on its own (or renumber _ng_task_index)."
            )
    for key in keys:
        members = sorted(groups[key], key=lambda m: m.line)
        seen: set[int] = set()
        for m in members:
            if m.rollout is None:
                continue
            if m.rollout in seen and m.status is None:
                m.status = "repeated_rollout"
            seen.add(m.rollout)


# Keys only NeMo Gym >= 0.5 writes on a rollout line: such lines lack the input fields the verifier
# response does not echo (they are in `<stem>_materialized_inputs.jsonl`).
_NG05_KEYS = ("_ng_environment_server", "_ng_result_type", "mask_sample", "failure_kind")


def _join_task(ctx: _Ctx, rec: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(`rec` with the task fields of its task row when a task source is known, its task fields)
    for an rl row; the task fields are read once here, for the row and for the summary's counts."""
    s, source = ctx.summary, ctx.source
    if source is not None:
        j = source.find(rec)
        if j.fields is not None:
            s.joined += 1
            rec = merge_fields(rec, j.fields)  # its own task row: complete by definition
            return rec, ctx.rules.task_fields(rec)
    fields = ctx.rules.task_fields(rec)
    if source is None:
        if any(k in rec for k in _NG05_KEYS):
            s.rows_without_source += 1
        agent = agent_name(rec)
        s.unjoined_by_agent[agent] += 1
        s.unjoined_fields.setdefault(agent, Counter()).update(k for k, v in fields.items() if v is not None)
        return rec, fields
    s.not_joined[j.reason] += 1
    # Not joined: name the fields the file has for this agent's tasks that the line lacks.
    missing = source.wanted_fields(agent_name(rec)) - {k for k, v in fields.items() if v is not None}
    if missing:
        s.rows_missing_fields += 1
        s.missing_task_fields.update(missing)
    return rec, fields


def _emit_rl(ctx: _Ctx, key: str, split: str, members: list[Member], stats: tuple[int, float, float], raw: bytes) -> None:
    s = ctx.summary
    try:
        rec, fields = _join_task(ctx, orjson.loads(raw))
        row = _rl_row(ctx, rec, key, stats, fields)
    except RowError as exc:
        # Every rollout of the task shares the prompt that failed: all are rejected with its reason.
        for i, m in enumerate(members):
            ctx.reject(m.line, exc.code, exc.reason if i == 0 else f"{exc.reason} (same task as line {members[0].line})", raw if i == 0 else b"")
        s.tasks_dropped[exc.code] += 1
        return
    if _rl_too_long(ctx, row):
        s.filtered["max_tokens"] += len(members)
        s.tasks_dropped["max_tokens"] += 1
        return
    if not row["reward_model"]["ground_truth"]:
        s.missing_ground_truth += 1
    s.kept_lines += len(members)
    s.tasks_by_split[split] += 1
    ctx.write(split, row)


class _Built(NamedTuple):
    """A task's sft/dpo rows, built before any is written: `failed` are the chosen rollouts whose row
    could not be built (already rejected with their reason); `filtered` the rules rows met while
    being built (--max-tokens)."""

    rows: list[dict[str, Any]]
    filtered: list[str]
    failed: list[Member]


def _build_sft(ctx: _Ctx, key: str, kept: list[Member], raws: dict[int, bytes]) -> _Built:
    rows: list[dict[str, Any]] = []
    filtered: list[str] = []
    failed: list[Member] = []
    reader = ctx.fast_reader()
    for m in kept:
        raw = raws[m.slot]
        if reader is not None:
            got = reader.decode(raw, validated=True)  # pass 1 validated the line
            row = _fast_sft_row(ctx, reader, got, m.line) if got is not None and got.key == key else None
            if row is not None:
                rows.append(row)
                continue
        try:
            row, status = _sft_build(ctx, orjson.loads(raw), m.line, key)
        except RowError as exc:
            ctx.reject(m.line, exc.code, exc.reason, raw)
            failed.append(m)
            continue
        if row is None:
            filtered.append(status or "max_tokens")
            continue
        rows.append(row)
    return _Built(rows, filtered, failed)


def _build_dpo(ctx: _Ctx, key: str, pairs: list[tuple[Member, Member]], raws: dict[int, bytes]) -> _Built:
    rows: list[dict[str, Any]] = []
    failed: list[Member] = []
    for chosen, rejected in pairs:
        sides: list[dict[str, Any] | None] = []
        for m in (chosen, rejected):
            raw = raws[m.slot]
            try:
                sides.append(_dpo_build(ctx, orjson.loads(raw)))
            except RowError as exc:
                ctx.reject(m.line, exc.code, exc.reason, raw)
                failed.append(m)
                sides.append(None)
        c, r = sides
        if c is None or r is None:
            continue
        rows.append(
            dpo_fmt.dpo_row(
                c,
                r,
                chosen_reward=chosen.reward,
                rejected_reward=rejected.reward,
                data_source=c["data_source"],
                task_key=key,
                chosen_line=chosen.line,
                rejected_line=rejected.line,
            )
        )
    return _Built(rows, [], failed)


def _drop_reason(members: list[Member]) -> str:
    """Why a task produced no row: the rule that removed most of its rollouts."""
    counts = Counter(m.status for m in members if m.status)
    return counts.most_common(1)[0][0] if counts else "no rollouts"
