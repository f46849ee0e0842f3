"""siftmoe_gym.yamlio and SystemConfig.from_yaml: YAML 1.2's floats, keys given twice refused (merge keys
still overridable), one-line errors naming the source; config files that are missing, folders or not mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from siftmoe_gym import yamlio
from siftmoe_gym.config import SystemConfig


def test_floats_without_a_dot_are_numbers_and_names_stay_strings():
    assert yamlio.load("a: 1e-3\nb: 3E-4\nc: 5e2\nd: lin_1e-3\ne: auto\nf: 1.0e-3\ng: 7") == {
        "a": 1e-3, "b": 3e-4, "c": 500.0, "d": "lin_1e-3", "e": "auto", "f": 1e-3, "g": 7}


def test_a_key_given_twice_is_refused_but_merge_keys_may_be_overridden():
    with pytest.raises(ValueError, match=r"src: not valid YAML: .*found the key 'a' twice"):
        yamlio.load("a: 1\nb: 2\na: 3\n", "src")
    with pytest.raises(ValueError, match="found the key 'x' twice"):
        yamlio.load("outer:\n  x: 1\n  x: 1\n")
    assert yamlio.load("base: &b {x: 1, y: 2}\nmine:\n  <<: *b\n  x: 5\n")["mine"] == {"x": 5, "y": 2}


def test_errors_are_one_line_value_errors():
    with pytest.raises(ValueError) as info:
        yamlio.load("a: [1\n", "f.yml")
    assert str(info.value).startswith("f.yml: not valid YAML: ") and "\n" not in str(info.value)


def test_config_from_yaml(tmp_path: Path):
    good = tmp_path / "c.yaml"
    good.write_text("tau_s: 2e-3\nbandwidth_hz: 1e7\n")
    assert SystemConfig.from_yaml(good).tau_s == 2e-3 and SystemConfig.from_yaml(str(good)).bandwidth_hz == 1e7
    word = tmp_path / "w.yaml"
    word.write_text("mypreset\n")  # "preset" inside a scalar used to reach dict.pop
    with pytest.raises(ValueError, match="must be a mapping of fields, got str 'mypreset'"):
        SystemConfig.from_yaml(word)
    with pytest.raises(ValueError, match="no such file"):
        SystemConfig.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(ValueError, match=r"got str 'missing.yaml' \(no such file\)"):
        SystemConfig.from_yaml("missing.yaml")
    with pytest.raises(ValueError, match="a folder, not a file"):
        SystemConfig.from_yaml(tmp_path)
    twice = tmp_path / "t.yaml"
    twice.write_text("num_experts: 8\nnum_experts: 16\n")
    with pytest.raises(ValueError, match="found the key 'num_experts' twice"):
        SystemConfig.from_yaml(twice)


def test_constructor_errors_nesting_and_bad_bytes_are_one_line(tmp_path: Path):
    """Errors PyYAML raises outside YAMLError (an impossible date, nesting past the recursion limit) and a file
    that is not UTF-8 are one-line ValueErrors naming the source (tracebacks before)."""
    for text, needle in (("a: 2020-13-45", "ValueError: month must be in 1..12"), ("a: " + "[" * 3000, "RecursionError")):
        with pytest.raises(ValueError, match=needle) as info:
            yamlio.load(text, "src")
        assert str(info.value).startswith("src: not valid YAML: ") and "\n" not in str(info.value)
    bad = tmp_path / "bad.yml"
    bad.write_bytes(b"\xff\xfeabc")
    with pytest.raises(ValueError, match=r"bad.yml: not UTF-8 text"):
        yamlio.read(bad)
    with pytest.raises(ValueError, match=r"not UTF-8 text"):
        SystemConfig.from_yaml(bad)
