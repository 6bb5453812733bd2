"""Remote commands on the board, without a broker: a real FewShotClassifier on the tiny bundle.

Every refused command must leave the classes, the state file and the current model unchanged.
"""

from __future__ import annotations

import base64
import io
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image
from tests.conftest import require_module

require_module("tensorflow")  # to build the tiny bundle

from edgemeta.agent import DeviceAgent
from edgemeta.agent.commands import (
    MAX_IMAGE_BYTES,
    MAX_IMAGES,
    CommandHandler,
)
from edgemeta.bundle import BoardHome, init_home, pack_bundle, read_bundle
from edgemeta.fleet.commander import encode_image, encode_images
from edgemeta.fleet.schema import MAX_COMMAND_BYTES, Command
from firmware_bridge import flash
from tests.host.tiny import tiny_bundle_path


def bar(vertical: bool) -> np.ndarray:
    img = np.full((28, 28), 255, np.uint8)
    if vertical:
        img[5:20, 10:14] = 0
    else:
        img[12:16, 3:25] = 0
    return img


def b64(arr: np.ndarray, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt)
    return base64.b64encode(buf.getvalue()).decode()


V, H = b64(bar(True)), b64(bar(False))


@pytest.fixture
def agent(tmp_path) -> DeviceAgent:
    init_home(tmp_path, allow_unsigned=True)
    flash(tiny_bundle_path(), f"dir:{tmp_path}")
    return DeviceAgent(tmp_path, "dev-1")


@pytest.fixture
def handler(agent) -> CommandHandler:
    return agent.commands  # the handler the agent gives its reporter


def run(handler: CommandHandler, command: str, **args: object):
    return handler(Command(id="c1", command=command, args=args, ts=1.0, host_id="test"))


def state_bytes(agent: DeviceAgent) -> bytes | None:
    path = agent.home.prototypes_path(agent.classifier.manifest.model_sha256)
    return path.read_bytes() if path.exists() else None


@pytest.fixture
def enrolled(agent, handler) -> DeviceAgent:
    assert run(handler, "enroll", label="vertical", images=[V, V]) == (
        True, {"label": "vertical", "count": 2, "n_classes": 1}, None)
    assert run(handler, "enroll", label="horizontal", images=[H])[0]
    return agent


def test_enroll_classify_forget_are_saved_and_survive_a_restart(enrolled, handler):
    ok, result, error = run(handler, "classify", images=[V, H, V])
    assert ok and error is None, error
    assert [p["label"] for p in result["predictions"]] == ["vertical", "horizontal", "vertical"]
    assert all(0.0 < p["score"] <= 1.0 for p in result["predictions"])
    assert result["latency_ms"] > 0 and result["model_version"] == "1.0.0"
    assert enrolled.latency.count == 3  # command inferences count in the telemetry
    assert DeviceAgent(enrolled.home.root, "dev-1").classifier.labels == ["vertical", "horizontal"]

    assert run(handler, "forget", label="vertical") == (
        True, {"label": "vertical", "n_classes": 1}, None)
    assert DeviceAgent(enrolled.home.root, "dev-1").classifier.labels == ["horizontal"]


def test_enroll_accepts_jpeg_and_rgba_png(agent, handler):
    rgba = np.zeros((40, 30, 4), np.uint8)
    rgba[..., 3] = 255
    ok, result, error = run(handler, "enroll", label="mixed",
                            images=[b64(bar(True), "JPEG"), b64(rgba)])
    assert ok, error
    assert result["count"] == 2 and agent.classifier.labels == ["mixed"]


def _gif() -> str:
    buf = io.BytesIO()
    Image.fromarray(bar(True)).save(buf, "GIF")
    return base64.b64encode(buf.getvalue()).decode()


def _huge_png() -> str:
    buf = io.BytesIO()
    Image.new("L", (5000, 5000)).save(buf, "PNG")  # ~25 KB that decodes to 25 Mpixel
    return base64.b64encode(buf.getvalue()).decode()


def _one_byte_too_many() -> str:
    png = base64.b64decode(V)  # a valid PNG; Pillow ignores bytes after IEND
    return base64.b64encode(png + b"\0" * (MAX_IMAGE_BYTES + 1 - len(png))).decode()


INVALID = [
    ("enroll", {"images": [V]}, "missing argument(s) 'label'"),
    ("enroll", {"label": "x"}, "missing argument(s) 'images'"),
    ("enroll", {"label": "x", "images": [V], "lable": "y"}, "unknown argument(s) 'lable'"),
    ("enroll", {"label": 5, "images": [V]}, "bad 'label'"),
    ("enroll", {"label": "   ", "images": [V]}, "bad 'label'"),
    ("enroll", {"label": "x" * 201, "images": [V]}, "at most 200 characters"),
    ("enroll", {"label": "x", "images": V}, "'images' must be a list"),
    ("enroll", {"label": "x", "images": []}, "expected 1 to 32"),
    ("enroll", {"label": "x", "images": [V] * (MAX_IMAGES + 1)}, "has 33 images"),
    ("enroll", {"label": "x", "images": [V, 7]}, "images[1] must be a base64 string"),
    ("enroll", {"label": "x", "images": [V, "@@not base64@@"]}, "images[1] is not valid base64"),
    ("enroll", {"label": "x", "images": [V, ""]}, "images[1] is empty"),
    ("enroll", {"label": "x", "images": [V, base64.b64encode(b"hello").decode()]},
     "images[1] is not a readable image"),
    ("enroll", {"label": "x", "images": [V, _gif()]}, "images[1] is not a readable image"),
    ("enroll", {"label": "x", "images": [V, _huge_png()]}, "5000x5000 pixels"),
    ("enroll", {"label": "x", "images": [V, "A" * 400_000]}, "(262144 bytes decoded)"),
    ("enroll", {"label": "x", "images": [V, _one_byte_too_many()]},
     "images[1] is 262145 bytes: expected at most 262144"),
    ("forget", {"label": "nope"}, "'nope' is not enrolled"),
    ("forget", {"label": ["vertical"]}, "bad 'label'"),
    ("forget", {}, "missing argument(s) 'label'"),
    ("classify", {"images": [V], "top_k": 3}, "unknown argument(s) 'top_k'"),
    ("classify", {"images": [V, "bm90IGFuIGltYWdl"]}, "images[1] is not a readable image"),
    ("rollback", {"force": True}, "rollback takes no arguments"),
    ("rollback", {}, "no previous version"),
]


@pytest.mark.parametrize("command,args,message", INVALID,
                         ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(INVALID)])
def test_invalid_commands_are_refused_and_change_nothing(enrolled, handler, command, args,
                                                         message):
    before = state_bytes(enrolled)
    labels = list(enrolled.classifier.labels)
    means = {x: enrolled.classifier.store.mean(x) for x in labels}
    version = enrolled.home.current_version()
    ok, result, error = run(handler, command, **args)
    assert (ok, result) == (False, None)
    assert error.startswith(f"{command}: ") and message in error, error
    assert state_bytes(enrolled) == before
    assert enrolled.classifier.labels == labels
    for x in labels:
        np.testing.assert_array_equal(enrolled.classifier.store.mean(x), means[x])
    assert enrolled.home.current_version() == version


def test_classify_with_nothing_enrolled_is_refused(handler):
    ok, _, error = run(handler, "classify", images=[V])
    assert not ok and "no classes are enrolled" in error


def test_oversized_unknown_and_non_json_commands_are_refused(enrolled, handler):
    before = state_bytes(enrolled)
    chunk = "A" * 300_000
    big = Command(id="big", command="enroll", args={"label": "x", "images": [chunk] * 4})
    ok, _, error = handler(big)
    assert not ok and f"expected at most {MAX_COMMAND_BYTES}" in error, error
    ok, _, error = handler(SimpleNamespace(id="u", command="reboot", args={}))
    assert not ok and "unknown command 'reboot'" in error
    ok, _, error = handler(SimpleNamespace(id="b", command="forget", args={"label": b"x"}))
    assert not ok and "not plain JSON" in error
    assert state_bytes(enrolled) == before and enrolled.classifier.labels == [
        "vertical", "horizontal"]


def test_a_failed_save_restores_the_classes(enrolled, handler, monkeypatch):
    before = state_bytes(enrolled)

    def full_card(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(enrolled.classifier, "save", full_card)
    ok, _, error = run(handler, "enroll", label="new", images=[V])
    assert not ok and "No space left" in error
    ok, _, error = run(handler, "forget", label="vertical")
    assert not ok and "No space left" in error
    assert enrolled.classifier.labels == ["vertical", "horizontal"]
    assert enrolled.classifier.store.count("vertical") == 2
    assert state_bytes(enrolled) == before


def test_an_unexpected_exception_becomes_an_error_reply(enrolled, handler, monkeypatch):
    def boom(images):
        raise RuntimeError("interpreter exploded")

    monkeypatch.setattr(enrolled.classifier, "classify", boom)
    ok, result, error = run(handler, "classify", images=[V])
    assert (ok, result) == (False, None)
    assert "internal error" in error and "interpreter exploded" in error


def test_report_and_rebirth_go_through_the_agents_reporter(agent, handler):
    ok, _, error = run(handler, "report")
    assert not ok and "no reporter" in error
    calls = []
    agent.reporter = SimpleNamespace(
        publish_now=lambda: calls.append("now") or SimpleNamespace(seq=4, n=9),
        publish_birth=lambda: calls.append("birth") or SimpleNamespace(bd_seq=2, session=77))
    assert run(handler, "report") == (True, {"seq": 4, "n": 9}, None)
    assert run(handler, "rebirth") == (True, {"bd_seq": 2, "session": 77}, None)
    assert run(handler, "report", now=True)[0] is False
    assert calls == ["now", "birth"]


def _install_second_version(agent: DeviceAgent, tmp_path, version: str = "2.0.0") -> None:
    b = read_bundle(tiny_bundle_path())
    flash(pack_bundle(replace(b.manifest, version=version), b.model,
                      tmp_path / f"v{version}.edgemeta"), f"dir:{agent.home.root}")


def test_rollback_switches_and_reloads_the_model(tmp_path, agent):
    (tmp_path / "b").mkdir()
    _install_second_version(agent, tmp_path / "b")
    fresh = DeviceAgent(agent.home.root, "dev-1")
    assert fresh.classifier.manifest.version == "2.0.0"
    announced = []
    handler = CommandHandler(fresh, fresh._lock, on_model_changed=lambda: announced.append(1))
    assert run(handler, "enroll", label="vertical", images=[V])[0]
    assert run(handler, "rollback") == (
        True, {"version": "1.0.0", "previous": "2.0.0", "n_classes": 1}, None)
    assert fresh.home.current_version() == "1.0.0"
    assert fresh.classifier.manifest.version == "1.0.0"
    assert announced == [1]
    # Same model bytes, so the classes learned under 2.0.0 are there under 1.0.0 too.
    assert run(handler, "classify", images=[V])[1]["predictions"][0]["label"] == "vertical"
    # Rolling back twice returns to where it started, like `cd -`.
    assert run(handler, "rollback")[1] == {"version": "2.0.0", "previous": "1.0.0",
                                           "n_classes": 1}


def test_rollback_to_a_damaged_model_changes_nothing(tmp_path, agent):
    (tmp_path / "b").mkdir()
    _install_second_version(agent, tmp_path / "b")
    fresh = DeviceAgent(agent.home.root, "dev-1")
    old = BoardHome.at(agent.home.root).bundle_path("1.0.0")
    old.write_bytes(old.read_bytes()[:100])
    clf = fresh.classifier
    handler = CommandHandler(fresh, fresh._lock)
    ok, _, error = run(handler, "rollback")
    assert not ok and "cannot roll back to 1.0.0" in error, error
    assert fresh.home.current_version() == "2.0.0" and fresh.classifier is clf


def test_host_image_helpers_match_the_device_limits(tmp_path, handler):
    bmp = tmp_path / "glyph.bmp"
    Image.fromarray(bar(True)).save(bmp)
    text = encode_image(bmp)  # BMP is re-encoded as PNG: the device takes PNG/JPEG only
    assert base64.b64decode(text).startswith(b"\x89PNG")
    assert run(handler, "enroll", label="bmp", images=[text])[0]
    assert encode_image(bar(False)) == encode_image(base64.b64decode(encode_image(bar(False))))
    with pytest.raises(Exception, match="1 to 32"):
        encode_images([bmp] * (MAX_IMAGES + 1))
    with pytest.raises(Exception, match="does not exist"):
        encode_image(tmp_path / "missing.png")
    with pytest.raises(Exception, match="not a readable image"):
        encode_image(b"plain text")
