"""The artifact shipped to boards: an int8 model plus the manifest that says how to run it."""

from edgemeta.bundle.archive import (
    BUNDLE_SUFFIX,
    MANIFEST_NAME,
    MAX_BUNDLE_BYTES,
    MODEL_NAME,
    Bundle,
    bundle_bytes,
    pack_bundle,
    read_bundle,
    sha256_hex,
)
from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.home import BoardHome
from edgemeta.bundle.manifest import (
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
    Preprocessing,
    Provenance,
    validate_version,
)

__all__ = [
    "BUNDLE_SUFFIX",
    "MANIFEST_NAME",
    "MAX_BUNDLE_BYTES",
    "MODEL_NAME",
    "SCHEMA_VERSION",
    "BoardHome",
    "Bundle",
    "InputSpec",
    "Manifest",
    "Preprocessing",
    "Provenance",
    "atomic_write_bytes",
    "bundle_bytes",
    "pack_bundle",
    "read_bundle",
    "sha256_hex",
    "validate_version",
]
