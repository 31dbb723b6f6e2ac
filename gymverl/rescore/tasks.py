"""Task fields for `/verify`: the task rows joined onto rollouts (`--tasks`, materialized inputs) and,
per agent, which top-level fields are task fields (the server's request schema, else the task source,
else the name heuristic)."""

from __future__ import annotations

import asyncio
import os
from typing import Any, Callable, Mapping

from gymverl.formats import FieldRules
from gymverl.sidecars import TaskSource, sidecar_paths
from gymverl.verify import RequestSchema, VerifyClient, fetch_request_fields, fetch_request_schema

from gymverl.rescore.summary import RescoreSummary, is_bookkeeping


def task_source_for(input_path: str | os.PathLike[str], tasks: "str | os.PathLike[str] | TaskSource | None", side_files: bool = True) -> TaskSource | None:
    """The task rows to join onto rollouts: `tasks` (a tasks file or materialized inputs, kind
    detected), else `<stem>_materialized_inputs.jsonl` beside the input (unless `side_files` is
    False), else None. Raises UsageError when `tasks` is missing or unreadable."""
    if isinstance(tasks, TaskSource):
        return tasks
    if tasks is not None:
        # Rollouts without an index (NeMo Gym's example rollouts) join by prompt only when it is unambiguous.
        return TaskSource(tasks, prompt_fallback=True)
    if not side_files:
        return None
    found = sidecar_paths(input_path).materialized
    return TaskSource(found, "materialized", prompt_fallback=True) if found is not None else None


class TaskFields:
    """Per run: joins task fields onto rows, and says which top-level fields of a row are task fields
    (sent to /verify): the server's schema, else the task source's field names, else the name
    heuristic (its guesses are recorded in `summary.guessed_fields`)."""

    def __init__(self, client: VerifyClient, tasks: TaskSource | None, summary: RescoreSummary) -> None:
        self.client, self.tasks, self.summary = client, tasks, summary
        self._schemas: dict[str, RequestSchema | None] = {}
        self._rules = FieldRules(task_keys=frozenset(tasks.field_names) if tasks is not None else None, guessed=summary.guessed_fields)
        self._field_rule: dict[str | None, Callable[[str], bool]] = {}
        # server URL -> the fields its /verify accepts (for the absent-field diagnostics); cancelled at the end of a run
        self.accepted: dict[str, asyncio.Future[list[str] | None]] = {}

    def join(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """The task fields to add to `record` (those it lacks) from its task row; counted in the summary."""
        added: dict[str, Any] = {}
        if self.tasks is not None:
            # Joined on the indices (both for materialized inputs), the prompt only as a check:
            # never on line position or prompt text (two tasks may share a prompt).
            join = self.tasks.find(record)
            if join.fields is None:
                self.summary.unjoined += 1
                self.summary.unjoined_by_reason[join.reason] += 1
            else:
                self.summary.joined_tasks += 1
                added = {k: v for k, v in join.fields.items() if record.get(k) is None and v is not None}
                for k in added:
                    self.summary.added_fields[k] += 1
        return added

    async def fetch_schemas(self) -> None:
        """Ask every server for its `/verify` request schema once, before any row is sent."""
        urls = self.client.urls
        timeout = min(self.client.timeout, 10.0)
        found = await asyncio.gather(*(fetch_request_schema(u, timeout) for u in urls))
        self._schemas = dict(zip(urls, found))
        self.summary.request_schemas = {u: None if sc is None else "schema+" if sc.open else "schema" for u, sc in self._schemas.items()}
        for u, sc in self._schemas.items():  # the absent-field diagnostics reuse the answer
            fut: asyncio.Future[list[str] | None] = asyncio.get_running_loop().create_future()
            fut.set_result(list(sc.fields) if sc is not None else None)
            self.accepted[u] = fut

    def rule(self, agent: str | None) -> Callable[[str], bool]:
        """`key -> is it a task field?` for rows of `agent`: declared by the /verify schema of every
        server the row may go to (alone when the schemas are closed), else named by the task
        source, else the heuristic (which records its guesses)."""
        rule = self._field_rule.get(agent)
        if rule is not None:
            return rule
        urls = self.client.servers_for(agent) or []
        schemas = [self._schemas.get(u) for u in urls]
        if urls and all(sc is not None for sc in schemas):
            declared = frozenset(k for sc in schemas if sc is not None for k in sc.fields)
            if not any(sc is not None and sc.open for sc in schemas):
                rule = declared.__contains__
            else:
                fallback = self._rules.is_task_field
                rule = lambda k: k in declared or fallback(k)  # noqa: E731
        else:
            rule = self._rules.is_task_field
        self._field_rule[agent] = rule
        return rule

    async def note_absent(self, server: str | None, body: Mapping[str, Any]) -> None:
        """Count task fields the server's /verify accepts that this row did not send (diagnostics)."""
        if server is None:
            return
        fetch = self.accepted.get(server)
        if fetch is None:
            fetch = self.accepted[server] = asyncio.ensure_future(fetch_request_fields(server))
        for k in await fetch or ():
            if body.get(k) is None and not is_bookkeeping(k):
                self.summary.absent_accepted[k] += 1
