"""CLI commands for trust: signing keys, signing bundles, and what a board home accepts.

Board-side safe.
"""

from __future__ import annotations

import os

import click

from edgemeta.bundle import (
    generate_keypair,
    init_home,
    load_public_key,
    read_bundle,
    sign_bundle,
    trusted_keys,
)
from edgemeta.cli._base import cli


def _same_file(a: str, b: str) -> bool:
    """True if paths ``a`` and ``b`` name one file (spelled differently, or linked)."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet: compare the normalised paths
        return os.path.realpath(a) == os.path.realpath(b)

__all__ = ["board", "bundle", "keys"]


@cli.group()
def keys() -> None:
    """Ed25519 signing keys for bundles."""


@keys.command("generate")
@click.argument("private_key", type=click.Path(dir_okay=False))
@click.option("--public", "public_key", type=click.Path(dir_okay=False), default=None,
              help="Where the public key goes [default: PRIVATE_KEY.pub].")
def keys_generate(private_key: str, public_key: str | None) -> None:
    """Make a key pair: PRIVATE_KEY (keep it secret, mode 0600) and its .pub for the boards."""
    if public_key is not None and _same_file(private_key, public_key):
        # The public key would be written over the private one: the signing key would be lost.
        raise click.UsageError(f"--public {public_key} and PRIVATE_KEY {private_key} are the same "
                               "file; expected two different paths")
    pair = generate_keypair(private_key, public_key)
    click.echo(f"key {pair.key_id}: private {pair.private_path}, public {pair.public_path}")
    click.echo(f"trust it on a board with: edgemeta board init HOME --trust {pair.public_path}")


@cli.group()
def bundle() -> None:
    """Work on bundle files."""


@bundle.command("sign")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True, dir_okay=False))
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False), required=True,
              help="PEM private key from 'edgemeta keys generate'.")
@click.option("--out", "out_path", type=click.Path(dir_okay=False), default=None,
              help="Write the signed bundle here [default: sign BUNDLE in place].")
def bundle_sign(bundle_path: str, key_path: str, out_path: str | None) -> None:
    """Sign BUNDLE so that boards trusting the key install it."""
    if out_path is not None and _same_file(out_path, key_path):
        # The signed bundle would replace the private key, and with it every future release.
        raise click.UsageError(f"--out {out_path} is the private key given with --key; expected "
                               "a path for the signed bundle")
    signed = sign_bundle(bundle_path, key_path, out_path)
    assert signed.signature is not None
    click.echo(f"signed {out_path or bundle_path} ({signed.manifest.name} {signed.version}) "
               f"with key {signed.signature.key_id}")


@bundle.command("verify")
@click.argument("bundle_path", metavar="BUNDLE", type=click.Path(exists=True, dir_okay=False))
@click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
              required=True, help="Public key to check the signature against; repeatable.")
def bundle_verify(bundle_path: str, trust: tuple[str, ...]) -> None:
    """Check BUNDLE's signature against public keys, as a board would."""
    from edgemeta.bundle import verify_manifest

    b = read_bundle(bundle_path)
    key = verify_manifest(b.manifest_json, b.signature, [load_public_key(p) for p in trust],
                          where=bundle_path)
    click.echo(f"{bundle_path}: signature by trusted key {key.key_id} verifies")


@cli.group()
def board() -> None:
    """Configure a board home (run on the board, or on a mounted SD card)."""


@board.command("init")
@click.argument("home", type=click.Path(file_okay=False))
@click.option("--trust", "trust", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Public key whose signed bundles this board installs; repeatable.")
@click.option("--allow-unsigned/--require-signature", default=None,
              help="Accept bundles without a signature (off unless given).")
@click.option("--allow-ota-downgrade/--refuse-ota-downgrade", default=None,
              help="Honour downgrades requested over the air (off unless given).")
@click.option("--board", "profile", default=None,
              help="The board profile this home runs on (see 'edgemeta boards').")
def board_init(home: str, trust: tuple[str, ...], allow_unsigned: bool | None,
               allow_ota_downgrade: bool | None, profile: str | None) -> None:
    """Create or update a board home's trust settings (keys are added, never removed here)."""
    # Check everything given before init_home creates HOME, so a typo leaves nothing behind.
    for path in trust:
        load_public_key(path)
    if profile is not None:
        from edgemeta.boards import get_board, require_flashable

        # A microcontroller has no board home: every later install would be refused.
        require_flashable(get_board(profile))
    config = init_home(home, trust=trust, allow_unsigned=allow_unsigned, board=profile,
                       allow_ota_downgrade=allow_ota_downgrade)
    keys_now = [k.key_id for k in trusted_keys(home)]
    click.echo(f"{home}: board {config.board or 'any'}, trusts {', '.join(keys_now) or 'no keys'}, "
               f"unsigned bundles {'allowed' if config.allow_unsigned else 'refused'}, "
               f"over-the-air downgrades {'allowed' if config.allow_ota_downgrade else 'refused'}")
