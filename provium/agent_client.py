"""The host end of the agent connection: requests, replies, events, deadlines.

Several threads may have requests in flight at once (ops on different agent
channels overlap in the guest). Each request waits for the final reply with
its id; whichever waiting thread finds nobody reading the socket reads the
next frames and hands each to the request it answers. Partial replies are
merged as docs/protocol.md says; replies to requests nobody waits for any
more (they timed out) and hello events are skipped. What ends the connection
(it closes, the agent sends garbage or restarts, the crash watch raises) fails
every request in flight; an event on a channel fails the requests on it.
Events of a channel somebody listens to (a terminal session's output) are kept
for next_event, which reads like a request does.
"""

from __future__ import annotations

import collections
import select
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol
from .errors import AgentError, DeadlineError, ProtocolError


class ConnectionLost(ProtocolError):
    """The other end closed the connection (QEMU exited or the agent died)."""


def _lost_while_sending(exc: OSError | ValueError) -> ConnectionLost:
    """ValueError: the socket was closed meanwhile."""
    return ConnectionLost(f"agent connection lost while sending: {getattr(exc, 'strerror', None) or exc}")


WATCH_INTERVAL = 0.2
READ_SIZE = 1 << 20  # bytes taken from the socket at once


class _Pending:
    """A request in flight: its reply merged so far, then its outcome (the reply or an exception)."""

    __slots__ = ("channel", "op", "merged", "total", "reply", "error")

    def __init__(self, channel: int, op: str):
        self.channel, self.op = channel, op
        self.merged: dict[str, list[bytes]] = {}
        self.total = 0
        self.reply: dict[str, Any] | None = None
        self.error: BaseException | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None


class AgentClient:
    """watch: called about every WATCH_INTERVAL seconds of silence while waiting; what it raises fails every
    request in flight (the crash watch: a guest that panicked answers nothing more). abandon() fails the
    requests of a channel from another thread within WATCH_INTERVAL."""

    def __init__(self, sock: socket.socket, watch: Callable[[], None] | None = None) -> None:
        self._sock = sock
        self._watch = watch
        self._decoder = protocol.FrameDecoder()
        # what a read lands in (one reader at a time): a new buffer of READ_SIZE per read costs an mmap, page
        # faults and an munmap per reply
        self._landing = memoryview(bytearray(READ_SIZE))
        self._lock = threading.Lock()  # what the threads share; taken as itself (Condition's with is Python code)
        self._cond = threading.Condition(self._lock)
        self._send_lock = threading.Lock()
        self._reading = False  # a thread is reading the socket (outside the condition's lock)
        self._waiting = 0  # threads waiting on the condition for the reader
        self._pending: dict[int, _Pending] = {}
        self._hello: _Pending | None = None  # wait_hello's, until the hello event arrives
        self._next_id = 1
        self._broken: ProtocolError | None = None  # garbage or a closed connection: nothing more can be read
        self._events: dict[int, collections.deque] = {}  # the listened channels' events, oldest first
        self._event_errors: dict[int, BaseException] = {}  # what ended a listened channel
        self.agent_name: str | None = None

    def close(self) -> None:
        self._sock.close()

    def wait_hello(self, timeout: float) -> dict[str, Any]:
        """Wait for the agent's hello event (cold boot)."""
        with self._lock:
            self._hello = waiter = _Pending(protocol.ROUTER_CHANNEL, "hello")
        try:
            return self._await(waiter, time.monotonic() + timeout)
        finally:
            self._hello = None

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
        with self._lock:
            if self._broken:
                raise self._broken
            request_id, self._next_id = self._next_id, self._next_id + 1
            self._pending[request_id] = waiter = _Pending(channel, op)
        deadline = time.monotonic() + timeout
        try:
            self._send(channel, {"id": request_id, "op": op, **fields}, deadline, op)
            return self._await(waiter, deadline)
        finally:
            with self._lock:
                self._pending.pop(request_id, None)

    def abandon(self, channel: int, error: BaseException) -> None:
        """Fail the requests in flight on `channel` with `error` (its worker was ended from here)."""
        with self._lock:
            self._fail(error, channel)
            self._cond.notify_all()

    def _send(self, channel: int, message: dict[str, Any], deadline: float, op: str) -> None:
        """Send one frame by `deadline`. The socket stays blocking with no timeout of its own (readers wait with
        select), so a send never inherits a read's short wait; it waits for room only when the socket has none.
        A frame cut off by the deadline breaks the connection, as the agent would misread what follows it."""
        frame = protocol.encode(channel, message)
        data = memoryview(frame)
        with self._send_lock:
            while data:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    if len(data) < len(frame):
                        self._broken = ProtocolError(f"op {op!r}: the guest stopped reading in the middle of a request")
                    raise DeadlineError(f"op {op!r}: the guest did not take the request within the deadline")
                try:
                    data = data[self._sock.send(data, socket.MSG_DONTWAIT):]
                except BlockingIOError:
                    self._wait_writable(min(remaining, WATCH_INTERVAL))
                except (OSError, ValueError) as exc:  # ValueError: the socket was closed meanwhile
                    raise _lost_while_sending(exc) from None

    def _wait_writable(self, timeout: float) -> None:
        try:
            select.select([], [self._sock], [], timeout)
        except (OSError, ValueError) as exc:
            raise _lost_while_sending(exc) from None

    def _await(self, waiter: _Pending, deadline: float) -> dict[str, Any]:
        """The waiter's reply."""
        if not self._wait_for(lambda: waiter.done, deadline):
            what = "the agent's hello" if waiter is self._hello else f"op {waiter.op!r}"
            raise DeadlineError(f"{what} did not answer within the deadline")
        if waiter.error is not None:
            raise waiter.error
        return waiter.reply

    def listen(self, channel: int) -> None:
        """Keep the events of `channel` for next_event, from now until unlisten."""
        with self._lock:
            self._events[channel] = collections.deque()
            self._event_errors.pop(channel, None)

    def unlisten(self, channel: int) -> None:
        with self._lock:
            self._events.pop(channel, None)
            self._event_errors.pop(channel, None)

    def next_event(self, channel: int, timeout: float) -> dict[str, Any] | None:
        """The oldest kept event of a listened channel, waiting up to `timeout` seconds (None: none came).
        What failed the channel's requests meanwhile (the connection ended, the worker died, the crash watch
        found a kernel report) is raised, once."""
        events = self._events[channel]
        self._wait_for(lambda: bool(events) or channel in self._event_errors, time.monotonic() + timeout)
        with self._lock:
            if events:
                return events.popleft()
            if channel in self._event_errors:
                raise self._event_errors.pop(channel)
        return None

    def _wait_for(self, done: Callable[[], bool], deadline: float) -> bool:
        """Wait until done() (checked under the lock) or the deadline: waits while another thread reads the
        socket, reads it when nobody does. done() at the end."""
        with self._lock:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._reading:
                    self._waiting += 1
                    try:
                        self._cond.wait(min(remaining, WATCH_INTERVAL))
                    finally:
                        self._waiting -= 1
                    continue
                self._reading = True
                self._lock.release()
                try:
                    frames, error = self._read(min(remaining, WATCH_INTERVAL))  # then it sees an abandon
                finally:
                    self._lock.acquire()
                    self._reading = False
                    if self._waiting:  # they wake once this thread releases the lock: after the delivery
                        self._cond.notify_all()
                for channel, message in frames:
                    self._deliver(channel, message)
                if error is not None:
                    self._fail(error)
            return True

    def _read(self, timeout: float) -> tuple[list, BaseException | None]:
        """(frames, error) from one read of at most `timeout` seconds (the watch runs when nothing came)."""
        if self._broken:
            return [], self._broken
        try:
            readable, _, _ = select.select([self._sock], [], [], timeout)
            size = self._sock.recv_into(self._landing, READ_SIZE, socket.MSG_DONTWAIT) if readable else None
        except BlockingIOError:
            return [], None
        except (OSError, ValueError) as exc:  # ValueError: the socket was closed meanwhile
            self._broken = ConnectionLost(f"agent connection lost: {getattr(exc, 'strerror', None) or exc}")
            return [], self._broken
        if size is None:
            try:
                if self._watch:
                    self._watch()
            except Exception as exc:  # noqa: BLE001 - what the watch found fails the requests in flight
                return [], exc
            return [], None
        if not size:
            self._broken = ConnectionLost("agent connection closed")
            return [], self._broken
        try:
            return self._decoder.feed(self._landing[:size]), None
        except ProtocolError as exc:
            self._broken = ProtocolError(f"the agent sent a malformed frame: {exc}")
            return [], self._broken

    def _fail(self, error: BaseException, channel: int | None = None) -> None:
        """Fail the requests in flight (on `channel` only, if given) that have no outcome yet."""
        for waiter in [*self._pending.values(), *([self._hello] if self._hello else [])]:
            if not waiter.done and channel in (None, waiter.channel):
                waiter.error = error
        for listened in self._events:
            if channel in (None, listened):
                self._event_errors.setdefault(listened, error)

    def _deliver(self, channel: int, message: dict[str, Any]) -> None:
        """Hand a frame to the request it answers, or act on the event it is."""
        if "event" in message:
            self._on_event(channel, message)
            return
        waiter = self._pending.get(message.get("id"))
        if waiter is None or waiter.channel != channel or waiter.done:
            return  # a late reply to a request that timed out
        if waiter.merged or message.get("more"):  # a reply in parts (a lone final frame is the reply as it is)
            for key, value in message.items():
                if isinstance(value, bytes):
                    waiter.total += len(value)
                    if waiter.total > protocol.MAX_REPLY_BYTES:
                        waiter.error = ProtocolError(f"op {waiter.op!r}: reply exceeds {protocol.MAX_REPLY_BYTES} bytes")
                        return
                    waiter.merged.setdefault(key, []).append(value)
            if message.get("more"):
                return
            message = {**message, **{key: b"".join(parts) for key, parts in waiter.merged.items()}}
        if "error" in message:
            waiter.error = AgentError(str(message["error"]), message.get("errno"))
        else:
            waiter.reply = message

    def _on_event(self, channel: int, message: dict[str, Any]) -> None:
        event = message.get("event")
        if channel in self._events:
            self._events[channel].append(message)
        if event == "hello" and channel == protocol.ROUTER_CHANNEL:
            if self._hello is not None:
                self._hello.reply = message
            else:  # a hello while connected: the agent's router died and was restarted
                for waiter in self._pending.values():
                    if not waiter.done:
                        waiter.error = AgentError(f"op {waiter.op!r}: the agent restarted (its router died) "
                                                  "and the op was lost")
            return
        for waiter in self._pending.values():
            if waiter.channel != channel or waiter.done:
                continue
            if event == "worker_exit":
                detail = (f"killed by signal {message['signal']}" if "signal" in message
                          else f"exit status {message['code']}" if "code" in message else "it ended")
                waiter.error = AgentError(f"op {waiter.op!r}: the guest process serving it died ({detail})")
            elif event == "error":
                waiter.error = ProtocolError(f"op {waiter.op!r}: the agent could not decode the request: "
                                             f"{message.get('message')}")
