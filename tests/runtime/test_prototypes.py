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


@pytest.mark.parametrize("label", ["a\x00", "\x00", "\ud800"])
def test_labels_that_cannot_be_saved_are_refused(label):
    """numpy drops trailing NULs when saving ("a\\x00" comes back as "a", colliding with a real
    "a" and making the whole state file unreadable); a lone surrogate cannot be encoded."""
    with pytest.raises(InputError, match="label"):
        PrototypeStore.validate_label(label)


def test_every_valid_label_survives_a_round_trip(tmp_path):
    s = PrototypeStore(2, "a" * 64)
    labels = ["a", " a", "a ", "a\tb", "x" * 200, "\u732b", "\U0001f408"]
    for i, label in enumerate(labels):
        s.update(PrototypeStore.validate_label(label), np.full((1, 2), i, np.float32))
    s.save(tmp_path / "p.npz")
    assert PrototypeStore.load(tmp_path / "p.npz").labels == labels


def _write_state(path, **overrides):
    s = PrototypeStore(2, "a" * 64)
    s.update("a", np.ones((1, 2), np.float32))
    with np.load(__import__("io").BytesIO(s.to_bytes())) as data:
        arrays = {k: data[k] for k in data.files}
    arrays.update(overrides)
    np.savez(path, **arrays)


@pytest.mark.parametrize("overrides", [
    {"means": np.array([[np.nan, 1.0]], np.float32)},
    {"means": np.array([[np.inf, 1.0]], np.float32)},
    {"labels": np.array([""])},
    {"means": np.zeros((1, 0), np.float32)},
])
def test_tampered_state_values_are_state_errors(tmp_path, overrides):
    _write_state(tmp_path / "p.npz", **overrides)
    with pytest.raises(StateError):
        PrototypeStore.load(tmp_path / "p.npz")


def test_examples_of_a_class_with_no_images_are_dropped(tmp_path):
    """A state file naming a class in its examples but holding no image of it: that class gets
    no (empty) sample, which later crashed np.stack when the class was enrolled again."""
    _write_state(tmp_path / "p.npz", ex_labels=np.array(["a"]), ex_seen=np.array([3]),
                 ex_index=np.zeros((0,), np.int64), ex_images=np.zeros((0, 1, 1, 1), np.uint8))
    store = PrototypeStore.load(tmp_path / "p.npz")
    assert store.labels == ["a"] and store.examples.labels == []


def test_classify_with_embeddings_of_another_size_is_an_input_error():
    s = PrototypeStore(2, "a" * 64)
    s.update("a", np.ones((1, 2), np.float32))
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        s.classify(np.ones((1, 3), np.float32))


def test_full_disk_while_saving_keeps_the_old_state(tmp_path, monkeypatch):
    import errno

    path = tmp_path / "p.npz"
    old = PrototypeStore(2, "a" * 64)
    old.update("old", np.ones((1, 2), np.float32))
    old.save(path)
    new = PrototypeStore(2, "a" * 64)
    new.update("new", np.ones((1, 2), np.float32))

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(StateError, match=f"cannot save.*{path.name}.*No space left"):
        new.save(path)
    monkeypatch.undo()
    assert PrototypeStore.load(path).labels == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["p.npz"]  # no temporary file left behind
