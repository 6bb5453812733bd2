"""The ssh:// transport against a real OpenSSH server on a loopback port.

The ``sshd_server`` fixture starts a private ``sshd`` with its own host key, authorising one test
key for the current user, and writes a client ``ssh_config`` and ``known_hosts`` in ``tmp_path``,
so nothing under ``~/.ssh`` is read or written. The board's Python is this test's interpreter,
which has edgemeta installed, so the board runs the real install: bundles are the shipped
int8 model (it passes the board's health check) repacked per version and signed with a test key
that the board home trusts. Without sshd (or the rights to run it) the tests are skipped
locally and fail in CI (env ``CI`` set), like the mosquitto tests.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.bundle import BoardHome, generate_keypair, init_home, pack_bundle, read_bundle, sign_bundle
from edgemeta.cli import cli
from edgemeta.errors import FlashError, InstallError
from edgemeta.fleet import free_port
from firmware_bridge import SSHTransport, flash

pytestmark = pytest.mark.integration

REAL_BUNDLE = Path(__file__).resolve().parents[2] / "models" / "omniglot-protonet.edgemeta"
SSHD_HINT = "OpenSSH server is not installed (apt-get install openssh-server)"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason)


def find_sshd() -> str | None:
    """sshd must be run by absolute path (it re-executes itself); Debian puts it in /usr/sbin."""
    found = shutil.which("sshd")
    if found:
        return os.path.abspath(found)
    for candidate in ("/usr/sbin/sshd", "/usr/local/sbin/sshd"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgemeta-test",
                    "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class SSHServer:
    """A running test sshd and what a client needs to reach it."""

    port: int
    user: str
    client_config: Path
    known_hosts: Path
    root: Path
    log: Path

    def url(self, home: Path, python: str = sys.executable) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{home}?python={python}"

    def transport(self, home: Path, **options: object) -> SSHTransport:
        options.setdefault("ssh_config", self.client_config)
        options.setdefault("timeout", 60.0)
        return SSHTransport.from_url(self.url(home), **options)


def _start_sshd(sshd: str, config: Path, port: int, log: Path) -> subprocess.Popen[bytes] | None:
    with open(log, "ab") as out:
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None  # exited: e.g. the port was taken between free_port() and bind
        if _accepts(port):
            return proc
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=10)
    return None


@pytest.fixture
def sshd_server(tmp_path: Path) -> Iterator[SSHServer]:
    """A private sshd on 127.0.0.1:<free port> that accepts one generated key for this user."""
    sshd = find_sshd()
    if sshd is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None:
        _unavailable(SSHD_HINT)
    root = tmp_path / "sshd"
    root.mkdir()
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation directory; Debian creates it
        # only when the service starts, which it never does in a container.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    host_pub = _keygen(root / "host_key")
    client_pub = _keygen(root / "client_key")
    (root / "authorized_keys").write_text(client_pub + "\n")
    user = getpass.getuser()
    log = root / "sshd.log"
    proc = None
    for _ in range(3):
        port = free_port()
        config = root / "sshd_config"
        config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {port}", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
            "PermitRootLogin prohibit-password", f"AllowUsers {user}", "PrintMotd no",
            "AcceptEnv none", "LogLevel VERBOSE", ""]))
        proc = _start_sshd(sshd, config, port, log)
        if proc is not None:
            break
    if proc is None:
        _unavailable(f"sshd did not start: {log.read_text(errors='replace')[-2000:]}")
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    client_config = root / "ssh_config"
    client_config.write_text("\n".join([
        "Host *", f"  IdentityFile {root / 'client_key'}", "  IdentitiesOnly yes",
        "  IdentityAgent none", f"  UserKnownHostsFile {known_hosts}",
        "  GlobalKnownHostsFile /dev/null", "  StrictHostKeyChecking yes",
        "  UpdateHostKeys no", ""]))
    try:
        yield SSHServer(port, user, client_config, known_hosts, root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _key(tmp_path: Path) -> Path:
    """The test's release key (made on first use); returns the private key's path."""
    private = tmp_path / "keys" / "release.key"
    if not private.exists():
        private.parent.mkdir(exist_ok=True)
        generate_keypair(private)
    return private


def _bundle(tmp_path: Path, version: str, *, signed: bool = True) -> Path:
    """The shipped model repacked as ``version``, signed with the test key unless ``signed`` is False."""
    real = read_bundle(REAL_BUNDLE)
    out = tmp_path / "bundles" / f"omniglot-{version}{'' if signed else '-unsigned'}.edgemeta"
    pack_bundle(replace(real.manifest, version=version), real.model, out)
    if signed:
        sign_bundle(out, _key(tmp_path))
    return out


def _board(tmp_path: Path, name: str = "board") -> Path:
    """A board home that trusts the test key (what its owner sets up once on the board)."""
    home = tmp_path / name
    _key(tmp_path)
    init_home(home, trust=[tmp_path / "keys" / "release.key.pub"])
    return home


def _snapshot(root: Path) -> dict[str, bytes | None]:
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def _no_incoming_left(home: Path) -> bool:
    return not list(home.glob(".incoming-*"))


def test_push_installs_then_same_bundle_is_unchanged(sshd_server, tmp_path):
    home = _board(tmp_path)
    transport = sshd_server.transport(home)

    first = transport.push(_bundle(tmp_path, "1.0.0"))
    assert first.changed and first.version == "1.0.0" and first.previous_version is None
    assert BoardHome.at(home).current_version() == "1.0.0"
    assert first.path == BoardHome.at(home).bundle_path("1.0.0")

    assert "trusted key" in first.trust  # what the board checked travels back
    assert first.health is not None and first.health.ok

    again = transport.push(_bundle(tmp_path, "1.0.0"))
    assert not again.changed and again.version == "1.0.0"

    second = transport.push(_bundle(tmp_path, "1.1.0"))
    assert second.changed and second.previous_version == "1.0.0"
    assert transport.status() == {"current": "1.1.0", "installed": ["1.0.0", "1.1.0"]}
    assert transport.rollback() == "1.0.0"
    assert BoardHome.at(home).current_version() == "1.0.0"
    assert _no_incoming_left(home)


def test_downgrade_is_the_board_s_decision_unless_allowed(sshd_server, tmp_path):
    home = _board(tmp_path)
    transport = sshd_server.transport(home)
    transport.push(_bundle(tmp_path, "2.0.0"))
    with pytest.raises(InstallError, match=r"older than the current version") as info:
        transport.push(_bundle(tmp_path, "1.0.0"))
    assert info.value.reason == "downgrade"
    assert BoardHome.at(home).current_version() == "2.0.0"
    result = transport.push(_bundle(tmp_path, "1.0.0"), allow_downgrade=True)
    assert result.version == "1.0.0" and result.previous_version == "2.0.0"


def test_flash_through_url_checks_board_first_then_installs(sshd_server, tmp_path):
    home = _board(tmp_path)
    result = flash(_bundle(tmp_path, "1.0.0"), sshd_server.transport(home), board="rpi-4b")
    assert result.changed and BoardHome.at(home).current_version() == "1.0.0"


def test_tampered_bundle_is_refused_by_the_board_and_nothing_changes(sshd_server, tmp_path):
    home = _board(tmp_path)
    transport = sshd_server.transport(home)
    transport.push(_bundle(tmp_path, "1.0.0"))
    before = _snapshot(home)
    tampered = _bundle(tmp_path, "2.0.0")
    data = bytearray(tampered.read_bytes())
    index = data.index(b"TFL3") + 1000  # inside the model member: its CRC no longer matches
    data[index] ^= 0xFF
    tampered.write_bytes(bytes(data))

    with pytest.raises(InstallError, match=rf"^board {sshd_server.user}@127\.0\.0\.1: ") as info:
        transport.push(tampered)
    assert "1.0.0 stays current" in str(info.value) or "nothing was changed" in str(info.value)
    assert _snapshot(home) == before


def test_board_policy_applies_unsigned_bundle_is_refused(sshd_server, tmp_path):
    home = tmp_path / "board"  # no board.json: the safe default, signatures required
    with pytest.raises(InstallError, match=r"not signed") as info:
        sshd_server.transport(home).push(_bundle(tmp_path, "1.0.0", signed=False))
    assert info.value.reason == "unsigned"
    assert not home.exists()  # the home the push created for itself is gone again


def test_wrong_host_key_is_refused_and_nothing_is_sent(sshd_server, tmp_path):
    home = tmp_path / "board"
    other = _keygen(tmp_path / "impostor_key")
    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_server.port} {other}\n")

    with pytest.raises(FlashError, match=r"Host key verification failed") as info:
        sshd_server.transport(home, known_hosts=wrong).push(_bundle(tmp_path, "1.0.0"))
    message = str(info.value)
    assert "refusing to push" in message and "host key differs" in message
    assert message.endswith("nothing was changed")
    assert not isinstance(info.value, InstallError)
    assert not home.exists()


def test_unknown_host_key_is_refused_not_accepted(sshd_server, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    with pytest.raises(FlashError, match=r"Host key verification failed.*nothing was changed"):
        sshd_server.transport(tmp_path / "board", known_hosts=empty).status()
    assert empty.read_text() == ""  # nothing was learned on the way


def test_ssh_config_that_would_accept_new_keys_is_refused_before_connecting(sshd_server,
                                                                           tmp_path):
    """accept-new in the user's ssh_config (not our options) would trust any unknown board."""
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    lax = tmp_path / "lax_ssh_config"
    lax.write_text("StrictHostKeyChecking accept-new\n" + sshd_server.client_config.read_text())
    with pytest.raises(FlashError, match=r"ssh -G.*would switch off host-key checking.*"
                                         r"accept-new.*nothing was changed$"):
        sshd_server.transport(tmp_path / "board", ssh_config=lax, known_hosts=empty).push(
            _bundle(tmp_path, "1.0.0"))
    assert empty.read_text() == "" and not (tmp_path / "board").exists()


def test_unreachable_port_is_a_clear_error(sshd_server, tmp_path):
    transport = SSHTransport.from_url(f"ssh://{sshd_server.user}@127.0.0.1:{free_port()}"
                                      f"{tmp_path / 'board'}?python={sys.executable}",
                                      ssh_config=sshd_server.client_config, connect_timeout=5,
                                      timeout=30)
    with pytest.raises(FlashError, match=r"cannot reach board .*127\.0\.0\.1 over ssh: .*"
                                         r"Connection refused; nothing was changed"):
        transport.push(_bundle(tmp_path, "1.0.0"))
    assert not (tmp_path / "board").exists()


def test_unauthorised_key_is_a_clear_error(sshd_server, tmp_path):
    stranger = tmp_path / "stranger_key"
    _keygen(stranger)
    # A config without the authorised key, so only the stranger's key is offered.
    bare = tmp_path / "bare_ssh_config"
    bare.write_text(f"Host *\n  IdentitiesOnly yes\n  IdentityAgent none\n"
                    f"  UserKnownHostsFile {sshd_server.known_hosts}\n  GlobalKnownHostsFile /dev/null\n")
    transport = sshd_server.transport(tmp_path / "board", ssh_config=bare, identity_file=stranger)
    with pytest.raises(FlashError, match=r"Permission denied.*ssh-copy-id.*nothing was changed"):
        transport.push(_bundle(tmp_path, "1.0.0"))


@pytest.mark.parametrize("python", ["wrapper", "/nonexistent/bin/python3"])
def test_board_without_edgemeta_gets_an_install_hint(sshd_server, tmp_path, python):
    if python == "wrapper":
        # This interpreter with site-packages off (-S) and cwd/env ignored (-I): no edgemeta.
        wrapper = tmp_path / "bare-python"
        wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} -I -S "$@"\n')
        wrapper.chmod(0o755)
        python = str(wrapper)
    home = tmp_path / "board"
    transport = sshd_server.transport(home, remote_python=python)
    with pytest.raises(FlashError, match=r"install edgemeta\[device\] on the board.*"
                                         r"nothing was changed"):
        transport.push(_bundle(tmp_path, "1.0.0"))
    assert not home.exists()


def test_home_whose_parent_is_missing_is_refused_by_the_board(sshd_server, tmp_path):
    home = tmp_path / "no" / "such" / "board"
    with pytest.raises(InstallError, match=r"does not exist and neither does its parent"):
        sshd_server.transport(home).push(_bundle(tmp_path, "1.0.0"))
    assert not (tmp_path / "no").exists()


def test_cli_flash_over_ssh(sshd_server, tmp_path):
    home = _board(tmp_path)
    runner = CliRunner()
    bundle = str(_bundle(tmp_path, "1.0.0"))
    url = sshd_server.url(home)
    ok = runner.invoke(cli, ["flash", bundle, "--to", url, "--board", "rpi-4b",
                             "--ssh-config", str(sshd_server.client_config)])
    assert ok.exit_code == 0, ok.output
    assert f"installed 1.0.0 at {sshd_server.user}@127.0.0.1:{home}" in ok.output
    assert BoardHome.at(home).current_version() == "1.0.0"
    config = ["--ssh-config", str(sshd_server.client_config)]
    newer = runner.invoke(cli, ["flash", str(_bundle(tmp_path, "1.1.0")), "--to", url, *config])
    assert newer.exit_code == 0 and "(previous: 1.0.0)" in newer.output, newer.output
    back = runner.invoke(cli, ["rollback", "--to", url, *config])
    assert back.exit_code == 0, back.output
    assert "rolled back: 1.0.0 is current" in back.output
    assert BoardHome.at(home).current_version() == "1.0.0"

    wrong = tmp_path / "wrong_known_hosts"
    wrong.write_text(f"[127.0.0.1]:{sshd_server.port} {_keygen(tmp_path / 'other')}\n")
    refused = runner.invoke(cli, ["flash", bundle, "--to", url, "--ssh-config",
                                  str(sshd_server.client_config), "--ssh-option",
                                  f"UserKnownHostsFile={wrong}"])
    assert refused.exit_code == 1
    assert "Host key verification failed" in refused.output
    assert "Traceback" not in refused.output
