"""The board has no TensorFlow: board-side packages must import and work with it blocked."""

import subprocess
import sys
import textwrap

import pytest

BOARD_PACKAGES = ("edgemeta.runtime", "edgemeta.fleet", "edgemeta.bundle", "edgemeta.agent",
                  "firmware_bridge", "edgemeta.boards", "edgemeta.cli")


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("package", BOARD_PACKAGES)
def test_imports_with_tensorflow_blocked(package):
    r = _run(f"""
        import sys
        sys.modules["tensorflow"] = None
        import {package}
        leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")
                        and sys.modules[m] is not None)
        assert not leaked, leaked
        host = sorted(m for m in sys.modules if m.startswith(("edgemeta.data", "edgemeta.meta",
                                                               "edgemeta.quantize")))
        assert not host, host
    """)
    assert r.returncode == 0, r.stderr


def test_runtime_works_without_tensorflow(tmp_path):
    """Load a real int8 bundle, enroll, classify and persist with TensorFlow blocked."""
    from tests.host.tiny import tiny_bundle_path

    bundle = tiny_bundle_path()
    r = _run(f"""
        import sys
        sys.modules["tensorflow"] = None
        import numpy as np
        from edgemeta.runtime import FewShotClassifier
        from edgemeta.bundle import BoardHome, init_home
        from firmware_bridge import flash
        init_home({str(tmp_path)!r}, allow_unsigned=True)
        flash({str(bundle)!r}, "dir:{tmp_path}")
        clf = FewShotClassifier.load({str(tmp_path)!r})
        rng = np.random.default_rng(0)
        a = np.full((28, 28), 255, np.uint8); a[5:20, 10:14] = 0
        b = np.full((28, 28), 255, np.uint8); b[12:16, 3:25] = 0
        clf.enroll("vertical", [a]); clf.enroll("horizontal", [b])
        preds = clf.classify([a, b])
        assert [p.label for p in preds] == ["vertical", "horizontal"], preds
        clf.save()
        assert FewShotClassifier.load({str(tmp_path)!r}).labels == ["vertical", "horizontal"]
        assert clf.backend == "ai_edge_litert", clf.backend
        print("ok")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().endswith("ok")
