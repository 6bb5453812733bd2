"""A damaged board.json fails closed with a BundleError, whatever the damage."""

import pytest

from edgemeta.bundle import read_config
from edgemeta.errors import BundleError


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"schema": NaN}', b"\xff\xfe"])
def test_damaged_board_json_is_a_bundle_error(tmp_path, raw):
    (tmp_path / "board.json").write_bytes(raw)
    with pytest.raises(BundleError):
        read_config(tmp_path)
