"""OTA wire format: topics, offer/status JSON and binary chunks, strictly validated."""

from __future__ import annotations

import hashlib
import json

import pytest

from edgemeta.errors import MessageError
from firmware_bridge.ota.protocol import (
    CHUNK_HEADER_BYTES, MAX_CHUNK_BYTES, MAX_RANGES, ChunkError, Offer, Status, decode_chunk,
    decode_offer, decode_status, encode_chunk, new_transfer_id, ota_filter, ota_topic,
    parse_ota_topic, ranges_of,
)

TID = "0123456789abcdef0123456789abcdef"


def _offer(**kw) -> Offer:
    values = dict(transfer_id=TID, fleet="site-a", device="pi-1", bundle_sha256="ab" * 32,
                  bundle_bytes=100_000, chunk_bytes=65536, chunks=2, version="1.2.0",
                  allow_downgrade=False)
    values.update(kw)
    return Offer(**values)


def test_topics_round_trip_and_stay_out_of_the_telemetry_filter():
    t = ota_topic("site-a", "pi-1", "chunk")
    assert t == "edgemeta/v1/site-a/pi-1/ota/chunk"
    assert parse_ota_topic(t) == ("site-a", "pi-1", "chunk")
    assert ota_filter(kind="status") == "edgemeta/v1/+/+/ota/status"
    # telemetry subscribers use edgemeta/v1/<fleet>/+/+ : one level less, so no bundle bytes
    assert len(t.split("/")) == 6
    for bad in ("edgemeta/v1/site-a/pi-1/birth", "edgemeta/v1/a/b/ota/other",
                "edgemeta/v1/a/b#/ota/chunk", "x/v1/a/b/ota/chunk", 42):
        with pytest.raises(MessageError):
            parse_ota_topic(bad)
    with pytest.raises(MessageError):
        ota_topic("site/a", "pi-1", "offer")


def test_offer_round_trip():
    o = _offer()
    assert decode_offer(o.to_payload()) == o
    assert o.chunk_size(0) == 65536 and o.chunk_size(1) == 100_000 - 65536


@pytest.mark.parametrize(("field", "value", "match"), [
    ("chunks", 3, "chunks 3: expected 2"),
    ("chunk_bytes", MAX_CHUNK_BYTES + 1, "chunk_bytes"),
    ("bundle_bytes", 0, "bundle_bytes"),
    ("bundle_sha256", "AB" * 32, "64 lowercase hex"),
    ("transfer_id", "x" * 32, "32 lowercase hex"),
    ("device", "pi/1", "device"),
    ("version", "../etc", "version"),
    ("allow_downgrade", 1, "true or false"),
    ("chunks", True, "non-negative integer"),
])
def test_offer_rejects_bad_fields(field, value, match):
    raw = json.loads(_offer().to_payload())
    raw[field] = value
    with pytest.raises(MessageError, match=match):
        decode_offer(json.dumps(raw).encode())


@pytest.mark.parametrize("payload", [b"", b"\xff", b"[]", b'{"schema": 2}', b'{"schema": 1}',
                                     b'{"schema": 1, "x": NaN}', "text", b"{" * 20000])
def test_offer_rejects_bad_payloads(payload):
    with pytest.raises(MessageError):
        decode_offer(payload)


@pytest.mark.parametrize("payload", [b"[" * 30000 + b"]" * 30000,
                                     b'{"schema": 1, "x": ' + b"[" * 30000 + b"]" * 30000 + b"}",
                                     b'{"schema": 1, "size": ' + b"9" * 5000 + b"}"])
def test_offers_and_statuses_nested_too_deeply_or_with_huge_numbers_are_message_errors(payload):
    """Within the size cap, yet RecursionError/ValueError in json: the board must count them
    as rejected (MessageError), not log a crash on paho's thread."""

    with pytest.raises(MessageError):
        decode_offer(payload)
    with pytest.raises(MessageError):
        decode_status(payload)


def test_status_round_trip_and_range_checks():
    s = Status(TID, "site-a", "pi-1", "need", need=((0, 3), (5, 6)), received=3, chunks=6,
               version="1.0.0")
    back = decode_status(s.to_payload())
    assert back == s and back.need == ((0, 3), (5, 6)) and not back.final
    raw = json.loads(s.to_payload())
    for bad in ([[3, 3]], [[0]], [[-1, 2]], [[0, 1]] * (MAX_RANGES + 1)):
        raw["need"] = bad
        with pytest.raises(MessageError, match="need"):
            decode_status(json.dumps(raw).encode())
    raw["need"], raw["state"] = [], "done"
    with pytest.raises(MessageError, match="state"):
        decode_status(json.dumps(raw).encode())


def test_ranges_of_compacts_and_caps():
    assert ranges_of([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]
    assert ranges_of(range(0, 400, 2), limit=3) == [(0, 1), (2, 3), (4, 5)]


def test_chunk_round_trip():
    data = bytes(range(256)) * 10
    payload = encode_chunk(TID, 7, data)
    assert len(payload) == CHUNK_HEADER_BYTES + len(data)
    c = decode_chunk(payload)
    assert (c.transfer_id, c.index, c.data) == (TID, 7, data)
    assert c.sha256 == hashlib.sha256(data).digest() and c.verify()
    flipped = bytearray(payload)
    flipped[-1] ^= 1
    assert not decode_chunk(bytes(flipped)).verify()


@pytest.mark.parametrize(("payload", "kind"), [
    (b"", "malformed"),
    (b"EMOC\x01" + b"\0" * 52, "malformed"),  # header only, no data
    (b"XXXX" + encode_chunk(TID, 0, b"abc")[4:], "malformed"),
    (b"EMOC\x02" + encode_chunk(TID, 0, b"abc")[5:], "malformed"),
    (encode_chunk(TID, 0, b"a" * MAX_CHUNK_BYTES) + b"a", "oversized"),
    ("not bytes", "malformed"),
])
def test_chunk_decode_rejects(payload, kind):
    with pytest.raises(ChunkError) as info:
        decode_chunk(payload)
    assert info.value.kind == kind


def test_encode_chunk_refuses_bad_input():
    with pytest.raises(MessageError):
        encode_chunk("nothex", 0, b"x")
    with pytest.raises(MessageError):
        encode_chunk(TID, 0, b"")
    with pytest.raises(MessageError):
        encode_chunk(TID, 2**32, b"x")
    assert len(new_transfer_id()) == 32


def test_ota_package_is_board_side_safe():
    """The board runs the receiver: no TensorFlow, no host-only edgemeta packages."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['tensorflow'] = None\n"
            "import firmware_bridge.ota, firmware_bridge.ota.rollout\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')\n"
            "             and sys.modules[m] is not None or m.startswith(('edgemeta.data',\n"
            "             'edgemeta.meta', 'edgemeta.quantize')))\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_offer_chunk_size_and_count_are_bounded():
    from firmware_bridge.ota.protocol import MAX_CHUNKS, MAX_OTA_BUNDLE_BYTES, MIN_CHUNK_BYTES

    biggest = _offer(bundle_bytes=MAX_OTA_BUNDLE_BYTES, chunk_bytes=MIN_CHUNK_BYTES,
                     chunks=MAX_OTA_BUNDLE_BYTES // MIN_CHUNK_BYTES)
    assert biggest.chunks == MAX_CHUNKS
    assert _offer(bundle_bytes=100, chunk_bytes=100, chunks=1).chunk_size(0) == 100  # one chunk
    assert _offer(bundle_bytes=5000, chunk_bytes=MIN_CHUNK_BYTES, chunks=2).chunk_size(1) == 904
    for size, chunk in ((MAX_OTA_BUNDLE_BYTES, 1), (1 << 20, 1), (5000, 100), (100, 50),
                        (MAX_OTA_BUNDLE_BYTES, MIN_CHUNK_BYTES - 1)):
        with pytest.raises(MessageError, match="chunk_bytes"):
            _offer(bundle_bytes=size, chunk_bytes=chunk, chunks=-(-size // chunk))


def test_status_ranges_must_fit_its_chunks():
    s = Status(TID, "site-a", "pi-1", "need", need=((0, 3),), chunks=6)
    raw = json.loads(s.to_payload())
    for need, chunks, received in (([[5, 7]], 6, 0), ([[0, 2], [1, 3]], 6, 0),
                                   ([[3, 4], [0, 1]], 6, 0), ([[0, 1]], 6, 7),
                                   ([[0, 10**12]], 10**12, 0)):
        raw.update(need=need, chunks=chunks, received=received)
        with pytest.raises(MessageError):
            decode_status(json.dumps(raw).encode())


def test_chunk_bitmap_and_range_set():
    from firmware_bridge.ota.chunkset import ChunkBitmap, RangeSet

    b = ChunkBitmap(65_536)
    assert b.missing_ranges(64) == [(0, 65_536)] and len(b) == 0
    for i in (0, 1, 2, 7, 8, 9, 100, 65_535):
        assert b.add(i)
    assert not b.add(7) and len(b) == 8 and 9 in b and 10 not in b and -1 not in b
    assert b.missing_ranges(64) == [(3, 7), (10, 100), (101, 65_535)]
    assert b.missing_ranges(2) == [(3, 7), (10, 100)]
    with pytest.raises(IndexError):
        b.add(65_536)
    odd = ChunkBitmap(11)
    for i in range(11):
        odd.add(i)
    assert odd.complete and odd.missing_ranges(5) == []
    r = RangeSet([(5, 8), (0, 2)])
    assert r.remaining == 5 and 0 in r and 2 not in r and 7 in r and 8 not in r
    for i in (0, 1, 5, 6, 7):
        r.take(i)
    assert not r and r.remaining == 0
