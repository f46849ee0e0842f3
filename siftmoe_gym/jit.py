"""numba, imported and applied on first use, so that ``import siftmoe_gym`` and the systems that never
need a compiled kernel do not load it (:func:`compiled`)."""

from __future__ import annotations

import warnings
from typing import Any, Callable

_COMPILED: dict[tuple[str, str], Any] = {}


def compiled(func: Callable, namespace: dict[str, Any] | None = None, callees: tuple[str, ...] = ()) -> Callable:
    """``numba.njit(cache=True, nogil=True)(func)``, built once per process.

    numba caches the machine code on disk (next to the module, else in its user cache folder); where no
    folder is writable it compiles without a cache (once per process, a few seconds) and warns once.
    The cache is invalidated when the kernel's own file changes, so kernels take every constant from
    another module (tolerances) as an argument.  ``callees``: names of plain functions in ``namespace``
    (the module's ``globals()``) that ``func`` calls; they are compiled first and put back under the same
    names, because numba resolves a kernel's callees as module globals when it compiles the kernel.
    Under ``NUMBA_DISABLE_JIT=1`` the functions run as plain Python.
    """
    key = (func.__module__, func.__qualname__)
    out = _COMPILED.get(key)
    if out is None:
        import numba

        try:
            out = _jit(numba, func, namespace, callees, cache=True)
        except RuntimeError as exc:  # "cannot cache function ...: no locator available"
            warnings.warn(f"numba cannot cache {func.__qualname__} ({exc}); compiling it for this process only",
                          RuntimeWarning, stacklevel=2)
            out = _jit(numba, func, namespace, callees, cache=False)
        _COMPILED[key] = out
    return out


def _jit(numba, func, namespace, callees, cache: bool):
    jit = numba.njit(cache=cache, nogil=True)
    done = {}
    for name in callees:  # a callee another kernel already compiled is kept
        cur = namespace[name]
        done[name] = cur if hasattr(cur, "py_func") else jit(cur)
    kernel = jit(func)
    namespace.update(done)  # only once every dispatcher was made: a refused cache leaves the plain functions
    return kernel
