"""Microcontroller boards (``kind = "mcu"``): flash and RAM budget checks, and the refusal to flash.

The model reaches such a board compiled into its firmware with TensorFlow Lite for
Microcontrollers (``edgemeta export c``). The tensor arena is measured with
``firmware_bridge.mcu`` (tflite-micro when installed), imported lazily.

Board-side safe: stdlib + the bundle manifest only.
"""

from __future__ import annotations

from edgemeta.boards.compat import Check, _image_hw, _int8_check
from edgemeta.boards.profiles import BoardProfile
from edgemeta.bundle.manifest import Manifest
from edgemeta.errors import BoardError, BundleError, FlashError

_KB = 1024
# Without the model bytes, an MCU arena is guessed from the input shape for a Conv-4-like net:
# int8 first-conv output (64 x H x W) plus its 2x2-pooled copy, both alive at once, plus the
# persistent tail. Exact for the shipped Conv-4 activations (62,720 of 67,712 measured bytes).
MCU_ARENA_BYTES_PER_PIXEL = 64 * 1.25
MCU_ARENA_TAIL_BYTES = 8 * 1024


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
    # Lazy: firmware_bridge imports edgemeta.boards, and the model tools are needed only for MCUs.
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


def mcu_checks(manifest: Manifest, board: BoardProfile, model: bytes | None) -> list[Check]:
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
