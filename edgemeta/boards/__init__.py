"""Board profiles (``boards/*.toml``) and the check that a bundle can run on a board.

A profile is plain TOML so that adding a board needs no code. Files whose name starts with ``_``
are not boards: ``_runtimes.toml`` holds the wheel matrix of the interpreter packages.

Two kinds of board: ``kind = "linux"`` (the default: a Raspberry Pi-class board that runs Python
and installs bundles with ``edgemeta flash``) and ``kind = "mcu"`` (a microcontroller with no OS
to speak of: the model is compiled into its firmware with TensorFlow Lite for Microcontrollers via
``edgemeta export c``; its profile gives flash and RAM budgets instead of a Python runtime).

The code is split by responsibility: :mod:`edgemeta.boards.profiles` (loading profiles),
:mod:`edgemeta.boards.compat` (:class:`Check`, :class:`Compatibility`), :mod:`edgemeta.boards.linux`
and :mod:`edgemeta.boards.mcu` (the checks per kind). Everything public is importable from here.

Board-side safe: stdlib + the bundle manifest only (no TensorFlow, no numpy needed).
"""

from __future__ import annotations

from edgemeta.boards.compat import Check, Compatibility
from edgemeta.boards.linux import (
    ARENA_BYTES_PER_PIXEL,
    PROCESS_OVERHEAD_BYTES,
    RAM_BUDGET_FRACTION,
    WEIGHT_COPIES,
    estimate_peak_bytes,
    linux_checks,
)
from edgemeta.boards.mcu import (
    MCU_ARENA_BYTES_PER_PIXEL,
    MCU_ARENA_TAIL_BYTES,
    mcu_checks,
    require_flashable,
)
from edgemeta.boards.profiles import (
    ARCHES,
    BOARDS_DIR_ENV,
    KINDS,
    MCU_ARCHES,
    MCU_RUNTIME,
    RUNTIMES_FILE,
    BoardProfile,
    RuntimeWheels,
    boards_dir,
    get_board,
    list_boards,
    runtime_wheels,
)
from edgemeta.bundle.manifest import Manifest

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
    # A bundle built for named boards is refused by any other at install time: say so here too.
    target = [] if not manifest.boards else [_target_check(manifest, board)]
    if board.is_mcu:
        checks = target + mcu_checks(manifest, board, model)
        return Compatibility(fits=all(c.ok for c in checks), checks=tuple(checks),
                             board=board.name, flashable=False)
    checks = target + linux_checks(manifest, board, python_version)
    return Compatibility(fits=all(c.ok for c in checks), checks=tuple(checks), board=board.name)


def _target_check(manifest: Manifest, board: BoardProfile) -> Check:
    built_for = ", ".join(manifest.boards)
    if board.name in manifest.boards:
        return Check("boards", True, f"the bundle is built for {built_for}")
    return Check("boards", False, f"the bundle is built for {built_for}, not for {board.name}: "
                                  "its install would be refused; convert again with "
                                  f"--board {board.name}")
