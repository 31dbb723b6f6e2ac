"""How NeMo Gym servers get their Python environment: per-server uv venvs, or one venv for all.

NeMo Gym (`ng_run` / `gym env start`) starts every server folder it runs (`resources_servers/mcqa`,
`responses_api_agents/simple_agent`, ...) from that folder's own `.venv`, which it builds with
`uv venv --python <its own Python version>` + `uv pip install nemo-gym==<its own version> -r
requirements.txt` (`nemo_gym/cli/setup_command.py::setup_env_command`, 0.4.0 and 0.7.0 alike).
uv re-checks nemo-gym's `Requires-Python` there. nemo-gym >= 0.5 declares `>=3.13.14`, so with an
older Python (pyenv ships 3.13.0 at most here; the NeMo Gym venv itself was installed with
`pip install --ignore-requires-python`) every per-server venv fails to build, and the `.venv` it
leaves behind (python + activate, no packages) is then reused by `+skip_venv_if_present=true`,
which fails differently (`No module named 'fastapi'`).

This module decides, from files only (gymverl never imports `nemo_gym`: it needs another Python),
which of two set-ups a NeMo Gym venv supports, and prepares it:

* per-server venvs (NeMo Gym's default) when the venv's Python satisfies nemo-gym's
  `Requires-Python` and `uv` is installed; then only half-built per-server `.venv`s are removed,
  so a retry after a failed start behaves like the first try;
* otherwise one venv for all servers: a directory `DIR/<server_type>/<folder>/.venv -> ENV` of
  symlinks, used through `+skip_venv_if_present=true +uv_venv_dir=DIR` (with a `uv_venv_dir`
  other than NeMo Gym's own install folder, NeMo Gym looks for the venv of server folder
  `<type>/<name>` at `DIR/<type>/<name>/.venv`; `setup_env_command`, 0.4.0 and 0.7.0), and the
  servers' own `requirements.txt` must be installed into ENV (`make setup` does that).

Everything here is stdlib-only and fast (no subprocess unless a venv has no `pyvenv.cfg`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from gymverl.errors import RunError
from gymverl.overrides import override

#: The folders below NeMo Gym's install folder (site-packages) that hold servers; each server is
#: `<server_type>/<folder>` with an `app.py` and a `requirements.txt` or `pyproject.toml`.
SERVER_TYPES = ("resources_servers", "responses_api_agents", "responses_api_models", "environment_servers")

#: Server folders that gymverl's runs may use besides the resources servers they name: the agent
#: every shipped config pairs with a resources server, the two policy-model clients, and the
#: legacy agent that 0.7.0's `gym env start` adds (`environment_servers/legacy_agent`). Only the
#: ones that exist in the installed package are linked.
COMMON_SERVER_FOLDERS = (
    "responses_api_agents/simple_agent",
    "responses_api_models/openai_model",
    "responses_api_models/vllm_model",
    "environment_servers/legacy_agent",
)

_VERSION = re.compile(r"^(\d+(?:\.\d+)*)")
_REQ_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class NemoGymInstall:
    """What is installed in one NeMo Gym venv (read from files, never by importing nemo_gym).

    Attributes:
        env: the venv folder (absolute).
        site_packages: its `lib/pythonX.Y/site-packages`, which holds `nemo_gym/` and the server
            folders (`resources_servers/`, ...); NeMo Gym's wheel ships them at top level.
        version: nemo-gym's version string, e.g. `"0.7.0"` (`Version:` of the dist-info METADATA).
        requires_python: nemo-gym's `Requires-Python` (e.g. `">=3.13.14"`; `">=3.12"` for 0.4.0),
            or None when the METADATA has none.
        python: the venv's Python version as (major, minor, micro), e.g. (3, 13, 0).
        has_uv: whether `ENV/bin/uv` exists (NeMo Gym builds per-server venvs with it).
    """

    env: Path
    site_packages: Path
    version: str
    requires_python: str | None
    python: tuple[int, int, int]
    has_uv: bool

    @property
    def version_tuple(self) -> tuple[int, ...]:
        """`version` as integers, e.g. (0, 7, 0); a suffix such as `rc1` is ignored."""
        return version_tuple(self.version)

    @property
    def python_satisfies_requirement(self) -> bool:
        """True when the venv's Python is inside nemo-gym's `Requires-Python` (or there is none)."""
        return self.requires_python is None or python_satisfies(self.python, self.requires_python)

    def per_server_venvs_work(self) -> tuple[bool, str]:
        """Whether NeMo Gym can build its own per-server uv venvs here, and why not.

        Returns (True, "") or (False, reason) where reason is one clause for an error message,
        e.g. "the NeMo Gym venv's Python 3.13.0 does not satisfy nemo-gym 0.7.0's Requires-Python
        >=3.13.14 (uv re-checks it for every per-server venv)".
        """
        if not self.has_uv:
            return False, f"`uv` is not installed in {self.env} (NeMo Gym builds per-server venvs with it)"
        if not self.python_satisfies_requirement:
            py = ".".join(map(str, self.python))
            return False, (
                f"the NeMo Gym venv's Python {py} does not satisfy nemo-gym {self.version}'s "
                f"Requires-Python {self.requires_python} (uv re-checks it for every per-server venv)"
            )
        return True, ""


def version_tuple(text: str) -> tuple[int, ...]:
    """The leading dotted integers of a version string: "0.7.0" -> (0, 7, 0), "3.13.0rc1" -> (3, 13, 0).

    Raises ValueError when `text` does not start with a digit.
    """
    m = _VERSION.match(text.strip())
    if not m:
        raise ValueError(f"not a version: {text!r}")
    return tuple(int(p) for p in m.group(1).split("."))


def python_satisfies(python: Sequence[int], spec: str) -> bool:
    """Whether a Python version satisfies a `Requires-Python` specifier such as ">=3.13.14,<4".

    Supports the clauses NeMo Gym and most packages use: `>=`, `>`, `<=`, `<`, `==` (with a
    trailing `.*`), `!=`, `~=`; versions compare as integer tuples padded with zeros. An empty spec
    is satisfied. Raises ValueError on a clause it cannot read (never guesses).
    """
    have = tuple(python)
    for clause in (c.strip() for c in spec.split(",")):
        if not clause:
            continue
        m = re.fullmatch(r"(~=|===|==|!=|>=|<=|>|<)\s*([0-9][0-9.]*)(\.\*)?", clause)
        if not m:
            raise ValueError(f"cannot read Requires-Python clause {clause!r}")
        op, ver, star = m.group(1), version_tuple(m.group(2)), bool(m.group(3))
        n = max(len(have), len(ver))
        a = have + (0,) * (n - len(have))
        b = ver + (0,) * (n - len(ver))
        if star:  # ==3.13.* / !=3.13.*: prefix match
            hit = have[: len(ver)] == ver
            ok = hit if op in ("==", "===") else not hit
        elif op == "~=":
            ok = a >= b and have[: len(ver) - 1] == ver[:-1]
        else:
            ok = {">=": a >= b, ">": a > b, "<=": a <= b, "<": a < b, "==": a == b, "===": a == b, "!=": a != b}[op]
        if not ok:
            return False
    return True


def _site_packages_dirs(env: Path) -> list[Path]:
    return sorted((env / "lib").glob("python3*/site-packages"))


def _metadata_fields(metadata: Path) -> dict[str, str]:
    """The header fields of a dist-info METADATA file (first value of each; body ignored).

    Parsed like `importlib.metadata` does (RFC 822 headers via `email`): multi-line fields such as
    `License:` continue on indented lines, some of them whitespace only.
    """
    import email

    msg = email.message_from_string(metadata.read_text(encoding="utf-8", errors="replace"))
    return {k.lower(): str(v).strip() for k, v in reversed(msg.items())}


def venv_python_version(env: Path) -> tuple[int, int, int]:
    """The Python version of venv `env` as (major, minor, micro).

    Read from `ENV/pyvenv.cfg` (`version = 3.13.0` written by `python -m venv`, `version_info =
    3.12.1` written by `uv venv`); when neither is there, `ENV/bin/python` is asked (one
    subprocess, 30 s limit). Raises RunError when neither works.
    """
    cfg = env / "pyvenv.cfg"
    if cfg.is_file():
        for line in cfg.read_text(encoding="utf-8", errors="replace").splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("version", "version_info"):
                with_parts = version_tuple(value.strip()) + (0, 0)
                return (with_parts[0], with_parts[1], with_parts[2])
    python = env / "bin" / "python"
    try:
        out = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d.%d' % sys.version_info[:3])"],
            capture_output=True, text=True, timeout=30, check=True,
        ).stdout
        parts = version_tuple(out.strip()) + (0, 0)
        return (parts[0], parts[1], parts[2])
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise RunError(f"cannot tell the Python version of {env} (no pyvenv.cfg; {python} failed: {exc}).") from exc


def read_install(env: str | os.PathLike[str]) -> NemoGymInstall:
    """What NeMo Gym venv `env` holds: nemo-gym's version and Requires-Python, the venv's Python.

    Facts come from `ENV/lib/python3*/site-packages/nemo_gym-*.dist-info/METADATA` (`Version:`,
    `Requires-Python:`) and `ENV/pyvenv.cfg`, never from importing nemo_gym. Raises RunError when
    `env` has no nemo-gym dist-info (not a NeMo Gym venv, or the install did not finish).
    """
    root = Path(env).absolute()
    for sp in _site_packages_dirs(root):
        for dist in sorted(sp.glob("nemo_gym-*.dist-info")):
            metadata = dist / "METADATA"
            if not metadata.is_file():
                continue
            fields = _metadata_fields(metadata)
            version = fields.get("version") or dist.name[len("nemo_gym-") : -len(".dist-info")]
            return NemoGymInstall(
                env=root,
                site_packages=sp,
                version=version,
                requires_python=fields.get("requires-python") or None,
                python=venv_python_version(root),
                has_uv=(root / "bin" / "uv").exists(),
            )
    raise RunError(f"{root} has no nemo-gym installed (no nemo_gym-*.dist-info); create it with `make setup`.")


def installed_nemo_gym_version(env: str | os.PathLike[str]) -> str | None:
    """nemo-gym's version in venv `env` (e.g. "0.7.0"), or None when it has none. Never raises."""
    try:
        return read_install(env).version
    except (RunError, OSError, ValueError):
        return None


# ---- which server folders a run uses ---------------------------------------------------------------


def config_server_folders(configs: Iterable[str | os.PathLike[str]]) -> list[str]:
    """The server folders (`"<server_type>/<folder>"`) that NeMo Gym config files start.

    Mirrors how `ng_run`/`gym env start` finds them (`nemo_gym/cli/env.py`, 0.4.0 and 0.7.0): for
    each top-level entry, its first key is the server type, that entry's first key the folder, and
    the folder's entry must have an `entrypoint`. Order of first appearance, no duplicates.
    Raises RunError when a file cannot be read or is not YAML.
    """
    import yaml  # pyyaml: NeMo Gym configs are YAML (gymverl.nemo_gym reads them the same way)

    found: list[str] = []
    for config in configs:
        try:
            data = yaml.safe_load(Path(config).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise RunError(f"cannot read NeMo Gym config {config}: {exc}") from exc
        if not isinstance(data, dict):
            continue
        for entry in data.values():
            if not isinstance(entry, dict) or not entry:
                continue
            server_type, inner = next(iter(entry.items()))
            if not isinstance(inner, dict) or not inner:
                continue
            folder, spec = next(iter(inner.items()))
            if isinstance(spec, dict) and "entrypoint" in spec:
                name = f"{server_type}/{folder}"
                if name not in found:
                    found.append(name)
    return found


def run_server_folders(install: NemoGymInstall, configs: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Every server folder a run may use: those in `configs` plus COMMON_SERVER_FOLDERS that exist.

    Raises RunError when a config names a server folder the package does not have.
    """
    folders = config_server_folders(configs)
    for folder in folders:
        if not (install.site_packages / folder).is_dir():
            raise RunError(f"NeMo Gym {install.version} in {install.env} has no server folder {folder}.")
    for folder in COMMON_SERVER_FOLDERS:
        if folder not in folders and (install.site_packages / folder).is_dir():
            folders.append(folder)
    return folders


# ---- the servers' own requirements ------------------------------------------------------------------


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def server_requirements(install: NemoGymInstall, folder: str) -> list[str]:
    """The requirement lines of server folder `folder` (e.g. "resources_servers/math_with_judge").

    Read from its `requirements.txt`, without comments, blank lines and the line that installs
    nemo-gym itself from the source tree (`-e nemo-gym[dev] @ ../../`): NeMo Gym drops that one
    too (`grep -v -F '../..' requirements.txt` in `setup_env_command`). Empty when the folder has
    no requirements.txt.
    """
    path = install.site_packages / folder / "requirements.txt"
    if not path.is_file():
        return []
    out: list[str] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip() if not line.lstrip().startswith("-") else line.strip()
        if not line or line.startswith("#") or "../.." in line:
            continue
        out.append(line)
    return out


def missing_requirements(install: NemoGymInstall, folders: Iterable[str]) -> dict[str, list[str]]:
    """For each server folder, its requirements whose distribution is not installed in the venv.

    Only requirement lines that start with a distribution name are checked (pip options and URLs
    are skipped); versions are not compared. Returns {folder: [requirement line, ...]}, only for
    folders that miss something.
    """
    installed = {
        _normalize(d.name[: -len(".dist-info")].rsplit("-", 1)[0])
        for d in install.site_packages.glob("*.dist-info")
    }
    missing: dict[str, list[str]] = {}
    for folder in folders:
        for req in server_requirements(install, folder):
            if req.startswith("-"):
                continue
            m = _REQ_NAME.match(req)
            if m and _normalize(m.group(1)) not in installed:
                missing.setdefault(folder, []).append(req)
    return missing


# ---- one venv for all servers ------------------------------------------------------------------------


def shared_venv_args(link_dir: str | os.PathLike[str]) -> list[str]:
    """The Hydra overrides that make NeMo Gym use the links of `link_dir` as the servers' venvs."""
    return [override("+skip_venv_if_present", True), override("+uv_venv_dir", Path(link_dir).absolute())]


def prepare_shared_venv_dir(
    install: NemoGymInstall, folders: Iterable[str], link_dir: str | os.PathLike[str]
) -> Path:
    """Make `LINK_DIR/<server_type>/<folder>/.venv` a symlink to the NeMo Gym venv for each folder.

    Idempotent and safe for concurrent runs: each link is created beside its place and renamed over
    it. An existing `.venv` that is a real directory (not ours) is left alone and raises RunError.
    Returns `link_dir` as an absolute Path. Raises RunError when the venv has no `bin/python` or
    `bin/activate` (NeMo Gym sources `activate` and runs `python`), or the links cannot be made.
    """
    env = install.env
    for needed in ("bin/python", "bin/activate"):
        if not (env / needed).exists():
            raise RunError(f"{env} has no {needed}; it cannot serve as the venv of the NeMo Gym servers.")
    root = Path(link_dir).absolute()
    for folder in folders:
        parts = Path(folder).parts
        if len(parts) != 2 or parts[0] not in SERVER_TYPES:
            raise RunError(f"not a NeMo Gym server folder: {folder!r} (expected <server_type>/<name>).")
        target = root / folder / ".venv"
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_symlink() and Path(os.readlink(target)) == env:
                continue
            if target.exists() and not target.is_symlink():
                raise RunError(f"{target} exists and is not a link; remove it or use another link directory.")
            tmp = target.parent / f".venv.tmp-{os.getpid()}"
            if tmp.is_symlink():
                tmp.unlink()
            os.symlink(env, tmp, target_is_directory=True)
            os.replace(tmp, target)
        except OSError as exc:
            raise RunError(f"cannot link {target} to {env}: {exc.strerror or exc}") from exc
    return root


# ---- half-built per-server venvs ---------------------------------------------------------------------


def half_built_venvs(
    install: NemoGymInstall, folders: Iterable[str], uv_venv_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Per-server `.venv` folders that NeMo Gym would reuse (`+skip_venv_if_present=true`) but
    that a failed build left without packages.

    NeMo Gym reuses a server's `.venv` when it has `bin/python` and `bin/activate`
    (`setup_env_command`), which `uv venv` creates before `uv pip install` runs. Such a venv is
    half-built when nemo-gym (the first thing installed into every server venv) or one of the
    folder's requirements is not installed in it. Looked for at `SITE/<folder>/.venv` (NeMo Gym's
    default) and `UV_VENV_DIR/<folder>/.venv`. Symlinks (gymverl's shared-venv links) are never
    reported. Returns the paths, in folder order.
    """
    found: list[Path] = []
    roots = [install.site_packages] + ([Path(uv_venv_dir)] if uv_venv_dir else [])
    for folder in folders:
        reqs = [
            _normalize(m.group(1))
            for r in server_requirements(install, folder)
            if not r.startswith("-") and (m := _REQ_NAME.match(r))
        ]
        for root in roots:
            venv = root / folder / ".venv"
            if venv.is_symlink() or not venv.is_dir():
                continue
            if not ((venv / "bin" / "python").exists() and (venv / "bin" / "activate").exists()):
                continue  # NeMo Gym rebuilds such a venv itself (`uv venv --allow-existing`)
            installed = {
                _normalize(d.name[: -len(".dist-info")].rsplit("-", 1)[0])
                for d in venv.glob("lib/python3*/site-packages/*.dist-info")
            }
            if "nemo-gym" not in installed or any(r not in installed for r in reqs):
                found.append(venv)
    return found


def venvs_to_build(install: NemoGymInstall, folders: Iterable[str]) -> list[str]:
    """The server folders whose per-server venv (`SITE/<folder>/.venv`) NeMo Gym would build on the
    next start: none there yet, or half-built (`half_built_venvs`). Links are complete venvs."""
    folders = list(folders)
    half = set(half_built_venvs(install, folders))
    out = []
    for folder in folders:
        venv = install.site_packages / folder / ".venv"
        if venv in half or not (venv.is_symlink() or (venv / "bin" / "python").exists()):
            out.append(folder)
    return out


def remove_half_built_venvs(
    install: NemoGymInstall, folders: Iterable[str], uv_venv_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """Delete what `half_built_venvs` finds, so the next start builds them again; returns them.

    Raises RunError when one cannot be removed.
    """
    removed = half_built_venvs(install, folders, uv_venv_dir)
    for venv in removed:
        try:
            shutil.rmtree(venv)
        except OSError as exc:
            raise RunError(f"cannot remove the half-built NeMo Gym server venv {venv}: {exc.strerror or exc}") from exc
    return removed


# ---- the one entry point for whoever starts servers -------------------------------------------------


def server_venv_args(
    env: str | os.PathLike[str],
    configs: Iterable[str | os.PathLike[str]],
    link_dir: str | os.PathLike[str],
    *,
    force_shared: bool = False,
) -> list[str]:
    """The `ng_run`/`gym env start` overrides that give the servers of `configs` a working venv.

    * Per-server venvs work (see `NemoGymInstall.per_server_venvs_work`) and not `force_shared`:
      removes half-built per-server venvs of the run's folders and returns
      `["+skip_venv_if_present=true"]` (built once from the package registry, then reused).
    * Otherwise: links every folder of the run under `link_dir` (which the caller owns, e.g. a
      per-run temporary directory) and returns `["+skip_venv_if_present=true",
      "+uv_venv_dir=LINK_DIR"]`.  Raises RunError naming the server and the missing packages when
      a server's requirements are not installed in the shared venv (it would fail to import).
    """
    install = read_install(env)
    config_list = list(configs)
    folders = run_server_folders(install, config_list)
    works, _why = install.per_server_venvs_work()
    if works and not force_shared:
        remove_half_built_venvs(install, folders)
        return ["+skip_venv_if_present=true"]
    missing = missing_requirements(install, folders)
    if missing:
        folder, reqs = next(iter(missing.items()))
        raise RunError(
            f"NeMo Gym server {folder} needs {', '.join(reqs)}, not installed in {install.env} "
            f"(all servers share that venv: {_why or 'requested'}); install it with "
            f"`{install.env}/bin/pip install -r {install.site_packages / folder / 'requirements.txt'}` "
            f"minus its `../..` line, or run `make setup`."
        )
    prepare_shared_venv_dir(install, folders, link_dir)
    return shared_venv_args(link_dir)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gymverl.ng_setup ENV [CONFIG ...]`: describe venv ENV and print the overrides.

    Prints nemo-gym's version, the venv's Python, whether per-server venvs work, any half-built
    per-server venvs (listed, not removed), and the overrides for the given configs; in the
    shared-venv case the links go to a new directory under /tmp that is kept, so the printed
    command line can be used by hand. Exit 0, or 1 with `error: ...` on stderr.
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0].startswith("-"):
        print("usage: python -m gymverl.ng_setup NEMO_GYM_VENV [CONFIG.yaml ...]", file=sys.stderr)
        return 2
    try:
        install = read_install(args[0])
        works, why = install.per_server_venvs_work()
        folders = run_server_folders(install, args[1:])
        print(f"nemo-gym {install.version} (Requires-Python {install.requires_python}) in {install.env}")
        print(f"python {'.'.join(map(str, install.python))}; per-server venvs: {'yes' if works else 'no: ' + why}")
        if works:
            for venv in half_built_venvs(install, folders):
                print(f"half-built (would be removed before a start): {venv}")
            print("+skip_venv_if_present=true")
        else:
            print(" ".join(server_venv_args(install.env, args[1:], tempfile.mkdtemp(prefix="gymverl-ng-venvs-"))))
    except RunError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())


__all__ = [
    "COMMON_SERVER_FOLDERS",
    "NemoGymInstall",
    "SERVER_TYPES",
    "config_server_folders",
    "half_built_venvs",
    "installed_nemo_gym_version",
    "missing_requirements",
    "prepare_shared_venv_dir",
    "python_satisfies",
    "read_install",
    "remove_half_built_venvs",
    "run_server_folders",
    "server_requirements",
    "server_venv_args",
    "shared_venv_args",
    "venv_python_version",
    "venvs_to_build",
    "version_tuple",
]
