"""The layout of a board home (a board's directory, or a mounted SD card).

::

    HOME/
      current                  text file naming the current version (atomic pointer)
      models/<version>/model.edgemeta
      state/<model>/prototypes.npz  what the board learned with each model (<model>: the
                               first 16 hex digits of its SHA-256), so an update or a
                               rollback never mixes embedding spaces or loses classes
      inbox/enroll/<label>/*.png, inbox/classify/[<label>/]*.png
      outbox/results.jsonl

The pointer is a small file replaced by ``os.replace`` rather than a symlink, because SD cards are
often FAT-formatted and FAT has no symlinks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.archive import BUNDLE_SUFFIX
from edgemeta.bundle.manifest import validate_version
from edgemeta.errors import BundleError

__all__ = ["BoardHome"]

BUNDLE_FILE = "model" + BUNDLE_SUFFIX


@dataclass(frozen=True)
class BoardHome:
    """Paths inside a board home. Creating one touches nothing on disk."""

    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike[str]) -> "BoardHome":
        return cls(Path(root).expanduser().resolve())

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def pointer(self) -> Path:
        return self.root / "current"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    def prototypes_path(self, model_sha256: str) -> Path:
        """Where the prototypes learned with the model of this SHA-256 are kept."""
        return self.state_dir / model_sha256[:16] / "prototypes.npz"

    @property
    def enroll_inbox(self) -> Path:
        return self.root / "inbox" / "enroll"

    @property
    def classify_inbox(self) -> Path:
        return self.root / "inbox" / "classify"

    @property
    def results_path(self) -> Path:
        return self.root / "outbox" / "results.jsonl"

    def version_dir(self, version: str) -> Path:
        return self.models_dir / validate_version(version)

    def bundle_path(self, version: str) -> Path:
        return self.version_dir(version) / BUNDLE_FILE

    def current_version(self) -> str | None:
        """The version the pointer names, or ``None`` if nothing was ever installed."""
        try:
            text = self.pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise BundleError(f"{self.pointer} is unreadable ({exc}); expected a text file naming "
                              "the current version; re-flash or roll back to repair it") from exc
        try:
            return validate_version(text)
        except BundleError as exc:
            raise BundleError(f"{self.pointer} is damaged: {exc}") from exc

    def current_bundle(self) -> Path:
        """Path of the current bundle; raise :class:`BundleError` if there is none."""
        version = self.current_version()
        if version is None:
            raise BundleError(
                f"{self.root} has no installed model (no '{self.pointer.name}' pointer); "
                "flash a bundle first: edgemeta flash BUNDLE --to dir:" + str(self.root)
            )
        path = self.bundle_path(version)
        if not path.is_file():
            raise BundleError(f"{self.root}: current version {version} has no bundle at {path}")
        return path

    def installed_versions(self) -> list[str]:
        """Versions present under ``models/``, oldest first by modification time."""
        if not self.models_dir.is_dir():
            return []
        dirs = [d for d in self.models_dir.iterdir() if (d / BUNDLE_FILE).is_file()]
        return [d.name for d in sorted(dirs, key=lambda d: d.stat().st_mtime)]

    def set_current(self, version: str) -> None:
        """Atomically point ``current`` at an installed version."""
        if not self.bundle_path(version).is_file():
            raise BundleError(f"cannot make {version} current: {self.bundle_path(version)} is missing")
        atomic_write_bytes(self.pointer, (version + "\n").encode())
