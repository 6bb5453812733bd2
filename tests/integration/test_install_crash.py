"""Kill the installer at random moments (the benchmark script, at small scale): the board always
starts with a working model and all its classes. The 100-trial figure is in docs/benchmarks.md."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_random_kills_never_brick_or_forget():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "flash_crash_trials.py"),
                           "--trials", "15", "--seed", "7"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fields = dict(kv.split("=") for kv in proc.stdout.strip().splitlines()[-1].split())
    assert fields["trials"] == "15"
    assert fields["bricked"] == "0" and fields["lost_classes"] == "0", proc.stdout
    assert int(fields["old"]) + int(fields["new"]) == 15
