"""Figure: the demo's unseen-class 5-way 1-shot accuracy, float vs int8 on the board, and wall time.

Runs the full ``edgemeta demo`` in-process (same code path as the CLI) and ends with one line:
``float=F int8=I drop_points=D board_1shot=B board_3shot=B3 board_5shot=B5 seconds=S``

    python benchmarks/demo_accuracy.py [--out DIR] [--broker auto|mosquitto|embedded]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgemeta.demo import BOARDS, DemoConfig, run_demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--broker", default="auto", choices=["auto", "mosquitto", "embedded"])
    args = parser.parse_args()
    out = args.out or Path(tempfile.mkdtemp(prefix="edgemeta-demo-bench-"))
    r = run_demo(out, DemoConfig(), broker_kind=args.broker)
    boards = " ".join(f"board_{shots}shot={r.board_accuracy[d]:.4f}" for d, _, shots in BOARDS)
    print(f"float={r.float_accuracy:.4f} int8={r.int8_accuracy:.4f} "
          f"drop_points={100 * (r.float_accuracy - r.int8_accuracy):+.2f} {boards} "
          f"seconds={r.seconds:.1f}")


if __name__ == "__main__":
    main()
