"""TLS, user names/passwords and the deploy/mosquitto ACL against a real mosquitto.

A throwaway CA and server certificate are made per module with ``cryptography`` in a temp dir;
mosquitto listens on a free loopback port. The ACL under test is the shipped example file
``deploy/mosquitto/acl``, so the example cannot drift from what is tested.

"Nothing arrived" is never judged by a sleep alone: each negative probe is followed by an allowed
message from the same publisher to the same subscriber (a barrier). mosquitto forwards one
client's messages in order, so once the barrier arrived a forbidden message would have arrived
before it; a short bounded extra wait covers the rest. Every wait is a generous bounded ceiling.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from edgemeta.errors import FleetError
from edgemeta.fleet import Broker, DeviceReporter, DeviceStatus, FleetMonitor, _mqtt, start_broker
from edgemeta.fleet.broker import find_mosquitto, free_port
from edgemeta.fleet.broker_security import MosquittoSecurity, write_password_file
from tests.integration.conftest import require_mosquitto

pytestmark = pytest.mark.integration

WAIT_S = 10.0
NOTHING_MORE_S = 0.5  # extra bounded wait after a barrier, for the negative probes
ACL = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto" / "acl"
USERS = {"pi-01": "pw-one-Zq8", "pi-02": "pw-two-Kx3", "monitor": "pw-host-Lm5"}


# --- throwaway PKI ------------------------------------------------------------------------------

def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


@dataclass
class CA:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path

    @classmethod
    def make(cls, directory: Path, cn: str) -> CA:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        path = directory / f"{cn}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, path)

    def issue(self, directory: Path, cn: str, *, ips: tuple[str, ...] = (),
              dns: tuple[str, ...] = (), client: bool = False) -> tuple[Path, Path]:
        """A leaf certificate and key signed by this CA; returns (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
        sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = (
            x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self.key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = directory / f"{cn}.pem"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(key, directory / f"{cn}.key")


@dataclass
class Env:
    """The module's secured broker and the files clients need."""

    broker: Broker
    ca: CA
    wrong_ca: CA
    dir: Path

    def url(self, user: str | None = "pi-01", *, ca: Path | None = None, scheme: str = "mqtts",
            password: bool = True) -> str:
        who = f"{user}@" if user else ""
        query = []
        if scheme == "mqtts":
            query.append(f"ca={ca or self.ca.path}")
        if user and password:
            query.append(f"password_file={self.dir / f'{user}.pw'}")
        q = f"?{'&'.join(query)}" if query else ""
        return f"{scheme}://{who}127.0.0.1:{self.broker.port}{q}"


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """mosquitto with a TLS listener, a password file, no anonymous access and the example ACL."""
    require_mosquitto()
    d = tmp_path_factory.mktemp("pki")
    ca = CA.make(d, "edgemeta-test-ca")
    wrong = CA.make(d, "some-other-ca")
    server_cert, server_key = ca.issue(d, "broker", ips=("127.0.0.1",))
    for user, password in USERS.items():
        (d / f"{user}.pw").write_text(password + "\n")
    security = MosquittoSecurity(certfile=server_cert, keyfile=server_key,
                                 password_file=write_password_file(d / "passwd", USERS),
                                 acl_file=ACL)
    broker = start_broker("mosquitto", workdir=d, security=security)
    try:
        yield Env(broker, ca, wrong, d)
    finally:
        broker.stop()


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A password exported in the developer's shell must not leak into "no password" tests.
    monkeypatch.delenv(_mqtt.PASSWORD_ENV, raising=False)


# --- probe clients ------------------------------------------------------------------------------

class Probe:
    """A raw paho client connected through edgemeta's helpers; records what it receives."""

    def __init__(self, url: str, name: str, will: tuple[str, bytes] | None = None) -> None:
        self.client = _mqtt.new_client(f"probe-{name}")
        self.waiter = _mqtt.ConnectWaiter()
        self.received: list[tuple[str, bytes]] = []
        self.suback: list[int] = []
        self._cond = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1)
        self.url = url

    def __enter__(self) -> Probe:
        _mqtt.connect(self.client, self.url, 30, WAIT_S, self.waiter)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: Any,
                    props: Any = None) -> None:
        self.waiter.on_connect(rc)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.received.append((msg.topic, msg.payload))
            self._cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: Any,
                      props: Any = None) -> None:
        with self._cond:
            self.suback.extend(int(c.value) for c in codes)
            self._cond.notify_all()

    def subscribe(self, *topics: str) -> list[int]:
        """Subscribe (QoS 1) and return the SUBACK codes (0x80 = refused)."""
        before = len(self.suback)
        self.client.subscribe([(t, 1) for t in topics])
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.suback) >= before + len(topics), WAIT_S)
            return self.suback[before:]

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(WAIT_S)
        assert info.is_published(), f"no PUBACK for {topic}"

    def wait_for(self, topic: str, payload: bytes | None = None) -> bool:
        def seen() -> bool:
            return any(t == topic and (payload is None or p == payload)
                       for t, p in self.received)
        with self._cond:
            return self._cond.wait_for(seen, WAIT_S)

    def topics(self, settle_s: float = NOTHING_MORE_S) -> set[str]:
        # The whole settle_s (a message arriving wakes the wait early; it goes on waiting), so
        # anything still in flight lands here; bounded by the deadline.
        deadline = time.monotonic() + settle_s
        with self._cond:
            while (left := deadline - time.monotonic()) > 0:
                self._cond.wait(left)
            return {t for t, _ in self.received}


def _t(device: str, kind: str, fleet: str = "lab") -> str:
    return f"edgemeta/v1/{fleet}/{device}/{kind}"


# --- TLS ----------------------------------------------------------------------------------------

def test_reporter_and_monitor_over_tls_with_passwords(env: Env,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    assert env.broker.url == f"mqtts://127.0.0.1:{env.broker.port}"
    # The device takes its password from the environment, the monitor from a file.
    monkeypatch.setenv(_mqtt.PASSWORD_ENV, USERS["pi-01"])
    device_url = env.url("pi-01", password=False)
    status = DeviceStatus(model_version="1.0.0", labels=["a"])
    with FleetMonitor(env.url("monitor"), connect_timeout_s=WAIT_S) as monitor:
        with DeviceReporter(device_url, "pi-01", fleet="lab", interval_s=60.0,
                            status=lambda: status, connect_timeout_s=WAIT_S) as r:
            r.publish_now()
            assert monitor.wait_until(lambda s: any(
                x.device_id == "pi-01" and x.state == "online" and x.last_seq is not None
                and x.model_version == "1.0.0" for x in s), WAIT_S), monitor.snapshot()
        # The graceful death passed the ACL as well.
        assert monitor.wait_until(lambda s: any(
            x.device_id == "pi-01" and x.state == "offline" and x.death_reason == "graceful"
            for x in s), WAIT_S), monitor.snapshot()
    assert monitor.error_count == 0, monitor.errors


def test_wrong_ca_is_a_certificate_verification_error(env: Env) -> None:
    r = DeviceReporter(env.url("pi-01", ca=env.wrong_ca.path), "pi-01", connect_timeout_s=WAIT_S)
    with pytest.raises(FleetError) as info:
        r.start()
    text = str(info.value)
    assert "certificate verification failed" in text and str(env.wrong_ca.path) in text, text
    assert "subjectAltName" in text and "?ca=" in text


def test_system_trust_store_does_not_trust_a_private_ca(env: Env) -> None:
    url = f"mqtts://pi-01@127.0.0.1:{env.broker.port}?password_file={env.dir / 'pi-01.pw'}"
    with pytest.raises(FleetError, match="certificate verification failed.*system trust store"):
        Probe(url, "no-ca").__enter__()


def test_host_name_is_verified(env: Env, tmp_path: Path) -> None:
    """A certificate from the right CA for another host name is refused: verification is on."""
    cert, key = env.ca.issue(tmp_path, "elsewhere", dns=("broker.example",))
    other = start_broker("mosquitto", workdir=tmp_path,
                         security=MosquittoSecurity(certfile=cert, keyfile=key,
                                                    allow_anonymous=True))
    try:
        url = f"mqtts://127.0.0.1:{other.port}?ca={env.ca.path}"
        with pytest.raises(FleetError, match="certificate verification failed.*(mismatch|match)"):
            Probe(url, "hostname").__enter__()
    finally:
        other.stop()


def test_plain_mqtt_to_the_tls_port_fails_clearly(env: Env) -> None:
    r = DeviceReporter(env.url("pi-01", scheme="mqtt"), "pi-01", connect_timeout_s=2)
    with pytest.raises(FleetError) as info:
        r.start()
    text = str(info.value)
    assert "no CONNACK" in text and "closed the connection" in text and "mqtts://" in text, text


def test_tls_to_a_plain_port_fails_clearly(env: Env, mosquitto_broker: Broker) -> None:
    url = f"mqtts://127.0.0.1:{mosquitto_broker.port}?ca={env.ca.path}"
    with pytest.raises(FleetError, match="TLS handshake with MQTT broker .* failed.*use mqtt://"):
        DeviceReporter(url, "pi-01", connect_timeout_s=WAIT_S).start()


def test_client_certificate_required(env: Env, tmp_path: Path) -> None:
    server_cert, server_key = env.ca.issue(tmp_path, "broker2", ips=("127.0.0.1",))
    client_cert, client_key = env.ca.issue(tmp_path, "pi-01-client", client=True)
    security = MosquittoSecurity(certfile=server_cert, keyfile=server_key, cafile=env.ca.path,
                                 require_certificate=True, allow_anonymous=True)
    b = start_broker("mosquitto", workdir=tmp_path, security=security)
    try:
        base = f"mqtts://127.0.0.1:{b.port}?ca={env.ca.path}"
        with Probe(f"{base}&cert={client_cert}&key={client_key}", "cert") as p:
            assert p.subscribe("x/y") == [1]
        with pytest.raises(FleetError, match="TLS|closed the connection|client certificate"):
            probe = Probe(base, "nocert")
            probe.waiter = _mqtt.ConnectWaiter()
            _mqtt.connect(probe.client, base, 30, 2, probe.waiter)
    finally:
        b.stop()


# --- user name and password ---------------------------------------------------------------------

def test_wrong_password_is_not_authorized(env: Env, tmp_path: Path) -> None:
    bad = tmp_path / "bad.pw"
    bad.write_text("not-the-password\n")
    url = f"mqtts://pi-01@127.0.0.1:{env.broker.port}?ca={env.ca.path}&password_file={bad}"
    with pytest.raises(FleetError) as info:
        DeviceReporter(url, "pi-01", connect_timeout_s=WAIT_S).start()
    text = str(info.value)
    assert "not authorized" in text and "user 'pi-01'" in text, text
    assert f"127.0.0.1:{env.broker.port}" in text and "with a password" in text
    assert "not-the-password" not in text


def test_user_without_password_and_anonymous_are_refused(env: Env) -> None:
    with pytest.raises(FleetError, match="refused user 'pi-01' without a password.*not authorized"):
        Probe(env.url("pi-01", password=False), "nopw").__enter__()
    with pytest.raises(FleetError, match="refused an anonymous client.*not authorized"):
        Probe(env.url(None), "anon").__enter__()


# --- ACL ----------------------------------------------------------------------------------------

def test_device_cannot_publish_as_another_device(env: Env) -> None:
    with Probe(env.url("monitor"), "mon") as mon, Probe(env.url("pi-01"), "p1") as p1:
        assert mon.subscribe("edgemeta/v1/#") == [1]
        forged = [_t("pi-02", "telemetry"), _t("pi-02", "birth"), _t("pi-02", "death"),
                  _t("pi-02", "reply"), _t("pi-02", "ota/status"),
                  _t("pi-01", "cmd"), _t("pi-02", "cmd"), _t("pi-01", "ota/chunk"),
                  "edgemeta/v1/_host/pi-01", "edgemeta/v1/_host/ws-1"]
        for topic_ in forged:
            p1.publish(topic_, b'{"forged":true}')  # PUBACKed by MQTT 3.1.1, then dropped
        own = [_t("pi-01", k) for k in ("birth", "telemetry", "death", "reply", "ota/status")]
        own.append(_t("pi-01", "telemetry", fleet="other-fleet"))
        for topic_ in own:
            p1.publish(topic_)
        assert mon.wait_for(own[-1]), mon.received  # barrier: all earlier ones are in
        # Retained host states of FleetMonitors from other tests (user "monitor") may show up.
        got = {t for t in mon.topics() if not t.startswith("edgemeta/v1/_host/monitor-")}
        assert got == set(own), got
        assert not any(p == b'{"forged":true}' for _, p in mon.received), mon.received


def test_device_cannot_read_another_devices_commands(env: Env) -> None:
    with Probe(env.url("monitor"), "mon") as mon, \
            Probe(env.url("pi-01"), "p1") as p1, Probe(env.url("pi-02"), "p2") as p2:
        # A retained message of pi-02 must not reach pi-01 on subscribe either.
        p2.publish(_t("pi-02", "birth"), b'{"retained":true}', retain=True)
        codes = p1.subscribe(_t("pi-02", "cmd"), "edgemeta/v1/+/+/cmd", "edgemeta/v1/#",
                             _t("pi-01", "cmd"), _t("pi-01", "ota/offer"))
        assert codes[-2:] == [1, 1], codes  # its own topics are granted
        assert p2.subscribe(_t("pi-02", "cmd")) == [1]
        mon.publish(_t("pi-02", "cmd"), b'{"for":"pi-02"}')
        mon.publish(_t("pi-02", "ota/chunk"), b"chunk-for-pi-02")
        mon.publish("edgemeta/v1/_host/ws-1", b'{"online":true}', retain=True)
        mon.publish(_t("pi-01", "ota/offer"), b'{"for":"pi-01"}')
        mon.publish(_t("pi-01", "cmd"), b'{"for":"pi-01"}')  # barrier for pi-01
        assert p2.wait_for(_t("pi-02", "cmd"), b'{"for":"pi-02"}'), p2.received
        assert p1.wait_for(_t("pi-01", "cmd"), b'{"for":"pi-01"}'), p1.received
        got = {t for t in p1.topics() if not t.startswith("edgemeta/v1/_host/monitor-")}
        assert got == {_t("pi-01", "cmd"), _t("pi-01", "ota/offer"),
                       "edgemeta/v1/_host/ws-1"}, got
        assert not any(b"pi-02" in p or b"retained" in p for _, p in p1.received), p1.received
        mon.publish(_t("pi-02", "birth"), b"", retain=True)  # clear the retained probe
        mon.publish("edgemeta/v1/_host/ws-1", b"", retain=True)


def _wait_log(broker: Broker, needle: str) -> bool:
    """Bounded poll of mosquitto's log for ``needle``."""
    log = broker.log_path  # type: ignore[attr-defined]
    for _ in range(int(WAIT_S / 0.05)):
        if needle in log.read_text(errors="replace"):
            return True
        threading.Event().wait(0.05)
    return False


def _cut(probe: Probe) -> None:
    """Drop the TCP connection without DISCONNECT, so the broker publishes the Will."""
    probe.client.loop_stop()  # first, so paho does not reconnect
    sock = probe.client.socket()
    assert sock is not None
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def test_last_will_passes_the_acl_only_for_the_own_device(env: Env) -> None:
    """mosquitto checks the Will topic against the ACL when it publishes the Will.

    The forged Will's connection is cut first and the broker has logged it before the own Will's
    connection is cut, so a forged Will that got through would arrive before the own one.
    """
    with Probe(env.url("monitor"), "mon") as mon:
        assert mon.subscribe("edgemeta/v1/+/+/death") == [1]
        forged = Probe(env.url("pi-01"), "will-forged",
                       will=(_t("pi-02", "death"), b'{"forged":"will"}')).__enter__()
        own = Probe(env.url("pi-01"), "will-own", will=(_t("pi-01", "death"), b'{"own":1}'))
        own.__enter__()
        _cut(forged)
        assert _wait_log(env.broker, "Client probe-will-forged closed its connection")
        _cut(own)
        assert mon.wait_for(_t("pi-01", "death"), b'{"own":1}'), mon.received
        assert mon.topics() == {_t("pi-01", "death")}, mon.received


def test_deploy_example_config_starts_and_enforces_auth(env: Env, tmp_path: Path) -> None:
    """deploy/mosquitto/mosquitto.conf, with its /etc paths pointed at test files, is usable."""
    conf = (ACL.parent / "mosquitto.conf").read_text()
    server_cert, server_key = env.ca.issue(tmp_path, "deploy-broker", ips=("127.0.0.1",))
    port = free_port()
    replacements = {
        "listener 8883": f"listener {port} 127.0.0.1",
        "/etc/mosquitto/certs/server.pem": str(server_cert),
        "/etc/mosquitto/certs/server.key": str(server_key),
        "/etc/mosquitto/edgemeta.passwd": str(env.dir / "passwd"),
        "/etc/mosquitto/edgemeta.acl": str(ACL),
    }
    for old, new in replacements.items():
        assert old in conf, f"{old!r} no longer in the example config"
        conf = conf.replace(old, new)
    log = tmp_path / "mosquitto.log"
    conf += f"\nlog_dest file {log}\n"
    if os.geteuid() == 0:
        conf += "user root\n"  # else mosquitto drops to a user that cannot read tmp_path
    (tmp_path / "m.conf").write_text(conf)
    exe = find_mosquitto()
    assert exe is not None
    proc = subprocess.Popen([exe, "-c", str(tmp_path / "m.conf")], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(int(WAIT_S / 0.05)):
            if proc.poll() is not None or (log.exists() and " running" in log.read_text()):
                break
            threading.Event().wait(0.05)
        assert proc.poll() is None, log.read_text() if log.exists() else "no log"
        url = env.url("pi-01").replace(f":{env.broker.port}?", f":{port}?")
        with Probe(url, "deploy") as p:
            assert p.subscribe(_t("pi-01", "cmd")) == [1]
        with pytest.raises(FleetError, match="not authorized"):
            Probe(env.url(None).replace(f":{env.broker.port}?", f":{port}?"), "anon").__enter__()
    finally:
        proc.terminate()
        try:
            proc.wait(WAIT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(WAIT_S)


def test_over_the_air_flash_through_tls_passwords_and_the_acl(env: Env, tmp_path: Path) -> None:
    """`flash --to mqtts://...`: a real bundle reaches pi-01 through the secured broker."""
    from dataclasses import replace

    from edgemeta.bundle import BoardHome, init_home, pack_bundle, read_bundle
    from firmware_bridge import flash, install_bundle
    from firmware_bridge.ota import BoardOta

    shipped = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
    b = read_bundle(shipped)
    home = tmp_path / "pi-01"
    init_home(home, allow_unsigned=True)
    install_bundle(pack_bundle(replace(b.manifest, version="1.0.0"), b.model,
                               tmp_path / "v1.edgemeta"), home)
    v2 = pack_bundle(replace(b.manifest, version="2.0.0"), b.model, tmp_path / "v2.edgemeta")
    board = BoardOta(env.url("pi-01"), home, "pi-01", "lab")
    board.start()
    try:
        monitor = env.url("monitor")
        target = monitor.replace(f":{env.broker.port}?", f":{env.broker.port}/lab/pi-01?")
        result = flash(v2, target)
    finally:
        board.stop()
    assert result.version == "2.0.0" and BoardHome.at(home).current_version() == "2.0.0"
