"""Synthetic Omniglot-like handwritten "characters", and writing datasets back to image folders.

Each class is a random template of 1-4 pen strokes; each drawing of it is the template redrawn
"by another hand" (jittered control points, a random affine transform, another pen width). The
templates make classes separable by a small CNN after meta-training, while the per-drawing
variation keeps raw-pixel nearest neighbour well short of that, so there is something to learn.

Everything derives from ``np.random.default_rng`` seeded through ``SeedSequence``, one stream
per class, so the output is byte-identical across runs and class ``c`` does not depend on
``n_classes`` (a smaller dataset is a prefix of a larger one with the same seed).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageDraw

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.errors import DataError

__all__ = ["make_glyph_dataset", "write_image_folder", "safe_class_dirname"]

PathLike = Union[str, "os.PathLike[str]"]

# Template geometry, in unit coordinates of the glyph box ([0, 1] x [0, 1], y down).
_BOX_LO, _BOX_HI = 0.2, 0.8
_POINTS_PER_SEGMENT = 8
# Per-drawing variation ("another hand"); tuned so that raw-pixel 1-NN is far from perfect.
_JITTER = 0.03  # std of control-point jitter, in glyph-box units
_MAX_ROTATION = np.deg2rad(10.0)
_SCALE_RANGE = (0.85, 1.15)
_MAX_SHEAR = 0.15
_MAX_SHIFT = 0.08  # fraction of the image size
_PEN_RANGE = (0.03, 0.05)  # pen width as a fraction of the image size


def _catmull_rom(points: np.ndarray, closed: bool) -> np.ndarray:
    """Sample a uniform Catmull-Rom spline passing through every one of ``points`` (M, 2)."""
    if closed:
        ctrl = np.concatenate([points[-1:], points, points[:2]])
    else:
        # Phantom points mirrored past the ends let the curve reach the first and last point
        # with a natural tangent instead of stopping one point short.
        ctrl = np.concatenate(
            [2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]]
        )
    t = np.linspace(0.0, 1.0, _POINTS_PER_SEGMENT, endpoint=False)[:, None]
    t2, t3 = t * t, t * t * t
    segments = []
    for i in range(len(ctrl) - 3):
        p0, p1, p2, p3 = ctrl[i], ctrl[i + 1], ctrl[i + 2], ctrl[i + 3]
        segments.append(
            0.5
            * (
                2 * p1
                + (p2 - p0) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (3 * p1 - p0 - 3 * p2 + p3) * t3
            )
        )
    segments.append(ctrl[-2][None] if not closed else ctrl[1][None])
    return np.concatenate(segments)


def _walk(rng: np.random.Generator, start: np.ndarray, n: int) -> np.ndarray:
    """``n`` points of a pen walk: steady steps that turn by at most ~85 degrees at a time.

    Uniformly random points give hairpin scribbles; a walk with bounded turning gives the
    arcs, hooks and zig-zags that handwritten strokes are made of.
    """
    pts = [start]
    heading = rng.uniform(0, 2 * np.pi)
    for _ in range(n - 1):
        heading += rng.uniform(-1.5, 1.5)
        step = rng.uniform(0.18, 0.35)
        nxt = pts[-1] + step * np.array([np.cos(heading), np.sin(heading)])
        if not (_BOX_LO <= nxt).all() or not (nxt <= _BOX_HI).all():
            # Turn back towards the middle instead of leaving the glyph box.
            heading = np.arctan2(*(0.5 - pts[-1])[::-1]) + rng.uniform(-0.6, 0.6)
            nxt = pts[-1] + step * np.array([np.cos(heading), np.sin(heading)])
        pts.append(np.clip(nxt, _BOX_LO, _BOX_HI))
    return np.array(pts)


def _make_template(rng: np.random.Generator) -> list[tuple[str, np.ndarray]]:
    """A class template: 1-4 strokes, each ``(kind, control points)``.

    Kinds: ``"curve"`` (spline through 3-5 points), ``"line"`` (2 points), ``"loop"`` (closed
    spline through 3-5 points) and ``"dot"`` (1 point). The whole template is then scaled to
    fill the central glyph box, as a writer fills the space given to one character.
    """
    n_strokes = int(rng.choice([1, 2, 3, 4], p=[0.2, 0.4, 0.28, 0.12]))
    strokes: list[tuple[str, np.ndarray]] = []
    for s in range(n_strokes):
        kind = str(rng.choice(["curve", "line", "loop", "dot"], p=[0.5, 0.27, 0.13, 0.1]))
        if kind == "dot" and s == 0:
            kind = "curve"  # a lone dot is not a character
        start = rng.uniform(_BOX_LO, _BOX_HI, size=2)
        if strokes and kind in ("curve", "line") and rng.random() < 0.5:
            # Pen strokes of a character usually touch: start on an earlier stroke.
            prev = _stroke_polyline(*strokes[int(rng.integers(len(strokes)))])
            start = prev[int(rng.integers(len(prev)))]
        if kind == "curve":
            pts = _walk(rng, start, int(rng.integers(3, 6)))
        elif kind == "line":
            pts = _walk(rng, start, 2)
        elif kind == "loop":
            # Points around a centre make a loop rather than a self-crossing scribble.
            n = int(rng.integers(3, 6))
            centre = rng.uniform(0.35, 0.65, size=2)
            radius = rng.uniform(0.08, 0.22, size=2)
            ang = np.sort(rng.uniform(0, 2 * np.pi, size=n)) + rng.uniform(0, 2 * np.pi)
            pts = centre + radius * np.stack([np.cos(ang), np.sin(ang)], axis=1)
            pts += rng.normal(0, 0.02, size=pts.shape)
        else:
            pts = start[None]
        strokes.append((kind, pts))
    return _fit_to_box(strokes)


def _fit_to_box(strokes: list[tuple[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    every = np.concatenate([_stroke_polyline(k, p) for k, p in strokes])
    lo, hi = every.min(axis=0), every.max(axis=0)
    extent = max(float((hi - lo).max()), 0.15)  # a near-point glyph is not blown up to a blob
    scale = (_BOX_HI - _BOX_LO) / extent
    centre = (lo + hi) / 2
    return [(k, (p - centre) * scale + 0.5) for k, p in strokes]


def _stroke_polyline(kind: str, pts: np.ndarray) -> np.ndarray:
    if kind in ("curve", "loop"):
        return _catmull_rom(pts, closed=kind == "loop")
    return pts


def _draw(
    template: list[tuple[str, np.ndarray]], rng: np.random.Generator, size: int, factor: int
) -> np.ndarray:
    """Render one drawing of ``template`` at ``factor`` x resolution, then box-downsample."""
    big = size * factor
    angle = rng.uniform(-_MAX_ROTATION, _MAX_ROTATION)
    scale = rng.uniform(*_SCALE_RANGE)
    shear = rng.uniform(-_MAX_SHEAR, _MAX_SHEAR)
    shift = rng.uniform(-_MAX_SHIFT, _MAX_SHIFT, size=2)
    c, s = np.cos(angle), np.sin(angle)
    affine = scale * np.array([[c, -s], [s, c]]) @ np.array([[1.0, shear], [0.0, 1.0]])
    pen = rng.uniform(*_PEN_RANGE) * big
    canvas = Image.new("L", (big, big), 255)
    draw = ImageDraw.Draw(canvas)
    for kind, pts in template:
        jittered = pts + rng.normal(0.0, _JITTER, size=pts.shape)
        line = _stroke_polyline(kind, jittered)
        xy = ((line - 0.5) @ affine.T + 0.5 + shift) * big
        width = max(1.0, pen * rng.uniform(0.85, 1.15))
        r = width / 2
        if kind == "dot":
            x, y = xy[0]
            r *= 1.3
            draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
            continue
        flat = [float(v) for v in xy.ravel()]
        draw.line(flat, fill=0, width=int(round(width)), joint="curve")
        if kind != "loop":
            for x, y in (xy[0], xy[-1]):  # round pen caps
                draw.ellipse((x - r, y - r, x + r, y + r), fill=0)
    return np.asarray(canvas.reduce(factor), dtype=np.uint8)


def make_glyph_dataset(
    n_classes: int = 200,
    per_class: int = 20,
    size: int = 56,
    seed: int = 0,
    name: str = "synthetic-glyphs",
) -> ImageClassDataset:
    """Generate Omniglot-like stroke-drawn characters (white background, dark ink).

    Args:
        n_classes: Number of character classes.
        per_class: Drawings per class.
        size: Image height and width in pixels.
        seed: Seed; the same arguments always give byte-identical images.
        name: Dataset name.

    Returns:
        A dataset with uint8 images ``(n_classes * per_class, size, size)``, classes named
        ``"glyph0000"``, ... and class groups ``""``.

    Raises:
        DataError: If ``n_classes`` or ``per_class`` is below 1 or ``size`` below 8.
    """
    for what, value, low in (
        ("n_classes", n_classes, 1),
        ("per_class", per_class, 1),
        ("size", size, 8),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise DataError(
                f"make_glyph_dataset: {what} must be an integer >= {low}, got {value!r}"
            )
    # 2-4x supersampling for anti-aliasing, bounded so big images stay fast.
    factor = int(np.clip(256 // size, 2, 4))
    images = np.empty((n_classes * per_class, size, size), dtype=np.uint8)
    for c, child in enumerate(np.random.SeedSequence(seed).spawn(n_classes)):
        rng = np.random.default_rng(child)
        template = _make_template(rng)
        for j in range(per_class):
            images[c * per_class + j] = _draw(template, rng, size, factor)
    labels = np.repeat(np.arange(n_classes, dtype=np.int64), per_class)
    width = max(4, len(str(n_classes - 1)))
    names = tuple(f"glyph{c:0{width}d}" for c in range(n_classes))
    return ImageClassDataset(images, labels, names, ("",) * n_classes, name)


_UNSAFE = re.compile(r"[^A-Za-z0-9._@()+-]")


def safe_class_dirname(class_name: str) -> str:
    """A folder name for a class: ``/`` becomes ``__``, other unusual characters ``_``.

    Leading dots are replaced too, because loaders skip hidden folders.
    """
    safe = _UNSAFE.sub("_", class_name.replace("/", "__").replace("\\", "__"))
    safe = re.sub(r"^\.", "_", safe)[:120]
    return safe or "_"


def _class_dirnames(class_names: Sequence[str]) -> list[str]:
    # Distinct names must stay distinct, also on case-insensitive file systems.
    used: set[str] = set()
    out = []
    for class_name in class_names:
        base = safe_class_dirname(class_name)
        candidate, n = base, 1
        while candidate.lower() in used:
            candidate = f"{base}-{n}"
            n += 1
        used.add(candidate.lower())
        out.append(candidate)
    return out


def write_image_folder(
    dataset: ImageClassDataset,
    out_dir: PathLike,
    indices: Sequence[int] | np.ndarray | None = None,
) -> Path:
    """Write images as ``<out_dir>/<class>/<index>.png``, readable by ``load_image_folder``.

    Class folder names come from :func:`safe_class_dirname` (made unique if two collide); file
    names are the zero-padded dataset indices, so reloading keeps the dataset's order. Existing
    files of the same name are overwritten; nothing is written outside ``out_dir``.

    Args:
        dataset: The images to write.
        out_dir: Target folder, created if missing.
        indices: Dataset indices to write; all images by default.

    Returns:
        ``out_dir`` as a :class:`Path`.

    Raises:
        DataError: On an index out of range or an ``out_dir`` that is not a folder.
    """
    out = Path(os.fspath(out_dir))
    if indices is None:
        chosen = np.arange(len(dataset))
    else:
        chosen = np.asarray(indices).ravel()
        if chosen.size and chosen.dtype.kind not in "iu":
            raise DataError(
                f"write_image_folder: indices must be integers, got dtype {chosen.dtype}"
            )
        bad = chosen[(chosen < 0) | (chosen >= len(dataset))]
        if bad.size:
            raise DataError(
                f"write_image_folder: indices {bad[:5].tolist()} out of range; "
                f"expected 0..{len(dataset) - 1}"
            )
    if out.exists() and not out.is_dir():
        raise DataError(f"write_image_folder: {out} exists and is not a folder")
    dirnames = _class_dirnames(dataset.class_names)
    digits = len(str(max(len(dataset) - 1, 0)))
    out.mkdir(parents=True, exist_ok=True)
    for i in chosen.tolist():
        folder = out / dirnames[int(dataset.labels[i])]
        folder.mkdir(exist_ok=True)
        image = dataset.images[i]
        if image.ndim == 3 and image.shape[2] == 1:
            image = image[:, :, 0]
        Image.fromarray(np.ascontiguousarray(image)).save(folder / f"{i:0{digits}d}.png")
    return out
