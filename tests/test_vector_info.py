"""merge_infos lays the copies' info dicts out exactly as Gymnasium's ``VectorEnv._add_info`` does, copy
after copy: the same keys in the same order, the same dtypes, shapes and values, and the same masks."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from siftmoe_gym.envs.vector_info import merge_infos


class _Vec(gym.vector.VectorEnv):
    def __init__(self, n):
        self.num_envs = n


def _reference(infos, n):
    env, out = _Vec(n), {}
    for i, info in enumerate(infos):
        out = env._add_info(out, info, i)
    return out


def _assert_same(a, b, path=""):
    assert list(a) == list(b), path
    for key in a:
        x, y = a[key], b[key]
        if isinstance(x, dict):
            assert isinstance(y, dict), f"{path}{key}"
            _assert_same(x, y, f"{path}{key}.")
            continue
        assert type(x) is type(y) and x.dtype == y.dtype and x.shape == y.shape, (f"{path}{key}", x, y)
        if x.dtype == object:
            for u, v in zip(x, y):
                assert type(u) is type(v) and (u is v or np.array_equal(u, v)), (f"{path}{key}", u, v)
        else:
            np.testing.assert_array_equal(x, y, err_msg=f"{path}{key}")


FLOATS = st.floats(allow_nan=False, allow_infinity=False)
SCALAR_KINDS = [st.integers(-2**40, 2**40), FLOATS, st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False, width=32).map(np.float32),
                st.integers(0, 255).map(np.uint8), st.booleans().map(np.bool_), st.none(), st.text(max_size=2)]


def _array_kind(shape, dtype):
    size = int(np.prod(shape))
    return st.lists(st.integers(-3, 3), min_size=size, max_size=size).map(
        lambda v: np.array(v, dtype=np.float64).reshape(shape).astype(dtype))


KINDS = st.one_of(st.sampled_from(SCALAR_KINDS), st.tuples(
    st.sampled_from([(2,), (3,), (2, 2), ()]), st.sampled_from([np.float64, np.float32, np.int64, np.bool_])
).map(lambda t: _array_kind(*t)))
KEYS = st.sampled_from(["a", "b", "_a", "final_obs", "c"])


@st.composite
def info_lists(draw):
    """1-4 copies' info dicts: the same keys in the same order with one kind of value per key (the common
    case), or anything (keys missing or reordered, kinds mixed, a key named like another's mask)."""
    n = draw(st.integers(1, 4))
    if draw(st.booleans()):
        keys = draw(st.lists(KEYS, unique=True, max_size=4))
        kinds = {k: draw(KINDS) for k in keys}
        nested = {k: draw(KINDS) for k in draw(st.lists(KEYS, unique=True, max_size=2))} if draw(st.booleans()) else None
        infos = []
        for _ in range(n):
            info = {k: draw(kinds[k]) for k in keys}
            if nested is not None:
                info["nested"] = {k: draw(kind) for k, kind in nested.items()}
            infos.append(info)
        return infos
    any_value = KINDS.flatmap(lambda kind: kind)
    return [draw(st.dictionaries(KEYS, any_value, max_size=4)) | (
        {"nested": draw(st.dictionaries(KEYS, any_value, max_size=2))} if draw(st.booleans()) else {})
        for _ in range(n)]


@settings(max_examples=400, deadline=None, derandomize=True)  # the same examples on every run
@given(info_lists())
def test_merge_infos_equals_add_info_copy_after_copy(infos):
    with np.errstate(all="ignore"):  # casts that overflow warn in both (e.g. a float past float32's range)
        _check_merge(infos)


def _check_merge(infos):
    n = len(infos)
    try:
        ref = _reference(infos, n)
    except (ValueError, TypeError, OverflowError) as exc:  # _add_info itself fails (e.g. an array under a mask's name): so does this
        with pytest.raises(type(exc)):
            merge_infos(infos, n, _Vec(n)._add_info)
        return
    _assert_same(merge_infos(infos, n, _Vec(n)._add_info), ref)


@pytest.mark.parametrize("env_id", ["siftmoe_gym/Decode-v0", "siftmoe_gym/FastFading-v0"])
def test_native_infos_above_the_table_are_sync_vector_envs_layout(env_id):
    """Above the enumeration table the native vector env steps its copies one by one and merges their infos
    with merge_infos: at reset, on every step, at the episode's end and on the autoreset step, the same keys,
    order, dtypes and values as a SyncVectorEnv."""
    cfg = {"preset": "olmoe", "episode_tokens": 2}
    native = gym.make_vec(env_id, 3, vectorization_mode="vector_entry_point", config=cfg)
    sync = gym.make_vec(env_id, 3, vectorization_mode="sync", config=cfg)
    assert not native.unwrapped._batched  # the per-copy path
    _assert_same(native.reset(seed=3)[1], sync.reset(seed=3)[1])
    rng = np.random.default_rng(1)
    ends = 0
    for _ in range(2 * 16 + 3):
        acts = rng.integers(0, 2, size=(3, native.single_action_space.n)).astype(np.int8)
        r1, r2 = native.step(acts), sync.step(acts)
        _assert_same(r1[4], r2[4])
        ends += bool(r1[2].any())
    assert ends == 1
    native.close()
    sync.close()


def test_corner_cases_found_by_review():
    """Keys that are not strings (masks named f"_{key}"), timedelta64 scalars, 0-d object arrays and dtypes with
    metadata: the same as _add_info (or its error)."""
    import enum

    class K(str, enum.Enum):
        A = "a"

    o1, o2 = np.empty((), object), np.empty((), object)
    o1[()], o2[()] = [1, 2], [3]
    meta = np.dtype(float, metadata={"u": 1})
    cases = [[{1: 2}, {1: 3}], [{None: 1.0}, {None: 2.0}], [{(1, 2): True}, {(1, 2): False}], [{K.A: 1}, {K.A: 2}],
             [{"n": {1: 2}}, {"n": {1: 3}}], [{"a": o1}, {"a": o2}],
             [{"a": np.zeros(2, dtype=meta)}, {"a": np.ones(2, dtype=meta)}]]
    for infos in cases:
        ref = _reference(infos, 2)
        got = merge_infos(infos, 2, _Vec(2)._add_info)
        _assert_same(got, ref)
        for key, val in ref.items():
            if isinstance(val, np.ndarray):
                assert got[key].dtype.metadata == val.dtype.metadata
    td = [{"a": np.timedelta64(5, "s")}, {"a": np.timedelta64(6, "s")}]
    with pytest.raises(TypeError):
        _reference(td, 2)
    with pytest.raises(TypeError):
        merge_infos(td, 2, _Vec(2)._add_info)


def test_wrong_count_is_refused():
    with pytest.raises(ValueError, match="expected 2 info dicts, got 1"):
        merge_infos([{}], 2, _Vec(2)._add_info)
