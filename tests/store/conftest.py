"""Fixtures of the store's tests: every test that takes them runs once per engine."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.store.base import SQLStore
from tests.store.support import ENGINES, Clock, Factory


@pytest.fixture(params=sorted(ENGINES))
async def factory_and_clock(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[tuple[Factory, Clock]]:
    clock = Clock()
    with ENGINES[request.param](tmp_path, clock) as make:
        yield make, clock


@pytest.fixture
async def store_and_clock(factory_and_clock: tuple[Factory, Clock]) -> AsyncIterator[tuple[SQLStore, Clock]]:
    make, clock = factory_and_clock
    store = make()
    await store.open()
    yield store, clock
    await store.close()
