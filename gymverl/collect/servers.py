"""The NeMo Gym servers a collection needs: are they running and answering, how to start them.

`check_servers` asks the head server for its config and checks that every agent the tasks name,
the resources and model servers each uses, and the model's upstream URL all answer, so a dead one
is one sentence before the collector starts, not a failure on every rollout. `start_hint` and
`agent_config_hint` say which shipped config starts an agent; `resolve_server_configs` turns
`--servers` names into the config paths gymverl passes to `ng_run`.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Sequence

import orjson

from gymverl.collect.errors import CollectError
from gymverl.nemo_gym import NemoGymError, package_dir, resources_server_config


def _get(url: str, timeout: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - user-given server URL
        return resp.read()


def _defines(name: str) -> re.Pattern[str]:
    """A NeMo Gym config's top-level key `name:`: how a config defines a server instance or an agent."""
    return re.compile(rf"^{re.escape(name)}:\s*$", re.M)


# An agent or server config that calls the policy model (`model_server: {type: ..., name: policy_model}`).
_CALLS_POLICY = re.compile(r"^\s+name:\s*policy_model\s*$", re.M)


def agent_config_hint(env: Path | None, agent: str) -> str | None:
    """The shipped NeMo Gym config (path relative to the package) that defines `agent`, if any."""
    if env is None:
        return None
    try:
        root = package_dir(env)
    except NemoGymError:
        return None
    pattern = _defines(agent)
    for sub in ("resources_servers", "responses_api_agents", "environments", "benchmarks"):
        # A server's own `<name>/configs/<name>.yaml` first: it is the one its README starts.
        found = sorted((root / sub).glob("*/configs/*.yaml"), key=lambda c: (c.stem != c.parent.parent.name, str(c)))
        for cfg in found + sorted((root / sub).glob("*/config.yaml")):
            try:
                if pattern.search(cfg.read_text(errors="replace")):
                    return str(cfg.relative_to(root))
            except OSError:
                continue
    return None


def start_hint(env: Path | None, agents: Iterable[str]) -> str:
    """The `ng_run` command that would start servers for `agents` (with a model server config)."""
    configs = [c for c in dict.fromkeys(agent_config_hint(env, a) for a in agents) if c]
    configs = configs or ["<resources server config>"]
    configs.append("responses_api_models/openai_model/configs/openai_model.yaml")
    return (
        f'ng_run "+config_paths=[{",".join(configs)}]" +policy_base_url=<URL>/v1 +policy_api_key=<KEY> '
        f"+policy_model_name=<MODEL> (from {package_dir(env) if env else 'the NeMo Gym package folder'})"
    )


_INTERP = re.compile(r"^\$\{([\w.]+)\}$")


def _resolve(cfg: dict[str, Any], value: Any) -> Any:
    """Resolve a whole-value `${a.b}` interpolation (as an unresolved OmegaConf dump has) against `cfg`."""
    for _ in range(5):
        m = _INTERP.match(value) if isinstance(value, str) else None
        if not m:
            return value
        node: Any = cfg
        for part in m.group(1).split("."):
            node = node.get(part) if isinstance(node, dict) else None
        value = node
    return value


def _server_config(cfg: dict[str, Any], name: str, kind: str) -> dict[str, Any] | None:
    """The inner config of server instance `name` of `kind` (e.g. responses_api_agents), if running."""
    outer = cfg.get(name)
    if not isinstance(outer, dict) or not isinstance(outer.get(kind), dict):
        return None
    inner = next(iter(outer[kind].values()), None)
    return inner if isinstance(inner, dict) else None


def check_servers(head_url: str, agents: Iterable[str], *, env: Path | None = None, timeout: float = 5.0) -> dict[str, str]:
    """Check the head server, every agent in `agents`, the resources and model servers each uses, and the
    model's own upstream URL all answer; return server name -> URL (the upstream as "<model> upstream")."""
    import yaml

    from gymverl.verify import server_answers  # (aiohttp: loaded only when servers are checked)

    agents = sorted(set(agents))
    base = head_url.rstrip("/")
    try:
        raw = _get(f"{base}/global_config_dict_yaml", timeout)
        cfg = yaml.safe_load(orjson.loads(raw)) if raw.startswith(b'"') else yaml.safe_load(raw)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CollectError(
            f"no NeMo Gym head server answers at {base} ({reason}); start the servers first, e.g. "
            f"{start_hint(env, agents)}, or pass --servers CONFIG to let gymverl start them."
        ) from None
    cfg = cfg if isinstance(cfg, dict) else {}
    running = sorted(k for k, v in cfg.items() if isinstance(v, dict) and "responses_api_agents" in v)
    urls: dict[str, str] = {}
    for name in agents:
        inner = _server_config(cfg, name, "responses_api_agents")
        if inner is None:
            hint = agent_config_hint(env, name)
            where = f" (defined in {hint})" if hint else ""
            raise CollectError(
                f"agent {name!r} is not running on the NeMo Gym servers at {base} "
                f"(running agents: {', '.join(running) or 'none'}); add its config{where} to ng_run's +config_paths."
            )
        # The agent, then the servers it calls: a dead one would fail every rollout, late.
        targets = [(name, "agent", inner)]
        for ref_key, label in (("resources_server", "resources server"), ("model_server", "model server")):
            ref = inner.get(ref_key)
            if isinstance(ref, dict) and ref.get("name") and ref.get("type"):
                sub = _server_config(cfg, ref["name"], ref["type"])
                if sub is not None:
                    targets.append((ref["name"], label, sub))
        for server, label, sc in targets:
            if server in urls:
                continue
            host, port = _resolve(cfg, sc.get("host")), _resolve(cfg, sc.get("port"))
            if not host or not port:
                continue  # an unusual config: the collector will report it
            url = f"http://{host}:{port}"
            why = server_answers(url + "/", timeout)
            if why:
                who = f"agent {server!r}" if label == "agent" else f"{label} {server!r} (used by agent {name!r})"
                raise CollectError(
                    f"{who} is configured at {url} but does not answer ({why}); "
                    f"restart the NeMo Gym servers (ng_run)."
                )
            urls[server] = url
            if label == "model server":
                upstream = _resolve(cfg, sc.get("openai_base_url") or sc.get("base_url"))
                upstream = upstream[0] if isinstance(upstream, list) and upstream else upstream
                if isinstance(upstream, str) and upstream.startswith("http"):
                    why = server_answers(upstream.rstrip("/") + "/models", timeout)
                    if why:
                        raise CollectError(
                            f"the model behind NeMo Gym's {server!r} server, {upstream}, does not answer ({why}); "
                            f"start your model server (e.g. `vllm serve MODEL`) or point +policy_base_url at it."
                        )
                    urls[f"{server} upstream"] = upstream
    return urls


def resolve_server_configs(
    env: Path, configs: Sequence[str], policy_url: str | None, model_type: str, agents: Iterable[str] = ()
) -> list[Path]:
    """Config paths for ng_run: a bare name means that resources server's shipped config; adds a model
    server config (`model_type`) when a policy URL is given and no config defines `policy_model`.

    Checked before ng_run starts anything (CollectError, usage, exit 2): every agent in `agents` (the
    tasks') is defined by one of the configs (a missing one was found only after starting the others,
    ~40 s), and configs that call `policy_model` get one from --policy-url or a config (ng_run failed
    on its config otherwise)."""
    root = package_dir(env)
    paths: list[Path] = []
    for c in configs:
        for part in (p for p in c.split(",") if p):
            p = Path(part)
            if p.exists() or (root / p).exists():
                paths.append(p.resolve() if p.exists() else root / p)
            elif "/" not in part and not part.endswith((".yaml", ".yml")):
                paths.append(resources_server_config(env, part))
            else:
                raise CollectError(f"NeMo Gym config not found: {part} (looked in . and {root}).")
    texts = [p.read_text(errors="replace") for p in paths]
    for name in sorted(set(agents)):
        if not any(_defines(name).search(t) for t in texts):
            hint = agent_config_hint(env, name)
            server = hint.split("/")[1] if hint and hint.startswith("resources_servers/") else (hint or "<its config>")
            raise CollectError(
                f"agent {name!r} (named by the tasks) is defined in none of the configs --servers starts "
                f"({', '.join(p.name for p in paths)}); add --servers {server}."
            )
    if not any(_defines("policy_model").search(t) for t in texts):
        if policy_url:
            model_cfg = root / "responses_api_models" / model_type / "configs" / f"{model_type}.yaml"
            if not model_cfg.exists():
                raise CollectError(f"unknown NeMo Gym model server type {model_type!r} (no {model_cfg}).")
            paths.append(model_cfg)
        elif any(_CALLS_POLICY.search(t) for t in texts):
            raise CollectError(
                "the servers --servers starts call a policy model (policy_model) that nothing defines: "
                "pass --policy-url with the URL of an OpenAI-compatible server of the model to collect from."
            )
    return paths
