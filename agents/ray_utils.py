"""Shared Ray plumbing for the ``--ray`` modes (optional extra: ``pip install -e ".[ray]"``).

Nothing here imports Ray at module import time: the project works without the
extra, and only the functions that need Ray import it (and fail with
:class:`RayUnavailable` and an install hint when it is missing).

- :func:`require_ray` imports and returns the ``ray`` module, or raises
  :class:`RayUnavailable`;
- :func:`init_ray` starts a local Ray instance (``num_cpus`` CPUs, no
  dashboard) or, with ``address``, joins an existing cluster (``"auto"`` or
  ``"HOST:6379"`` as printed by ``ray start --head``); it returns whether it
  started/joined Ray itself, so the caller knows whether to shut it down;
- :func:`ray_session` is the same as a context manager.

Workers import :mod:`agents`, :mod:`baselines` and :mod:`siftmoe_gym` by name,
so every node of a cluster needs the project installed (``pip install -e
".[ray]"`` in the same Python environment), or pass ``working_dir`` to ship
the checkout with the job (Ray's ``runtime_env``).
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

INSTALL_HINT = 'pip install -e ".[ray]"  (or: pip install "ray[tune,rllib]")'


class RayUnavailable(ImportError):
    """Ray (or RLlib / Tune) is not installed."""


def ray_missing_reason(module: str = "ray") -> str | None:
    """``None`` when ``module`` imports, else a one-line reason with the install hint."""
    import importlib

    try:
        importlib.import_module(module)
    except ImportError as exc:
        return f"{module} is not installed ({exc}); install the extra: {INSTALL_HINT}"
    return None


def require_ray(module: str = "ray"):
    """Import and return ``module`` (``"ray"``, ``"ray.tune"``, ``"ray.rllib"``), or raise :class:`RayUnavailable`."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RayUnavailable(f"{module} is not installed ({exc}); install the extra: {INSTALL_HINT}") from None


def init_ray(address: str | None = None, num_cpus: int | None = None, working_dir: str | None = None,
             log_to_driver: bool = False, **kwargs: Any) -> bool:
    """Start a local Ray instance, or join the cluster at ``address``.

    Returns ``True`` when this call initialized Ray (the caller should ``ray.shutdown()`` when done) and
    ``False`` when Ray was already initialized in this process (left as is; ``address``/``num_cpus`` ignored).
    """
    ray = require_ray()
    if ray.is_initialized():
        return False
    runtime_env = dict(kwargs.pop("runtime_env", None) or {})
    if working_dir:
        runtime_env.setdefault("working_dir", os.fspath(working_dir))
    opts: dict[str, Any] = {"log_to_driver": log_to_driver, **kwargs}
    if runtime_env:
        opts["runtime_env"] = runtime_env
    if address:
        try:
            ray.init(address=address, **opts)
        except ConnectionError as exc:
            if os.environ.get("RAY_AUTH_MODE"):
                raise
            raise ConnectionError(
                f"{exc}. If the cluster uses token authentication (the default of `ray start` in ray >= 2.59), "
                f"set RAY_AUTH_MODE=token here too, with the cluster's token in ~/.ray/auth_token or "
                f"RAY_AUTH_TOKEN (see docs/scaling.md)") from None
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, **opts)
    return True


@contextlib.contextmanager
def ray_session(address: str | None = None, num_cpus: int | None = None, **kwargs: Any) -> Iterator[Any]:
    """``with ray_session(...) as ray:`` -- :func:`init_ray`, and ``ray.shutdown()`` on exit if it started Ray."""
    started = init_ray(address, num_cpus, **kwargs)
    ray = require_ray()
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()


def ray_get_in_order(refs: list, on_done=None) -> list:
    """``ray.get`` of ``refs`` in their order, calling ``on_done(i, result)`` as each finishes (any order)."""
    ray = require_ray()
    index = {r: i for i, r in enumerate(refs)}
    out: list = [None] * len(refs)
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        for r in done:
            i = index[r]
            out[i] = ray.get(r)
            if on_done is not None:
                on_done(i, out[i])
    return out
