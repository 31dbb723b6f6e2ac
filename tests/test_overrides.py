"""gymverl.overrides: every rendered override reads back, through Hydra's own parser, as the value given."""

import math
import random
import string
from pathlib import Path

import pytest

from gymverl.overrides import override, override_key, render

hydra_parser = pytest.importorskip("hydra.core.override_parser.overrides_parser")
PARSER = hydra_parser.OverridesParser.create()


def parsed(text: str):
    """(key, value) as Hydra reads the override `text`; a sweep (a misread comma) fails the test."""
    o = PARSER.parse_override(text)
    assert not o.is_sweep_override(), f"{text!r} reads as a sweep"
    return o.key_or_group, o.value()


AWKWARD = [
    "plain", "/abs/path/model.safetensors", "Qwen/Qwen2.5-0.5B", "a,b", "a, b", "x=y", "k=v,w=z",
    "it's", "say \"hi\"", "both ' and \"", " leading", "trailing ", "with space", "tab\there", "new\nline",
    "[1,2]", "{a:b}", "(x)", "a]b", "~/models/x", "x~y", "ünïcode", "back\\slash", "ends\\", "ends\\'",
    "\\'", "''", "", "true", "False", "null", "NULL", "1", "-3", "1e-5", "0.5", "inf", "-inf", "nan",
    "1_000", "010", ".5", "5.", "http://127.0.0.1:9/v1", "user@host", "a:b", "100%", "*", "a?b",
    "a|b", "$HOME", "-dash", "+plus", "=", ",", "'", "\"", "\\", "a\\,b", "a\\ b", "#hash", "a;b",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_strings_parse_back_to_the_same_string(text):
    key, value = parsed(override("data.some_key", text))
    assert key == "data.some_key"
    assert value == text and isinstance(value, str)


@pytest.mark.parametrize("text", ["/tmp/a dir/x,y.parquet", "/tmp/it's/f.parquet", "~/m", "/tmp/ä"])
def test_paths_parse_back_to_the_same_path(text):
    assert parsed(override("data.train_files", Path(text)))[1] == text


def test_random_strings_parse_back():
    rng = random.Random(13)
    alphabet = string.printable + "äé漢"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        if "${" in text:  # an OmegaConf interpolation on purpose (see the module doc)
            continue
        assert parsed(override("a.b", text))[1] == text, repr(text)


@pytest.mark.parametrize(
    "value",
    [True, False, None, 0, 7, -2, 1e-05, 0.1, 2.5e10, ["console", "file"], ["a,b", "c d", 3, None],
     [], {"k": "v,w", "n": 1}, [["nested", "x y"]]],
)
def test_typed_values_parse_back(value):
    assert parsed(override("x", value))[1] == value


def test_special_floats():
    assert parsed(override("x", float("inf")))[1] == math.inf
    assert parsed(override("x", float("-inf")))[1] == -math.inf
    assert math.isnan(parsed(override("x", float("nan")))[1])


def test_plain_values_stay_bare():
    # the common case prints as before: no quotes to trip over when a command is pasted back
    assert override("data.train_files", Path("/w/out/data/train.parquet")) == "data.train_files=/w/out/data/train.parquet"
    assert override("trainer.logger", ["console", "file"]) == 'trainer.logger=[console,file]'
    assert override("+policy_base_url", "http://127.0.0.1:9/v1") == "+policy_base_url=http://127.0.0.1:9/v1"
    assert override("optim.lr", 1e-5) == "optim.lr=1e-05"


def test_prefixed_keys():
    for key in ("+a.b", "++head_server.port", "a-b.c_d"):
        assert override_key(override(key, 1)) == key.lstrip("+")
        parsed(override(key, 1))


@pytest.mark.parametrize("key", ["", "a=b", "a b", "a,b", "1a"])
def test_bad_keys_are_refused(key):
    with pytest.raises(ValueError):
        override(key, 1)


def test_unknown_types_are_refused():
    with pytest.raises(TypeError):
        render(object())
