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
``intact_checkpoints``         the checkpoints of a run that can be loaded, newest first
``claim_run_dir``              create ``<logdir>/<base>`` (or ``<base>_2``, ...) atomically for this run
``new_run_dir``                the folder :func:`claim_run_dir` would claim now (no claim)
``latest_run_dir``             the newest of those with a config and an intact checkpoint (``--resume``)
``remove_stale_tmp``           temporary files an interrupted write left in a run folder
``model_metadata``             the JSON written beside a model, else ``config.json``
``resolve_model_path``         a model zip from a path, a stem or a run folder
``read_run_config``            a run's ``config.json`` for ``--resume``, checked (one-line error)
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
    """``checkpoints/latest.json`` with ``model_path`` (and ``replay_buffer_path``) resolved; ``None`` if absent.
    A file that is not a checkpoint index (truncated, not JSON, no ``model``) raises ``ValueError``."""
    path = Path(ckpt_dir) / "latest.json"
    if not path.is_file():
        return None
    return _resolve_entry(Path(ckpt_dir), json.loads(path.read_text()))


def _resolve_entry(ckpt_dir: Path, entry: Any) -> dict[str, Any]:
    if not isinstance(entry, dict) or not isinstance(entry.get("model"), str) or not isinstance(entry.get("timesteps"), int):
        raise ValueError("not a checkpoint entry (model, timesteps)")
    entry = dict(entry)
    entry["model_path"] = str(ckpt_dir / entry["model"])
    if entry.get("replay_buffer"):
        entry["replay_buffer_path"] = str(ckpt_dir / entry["replay_buffer"])
    return entry


_CKPT = re.compile(r"ckpt_(\d+)\.zip")


def zip_intact(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a readable SB3 zip: every member's CRC checks and it holds ``data``."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None and "data" in z.namelist()
    except (OSError, zipfile.BadZipFile, EOFError, ValueError):
        return False


def intact_checkpoints(ckpt_dir: str | os.PathLike, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The checkpoints of ``ckpt_dir`` whose model zip (and replay buffer, if it has one) are intact, newest
    first, as :func:`read_latest_checkpoint` entries: the one ``latest.json`` names first, then the others
    (``ckpt_<steps>.json`` beside each, else the step count of its name).  What was passed over (a corrupted
    ``latest.json``, a damaged zip) is appended to ``notes``."""
    ckpt_dir = Path(ckpt_dir)
    notes = notes if notes is not None else []
    entries: dict[str, dict[str, Any]] = {}
    try:
        latest = read_latest_checkpoint(ckpt_dir)
    except (OSError, ValueError) as exc:
        latest = None
        notes.append(f"{ckpt_dir / 'latest.json'} is unreadable ({type(exc).__name__}: {exc}); "
                     f"looking for the newest intact checkpoint")
    if latest is not None:
        entries[latest["model"]] = latest
    for p in ckpt_dir.glob("ckpt_*.zip"):
        m = _CKPT.fullmatch(p.name)
        if not m or p.name in entries:
            continue
        entry: Any = {"model": p.name, "timesteps": int(m.group(1))}
        side = p.with_suffix(".json")
        try:
            if side.is_file():
                entry = json.loads(side.read_text())
        except (OSError, ValueError):
            pass
        try:
            entries[p.name] = _resolve_entry(ckpt_dir, entry)
        except ValueError:
            entries[p.name] = _resolve_entry(ckpt_dir, {"model": p.name, "timesteps": int(m.group(1))})
        rb = ckpt_dir / f"{p.stem}_replay_buffer.pkl"
        if rb.is_file() and not entries[p.name].get("replay_buffer"):
            entries[p.name].update(replay_buffer=rb.name, replay_buffer_path=str(rb))
    out = []
    for e in sorted(entries.values(), key=lambda e: (e is not latest, -int(e["timesteps"]))):
        rb = e.get("replay_buffer_path")
        if not zip_intact(e["model_path"]):
            notes.append(f"checkpoint {e['model_path']} is missing or damaged: passed over")
        elif rb and not (Path(rb).is_file() and Path(rb).stat().st_size > 0):
            notes.append(f"replay buffer {rb} is missing or empty: checkpoint passed over")
        else:
            out.append(e)
    return out


def slug(env_id: str) -> str:
    """``env_id`` as a folder name (``siftmoe_gym/Decode-v0`` -> ``siftmoe_gym-Decode-v0``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", env_id).strip("-")


def run_dirs(logdir: Path, base: str) -> list[tuple[int, Path]]:
    """``(i, logdir/base[_i])`` of the existing run folders of ``base`` (``base`` itself is 1), by ``i``."""
    pat = re.compile(re.escape(base) + r"(?:_(\d+))?")
    out = []
    for p in (logdir.glob(f"{glob_escape(base)}*") if logdir.is_dir() else ()):
        m = pat.fullmatch(p.name)
        if m and p.is_dir():
            out.append((int(m.group(1)) if m.group(1) else 1, p))
    return sorted(out)


def glob_escape(text: str) -> str:
    """``text`` with glob's special characters escaped."""
    return re.sub(r"([*?\[])", r"[\1]", text)


def new_run_dir(logdir: Path, base: str) -> Path:
    """``logdir/base``, or the first free ``logdir/base_<i>`` (i >= 2) -- what :func:`claim_run_dir` would claim
    now.  Use :func:`claim_run_dir` to take it: another run may take this one first."""
    d = logdir / base
    if not d.exists():
        return d
    i = 2
    while (logdir / f"{base}_{i}").exists():
        i += 1
    return logdir / f"{base}_{i}"


def claim_run_dir(logdir: str | os.PathLike, base: str, exact: bool = False) -> Path:
    """Create this run's folder atomically (``os.mkdir``): ``logdir/base``, else the first free ``base_2``,
    ``base_3``, ... (two runs started at once get two folders).  With ``exact`` only ``logdir/base`` itself,
    and :class:`AgentConfigError` when it exists (a named run is never reused without ``--resume``)."""
    logdir = Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    if exact:
        try:
            os.mkdir(logdir / base)
        except FileExistsError:
            raise AgentConfigError(f"--run-name {base!r}: {logdir / base} already exists (continue it with --resume, "
                                   f"or choose another name)") from None
        return logdir / base
    i = 1
    while True:
        d = logdir / (base if i == 1 else f"{base}_{i}")
        try:
            os.mkdir(d)
            return d
        except FileExistsError:
            i += 1


def resumable(run_dir: Path, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The intact checkpoints of ``run_dir`` (newest first), or ``[]`` when it has no ``config.json``."""
    if not (run_dir / "config.json").is_file():
        return []
    return intact_checkpoints(run_dir / "checkpoints", notes)


def latest_run_dir(logdir: Path, base: str) -> Path | None:
    """The highest-numbered of ``logdir/base`` and ``logdir/base_<i>`` that has a ``config.json`` and an intact
    checkpoint (what ``--resume`` continues), or ``None``."""
    for _, p in reversed(run_dirs(Path(logdir), base)):
        if resumable(p, []):
            return p
    return None


def remove_stale_tmp(run_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files (``.<name>.<random>.tmp``) that writes interrupted by a kill left in
    ``run_dir`` and its sub-folders; returns them.  Only for a folder no other process is writing."""
    removed = []
    for p in Path(run_dir).rglob(".*.tmp"):
        if p.is_file():
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def model_metadata(model_path: str | os.PathLike) -> dict[str, Any]:
    """The JSON written beside a model (``<stem>.json``), else the run's ``config.json``."""
    p = Path(model_path)
    for cand in (p.with_suffix(".json"), p.parent / "config.json", p.parent.parent / "config.json"):
        if cand.is_file():
            try:
                meta = json.loads(cand.read_text())
            except (OSError, ValueError) as exc:
                raise AgentConfigError(f"{cand}: unreadable metadata ({exc.__class__.__name__}: {exc})") from None
            if isinstance(meta, dict) and "env_id" in meta and "algo" in meta:
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


RUN_CONFIG_KEYS = {"env_id": str, "algo": str, "hyperparams": dict, "eval_seeds": list, "seed": int, "n_envs": int,
                   "steps": int}
"""What ``--resume`` reads from a run's ``config.json``, and its type (``env_kwargs``: a mapping or null)."""


def read_run_config(path: Path) -> dict[str, Any]:
    """A run's ``config.json`` for ``--resume``; :class:`AgentConfigError` (one line) when it is not JSON or lacks
    what a resume reads."""
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise AgentConfigError(f"--resume: {path} is not readable JSON ({' '.join(str(exc).split())})") from None
    missing = [k for k in RUN_CONFIG_KEYS if k not in saved] if isinstance(saved, dict) else list(RUN_CONFIG_KEYS)
    if missing:
        raise AgentConfigError(f"--resume: {path} is not a run's config (missing {', '.join(missing)})")
    wrong = [k for k, kind in RUN_CONFIG_KEYS.items() if not isinstance(saved[k], kind) or isinstance(saved[k], bool)]
    wrong += [] if saved.get("env_kwargs") is None or isinstance(saved["env_kwargs"], dict) else ["env_kwargs"]
    wrong += [] if "eval_seeds" in wrong or all(type(x) is int for x in saved["eval_seeds"]) else ["eval_seeds"]
    if wrong:
        raise AgentConfigError(f"--resume: {path} is not a run's config ({', '.join(wrong)} of the wrong type)")
    return saved
