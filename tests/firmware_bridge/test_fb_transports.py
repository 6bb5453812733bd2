"""transport_for / DirTransport / flash, and the board-side import rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgemeta.bundle import BoardHome
from edgemeta.errors import FlashError
from firmware_bridge import DirTransport, Transport, flash, supported_schemes, transport_for


@pytest.mark.parametrize(
    ("url", "expected"),
    [("dir:/mnt/sd/edgemeta", "/mnt/sd/edgemeta"), ("dir:///mnt/sd", "/mnt/sd"),
     ("dir:rel/board", "rel/board"), ("/abs/board", "/abs/board"), ("./sim", "sim"),
     ("dir:odd:name", "odd:name"), (Path("/p/q"), "/p/q")],
)
def test_dir_urls_and_bare_paths_resolve_to_dir_transport(url, expected):
    transport = transport_for(url)
    assert isinstance(transport, DirTransport) and isinstance(transport, Transport)
    assert transport.path == Path(expected)
    assert transport.url == f"dir:{Path(expected)}"


@pytest.mark.parametrize(("url", "fleet", "device"), [
    ("mqtt://broker/board-7", "default", "board-7"),
    ("mqtt://broker:1884/site-a/pi-1", "site-a", "pi-1")])
def test_mqtt_urls_resolve_to_the_ota_transport(url, fleet, device):
    from firmware_bridge.ota import MqttTransport

    transport = transport_for(url)
    assert isinstance(transport, MqttTransport) and isinstance(transport, Transport)
    assert (transport.fleet, transport.device) == (fleet, device)


@pytest.mark.parametrize("url", ["ftp://host/x", "s3:bucket"])
def test_unknown_scheme_is_refused_listing_supported_ones(url):
    with pytest.raises(FlashError, match=r"unknown scheme .*supported: dir:PATH"):
        transport_for(url)


@pytest.mark.parametrize("url", ["", "  ", "dir:", "dir:   "])
def test_empty_targets_are_refused(url):
    with pytest.raises(FlashError, match="expected"):
        transport_for(url)


def test_supported_schemes_lists_dir_and_ssh():
    assert supported_schemes() == ["dir:PATH", "ssh://USER@HOST[:PORT]/PATH",
                                   "mqtt://BROKER[:PORT]/[FLEET/]DEVICE",
                                   "mqtts://BROKER[:PORT]/[FLEET/]DEVICE?ca=CA.pem"]


def test_mqtts_target_keeps_its_tls_query_with_the_broker(tmp_path):
    from firmware_bridge.ota.transport import split_mqtt_url

    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    broker, fleet, device = split_mqtt_url(f"mqtts://broker.lan:8883/site-a/pi-01?ca={ca}")
    assert broker == f"mqtts://broker.lan:8883?ca={ca}"
    assert (fleet, device) == ("site-a", "pi-01")


def test_flash_installs_through_dir_transport(make_bundle, home):
    result = flash(make_bundle("1.0.0"), f"dir:{home}", board="rpi-4b")
    assert result.changed and BoardHome.at(home).current_version() == "1.0.0"


def test_flash_checks_board_before_touching_target(make_bundle, home):
    with pytest.raises(FlashError, match=r"does not fit rpi-3bplus-32bit: the model input is uint8"):
        flash(make_bundle("1.0.0", dtype="uint8"), str(home), board="rpi-3bplus-32bit")
    assert [p.name for p in home.iterdir()] == ["board.json"]


def test_flash_bad_url_fails_before_reading_bundle(tmp_path):
    with pytest.raises(FlashError, match="names no device"):
        flash(tmp_path / "missing.edgemeta", "mqtt://x")


def test_dir_transport_keep_is_passed_through(make_bundle, home):
    transport = DirTransport(home, keep=3)
    for i, version in enumerate(["1.0.0", "2.0.0", "3.0.0"]):
        transport.push(make_bundle(version, seed=i))
    assert len(BoardHome.at(home).installed_versions()) == 3


_BOARD_SIDE = r"""
import sys
sys.modules["tensorflow"] = None  # any `import tensorflow` now raises ImportError
from pathlib import Path
import firmware_bridge, edgemeta.boards
from edgemeta.bundle import generate_keypair, init_home, sign_bundle
tmp, shipped = Path(sys.argv[1]), Path(sys.argv[2])
key = generate_keypair(tmp / "release.key")
sign_bundle(shipped, key.private_path, out=tmp / "b.edgemeta")
init_home(tmp / "home", trust=[key.public_path], board="rpi-zero-2w")
r = firmware_bridge.flash(tmp / "b.edgemeta", "dir:" + str(tmp / "home"), board="rpi-zero-2w")
assert r.changed and r.health.ok and r.trust.startswith("signed by trusted key"), r
heavy = sorted(n for n in sys.modules if n.split(".")[0] == "tensorflow" and sys.modules[n] is not None
               or n.startswith(("edgemeta.data", "edgemeta.meta", "edgemeta.quantize")))
print("HEAVY", heavy, r.version)
"""


def test_board_side_works_with_tensorflow_blocked(tmp_path):
    # A real model, signed, trusted, health-checked by LiteRT: the whole board-side install.
    shipped = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
    proc = subprocess.run([sys.executable, "-c", _BOARD_SIDE, str(tmp_path), str(shipped)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    version = proc.stdout.split()[-1]
    assert (tmp_path / "home" / "current").read_text() == version + "\n"
