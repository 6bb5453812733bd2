"""The board-side packages ship py.typed (PEP 561), so their type hints must pass mypy.

mypy runs with the ``[tool.mypy]`` section of pyproject.toml (Python 3.10, the checked packages
in ``files``, the modules without stubs); it is in the ``dev`` extra. A cold run takes a few
seconds.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_board_side_packages_pass_mypy(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
         "--cache-dir", str(tmp_path / "mypy_cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert r.returncode == 0, f"mypy found problems:\n{r.stdout}{r.stderr}"
