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
    sign_bundle,
)
from edgemeta.bundle._fs import atomic_write_bytes
from edgemeta.bundle.home import BoardHome
from edgemeta.bundle.manifest import (
    SCHEMA_VERSION,
    InputSpec,
    Manifest,
    Preprocessing,
    Provenance,
    SelfTest,
    compare_versions,
    validate_version,
)
from edgemeta.bundle.signing import (
    SIGNATURE_NAME,
    KeyPair,
    PublicKey,
    Signature,
    generate_keypair,
    key_id_of,
    load_private_key,
    load_public_key,
    verify_manifest,
)
from edgemeta.bundle.trust import BoardConfig, init_home, read_config, trusted_keys

__all__ = [
    "SIGNATURE_NAME",
    "BoardConfig",
    "KeyPair",
    "PublicKey",
    "SelfTest",
    "Signature",
    "compare_versions",
    "generate_keypair",
    "init_home",
    "key_id_of",
    "load_private_key",
    "load_public_key",
    "read_config",
    "sign_bundle",
    "trusted_keys",
    "verify_manifest",
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
