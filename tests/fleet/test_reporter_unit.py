"""Reporter argument checking and failure paths that need no broker."""

from __future__ import annotations

import time

import pytest

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import DeviceReporter, DeviceStatus, free_port
from edgemeta.fleet._mqtt import parse_broker_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mqtt://127.0.0.1:18830", ("127.0.0.1", 18830)),
        ("mqtt://localhost", ("localhost", 1883)),
        ("mqtt://broker.lan:1884/", ("broker.lan", 1884)),
    ],
)
def test_parse_broker_url_accepts(url: str, expected: tuple[str, int]) -> None:
    assert parse_broker_url(url).hostport == expected  # TLS/users: tests/fleet/test_mqtt_url.py


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("ws://127.0.0.1:8883", "unsupported broker URL"),
        ("tcp://127.0.0.1:1883", "unsupported broker URL"),
        ("127.0.0.1:1883", "unsupported broker URL"),
        ("mqtt://", "has no host"),
        ("mqtt://127.0.0.1:99999", "bad broker URL"),
        ("mqtt://127.0.0.1:1883/topic", "has a path"),
        ("mqtt://user:pw@127.0.0.1", "has a password in it"),
    ],
)
def test_parse_broker_url_rejects(url: str, needle: str) -> None:
    with pytest.raises(FleetError) as info:
        parse_broker_url(url)
    assert needle in str(info.value) and "expected mqtt://host" in str(info.value)


def test_constructor_checks_arguments() -> None:
    with pytest.raises(FleetError, match="unsupported broker URL"):
        DeviceReporter("ws://127.0.0.1:1", "pi")
    with pytest.raises(MessageError, match="invalid device id 'my pi'"):
        DeviceReporter("mqtt://127.0.0.1:1", "my pi")
    with pytest.raises(MessageError, match="invalid fleet ''"):
        DeviceReporter("mqtt://127.0.0.1:1", "pi", fleet="")
    with pytest.raises(FleetError, match="interval_s must be a positive number"):
        DeviceReporter("mqtt://127.0.0.1:1", "pi", interval_s=0)
    with pytest.raises(FleetError, match="keepalive_s must be an integer >= 1"):
        DeviceReporter("mqtt://127.0.0.1:1", "pi", keepalive_s=0)


def test_unreachable_broker_raises_clear_error_quickly() -> None:
    port = free_port()  # nothing listens there
    r = DeviceReporter(f"mqtt://127.0.0.1:{port}", "pi", connect_timeout_s=2)
    with pytest.raises(FleetError, match=f"cannot reach MQTT broker at mqtt://127.0.0.1:{port}"):
        r.start()
    r.stop()  # harmless after a failed start


def test_publish_before_start_is_an_error() -> None:
    r = DeviceReporter("mqtt://127.0.0.1:1", "pi")
    with pytest.raises(FleetError, match="call start\\(\\) before publish_now"):
        r.publish_now()


def test_session_grows_with_time() -> None:
    a = DeviceReporter("mqtt://127.0.0.1:1", "pi")
    time.sleep(0.002)
    b = DeviceReporter("mqtt://127.0.0.1:1", "pi")
    assert b.session > a.session > 1_600_000_000_000  # milliseconds since the epoch


def test_device_status_freezes_labels() -> None:
    labels = ["a", "b"]
    st = DeviceStatus(labels=labels)
    labels.append("c")
    assert st.labels == ("a", "b")

