"""The host end of the agent connection: requests, replies, events, deadlines.

Requests are synchronous: send a frame, read frames until the final reply with
the request's id arrives or the deadline passes. Partial replies are merged as
docs/protocol.md says; replies to requests nobody waits for any more (they
timed out) and hello events are skipped.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from . import protocol
from .errors import AgentError, DeadlineError, ProtocolError


class ConnectionLost(ProtocolError):
    """The other end closed the connection (QEMU exited or the agent died)."""


WATCH_INTERVAL = 0.2


class AgentClient:
    """watch: called about every WATCH_INTERVAL seconds while waiting (it may raise to stop the wait)."""

    def __init__(self, sock: socket.socket, watch: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._watch = watch
        self._decoder = protocol.FrameDecoder()
        self._frames = []
        self._next_id = 1
        self._broken = None  # once the agent sends garbage, the stream cannot be trusted again
        self.agent_name: str | None = None

    def close(self) -> None:
        self._sock.close()

    def _send(self, channel, message):
        try:
            self._sock.sendall(protocol.encode(channel, message))
        except OSError as exc:
            raise ConnectionLost(f"agent connection lost while sending: {exc.strerror or exc}") from None

    def _next_frame(self, deadline, what):
        while not self._frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineError(f"{what} did not answer within the deadline")
            self._sock.settimeout(min(remaining, WATCH_INTERVAL) if self._watch else remaining)
            try:
                data = self._sock.recv(1 << 20)
            except socket.timeout:
                if self._watch:
                    self._watch()
                continue
            except OSError as exc:
                raise ConnectionLost(f"agent connection lost: {exc.strerror or exc}") from None
            if not data:
                raise ConnectionLost("agent connection closed")
            try:
                self._frames.extend(self._decoder.feed(data))
            except ProtocolError as exc:
                self._broken = f"the agent sent a malformed frame: {exc}"
                raise ProtocolError(self._broken) from None
        return self._frames.pop(0)

    def wait_hello(self, timeout: float) -> dict[str, Any]:
        """Wait for the agent's hello event (cold boot)."""
        deadline = time.monotonic() + timeout
        while True:
            channel, message = self._next_frame(deadline, "the agent's hello")
            if channel == protocol.ROUTER_CHANNEL and message.get("event") == "hello":
                return message

    def handshake(self, timeout: float) -> dict[str, Any]:
        """Exchange protocol versions; ProtocolError when they differ."""
        reply = self.request(protocol.ROUTER_CHANNEL, "hello", timeout, proto=protocol.PROTO_VERSION)
        if reply.get("proto") != protocol.PROTO_VERSION:
            raise ProtocolError(f"agent speaks protocol {reply.get('proto')!r}, "
                                f"provium speaks {protocol.PROTO_VERSION}")
        self.agent_name = reply.get("agent")
        return reply

    def request(self, channel: int, op: str, timeout: float, /, **fields: Any) -> dict[str, Any]:
        """Send op on channel and return its merged reply; AgentError on an error reply."""
        if self._broken:
            raise ProtocolError(self._broken)
        request_id = self._next_id
        self._next_id += 1
        self._send(channel, {"id": request_id, "op": op, **fields})
        deadline = time.monotonic() + timeout
        merged, total = {}, 0
        while True:
            frame_channel, message = self._next_frame(deadline, f"op {op!r}")
            if "event" in message:
                self._on_event(frame_channel, message, channel, op)
                continue
            if message.get("id") != request_id or frame_channel != channel:
                continue  # a late reply to a request that timed out
            for key, value in message.items():
                if isinstance(value, bytes):
                    total += len(value)
                    if total > protocol.MAX_REPLY_BYTES:
                        raise ProtocolError(f"op {op!r}: reply exceeds {protocol.MAX_REPLY_BYTES} bytes")
                    merged.setdefault(key, []).append(value)
            if message.get("more"):
                continue
            if "error" in message:
                raise AgentError(str(message["error"]), message.get("errno"))
            return {**message, **{key: b"".join(parts) for key, parts in merged.items()}}

    @staticmethod
    def _on_event(frame_channel, message, channel, op):
        event = message.get("event")
        if event == "hello" and frame_channel == protocol.ROUTER_CHANNEL:
            # a hello while connected: the agent's router died and was restarted
            raise AgentError(f"op {op!r}: the agent restarted (its router died) and the op was lost")
        if frame_channel != channel:
            return
        if event == "worker_exit":
            detail = (f"killed by signal {message['signal']}" if "signal" in message
                      else f"exit status {message['code']}" if "code" in message else "it ended")
            raise AgentError(f"op {op!r}: the guest process serving it died ({detail})")
        if event == "error":
            raise ProtocolError(f"op {op!r}: the agent could not decode the request: {message.get('message')}")
