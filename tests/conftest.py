"""Test-session settings shared by every test module."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _private_model_cache(tmp_path_factory):
    """Point the synthetic model's on-disk cache (:mod:`siftmoe_gym.cache`) at a temporary folder for the
    whole session (subprocesses inherit it), so no test reads or writes the user's cache."""
    old = os.environ.get("SIFTMOE_CACHE_DIR")
    os.environ["SIFTMOE_CACHE_DIR"] = str(tmp_path_factory.mktemp("siftmoe-cache"))
    yield
    if old is None:
        os.environ.pop("SIFTMOE_CACHE_DIR", None)
    else:
        os.environ["SIFTMOE_CACHE_DIR"] = old
