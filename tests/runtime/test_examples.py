"""The bounded sample of enrolled images that lets a model update re-learn every class."""

import numpy as np
import pytest

from edgemeta.bundle import Preprocessing
from edgemeta.errors import InputError
from edgemeta.runtime.examples import ExampleBank, from_uint8, reembed, to_uint8


def _imgs(n, value=0, size=(28, 28)):
    return np.full((n, *size, 1), value, np.uint8)


@pytest.mark.parametrize("spec", [Preprocessing(), Preprocessing(invert=False, scale=1 / 127.5)])
def test_uint8_round_trip_is_lossless(spec):
    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    assert np.array_equal(to_uint8(from_uint8(pixels, spec), spec), pixels)


def test_per_class_bound_keeps_a_uniform_sample():
    bank = ExampleBank(max_per_class=8)
    values = np.arange(200) % 256
    for v in values:
        bank.add("a", _imgs(1, v))
    kept = sorted(int(im[0, 0, 0]) for im in bank.images("a"))
    assert len(kept) == 8 and bank.seen("a") == 200
    # A reservoir over 200 images keeps images from all over the stream, not just the first 8.
    assert max(kept) > 100 and kept != list(range(8))


def test_total_bound_shrinks_the_largest_class_and_its_cap_stays():
    one = 28 * 28
    bank = ExampleBank(max_per_class=10, max_bytes=12 * one)
    bank.add("big", _imgs(10))
    bank.add("small", _imgs(4, 1))
    assert bank.nbytes <= 12 * one and len(bank.images("big")) == 8
    bank.add("big", _imgs(50, 2))  # more images: the sample is replaced, not grown
    assert len(bank.images("big")) == 8 and bank.nbytes <= 12 * one


def test_bad_images_are_refused_and_arrays_round_trip():
    bank = ExampleBank()
    with pytest.raises(InputError, match="uint8 batch"):
        bank.add("a", np.zeros((2, 28, 28, 1), np.float32))
    bank.add("a", _imgs(3, 5))
    with pytest.raises(InputError, match=r"\(28, 28, 1\)"):
        bank.add("a", _imgs(1, size=(32, 32)))
    again = ExampleBank.from_arrays(bank.to_arrays())
    assert again.labels == ["a"] and again.seen("a") == 3
    assert np.array_equal(again.images("a"), bank.images("a"))


def test_reembed_resizes_to_the_new_models_input_and_returns_those_images():
    bank = ExampleBank()
    bank.add("a", _imgs(2, 200))
    bank.add("rgb", np.zeros((1, 28, 28, 3), np.uint8))
    spec = Preprocessing(size=(32, 32))
    out = reembed(bank, lambda x: x.reshape(len(x), -1)[:, :4], spec)
    assert out.images["a"].shape == (2, 32, 32, 1) and out.skipped == ["rgb"]
    assert out.means["a"].shape == (4,)
    np.testing.assert_allclose(out.means["a"], 1 - 200 / 255, atol=1e-6)
