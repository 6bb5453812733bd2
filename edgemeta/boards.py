"""Board profiles (``boards/*.toml``) and the check that a bundle can run on a board.

A profile is plain TOML so that adding a board needs no code. Files whose name starts with ``_``
are not boards: ``_runtimes.toml`` holds the wheel matrix of the interpreter packages.

Two kinds of board: ``kind = "linux"`` (the default: a Raspberry Pi-class board that runs Python
and installs bundles with ``edgemeta flash``) and ``kind = "mcu"`` (a microcontroller with no OS
to speak of: the model is compiled into its firmware with TensorFlow Lite for Microcontrollers via
``edgemeta export c``; its profile gives flash and RAM budgets instead of a Python runtime).

Board-side safe: stdlib + the bundle manifest only (no TensorFlow, no numpy needed).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemeta.bundle.manifest import Manifest
from edgemeta.errors import BoardError, BundleError, FlashError

try:  # tomllib is stdlib from 3.11; the package still allows 3.10, where tomli is the same parser
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - only on Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

__all__ = [
    "ARCHES",
    "BOARDS_DIR_ENV",
    "KINDS",
    "MCU_ARCHES",
    "BoardProfile",
    "Check",
    "Compatibility",
    "RuntimeWheels",
    "boards_dir",
    "check_bundle",
    "estimate_peak_bytes",
    "get_board",
    "list_boards",
    "require_flashable",
    "runtime_wheels",
]

BOARDS_DIR_ENV = "EDGEMETA_BOARDS_DIR"
ARCHES = ("aarch64", "armv7l", "x86_64")
KINDS = ("linux", "mcu")
MCU_ARCHES = ("armv7e-m", "armv8-m", "riscv32", "xtensa")
MCU_RUNTIME = "tflite-micro"  # TensorFlow Lite for Microcontrollers, linked into the firmware
RUNTIMES_FILE = "_runtimes.toml"

# Memory model (see check_bundle). Conservative on purpose: a board that swaps or gets OOM-killed
# is worse than a warning that turns out to be pessimistic.
PROCESS_OVERHEAD_BYTES = 40 * 1024 * 1024  # Python + numpy + interpreter; 37 MB RSS was measured
ARENA_BYTES_PER_PIXEL = 4 * 64  # float-sized buffers of a 64-filter first conv (Conv-4)
# The flatbuffer stays mapped while XNNPACK keeps a repacked copy of the weights.
WEIGHT_COPIES = 2
RAM_BUDGET_FRACTION = 0.5  # leave half the RAM to the OS, the agent and the camera stack
_MB = 1024 * 1024
_KB = 1024
# Without the model bytes, an MCU arena is guessed from the input shape for a Conv-4-like net:
# int8 first-conv output (64 x H x W) plus its 2x2-pooled copy, both alive at once, plus the
# persistent tail. Exact for the shipped Conv-4 activations (62,720 of 67,712 measured bytes).
MCU_ARENA_BYTES_PER_PIXEL = 64 * 1.25
MCU_ARENA_TAIL_BYTES = 8 * 1024


@dataclass(frozen=True)
class BoardProfile:
    """One board as described by ``boards/<name>.toml``.

    ``arch`` is the architecture of the Python that pip installs for (userland), which on a
    32-bit OS with a 64-bit kernel differs from ``uname -m``.

    Microcontroller profiles (``kind == "mcu"``) have no Python: ``python`` is ``""``,
    ``runtime`` is ``"tflite-micro"`` (the C++ library in the firmware), ``runtime_pip`` is
    empty, ``ram_mb`` is 0 and ``max_threads`` 1; their memory is in ``flash_kb``, ``ram_kb``
    (internal SRAM) and ``psram_kb``, of which ``firmware_reserve_kb`` and ``ram_reserve_kb`` are
    kept for the firmware itself (RTOS, drivers, radio stack, application).
    """

    name: str
    title: str
    soc: str
    cpu_cores: int
    cpu_core: str
    arch: str
    ram_mb: int
    os: str
    python: str
    runtime: str
    runtime_pip: tuple[str, ...]
    max_threads: int
    notes: str = ""
    storage_budget_mb: int | None = None
    source: str = ""
    kind: str = "linux"
    flash_kb: int | None = None
    ram_kb: int | None = None
    psram_kb: int | None = None
    firmware_reserve_kb: int | None = None
    ram_reserve_kb: int | None = None

    @property
    def is_mcu(self) -> bool:
        """True for a microcontroller profile (TFLite Micro in the firmware, no Python)."""
        return self.kind == "mcu"

    @property
    def pip_command(self) -> str:
        """The command that installs this board's interpreter, ready to paste into a shell.

        Empty for a microcontroller: nothing is pip-installed on it.
        """
        if not self.runtime_pip:
            return ""
        return "pip install " + " ".join(f"'{spec}'" for spec in self.runtime_pip)


@dataclass(frozen=True)
class RuntimeWheels:
    """Which CPython wheels an interpreter package publishes (from ``_runtimes.toml``)."""

    package: str
    import_name: str
    arches: tuple[str, ...]
    python_min: tuple[int, int]
    python_max: tuple[int, int]
    notes: str = ""

    def has_wheel(self, arch: str, python: tuple[int, int]) -> bool:
        """True if PyPI has a wheel of this package for ``arch`` and CPython ``python``."""
        return arch in self.arches and self.python_min <= python <= self.python_max

    @property
    def python_range(self) -> str:
        return f"{_fmt_py(self.python_min)}-{_fmt_py(self.python_max)}"


@dataclass(frozen=True)
class Check:
    """One compatibility check and a sentence explaining its outcome."""

    name: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Compatibility:
    """Whether a bundle fits a board, with every check that led to the answer."""

    fits: bool
    checks: tuple[Check, ...]
    board: str = ""
    # False for a microcontroller: the bundle may fit, but reaches it only compiled into the
    # firmware (`edgemeta export c`), never through `edgemeta flash` / dir: / ssh: / mqtt:.
    flashable: bool = True

    @property
    def failures(self) -> tuple[Check, ...]:
        return tuple(c for c in self.checks if not c.ok)

    def summary(self) -> str:
        """One line: ``fits BOARD: ...`` or ``does not fit BOARD: <first failing check>``."""
        if self.fits:
            names = ", ".join(c.name for c in self.checks)
            return f"fits {self.board}: {len(self.checks)}/{len(self.checks)} checks pass ({names})"
        return f"does not fit {self.board}: {self.failures[0].detail}"


# --------------------------------------------------------------------------- loading profiles


def _default_boards_dir() -> Path:
    # In a wheel, hatch force-includes boards/ as edgemeta/_boards; in an editable install (or a
    # source checkout) the profiles are the repo's boards/ folder next to the package.
    packaged = Path(__file__).resolve().parent / "_boards"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "boards"


def boards_dir() -> Path:
    """The folder board profiles are read from.

    ``$EDGEMETA_BOARDS_DIR`` if set, else the packaged ``edgemeta/_boards``, else the repo's
    ``boards/`` folder.

    Raises:
        BoardError: the folder does not exist.
    """
    override = os.environ.get(BOARDS_DIR_ENV)
    path = Path(override).expanduser() if override else _default_boards_dir()
    if not path.is_dir():
        origin = f"${BOARDS_DIR_ENV}" if override else "the packaged board profiles"
        raise BoardError(f"board profile folder {path} (from {origin}) does not exist; "
                         "expected a folder of <board>.toml files")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    if _toml is None:  # pragma: no cover - only on Python 3.10 without tomli
        raise BoardError(f"cannot read {path}: Python {sys.version_info[0]}.{sys.version_info[1]} has no tomllib; "
                         "use Python >= 3.11 or pip install tomli")
    try:
        with open(path, "rb") as fh:
            return _toml.load(fh)
    except _toml.TOMLDecodeError as exc:
        raise BoardError(f"board profile {path} is not valid TOML: {exc}") from exc
    except OSError as exc:
        raise BoardError(f"cannot read board profile {path}: {exc}") from exc


# (dotted field, expected type, description used in error messages).
_REQUIRED: tuple[tuple[str, type, str], ...] = (
    ("name", str, "a string equal to the file name without .toml"),
    ("title", str, "a string"),
    ("soc", str, "a string"),
    ("arch", str, f"one of {', '.join(ARCHES)}"),
    ("ram_mb", int, "a positive integer (MB of RAM)"),
    ("os", str, "a string"),
    ("python", str, "a CPython version such as \"3.11\""),
    ("max_threads", int, "a positive integer"),
    ("cpu.cores", int, "a positive integer"),
    ("cpu.core", str, "a string such as \"Cortex-A72\""),
    ("runtime.package", str, "an interpreter package named in _runtimes.toml"),
    ("runtime.pip", list, "a list of pip requirement strings"),
)
_OPTIONAL: tuple[tuple[str, type, str], ...] = (
    ("kind", str, f"one of {', '.join(KINDS)}"),
    ("notes", str, "a string"),
    ("storage_budget_mb", int, "a positive integer (MB)"),
)
_TABLES = ("cpu", "runtime")
# kind = "mcu": no Python, no pip; flash and RAM budgets instead (see BoardProfile).
_MCU_REQUIRED: tuple[tuple[str, type, str], ...] = (
    ("name", str, "a string equal to the file name without .toml"),
    ("kind", str, "\"mcu\""),
    ("title", str, "a string"),
    ("soc", str, "a string"),
    ("arch", str, f"one of {', '.join(MCU_ARCHES)}"),
    ("os", str, "a string such as \"FreeRTOS (ESP-IDF)\""),
    ("cpu.cores", int, "a positive integer"),
    ("cpu.core", str, "a string such as \"Cortex-M4F\""),
    ("mcu.flash_kb", int, "a positive integer (KB of flash)"),
    ("mcu.ram_kb", int, "a positive integer (KB of internal SRAM)"),
    ("mcu.firmware_reserve_kb", int, "a positive integer (KB of flash kept for the firmware)"),
    ("mcu.ram_reserve_kb", int, "a positive integer (KB of SRAM kept for the firmware)"),
)
_MCU_OPTIONAL: tuple[tuple[str, type, str], ...] = (
    ("notes", str, "a string"),
    ("mcu.psram_kb", int, "a positive integer (KB of external PSRAM)"),
)
_MCU_TABLES = ("cpu", "mcu")


def _get(data: dict[str, Any], dotted: str) -> Any:
    node: Any = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _typed(path: Path, data: dict[str, Any], field: str, kind: type, what: str,
           required: bool) -> Any:
    try:
        value = _get(data, field)
    except KeyError:
        if required:
            raise BoardError(f"board profile {path} lacks the field '{field}'; expected {what}") from None
        return None
    # bool is an int subclass in Python, but `ram_mb = true` is a typo, not a size.
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BoardError(f"board profile {path}: field '{field}' is {value!r}; expected {what}")
    if kind is int and value < 1:
        raise BoardError(f"board profile {path}: field '{field}' is {value}; expected {what}")
    return value


def _check_unknown(path: Path, data: dict[str, Any],
                   fields: tuple[tuple[str, type, str], ...] = _REQUIRED + _OPTIONAL,
                   tables: tuple[str, ...] = _TABLES) -> None:
    # Unknown keys are almost always typos (`ram_gb`, `max_thread`); failing loudly beats ignoring.
    known = {f for f, _, _ in fields}
    for key, value in data.items():
        if key in tables and isinstance(value, dict):
            extra = [f"{key}.{k}" for k in value if f"{key}.{k}" not in known]
        else:
            extra = [] if key in known else [key]
        if extra:
            raise BoardError(f"board profile {path} has unknown field(s) {extra}; expected only "
                             f"{sorted(known)}")


def _parse_python(text: str, where: str) -> tuple[int, int]:
    parts = text.strip().split(".")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts) or parts[0] != "3":
        raise BoardError(f"{where}: Python version {text!r} is not valid; expected e.g. \"3.11\"")
    return int(parts[0]), int(parts[1])


def _fmt_py(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def _load_mcu_profile(path: Path, data: dict[str, Any]) -> BoardProfile:
    _check_unknown(path, data, _MCU_REQUIRED + _MCU_OPTIONAL, _MCU_TABLES)
    v = {f: _typed(path, data, f, k, w, True) for f, k, w in _MCU_REQUIRED}
    v.update({f: _typed(path, data, f, k, w, False) for f, k, w in _MCU_OPTIONAL})
    if v["name"] != path.stem:
        raise BoardError(f"board profile {path}: field 'name' is {v['name']!r}; expected "
                         f"{path.stem!r} (the file name without .toml)")
    if v["arch"] not in MCU_ARCHES:
        raise BoardError(f"board profile {path}: field 'arch' is {v['arch']!r}; expected one of "
                         f"{', '.join(MCU_ARCHES)} for kind = \"mcu\"")
    for reserve, total in (("mcu.firmware_reserve_kb", "mcu.flash_kb"),
                           ("mcu.ram_reserve_kb", "mcu.ram_kb")):
        if v[reserve] >= v[total]:
            raise BoardError(f"board profile {path}: field '{reserve}' is {v[reserve]}; expected "
                             f"less than '{total}' ({v[total]})")
    return BoardProfile(
        name=v["name"], title=v["title"], soc=v["soc"], cpu_cores=v["cpu.cores"],
        cpu_core=v["cpu.core"], arch=v["arch"], ram_mb=0, os=v["os"], python="",
        runtime=MCU_RUNTIME, runtime_pip=(), max_threads=1, notes=(v["notes"] or "").strip(),
        source=str(path), kind="mcu", flash_kb=v["mcu.flash_kb"], ram_kb=v["mcu.ram_kb"],
        psram_kb=v["mcu.psram_kb"], firmware_reserve_kb=v["mcu.firmware_reserve_kb"],
        ram_reserve_kb=v["mcu.ram_reserve_kb"],
    )


def _load_profile(path: Path) -> BoardProfile:
    data = _read_toml(path)
    kind = data.get("kind", "linux")
    if kind not in KINDS:
        raise BoardError(f"board profile {path}: field 'kind' is {kind!r}; expected one of "
                         f"{', '.join(KINDS)}")
    if kind == "mcu":
        return _load_mcu_profile(path, data)
    _check_unknown(path, data)
    v = {f: _typed(path, data, f, k, w, True) for f, k, w in _REQUIRED}
    v.update({f: _typed(path, data, f, k, w, False) for f, k, w in _OPTIONAL})
    if v["name"] != path.stem:
        raise BoardError(f"board profile {path}: field 'name' is {v['name']!r}; expected "
                         f"{path.stem!r} (the file name without .toml)")
    if v["arch"] not in ARCHES:
        raise BoardError(f"board profile {path}: field 'arch' is {v['arch']!r}; expected one of "
                         f"{', '.join(ARCHES)}")
    _parse_python(v["python"], f"board profile {path}: field 'python'")
    pip = v["runtime.pip"]
    if not pip or not all(isinstance(s, str) and s.strip() for s in pip):
        raise BoardError(f"board profile {path}: field 'runtime.pip' is {pip!r}; expected a "
                         "non-empty list of pip requirement strings")
    wheels = runtime_wheels()
    if v["runtime.package"] not in wheels:
        raise BoardError(f"board profile {path}: field 'runtime.package' is "
                         f"{v['runtime.package']!r}; expected one of {sorted(wheels)}")
    return BoardProfile(
        name=v["name"], title=v["title"], soc=v["soc"], cpu_cores=v["cpu.cores"],
        cpu_core=v["cpu.core"], arch=v["arch"], ram_mb=v["ram_mb"], os=v["os"],
        python=v["python"], runtime=v["runtime.package"], runtime_pip=tuple(pip),
        max_threads=v["max_threads"], notes=(v["notes"] or "").strip(),
        storage_budget_mb=v["storage_budget_mb"], source=str(path),
    )


def runtime_wheels() -> dict[str, RuntimeWheels]:
    """The wheel matrix of the interpreter packages, keyed by package name.

    Read from ``_runtimes.toml`` in :func:`boards_dir`, falling back to the packaged one so that a
    custom profile folder need not copy it.

    Raises:
        BoardError: the file is missing or malformed.
    """
    path = boards_dir() / RUNTIMES_FILE
    if not path.is_file():
        path = _default_boards_dir() / RUNTIMES_FILE
    if not path.is_file():
        raise BoardError(f"the runtime wheel matrix {path} is missing; reinstall edgemeta")
    out: dict[str, RuntimeWheels] = {}
    for package, entry in _read_toml(path).items():
        try:
            lo, hi = entry["python"]
            arches = tuple(entry["arches"])
            out[package] = RuntimeWheels(
                package=package, import_name=str(entry["import_name"]), arches=arches,
                python_min=_parse_python(lo, f"{path} [{package}] python"),
                python_max=_parse_python(hi, f"{path} [{package}] python"),
                notes=str(entry.get("notes", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BoardError(f"{path}: entry [{package}] is malformed ({exc!r}); expected "
                             "import_name, arches = [...] and python = [\"3.x\", \"3.y\"]") from exc
    return out


def _profile_paths() -> list[Path]:
    return sorted((p for p in boards_dir().glob("*.toml") if not p.name.startswith("_")),
                  key=lambda p: p.stem)


def list_boards() -> list[BoardProfile]:
    """Every board profile in :func:`boards_dir`, sorted by name.

    Raises:
        BoardError: a profile is malformed (the message names the file and the field).
    """
    return [_load_profile(p) for p in _profile_paths()]


def get_board(name: str) -> BoardProfile:
    """The profile called ``name`` (e.g. ``"rpi-4b"``).

    Raises:
        BoardError: no such board (the message lists the known ones), or its file is malformed.
    """
    paths = {p.stem: p for p in _profile_paths()}
    if name not in paths:
        known = ", ".join(paths) or "(none)"
        raise BoardError(f"unknown board {name!r}; known boards: {known} "
                         f"(profiles are read from {boards_dir()})")
    return _load_profile(paths[name])


# --------------------------------------------------------------------------- compatibility


def _image_hw(manifest: Manifest) -> tuple[int, int]:
    shape = manifest.input.shape
    # NHWC with a dynamic batch; fall back to the preprocessing size if the shape is unusual.
    if len(shape) == 4 and all(isinstance(d, int) and d > 0 for d in shape[1:3]):
        return int(shape[1]), int(shape[2])
    return manifest.input.preprocessing.size


def estimate_peak_bytes(manifest: Manifest) -> int:
    """Conservative peak RSS of a board process running this model on one image.

    ``WEIGHT_COPIES`` × model bytes + 4 × 64 × H × W activation arena (a Conv-4-sized net, one
    image) + 40 MB for Python, numpy and the interpreter.
    """
    height, width = _image_hw(manifest)
    arena = ARENA_BYTES_PER_PIXEL * height * width
    return WEIGHT_COPIES * manifest.model_bytes + arena + PROCESS_OVERHEAD_BYTES


def _runtime_check(board: BoardProfile, python: tuple[int, int]) -> Check:
    matrix = runtime_wheels()
    wheels = matrix[board.runtime]
    py = _fmt_py(python)
    if wheels.has_wheel(board.arch, python):
        return Check("runtime", True, f"{board.runtime} has a wheel for {board.arch} / CPython {py} "
                                      f"(install with: {board.pip_command})")
    if board.arch not in wheels.arches:
        why = (f"{board.runtime} has no wheel for {board.arch} "
               f"(only {', '.join(wheels.arches)})")
    else:
        why = (f"{board.runtime} has wheels for CPython {wheels.python_range} only, but "
               f"{board.name} runs Python {py}")
    others = [w.package for w in matrix.values() if w.has_wheel(board.arch, python)]
    hint = (f"; {' or '.join(others)} would install there" if others else
            f"; no known runtime has a wheel for {board.arch} / CPython {py}, so use an OS with "
            "Python 3.11 (Pi OS Bookworm) or a 64-bit OS")
    return Check("runtime", False, why + hint)


def _int8_check(manifest: Manifest) -> Check:
    dtype = manifest.input.dtype
    if dtype != "int8":
        return Check("int8", False, f"the model input is {dtype}, expected int8: boards run "
                                    "full-integer models only; convert with int8 input and output")
    # A quantized output tensor always has a positive scale; 0 means the output was left float.
    if not manifest.output_scale > 0:
        return Check("int8", False, f"the model output scale is {manifest.output_scale:g}, "
                                    "expected > 0: the output is not quantized; convert with "
                                    "int8 input and output")
    return Check("int8", True, "the model is full-integer: int8 input and quantized output "
                               f"(output scale {manifest.output_scale:g})")


def _memory_check(manifest: Manifest, board: BoardProfile) -> Check:
    peak = estimate_peak_bytes(manifest)
    arena = peak - WEIGHT_COPIES * manifest.model_bytes - PROCESS_OVERHEAD_BYTES
    budget = int(board.ram_mb * _MB * RAM_BUDGET_FRACTION)
    parts = (f"estimated peak {peak / _MB:.1f} MB ({WEIGHT_COPIES} x model "
             f"{manifest.model_bytes / _MB:.1f} MB + {arena / _MB:.1f} MB activations + "
             f"{PROCESS_OVERHEAD_BYTES // _MB} MB process overhead)")
    limit = f"the budget of {budget // _MB} MB ({RAM_BUDGET_FRACTION:.0%} of {board.ram_mb} MB RAM)"
    if peak <= budget:
        return Check("memory", True, f"{parts} is within {limit}")
    return Check("memory", False, f"{parts} exceeds {limit}")


def _storage_check(manifest: Manifest, board: BoardProfile, budget_mb: int) -> Check:
    size = manifest.model_bytes
    if size <= budget_mb * _MB:
        return Check("storage", True, f"model of {size / _MB:.1f} MB is within {board.name}'s "
                                      f"storage budget of {budget_mb} MB")
    return Check("storage", False, f"model of {size / _MB:.1f} MB exceeds {board.name}'s "
                                   f"storage budget of {budget_mb} MB")


def require_flashable(board: BoardProfile) -> None:
    """Refuse to flash a bundle to a microcontroller profile.

    Raises:
        BoardError: ``board`` is a microcontroller; the message says to use ``edgemeta export c``.
    """
    if board.is_mcu:
        raise BoardError(f"{board.name} is a microcontroller ({board.soc}; {board.os}): a "
                         "bundle cannot be flashed to it over dir:, ssh: or mqtt:; use "
                         "`edgemeta export c BUNDLE --out DIR` and build the files into its "
                         "firmware (TensorFlow Lite for Microcontrollers)")


def _mcu_arena(manifest: Manifest, model: bytes | None) -> tuple[int, str, Check | None]:
    """(arena bytes with margin, how it was obtained, the ops check or None without a model)."""
    # Lazy: firmware_bridge imports this module, and the model tools are needed only for MCUs.
    from firmware_bridge import mcu

    if model is not None:
        try:
            ops = mcu.builtin_ops(model)
            arena = mcu.arena_info(model)  # measured when tflite-micro is importable
        except (BundleError, FlashError) as exc:
            fail = Check("ops", False, str(exc))
        else:
            how = ("measured with tflite-micro" if arena.method == "measured" else
                   "estimated from the flatbuffer's tensor sizes (tflite-micro not installed)")
            verified = ("all resolved by TFLite Micro" if arena.method == "measured" else
                        "builtin only, not checked against TFLite Micro's kernels")
            return arena.bytes, f"{arena.raw_bytes:,} bytes {how}", Check(
                "ops", True, f"{len(ops)} builtin ops ({', '.join(ops)}), {verified}")
    else:
        fail = None
    height, width = _image_hw(manifest)
    raw = int(MCU_ARENA_BYTES_PER_PIXEL * height * width) + MCU_ARENA_TAIL_BYTES
    return (mcu.with_margin(raw), f"{raw:,} bytes guessed from the {height}x{width} input, "
            "assuming a Conv-4-like net", fail)


def _mcu_checks(manifest: Manifest, board: BoardProfile, model: bytes | None) -> list[Check]:
    if not (board.flash_kb and board.ram_kb and board.firmware_reserve_kb and board.ram_reserve_kb):
        raise BoardError(f"board {board.name} is a microcontroller profile without flash/RAM "
                         "budgets; expected flash_kb, ram_kb, firmware_reserve_kb and "
                         "ram_reserve_kb")
    checks = [Check("runtime", True, f"{board.name} runs no Python: the model runs under "
                                     "TensorFlow Lite for Microcontrollers compiled into the "
                                     "firmware; deploy with `edgemeta export c BUNDLE --out DIR`, "
                                     "not `edgemeta flash`"),
              _int8_check(manifest)]
    arena, how, ops = _mcu_arena(manifest, model)
    if ops is not None:
        checks.append(ops)
    size = manifest.model_bytes
    flash_budget = (board.flash_kb - board.firmware_reserve_kb) * _KB
    flash = (f"model of {size / _KB:.1f} KB {{}} the {flash_budget // _KB} KB of flash left after "
             f"the {board.firmware_reserve_kb} KB firmware reserve ({board.flash_kb} KB flash)")
    checks.append(Check("flash", size <= flash_budget,
                        flash.format("fits" if size <= flash_budget else "exceeds")))
    ram_budget = (board.ram_kb - board.ram_reserve_kb) * _KB
    ram = (f"tensor arena of {arena / _KB:.1f} KB ({how}, plus margin) {{}} the {ram_budget // _KB} "
           f"KB of SRAM left after the {board.ram_reserve_kb} KB firmware reserve "
           f"({board.ram_kb} KB SRAM)")
    if arena <= ram_budget:
        checks.append(Check("arena", True, ram.format("fits")))
    elif board.psram_kb and arena <= board.psram_kb * _KB:
        checks.append(Check("arena", True, ram.format("exceeds") + f"; it fits the "
                            f"{board.psram_kb} KB PSRAM: allocate the arena there (slower)"))
    else:
        psram = f" or its {board.psram_kb} KB PSRAM" if board.psram_kb else ""
        checks.append(Check("arena", False, ram.format("exceeds") + psram))
    return checks


def check_bundle(manifest: Manifest, board: BoardProfile,
                 python_version: str | None = None, *, model: bytes | None = None) -> Compatibility:
    """Check that a bundle can be installed and run on a board.

    Checks: the board's runtime package has a wheel for its arch and Python; the model is int8;
    the estimated peak memory (:func:`estimate_peak_bytes`) is under 50 % of the board's RAM; and
    the model is under the board's storage budget, if the profile declares one.

    On a microcontroller profile (``board.is_mcu``) instead: the model is int8; its ops are
    TFLite Micro builtins (with ``model``); the model fits the flash left after the firmware
    reserve; and the tensor arena fits the SRAM left after the RAM reserve (or the PSRAM, which
    is slower). The arena is measured with tflite-micro when ``model`` is given and tflite-micro
    is installed, estimated from the flatbuffer when it is not, and guessed from the input shape
    without ``model``; the check's detail says which. ``flashable`` is False: such a board gets
    the model through ``edgemeta export c``, not ``edgemeta flash``.

    Args:
        manifest: The bundle's manifest.
        board: The target board.
        python_version: The board's Python if it differs from the profile's (e.g. ``"3.13"``);
            ignored for a microcontroller.
        model: The bundle's model bytes: optional, used only for microcontroller profiles.

    Returns:
        A :class:`Compatibility` with every check; ``fits`` is True only if all pass.

    Raises:
        BoardError: ``python_version`` is not a version like ``"3.11"``.
    """
    if board.is_mcu:
        checks = _mcu_checks(manifest, board, model)
        return Compatibility(fits=all(c.ok for c in checks), checks=tuple(checks),
                             board=board.name, flashable=False)
    python = _parse_python(python_version or board.python, "check_bundle")
    checks = [_runtime_check(board, python), _int8_check(manifest), _memory_check(manifest, board)]
    if board.storage_budget_mb is not None:
        checks.append(_storage_check(manifest, board, board.storage_budget_mb))
    return Compatibility(fits=all(c.ok for c in checks), checks=tuple(checks), board=board.name)
