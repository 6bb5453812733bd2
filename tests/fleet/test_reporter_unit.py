"""Reporter argument checking and failure paths that need no broker."""

from __future__ import annotations

import json
import time

import paho.mqtt.client as mqtt
import pytest

from edgemeta.errors import FleetError, MessageError
from edgemeta.fleet import DeviceReporter, DeviceStatus, _mqtt, free_port
from edgemeta.fleet._mqtt import parse_broker_url
from edgemeta.fleet._reporter_session import MAX_LABEL_BYTES, MAX_LABELS_SENT, labels_to_send
from edgemeta.fleet.schema import HOST_ROOT, MAX_PAYLOAD_BYTES, Birth, topic


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



# --- sessions that survive a clock set back (a board without RTC) --------------------------------

def _reporter(**kw) -> DeviceReporter:
    return DeviceReporter("mqtt://127.0.0.1:1", "pi", **kw)


def test_session_after_a_clock_jump_backwards_is_still_larger(tmp_path, monkeypatch) -> None:
    state = tmp_path / "state" / "reporter.json"
    first = _reporter(session_path=state)
    assert json.loads(state.read_text()) == {"session": first.session}
    # The next boot restores a clock an hour early (fake-hwclock), before NTP answers.
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    second = _reporter(session_path=state)
    assert second.session > first.session and second.boot == second.session
    assert json.loads(state.read_text()) == {"session": second.session}
    # Without the state file the session follows the (early) clock: what the monitor ignored.
    assert _reporter().session < first.session


def test_reconnect_session_is_persisted_and_larger(tmp_path, monkeypatch) -> None:
    state = tmp_path / "reporter.json"
    r = _reporter(session_path=state)
    before = r.session
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() - 3600)
    r._state, r._online = "started", True  # as after a birth
    r._on_disconnect(r._client, None, None, "test", None)
    assert r.session == before + 1 and not r._online
    assert json.loads(state.read_text()) == {"session": r.session}
    r._state = "stopped"
    r.stop()


@pytest.mark.parametrize("content", [b"{not json", b'{"session": -1}', b'{"session": "x"}', b"[]"])
def test_damaged_session_file_falls_back_to_the_clock(tmp_path, content: bytes) -> None:
    state = tmp_path / "reporter.json"
    state.write_bytes(content)
    r = _reporter(session_path=state)
    assert r.session > 1_600_000_000_000
    assert json.loads(state.read_text()) == {"session": r.session}


def test_unwritable_session_file_is_not_fatal(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _reporter(session_path=blocker / "reporter.json")  # its parent is a file
    assert r.session > 1_600_000_000_000


# --- labels capped by encoded size ---------------------------------------------------------------

def test_long_non_ascii_labels_fit_the_payload_cap() -> None:
    labels = [f"{i:02d}" + "猫" * 198 for i in range(60)]  # 60 x 200 CJK: 71,780 bytes as JSON
    sent = labels_to_send(labels)
    assert 0 < len(sent) < 60 and list(sent) == labels[:len(sent)]
    assert len(json.dumps(list(sent))) <= MAX_LABEL_BYTES
    birth = Birth("pi", "lab", 1, 1.0, "1", None, None, None, sent, "0", interval_s=5.0)
    assert len(birth.to_payload()) < MAX_PAYLOAD_BYTES
    assert labels_to_send(["a"] * 1000) == ("a",) * MAX_LABELS_SENT


# --- wire order: seq used only by valid messages -------------------------------------------------

def test_a_message_that_fails_validation_uses_up_no_seq() -> None:
    r = _reporter()
    r._seq = 7
    bad = {"id": "c1", "device_id": "pi", "fleet": "default", "ts": 1.0, "ok": "yes"}
    with pytest.raises(MessageError):
        r._publish_record("reply", bad, False)
    too_big = {**bad, "ok": False, "error": "x" * (MAX_PAYLOAD_BYTES + 1)}
    with pytest.raises(MessageError):
        r._publish_record("reply", too_big, False)
    assert r._seq == 7  # the next message gets 8: no false gap, no rebirth request
    r.stop()


# --- callbacks and threads never die -------------------------------------------------------------

def _message(topic_name: str, payload: bytes, retain: bool = False) -> mqtt.MQTTMessage:
    msg = mqtt.MQTTMessage(topic=topic_name.encode())
    msg.payload = payload
    msg.retain = retain
    return msg


def test_retained_command_is_ignored(caplog) -> None:
    r = _reporter()
    got: list[bytes] = []
    r._commands.submit = got.append  # type: ignore[method-assign]
    cmd = topic("default", "pi", "cmd")
    r._on_message(r._client, None, _message(cmd, b'{"id":"old"}', retain=True))
    assert got == [] and "ignoring a retained command" in caplog.text
    r._on_message(r._client, None, _message(cmd, b'{"id":"new"}'))
    assert got == [b'{"id":"new"}']
    r.stop()


def test_paho_callbacks_never_raise() -> None:
    r = _reporter()
    # A nested host state, a nested command with a full queue, and a broken status callback.
    r._on_message(r._client, None, _message(f"{HOST_ROOT}/mon", b"[" * 30000))
    for i in range(20):
        r._on_message(r._client, None, _message(topic("default", "pi", "cmd"), b"[" * 30000))

    def boom(*a):
        raise OSError("SD card gone")

    r._on_host_state = boom  # type: ignore[method-assign]
    r._on_message(r._client, None, _message(f"{HOST_ROOT}/mon", b"{}"))
    r._go_online = boom  # type: ignore[method-assign]
    r._client.is_connected = lambda: True  # type: ignore[method-assign]

    class Ok:
        is_failure = False

    r._on_connect(r._client, None, None, Ok(), None)
    assert r._waiter.connected.is_set()  # the waiter still heard the CONNACK
    r._sender.settle_batch_locked = boom  # type: ignore[method-assign]
    r._state = "started"
    r._on_disconnect(r._client, None, None, "x", None)
    r._state = "stopped"
    r.stop()


def test_timer_and_replay_threads_survive_spool_errors(tmp_path) -> None:
    port = free_port()
    r = DeviceReporter(f"mqtt://127.0.0.1:{port}", "pi", interval_s=0.02,
                       spool=tmp_path / "spool", spool_fsync=False)
    appends, steps = [], []

    def failing_append(record: bytes) -> int:
        appends.append(record)
        raise OSError("I/O error")  # a failing SD card

    def failing_step(stop_event) -> bool:
        steps.append(1)
        raise OSError("EIO in glob")

    r._outbox.append = failing_append  # type: ignore[method-assign]
    r._sender.replay_step = failing_step  # type: ignore[method-assign]
    try:
        r.start(wait=False)
        deadline = time.monotonic() + 5
        while (len(appends) < 3 or len(steps) < 2) and time.monotonic() < deadline:
            r._wake.set()
            time.sleep(0.05)
        assert len(appends) >= 3 and len(steps) >= 2  # both kept going
        assert all(t.is_alive() for t in r._threads)
    finally:
        r.stop(timeout_s=1)


def test_started_before_paho_runs_so_an_early_disconnect_is_handled(monkeypatch) -> None:
    r = _reporter()
    seen = []

    def fake_connect(client, url, keepalive_s, timeout_s, waiter):
        # paho's thread: the first connection goes online, then drops before connect() returns.
        seen.append(r._state)
        r._online = True
        r._on_disconnect(client, None, None, "dropped", None)
        waiter.connected.set()

    monkeypatch.setattr(_mqtt, "connect", fake_connect)
    monkeypatch.setattr(r._commands, "start", lambda: None)
    r._wait = lambda *a, **k: None  # type: ignore[method-assign]
    r._stop_event.set()  # the timer/replay threads end at once
    r.start()
    assert seen == ["started"]
    assert not r._online  # so the next connection publishes a birth
    r._state = "stopped"
    r.stop()


def test_failed_start_can_be_retried(monkeypatch) -> None:
    r = _reporter()

    def refused(*a):
        raise FleetError("cannot connect")

    monkeypatch.setattr(_mqtt, "connect", refused)
    with pytest.raises(FleetError):
        r.start()
    with pytest.raises(FleetError, match="cannot connect"):
        r.start()  # still "new", not "started"
    r.stop()


def test_host_table_keeps_only_online_monitors_and_is_bounded():
    """Retained host states of monitors long gone must not pile up in the device's memory."""
    from edgemeta.fleet import HostState, host_topic
    from edgemeta.fleet._reporter_link import MAX_HOSTS

    r = DeviceReporter("mqtt://127.0.0.1:1", "pi-01")
    for i in range(500):
        r._on_host_state(host_topic(f"m{i}"), HostState(f"m{i}", False, 1.0).to_payload())
    assert r._hosts == {} and not r.monitor_online
    for i in range(MAX_HOSTS + 50):
        r._on_host_state(host_topic(f"m{i}"), HostState(f"m{i}", True, 1.0).to_payload())
    assert len(r._hosts) == MAX_HOSTS and r.monitor_online
