"""``ssh://USER@HOST[:PORT]/HOME``: push bundles to a board over SSH with the user's own ``ssh``.

The transport runs the OpenSSH client (no Python SSH library), so the user's ``~/.ssh/config``,
agent, keys and ``known_hosts`` apply exactly as for an interactive ``ssh``. It never weakens
host-key checking: an unknown or changed host key makes the push fail before anything is sent,
and a configuration that would switch checking off (options, ``~/.ssh/config``) is refused.

The board needs edgemeta installed (``pip install 'edgemeta[device]'``). The transport runs::

    ssh -o BatchMode=yes ... -- USER@HOST PYTHON -m firmware_bridge.remote install --home HOME --stdin

streams the bundle on stdin, and reads the one JSON line :mod:`firmware_bridge.remote` replies
with. The board runs the real :func:`firmware_bridge.install.install_bundle`, so everything a local
install checks (integrity, the home's policy, atomic switch) is checked on the board.

URL forms:

* ``ssh://pi@10.0.0.5/home/pi/edgemeta`` - the path is absolute on the board;
* ``ssh://pi@board.local:2222/~/edgemeta`` - ``/~/`` starts the path at the login user's home
  (as in git's ``ssh://`` URLs); ``~`` is expanded on the board;
* ``ssh://board/srv/edgemeta`` - no user: ssh picks it (``~/.ssh/config`` ``User``, or yours);
* ``?python=/home/pi/.venv/bin/python`` - the board's Python that has edgemeta (default
  ``python3``); a leading ``~/`` is expanded by the board's shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import stat
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from edgemeta.errors import FlashError, InstallError
from firmware_bridge.install import InstallResult

__all__ = ["REMOTE_MODULE", "SSHTransport"]

REMOTE_MODULE = "firmware_bridge.remote"
DEFAULT_REMOTE_PYTHON = "python3"
# Conservative on purpose: these end up on ssh's command line, and a host or user starting with
# "-" would be read as an option (e.g. -oProxyCommand=...).
_HOST_RE = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9._-]*[A-Za-z0-9_])?$")
_IPV6_RE = re.compile(r"^[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?$")
_USER_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]*\$?$")
# As ssh reads "-o": a keyword, then "=" and/or whitespace, then the value (quotes removed).
_OPTION_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+)(.*?)\s*$", re.DOTALL)
# Host-key checking must stay on: only these StrictHostKeyChecking values refuse an unknown key
# (BatchMode=yes turns "ask" into a refusal). "accept-new" would add any new board's key without
# asking, so a spoofed first connection would be trusted from then on.
# With checking on, known_hosts files can only narrow what is trusted; an empty user file is still
# refused: it is the usual half of "switch checking off" (...=no plus UserKnownHostsFile=/dev/null),
# and keys accepted by hand would never be stored. GlobalKnownHostsFile /dev/null (ignore the
# system-wide file) is a common, safe way to make a config self-contained and is allowed.
_SAFE_STRICT = ("yes", "true", "ask")
_KNOWN_HOSTS_FILES = ("userknownhostsfile",)
# ssh -G (prints the effective configuration, connects nowhere) must answer within this time.
_CONFIG_CHECK_TIMEOUT_S = 10.0
_HOSTKEY_MARKERS = ("Host key verification failed", "REMOTE HOST IDENTIFICATION HAS CHANGED",
                    "host key for", "No matching host key", "Host key for")
# ssh errors raised before a session (and so before the remote command) starts.
_CONNECT_MARKERS = ("connect to host", "Could not resolve hostname", "Connection refused",
                    "Connection timed out", "No route to host", "Network is unreachable",
                    "kex_exchange_identification", "Permission denied", "Too many authentication",
                    "banner exchange", "Unable to negotiate", "Bad owner or permissions",
                    "Can't open user config file", "Bad configuration option",
                    "Connection closed by", "Connection reset by")
_NO_MODULE_RE = re.compile(r"No module named '?(firmware_bridge|edgemeta)")


def _split_option(option: object) -> tuple[str, list[str]] | None:
    """``"Key=Value"`` -> (lowercase key, value words) as ssh splits them; None if malformed."""
    if not isinstance(option, str):
        return None
    match = _OPTION_RE.match(option)
    if match is None:
        return None
    try:
        words = shlex.split(match.group(2))
    except ValueError:  # an unbalanced quote
        return None
    return (match.group(1).lower(), words) if words else None


def _is_null_file(path: str) -> bool:
    """True for a known_hosts path that can hold no key: empty, /dev/null (however spelled)..."""
    if not path.strip():
        return True
    real = os.path.realpath(os.path.expanduser(path))
    if real == os.path.realpath(os.devnull):
        return True
    try:
        return stat.S_ISCHR(os.stat(real).st_mode)  # /dev/zero and friends
    except OSError:
        return False


def _host_key_problem(key: str, words: list[str]) -> str | None:
    """Why an ssh option (lowercase key, its words) weakens host-key checking, or None."""
    if key == "stricthostkeychecking" and words[0].lower() not in _SAFE_STRICT:
        if words[0].lower() == "accept-new":
            return "accept-new trusts any board's key the first time it is seen"
        return f"StrictHostKeyChecking {words[0]} accepts unknown or changed host keys"
    if key == "knownhostscommand" and [w.lower() for w in words] != ["none"]:
        return "KnownHostsCommand lets a command decide which host keys are trusted"
    if key in _KNOWN_HOSTS_FILES:
        for word in words:
            if _is_null_file(word):
                return f"{key} {word} is an empty known_hosts file (like /dev/null)"
    return None


def _refusal(what: str, why: str, tail: str = "") -> FlashError:
    return FlashError(f"{what} would switch off host-key checking ({why}); edgemeta does not do "
                      "that: add the board's key to known_hosts (ssh-keyscan, then check its "
                      f"fingerprint, or ssh to the board once){tail}")


def _quote_remote_python(python: str) -> str:
    # shlex.quote would stop the board's shell from expanding "~/", which is the natural way to
    # name a venv in the login user's home; quote only what follows it.
    if python == "~":
        return python
    if python.startswith("~/"):
        return "~/" + shlex.quote(python[2:])
    return shlex.quote(python)


def _quote_option_path(path: Path) -> str:
    text = str(path)
    if '"' in text:
        raise FlashError(f"ssh file path {text!r} contains a double quote; ssh cannot take it")
    # ssh splits -o values on whitespace unless they are double-quoted.
    return f'"{text}"' if any(c.isspace() for c in text) else text


def _last_reply(stdout: bytes) -> dict[str, Any] | None:
    # The reply is the last line; a chatty login script (.bashrc) may print before it.
    for line in reversed(stdout.decode("utf-8", "replace").splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            reply = json.loads(line)
        except ValueError:
            continue
        if isinstance(reply, dict) and isinstance(reply.get("ok"), bool):
            return reply
    return None


def _stderr_lines(stderr: bytes) -> list[str]:
    # ssh frames its host-key warning in lines of "@"; keep only the words.
    lines = (ln.strip().strip("@").strip() for ln in stderr.decode("utf-8", "replace").splitlines())
    return [ln for ln in lines if ln]


def _pick_line(lines: list[str], markers: tuple[str, ...]) -> str | None:
    # Markers are in order of preference: the first marker found anywhere wins.
    for marker in markers:
        for line in lines:
            if marker.lower() in line.lower():
                return line
    return None


def _install_result(reply: dict[str, Any], home: str) -> InstallResult:
    """The board's JSON reply as an :class:`InstallResult` (extra fields only if they parse)."""
    extra: dict[str, Any] = {}
    names = {f.name for f in fields(InstallResult)}
    if "trust" in names and isinstance(reply.get("trust"), str):
        extra["trust"] = reply["trust"]
    # The reports are informative: a board running another edgemeta version may send fields this
    # host does not know, which must not turn a successful install into an error.
    if "health" in names and isinstance(reply.get("health"), dict):
        from edgemeta.runtime.health import HealthReport

        with contextlib.suppress(TypeError, ValueError):
            extra["health"] = HealthReport(**reply["health"])
    if "migration" in names and isinstance(reply.get("migration"), dict):
        from firmware_bridge.migrate import Migration

        m = reply["migration"]
        with contextlib.suppress(TypeError, ValueError):
            extra["migration"] = Migration(relearned=tuple(m.get("relearned") or ()),
                                           lost=tuple(m.get("lost") or ()), source=m.get("source"))
    return InstallResult(version=str(reply["version"]), previous_version=reply.get("previous_version"),
                         path=Path(reply.get("path") or home), changed=bool(reply.get("changed")),
                         pruned=tuple(reply.get("pruned") or ()), **extra)


@dataclass(frozen=True)
class SSHTransport:
    """A board reached with the OpenSSH client.

    Attributes:
        host: Host name, address or ``~/.ssh/config`` alias.
        home: The board home on the board: an absolute path, or ``~/...``.
        user: Login user; None lets ssh decide.
        port: TCP port; None lets ssh decide (22 or ``Port`` from ssh_config).
        remote_python: The board's Python that has edgemeta installed.
        ssh_config: A config file to use instead of ``~/.ssh/config`` (``ssh -F``).
        identity_file: A private key to offer (``ssh -i``).
        known_hosts: A known_hosts file to check the board's key against instead of the
            default ones (``-o UserKnownHostsFile=``).
        ssh_options: Extra ``-o`` options, each ``"Key=Value"``.
        keep: How many installed versions the board keeps.
        connect_timeout: Seconds ssh waits for the connection (``-o ConnectTimeout=``).
        timeout: Seconds the whole command may take (transfer plus install) before ssh is killed.
        ssh_binary: The ssh client to run.
    """

    host: str
    home: str
    user: str | None = None
    port: int | None = None
    remote_python: str = DEFAULT_REMOTE_PYTHON
    ssh_config: Path | None = None
    identity_file: Path | None = None
    known_hosts: Path | None = None
    ssh_options: tuple[str, ...] = field(default=())
    keep: int = 2
    connect_timeout: float = 10.0
    timeout: float = 600.0
    ssh_binary: str = "ssh"

    def __post_init__(self) -> None:
        if not (_HOST_RE.match(self.host) or (":" in self.host and _IPV6_RE.match(self.host))):
            raise FlashError(f"ssh host {self.host!r} is not a valid host name or address")
        if self.user is not None and not _USER_RE.match(self.user):
            raise FlashError(f"ssh user {self.user!r} is not a valid user name")
        if self.port is not None and not (isinstance(self.port, int) and 0 < self.port < 65536):
            raise FlashError(f"ssh port {self.port!r} is out of range; expected 1-65535")
        if (not self.home.startswith(("/", "~")) or self.home.strip("/") == ""
                or "\0" in self.home):
            raise FlashError(f"board home {self.home!r} is not usable; expected an absolute path "
                             "or ~/PATH on the board")
        if not self.remote_python.strip() or "\0" in self.remote_python:
            raise FlashError("remote python is empty; expected e.g. python3 or "
                             "/home/pi/.venv/bin/python")
        if self.connect_timeout <= 0 or self.timeout <= 0:
            raise FlashError("ssh timeouts must be positive numbers of seconds")
        options = tuple(self.ssh_options)
        for option in options:
            parsed = _split_option(option)
            if parsed is None:
                raise FlashError(f"ssh option {option!r} is not of the form Key=Value "
                                 "(e.g. IdentitiesOnly=yes)")
            why = _host_key_problem(*parsed)
            if why is not None:
                raise _refusal(f"ssh option {option!r}", why)
        object.__setattr__(self, "ssh_options", options)
        if self.known_hosts is not None and _is_null_file(str(self.known_hosts)):
            raise _refusal(f"known_hosts {str(self.known_hosts)!r}",
                           "it is empty or /dev/null, so no key can match")
        for name in ("ssh_config", "identity_file", "known_hosts"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())

    @classmethod
    def from_url(cls, url: str, **options: Any) -> "SSHTransport":
        """Build from ``ssh://[USER@]HOST[:PORT]/HOME[?python=PATH]``.

        Args:
            url: The target URL (see the module docstring for the forms).
            **options: Any other :class:`SSHTransport` field, e.g. ``ssh_config=Path(...)``;
                ``remote_python`` given here wins over ``?python=`` in the URL.

        Raises:
            FlashError: not an ssh URL, no host or no home path, a password in the URL, a bad
                port, or an unknown query parameter.
        """
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise FlashError(f"target {url!r} is not a valid ssh URL ({exc}); expected "
                             "ssh://USER@HOST[:PORT]/PATH") from None
        if parts.scheme.lower() != "ssh":
            raise FlashError(f"target {url!r} is not an ssh:// URL")
        if parts.password is not None:
            raise FlashError(f"target {url!r} contains a password; ssh:// targets use keys "
                             "(ssh-agent, ~/.ssh/config IdentityFile or --ssh-option), "
                             "never passwords")
        if not parts.hostname:
            raise FlashError(f"target {url!r} names no host; expected ssh://USER@HOST[:PORT]/PATH")
        home = unquote(parts.path)
        if home.startswith("/~"):  # /~/edgemeta, /~ or /~pi/edgemeta: relative to a user's home
            home = home[1:]
        home = home.rstrip("/") or home
        if not home or home == "/":
            raise FlashError(f"target {url!r} names no board home; expected ssh://USER@HOST/PATH, "
                             "e.g. ssh://pi@raspberrypi.local/home/pi/edgemeta or "
                             "ssh://pi@raspberrypi.local/~/edgemeta")
        if parts.fragment:
            raise FlashError(f"target {url!r} has a '#' fragment; ssh:// targets take none")
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"python"})
        if unknown:
            raise FlashError(f"target {url!r}: unknown query parameter(s) {unknown}; only "
                             "?python=PATH (the board's Python with edgemeta) is accepted")
        if "python" in query and options.get("remote_python") is None:
            options["remote_python"] = query["python"][-1]
        if options.get("remote_python") is None:
            options.pop("remote_python", None)
        user = unquote(parts.username) if parts.username else None
        return cls(host=parts.hostname, home=home, user=user, port=port, **options)

    @property
    def destination(self) -> str:
        """``user@host`` (or ``host``), as given to ssh and shown in messages."""
        return f"{self.user}@{self.host}" if self.user else self.host

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = (f"{self.user}@" if self.user else "") + host + (f":{self.port}" if self.port else "")
        path = quote(self.home if self.home.startswith("/") else "/" + self.home, safe="/~")
        query = ("" if self.remote_python == DEFAULT_REMOTE_PYTHON
                 else "?python=" + quote(self.remote_python, safe="/~"))
        return f"ssh://{netloc}{path}{query}"

    def remote_command(self, action: str, *args: str) -> str:
        """The shell command line the board runs, every argument quoted for its shell."""
        words = [REMOTE_MODULE, action, "--home", self.home, *args]
        return " ".join([_quote_remote_python(self.remote_python), "-m",
                         *(shlex.quote(w) for w in words)])

    def command(self, action: str, *args: str) -> list[str]:
        """The full ssh argv for one remote action (``install``, ``rollback`` or ``status``)."""
        argv = [self.ssh_binary,
                # First: ssh keeps the first value it sees for an option, and BatchMode must win
                # so that ssh fails instead of waiting for a password or a host-key prompt.
                "-o", "BatchMode=yes",
                "-T"]  # no pseudo-terminal: the bundle goes through stdin byte for byte
        if self.ssh_config is not None:
            argv += ["-F", str(self.ssh_config)]
        if self.identity_file is not None:
            argv += ["-i", str(self.identity_file)]
        if self.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={_quote_option_path(self.known_hosts)}"]
        for option in self.ssh_options:  # before our defaults, so the user's values win
            argv += ["-o", option.strip()]
        argv += ["-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
                 # A board that drops off the network is noticed within about a minute.
                 "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
        if self.port is not None:
            argv += ["-p", str(self.port)]
        # "--" first: nothing after it, the destination included, is read as an ssh option.
        argv += ["--", self.destination, self.remote_command(action, *args)]
        return argv

    def push(self, bundle_path: str | os.PathLike[str], *,
             allow_downgrade: bool = False) -> InstallResult:
        """Stream the bundle to the board and install it there.

        Raises:
            InstallError: the board refused or failed the install (its message and ``reason``);
                its previous model stays current.
            FlashError: the bundle cannot be read, ssh cannot connect or authenticate (host key
                mismatch included), edgemeta is missing on the board, or the command timed out.
        """
        args = ["--keep", str(self.keep), "--stdin"]
        if allow_downgrade:
            args.append("--allow-downgrade")
        try:
            with open(bundle_path, "rb") as source:
                reply = self._run("install", args, stdin=source)
        except OSError as exc:
            raise FlashError(f"cannot read bundle {bundle_path}: {exc}") from exc
        if not isinstance(reply.get("version"), str):
            raise FlashError(f"board {self.destination} reported success without a version: "
                             f"{reply!r}; check its edgemeta version")
        return _install_result(reply, self.home)

    def rollback(self) -> str:
        """Make the board's previous version current again; return that version."""
        return str(self._run("rollback", [])["version"])

    def status(self) -> dict[str, Any]:
        """The board's ``current`` version and ``installed`` versions, as the board reports them."""
        reply = self._run("status", [])
        return {"current": reply.get("current"), "installed": list(reply.get("installed") or [])}

    def check_host_key_checking(self) -> None:
        """Ask ssh itself (``ssh -G``, which connects nowhere) whether host keys will be checked.

        The options given here are checked when the transport is made; this also covers
        ``~/.ssh/config``, an ``-F`` file, their ``Include``s and ``Match`` blocks, exactly as the
        real command line will see them.

        Raises:
            FlashError: the effective configuration would accept an unknown or changed host key,
                or ssh cannot print its configuration in time; nothing was sent.
        """
        argv = self.command("status")
        probe = [argv[0], "-G", *argv[1:argv.index("--")], "--", self.destination]
        where = f"board {self.destination}"
        limit = min(_CONFIG_CHECK_TIMEOUT_S, self.timeout)
        try:
            proc = subprocess.run(probe, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=limit, check=False)
        except FileNotFoundError:
            raise FlashError(f"cannot run the OpenSSH client {self.ssh_binary!r}: not found; "
                             "install it (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise FlashError(f"{where}: 'ssh -G' did not print its configuration within "
                             f"{limit:g} s, so host-key checking cannot be confirmed (a slow "
                             "'Match exec' in ssh_config?); nothing was changed") from None
        if proc.returncode != 0:
            lines = _stderr_lines(proc.stderr)
            last = lines[-1] if lines else f"exit status {proc.returncode}"
            raise FlashError(f"{where}: ssh cannot read its configuration ({last}); nothing was "
                             "changed")
        config: dict[str, list[str]] = {}
        for line in proc.stdout.decode("utf-8", "replace").splitlines():
            key, _, value = line.strip().partition(" ")
            config.setdefault(key.lower(), value.split())
        strict = config.get("stricthostkeychecking")
        why = (_host_key_problem("stricthostkeychecking", strict) if strict
               else "ssh -G reported no StrictHostKeyChecking")
        for key in ("knownhostscommand", *_KNOWN_HOSTS_FILES):
            if why is None and config.get(key):
                why = _host_key_problem(key, config[key])
        if why is not None:
            raise _refusal(f"the ssh configuration in effect for {where} (ssh -G: the options, "
                           f"{self.ssh_config or '~/.ssh/config'} and the system ssh_config)",
                           why, "; nothing was changed")

    def _run(self, action: str, args: list[str], stdin: Any = subprocess.DEVNULL) -> dict[str, Any]:
        self.check_host_key_checking()
        argv = self.command(action, *args)
        try:
            proc = subprocess.run(argv, stdin=stdin, capture_output=True, timeout=self.timeout,
                                  check=False)
        except FileNotFoundError:
            raise FlashError(f"cannot run the OpenSSH client {self.ssh_binary!r}: not found; "
                             "install it (apt-get install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise FlashError(f"board {self.destination}: ssh {action} did not finish within "
                             f"{self.timeout:g} s and was stopped; the board's install is atomic, "
                             "so it has either its previous or the new model current") from None
        reply = _last_reply(proc.stdout)
        if reply is not None:
            if reply["ok"]:
                return reply
            raise InstallError(f"board {self.destination}: {reply.get('error', 'failed')}",
                               str(reply.get("reason") or "io"))
        raise self._no_reply_error(action, proc.returncode, _stderr_lines(proc.stderr))

    def _no_reply_error(self, action: str, code: int, lines: list[str]) -> FlashError:
        where = f"board {self.destination}"
        last = lines[-1] if lines else f"exit status {code}, no message"
        if code == 255:
            hostkey = _pick_line(lines, _HOSTKEY_MARKERS)
            if hostkey is not None:
                if any("IDENTIFICATION HAS CHANGED" in ln for ln in lines):
                    detail = "the board's host key differs from the one in known_hosts"
                elif any("host key is known" in ln for ln in lines):
                    detail = "the board's host key is not in known_hosts"
                else:
                    detail = "the board's host key could not be verified"
                return FlashError(
                    f"refusing to push to {where} over ssh: {hostkey} ({detail}); check the "
                    "board's key fingerprint, then update known_hosts (ssh-keygen -R HOST, "
                    "then ssh HOST once); nothing was changed")
            connect = _pick_line(lines, _CONNECT_MARKERS)
            if connect is not None:
                hint = ""
                if "Permission denied" in connect:
                    hint = ("; install your public key on the board (ssh-copy-id) or name the key "
                            "with --ssh-option IdentityFile=PATH")
                return FlashError(f"cannot reach {where} over ssh: {connect}{hint}; nothing was "
                                  "changed")
            return FlashError(f"ssh to {where} failed: {last}; if the connection broke during the "
                              "install, the board has either its previous or the new model "
                              "current (installs are atomic): check and push again")
        if code == 127 or any(_NO_MODULE_RE.search(ln) for ln in lines):
            return FlashError(
                f"{where}: {self.remote_python} cannot run {REMOTE_MODULE} ({last}); install "
                "edgemeta[device] on the board (pip install 'edgemeta[device]'), or name the "
                "Python that has it with ?python=/path/to/venv/bin/python or --remote-python; "
                "nothing was changed")
        return FlashError(f"{where}: the remote {action} gave no reply (exit status {code}): "
                          f"{last}")
