"""Fixtures of the monitor tests that run without a broker."""

from __future__ import annotations

import pytest

from tests.fleet.monitor_fakes import Clock, Sent


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sent() -> Sent:
    return Sent()
