import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from edgemeta.errors import InputError, StateError
from edgemeta.runtime import PrototypeStore, classify_embeddings, compute_prototypes


def test_running_mean_equals_batch_mean():
    rng = np.random.default_rng(0)
    e = rng.normal(size=(9, 4)).astype(np.float32)
    s = PrototypeStore(4, "a" * 64)
    s.update("x", e[:2])
    s.update("x", e[2:7])
    s.update("x", e[7:])
    labels, means, counts = compute_prototypes(e, ["x"] * 9)
    np.testing.assert_allclose(s._means["x"], means[0], rtol=1e-5, atol=1e-6)
    assert s.count("x") == 9 and counts.tolist() == [9]


def test_classify_nearest_and_scores():
    protos = np.array([[0, 0], [10, 0]], np.float32)
    preds = classify_embeddings(np.array([[1, 0], [9, 1]], np.float32), ["a", "b"], protos)
    assert [p.label for p in preds] == ["a", "b"]
    assert all(0.5 < p.score <= 1.0 for p in preds)
    with pytest.raises(InputError, match="no classes"):
        classify_embeddings(np.zeros((1, 2), np.float32), [], np.zeros((0, 2)))


def test_forget_and_errors():
    s = PrototypeStore(2, "a" * 64)
    s.update("a", np.ones((1, 2), np.float32))
    with pytest.raises(InputError, match="expected \\(n >= 1, 2\\)"):
        s.update("a", np.ones((1, 3), np.float32))
    s.forget("a")
    with pytest.raises(InputError, match="not enrolled"):
        s.forget("a")


def test_save_load_round_trip(tmp_path):
    s = PrototypeStore(3, "b" * 64)
    s.update("cat", np.ones((2, 3), np.float32))
    s.update("dög", np.zeros((1, 3), np.float32))
    s.save(tmp_path / "p.npz")
    t = PrototypeStore.load(tmp_path / "p.npz")
    assert t.labels == ["cat", "dög"] and t.count("cat") == 2 and t.model_sha256 == "b" * 64
    empty = PrototypeStore(3, "b" * 64)
    empty.save(tmp_path / "e.npz")
    assert PrototypeStore.load(tmp_path / "e.npz").labels == []


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / "p.npz").write_bytes(b"garbage")
    with pytest.raises(StateError, match="unreadable"):
        PrototypeStore.load(tmp_path / "p.npz")


def test_survives_kill_during_save(tmp_path):
    """SIGKILL a process that saves in a loop; the file is always a complete old-or-new state."""
    path = tmp_path / "state" / "prototypes.npz"
    script = textwrap.dedent(f"""
        import numpy as np, sys
        from edgemeta.runtime import PrototypeStore
        s = PrototypeStore(64, "c" * 64)
        i = 0
        while True:
            i += 1
            s.update(f"class{{i % 50}}", np.full((1, 64), i, np.float32))
            s.save({str(path)!r})
            if i == 1:
                print("ready", flush=True)
    """)
    rng = np.random.default_rng(0)
    for trial in range(8):
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(float(rng.uniform(0.0, 0.2)))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        store = PrototypeStore.load(path)
        assert 1 <= len(store.labels) <= 50
        assert all(store.count(x) >= 1 for x in store.labels)
        leftovers = [p for p in path.parent.iterdir() if p.name != path.name]
        for p in leftovers:  # a temp file may remain after SIGKILL; it never replaces the state
            assert p.name.startswith(".prototypes.npz.tmp-")
            os.unlink(p)
