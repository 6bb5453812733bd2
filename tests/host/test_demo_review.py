"""``edgemeta demo`` shutdown: no agent outlives an interrupted shutdown or a SIGTERM to the demo."""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from edgemeta import demo

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# An agent still busy with its inbox pass: SIGTERM alone does not stop it in time.
STUBBORN = [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
            "signal.SIG_IGN); print('ready', flush=True); time.sleep(60)"]


class _InterruptedWait:
    """A process handle whose wait is interrupted, as by a second Ctrl-C during shutdown."""

    def __init__(self):
        self.signals = []

    def poll(self):
        return None

    def send_signal(self, sig):
        self.signals.append(sig)

    def wait(self, timeout=None):
        raise KeyboardInterrupt

    def kill(self):
        self.signals.append(signal.SIGKILL)


def test_interrupted_shutdown_still_stops_every_agent():
    first = _InterruptedWait()
    agent = subprocess.Popen(STUBBORN, stdout=subprocess.PIPE, text=True)
    try:
        assert agent.stdout.readline().strip() == "ready"
        with pytest.raises(KeyboardInterrupt):
            demo._stop_agents([first, agent], timeout_s=5)
        # The real agent after the interrupted wait is dead, not orphaned.
        assert agent.wait(timeout=5) is not None
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        agent.stdout.close()


def test_sigterm_to_the_demo_runs_its_cleanup(tmp_path):
    """Python's default SIGTERM skips finally blocks; the demo's broker/agent block must not."""
    script = textwrap.dedent("""
        import subprocess, sys, time
        from edgemeta.demo import _terminate_as_interrupt, _stop_agents
        agent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        print(agent.pid, flush=True)
        try:
            with _terminate_as_interrupt():
                try:
                    print("ready", flush=True)
                    time.sleep(30)
                finally:
                    _stop_agents([agent], timeout_s=5)
                    print("cleaned", flush=True)
        except KeyboardInterrupt:
            sys.exit(130)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    child = int(proc.stdout.readline())
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=20)
        assert "cleaned" in out
        assert proc.returncode == 130
        deadline = time.monotonic() + 5
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child)
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (dead, not yet reaped by init) counts as stopped.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
