"""On-disk cache of the synthetic model's calibration (``Delta``, ``sigma`` and the routers' arrays).

Building a large preset's synthetic model is dominated by measuring ``Delta``
and ``sigma`` (``docs/model.md`` section 3) on the calibration tokens; the
numbers depend only on the configuration fields that shape the model and on
the code that computes them, so they are kept in a user cache directory and
the next ``gym.make`` of the same system loads them.

- **Where**: ``$SIFTMOE_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/siftmoe_gym/models``,
  else ``~/.cache/siftmoe_gym/models``.
- **Off**: ``SIFTMOE_CACHE=0`` (or ``off``, ``false``, ``no``) neither reads nor writes.
- **Key**: the SHA-256 of the fields of :data:`KEY_FIELDS` (and every
  ``model.*`` field), the format version :data:`FORMAT`, a hash of the source of
  the modules that compute the cached numbers (:data:`CODE_MODULES`) and numpy's
  version: any change of one of them is a different file.
- **Writes** are atomic (a temporary file in the same directory, then
  ``os.replace``); a file that cannot be read, is truncated, has a wrong key,
  wrong shapes or arrays whose SHA-256 is not the one written with them (any
  edit or corruption, dtype changes included) is ignored (and overwritten by
  the rebuilt entry).  A cache
  directory that cannot be written is not an error: the model is simply
  rebuilt next time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Mapping

import numpy as np

FORMAT = 2
"""Version of the file layout; part of the key (2: the arrays' digest is stored with them)."""

KEY_FIELDS = ("num_experts", "num_layers", "quantile", "model_seed")
""":class:`~siftmoe_gym.config.SystemConfig` fields the cached arrays depend on (with every ``model.*`` field)."""

CODE_MODULES = ("synthetic.py", "blocked_similarity.py", "similarity.py", "cache.py")
"""Modules (in ``siftmoe_gym/``) whose source is hashed into the key."""

_OFF = {"0", "off", "false", "no"}
SWITCH_WORDS = _OFF | {"1", "on", "true", "yes", ""}
"""The values of ``SIFTMOE_CACHE`` that read as a switch (anything else reads as on, and may be a mistaken path)."""


def enabled() -> bool:
    """False when ``SIFTMOE_CACHE`` is ``0``, ``off``, ``false`` or ``no`` (any case)."""
    return os.environ.get("SIFTMOE_CACHE", "1").strip().lower() not in _OFF


def cache_dir() -> Path:
    """The cache directory (see the module docstring; not created here)."""
    explicit = os.environ.get("SIFTMOE_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "siftmoe_gym" / "models"


@lru_cache(maxsize=1)
def code_version() -> str:
    """SHA-256 of the source of :data:`CODE_MODULES` and numpy's version."""
    h = hashlib.sha256(np.__version__.encode())
    here = Path(__file__).resolve().parent
    for name in CODE_MODULES:
        h.update(name.encode())
        h.update((here / name).read_bytes())
    return h.hexdigest()


def model_key(config) -> str:
    """The cache key of ``config``'s synthetic model (hex SHA-256; see :data:`KEY_FIELDS`)."""
    fields = {name: getattr(config, name) for name in KEY_FIELDS}
    fields["model"] = {k: getattr(config.model, k) for k in sorted(vars(config.model))}
    payload = json.dumps({"format": FORMAT, "code": code_version(), "fields": fields}, sort_keys=True, default=repr)
    return hashlib.sha256(payload.encode()).hexdigest()


def path_for(key: str) -> Path:
    return cache_dir() / f"synthetic-{key}.npz"


def load(key: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, np.ndarray] | None:
    """The cached arrays of ``key``, or None when caching is off, the file is missing, unreadable, of
    another key, or an array is missing or of another shape than ``shapes`` gives."""
    if not enabled():
        return None
    path = path_for(key)
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            stored = {name: np.array(z[name]) for name in z.files if name not in ("key", "digest")}
            digest = str(z["digest"])
            out = {name: stored[name] for name in shapes}
    except Exception:  # missing, truncated, not an npz, wrong content: rebuild
        return None
    for name, shape in shapes.items():
        if out[name].shape != tuple(shape) or not np.all(np.isfinite(out[name])):
            return None
    return out if digest == _digest(stored) else None


def _digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.data)
    return h.hexdigest()


def save(key: str, arrays: Mapping[str, np.ndarray]) -> Path | None:
    """Write ``arrays`` under ``key`` atomically; returns the path, or None when caching is off or the
    directory cannot be written.  ``ValueError`` if an array is named ``key`` (the name the key is stored under)."""
    if "key" in arrays or "digest" in arrays:
        raise ValueError("cache arrays cannot be named 'key' or 'digest' (reserved for the cache key and the arrays' digest)")
    if not enabled():
        return None
    path = path_for(key)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, key=np.array(key), digest=np.array(_digest(arrays)), **arrays)
        os.replace(tmp, path)
        return path
    except OSError:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
        return None
