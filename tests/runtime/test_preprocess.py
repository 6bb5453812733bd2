import numpy as np
import pytest
from PIL import Image

from edgemeta.bundle import Preprocessing
from edgemeta.errors import InputError
from edgemeta.runtime import preprocess, preprocess_batch, quantize_input


def test_inverts_resizes_and_scales():
    img = np.full((105, 105), 255, np.uint8)
    img[40:60, 40:60] = 0  # black ink on white paper
    out = preprocess(img, Preprocessing())
    assert out.shape == (28, 28, 1) and out.dtype == np.float32
    assert out[0, 0, 0] == pytest.approx(0.0)          # paper -> 0
    assert out[13, 13, 0] == pytest.approx(1.0)        # ink -> 1


def test_path_rgb_rgba_and_gray_agree(tmp_path):
    gray = np.random.default_rng(0).integers(0, 256, (40, 30), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "g.png")
    rgb = np.repeat(gray[:, :, None], 3, axis=2)
    rgba = np.concatenate([rgb, np.full((40, 30, 1), 255, np.uint8)], axis=2)
    spec = Preprocessing()
    a = preprocess(tmp_path / "g.png", spec)
    for other in (gray, rgb, rgba, gray[:, :, None]):
        np.testing.assert_allclose(preprocess(other, spec), a, atol=1 / 255 + 1e-6)


@pytest.mark.parametrize("bad, msg", [
    (np.zeros((28, 28), np.float32), "dtype float32"),
    (np.zeros((2, 28, 28, 1, 1), np.uint8), "shape"),
    (np.zeros((28, 28, 2), np.uint8), "shape"),
    (np.zeros((0, 5), np.uint8), "non-empty"),
    ("/no/such/file.png", "does not exist"),
    (42, "file path or a uint8"),
])
def test_wrong_kinds_of_image(bad, msg):
    with pytest.raises(InputError, match=msg):
        preprocess(bad, Preprocessing())


def test_not_an_image_file(tmp_path):
    p = tmp_path / "x.png"
    p.write_text("hello")
    with pytest.raises(InputError, match="not a readable image"):
        preprocess(p, Preprocessing())


def test_batch_and_quantize_exact_for_unit_scale():
    imgs = np.random.default_rng(1).integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x = preprocess_batch(imgs, Preprocessing())
    assert x.shape == (3, 28, 28, 1)
    q = quantize_input(x, 1 / 255, -128)
    # With scale 1/255 and zero point -128 quantisation of inverted pixels is lossless.
    np.testing.assert_array_equal(q[..., 0].astype(int), (255 - imgs.astype(int)) - 128)
    with pytest.raises(InputError, match="single path"):
        preprocess_batch("a.png", Preprocessing())


@pytest.mark.parametrize("mode", ["LA", "RGBA", "P"])
def test_transparent_background_is_white_paper(tmp_path, mode):
    rgba = np.zeros((20, 20, 4), np.uint8)          # fully transparent...
    rgba[5:15, 8:12] = (0, 0, 0, 255)               # ...except an opaque black stroke
    img = Image.fromarray(rgba, "RGBA")
    if mode == "LA":
        img = img.convert("LA")
    elif mode == "P":
        img = img.convert("P", palette=Image.Palette.ADAPTIVE)
        img.info["transparency"] = img.getpixel((0, 0))
    img.save(tmp_path / "t.png")
    out = preprocess(tmp_path / "t.png", Preprocessing(size=(20, 20)))
    assert out[0, 0, 0] == pytest.approx(0.0)   # paper, not ink
    assert out[10, 10, 0] == pytest.approx(1.0)  # ink


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    Image.new("L", (400, 400), 255).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 400x400 is > 2x this: a "bomb"
    with pytest.raises(InputError, match="not a readable image"):
        preprocess(tmp_path / "big.png", Preprocessing())


def test_shifted_views_zero_fill_and_order():
    from edgemeta.runtime import shifted_views

    x = np.arange(2 * 4 * 4, dtype=np.float32).reshape(2, 4, 4, 1)
    v = shifted_views(x, ((0, 0), (1, 0), (0, -1), (9, 0)))
    assert v.shape == (8, 4, 4, 1)
    np.testing.assert_array_equal(v[:2], x)
    np.testing.assert_array_equal(v[2, 1:, :, 0], x[0, :3, :, 0])   # down by one
    assert not v[2, 0].any()                                         # filled with background
    np.testing.assert_array_equal(v[5, :, :3, 0], x[1, :, 1:, 0])   # left by one, image 2
    assert not v[6:].any()                                           # shifted out of frame


@pytest.mark.parametrize("mode", ["I;16", "I"])
def test_16_bit_grayscale_keeps_its_grey_levels(tmp_path, mode):
    """A 16-bit PNG (Pillow opens it as I;16, older Pillow as I) was clipped to 8 bits: every
    value above 255 (all but the darkest 0.4 % of the range) became white."""
    from edgemeta.runtime import load_image
    from edgemeta.runtime.preprocess import image_to_array

    ramp = np.linspace(0, 65535, 32 * 32).reshape(32, 32)
    if mode == "I":
        img = Image.fromarray(ramp.astype(np.int32), "I")
    else:
        img = Image.fromarray(ramp.astype(np.uint16))
    expected = np.round(ramp / 257).astype(np.uint8)
    arr = image_to_array(img)
    assert arr.dtype == np.uint8 and arr.shape == (32, 32)
    np.testing.assert_allclose(arr, expected, atol=1)
    name = "g16.png" if mode == "I;16" else "g32.tif"  # Pillow writes mode I as TIFF only
    img.save(tmp_path / name)
    assert Image.open(tmp_path / name).mode == mode
    loaded = load_image(tmp_path / name)
    np.testing.assert_allclose(loaded, expected, atol=1)
    assert loaded.mean() == pytest.approx(127.5, abs=1)


@pytest.mark.parametrize("shape", [(28, 28, 3), (28, 28, 4), (28, 28, 1)])
def test_one_colour_image_is_not_taken_for_a_batch(shape):
    """preprocess_batch(np.zeros((28, 28, 3))) used to read one RGB image as 28 images of 28x3
    pixels, so enroll("cat", rgb_array) enrolled 28 meaningless examples."""
    with pytest.raises(InputError, match="one image"):
        preprocess_batch(np.zeros(shape, np.uint8), Preprocessing())
    assert preprocess_batch([np.zeros(shape, np.uint8)], Preprocessing()).shape == (1, 28, 28, 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_quantize_refuses_non_finite_input(bad):
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 0, 0, 0] = bad
    with pytest.raises(InputError, match="finite"):
        quantize_input(x, 1 / 255, -128)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch):
    """Between MAX_IMAGE_PIXELS and twice that Pillow only warns and decodes the whole image
    (up to ~180 megapixels by default: more memory than a small board has)."""
    Image.new("L", (120, 120), 255).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 14,400 px: 1.44x the limit
    with pytest.raises(InputError, match="pixels"):
        preprocess(tmp_path / "big.png", Preprocessing())
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the user switched the limit off
    assert preprocess(tmp_path / "big.png", Preprocessing()).shape == (28, 28, 1)
