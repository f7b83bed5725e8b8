"""Fuzzing both decoders: the agent's (through its host mode) and the host's (hypothesis).

The agent must answer garbage with an error or drop it and keep serving; the
host's decoder must only ever return frames or raise ProtocolError, holding at
most one frame in memory.
"""

import random
import socket
import subprocess
import threading
import time

import msgpack
from hypothesis import given, settings, strategies as st

from provium import agent_build, protocol
from provium.cache import Cache
from provium.errors import ProtocolError

AGENT_FRAMES = 100_000
# Ops that are safe to send at random: none runs a command, writes or powers off.
SAFE_OPS = ["ping", "hello", "read_file", "job_wait", "job_kill", "frobnicate", "", "ping\x00"]


def random_value(rng, depth=0):
    kind = rng.randrange(8 if depth < 3 else 5)
    if kind == 0:
        return rng.randrange(-2**63, 2**64)
    if kind == 1:
        return rng.randbytes(rng.randrange(0, 40))
    if kind == 2:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(0, 12)))
    if kind == 3:
        return rng.choice([None, True, False])
    if kind == 4:
        return rng.random()
    if kind == 5:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(0, 6))]
    return {rng.randrange(-9, 9) if rng.random() < 0.2 else f"k{rng.randrange(9)}": random_value(rng, depth + 1)
            for _ in range(rng.randrange(0, 6))}


def random_frame(rng):
    """One fuzz input, most of them reaching the agent's message decoder:
    garbage without a frame start (resync), a valid header over a mutated or
    truncated payload (msgpack decoding), a valid frame of a random message
    (request parsing), or a header with a mutated magic or channel."""
    message = {"id": rng.randrange(1, 2**32), "op": rng.choice(SAFE_OPS)}
    if rng.random() < 0.5:
        message.update({f"f{i}": random_value(rng) for i in range(rng.randrange(0, 4))})
    if rng.random() < 0.1:
        message = random_value(rng)
    try:
        payload = bytearray(msgpack.packb(message, use_bin_type=True))
    except (TypeError, ValueError, OverflowError):
        payload = bytearray(rng.randbytes(8))
    roll = rng.random()
    if roll < 0.2:
        return rng.randbytes(rng.randrange(1, 48)).replace(b"P", b"Q")
    if roll < 0.8:
        for _ in range(rng.randrange(1, 4)):
            payload[rng.randrange(len(payload))] = rng.randrange(256)
        if rng.random() < 0.3 and len(payload) > 1:
            del payload[rng.randrange(1, len(payload)):]
    header = bytearray(protocol.HEADER.pack(protocol.MAGIC, rng.randrange(0, 6), len(payload)))
    if roll > 0.95:
        header[rng.randrange(4)] = rng.randrange(256)
    return bytes(header + payload)


def test_the_agent_survives_100k_random_and_mutated_frames(capsys):
    binary = agent_build.build(Cache())
    host, guest = socket.socketpair()
    proc = subprocess.Popen([str(binary), "--stdio"], stdin=guest, stdout=guest)
    guest.close()
    replies, done = [0], threading.Event()
    decoder = protocol.FrameDecoder()
    failure = []

    def drain():
        try:
            while not done.is_set():
                data = host.recv(1 << 20)
                if not data:
                    return
                for channel, message in decoder.feed(data):  # the agent only ever sends valid frames
                    replies[0] += 1
                    if message.get("id") == 2**40:
                        done.set()
        except Exception as exc:  # noqa: BLE001 - reported below
            failure.append(exc)
            done.set()

    reader = threading.Thread(target=drain)
    reader.start()
    rng = random.Random(20261121)
    started = time.monotonic()
    batch = []
    for n in range(AGENT_FRAMES):
        batch.append(random_frame(rng))
        if len(batch) == 500:
            host.sendall(b"".join(batch))
            batch = []
    host.sendall(b"".join(batch))
    host.sendall(bytes(protocol.MAX_PAYLOAD + protocol.HEADER_SIZE))  # completes any half-read frame
    for channel in (0, 1):
        host.sendall(protocol.encode(channel, {"id": 2**40 - channel, "op": "ping"}))
    host.sendall(protocol.encode(1, {"id": 2**40, "op": "ping"}))
    assert done.wait(120), "the agent stopped answering"
    elapsed = time.monotonic() - started
    assert not failure, f"the agent sent something undecodable: {failure[0]}"
    assert proc.poll() is None, "the agent died"
    host.close()
    proc.wait(10)
    reader.join(10)
    with capsys.disabled():
        print(f"\nagent fuzz: {AGENT_FRAMES} frames in {elapsed:.1f} s, {replies[0]} replies and events, "
              f"agent alive and answering")


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=2048), st.lists(st.integers(1, 97), max_size=20))
def test_the_host_decoder_returns_frames_or_protocol_errors(data, cuts):
    decoder = protocol.FrameDecoder()
    position = 0
    try:
        for cut in [*cuts, len(data)]:
            frames = decoder.feed(data[position:position + cut])
            position += cut
            for channel, message in frames:
                assert isinstance(message, dict) and 0 <= channel < 65536
            assert len(decoder._buf) <= protocol.HEADER_SIZE + protocol.MAX_PAYLOAD
    except ProtocolError:
        pass


messages = st.dictionaries(
    st.text(max_size=8),
    st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1), st.binary(max_size=64), st.text(max_size=16),
              st.lists(st.binary(max_size=16), max_size=4)),
    max_size=6)


@settings(max_examples=2000, deadline=None)
@given(st.integers(0, 65535), messages, st.integers(1, 13))
def test_valid_frames_round_trip_in_any_chunking(channel, message, step):
    frame = protocol.encode(channel, message)
    decoder = protocol.FrameDecoder()
    out = []
    for i in range(0, len(frame), step):
        out += decoder.feed(frame[i:i + step])
    assert out == [(channel, message)]
