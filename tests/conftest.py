"""Shared test setup: make ``tests/`` (for ``tiny``) and the repo root (for ``benchmarks``) importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for path in (str(ROOT), str(TESTS)):
    if path not in sys.path:
        sys.path.insert(0, path)


@pytest.fixture(scope="session")
def engines():
    """Session cache of tiny engines: ``engines(family, chat=True, context=2048)``, built once per key.

    Shared across tests, so tests must not mutate them (build a private ``tiny_engine`` for that).
    """
    from tiny import tiny_engine

    cache = {}

    def get(family: str, chat: bool = True, context: int = 2048):
        key = (family, chat, context)
        if key not in cache:
            cache[key] = tiny_engine(family, chat=chat, context=context)
        return cache[key]

    return get
