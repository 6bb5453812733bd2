"""Loaders for image folders and for Omniglot (folders or the original zips, read in place).

Both loaders decode every image to 8-bit grayscale ("L") and stack them into one
:class:`ImageClassDataset`. Listing order is sorted, so the same files always give the same labels.
"""

from __future__ import annotations

import io
import os
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Union

import numpy as np
from PIL import Image

from edgemeta.data.dataset import ImageClassDataset
from edgemeta.errors import DataError
from edgemeta.runtime.preprocess import IMAGE_SUFFIXES, image_to_array

__all__ = ["IMAGE_SUFFIXES", "load_dataset_folder", "load_image_folder", "load_omniglot"]

_OMNIGLOT_LAYOUT = "<alphabet>/<character>/<drawing>.png"
_FOLDER_LAYOUT = "<class>/<image>.png (or .jpg/.jpeg/.bmp)"

PathLike = Union[str, "os.PathLike[str]"]

# What reading one member of a damaged archive raises: bad CRC (BadZipFile), bad deflate data
# (zlib.error), a cut-off stream (EOFError), an encrypted member (RuntimeError), an unknown
# compression method (NotImplementedError).
_READ_ERRORS = (OSError, KeyError, EOFError, RuntimeError, NotImplementedError, ValueError,
                zipfile.BadZipFile, zlib.error)


class _LayoutError(DataError):
    """The source is not laid out as the loader expects (as opposed to damaged content).

    ``deep``: it has images below class level, so it is more likely a wrongly nested Omniglot
    tree than a class folder, and this message is the more useful one.
    """

    def __init__(self, message: str, deep: bool = False) -> None:
        super().__init__(message)
        self.deep = deep


@dataclass(frozen=True)
class _Entry:
    """A file or folder inside a source, as path parts relative to the source root."""

    parts: tuple[str, ...]
    is_dir: bool


class _Source:
    """A folder or a zip archive, listed and read through the same two methods."""

    def __init__(self, path: Path, zf: zipfile.ZipFile | None, max_depth: int) -> None:
        self.path = path
        self._zip = zf
        self._max_depth = max_depth
        # Listed parts -> the member's stored name: './a/b.png' and 'a//b.png' list as ('a', 'b.png').
        self._members: dict[tuple[str, ...], str] = {}

    def entries(self) -> Iterator[_Entry]:
        if self._zip is not None:
            for info in self._zip.infolist():
                parts = tuple(p for p in PurePosixPath(info.filename).parts if p not in ("", "/"))
                if parts and not _ignored(parts):
                    self._members.setdefault(parts, info.filename)
                    yield _Entry(parts, info.is_dir())
            return
        root = str(self.path)
        for dirpath, dirnames, filenames in os.walk(root):
            rel = Path(dirpath).relative_to(self.path).parts
            # Don't wander into an unrelated tree (someone passing their home directory).
            dirnames[:] = [] if len(rel) + 1 > self._max_depth else sorted(dirnames)
            if rel and not _ignored(rel):
                yield _Entry(rel, True)
            for f in filenames:
                if not _ignored(rel + (f,)):
                    yield _Entry(rel + (f,), False)

    def read(self, parts: tuple[str, ...]) -> bytes:
        if self._zip is not None:
            return self._zip.read(self._members.get(parts, "/".join(parts)))
        return self.path.joinpath(*parts).read_bytes()

    def describe(self, parts: tuple[str, ...]) -> str:
        return f"{self.path}:{'/'.join(parts)}" if self._zip else str(self.path.joinpath(*parts))

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()


def _ignored(parts: tuple[str, ...]) -> bool:
    # macOS and Windows litter archives with these; they are never part of a dataset.
    return any(p.startswith(".") or p == "__MACOSX" or p == "Thumbs.db" for p in parts)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES)


def _open_source(path: PathLike, *, allow_zip: bool, max_depth: int, what: str) -> _Source:
    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        return _Source(p, None, max_depth)
    if not p.exists():
        raise DataError(
            f"{what} {p} does not exist; expected a folder" + (" or a .zip" if allow_zip else "")
        )
    if not allow_zip:
        raise DataError(
            f"{what} {p} is not a folder; expected a folder laid out as {_FOLDER_LAYOUT}"
        )
    try:
        zf = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(
            f"{what} {p} is neither a folder nor a readable .zip archive ({exc})"
        ) from exc
    return _Source(p, zf, max_depth)


def _decode(data: bytes, where: str) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # forces a full decode, so truncation shows here
            # The board's own decoding (transparency onto white paper), then grayscale.
            return Image.fromarray(image_to_array(im)).convert("L")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(
            f"cannot read image {where}: {exc}; expected a valid PNG/JPEG/BMP file"
        ) from exc


def _check_size(size: tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError) as exc:
        raise DataError(f"size must be (height, width), got {size!r}") from exc
    if h < 1 or w < 1:
        raise DataError(f"size must be (height, width) with both > 0, got {size!r}")
    return h, w


def _stack(
    files: Sequence[tuple[_Source, tuple[str, ...], int]],
    size: tuple[int, int] | None,
    mixed_size: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode ``(source, parts, label)`` triples into one uint8 array and their labels.

    Without ``size``, images of different sizes are resized to ``mixed_size`` if given (the
    whole set is decoded again), and are an error otherwise.
    """
    images: np.ndarray | None = None
    first_where = ""
    for i, (src, parts, _) in enumerate(files):
        where = src.describe(parts)
        try:
            data = src.read(parts)
        except _READ_ERRORS as exc:
            raise DataError(
                f"cannot read {where}: {str(exc) or exc.__class__.__name__}; expected an intact, "
                "unencrypted file (re-download or re-create the archive)"
            ) from exc
        im = _decode(data, where)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(im, dtype=np.uint8)
        if images is None:
            images = np.empty((len(files),) + arr.shape, dtype=np.uint8)
            first_where = where
        elif arr.shape != images.shape[1:]:
            if mixed_size is not None:
                return _stack(files, mixed_size)
            raise DataError(
                f"images differ in size: {where} is {arr.shape[1]}x{arr.shape[0]} but "
                f"{first_where} is {images.shape[2]}x{images.shape[1]} (width x height); "
                "pass size=(height, width) to resize them all"
            )
        images[i] = arr
    assert images is not None  # callers never pass an empty list
    return images, np.array([label for _, _, label in files], dtype=np.int64)


def load_image_folder(
    path: PathLike,
    size: tuple[int, int] | None = None,
    name: str | None = None,
    *,
    mixed_size: tuple[int, int] | None = None,
) -> ImageClassDataset:
    """Load a folder with one subfolder of images per class.

    Layout: ``<path>/<class>/*.png`` (also ``.jpg``, ``.jpeg``, ``.bmp``). Classes and files are
    sorted by name; hidden files and non-image files are ignored. Images become grayscale.

    Args:
        path: The folder.
        size: ``(height, width)`` to resize every image to (Pillow bilinear). Without it all
            images must already share one size.
        name: Dataset name; defaults to the folder's name.
        mixed_size: ``(height, width)`` to resize every image to if, and only if, they do not
            share one size (e.g. the model's input size, which the board resizes any image to).

    Returns:
        A dataset whose class names are the subfolder names and whose class groups are ``""``.

    Raises:
        DataError: Missing folder, wrong layout, a class without images, an unreadable image,
            or mixed image sizes without ``size``.
    """
    size, mixed_size = _check_size(size), _check_size(mixed_size)
    src = _open_source(path, allow_zip=False, max_depth=3, what="image folder")
    classes: dict[str, list[str]] = {}
    nested: set[str] = set()
    stray: list[str] = []
    for e in src.entries():
        if e.is_dir:
            if len(e.parts) == 1:
                classes.setdefault(e.parts[0], [])
            else:
                nested.add(e.parts[0])
        elif _is_image(e.parts[-1]):
            if len(e.parts) == 2:
                classes.setdefault(e.parts[0], []).append(e.parts[1])
            elif len(e.parts) == 1:
                stray.append(e.parts[0])
    if stray:
        raise _LayoutError(
            f"image folder {src.path} has images directly inside it (e.g. {sorted(stray)[0]!r}); "
            f"expected {_FOLDER_LAYOUT}, one subfolder per class"
        )
    if not classes:
        raise _LayoutError(
            f"image folder {src.path} has no class subfolders; expected {_FOLDER_LAYOUT}"
        )
    files: list[tuple[_Source, tuple[str, ...], int]] = []
    for label, cls in enumerate(sorted(classes)):
        if not classes[cls]:
            hint = (
                "; it only has subfolders (an Omniglot-style <alphabet>/<character> tree? "
                "use load_omniglot)"
                if cls in nested
                else ""
            )
            raise _LayoutError(
                f"class folder {src.path / cls} has no images{hint}; expected {_FOLDER_LAYOUT}"
            )
        files.extend((src, (cls, f), label) for f in sorted(classes[cls]))
    images, labels = _stack(files, size, mixed_size)
    names = tuple(sorted(classes))
    return ImageClassDataset(images, labels, names, ("",) * len(names), name or src.path.name)


def _omniglot_classes(src: _Source) -> dict[tuple[str, str], list[tuple[str, ...]]]:
    """Map ``(alphabet, character)`` to the full entry parts of its images, for one source."""
    entries = list(src.entries())
    images = [e.parts for e in entries if not e.is_dir and _is_image(e.parts[-1])]
    if not images:
        raise _LayoutError(
            f"Omniglot source {src.path} holds no images; expected {_OMNIGLOT_LAYOUT}"
        )
    depths = {len(p) for p in images}
    tops = {p[0] for p in images}
    if depths == {4} and len(tops) == 1:
        skip = 1  # the zips wrap everything in one folder, e.g. images_background_small1/
    elif depths == {3}:
        skip = 0
    else:
        expected = 4 if max(depths) == 4 and len(tops) == 1 else 3
        odd = sorted(p for p in images if len(p) != expected)
        example = "/".join(odd[0]) if odd else "/".join(sorted(images)[0])
        why = (
            f"found several top-level folders {sorted(tops)[:4]}; pass each as its own source "
            "(comma-separated for --data)"
            if depths == {4}
            else f"'{example}' is not at that depth"
        )
        raise _LayoutError(
            f"Omniglot source {src.path} is not laid out as {_OMNIGLOT_LAYOUT} (optionally under "
            f"one top-level folder): {why}",
            deep=max(depths) >= 3,
        )
    classes: dict[tuple[str, str], list[tuple[str, ...]]] = {}
    for e in entries:
        rel = e.parts[skip:]
        if e.is_dir and len(rel) == 2:
            classes.setdefault((rel[0], rel[1]), [])
        elif not e.is_dir and len(rel) == 3 and _is_image(rel[2]):
            classes.setdefault((rel[0], rel[1]), []).append(e.parts)
    for (alphabet, character), files in classes.items():
        if not files:
            raise DataError(
                f"Omniglot character {alphabet}/{character} in {src.path} has no images; "
                f"expected {_OMNIGLOT_LAYOUT}"
            )
    return classes


def load_omniglot(
    sources: PathLike | Sequence[PathLike],
    size: tuple[int, int] | None = None,
    name: str | None = None,
    *,
    mixed_size: tuple[int, int] | None = None,
) -> ImageClassDataset:
    """Load Omniglot from one or more folders or zip archives (read in place, never extracted).

    Each source is laid out as ``<alphabet>/<character>/*.png``, possibly under one top-level
    folder (as in the official ``images_background.zip``). An alphabet found in several sources
    is taken from the first source only, so overlapping archives (the two ``*_small`` zips both
    hold Greek and Latin) do not duplicate classes.

    Args:
        sources: A path, or a sequence of paths, to folders or ``.zip`` files.
        size: ``(height, width)`` to resize every drawing to (Pillow bilinear); by default the
            drawings must share one size (105x105 in Omniglot).
        name: Dataset name; defaults to the source names joined with ``+``.
        mixed_size: ``(height, width)`` to resize every drawing to if, and only if, they do
            not share one size.

    Returns:
        A dataset with classes sorted by ``"<alphabet>/<character>"`` name, class groups the
        alphabets, and drawings of a character in file-name order.

    Raises:
        DataError: Missing source, unreadable zip, wrong layout, an empty character folder, an
            unreadable image, or mixed sizes without ``size``.
    """
    size, mixed_size = _check_size(size), _check_size(mixed_size)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    paths = list(sources)
    if not paths:
        raise DataError("load_omniglot needs at least one source folder or .zip, got none")
    opened: list[_Source] = []
    try:
        found: dict[tuple[str, str], tuple[_Source, list[tuple[str, ...]]]] = {}
        for path in paths:
            src = _open_source(path, allow_zip=True, max_depth=4, what="Omniglot source")
            opened.append(src)
            classes = _omniglot_classes(src)
            seen = {alphabet for alphabet, _ in found}
            for key, files in classes.items():
                if key[0] not in seen:
                    found[key] = (src, files)
        keys = sorted(found)
        files: list[tuple[_Source, tuple[str, ...], int]] = []
        for label, key in enumerate(keys):
            src, drawings = found[key]
            files.extend((src, parts, label) for parts in sorted(drawings))
        images, labels = _stack(files, size, mixed_size)
    finally:
        for src in opened:
            src.close()
    default_name = "+".join(Path(os.fspath(p)).name.removesuffix(".zip") for p in paths)
    return ImageClassDataset(
        images,
        labels,
        tuple(f"{a}/{c}" for a, c in keys),
        tuple(a for a, _ in keys),
        name or default_name,
    )


def load_dataset_folder(
    path: PathLike, mixed_size: tuple[int, int] | None = None, name: str | None = None
) -> ImageClassDataset:
    """Load a folder in whichever layout it has: Omniglot's, or one subfolder per class.

    Only a folder that is not laid out as Omniglot is read as ``<class>/*.png``, so a damaged
    drawing in an Omniglot tree is reported as such, not as a wrong layout.

    Args:
        path: The folder.
        mixed_size: ``(height, width)`` to resize every image to if, and only if, the images
            do not share one size. Without it, mixed sizes are an error.
        name: Dataset name; defaults to the folder's name.

    Returns:
        The dataset (see :func:`load_omniglot` and :func:`load_image_folder`).

    Raises:
        DataError: As the two loaders do; for a folder in neither layout, the message of the
            layout it looks closer to (images nested deeper than ``<class>/``: Omniglot's).
    """
    try:
        return load_omniglot(path, name=name, mixed_size=mixed_size)
    except _LayoutError as omniglot_error:
        try:
            return load_image_folder(path, name=name, mixed_size=mixed_size)
        except _LayoutError:
            if omniglot_error.deep:
                raise omniglot_error from None
            raise
