"""The 32-bit Pi OS board runtime: tflite-runtime 2.14 with numpy<2 and no TensorFlow, in its own
venv (made by scripts/dev.sh). A bundle installs there (health check and self-test on
tflite-runtime), enrolls and classifies, and its embeddings match ai-edge-litert's within ±2 LSB."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgemeta.bundle import read_bundle
from edgemeta.runtime import FewShotClassifier

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "omniglot-protonet.edgemeta"

_BOARD = r"""
import json, sys
sys.modules["tensorflow"] = None
import numpy as np
from edgemeta.bundle import generate_keypair, init_home, sign_bundle
from edgemeta.runtime import FewShotClassifier, available_backends
from firmware_bridge import install_bundle
tmp, shipped = sys.argv[1], sys.argv[2]
key = generate_keypair(tmp + "/k.key")
sign_bundle(shipped, key.private_path, out=tmp + "/b.edgemeta")
init_home(tmp + "/home", trust=[key.public_path], board="rpi-3bplus-32bit")
r = install_bundle(tmp + "/b.edgemeta", tmp + "/home")
clf = FewShotClassifier.load(tmp + "/home")
x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
print(json.dumps({"backends": available_backends(), "health": r.health.message,
                  "deviation": r.health.max_deviation, "backend": clf.backend,
                  "numpy": np.__version__, "emb": clf.embed(x).tolist()}))
"""


def test_install_and_embed_on_tflite_runtime(tmp_path):
    python = os.environ.get("EDGEMETA_TFLITE_PYTHON", str(ROOT / ".venv-tflite" / "bin" / "python"))
    if not Path(python).is_file():
        message = "no tflite-runtime venv (scripts/dev.sh test makes .venv-tflite)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must provide it", pytrace=False)
        pytest.skip(message)
    proc = subprocess.run([python, "-c", _BOARD, str(tmp_path), str(SHIPPED)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["backends"] == ["tflite_runtime"] and out["backend"] == "tflite_runtime"
    assert out["numpy"].startswith("1.")
    assert "self-test passed on tflite_runtime" in out["health"] and out["deviation"] <= 2
    litert = FewShotClassifier(read_bundle(SHIPPED))
    x = np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8)
    lsb = litert.manifest.output_scale
    # Averaged over the test-time views, ±2 LSB per view stays within ±2 LSB of the mean.
    assert np.max(np.abs(np.array(out["emb"]) - litert.embed(x))) <= 2 * lsb + 1e-6
