"""Hydra command-line overrides (`key=value`), built in one place.

VeRL's trainers and NeMo Gym's `ng_*` commands read their command line with Hydra's override
grammar (hydra-core 1.3, `hydra/grammar/OverrideLexer.g4` / `OverrideParser.g4`). In that grammar
a bare value is cut at `,` (a sweep), `=`, spaces at either end, brackets and braces, and some
characters (`~`, non-ASCII letters) are not allowed bare at all. So every value gymverl passes is
rendered here: Python types map to Hydra's (`True` -> `true`, `None` -> `null`, lists -> `[..]`,
dicts -> `{k:v}`), and a string is left bare only when Hydra would read it back as the same
string; otherwise it is single-quoted. `tests/test_overrides.py` holds every rendered value to
Hydra's own parser (`OverridesParser.parse_override`).

Not escaped: `${...}` stays an OmegaConf interpolation (quoted or not, as in Hydra itself).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

__all__ = ["override", "override_key", "render"]

# Characters Hydra accepts in a bare value (ID, INT/FLOAT pieces, UNQUOTED_CHAR, COLON, `/`).
_BARE = re.compile(r"[A-Za-z0-9_/.\-+:@%*?|$]+")
# Bare words Hydra would read as another type (bool, null, int, float, inf/nan): quoted to stay strings.
_TYPED = re.compile(
    r"(?i)(true|false|null|[+-]?(inf|nan)|[+-]?(\d[\d_]*)?\.?\d[\d_]*(e[+-]?\d[\d_]*)?|[+-]?\d[\d_]*\.(e[+-]?\d+)?)"
)
# A key: dotted config path with an optional `+`/`++`/`~` prefix (and `@package` suffix).
_KEY = re.compile(r"(\+\+|\+|~)?[A-Za-z_][\w\-]*(\.[\w\-]+)*(@[\w.\-]*)?")


def _quote(text: str) -> str:
    """`text` as a single-quoted Hydra string: `'` -> `\\'`; backslashes before a quote are doubled."""
    body = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    body = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, body)
    return f"'{body}'"


def render(value: Any) -> str:
    """`value` as Hydra override text that Hydra parses back to the same value.

    bool -> true/false; None -> null; int/float -> their literal (inf/nan as Hydra spells them);
    list/tuple -> `[a,b]`; dict -> `{k:v}`; str and os.PathLike -> bare when that reads back as
    the same string, else single-quoted. Raises TypeError for anything else.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(render(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{_dict_key(k)}:{render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and not _TYPED.fullmatch(value) and "${" not in value:
            return value
        return _quote(value)
    raise TypeError(f"no Hydra override form for {type(value).__name__} value {value!r}")


def _dict_key(key: Any) -> str:
    text = str(key)
    if not re.fullmatch(r"[A-Za-z_][\w\-]*", text):
        raise TypeError(f"{text!r} cannot be a key of a Hydra dict override")
    return text


def override(key: str, value: Any) -> str:
    """One `key=value` override (`key` may carry Hydra's `+`/`++` prefix); the value via `render`."""
    if not _KEY.fullmatch(key):
        raise ValueError(f"{key!r} is not a Hydra override key")
    return f"{key}={render(value)}"


def override_key(text: str) -> str:
    """The config key of an override (`+a.b=1` -> `a.b`, `~a.b` -> `a.b`)."""
    return text.split("=", 1)[0].lstrip("+~")
