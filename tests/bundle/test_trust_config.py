"""A damaged board.json fails closed with a BundleError, whatever the damage."""

import pytest

from edgemeta.bundle import read_config
from edgemeta.errors import BundleError


@pytest.mark.parametrize("raw", [b"[" * 100_000 + b"]" * 100_000, b'{"schema": NaN}', b"\xff\xfe"])
def test_damaged_board_json_is_a_bundle_error(tmp_path, raw):
    (tmp_path / "board.json").write_bytes(raw)
    with pytest.raises(BundleError):
        read_config(tmp_path)


def test_init_home_with_a_bad_profile_or_key_creates_nothing(tmp_path):
    from edgemeta.bundle import init_home
    from edgemeta.errors import BoardError, SignatureError

    home = tmp_path / "card"
    with pytest.raises(BoardError):
        init_home(home, board="rpi-99")
    (tmp_path / "bad.pub").write_text("not a key")
    with pytest.raises(SignatureError):
        init_home(home, trust=[tmp_path / "bad.pub"])
    assert not home.exists()
    assert init_home(home, board="rpi-4b").board == "rpi-4b" and (home / "board.json").is_file()
