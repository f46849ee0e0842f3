"""What every command line of the project shares: bad input is one line ``<prog>: error: ...``, exit status 2.

:class:`OneLineParser` is an ``argparse.ArgumentParser`` whose errors raise :class:`UsageError` instead of
printing the usage and exiting; :func:`run_main` runs a command's body and turns :class:`UsageError` (and any
further exception types the command names, e.g. a bad trace or an unloadable model) into that one line, and
Ctrl-C into status 130, without a traceback.  Commands check their whole input this way before any slow work.
``agents.cliutil`` builds the agents' commands on the same pieces.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Callable


class UsageError(Exception):
    """A bad command-line value: printed as one line ``<prog>: error: ...``, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """``argparse`` parser whose errors raise :class:`UsageError` (argparse prints usage + message otherwise)."""

    def error(self, message: str):
        raise UsageError(message)


def one_line(exc: BaseException) -> str:
    """The exception's message on one line."""
    return " ".join(str(exc).split())


def run_main(prog: str, body: Callable[[], int], interrupted: str = "interrupted",
             errors: tuple[type[BaseException], ...] = ()) -> int:
    """``body()``, with a :class:`UsageError` (or one of ``errors``) as one line ``<prog>: error: ...`` on stderr
    and status 2, and Ctrl-C as ``<prog>: <interrupted>`` and status 130."""
    try:
        return body()
    except (UsageError, *errors) as exc:
        print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return 130


def at_least(name: str, value, low, high=None) -> None:
    """:class:`UsageError` naming the option ``name`` unless ``value`` is ``None`` or ``>= low`` (and, with
    ``high``, ``<= high``)."""
    if value is not None and value < low:
        raise UsageError(f"{name} must be >= {low}, got {value}")
    if value is not None and high is not None and value > high:
        raise UsageError(f"{name} must be <= {high:,}, got {value:,}")


def check_writable(option: str, folder: str | Path) -> None:
    """:class:`UsageError` naming ``option`` unless a file can be created in ``folder`` or, while it does not exist
    yet, in its first existing ancestor (tried with a temporary file, removed at once): a command that writes
    there at the end says so before its slow work."""
    folder = Path(folder)
    first = next(p for p in (folder, *folder.parents) if p.exists())
    if not first.is_dir():
        raise UsageError(f"{option}: {first} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=first):
            pass
    except OSError as exc:
        raise UsageError(f"{option}: cannot write in {first} ({exc.strerror or exc})") from None
