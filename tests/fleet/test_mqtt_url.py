"""Broker URL parsing, client TLS setup and mosquitto security settings; no broker needed."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from edgemeta.errors import FleetError
from edgemeta.fleet import _mqtt, free_port, start_broker
from edgemeta.fleet._broker_url import BrokerAddress, parse_broker_url, redact_url
from edgemeta.fleet.broker_security import MosquittoSecurity, hash_password, write_password_file


@pytest.fixture(autouse=True)
def _no_password_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_mqtt.PASSWORD_ENV, raising=False)


@pytest.fixture
def pem(tmp_path: Path) -> dict[str, Path]:
    """A self-signed certificate, its plain key, the same key encrypted, and a password file."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "t")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    files = {"cert": tmp_path / "c.pem", "key": tmp_path / "c.key", "enc": tmp_path / "e.key",
             "pw": tmp_path / "pw", "junk": tmp_path / "junk.pem"}
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pkcs8 = serialization.PrivateFormat.PKCS8
    files["key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, pkcs8,
                                               serialization.NoEncryption()))
    files["enc"].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, pkcs8, serialization.BestAvailableEncryption(b"secret")))
    files["pw"].write_text("s3cret pass\nignored second line\n")
    files["junk"].write_text("not a certificate\n")
    return files


# --- parse_broker_url ---------------------------------------------------------------------------

def test_plain_and_tls_defaults() -> None:
    assert parse_broker_url("mqtt://broker.lan") == BrokerAddress("broker.lan", 1883)
    a = parse_broker_url("mqtts://broker.lan/")
    assert (a.host, a.port, a.tls, a.ca, a.username, a.password) == (
        "broker.lan", 8883, True, None, None, None)
    assert parse_broker_url("mqtts://127.0.0.1:18883").hostport == ("127.0.0.1", 18883)


def test_tls_files_user_and_password_file(pem: dict[str, Path]) -> None:
    url = (f"mqtts://pi-01@h:8884?ca={pem['cert']}&cert={pem['cert']}&key={pem['key']}"
           f"&password_file={pem['pw']}")
    a = parse_broker_url(url)
    assert a == BrokerAddress("h", 8884, True, str(pem["cert"]), str(pem["cert"]),
                              str(pem["key"]), "pi-01", "s3cret pass")
    assert "s3cret" not in repr(a)  # the password never shows in logs or tracebacks


def test_password_from_environment_and_file_wins(pem: dict[str, Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_mqtt.PASSWORD_ENV, "from-env")
    assert parse_broker_url("mqtts://dev%2Done@h").password == "from-env"
    assert parse_broker_url("mqtts://dev%2Done@h").username == "dev-one"
    assert parse_broker_url(f"mqtts://u@h?password_file={pem['pw']}").password == "s3cret pass"
    # Anonymous: the variable is not sent without a user name.
    assert parse_broker_url("mqtt://h").password is None


@pytest.mark.parametrize("host", ["broker.lan", "10.0.0.5", "[fe80::1]", "127.example.com"])
def test_password_over_plain_mqtt_to_another_host_is_refused(
        host: str, pem: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_mqtt.PASSWORD_ENV, "from-env")
    for url in (f"mqtt://pi-01@{host}", f"mqtt://pi-01@{host}:1883?password_file={pem['pw']}"):
        with pytest.raises(FleetError) as info:
            parse_broker_url(url)
        text = str(info.value)
        assert "unencrypted over plain mqtt://" in text and "expected mqtts://pi-01@" in text
        assert "from-env" not in text and "s3cret" not in text
    # The same URL over TLS is fine; and without a user nothing secret is sent.
    assert parse_broker_url(f"mqtts://pi-01@{host}").password == "from-env"
    assert parse_broker_url(f"mqtt://{host}").username is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.1.2.3", "localhost", "[::1]"])
def test_password_over_plain_mqtt_to_loopback_is_allowed(
        host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_mqtt.PASSWORD_ENV, "from-env")
    assert parse_broker_url(f"mqtt://pi-01@{host}:1883").password == "from-env"


def test_configure_refuses_a_hand_made_plain_address_with_password() -> None:
    client = _mqtt.new_client("t")
    addr = BrokerAddress("broker.lan", 1883, username="pi", password="pw")
    with pytest.raises(FleetError, match="unencrypted"):
        _mqtt.configure(client, addr, "mqtt://pi@broker.lan")


@pytest.mark.parametrize(("url", "needle"), [
    ("ws://h:1", "unsupported broker URL"),
    ("h:1883", "unsupported broker URL"),
    ("mqtt://", "has no host"),
    ("mqtts://h:99999", "bad broker URL"),
    ("mqtt://h:0", "has port 0"),
    ("mqtt://h/topic", "has a path"),
    ("mqtt://h#frag", "fragment"),
    ("mqtt://h?x=1", "unknown query parameter 'x'"),
    ("mqtts://h?insecure=1", "no way to turn off certificate checks"),
    ("mqtt://h?password_file=a&password_file=b", "password_file= twice"),
    ("mqtt://h?ca=/etc/hosts", "TLS files (ca/cert/key) for plain mqtt://"),
    ("mqtts://h?key=/etc/hosts", "key= without cert="),
    ("mqtts://h?ca=", "empty ca="),
    ("mqtts://h?ca=/nonexistent/ca.pem", "does not exist"),
    ("mqtt://h?password_file=/etc/hosts", "no user name"),
    ("mqtt://u@h?password_file=/nonexistent", "does not exist"),
])
def test_rejects(url: str, needle: str) -> None:
    with pytest.raises(FleetError) as info:
        parse_broker_url(url)
    assert needle in str(info.value) and "expected" in str(info.value), str(info.value)


@pytest.mark.parametrize("url", ["mqtt://pi:hunter2@h:1883", "mqtts://h?password=hunter2",
                                 "mqtts://pi@h?ca=/x&password=hunter2"])
def test_password_in_url_is_refused_and_not_echoed(url: str) -> None:
    with pytest.raises(FleetError) as info:
        parse_broker_url(url)
    text = str(info.value)
    assert "hunter2" not in text and "***" in text, text
    assert "process lists" in text and _mqtt.PASSWORD_ENV in text and "password_file" in text


def test_empty_password_file(tmp_path: Path) -> None:
    empty = tmp_path / "pw"
    empty.write_text("\n")
    with pytest.raises(FleetError, match="is empty: expected the MQTT password of user 'u'"):
        parse_broker_url(f"mqtt://u@h?password_file={empty}")


def test_redact_url() -> None:
    assert redact_url("mqtt://u:pw@h:1/?password=x&ca=c") == "mqtt://u:***@h:1/?password=***&ca=c"
    assert redact_url("mqtts://u@h?ca=/a") == "mqtts://u@h?ca=/a"


# --- client TLS context -------------------------------------------------------------------------

def test_tls_context_verifies_chain_and_host(pem: dict[str, Path]) -> None:
    ctx = _mqtt.tls_context(parse_broker_url(f"mqtts://h?ca={pem['cert']}"), "u")
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    with_cert = parse_broker_url(f"mqtts://h?ca={pem['cert']}&cert={pem['cert']}&key={pem['key']}")
    assert isinstance(_mqtt.tls_context(with_cert, "u"), ssl.SSLContext)


def test_tls_context_bad_files(pem: dict[str, Path]) -> None:
    with pytest.raises(FleetError, match="cannot load CA file .*junk.pem.*expected a PEM file"):
        _mqtt.tls_context(parse_broker_url(f"mqtts://h?ca={pem['junk']}"), "u")
    # An encrypted key fails with a message instead of prompting for a pass phrase.
    enc = parse_broker_url(f"mqtts://h?cert={pem['cert']}&key={pem['enc']}")
    with pytest.raises(FleetError, match="cannot load client certificate.*unencrypted key"):
        _mqtt.tls_context(enc, "u")
    mismatch = parse_broker_url(f"mqtts://h?cert={pem['cert']}&key={pem['junk']}")
    with pytest.raises(FleetError, match="cannot load client certificate"):
        _mqtt.tls_context(mismatch, "u")


def test_connect_to_nothing_over_tls(pem: dict[str, Path]) -> None:
    url = f"mqtts://127.0.0.1:{free_port()}?ca={pem['cert']}"
    with pytest.raises(FleetError, match="cannot reach MQTT broker at mqtts://127.0.0.1"):
        _mqtt.connect(_mqtt.new_client("nothing"), url, 5, 1.0, _mqtt.ConnectWaiter())


# --- mosquitto security settings ----------------------------------------------------------------

def test_password_file_matches_mosquitto_format(tmp_path: Path) -> None:
    path = write_password_file(tmp_path / "passwd", {"pi-01": "one", "monitor": "two"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    lines = path.read_text().splitlines()
    assert [line.split(":", 1)[0] for line in lines] == ["pi-01", "monitor"]
    _, alg, rounds, salt, digest = lines[0].split(":", 1)[1].split("$")
    assert alg == "7" and len(base64.b64decode(salt)) == 12
    assert base64.b64decode(digest) == hashlib.pbkdf2_hmac(
        "sha512", b"one", base64.b64decode(salt), int(rounds))
    assert hash_password("one") != hash_password("one")  # salted


@pytest.mark.parametrize("users", [{}, {"a:b": "x"}, {"a b": "x"}, {"": "x"}, {"u": ""}])
def test_password_file_rejects(tmp_path: Path, users: dict[str, str]) -> None:
    with pytest.raises(FleetError, match="expected|non-empty"):
        write_password_file(tmp_path / "passwd", users)


def test_security_config_lines(pem: dict[str, Path], tmp_path: Path) -> None:
    sec = MosquittoSecurity(certfile=pem["cert"], keyfile=pem["key"], cafile=pem["cert"],
                            require_certificate=True, password_file=pem["pw"],
                            acl_file=pem["junk"])
    lines = sec.config_lines()
    assert sec.tls and f"certfile {pem['cert']}" in lines and "require_certificate true" in lines
    assert "allow_anonymous false" in lines and f"acl_file {pem['junk']}" in lines
    assert MosquittoSecurity(allow_anonymous=True).config_lines() == ["allow_anonymous true"]
    with pytest.raises(FleetError, match="certfile and keyfile go together"):
        MosquittoSecurity(certfile=pem["cert"]).config_lines()
    with pytest.raises(FleetError, match="require_certificate needs cafile"):
        MosquittoSecurity(certfile=pem["cert"], keyfile=pem["key"],
                          require_certificate=True).config_lines()
    with pytest.raises(FleetError, match="ACL file .* does not exist"):
        MosquittoSecurity(acl_file=tmp_path / "nope").config_lines()
    spaced = tmp_path / "a b"
    spaced.mkdir()
    (spaced / "acl").write_text("")
    with pytest.raises(FleetError, match="contains whitespace"):
        MosquittoSecurity(acl_file=spaced / "acl").config_lines()


def test_embedded_broker_refuses_security() -> None:
    with pytest.raises(FleetError, match="security settings need kind='mosquitto'"):
        start_broker("embedded", security=MosquittoSecurity())
    with pytest.raises(FleetError, match="must be a MosquittoSecurity"):
        start_broker("mosquitto", security={"tls": True})  # type: ignore[arg-type]
