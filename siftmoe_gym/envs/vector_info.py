"""The copies' ``info`` dicts laid out as Gymnasium's vector envs lay them out, in one pass per key.

:func:`merge_infos` returns what calling ``gymnasium.vector.VectorEnv._add_info`` once per copy, in
copy order, returns (the layout a ``SyncVectorEnv`` gives: every key an array over the copies whose
dtype and shape come from the first copy that has the key, beside a boolean ``"_key"`` mask; nested
dicts merged the same way; ``final_obs`` an object array), and is used by the native vector envs where
they step the copies one after the other (systems above the enumeration table).  ``_add_info`` costs
about a microsecond per key and copy, mostly building a throw-away mask per call; here a key that
every copy has, with scalars or same-shaped arrays, becomes one array, and anything else goes
through the per-copy rule itself.  ``tests/test_vector_info.py`` checks keys, order, dtypes and values
against ``_add_info``.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

_SCALARS = (int, float, bool)


def _column(values: list, num_envs: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Array and all-True mask of one key every copy has, or None where only the per-copy rule is exact
    (values of different types or dtypes, arrays of different shapes, objects, dtypes with metadata)."""
    first = values[0]
    kind = type(first)
    if kind in _SCALARS or (issubclass(kind, np.number) and not issubclass(kind, np.timedelta64)):  # (a unit)
        if any(type(v) is not kind for v in values):
            return None
        arr = np.array(values, dtype=kind)
    elif kind is np.ndarray:
        dt = first.dtype
        if dt == object or dt.metadata is not None or any(
                type(v) is not np.ndarray or v.shape != first.shape or v.dtype != dt for v in values):
            return None
        arr = np.stack(values)
    else:
        return None
    return arr, np.ones(num_envs, dtype=np.bool_)


def merge_infos(infos: Sequence[dict[str, Any]], num_envs: int,
                add_info: Callable[[dict, dict, int], dict]) -> dict[str, Any]:
    """``infos[i]`` (one dict per copy, ``len(infos) == num_envs``) merged as ``add_info`` (a vector env's
    ``_add_info``) would merge them one copy after the other; ``add_info`` serves every key the columnwise
    path cannot reproduce exactly (keys some copies lack, ``final_obs``, objects, mixed kinds)."""
    if len(infos) != num_envs:
        raise ValueError(f"expected {num_envs} info dicts, got {len(infos)}")
    if not infos:
        return {}
    keys = list(infos[0])
    clash = any(f"_{k}" in infos[0] for k in keys)  # a key named like another's mask: add_info's own result
    if clash or any(list(info) != keys for info in infos[1:]):  # keys differ between copies: add_info's order
        out: dict[str, Any] = {}
        for i, info in enumerate(infos):
            out = add_info(out, info, i)
        return out
    out = {}
    for key in keys:
        values = [info[key] for info in infos]
        col = None
        if key != "final_obs":
            if isinstance(values[0], dict) and all(isinstance(v, dict) for v in values):
                col = merge_infos(values, num_envs, add_info), np.ones(num_envs, dtype=np.bool_)
            elif not isinstance(values[0], dict):
                col = _column(values, num_envs)
        if col is None:
            sub: dict[str, Any] = {}
            for i, v in enumerate(values):
                sub = add_info(sub, {key: v}, i)
            col = sub[key], sub[f"_{key}"]
        out[key], out[f"_{key}"] = col
    return out
