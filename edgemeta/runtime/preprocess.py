"""Preprocessing, defined once and driven by the manifest.

The host calls :func:`preprocess_batch` on its training and evaluation images and the board calls
the same function on what it enrolls and classifies, so the board sees exactly what training saw.
Only numpy and Pillow are used.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgemeta.bundle.manifest import Preprocessing
from edgemeta.errors import InputError

__all__ = ["IMAGE_SUFFIXES", "ImageLike", "image_to_array", "load_image", "to_uint8_image",
           "preprocess", "preprocess_batch", "quantize_input", "shifted_views"]

ImageLike = Union[str, os.PathLike, np.ndarray]
# Files the agent and the folder loaders treat as images.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N")


def _wide_to_uint8(img: Image.Image) -> np.ndarray:
    # Pillow's convert("L") clips a 16-bit image to 0-255 instead of scaling it, which turns
    # all but the darkest grey levels white. I;16 modes are 16-bit by definition; mode "I" (how
    # older Pillow opens 16-bit PNGs, and 32-bit TIFFs) is taken as 16-bit when a value exceeds
    # 255, else as 8-bit values already.
    wide = np.asarray(img).astype(np.int64)
    out: np.ndarray
    if img.mode in _SIXTEEN_BIT or (wide.size and wide.max() > 255):
        out = np.round(wide / 257.0)
    else:
        out = wide
    out = np.clip(out, 0, 255).astype(np.uint8)
    key = img.info.get("transparency")
    if isinstance(key, int):  # a grey level marked transparent: white paper, like alpha below
        out[wide == key] = 255
    return out


def image_to_array(img: Image.Image) -> np.ndarray:
    """A decoded Pillow image as uint8 HxW (grayscale) or HxWx3; transparency becomes white paper.

    The one place where image modes are interpreted, shared by the board and the host's loaders.
    16-bit grayscale is scaled to 8 bits (not clipped).
    """
    if img.mode in _SIXTEEN_BIT or img.mode == "I":
        return _wide_to_uint8(img)
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info:
        return np.asarray(_flatten_alpha(img), dtype=np.uint8)
    if img.mode in ("L", "RGB"):
        return np.asarray(img, dtype=np.uint8)
    if img.mode in ("1", "F"):
        return np.asarray(img.convert("L"), dtype=np.uint8)
    return np.asarray(img.convert("RGB"), dtype=np.uint8)


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into a uint8 array (HxW for grayscale, HxWx3 for colour).

    Raises:
        InputError: the file is missing, is not an image Pillow can read, or has more than
            ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (a possible decompression bomb).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image file {p} does not exist; expected a path to a PNG/JPEG/BMP image")
    try:
        with Image.open(p) as img:
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that, and decodes the whole
            # image (up to ~180 megapixels): refuse it from the header instead, before decoding.
            limit = Image.MAX_IMAGE_PIXELS
            pixels = img.size[0] * img.size[1]
            if limit is not None and pixels > limit:
                raise InputError(f"{p} is {img.size[0]}x{img.size[1]} = {pixels} pixels; at most "
                                 f"{limit} pixels expected (PIL.Image.MAX_IMAGE_PIXELS)")
            img.load()
            return image_to_array(img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
            Image.DecompressionBombError) as exc:
        raise InputError(f"{p} is not a readable image ({exc}); expected a PNG/JPEG/BMP file") from exc


def _flatten_alpha(img: Image.Image) -> Image.Image:
    # Transparent pixels become white paper, which is what a drawn glyph sits on.
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_uint8_image(image: ImageLike) -> np.ndarray:
    """Validate an image given as a path or array; return a uint8 HxW or HxWx3 array.

    Accepts uint8 arrays HxW, HxWx1, HxWx3 or HxWx4 (alpha is composited onto white).
    """
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if not isinstance(image, np.ndarray):
        raise InputError(
            f"an image must be a file path or a uint8 numpy array, got {type(image).__name__}"
        )
    if image.dtype != np.uint8:
        raise InputError(
            f"image array has dtype {image.dtype}; expected uint8 (0-255) of shape HxW or HxWxC"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = np.asarray(_flatten_alpha(Image.fromarray(image, "RGBA")))
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise InputError(
            f"image array has shape {image.shape}; expected HxW (grayscale) or HxWxC with C in 1, 3, 4"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image array has shape {image.shape}; expected a non-empty image")
    return image


def preprocess(image: ImageLike, spec: Preprocessing) -> np.ndarray:
    """Turn one image into the float32 HxWxC network input described by ``spec``."""
    arr = to_uint8_image(image)
    mode = "L" if arr.ndim == 2 else "RGB"
    img = Image.fromarray(arr, mode)
    if spec.channels == 1 and mode != "L":
        img = img.convert("L")
    elif spec.channels == 3 and mode != "RGB":
        img = img.convert("RGB")
    height, width = spec.size
    if img.size != (width, height):
        img = img.resize((width, height), _RESAMPLE[spec.resample])
    out = np.asarray(img, dtype=np.float32) * np.float32(spec.scale)
    if spec.invert:
        out = np.float32(255.0 * spec.scale) - out
    if out.ndim == 2:
        out = out[:, :, None]
    return out


def preprocess_batch(images: Iterable[ImageLike] | np.ndarray, spec: Preprocessing) -> np.ndarray:
    """Preprocess many images into one float32 array of shape (N, H, W, C).

    A uint8 array of shape (N, H, W) or (N, H, W, C) is taken as N images; a 3-D array whose
    last axis is 1, 3 or 4 is refused as ambiguous (it is most likely one H x W x C image).

    Raises:
        InputError: an image is not of a kind :func:`to_uint8_image` accepts, or the batch
            array has the wrong number of dimensions.
    """
    items: Sequence[ImageLike]
    if isinstance(images, np.ndarray):
        if images.ndim not in (3, 4):
            raise InputError(
                f"a batch array must have shape (N, H, W) or (N, H, W, C), got {images.shape}; "
                "pass a list to give single images"
            )
        if images.ndim == 3 and images.shape[-1] in (1, 3, 4):
            # (H, W, C) of one image would otherwise be read as H images of W x C pixels.
            raise InputError(
                f"a batch array of shape {images.shape} looks like one image (H, W, C), not N "
                "grayscale images; pass [image] or a batch of shape (N, H, W, C)"
            )
        items = list(images)
    elif isinstance(images, (str, os.PathLike)):
        raise InputError("expected a list of images, got a single path; wrap it in a list")
    else:
        items = list(images)
    height, width = spec.size
    out = np.empty((len(items), height, width, spec.channels), dtype=np.float32)
    for i, item in enumerate(items):
        out[i] = preprocess(item, spec)
    return out


def shifted_views(x: np.ndarray, shifts: Sequence[tuple[int, int]]) -> np.ndarray:
    """Stack ``x`` (N, H, W, C) shifted by each (dy, dx), zero-filled: (len(shifts) * N, H, W, C).

    Views are grouped by shift (all images shifted by the first pair, then the second, ...).
    """
    n, h, w = x.shape[:3]
    out = np.zeros((len(shifts) * n, *x.shape[1:]), dtype=x.dtype)
    for v, (dy, dx) in enumerate(shifts):
        if abs(dy) >= h or abs(dx) >= w:
            continue  # shifted entirely out of the frame: an empty view
        src = x[:, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[v * n:(v + 1) * n, max(0, dy):h - max(0, -dy), max(0, dx):w - max(0, -dx)] = src
    return out


def quantize_input(x: np.ndarray, scale: float, zero_point: int, dtype: str = "int8") -> np.ndarray:
    """Quantise float input to the model's integer input type (round half to even, saturate).

    Raises:
        InputError: ``x`` holds NaN or infinite values (their cast to int is undefined).
    """
    if not np.isfinite(x).all():
        raise InputError("model input holds NaN or infinite values; expected finite floats "
                         "(preprocess images with preprocess_batch)")
    info = np.iinfo(np.dtype(dtype))
    q = np.round(x / np.float32(scale)) + zero_point
    return np.clip(q, info.min, info.max).astype(dtype)
