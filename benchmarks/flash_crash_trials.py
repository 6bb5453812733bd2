"""Figure: kill the installer at random moments; the board must always start with a working model
and every class it had enrolled.

    python benchmarks/flash_crash_trials.py --trials 100 [--seed 0] [--bundle B]

Each trial starts from the same board: version A of a real model installed (signed, trusted),
``--classes`` classes enrolled and saved. A child process imports everything, waits for a go,
then installs version B (a different model file, so the classes have to be re-learned); the
parent sends the go and SIGKILLs the child after a random delay drawn uniformly from 0 to 1.3×
the measured duration of an uninterrupted install, so kills land all over the install (the
staging write, the read-back, the health check, the re-learning, the pointer switch, the
pruning) and some after it. The board then "boots": FewShotClassifier loads the home (as the
agent does at start-up) and must find version A or B, healthy, with every enrolled class; a
follow-up install of B must then succeed (the leftovers of the killed one are swept).

Ends with: ``trials=N bricked=M lost_classes=L old=A_COUNT new=B_COUNT install_ms=T`` (targets:
M = 0 and L = 0).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from edgemeta.bundle import (
    BoardHome,
    generate_keypair,
    init_home,
    pack_bundle,
    read_bundle,
    sha256_hex,
    sign_bundle,
)
from edgemeta.runtime import FewShotClassifier, health_check
from firmware_bridge import install_bundle

ROOT = Path(__file__).resolve().parents[1]

_CHILD = r"""
import sys, time
from firmware_bridge import install_bundle
import edgemeta.runtime  # everything imported before the go, so kills land in the install
sys.stdout.write("ready\n"); sys.stdout.flush()
sys.stdin.readline()
t = time.perf_counter()
install_bundle(sys.argv[1], sys.argv[2])
sys.stdout.write(f"done {time.perf_counter() - t:.6f}\n"); sys.stdout.flush()
"""


def _prepare(work: Path, shipped: Path, classes: int) -> tuple[Path, Path, Path, list[str]]:
    key = generate_keypair(work / "release.key")
    a = read_bundle(shipped)
    a_path = work / "a.edgemeta"
    pack_bundle(replace(a.manifest, version="1.0.0"), a.model, a_path, signing_key=key.private_path)
    # B: another file for the board (trailing bytes after the flatbuffer), the same network.
    model_b = a.model + b"\0" * 64
    m_b = replace(a.manifest, version="2.0.0", model_sha256=sha256_hex(model_b),
                  model_bytes=len(model_b))
    b_path = pack_bundle(m_b, model_b, work / "b.edgemeta")
    sign_bundle(b_path, key.private_path)
    base = work / "base"
    init_home(base, trust=[key.public_path])
    install_bundle(a_path, base)
    clf = FewShotClassifier.load(base)
    rng = np.random.default_rng(0)
    labels = [f"class-{i}" for i in range(classes)]
    for label in labels:
        clf.enroll(label, rng.integers(0, 256, (3, 28, 28), dtype=np.uint8))
    clf.save()
    return base, a_path, b_path, labels


def _child(b_path: Path, home: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(b_path), str(home)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _boot(home: Path, labels: list[str]) -> tuple[str | None, int]:
    """(version the board starts with or None if bricked, number of enrolled classes lost)."""
    try:
        clf = FewShotClassifier.load(home)
        if not health_check(clf.bundle).ok:
            return None, len(labels)
    except Exception as exc:  # any failure to start is a bricked board
        print(f"  bricked: {exc.__class__.__name__}: {exc}", file=sys.stderr)
        return None, len(labels)
    return clf.manifest.version, len(set(labels) - set(clf.labels))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, default=5)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "omniglot-protonet.edgemeta")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    with tempfile.TemporaryDirectory(prefix="edgemeta-crash-") as tmp:
        work = Path(tmp)
        base, _, b_path, labels = _prepare(work, args.bundle, args.classes)
        durations = []
        for i in range(3):  # calibrate: how long an uninterrupted install takes here
            home = work / f"calib-{i}"
            shutil.copytree(base, home)
            proc = _child(b_path, home)
            out, _ = proc.communicate("go\n", timeout=60)
            durations.append(float(out.split()[-1]))
        install_s = float(np.median(durations))
        bricked = lost = old = new = 0
        for trial in range(args.trials):
            home = work / f"trial-{trial}"
            shutil.copytree(base, home)
            proc = _child(b_path, home)
            delay = float(rng.uniform(0.0, 1.3 * install_s))
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
            time.sleep(delay)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            version, missing = _boot(home, labels)
            bricked += version is None
            lost += missing
            old += version == "1.0.0"
            new += version == "2.0.0"
            if version is not None:  # the next update must work despite the killed one
                install_bundle(b_path, home)
                if BoardHome.at(home).current_version() != "2.0.0" or \
                        _boot(home, labels) != ("2.0.0", 0):
                    print(f"  trial {trial}: re-install after the kill failed", file=sys.stderr)
                    bricked += 1
            shutil.rmtree(home)
    print(f"trials={args.trials} bricked={bricked} lost_classes={lost} old={old} new={new} "
          f"install_ms={install_s * 1000:.1f}")


if __name__ == "__main__":
    main()
