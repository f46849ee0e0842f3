"""The agents' command lines on :mod:`siftmoe_gym.cli`: bad input is one line ``<prog>: error: ...``, exit status 2.

:class:`OneLineParser` is an ``argparse.ArgumentParser`` whose errors raise :class:`UsageError` instead of
printing the usage and exiting; :func:`run_main` runs a command's body and turns :class:`UsageError` and
:class:`~agents.algos.AgentConfigError` (bad hyperparameters, unknown ids, a bad scenario file...) and :class:`~agents.ray_utils.RayUnavailable` into that
one line, and Ctrl-C into status 130, without a traceback.  Commands check their whole input this way before
any slow work (building environments, starting Ray, training).
"""

from __future__ import annotations

from typing import Callable

from siftmoe_gym.cli import OneLineParser, UsageError, at_least, check_writable, one_line  # noqa: F401  (re-exported)
from siftmoe_gym.cli import run_main as _run_main

from .algos import AgentConfigError
from .ray_utils import RayUnavailable


def run_main(prog: str, body: Callable[[], int], interrupted: str = "interrupted") -> int:
    """``body()``, with bad input (:class:`UsageError`, :class:`~agents.algos.AgentConfigError`,
    :class:`~agents.ray_utils.RayUnavailable`) as one line ``<prog>: error: ...`` on stderr and status 2, and
    Ctrl-C as ``<prog>: <interrupted>`` and status 130."""
    from siftmoe_gym.tracefile import TraceError

    return _run_main(prog, body, interrupted, errors=(AgentConfigError, RayUnavailable, TraceError))
