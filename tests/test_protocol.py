"""The wire format, pinned: header layout, limits, decoding of good and bad frames."""

import struct

import msgpack
import pytest

from provium import protocol
from provium.errors import ProtocolError


def test_header_layout_is_magic_channel_length_little_endian():
    frame = protocol.encode(3, {"id": 7, "op": "ping"})
    payload = msgpack.packb({"id": 7, "op": "ping"}, use_bin_type=True)
    assert frame[:2] == b"PV"
    assert struct.unpack("<H", frame[2:4]) == (3,)
    assert struct.unpack("<I", frame[4:8]) == (len(payload),)
    assert frame[8:] == payload


def test_limits_match_the_document():
    assert protocol.PROTO_VERSION == 1
    assert protocol.HEADER_SIZE == 8
    assert protocol.MAX_PAYLOAD == 2 * 1024 * 1024
    assert protocol.CHUNK == 1024 * 1024


def test_bytes_travel_as_bin_and_text_as_str():
    frame = protocol.encode(1, {"data": b"\x00\xff", "path": "/tmp/x"})
    (channel, message), = protocol.FrameDecoder().feed(frame)
    assert channel == 1
    assert message == {"data": b"\x00\xff", "path": "/tmp/x"}


def test_decoder_reassembles_frames_split_anywhere():
    stream = protocol.encode(0, {"event": "hello", "proto": 1}) + protocol.encode(1, {"id": 1})
    decoder = protocol.FrameDecoder()
    frames = []
    for i in range(len(stream)):
        frames += decoder.feed(stream[i:i + 1])
    assert frames == [(0, {"event": "hello", "proto": 1}), (1, {"id": 1})]


def test_encoding_refuses_an_oversized_frame():
    with pytest.raises(ProtocolError, match="exceeds"):
        protocol.encode(1, {"data": b"x" * protocol.MAX_PAYLOAD})


@pytest.mark.parametrize("header, message", [
    (b"XX\x01\x00\x01\x00\x00\x00", "bad frame magic"),
    (b"PV\x01\x00\x00\x00\x00\x00", "frame length 0"),
    (b"PV\x01\x00" + struct.pack("<I", protocol.MAX_PAYLOAD + 1), "outside"),
])
def test_decoder_rejects_bad_headers_before_allocating(header, message):
    with pytest.raises(ProtocolError, match=message):
        protocol.FrameDecoder().feed(header)


@pytest.mark.parametrize("payload, message", [
    (b"\xc1", "undecodable"),
    (msgpack.packb([1, 2]), "not a map"),
    (msgpack.packb({1: 2}), "undecodable"),
])
def test_decoder_rejects_bad_payloads(payload, message):
    frame = b"PV\x01\x00" + struct.pack("<I", len(payload)) + payload
    with pytest.raises(ProtocolError, match=message):
        protocol.FrameDecoder().feed(frame)


def test_decoder_keeps_a_partial_frame_of_a_reused_read_buffer():
    """The client reads into one buffer it reuses: what the decoder keeps of a frame must be its own copy."""
    first, second = protocol.encode(1, {"id": 1, "data": b"a" * 100}), protocol.encode(2, {"id": 2})
    landing = bytearray(len(first) + 10)
    landing[:] = first + second[:10]
    decoder = protocol.FrameDecoder()
    assert decoder.feed(memoryview(landing)) == [(1, {"id": 1, "data": b"a" * 100})]
    landing[:len(second) - 10] = second[10:]
    landing[len(second) - 10:] = b"\xff" * (len(landing) - len(second) + 10)  # garbage past what was read
    assert decoder.feed(memoryview(landing)[:len(second) - 10]) == [(2, {"id": 2})]
