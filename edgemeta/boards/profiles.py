"""Board profiles: ``boards/*.toml`` read into :class:`BoardProfile`, and the runtime wheel matrix.

A profile is plain TOML so that adding a board needs no code. Files whose name starts with ``_``
are not boards: ``_runtimes.toml`` holds the wheel matrix of the interpreter packages. A profile
is ``kind = "linux"`` (the default) or ``kind = "mcu"``; see :mod:`edgemeta.boards`.

Board-side safe: stdlib only (no TensorFlow, no numpy needed).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgemeta.errors import BoardError

# tomllib is stdlib from 3.11; the package still allows 3.10, where tomli (a declared dependency
# there) is the same parser.
if sys.version_info >= (3, 11):
    import tomllib as _toml
else:  # pragma: no cover - only on Python 3.10
    import tomli as _toml

BOARDS_DIR_ENV = "EDGEMETA_BOARDS_DIR"
# Userland architectures as platform.machine() reports them: 64-bit Pi OS, 32-bit Pi OS on a
# Pi 2/3/4/Zero 2, 32-bit Pi OS on a Pi 1/Zero/Zero W (ARMv6), and the workstation.
ARCHES = ("aarch64", "armv7l", "armv6l", "x86_64")
KINDS = ("linux", "mcu")
MCU_ARCHES = ("armv7e-m", "armv8-m", "riscv32", "xtensa")
MCU_RUNTIME = "tflite-micro"  # TensorFlow Lite for Microcontrollers, linked into the firmware
RUNTIMES_FILE = "_runtimes.toml"


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


# --------------------------------------------------------------------------- loading profiles


def _default_boards_dir() -> Path:
    # In a wheel, hatch force-includes boards/ as edgemeta/_boards; in an editable install (or a
    # source checkout) the profiles are the repo's boards/ folder next to the package.
    package = Path(__file__).resolve().parent.parent  # edgemeta/, the parent of this boards/
    packaged = package / "_boards"
    if packaged.is_dir():
        return packaged
    return package.parent / "boards"


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
    try:
        with open(path, "rb") as fh:
            return _toml.load(fh)
    except _toml.TOMLDecodeError as exc:
        raise BoardError(f"board profile {path} is not valid TOML: {exc}") from exc
    except UnicodeDecodeError as exc:  # tomllib decodes before parsing: not a TOMLDecodeError
        raise BoardError(f"board profile {path} is not UTF-8 text ({exc.reason} at byte "
                         f"{exc.start}); expected a UTF-8 TOML file") from exc
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
    if isinstance(value, int) and kind is int and value < 1:
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
            if not isinstance(entry, dict):
                raise TypeError(f"{entry!r} is not a table")
            lo, hi = entry["python"]
            arches = entry["arches"]
            # tuple("x86_64") would be its letters: a string here is a typo for a list.
            if not isinstance(arches, list) or not all(isinstance(a, str) for a in arches):
                raise TypeError(f"arches = {arches!r} is not a list of strings")
            out[package] = RuntimeWheels(
                package=package, import_name=str(entry["import_name"]), arches=tuple(arches),
                python_min=_parse_python(lo, f"{path} [{package}] python"),
                python_max=_parse_python(hi, f"{path} [{package}] python"),
                notes=str(entry.get("notes", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise BoardError(f"{path}: entry [{package}] is malformed ({exc!r}); expected "
                             "import_name, arches = [...] and python = [\"3.x\", \"3.y\"]") from exc
        wheels = out[package]
        unknown = [a for a in wheels.arches if a not in ARCHES]
        if unknown:
            raise BoardError(f"{path}: entry [{package}] has unknown arches {unknown}; expected "
                             f"names from {', '.join(ARCHES)} (as platform.machine() reports them)")
        if wheels.python_min > wheels.python_max:
            raise BoardError(f"{path}: entry [{package}] python = [{lo!r}, {hi!r}]; expected "
                             "[oldest, newest]")
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
