"""Run-folder I/O: atomic writes, run folders, the checkpoint index, saved-model lookup.

Every file the agents write goes through here, so an interrupted write never
leaves a truncated file behind: the bytes go to a temporary file in the same
folder, then ``os.replace`` moves it into place (atomic on POSIX).

=============================  =====================================================
``atomic_write_text/json``     text / JSON (numpy scalars and arrays as lists)
``write_csv``                  rows of dicts under given columns
``atomic_save_model``          ``model.save`` of an SB3 model
``atomic_save_replay_buffer``  an off-policy model's replay buffer
``read_latest_checkpoint``     ``checkpoints/latest.json`` with resolved paths
``new_run_dir``                ``<logdir>/<base>``, or ``<base>_2``, ``_3``... if taken
``latest_run_dir``             the newest of those (for ``--resume``)
``model_metadata``             the JSON written beside a model, else ``config.json``
``resolve_model_path``         a model zip from a path, a stem or a run folder
=============================  =====================================================
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .algos import AgentConfigError

def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (parent folders are created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path, obj) -> None:
    """``obj`` as indented JSON (numpy values and paths converted by :func:`json_default`), atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


def json_default(o):
    """JSON fallback: numpy scalars and arrays as Python values, paths as strings, else ``repr``."""
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    return repr(o)


def write_csv(path: Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """``rows`` as CSV under the columns ``fields`` (missing or ``None`` values empty), atomically."""
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    atomic_write_text(path, buf.getvalue())


def _atomic_via(path: str | os.PathLike, save) -> Path:
    """``save(tmp)`` to a temporary name in ``path``'s folder, then ``os.replace`` it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_save_model(model, path: str | os.PathLike) -> Path:
    """``model.save`` to a temporary file in the same folder, then ``os.replace``."""
    return _atomic_via(path, model.save)


def atomic_save_replay_buffer(model, path: str | os.PathLike) -> Path:
    """``model.save_replay_buffer`` (off-policy algorithms), atomically."""
    return _atomic_via(path, model.save_replay_buffer)


def read_latest_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any] | None:
    """``checkpoints/latest.json`` with ``model_path`` (and ``replay_buffer_path``) resolved; ``None`` if absent."""
    path = Path(ckpt_dir) / "latest.json"
    if not path.is_file():
        return None
    entry = json.loads(path.read_text())
    entry["model_path"] = str(Path(ckpt_dir) / entry["model"])
    if entry.get("replay_buffer"):
        entry["replay_buffer_path"] = str(Path(ckpt_dir) / entry["replay_buffer"])
    return entry


def slug(env_id: str) -> str:
    """``env_id`` as a folder name (``siftmoe_gym/Decode-v0`` -> ``siftmoe_gym-Decode-v0``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", env_id).strip("-")


def new_run_dir(logdir: Path, base: str) -> Path:
    """``logdir/base``, or the first free ``logdir/base_<i>`` (i >= 2)."""
    d = logdir / base
    if not d.exists():
        return d
    i = 2
    while (logdir / f"{base}_{i}").exists():
        i += 1
    return logdir / f"{base}_{i}"


def latest_run_dir(logdir: Path, base: str) -> Path | None:
    """The highest-numbered of ``logdir/base`` and ``logdir/base_<i>``, or ``None``."""
    cands = [p for p in logdir.glob(f"{base}*") if p.is_dir() and re.fullmatch(re.escape(base) + r"(_\d+)?", p.name)]
    if not cands:
        return None
    return max(cands, key=lambda p: int(p.name.rsplit("_", 1)[1]) if p.name != base else 1)


def model_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside a model (``<stem>.json``), else the run's ``config.json``."""
    p = Path(model_path)
    for cand in (p.with_suffix(".json"), p.parent / "config.json", p.parent.parent / "config.json"):
        if cand.is_file():
            meta = json.loads(cand.read_text())
            if "env_id" in meta and "algo" in meta:
                return meta
    raise AgentConfigError(f"no metadata (.json with env_id and algo) beside {p}")


def resolve_model_path(model_path: str | os.PathLike) -> Path:
    """A model zip: the path itself, ``<path>.zip``, or a run folder's ``final_model.zip`` / ``best_model.zip``."""
    p = Path(model_path)
    if p.is_file():
        return p
    if p.suffix != ".zip" and p.with_name(p.name + ".zip").is_file():
        return p.with_name(p.name + ".zip")
    if p.is_dir():
        for name in ("final_model.zip", "best_model.zip"):
            if (p / name).is_file():
                return p / name
    raise AgentConfigError(f"model file not found: {model_path}")
