"""The agent wire protocol: frame layout, limits, encoding and decoding.

docs/protocol.md is the definition; this module is its one Python
implementation and agent/proto.h follows the same numbers.
"""

import struct

import msgpack

from .errors import ProtocolError

PROTO_VERSION = 1
MAGIC = b"PV"
HEADER = struct.Struct("<2sHI")
HEADER_SIZE = HEADER.size
MAX_PAYLOAD = 2 * 1024 * 1024
CHUNK = 1024 * 1024
MAX_REPLY_BYTES = 256 * 1024 * 1024

ROUTER_CHANNEL = 0
MAIN_CHANNEL = 1

SYSCALL_MAX_ARGS = 6  # a syscall's arguments, buffers included


def encode(channel, message):
    """One frame carrying `message` (a dict) on `channel`."""
    payload = msgpack.packb(message, use_bin_type=True)
    if len(payload) > MAX_PAYLOAD:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return HEADER.pack(MAGIC, channel, len(payload)) + payload


def decode_header(header):
    """(channel, length) of an 8-byte header; ProtocolError if it is invalid."""
    return _checked_header(*HEADER.unpack(header))


def _checked_header(magic, channel, length):
    if magic != MAGIC:
        raise ProtocolError(f"bad frame magic {magic!r} (expected {MAGIC!r})")
    if not 1 <= length <= MAX_PAYLOAD:
        raise ProtocolError(f"frame length {length} outside 1..{MAX_PAYLOAD}")
    return channel, length


def decode_payload(payload):
    """The message map of a frame payload; ProtocolError if it is not one."""
    try:
        message = msgpack.unpackb(
            payload, raw=False, strict_map_key=True, max_bin_len=MAX_PAYLOAD,
            max_str_len=MAX_PAYLOAD, max_array_len=65536, max_map_len=65536,
        )
    except Exception as exc:  # msgpack raises many unrelated types on garbage
        raise ProtocolError(f"undecodable frame payload: {exc}") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"frame payload is a {type(message).__name__}, not a map")
    return message


class FrameDecoder:
    """Incremental decoder: feed bytes, collect (channel, message) pairs.

    Memory is bounded by one header plus MAX_PAYLOAD; anything malformed
    raises ProtocolError (the host does not resynchronise).
    """

    def __init__(self):
        self._buf = bytearray()  # the start of a frame not whole yet

    def feed(self, data):
        """The whole frames that `data` (bytes or a buffer, not kept) completes."""
        if self._buf:
            self._buf += data
            data = self._buf
        frames = []
        start, size = 0, len(data)
        with memoryview(data) as view:  # payloads are decoded in place, not copied out first
            while size - start >= HEADER_SIZE:
                channel, length = _checked_header(*HEADER.unpack_from(data, start))
                end = start + HEADER_SIZE + length
                if end > size:
                    break
                frames.append((channel, decode_payload(view[start + HEADER_SIZE:end])))
                start = end
        if data is self._buf:
            del self._buf[:start]
        elif start < size:
            self._buf = bytearray(data[start:])
        return frames
