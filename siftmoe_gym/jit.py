"""numba, imported and applied on first use, so that ``import siftmoe_gym`` and the systems that never
need a compiled kernel do not load it (:func:`compiled`)."""

from __future__ import annotations

from typing import Any, Callable

_COMPILED: dict[tuple[str, str], Any] = {}


def compiled(func: Callable, namespace: dict[str, Any] | None = None, callees: tuple[str, ...] = ()) -> Callable:
    """``numba.njit(cache=True, nogil=True)(func)``, built once per process (numba caches the machine code
    on disk, next to the module or in its user cache folder).

    ``callees``: names of plain functions in ``namespace`` (the module's ``globals()``) that ``func``
    calls; they are compiled first and put back under the same names, because numba resolves a
    kernel's callees as module globals when it compiles the kernel.  Under ``NUMBA_DISABLE_JIT=1`` the
    functions run as plain Python.
    """
    key = (func.__module__, func.__qualname__)
    out = _COMPILED.get(key)
    if out is None:
        import numba

        jit = numba.njit(cache=True, nogil=True)
        for name in callees:
            if not isinstance(namespace[name], numba.core.dispatcher.Dispatcher):
                namespace[name] = jit(namespace[name])
        out = _COMPILED[key] = jit(func)
    return out
