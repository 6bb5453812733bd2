"""The bundle manifest: what the board needs to know to run a model exactly as it was trained.

The manifest is plain JSON so that any board (and any human) can read it without edgemeta.
"""

from __future__ import annotations

import json
import math
import numbers
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Mapping

from edgemeta.errors import BundleError

__all__ = [
    "SCHEMA_VERSION",
    "Preprocessing",
    "InputSpec",
    "Provenance",
    "SelfTest",
    "Manifest",
    "compare_versions",
    "validate_version",
]

SCHEMA_VERSION = 1
# fullmatch, not match: "$" also matches before a trailing newline, and "2.0.0\n" must not pass.
_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,63}")
_DISTANCES = ("squared_euclidean", "cosine")
# Printable, and no quote or backslash: the name ends up in logs, tables and generated C headers.
_NAME_RE = re.compile(r'[^\x00-\x1f\x7f"\\]{1,128}')


def _int(value: Any, where: str, minimum: int | None = None) -> int:
    """``value`` as an int if it is an integer (numpy ones too, never a bool), else BundleError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) \
            or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise BundleError(f"manifest {where} is {value!r}; expected an integer{bound}")
    return int(value)


def _real(value: Any, where: str, positive: bool = False) -> float:
    """``value`` as a finite float (ints accepted, bools not), else BundleError."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) \
            or not math.isfinite(value) or (positive and value <= 0):
        raise BundleError(f"manifest {where} is {value!r}; expected a finite "
                          f"{'positive ' if positive else ''}number")
    return float(value)


def _bool(value: Any, where: str) -> bool:
    # A JSON string such as "false" is truthy: coercing it would silently flip the setting.
    if isinstance(value, bool) or getattr(getattr(value, "dtype", None), "kind", None) == "b":
        return bool(value)
    raise BundleError(f"manifest {where} is {value!r}; expected true or false")


def _pairs(value: Any, where: str) -> tuple[Any, ...]:
    """A list or tuple as a tuple; a string (which tuple() would split into characters) refused."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
        raise BundleError(f"manifest {where} is {value!r}; expected a list")
    return tuple(value)


def _no_constant(name: str) -> Any:
    # json.loads accepts NaN and Infinity, which are not JSON and make no sense in a manifest.
    raise ValueError(f"{name} is not a valid JSON value")


def validate_version(version: str) -> str:
    """Return ``version`` if it is safe as a directory name on a board, else raise BundleError."""
    if not isinstance(version, str) or not _VERSION_RE.fullmatch(version) or ".." in version:
        raise BundleError(
            f"model version {version!r} is not valid; expected 1-64 characters of letters, digits, "
            "'.', '_', '+' or '-', starting with a letter or digit (e.g. '1.0.0')"
        )
    return version


@dataclass(frozen=True)
class Preprocessing:
    """How a raw image becomes the float input the network was trained on.

    Order: convert to grayscale (if ``channels == 1``), resize to ``size`` (H, W), scale to
    [0, 1], invert (``1 - x``) if ``invert`` so that ink is bright on a dark background.
    """

    size: tuple[int, int] = (28, 28)
    channels: int = 1
    invert: bool = True
    resample: str = "bilinear"
    scale: float = 1.0 / 255.0

    def __post_init__(self) -> None:
        size = _pairs(self.size, "input.preprocessing.size")
        if len(size) != 2:
            raise BundleError(f"manifest input.preprocessing.size must be (height, width) > 0, "
                              f"got {self.size!r}")
        object.__setattr__(self, "size", tuple(_int(v, "input.preprocessing.size", 1) for v in size))
        if isinstance(self.channels, bool) or self.channels not in (1, 3):
            raise BundleError(f"manifest input.preprocessing.channels must be 1 or 3, got "
                              f"{self.channels!r}")
        object.__setattr__(self, "channels", int(self.channels))
        object.__setattr__(self, "invert", _bool(self.invert, "input.preprocessing.invert"))
        object.__setattr__(self, "scale", _real(self.scale, "input.preprocessing.scale", True))
        if self.resample not in ("bilinear", "nearest", "bicubic", "box", "lanczos"):
            raise BundleError(
                f"preprocessing resample {self.resample!r} unknown; "
                "expected bilinear, nearest, bicubic, box or lanczos"
            )


def _version_key(version: str) -> tuple[tuple[tuple[int, int | str], ...], int,
                                          tuple[tuple[int, int | str], ...]]:
    # Semantic-versioning order: numeric parts compare as numbers, "+build" metadata is ignored,
    # and a pre-release ("1.0.0-rc1") sorts before its release ("1.0.0").
    core, _, pre = version.split("+", 1)[0].partition("-")
    if core[:1] in ("v", "V") and core[1:2].isdigit():
        core = core[1:]  # "v1.2.0" is version 1.2.0, a common tag style

    def parts(text: str) -> tuple[tuple[int, int | str], ...]:
        # Runs of digits compare as numbers, runs of letters as text: "rc10" > "rc9".
        return tuple((0, int(p)) if p.isdigit() else (1, p)
                     for p in re.findall(r"\d+|[^\d._]+", text))

    return parts(core), (0 if pre else 1), parts(pre)


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` is older than, equal to or newer than ``b``.

    Semantic-versioning order (``1.10.0`` is newer than ``1.9.2``; ``2.0.0-rc1`` is older than
    ``2.0.0``; build metadata after ``+`` is ignored), extended to any number of dot-separated
    parts so that date versions like ``2026.11.23`` order as expected too.
    """
    ka, kb = _version_key(validate_version(a)), _version_key(validate_version(b))
    return (ka > kb) - (ka < kb)


@dataclass(frozen=True)
class SelfTest:
    """A known input and the int8 output the model gave for it when it was packed.

    The board runs ``input`` through the model before making it current and requires every
    output value to be within ``tolerance`` of ``expected``: that catches a model the board's
    runtime loads but computes differently (a wrong runtime build, a damaged delegate).
    ai-edge-litert and tflite-runtime 2.14 differ by up to 2 LSB on the same model (measured),
    hence the default of 2.

    Attributes:
        input: Base64 of the int8 input tensor, shape ``(1, *input.shape[1:])``.
        expected: Base64 of the int8 output tensor, shape ``(1, embedding_dim)``.
        tolerance: Largest allowed absolute difference, in output LSB.
    """

    input: str
    expected: str
    tolerance: int = 2

    def __post_init__(self) -> None:
        import base64
        import binascii

        for name in ("input", "expected"):
            try:
                base64.b64decode(getattr(self, name), validate=True)
            except (binascii.Error, TypeError, ValueError) as exc:
                raise BundleError(f"manifest self_test.{name} is not base64: {exc}") from exc
        if isinstance(self.tolerance, bool) or not isinstance(self.tolerance, int) \
                or not 0 <= self.tolerance <= 16:
            raise BundleError(f"manifest self_test.tolerance {self.tolerance!r}: expected an "
                              "integer from 0 to 16 (LSB)")


@dataclass(frozen=True)
class InputSpec:
    """The model's input tensor: shape with a dynamic batch (``None``), dtype and quantization."""

    shape: tuple[int | None, ...]
    dtype: str
    scale: float
    zero_point: int
    preprocessing: Preprocessing = field(default_factory=Preprocessing)

    def __post_init__(self) -> None:
        shape = _pairs(self.shape, "input.shape")
        object.__setattr__(self, "shape", tuple(
            None if d is None else _int(d, "input.shape", 1) for d in shape))
        if not isinstance(self.dtype, str):
            raise BundleError(f"manifest input.dtype is {self.dtype!r}; expected a name such as "
                              "'int8'")
        object.__setattr__(self, "scale", _real(self.scale, "input.scale"))
        object.__setattr__(self, "zero_point", _int(self.zero_point, "input.zero_point"))
        if not isinstance(self.preprocessing, Preprocessing):
            raise BundleError("manifest input.preprocessing is malformed; expected an object")


@dataclass(frozen=True)
class Provenance:
    """Where the model came from and how well it did when it was packed."""

    algorithm: str = "protonet"
    n_way: int = 0
    k_shot: int = 0
    dataset: str = ""
    float_accuracy: float | None = None
    int8_accuracy: float | None = None
    episodes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Manifest:
    """Everything a board needs to run and trust ``model.tflite``."""

    name: str
    version: str
    model_sha256: str
    model_bytes: int
    input: InputSpec
    embedding_dim: int
    output_scale: float
    output_zero_point: int
    distance: str = "squared_euclidean"
    normalize_embeddings: bool = False  # the runtime scales embeddings to unit length
    # Test-time views: each image is also embedded shifted by these (dy, dx) pixels (zero fill)
    # and the embeddings are averaged. Empty: one view. The board still only embeds and compares.
    test_time_shifts: tuple[tuple[int, int], ...] = ()
    # The board profiles this bundle was built for (names from boards/); empty: any board it
    # fits. A board home configured as one profile refuses a bundle that names others.
    boards: tuple[str, ...] = ()
    self_test: SelfTest | None = None
    provenance: Provenance = field(default_factory=Provenance)
    created_at: str = field(
        default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds")
    )
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.fullmatch(self.name):
            raise BundleError(f"manifest name {self.name!r} is not valid; expected 1-128 printable "
                              "characters without quotes or backslashes")
        validate_version(self.version)
        if not isinstance(self.model_sha256, str) or not re.fullmatch(r"[0-9a-f]{64}",
                                                                       self.model_sha256):
            raise BundleError(
                f"manifest model_sha256 {self.model_sha256!r} is not a 64-digit lowercase hex digest"
            )
        object.__setattr__(self, "model_bytes", _int(self.model_bytes, "model_bytes", 0))
        object.__setattr__(self, "embedding_dim", _int(self.embedding_dim, "embedding_dim", 1))
        object.__setattr__(self, "output_scale", _real(self.output_scale, "output_scale"))
        object.__setattr__(self, "output_zero_point",
                           _int(self.output_zero_point, "output_zero_point"))
        if not isinstance(self.input, InputSpec):
            raise BundleError("manifest input is malformed; expected an object")
        if self.distance not in _DISTANCES:
            raise BundleError(f"manifest distance {self.distance!r} unknown; expected one of {_DISTANCES}")
        object.__setattr__(self, "normalize_embeddings",
                           _bool(self.normalize_embeddings, "normalize_embeddings"))
        shifts = tuple(tuple(_int(v, "test_time_shifts") for v in _pairs(s, "test_time_shifts"))
                       for s in _pairs(self.test_time_shifts, "test_time_shifts"))
        if any(len(s) != 2 for s in shifts) or len(shifts) > 16:
            raise BundleError(f"manifest test_time_shifts {self.test_time_shifts!r}: expected at "
                              "most 16 (dy, dx) pairs")
        object.__setattr__(self, "test_time_shifts", shifts)
        boards = _pairs(self.boards, "boards")
        if any(not isinstance(b, str) or not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", b)
               for b in boards):
            raise BundleError(f"manifest boards {self.boards!r}: expected board profile names "
                              "such as 'rpi-4b'")
        object.__setattr__(self, "boards", boards)

    def to_json(self) -> str:
        """Serialise to indented JSON (stable key order)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> "Manifest":
        """Parse and validate a manifest; raise :class:`BundleError` naming what is wrong."""
        try:
            data = json.loads(text, parse_constant=_no_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise BundleError(f"manifest.json is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise BundleError("manifest.json must hold a JSON object")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Manifest":
        """Build from a plain dict (as in manifest.json), checking the schema version and fields."""
        schema = data.get("schema_version")
        if type(schema) is not int or schema != SCHEMA_VERSION:  # true == 1 in Python
            raise BundleError(
                f"manifest schema_version {schema!r} is not supported; this edgemeta reads "
                f"schema_version {SCHEMA_VERSION}"
            )
        try:
            inp = dict(data["input"])
            pre = dict(inp.pop("preprocessing", {}))
            for key in ("shape", "dtype", "scale", "zero_point"):
                if key not in inp:
                    raise KeyError(f"input.{key}")
            inp["preprocessing"] = _build(Preprocessing, pre, "input.preprocessing")
            input_spec = _build(InputSpec, inp, "input")
            top = {k: v for k, v in data.items() if k not in ("input", "provenance", "self_test")}
            top["input"] = input_spec
            if data.get("self_test") is not None:
                top["self_test"] = _build(SelfTest, dict(data["self_test"]), "self_test")
            top["provenance"] = _build(Provenance, dict(data.get("provenance", {})), "provenance")
            return _build(cls, top, "manifest")
        except KeyError as exc:
            raise BundleError(f"manifest.json lacks the required field {exc}") from exc
        except (TypeError, ValueError, OverflowError) as exc:
            raise BundleError(f"manifest.json has a field of the wrong type: {exc}") from exc


def _build(cls: type, values: dict[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise BundleError(f"{where} has unknown field(s) {unknown}; expected only {sorted(known)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise BundleError(f"{where} is incomplete or malformed: {exc}") from exc
