"""What a compatibility check returns, and the parts shared by the Linux and the MCU checks.

Board-side safe: stdlib + the bundle manifest only.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgemeta.bundle.manifest import Manifest


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


def _image_hw(manifest: Manifest) -> tuple[int, int]:
    shape = manifest.input.shape
    # NHWC with a dynamic batch; fall back to the preprocessing size if the shape is unusual.
    height, width = (shape[1], shape[2]) if len(shape) == 4 else (None, None)
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        return height, width
    return manifest.input.preprocessing.size


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
