#!/usr/bin/env bash
# Set up a fresh Debian machine (Python 3.11) and run the demo or the tests.
#   scripts/dev.sh demo [edgemeta demo options]
#   scripts/dev.sh test [pytest options]
# Idempotent: re-running reuses .venv and skips what is installed.
# Sourcing the file only defines the functions (the tests call them with a fake apt-get).
set -euo pipefail

PY="${PYTHON:-python3}"
APT_UPDATED=""

as_root() {
  # Run a command as root: directly when root, else through sudo. sudo resets the environment,
  # so variables are passed with env on the command line rather than exported.
  if [ "$(id -u)" = 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "scripts/dev.sh: installing Debian packages needs root; run as root or install sudo" \
      "(missing: $*)" >&2
    return 1
  fi
}

pkg_installed() {
  # dpkg -s also succeeds for a removed package whose config files remain ("deinstall").
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

apt_install() {
  # Install Debian packages only when missing; apt-get update once per run.
  local missing=() pkg
  for pkg in "$@"; do pkg_installed "$pkg" || missing+=("$pkg"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "== apt-get install ${missing[*]}"
  if [ -z "$APT_UPDATED" ]; then
    as_root apt-get update -qq
    APT_UPDATED=1
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

ensure_venv() {
  # A venv whose creation was interrupted (or made without pip) has a python but no pip: give it
  # pip, or make it again if its python does not run.
  local dir="$1"
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  if [ -x "$dir/bin/python" ] && "$dir/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 \
      && "$dir/bin/python" -m pip --version >/dev/null 2>&1; then
    return 0
  fi
  echo "== creating $dir with $("$PY" --version)"
  "$PY" -m venv --clear "$dir"
  rm -f "$dir/.edgemeta-installed"
}

main() {
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
  local what="${1:-}"
  shift || true
  case "$what" in demo|test) ;; *) echo "usage: scripts/dev.sh demo|test [args]" >&2; exit 2 ;; esac

  # The broker for integration tests (the demo falls back to an embedded broker without it).
  if [ "$what" = test ] && ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    apt_install mosquitto
  fi
  # A real OpenSSH server (and the ssh client and ssh-keygen) for the ssh:// transport tests.
  if [ "$what" = test ] && ! command -v sshd >/dev/null 2>&1 && [ ! -x /usr/sbin/sshd ]; then
    apt_install openssh-server openssh-client
  fi
  # Debian's python3 ships without venv/ensurepip.
  if ! "$PY" -c "import venv, ensurepip" >/dev/null 2>&1; then
    apt_install python3-venv
  fi

  ensure_venv .venv
  local stamp=.venv/.edgemeta-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    echo "== pip install -e .[host,device,dev] (TensorFlow is large: a few minutes the first time)"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -e ".[host,device,dev]"
    touch "$stamp"
  fi

  if [ "$what" = demo ]; then
    exec .venv/bin/edgemeta demo "$@"
  fi

  # The board runtime of 32-bit Pi OS is tflite-runtime (numpy<2, no TensorFlow): a second, small
  # venv so the tests also install and run bundles on it (tests/integration/test_tflite_runtime.py).
  ensure_venv .venv-tflite
  local tstamp=.venv-tflite/.edgemeta-installed
  if [ ! -f "$tstamp" ] || [ pyproject.toml -nt "$tstamp" ]; then
    echo "== .venv-tflite: tflite-runtime 2.14 + numpy<2 + edgemeta (board side only)"
    .venv-tflite/bin/python -m pip install -q "tflite-runtime==2.14.0" "numpy<2" "pillow>=9.1" \
      "click>=8.1" "paho-mqtt>=2.1,<3" "psutil>=5.9" "rich>=13.0" "cryptography>=42"
    .venv-tflite/bin/python -m pip install -q --no-deps -e .
    touch "$tstamp"
  fi
  export EDGEMETA_TFLITE_PYTHON="$PWD/.venv-tflite/bin/python"

  local rc=0
  .venv/bin/python -m pytest -q -p no:cacheprovider "$@" || rc=$?
  if [ "$rc" -eq 5 ]; then
    echo "pytest collected no tests: that is a failure here, not a pass" >&2
    exit 1
  fi
  exit "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
