"""Hyperparameters per environment id and algorithm (rl-zoo3 convention).

``agents/hyperparams/<algo>.yml`` maps environment ids (and optionally
``default``) to keyword arguments: ``n_envs``, ``n_timesteps``, ``policy``
and the algorithm's constructor arguments.  Values use rl-zoo3's spellings so
the same file works with ``python -m rl_zoo3.train --conf-file``:
``learning_rate: lin_3e-4`` is a linear schedule, ``policy_kwargs`` may be a
string such as ``"dict(net_arch=[64, 64])"``, ``env_wrapper`` names a wrapper
class by its dotted path.  Command-line overrides are ``key=value`` strings
whose value is parsed as YAML (``learning_rate=1e-3``, ``n_steps=64``,
``policy_kwargs="dict(net_arch=[32])"``).
"""

from __future__ import annotations

import copy
import importlib
import inspect
from pathlib import Path
from typing import Any, Iterable

from siftmoe_gym import yamlio

from .algos import AgentConfigError, canonical_algo, get_algo

HYPERPARAMS_DIR = Path(__file__).resolve().parent / "hyperparams"

# keys consumed by the trainer, not passed to the algorithm's constructor
TRAINER_KEYS = {"n_envs", "n_timesteps", "env_kwargs", "env_wrapper", "normalize"}
# rl-zoo3 keys this trainer does not implement
UNSUPPORTED_KEYS = {"frame_stack", "callback", "vec_env_wrapper", "monitor_kwargs", "normalize_kwargs"}


def hyperparams_file(algo: str) -> Path:
    return HYPERPARAMS_DIR / f"{canonical_algo(algo)}.yml"


def load_hyperparams(algo: str, env_id: str, path: str | Path | None = None) -> dict[str, Any]:
    """Raw (YAML) hyperparameters of ``algo`` for ``env_id``; ``default`` if the id has no entry."""
    path = Path(path) if path is not None else hyperparams_file(algo)
    if path.is_dir():
        raise AgentConfigError(f"hyperparameter file {path} is a folder")
    if not path.is_file():
        raise AgentConfigError(f"hyperparameter file not found: {path}")
    try:
        table = yamlio.read(path, f"hyperparameter file {path}") or {}
    except ValueError as exc:
        raise AgentConfigError(str(exc)[:300]) from None
    if not isinstance(table, dict):
        raise AgentConfigError(f"{path}: expected a mapping from environment ids to hyperparameters")
    if env_id in table:
        params = table[env_id]
    elif "default" in table:
        params = table["default"]
    else:
        raise AgentConfigError(f"{path}: no hyperparameters for {env_id!r} and no 'default' entry")
    return copy.deepcopy(dict(params or {}))


def parse_value(text: str):
    """One override value parsed as YAML (with YAML 1.2's floats: ``1e-3`` is 0.001, ``lin_1e-3`` and ``auto``
    stay strings); an empty value is ``None``."""
    return yamlio.load(text, "value") if text.strip() else None


def parse_overrides(items: Iterable[str] | None, option: str = "--hyperparams") -> dict[str, Any]:
    """``["key=value", ...]`` -> dict, values parsed as YAML (:func:`parse_value`).  An item without ``=``, an
    empty key, a key given twice or an unparsable value raise :class:`AgentConfigError` naming ``option``."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise AgentConfigError(f"{option}: {item!r} is not of the form key=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if not key:
            raise AgentConfigError(f"{option}: {item!r} has an empty key")
        if key in out:
            raise AgentConfigError(f"{option}: {key!r} is given twice")
        try:
            out[key] = parse_value(value)
        except ValueError as exc:
            raise AgentConfigError(f"{option}: cannot parse the value of {key!r}: {value!r} "
                                   f"({' '.join(str(exc).split())[:160]})") from None
    return out


class _Linear:
    """rl-zoo3's ``lin_<x>`` schedule, ``progress_remaining * x`` (a class, so saved models pickle it)."""

    def __init__(self, initial: float):
        self.initial = float(initial)

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial

    def __repr__(self) -> str:
        return f"lin_{self.initial:g}"


def _eval_kwargs(text: str, key: str) -> Any:
    import torch

    namespace = {"__builtins__": {}, "dict": dict, "list": list, "tuple": tuple, "nn": torch.nn, "th": torch,
                 "torch": torch, "True": True, "False": False, "None": None}
    try:
        return eval(text, namespace)  # noqa: S307 - rl-zoo3 convention, restricted namespace
    except Exception as exc:  # pragma: no cover - message path
        raise AgentConfigError(f"cannot evaluate {key}={text!r}: {exc}") from None


def import_by_name(dotted: str):
    module, _, name = str(dotted).rpartition(".")
    if not module:
        raise AgentConfigError(f"{dotted!r} is not a dotted path module.Class")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise AgentConfigError(f"cannot import {dotted!r}: {exc}") from None


def constructor_parameters(cls) -> set[str]:
    """Names ``cls(...)`` accepts: its ``__init__``'s, and while an ``__init__`` passes ``**kwargs`` on, its bases'
    (a subclass such as :class:`agents.lagrangian.PPOLagrangian` takes every PPO argument)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(klass.__init__).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def split_hyperparams(algo: str, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split raw hyperparameters into ``(trainer_options, algorithm_kwargs)``.

    Schedules and ``policy_kwargs`` strings are converted; keys the algorithm's
    constructor does not accept raise :class:`AgentConfigError`.
    """
    spec = get_algo(algo)
    params = copy.deepcopy(dict(raw))
    bad = sorted(set(params) & UNSUPPORTED_KEYS)
    if bad:
        raise AgentConfigError(f"hyperparameter(s) {', '.join(bad)} are rl-zoo3 options that train.py does not support")
    trainer = {k: params.pop(k) for k in list(params) if k in TRAINER_KEYS}
    if trainer.get("normalize"):
        raise AgentConfigError("normalize=True is not supported by train.py (observations are already scaled by the environments)")
    trainer.pop("normalize", None)
    if "env_kwargs" in trainer and trainer["env_kwargs"] is not None and not isinstance(trainer["env_kwargs"], dict):
        raise AgentConfigError("env_kwargs must be a mapping")

    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        value = params.get(key)
        if isinstance(value, str):
            kind, _, number = value.partition("_")
            if kind != "lin":
                raise AgentConfigError(f"{key}={value!r}: only constants and lin_<x> schedules are supported")
            try:
                params[key] = _Linear(float(number))
            except ValueError:
                raise AgentConfigError(f"{key}={value!r}: cannot parse the initial value") from None
    for key in ("policy_kwargs", "replay_buffer_kwargs"):
        if isinstance(params.get(key), str):
            params[key] = _eval_kwargs(params[key], key)
    if isinstance(params.get("train_freq"), list):
        params["train_freq"] = tuple(params["train_freq"])
    params.setdefault("policy", "MlpLstmPolicy" if spec.recurrent else "MlpPolicy")
    _check_ranges(params)

    cls = spec.load_class()
    accepted = constructor_parameters(cls) - {"self", "env"}
    unknown = sorted(k for k in params if k not in accepted)
    if unknown:
        raise AgentConfigError(
            f"hyperparameter(s) {', '.join(unknown)} not accepted by {spec.class_name} "
            f"(trainer keys: {', '.join(sorted(TRAINER_KEYS))})"
        )
    return trainer, params


RANGES = {  # key: (low, high, low inclusive): the values SB3 can train with
    "gamma": (0.0, 1.0, True), "gae_lambda": (0.0, 1.0, True), "learning_rate": (0.0, 1.0, False),
    "ent_coef": (0.0, 1e3, True), "vf_coef": (0.0, 1e3, True), "max_grad_norm": (0.0, 1e6, False),
    "clip_range": (0.0, 10.0, False), "n_steps": (1, 1 << 20, True), "batch_size": (1, 1 << 24, True),
    "n_epochs": (1, 10_000, True), "buffer_size": (1, 1 << 30, True), "tau": (0.0, 1.0, False),
    "exploration_fraction": (0.0, 1.0, True), "exploration_initial_eps": (0.0, 1.0, True),
    "exploration_final_eps": (0.0, 1.0, True), "target_update_interval": (1, 1 << 30, True),
    "learning_starts": (0, 1 << 30, True), "gradient_steps": (-1, 1 << 20, True),
    "cost_limit": (0.0, 1e6, True), "lagrangian_lr": (0.0, 1e6, False), "lagrangian_init": (0.0, 1e6, True),
    "lagrangian_max": (0.0, 1e6, False),
}
INTEGER_KEYS = {"n_steps", "batch_size", "n_epochs", "buffer_size", "target_update_interval", "learning_starts",
                "gradient_steps"}


def _check_ranges(params: dict[str, Any]) -> None:
    """:class:`AgentConfigError` naming the hyperparameter when a number is not finite, not an integer where one is
    needed, or outside :data:`RANGES` (schedules are checked by their initial value)."""
    import math

    for key, (low, high, inclusive) in RANGES.items():
        if key not in params or params[key] is None:
            continue
        v = params[key]
        if isinstance(v, _Linear):
            v = v.initial
        if key == "ent_coef" and isinstance(v, str) and v.startswith("auto"):
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise AgentConfigError(f"hyperparameter {key}={params[key]!r} must be a number")
        if not math.isfinite(v):
            raise AgentConfigError(f"hyperparameter {key}={v!r} must be finite")
        if key in INTEGER_KEYS and float(v) != int(v):
            raise AgentConfigError(f"hyperparameter {key}={v!r} must be an integer")
        if not ((low <= v if inclusive else low < v) and v <= high):
            side = "[" if inclusive else "("
            raise AgentConfigError(f"hyperparameter {key}={v!r} must be in {side}{low}, {high}]")


def resolve_hyperparams(
    algo: str, env_id: str, overrides: Iterable[str] | dict[str, Any] | None = None, path: str | Path | None = None
) -> dict[str, Any]:
    """Raw hyperparameters for ``(algo, env_id)`` with ``overrides`` applied (still YAML-serializable)."""
    raw = load_hyperparams(algo, env_id, path)
    extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    raw.update(extra)
    return raw
