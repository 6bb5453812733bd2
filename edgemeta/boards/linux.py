"""Compatibility checks for Linux boards (``kind = "linux"``): runtime wheel, int8, memory, storage.

Board-side safe: stdlib + the bundle manifest only.
"""

from __future__ import annotations

from edgemeta.boards.compat import Check, _image_hw, _int8_check
from edgemeta.boards.profiles import BoardProfile, _fmt_py, _parse_python, runtime_wheels
from edgemeta.bundle.manifest import Manifest

# Memory model (see check_bundle). Conservative on purpose: a board that swaps or gets OOM-killed
# is worse than a warning that turns out to be pessimistic.
PROCESS_OVERHEAD_BYTES = 40 * 1024 * 1024  # Python + numpy + interpreter; 37 MB RSS was measured
ARENA_BYTES_PER_PIXEL = 4 * 64  # float-sized buffers of a 64-filter first conv (Conv-4)
# The flatbuffer stays mapped while XNNPACK keeps a repacked copy of the weights.
WEIGHT_COPIES = 2
RAM_BUDGET_FRACTION = 0.5  # leave half the RAM to the OS, the agent and the camera stack
_MB = 1024 * 1024


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
    if others:
        hint = f"; {' or '.join(others)} would install there"
    elif not any(board.arch in w.arches for w in matrix.values()):
        # No Python or OS choice helps (an ARMv6 Pi Zero W cannot run a 64-bit OS at all).
        hint = (f"; no known runtime publishes wheels for {board.arch} at all, so this board "
                f"cannot pip-install one (known: {', '.join(matrix)})")
    else:
        # Only a 32-bit userland on 64-bit-capable hardware gains from switching to a 64-bit OS.
        os_hint = " or a 64-bit OS" if board.arch == "armv7l" else ""
        hint = (f"; no known runtime has a wheel for {board.arch} / CPython {py}, so use an OS "
                f"with Python 3.11 (Pi OS Bookworm){os_hint}")
    return Check("runtime", False, why + hint)


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


def linux_checks(manifest: Manifest, board: BoardProfile,
                 python_version: str | None = None) -> list[Check]:
    """The checks of :func:`edgemeta.boards.check_bundle` for a Linux board."""
    python = _parse_python(python_version or board.python, "check_bundle")
    checks = [_runtime_check(board, python), _int8_check(manifest), _memory_check(manifest, board)]
    if board.storage_budget_mb is not None:
        checks.append(_storage_check(manifest, board, board.storage_budget_mb))
    return checks
