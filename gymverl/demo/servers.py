"""The NeMo Gym servers the demo needs: which server verifies each agent, started in the background."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, Callable

# The sample rollouts come from two NeMo Gym environments; each agent is verified by its resources
# server (other agents: the name without `_simple_agent`, NeMo Gym's naming convention).
DEMO_SERVERS = {
    "math_with_judge_simple_agent": "math_with_judge",
    "xlam_fc_simple_agent": "xlam_fc",
}


def server_for_agent(agent: str) -> str:
    """The NeMo Gym resources server that verifies `agent`'s rollouts (`math_with_judge_simple_agent` -> `math_with_judge`)."""
    if agent in DEMO_SERVERS:
        return DEMO_SERVERS[agent]
    for suffix in ("_simple_agent", "_agent"):
        if agent.endswith(suffix):
            return agent[: -len(suffix)]
    return agent


def agents_in(rollouts: Path) -> list[str]:
    """The agent names (`agent_ref.name`) in a rollout file, in first-seen order (streaming)."""
    from gymverl.records import agent_name, iter_checked

    seen: dict[str, None] = {}
    for c in iter_checked(rollouts):
        if c.record is not None:
            name = agent_name(c.record)
            if name:
                seen.setdefault(name, None)
    return list(seen)


class _BackgroundServers:
    """NeMo Gym servers started in a thread (so the demo works meanwhile), always stopped."""

    def __init__(self, servers: Any) -> None:
        self.servers = servers
        self.error: BaseException | None = None
        self.started_at = time.monotonic()
        self.ready_seconds: float | None = None
        self._thread = threading.Thread(target=self._run, name="gymverl-demo-servers", daemon=True)

    def _run(self) -> None:
        try:
            self.servers.start()
            self.ready_seconds = time.monotonic() - self.started_at
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def start(self) -> "_BackgroundServers":
        self._thread.start()
        return self

    def wait(self, on_wait: Callable[[], None] | None = None) -> Any:
        """Block until the servers are ready; re-raise the start error, if any."""
        if self._thread.is_alive() and on_wait is not None:
            on_wait()
        while self._thread.is_alive():
            self._thread.join(0.2)
        if self.error is not None:
            raise self.error
        return self.servers

    def stop(self) -> None:
        """Stop everything ng_run started; safe to call while start() is still running, and twice."""
        self.servers.stop()
        # start() sees ng_run gone and returns (it stops again itself); then make sure.
        self._thread.join(30)
        self.servers.stop()
