"""scripts/dev.sh with fake system tools on PATH: apt-get, sudo, id, dpkg-query and the venv
pythons are shell stubs that log their calls, so nothing is installed and no venv is built."""

import os
import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEV_SH = ROOT / "scripts" / "dev.sh"
BASH = shutil.which("bash")

pytestmark = pytest.mark.skipif(BASH is None, reason="needs bash")


def _stub(path: Path, body: str) -> None:
    path.write_text("#!" + BASH + "\n" + textwrap.dedent(body))
    path.chmod(0o755)


@pytest.fixture
def fakebin(tmp_path):
    """A PATH of stubs only (plus env and the coreutils the script uses): no real sudo or apt."""
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("env", "dirname", "touch", "rm", "cat"):
        os.symlink(shutil.which(tool), bin_ / tool)
    log = tmp_path / "calls.log"
    _stub(bin_ / "id", 'echo "${FAKE_UID:-1000}"\n')
    _stub(bin_ / "apt-get", f'echo "apt-get $* DEBIAN_FRONTEND=${{DEBIAN_FRONTEND:-}}" >> {log}\n')
    _stub(bin_ / "dpkg-query",
          'for a; do p="$a"; done\n'
          'case " ${FAKE_INSTALLED:-} " in *" $p "*) printf "install ok installed";; '
          '*) [ -n "${FAKE_STATUS:-}" ] && printf "%s" "$FAKE_STATUS" || exit 1;; esac\n')
    return bin_, log


def _with_sudo(bin_: Path, log: Path) -> None:
    # Like sudo's default env_reset: the caller's environment does not reach the command.
    _stub(bin_ / "sudo", f'echo "sudo $*" >> {log}\nexec env -i PATH="$PATH" "$@"\n')


def _source(bin_: Path, commands: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([BASH, "-c", f'source "{DEV_SH}"; {commands}'], capture_output=True,
                          text=True, timeout=30, env={"PATH": str(bin_), "HOME": "/nonexistent",
                                                      **env})


def test_apt_install_through_sudo_stays_noninteractive_and_updates_once(fakebin):
    bin_, log = fakebin
    _with_sudo(bin_, log)
    proc = _source(bin_, "apt_install mosquitto; apt_install openssh-server openssh-client")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert len(installs) == 2
    assert all("DEBIAN_FRONTEND=noninteractive" in c for c in installs), calls
    assert sum(c.startswith("apt-get update") for c in calls) == 1, calls


def test_root_runs_apt_without_sudo(fakebin):
    bin_, log = fakebin
    _stub(bin_ / "sudo", f'echo "sudo $*" >> {log}\nexit 1\n')
    proc = _source(bin_, "apt_install mosquitto", FAKE_UID="0")
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text()
    assert "sudo" not in calls and "apt-get install -y -qq mosquitto" in calls


def test_non_root_without_sudo_fails_with_a_clear_message(fakebin):
    bin_, log = fakebin
    proc = _source(bin_, "apt_install mosquitto", FAKE_UID="1000")
    assert proc.returncode != 0
    assert "run as root or install sudo" in proc.stderr
    assert not log.exists() or "apt-get install" not in log.read_text()


def test_installed_packages_are_skipped_but_removed_ones_are_installed(fakebin):
    bin_, log = fakebin
    proc = _source(bin_, "apt_install mosquitto openssh-server", FAKE_UID="0",
                   FAKE_INSTALLED="mosquitto", FAKE_STATUS="deinstall ok config-files")
    assert proc.returncode == 0, proc.stderr
    installs = [c for c in log.read_text().splitlines() if c.startswith("apt-get install")]
    assert len(installs) == 1 and installs[0].split()[-2] == "openssh-server", installs
    log.unlink()
    proc = _source(bin_, "apt_install mosquitto", FAKE_UID="0", FAKE_INSTALLED="mosquitto")
    assert proc.returncode == 0 and not log.exists()


def test_a_venv_without_a_working_pip_is_made_again(fakebin, tmp_path):
    bin_, log = fakebin
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    _stub(venv / "bin" / "python", f'echo "venv-python $*" >> {log}\nexit 1\n')
    (venv / ".edgemeta-installed").touch()
    _stub(bin_ / "python3", f'echo "python3 $*" >> {log}\n')
    proc = _source(bin_, f'ensure_venv "{venv}"')
    assert proc.returncode == 0, proc.stderr
    assert f"python3 -m venv --clear {venv}" in log.read_text()
    assert not (venv / ".edgemeta-installed").exists()


def _fake_checkout(tmp_path: Path, bin_: Path, log: Path) -> Path:
    """A copy of scripts/dev.sh in a checkout whose venvs are stubs that are up to date."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(DEV_SH, repo / "scripts" / "dev.sh")
    (repo / "pyproject.toml").write_text("")
    for venv in (".venv", ".venv-tflite"):
        (repo / venv / "bin").mkdir(parents=True)
        _stub(repo / venv / "bin" / "python",
              f'echo "{venv} $*" >> {log}\n'
              '[ "$1 $2" = "-m pytest" ] && exit "${FAKE_PYTEST_RC:-0}"\nexit 0\n')
        stamp = repo / venv / ".edgemeta-installed"
        stamp.touch()
        os.utime(stamp, (2e9, 2e9))
    for tool in ("mosquitto", "sshd", "python3"):
        _stub(bin_ / tool, "exit 0\n")
    return repo


@pytest.mark.parametrize("pytest_rc, expected", [(0, 0), (1, 1), (2, 2), (5, 1)])
def test_test_command_propagates_pytest_exit_code(fakebin, tmp_path, pytest_rc, expected):
    bin_, log = fakebin
    repo = _fake_checkout(tmp_path, bin_, log)
    proc = subprocess.run([BASH, str(repo / "scripts" / "dev.sh"), "test", "tests/x"],
                          capture_output=True, text=True, timeout=30,
                          env={"PATH": str(bin_), "FAKE_PYTEST_RC": str(pytest_rc)})
    assert proc.returncode == expected, proc.stderr
    calls = log.read_text()
    # Up-to-date venvs are reused: no apt, no pip install, just pytest with the caller's args.
    assert "apt-get" not in calls and "pip install" not in calls
    assert ".venv -m pytest -q -p no:cacheprovider tests/x" in calls
    if pytest_rc == 5:
        assert "collected no tests" in proc.stderr
