"""The README's architecture section names every module of the package, and nothing that is gone.

A newcomer reads the tree in the README first; a module added, moved or removed without it makes
that map wrong. Modules of a sub-package are named by their bare name on their package's lines
(`rescore/  ... run, writer, checkpoint ...`); top-level modules and the cli/ modules by file name.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gymverl"


def _architecture_block() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1]
    return section.split("```", 2)[1]


def _package_lines(block: str, package: str) -> str:
    """The lines describing `package/`: its own line and the indented lines under it."""
    lines = block.splitlines()
    out: list[str] = []
    for i, line in enumerate(lines):
        if re.match(rf"\s{{2}}{re.escape(package)}/\s", line + " "):
            out.append(line)
            for more in lines[i + 1 :]:
                if re.match(r"\s{2}\S", more):  # the next top-level entry
                    break
                out.append(more)
    return "\n".join(out)


def _modules(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "__main__"))


def test_every_module_is_in_the_readme_tree():
    block = _architecture_block()
    names = set(re.findall(r"[\w]+\.py|[\w]+/", block))
    missing = [f"{m}.py" for m in _modules(PACKAGE) if f"{m}.py" not in names]
    for sub in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").exists()):
        if f"{sub.name}/" not in names:
            missing.append(f"{sub.name}/")
            continue
        described = _package_lines(block, sub.name)
        words = set(re.findall(r"[\w]+", described))
        missing += [f"{sub.name}/{m}" for m in _modules(sub) if m not in words]
    assert not missing, f"README architecture lacks: {missing}"


def test_the_readme_tree_names_nothing_that_is_gone():
    block = _architecture_block()
    files = {p.name for p in PACKAGE.rglob("*.py")}
    folders = {p.name for p in PACKAGE.rglob("*") if p.is_dir() and (p / "__init__.py").exists()}
    gone = [n for n in re.findall(r"[\w]+\.py", block) if n not in files]
    gone += [n for n in re.findall(r"^\s*([\w]+)/(?:\s|$)", block, re.M) if n not in folders and n != "gymverl"]
    assert not gone, f"README architecture names what does not exist: {gone}"
