"""Integration fixtures shared by every test that needs real services.

``mosquitto_broker`` starts a private mosquitto on a free loopback port for one test. If mosquitto
is not installed the test is skipped locally but fails in CI (env ``CI`` set), so a missing broker
never turns into silently green CI.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from edgemeta.fleet import Broker, start_broker
from edgemeta.fleet.broker import find_mosquitto

MOSQUITTO_HINT = "mosquitto is not installed (apt-get install mosquitto)"


def require_mosquitto() -> None:
    """Skip (locally) or fail (CI) the calling test when mosquitto is missing."""
    if find_mosquitto() is None:
        if os.environ.get("CI"):
            pytest.fail(f"{MOSQUITTO_HINT}; CI must provide it", pytrace=False)
        pytest.skip(MOSQUITTO_HINT)


@pytest.fixture
def mosquitto_broker() -> Iterator[Broker]:
    """A running mosquitto on 127.0.0.1:<free port>; ``.url`` is ``mqtt://127.0.0.1:PORT``."""
    require_mosquitto()
    broker = start_broker("mosquitto")
    try:
        yield broker
    finally:
        broker.stop()
