"""One context-manager protocol for everything in the fleet package that starts and stops."""

from __future__ import annotations

from types import TracebackType
from typing import TypeVar

__all__ = ["StartStop"]

T = TypeVar("T", bound="StartStop")


class StartStop:
    """``with x:`` calls ``x.start()`` (a no-op unless overridden) and always ``x.stop()``."""

    def start(self) -> None:
        """Begin; objects that are running once constructed keep this no-op."""

    def stop(self) -> None:  # pragma: no cover - every subclass defines it
        raise NotImplementedError

    def __enter__(self: T) -> T:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
