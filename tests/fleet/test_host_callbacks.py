"""Host side vs. hostile device input: paho callbacks never raise, device text is never markup.

paho 2.x re-raises an exception from a callback, which ends the client's network thread (or, on
the simulator's external loop, the whole run). No broker is needed: the callbacks paho would call
are called directly.
"""

from __future__ import annotations

import types
from typing import Any

import pytest
from rich.console import Console

from edgemeta.fleet import FleetMonitor, Reply, render_table, topic
from edgemeta.fleet.commander import FleetCommander
from edgemeta.fleet.simulate import FleetSimulator
from edgemeta.fleet.tracker import DeviceState

NESTED = b"[" * 30_000  # under 64 KiB, but json.loads raises RecursionError


def msg(topic_name: str, payload: bytes) -> Any:
    return types.SimpleNamespace(topic=topic_name, payload=payload, retain=False)


def test_commander_survives_a_reply_whose_decoding_raises_anything(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import edgemeta.fleet.commander as commander_mod

    cmd = FleetCommander("mqtt://127.0.0.1:1", host_id="ws")
    reply_topic = topic("lab", "pi-01", "reply")
    # Whatever schema does with it, nested JSON must not escape the callback.
    assert cmd._client.on_message(cmd._client, None, msg(reply_topic, NESTED)) is None

    def boom(kind: str, payload: bytes) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(commander_mod, "decode", boom)
    assert cmd.handle(reply_topic, b"{}") is False
    cmd._client.on_message(cmd._client, None, msg(reply_topic, b"{}"))
    assert cmd.ignored == 3
    # The other callbacks are guarded too (here: a CONNACK object paho would never pass).
    cmd._client.on_connect(cmd._client, None, None, None, None)
    cmd._client.on_subscribe(cmd._client, None, 1, None, None)


def test_monitor_callbacks_never_raise(monkeypatch: pytest.MonkeyPatch,
                                      caplog: pytest.LogCaptureFixture) -> None:
    m = FleetMonitor("mqtt://127.0.0.1:1", host_id="ws")
    m._client.on_message(m._client, None, msg(topic("lab", "pi-01", "birth"), NESTED))
    assert m.error_count == 1 and m.snapshot() == []  # counted as malformed, not a device

    def boom(*a: Any, **k: Any) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(m, "handle", boom)
    with caplog.at_level("ERROR"):
        m._client.on_message(m._client, None, msg(topic("lab", "pi-01", "birth"), b"{}"))
        m._client.on_connect(m._client, None, None, None, None)
        m._client.on_subscribe(m._client, None, 1, None, None)
    failed = [r.getMessage() for r in caplog.records if "failed; ignored" in r.getMessage()]
    assert failed and "monitor on_message failed" in failed[0], caplog.text


def test_simulator_callbacks_never_raise() -> None:
    sim = FleetSimulator("mqtt://127.0.0.1:1", devices=1)
    client = sim._conns[0].client
    client.on_connect(client, sim._conns[0], None, None, None)  # no reason code: AttributeError
    client.on_disconnect(client, None, None, None, None)
    client.on_publish(client, None, 1, None, None)
    client.on_socket_open(client, None, None)  # not a socket
    client.on_socket_register_write(client, None, None)
    assert sim.stats.connected == 0


def _state(**kw: Any) -> DeviceState:
    fields: dict[str, Any] = {
        "fleet": "lab", "device_id": "pi-01", "state": "online", "last_seen": 1.0,
        "model_version": "1.0", "model_sha256": None, "backend": None, "board": None,
        "labels": (), "n_classes": 0, "inference_count": None, "latency_p50_ms": None,
        "latency_p95_ms": None, "accuracy": None, "evaluated": None, "rss_bytes": None,
        "uptime_s": None, "last_seq": None, "death_reason": None}
    fields.update(kw)
    return DeviceState(**fields)


@pytest.mark.parametrize("version", ["[/]", "[red]v2[/red]", "[bold", "v\\"])
def test_device_text_is_shown_verbatim_not_as_markup(version: str) -> None:
    console = Console(record=True, width=200, color_system=None)
    console.print(render_table([_state(model_version=version)], now=2.0))
    assert version in console.export_text()


def test_rollout_table_shows_device_text_verbatim() -> None:
    from firmware_bridge.ota.rollout import DeviceOutcome, RolloutReport, render_rollout

    d = DeviceOutcome("lab", "pi-01", version_before="[/]")
    d.message = "[red]refused[/red]"
    console = Console(record=True, width=200, color_system=None)
    console.print(render_rollout(RolloutReport("[/]", "lab/*", [d])))
    text = console.export_text()
    assert "[red]refused[/red]" in text and text.count("[/]") == 2


def test_reply_fixture_sanity() -> None:
    # The reply topic used above decodes fine when the payload is valid.
    r = Reply(id="x", device_id="pi-01", fleet="lab", session=1, seq=1, ts=1.0, ok=True)
    cmd = FleetCommander("mqtt://127.0.0.1:1", host_id="ws")
    assert cmd.handle(topic("lab", "pi-01", "reply"), r.to_payload()) is False
    assert cmd.ignored == 1


def test_rollout_discovery_is_a_one_shot_monitor(monkeypatch: pytest.MonkeyPatch) -> None:
    """A roll-out's discovery used a random host id and left its online:false retained."""
    import edgemeta.fleet
    from firmware_bridge.ota import rollout

    made: list[dict[str, Any]] = []

    class FakeMonitor:
        message_count = 1

        def __init__(self, url: str, **kw: Any) -> None:
            made.append(kw)

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            pass

        def snapshot(self) -> list[DeviceState]:
            return [_state()]

    monkeypatch.setattr(edgemeta.fleet, "FleetMonitor", FakeMonitor)
    assert [s.device_id for s in rollout.discover("mqtt://127.0.0.1:1", "lab/*", 0.5)] == ["pi-01"]
    (kw,) = made
    assert kw["transient"] is True and kw["host_id"].startswith("rollout-")
