"""Figure: over-the-air flashing of one bundle to N simulated boards through a loopback mosquitto.

    python benchmarks/ota_fleet.py --boards 100 [--bundle models/omniglot-protonet.edgemeta]

The script starts its own mosquitto (``edgemeta.fleet.start_broker``), gives every simulated
board its own home in a temp dir (trusting a fresh signing key, with version 1.0.0 of the model
installed) and its own MQTT connection with a :class:`firmware_bridge.ota.BoardOta`, then sends
version 1.1.0 (same model, signed, with its self-test vector) to all of them at once from one
:class:`firmware_bridge.ota.OtaEngine`. Each board reassembles the chunks, checks the bundle's
SHA-256, and ``install_bundle`` verifies the signature, health-checks the model (LiteRT loads it
and runs the self-test vector) and switches atomically. The clock runs from the first offer until
every board answered; setup (keys, homes, connections) is not timed.

Ends with: ``boards=N installed=N failed=F seconds=S wire_bytes=B bundle_bytes=K``
(wire_bytes: MQTT payload bytes of offers, chunks and board statuses).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import dataclasses
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from edgemeta.bundle import (
    BoardHome, SelfTest, generate_keypair, init_home, load_private_key, pack_bundle, read_bundle,
)
from edgemeta.fleet import start_broker
from edgemeta.runtime.backends import load_interpreter
from edgemeta.runtime.embedder import input_details, invoke_batch
from firmware_bridge import install_bundle
from firmware_bridge.ota import BoardOta, OtaEngine

ROOT = Path(__file__).resolve().parents[1]


def make_bundles(source: Path, work: Path) -> tuple[Path, Path, Path]:
    """(v1, v2, public key): the source model repacked as 1.0.0 and 1.1.0, signed, self-tested."""
    keys = generate_keypair(work / "release.key")
    private = load_private_key(keys.private_path)
    bundle = read_bundle(source)
    self_test = bundle.manifest.self_test
    if self_test is None:  # an older bundle: record what the board runtime computes now
        interp = load_interpreter(bundle.model).interpreter
        interp.allocate_tensors()
        shape = tuple(int(d) for d in input_details(interp)["shape"][1:])
        x = np.random.default_rng(0).integers(-128, 128, (1, *shape), dtype=np.int8)
        y = invoke_batch(interp, x).astype(np.int8)
        self_test = SelfTest(input=base64.b64encode(x.tobytes()).decode(),
                             expected=base64.b64encode(y.tobytes()).decode())
    out = []
    for version in ("1.0.0", "1.1.0"):
        manifest = dataclasses.replace(bundle.manifest, version=version, self_test=self_test)
        out.append(pack_bundle(manifest, bundle.model, work / f"model-{version}.edgemeta",
                               signing_key=private))
    return out[0], out[1], keys.public_path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--boards", type=int, default=100)
    p.add_argument("--bundle", type=Path, default=ROOT / "models" / "omniglot-protonet.edgemeta")
    p.add_argument("--timeout", type=float, default=120.0)
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    work = Path(tempfile.mkdtemp(prefix="edgemeta-ota-bench-"))
    try:
        with contextlib.ExitStack() as stack:
            v1, v2, public = make_bundles(args.bundle, work)
            data = v2.read_bytes()
            version = read_bundle(data).version
            broker = stack.enter_context(start_broker("mosquitto", workdir=work))
            t_setup = time.perf_counter()
            homes = []
            for i in range(args.boards):
                home = work / f"board-{i:03d}"
                init_home(home, trust=[public])
                install_bundle(v1, home, health_check=False)  # the model in service before
                homes.append(home)
            boards = [BoardOta(broker.url, home, f"pi-{i:03d}", "bench", tick_s=None)
                      for i, home in enumerate(homes)]
            for board in boards:
                board.start()
                stack.callback(board.stop)
            engine = stack.enter_context(OtaEngine(broker.url, answer_timeout_s=30.0))
            print(f"setup: {args.boards} homes and connections in "
                  f"{time.perf_counter() - t_setup:.1f} s; bundle {v2.name} {len(data)} bytes")

            t0 = time.perf_counter()
            transfers = [engine.send("bench", b.device_id, data, version=version,
                                     timeout_s=args.timeout) for b in boards]
            engine.wait(transfers, args.timeout + 5)
            seconds = time.perf_counter() - t0

            installed = failed = 0
            for t, home in zip(transfers, homes):
                current = BoardHome.at(home).current_version()
                if t.ok and current == version:
                    installed += 1
                else:
                    failed += 1
                    print(f"  {t.device}: {t.state} {t.reason}: {t.message} (current {current})")
            slowest = max(t.seconds for t in transfers)
            print(f"chunks per board: {transfers[0].offer.chunks}; chunks sent: "
                  f"{sum(t.chunks_sent for t in transfers)}; slowest board {slowest:.2f} s")
            print(f"boards={args.boards} installed={installed} failed={failed} "
                  f"seconds={seconds:.2f} wire_bytes={engine.wire_bytes} bundle_bytes={len(data)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
