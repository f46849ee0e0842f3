"""YAML as this project reads it (system configs, scenario files, hyperparameter files and overrides).

PyYAML's safe loader (YAML 1.1) with two changes:

- YAML 1.2's floats: ``1e-3``, ``3E-4`` and ``5e2`` are numbers (YAML 1.1 wants a dot and a signed
  exponent, ``1.0e-3``, and reads ``1e-3`` as the string ``"1e-3"``, which a numeric field then
  refuses); ``lin_1e-3`` and ``auto`` stay strings;
- a mapping that gives a key twice is refused (PyYAML keeps the last value silently); a key
  brought in by a ``<<`` merge may still be overridden.

Errors are one-line ``ValueError`` s naming the source and the line.
"""

from __future__ import annotations

import re
from typing import Any

import yaml


class Loader(yaml.SafeLoader):
    """The safe loader with YAML 1.2's floats and duplicate keys refused (module docstring)."""


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _mapping(loader: Loader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """The mapping, after refusing a key its own text gives twice (keys brought in by a ``<<`` merge may be
    overridden, as YAML's merge keys intend)."""
    seen = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            dup = key in seen
        except TypeError:  # an unhashable key: construct_mapping names it
            break
        if dup:
            raise yaml.constructor.ConstructorError("while constructing a mapping", node.start_mark,
                                                    f"found the key {key!r} twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load(text: str, where: str = "YAML") -> Any:
    """``text`` parsed with :class:`Loader`; ``ValueError("<where>: not valid YAML: ...")`` on one line."""
    try:
        return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        raise ValueError(f"{where}: not valid YAML: {' '.join(str(exc).split())}") from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:  # a constructor's (2020-13-45), deep nesting
        raise ValueError(f"{where}: not valid YAML: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}") from None


def read(path, where: str | None = None) -> Any:
    """The YAML file at ``path`` parsed by :func:`load`; ``ValueError`` naming the file (``where``, default the
    path) when it cannot be read, is not UTF-8 text or is not valid YAML."""
    where = where or str(path)
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ValueError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    return load(text, where)
