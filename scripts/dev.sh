#!/usr/bin/env bash
# Set up a fresh Debian machine (Python 3.11) and run the demo or the tests.
#   scripts/dev.sh demo [edgemeta demo options]
#   scripts/dev.sh test [pytest options]
# Idempotent: re-running reuses .venv and skips what is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-}"
shift || true
case "$what" in demo|test) ;; *) echo "usage: scripts/dev.sh demo|test [args]" >&2; exit 2 ;; esac

PY="${PYTHON:-python3}"
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO="sudo"; fi

apt_install() {
  # Install Debian packages only when missing; apt-get update once.
  local missing=()
  for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  echo "== apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
}

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

if [ ! -x .venv/bin/python ]; then
  echo "== creating .venv with $("$PY" --version)"
  "$PY" -m venv .venv
fi
stamp=.venv/.edgemeta-installed
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
tstamp=.venv-tflite/.edgemeta-installed
if [ ! -f "$tstamp" ] || [ pyproject.toml -nt "$tstamp" ]; then
  echo "== .venv-tflite: tflite-runtime 2.14 + numpy<2 + edgemeta (board side only)"
  "$PY" -m venv .venv-tflite
  .venv-tflite/bin/python -m pip install -q "tflite-runtime==2.14.0" "numpy<2" "pillow>=9.1" \
    "click>=8.1" "paho-mqtt>=2.1,<3" "psutil>=5.9" "rich>=13.0" "cryptography>=42"
  .venv-tflite/bin/python -m pip install -q --no-deps -e .
  touch "$tstamp"
fi
export EDGEMETA_TFLITE_PYTHON="$PWD/.venv-tflite/bin/python"

set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure here, not a pass" >&2
  exit 1
fi
exit "$rc"
