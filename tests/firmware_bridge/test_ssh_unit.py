"""SSHTransport without a server: URL parsing, the ssh command line, replies and ssh failures.

ssh itself is replaced by a small shell script (``ssh_binary=``) that prints what a real ssh
would; the real client and server are exercised in tests/integration/test_ssh_transport.py.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgemeta.bundle import BoardHome
from edgemeta.cli import cli
from edgemeta.errors import FlashError, InstallError
from firmware_bridge import SSHTransport, Transport, transport_for
from firmware_bridge import remote as remote_mod


# ---------------------------------------------------------------- URLs
@pytest.mark.parametrize(
    ("url", "user", "host", "port", "home", "python"),
    [("ssh://pi@10.0.0.5/home/pi/edgemeta", "pi", "10.0.0.5", None, "/home/pi/edgemeta", "python3"),
     ("ssh://pi@board.local:2222/~/edgemeta", "pi", "board.local", 2222, "~/edgemeta", "python3"),
     ("ssh://board/srv/edgemeta/", None, "board", None, "/srv/edgemeta", "python3"),
     ("ssh://pi@[fe80::1]:22/~", "pi", "fe80::1", 22, "~", "python3"),
     ("ssh://pi@h/opt/my%20home?python=/home/pi/.venv/bin/python", "pi", "h", None,
      "/opt/my home", "/home/pi/.venv/bin/python"),
     ("SSH://pi@h/x?python=~/venv/bin/python", "pi", "h", None, "/x", "~/venv/bin/python")],
)
def test_urls_parse(url, user, host, port, home, python):
    t = transport_for(url)
    assert isinstance(t, SSHTransport) and isinstance(t, Transport)
    assert (t.user, t.host, t.port, t.home, t.remote_python) == (user, host, port, home, python)


def test_url_round_trips():
    url = "ssh://pi@board.local:2222/~/edgemeta?python=/opt/py"
    assert transport_for(url).url == url
    assert transport_for("ssh://h/srv/e").url == "ssh://h/srv/e"
    odd = "ssh://h/srv/my%20board?python=/opt/my%20py"
    assert transport_for(odd).url == odd and transport_for(odd).home == "/srv/my board"


def test_home_must_be_absolute_or_under_a_home_directory():
    with pytest.raises(FlashError, match="absolute path or ~/PATH"):
        SSHTransport(host="h", home="relative/board")


@pytest.mark.parametrize(
    ("url", "message"),
    [("ssh://pi@/home/pi", "names no host"),
     ("ssh:///home/pi", "names no host"),
     ("ssh://pi@host", "names no board home"),
     ("ssh://pi@host/", "names no board home"),
     ("ssh://pi:secret@host/x", "contains a password"),
     ("ssh://pi@host:99999/x", "not a valid ssh URL"),
     ("ssh://pi@host:abc/x", "not a valid ssh URL"),
     ("ssh://pi@host/x?keep=3", r"unknown query parameter\(s\) \['keep'\]"),
     ("ssh://pi@host/x#frag", "fragment"),
     ("ssh://-oProxyCommand=touch%20x/x", "not a valid host"),
     ("ssh://-oProxyCommand=x@host/x", "not a valid user"),
     ("ssh://pi@host/x?python=", "remote python is empty")],
)
def test_bad_urls_are_refused_clearly(url, message):
    with pytest.raises(FlashError, match=message):
        transport_for(url)


def test_explicit_remote_python_wins_over_the_url():
    t = SSHTransport.from_url("ssh://h/x?python=/a/python", remote_python="/b/python")
    assert t.remote_python == "/b/python"
    assert SSHTransport.from_url("ssh://h/x", remote_python=None).remote_python == "python3"


# ---------------------------------------------------------------- the command line
def test_command_has_batch_mode_first_and_quotes_remote_words(tmp_path):
    t = SSHTransport.from_url("ssh://pi@h:2200/srv/my board;rm -rf ~?python=~/v env/bin/python",
                              ssh_config=tmp_path / "cfg", identity_file=tmp_path / "id",
                              known_hosts=tmp_path / "kh dir" / "known_hosts",
                              ssh_options=("IdentitiesOnly=yes",))
    argv = t.command("install", "--keep", "2", "--stdin", "--allow-downgrade")
    assert argv[:3] == ["ssh", "-o", "BatchMode=yes"]
    assert "-T" in argv
    assert argv[argv.index("-F") + 1] == str(tmp_path / "cfg")
    assert argv[argv.index("-i") + 1] == str(tmp_path / "id")
    assert argv[argv.index("-p") + 1] == "2200"
    assert f'UserKnownHostsFile="{tmp_path / "kh dir" / "known_hosts"}"' in argv
    # The user's -o options come before ours: ssh keeps the first value of each option.
    assert argv.index("IdentitiesOnly=yes") < argv.index("ConnectTimeout=10")
    assert argv[-3:-1] == ["--", "pi@h"]
    remote = argv[-1]
    assert remote.startswith("~/'v env/bin/python' -m firmware_bridge.remote install --home ")
    # The board's shell sees each word exactly once, the hostile home as one word.
    words = shlex.split(remote)
    assert words[words.index("--home") + 1] == "/srv/my board;rm -rf ~"
    assert words[-4:] == ["--keep", "2", "--stdin", "--allow-downgrade"]
    assert not any("StrictHostKeyChecking" in a for a in argv)


def test_timeouts_and_keepalive_are_bounded():
    argv = SSHTransport.from_url("ssh://h/x", connect_timeout=3).command("status")
    assert "ConnectTimeout=3" in argv and "ServerAliveInterval=15" in argv
    with pytest.raises(FlashError, match="positive"):
        SSHTransport.from_url("ssh://h/x", timeout=0)


@pytest.mark.parametrize("option", ["StrictHostKeyChecking=no", "stricthostkeychecking off",
                                    "UserKnownHostsFile=/dev/null"])
def test_options_that_disable_host_key_checking_are_refused(option):
    with pytest.raises(FlashError, match="host-key checking"):
        SSHTransport.from_url("ssh://h/x", ssh_options=(option,))


@pytest.mark.parametrize("option", [
    # each of these is read by ssh (ssh -G) as switching host-key checking off or weakening it
    "StrictHostKeyChecking=false", "StrictHostKeyChecking = no", 'StrictHostKeyChecking="no"',
    "StrictHostKeyChecking='off'", "STRICTHOSTKEYCHECKING=No", "StrictHostKeyChecking=accept-new",
    "UserKnownHostsFile=/dev//null", "UserKnownHostsFile=/dev/./null",
    "UserKnownHostsFile ~/.ssh/known_hosts /dev/null", 'UserKnownHostsFile="/dev/null"',
    "UserKnownHostsFile=/dev/zero",
    "KnownHostsCommand=/bin/echo x", "knownhostscommand /usr/bin/true"])
def test_every_spelling_of_disabling_host_key_checking_is_refused(option):
    with pytest.raises(FlashError, match="would switch off host-key checking"):
        SSHTransport.from_url("ssh://h/x", ssh_options=(option,))


@pytest.mark.parametrize("option", ["StrictHostKeyChecking=yes", "StrictHostKeyChecking ask",
                                    "UserKnownHostsFile=/tmp/known hosts", "KnownHostsCommand=none",
                                    "UserKnownHostsFile=~/.ssh/known_hosts",
                                    "GlobalKnownHostsFile=/dev/null"])  # only narrows trust
def test_safe_host_key_options_are_kept(option):
    t = SSHTransport.from_url("ssh://h/x", ssh_options=(option,))
    assert option in t.command("status")


def test_known_hosts_field_cannot_be_dev_null(tmp_path):
    link = tmp_path / "kh"
    link.symlink_to("/dev/null")
    for bad in ("/dev/null", "/dev//null", link, ""):
        with pytest.raises(FlashError, match="known_hosts .*would switch off host-key checking"):
            SSHTransport.from_url("ssh://h/x", known_hosts=bad)
    good = SSHTransport.from_url("ssh://h/x", known_hosts=tmp_path / "known_hosts")
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in good.command("status")


@pytest.mark.parametrize(("config", "why"), [
    ("stricthostkeychecking false\n", "StrictHostKeyChecking false"),
    ("stricthostkeychecking accept-new\n", "accept-new trusts any board"),
    ("stricthostkeychecking true\nuserknownhostsfile /dev/null\n", "/dev/null"),
    ("stricthostkeychecking true\nuserknownhostsfile /etc/x /dev//null\n", "/dev//null"),
    ("stricthostkeychecking ask\nknownhostscommand /bin/cat %H\n", "KnownHostsCommand"),
    ("batchmode yes\n", "reported no StrictHostKeyChecking"),
])
def test_effective_ssh_config_is_checked_before_connecting(tmp_path, bundle_file, config, why):
    """What ~/.ssh/config or an -F file says is what ssh -G reports: checked before any push."""
    ssh = _fake_ssh(tmp_path, stdout=json.dumps({"ok": True, "version": "1.0.0"}), config=config)
    t = _transport(ssh, ssh_config=tmp_path / "cfg", ssh_options=("IdentitiesOnly=yes",))
    with pytest.raises(FlashError, match=f"ssh -G.*would switch off host-key checking.*{why}"
                                         r".*nothing was changed$"):
        t.push(bundle_file)
    assert not Path(ssh + ".runs").exists()  # ssh never ran the remote command
    probe = Path(ssh + ".G").read_text().split()
    assert probe[:1] == ["-G"] and probe[-2:] == ["--", "pi@board"]  # no remote command
    assert "BatchMode=yes" in probe and str(tmp_path / "cfg") in probe
    assert "IdentitiesOnly=yes" in probe


def test_ssh_config_that_ssh_cannot_read_is_an_error(tmp_path, bundle_file):
    script = tmp_path / "ssh"
    script.write_text("#!/bin/sh\necho 'cfg line 1: Bad configuration option: nonsense' >&2\n"
                      "exit 255\n")
    script.chmod(0o755)
    with pytest.raises(FlashError, match="cannot read its configuration.*Bad configuration"):
        _transport(str(script)).push(bundle_file)


# CI installs openssh-client: there a missing client fails (ssh not found) instead of skipping.
@pytest.mark.skipif(shutil.which("ssh") is None and not os.environ.get("CI"),
                    reason="no OpenSSH client")
@pytest.mark.parametrize(("lines", "refused"), [
    ("StrictHostKeyChecking yes\nUserKnownHostsFile {kh}\n", False),
    ("Host board\n  StrictHostKeyChecking no\n", True),
    ("Match host board\n  StrictHostKeyChecking = accept-new\n", True),
    ("Host *\n  UserKnownHostsFile /dev//null\n", True),
    ("Host b*\n  KnownHostsCommand /bin/echo %H\n", True),
    ("Include {inc}\n", True),
])
def test_real_ssh_config_file_that_disables_checking_is_refused(tmp_path, lines, refused):
    """The real client's ssh -G (no connection is made) sees Host/Match blocks and Includes."""
    inc = tmp_path / "included.conf"
    inc.write_text("StrictHostKeyChecking off\n")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(lines.format(kh=tmp_path / "known_hosts", inc=inc))
    t = SSHTransport.from_url("ssh://pi@board/home/pi/e", ssh_binary=shutil.which("ssh"),
                              ssh_config=cfg)
    if refused:
        with pytest.raises(FlashError, match="would switch off host-key checking"):
            t.check_host_key_checking()
    else:
        t.check_host_key_checking()


@pytest.mark.parametrize("option", ["-oProxyCommand=x", "NoValue", "", 'Key="unbalanced'])
def test_malformed_options_are_refused(option):
    with pytest.raises(FlashError, match="Key=Value"):
        SSHTransport.from_url("ssh://h/x", ssh_options=(option,))


# ---------------------------------------------------------------- replies and failures
SAFE_CONFIG = ("stricthostkeychecking true\nglobalknownhostsfile /etc/ssh/ssh_known_hosts\n"
               "userknownhostsfile /home/pi/.ssh/known_hosts\n")


def _fake_ssh(tmp_path: Path, *, stdout: str = "", stderr: str = "", code: int = 0,
              sleep: float = 0, config: str = SAFE_CONFIG) -> str:
    """A fake ssh; with -G it prints ``config`` (what ``ssh -G`` reports) and logs its argv."""
    script = tmp_path / "fake-ssh"
    script.write_text("#!/bin/sh\n"
                      f'if [ "$1" = -G ]; then echo "$@" >> {shlex.quote(str(script))}.G; '
                      f"printf '%s' {shlex.quote(config)}; exit 0; fi\n"
                      f"echo run >> {shlex.quote(str(script))}.runs\n"
                      "cat > /dev/null\n"
                      + (f"sleep {sleep}\n" if sleep else "")
                      + f"printf '%s' {shlex.quote(stdout)}\n"
                      + f"printf '%s' {shlex.quote(stderr)} >&2\nexit {code}\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    path = tmp_path / "b.edgemeta"
    path.write_bytes(b"PK not really a bundle: the fake ssh does not care")
    return path


def _transport(ssh: str, **kw: object) -> SSHTransport:
    return SSHTransport.from_url("ssh://pi@board/home/pi/edgemeta", ssh_binary=ssh, **kw)


def test_success_reply_after_login_noise_becomes_an_install_result(tmp_path, bundle_file):
    reply = {"ok": True, "version": "1.2.0", "previous_version": "1.1.0", "changed": True,
             "pruned": ["1.0.0"], "path": "/home/pi/edgemeta/models/1.2.0/model.edgemeta",
             "trust": "signed by trusted key 0123", "future_field": 1}
    ssh = _fake_ssh(tmp_path, stdout="Welcome to the board!\n{not json\n" + json.dumps(reply) + "\n")
    result = _transport(ssh).push(bundle_file)
    assert (result.version, result.previous_version, result.changed, result.pruned) == (
        "1.2.0", "1.1.0", True, ("1.0.0",))
    assert result.path == Path("/home/pi/edgemeta/models/1.2.0/model.edgemeta")


def test_board_refusal_keeps_message_and_reason(tmp_path, bundle_file):
    reply = {"ok": False, "error": "bundle 1.0.0 is older than 2.0.0; nothing was changed",
             "reason": "downgrade"}
    ssh = _fake_ssh(tmp_path, stdout=json.dumps(reply) + "\n", code=1)
    with pytest.raises(InstallError, match=r"^board pi@board: bundle 1.0.0 is older") as info:
        _transport(ssh).push(bundle_file)
    assert info.value.reason == "downgrade"


@pytest.mark.parametrize(
    ("stderr", "pattern"),
    [("@@@@\n@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @\n@@@@\n"
      "Host key verification failed.\n",
      r"refusing to push to board pi@board over ssh: Host key verification failed\. \(the "
      r"board's host key differs.*nothing was changed$"),
     ("No ED25519 host key is known for board and you have requested strict checking.\n"
      "Host key verification failed.\n", r"host key is not in known_hosts.*nothing was changed$"),
     ("ssh: Could not resolve hostname board: Name or service not known\n",
      r"cannot reach board pi@board over ssh: ssh: Could not resolve hostname.*nothing was changed"),
     ("pi@board: Permission denied (publickey).\n", r"Permission denied.*ssh-copy-id"),
     ("client_loop: send disconnect: Broken pipe\n", r"ssh to board pi@board failed: .*Broken "
      r"pipe; if the connection broke during the install.*atomic")],
)
def test_ssh_failures_are_explained(tmp_path, bundle_file, stderr, pattern):
    with pytest.raises(FlashError, match=pattern) as info:
        _transport(_fake_ssh(tmp_path, stderr=stderr, code=255)).push(bundle_file)
    assert not isinstance(info.value, InstallError)


@pytest.mark.parametrize(
    ("stderr", "code"),
    [("bash: python3: command not found\n", 127),
     ("/usr/bin/python3: Error while finding module specification for 'firmware_bridge.remote' "
      "(ModuleNotFoundError: No module named 'firmware_bridge')\n", 1)],
)
def test_missing_edgemeta_on_the_board_gets_a_hint(tmp_path, bundle_file, stderr, code):
    with pytest.raises(FlashError, match=r"install edgemeta\[device\] on the board"):
        _transport(_fake_ssh(tmp_path, stderr=stderr, code=code)).push(bundle_file)


def test_no_reply_is_an_error_with_the_last_stderr_line(tmp_path, bundle_file):
    ssh = _fake_ssh(tmp_path, stderr="Traceback...\nRuntimeError: boom\n", code=1)
    with pytest.raises(FlashError, match=r"gave no reply \(exit status 1\): RuntimeError: boom"):
        _transport(ssh).push(bundle_file)


def test_timeout_stops_ssh(tmp_path, bundle_file):
    with pytest.raises(FlashError, match=r"did not finish within 0.5 s"):
        _transport(_fake_ssh(tmp_path, sleep=5), timeout=0.5).push(bundle_file)


def test_missing_ssh_client_and_missing_bundle(tmp_path, bundle_file):
    with pytest.raises(FlashError, match="OpenSSH client"):
        _transport(str(tmp_path / "no-ssh")).push(bundle_file)
    with pytest.raises(FlashError, match="cannot read bundle"):
        _transport(_fake_ssh(tmp_path)).push(tmp_path / "missing.edgemeta")


def test_status_and_rollback_replies(tmp_path):
    ssh = _fake_ssh(tmp_path, stdout=json.dumps({"ok": True, "current": "2.0.0", "installed":
                                                  ["1.0.0", "2.0.0"], "version": "1.0.0"}))
    t = _transport(ssh)
    assert t.status() == {"current": "2.0.0", "installed": ["1.0.0", "2.0.0"]}
    assert t.rollback() == "1.0.0"


# ---------------------------------------------------------------- the board side
def test_remote_receive_is_bounded_and_stays_in_the_home(tmp_path, monkeypatch):
    home = BoardHome.at(tmp_path / "home")
    home.root.mkdir()
    path = remote_mod.receive_bundle(io.BytesIO(b"x" * 10), home)
    assert path.parent == home.root and path.name.startswith(".incoming-")
    assert path.read_bytes() == b"x" * 10
    monkeypatch.setattr(remote_mod, "MAX_BUNDLE_BYTES", 5)
    with pytest.raises(InstallError, match="larger than 5 bytes") as info:
        remote_mod.receive_bundle(io.BytesIO(b"x" * 6), home)
    assert info.value.reason == "damaged"
    with pytest.raises(InstallError, match="0 bytes"):
        remote_mod.receive_bundle(io.BytesIO(b""), home)
    assert [p.name for p in home.root.iterdir()] == [path.name]  # only the first, kept by us


def _remote(args: list[str], stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "firmware_bridge.remote", *args], input=stdin,
                          capture_output=True, timeout=60)


def test_remote_replies_with_one_json_line(tmp_path):
    home = tmp_path / "home"
    proc = _remote(["install", "--home", str(home), "--stdin"], b"not a bundle")
    assert proc.returncode == 1
    lines = proc.stdout.decode().splitlines()
    assert len(lines) == 1
    reply = json.loads(lines[0])
    assert reply["ok"] is False and reply["reason"] == "damaged" and reply["error"]
    assert not home.exists()  # created for the push, removed again: nothing was installed

    status = _remote(["status", "--home", str(home)])
    assert status.returncode == 0
    assert json.loads(status.stdout) == {"ok": True, "current": None, "installed": [],
                                         "home": str(home)}
    rollback = json.loads(_remote(["rollback", "--home", str(home)]).stdout)
    assert rollback["ok"] is False and "nothing to roll back" in rollback["error"]


def test_board_side_modules_import_without_tensorflow():
    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "import firmware_bridge.remote, firmware_bridge.ssh\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('tensorflow', 'edgemeta.data', "
            "'edgemeta.meta', 'edgemeta.quantize')) and sys.modules[m] is not None)\n"
            "assert not bad, bad\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------- CLI wiring
def test_cli_ssh_options_only_for_ssh_targets(tmp_path):
    r = CliRunner().invoke(cli, ["flash", str(tmp_path / "b.edgemeta"), "--to",
                                 f"dir:{tmp_path}", "--ssh-option", "IdentitiesOnly=yes"])
    assert r.exit_code == 2 and "apply only to ssh:// targets" in r.output


def test_cli_refuses_to_disable_host_key_checking(tmp_path):
    for command in (["flash", str(tmp_path / "b.edgemeta")], ["rollback"]):
        r = CliRunner().invoke(cli, [*command, "--to", "ssh://pi@board/x", "--ssh-option",
                                     "StrictHostKeyChecking=no"])
        assert r.exit_code == 1 and "would switch off host-key checking" in r.output


def test_cli_rollback_on_a_dir_target(tmp_path):
    r = CliRunner().invoke(cli, ["rollback", "--to", f"dir:{tmp_path / 'none'}"])
    assert r.exit_code == 1 and "nothing to roll back" in r.output
