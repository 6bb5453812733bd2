"""The device agent without a broker: inbox → enroll → classify → results, state kept."""

import json

import numpy as np
import pytest
from PIL import Image
from tests.conftest import require_module

require_module("tensorflow")  # to build the tiny bundle

from edgemeta.agent import DeviceAgent  # noqa: E402
from edgemeta.data import make_glyph_dataset  # noqa: E402
from edgemeta.bundle import init_home  # noqa: E402
from firmware_bridge import flash  # noqa: E402
from tests.host.tiny import tiny_bundle_path  # noqa: E402


def _png(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def home(tmp_path):
    init_home(tmp_path, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{tmp_path}")
    data = make_glyph_dataset(n_classes=3, per_class=6, seed=123)
    by_class = data.indices_by_class()
    for c in range(3):
        for j, i in enumerate(by_class[c][:3]):
            _png(tmp_path / "inbox" / "enroll" / f"g{c}" / f"{j}.png", data.images[i])
        for j, i in enumerate(by_class[c][3:]):
            _png(tmp_path / "inbox" / "classify" / f"g{c}" / f"{j}.png", data.images[i])
    _png(tmp_path / "inbox" / "classify" / "unlabelled.png", data.images[0])
    (tmp_path / "inbox" / "classify" / "broken.png").write_text("not an image")
    return tmp_path


def test_agent_processes_inbox_and_keeps_state(home):
    agent = DeviceAgent(home, "dev-1")
    report = agent.process_inbox()
    assert report.enrolled == {"g0": 3, "g1": 3, "g2": 3}
    assert report.classified == 10 and report.failed == 1
    records = [json.loads(line) for line in (home / "outbox" / "results.jsonl").read_text().splitlines()]
    assert len(records) == 11
    broken = [r for r in records if "error" in r]
    assert len(broken) == 1 and "not a readable image" in broken[0]["error"]
    labelled = [r for r in records if "expected" in r]
    assert len(labelled) == 9 and agent.accuracy.evaluated == 9
    assert agent.accuracy.accuracy == pytest.approx(
        np.mean([r["label"] == r["expected"] for r in labelled]))
    status = agent.status()
    assert status.inference_count == 10 and status.latency_p50_ms > 0
    # Nothing left to do; nothing the user gave was deleted.
    assert not list((home / "inbox" / "enroll").rglob("*.png"))
    assert len(list((home / "inbox" / "done").rglob("*.png"))) == 9 + 10
    assert [p.name for p in (home / "inbox" / "failed").rglob("*.png")] == ["broken.png"]
    # A restart (new process, same home) remembers what was enrolled.
    again = DeviceAgent(home, "dev-1")
    assert again.classifier.labels == ["g0", "g1", "g2"]
    assert again.process_inbox().classified == 0


def test_agent_without_model_is_a_clear_error(tmp_path):
    from edgemeta.errors import BundleError

    with pytest.raises(BundleError, match="no installed model"):
        DeviceAgent(tmp_path, "dev-1")


def test_bad_file_in_enroll_folder_does_not_block_the_label(home):
    (home / "inbox" / "enroll" / "g0" / "junk.png").write_bytes(b"\x89PNG broken")
    agent = DeviceAgent(home, "dev-1")
    report = agent.process_inbox()
    assert report.enrolled["g0"] == 3  # the three good drawings
    assert (home / "inbox" / "failed" / "enroll" / "g0" / "junk.png").is_file()
    errors = [json.loads(x) for x in (home / "outbox" / "results.jsonl").read_text().splitlines()
              if "junk" in x]
    assert errors and errors[0]["action"] == "enroll" and "not a readable image" in errors[0]["error"]


def test_done_files_are_never_overwritten(home):
    agent = DeviceAgent(home, "dev-1")
    agent.process_inbox()
    first = (home / "inbox" / "done" / "enroll" / "g0" / "0.png").read_bytes()
    other = make_glyph_dataset(n_classes=1, per_class=1, seed=999).images[0]
    _png(home / "inbox" / "enroll" / "g0" / "0.png", other)
    assert agent.process_inbox().enrolled == {"g0": 4}
    assert (home / "inbox" / "done" / "enroll" / "g0" / "0.png").read_bytes() == first
    assert (home / "inbox" / "done" / "enroll" / "g0" / "0.1.png").is_file()


def test_unreachable_broker_does_not_stop_the_board(home):
    from edgemeta.fleet import free_port

    agent = DeviceAgent(home, "dev-1", broker_url=f"mqtt://127.0.0.1:{free_port()}")
    agent.run(once=True)
    assert agent.latency.count == 10 and agent.classifier.labels == ["g0", "g1", "g2"]


def test_damaged_state_is_set_aside_and_the_board_starts(home):
    agent = DeviceAgent(home, "dev-1")
    agent.process_inbox()
    state = agent.home.prototypes_path(agent.classifier.manifest.model_sha256)
    state.write_bytes(state.read_bytes()[:100])  # e.g. a torn write on a card without fsync
    again = DeviceAgent(home, "dev-1")
    assert again.classifier.labels == []
    kept = list(state.parent.glob("prototypes.npz.corrupt-*"))
    assert len(kept) == 1 and kept[0].stat().st_size == 100


def test_two_damaged_states_in_one_second_are_both_kept(home, monkeypatch):
    import edgemeta.runtime.classifier as classifier

    monkeypatch.setattr(classifier.time, "time", lambda: 1_800_000_000.0)  # the same second
    agent = DeviceAgent(home, "dev-1")
    agent.process_inbox()
    state = agent.home.prototypes_path(agent.classifier.manifest.model_sha256)
    good = state.read_bytes()
    for size in (100, 200):
        state.write_bytes(good[:size])
        assert DeviceAgent(home, "dev-1").classifier.labels == []
    kept = sorted(p.stat().st_size for p in state.parent.glob("prototypes.npz.corrupt-*"))
    assert kept == [100, 200]


def test_agent_rolls_back_when_current_model_cannot_start(tmp_path):
    from dataclasses import replace

    from edgemeta.bundle import BoardHome, pack_bundle, read_bundle

    home = tmp_path / "board"
    init_home(home, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{home}")
    b = read_bundle(tiny_bundle_path())
    flash(pack_bundle(replace(b.manifest, version="9.0.0"), b.model, tmp_path / "v9.edgemeta"),
          f"dir:{home}")
    bad = BoardHome.at(home).bundle_path("9.0.0")
    bad.write_bytes(bad.read_bytes()[:100])  # the card went bad under the current model
    agent = DeviceAgent(home, "d1")
    assert agent.classifier.manifest.version == b.version
    assert agent.rolled_back_at_start.startswith("rolled back from 9.0.0")


def test_agent_follows_a_model_flashed_while_it_runs(tmp_path):
    """A dir: or ssh:// flash by another process: the agent's next loop runs the new model."""
    from dataclasses import replace

    from edgemeta.bundle import pack_bundle, read_bundle, sha256_hex

    home = tmp_path / "board"
    init_home(home, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{home}")
    agent = DeviceAgent(home, "d1")
    img = np.full((28, 28), 255, np.uint8)
    img[4:24, 12:16] = 0
    agent.classifier.enroll("bar", [img])
    agent.classifier.save()
    b = read_bundle(tiny_bundle_path())
    model = b.model + b"\0" * 16  # another model file: the class has to be re-learned
    m = replace(b.manifest, version="9.1.0", model_sha256=sha256_hex(model), model_bytes=len(model))
    flash(pack_bundle(m, model, tmp_path / "v9.edgemeta"), f"dir:{home}")
    agent.run(once=True)
    assert agent.classifier.manifest.version == "9.1.0"
    assert agent.classifier.labels == ["bar"]


def test_status_does_not_wait_for_the_agent_lock(home):
    """paho's thread reads the status on every reconnect: an enroll/OTA holding the lock
    must not stall it (no PINGREQ/PUBACK handling meanwhile)."""
    import threading

    agent = DeviceAgent(home, "dev-1")
    agent.process_inbox()
    fresh = agent.status()
    assert fresh.labels == ("g0", "g1", "g2") and fresh.inference_count == 10
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with agent._lock:
            held.set()
            release.wait(60)

    got: list = []

    def read_status() -> None:
        got.append(agent.status())
        got.append(release.is_set())  # False: answered while the lock was still held

    t = threading.Thread(target=hold, daemon=True)
    t.start()
    try:
        assert held.wait(5)
        reader = threading.Thread(target=read_status, daemon=True)
        reader.start()
        # The lock is held until `release` (60 s): a status() waiting for it is still running.
        reader.join(20)
        assert not reader.is_alive(), "status() waited for the agent lock"
        assert got == [fresh, False]  # the last snapshot
    finally:
        release.set()
        t.join(5)


def test_stop_during_a_long_inbox_returns_between_files(home):
    """SIGTERM (agent.stop()) must not wait for the whole inbox: systemd kills after 30 s."""
    agent = DeviceAgent(home, "dev-1")
    real = agent._classify_one
    done = []

    def slow(path, expected):
        done.append(path)
        if len(done) == 2:
            agent.stop()  # the signal arrives while the second file is classified
        return real(path, expected)

    agent._classify_one = slow
    report = agent.process_inbox()
    assert report.enrolled == {"g0": 3, "g1": 3, "g2": 3}
    assert len(done) == 2 and report.classified + report.failed == 2
    left = list((home / "inbox" / "classify").rglob("*.png"))
    assert len(left) == 11 - 2  # the rest waits for the next start, untouched


def test_stop_skips_the_remaining_enroll_folders(home):
    agent = DeviceAgent(home, "dev-1")
    agent.stop()
    report = agent.process_inbox()
    assert report.enrolled == {} and report.classified == 0
    assert len(list((home / "inbox" / "enroll").rglob("*.png"))) == 9


def test_reporter_keeps_its_session_in_the_board_home(home):
    import json as _json

    from edgemeta.fleet import free_port

    agent = DeviceAgent(home, "dev-1", broker_url=f"mqtt://127.0.0.1:{free_port()}")
    agent.reporter.stop()  # never started: releases the spool for the next agent
    state = home / "state" / "reporter.json"
    assert _json.loads(state.read_text()) == {"session": agent.reporter.session}
    # The next start reads it: larger even if this board's clock were set back meanwhile.
    state.write_text(_json.dumps({"session": agent.reporter.session + 10**9}))
    again = DeviceAgent(home, "dev-1", broker_url=f"mqtt://127.0.0.1:{free_port()}")
    again.reporter.stop()
    assert again.reporter.session == agent.reporter.session + 10**9 + 1


def test_log_backups_must_be_at_least_one(tmp_path):
    from click.testing import CliRunner

    from edgemeta.agent.agent import configure_logging
    from edgemeta.cli import cli

    with pytest.raises(ValueError, match="backups must be >= 1"):
        configure_logging(tmp_path / "agent.log", backups=0)
    result = CliRunner().invoke(cli, ["device", "run", "--home", str(tmp_path), "--id", "d",
                                      "--log-backups", "0", "--once"])
    assert result.exit_code == 2 and "--log-backups" in result.output


def test_failed_save_leaves_nothing_enrolled_in_memory_only(home, monkeypatch):
    """A full card while saving: the class is not enrolled (in memory or on disk), its files go
    to failed/, and the next start agrees with the running agent."""
    from edgemeta.errors import StateError

    agent = DeviceAgent(home, "dev-1")
    before = list(agent.classifier.labels)

    def full_disk() -> None:
        raise StateError("cannot save the state file: no space left on device")

    monkeypatch.setattr(agent.classifier, "save", full_disk)
    report = agent.process_inbox()
    assert report.enrolled == {}
    assert agent.classifier.labels == before
    assert (home / "inbox" / "failed" / "enroll" / "g0").is_dir()
    monkeypatch.undo()
    assert DeviceAgent(home, "dev-1").classifier.labels == before


def test_birth_names_the_homes_board_profile_unless_told(home):
    init_home(home, allow_unsigned=True, board="rpi-4b")
    assert DeviceAgent(home, "dev-1").board == "rpi-4b"
    assert DeviceAgent(home, "dev-1", board="rpi-5").board == "rpi-5"
    (home / "board.json").write_text("{")  # damaged: the board still runs, just unnamed
    assert DeviceAgent(home, "dev-1").board is None
