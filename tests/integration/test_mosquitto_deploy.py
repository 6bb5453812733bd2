"""deploy/mosquitto/mosquitto.conf itself (not only the ACL) against a real mosquitto 2.x.

The shipped config is started with its /etc paths pointed at throwaway files (PKI, passwords and
the ACL come from test_broker_security's module fixture). Checks the two settings whose values
are trade-offs: ``max_packet_size`` (big enough for a 1 MiB command and a 64 KiB OTA chunk,
small enough that a device cannot make every monitor read ~256 MB) and the decision *not* to set
``use_username_as_clientid`` (the agent opens two connections per device under one user name).
"""

from __future__ import annotations

import os
import re
import subprocess
import threading
from collections.abc import Iterator

import pytest

from edgemeta.fleet.broker import find_mosquitto, free_port
from edgemeta.fleet.schema import MAX_COMMAND_BYTES
from tests.integration.test_broker_security import (  # noqa: F401 - fixtures
    ACL,
    WAIT_S,
    Env,
    Probe,
    _no_password_env,
    _t,
    env,
)

pytestmark = pytest.mark.integration

CONF = ACL.parent / "mosquitto.conf"


def _max_packet_size() -> int:
    m = re.search(r"^max_packet_size\s+(\d+)\s*$", CONF.read_text(), re.MULTILINE)
    assert m, "deploy/mosquitto/mosquitto.conf sets no max_packet_size"
    return int(m.group(1))


@pytest.fixture(scope="module")
def deploy_url(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """A mosquitto running the shipped config; yields pi-01's URL (swap the user as needed)."""
    tmp = tmp_path_factory.mktemp("deploy")
    conf = CONF.read_text()
    server_cert, server_key = env.ca.issue(tmp, "deploy-broker", ips=("127.0.0.1",))
    port = free_port()
    for old, new in {"listener 8883": f"listener {port} 127.0.0.1",
                     "/etc/mosquitto/certs/server.pem": str(server_cert),
                     "/etc/mosquitto/certs/server.key": str(server_key),
                     "/etc/mosquitto/edgemeta.passwd": str(env.dir / "passwd"),
                     "/etc/mosquitto/edgemeta.acl": str(ACL)}.items():
        assert old in conf, f"{old!r} no longer in the example config"
        conf = conf.replace(old, new)
    log = tmp / "mosquitto.log"
    conf += f"\nlog_dest file {log}\n"
    if os.geteuid() == 0:
        conf += "user root\n"
    (tmp / "m.conf").write_text(conf)
    exe = find_mosquitto()
    assert exe is not None
    proc = subprocess.Popen([exe, "-c", str(tmp / "m.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(int(WAIT_S / 0.05)):
            if proc.poll() is not None or (log.exists() and " running" in log.read_text()):
                break
            threading.Event().wait(0.05)
        assert proc.poll() is None, log.read_text() if log.exists() else "no log"
        yield env.url("pi-01").replace(f":{env.broker.port}?", f":{port}?")
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)


def _as(url: str, user: str) -> str:
    return url.replace("pi-01", user)


def test_max_packet_size_fits_commands_and_ota_chunks_but_not_more(deploy_url: str) -> None:
    from firmware_bridge.ota.protocol import CHUNK_HEADER_BYTES, MAX_CHUNK_BYTES

    limit = _max_packet_size()
    assert MAX_COMMAND_BYTES + 1024 < limit and CHUNK_HEADER_BYTES + MAX_CHUNK_BYTES < limit
    with Probe(deploy_url, "dev-big") as dev, Probe(_as(deploy_url, "monitor"), "mon-big") as mon:
        assert dev.subscribe(_t("pi-01", "cmd")) == [1]
        assert mon.subscribe(_t("pi-01", "telemetry")) == [1]
        command = b"x" * MAX_COMMAND_BYTES  # the largest command a commander sends
        mon.publish(_t("pi-01", "cmd"), command)
        assert dev.wait_for(_t("pi-01", "cmd"), command)
        gone = threading.Event()
        dev.client.on_disconnect = lambda *a: gone.set()
        # Over the limit with its header: no PUBACK, the broker closes the connection.
        dev.client.publish(_t("pi-01", "telemetry"), b"y" * limit, qos=1)
        assert gone.wait(WAIT_S), "the broker kept a client that sent an oversized packet"
        assert _t("pi-01", "telemetry") not in mon.topics()


def test_one_device_user_may_hold_two_connections(deploy_url: str) -> None:
    """The agent's reporter and its OTA board connect as the same user with different client
    ids. With ``use_username_as_clientid true`` both would become client id "pi-01" and take each
    other over in a loop; the shipped config must keep them both connected."""
    with Probe(_as(deploy_url, "monitor"), "mon-two") as mon:
        assert mon.subscribe(_t("pi-01", "cmd")) == [1]
        with Probe(deploy_url, "edgemeta-lab-pi-01") as reporter, \
                Probe(deploy_url, "edgemeta-ota-lab-pi-01") as board:
            assert reporter.subscribe(_t("pi-01", "cmd")) == [1]
            assert board.subscribe(_t("pi-01", "cmd")) == [1]
            mon.publish(_t("pi-01", "cmd"), b"both")
            assert reporter.wait_for(_t("pi-01", "cmd"), b"both")
            assert board.wait_for(_t("pi-01", "cmd"), b"both")
            assert reporter.client.is_connected() and board.client.is_connected()
