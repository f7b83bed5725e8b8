"""The host end of the agent connection with several requests in flight at once (a fake agent on a socketpair)."""

import socket
import threading

import pytest

from provium import protocol
from provium.agent_client import AgentClient, ConnectionLost
from provium.errors import AgentError, VmStateError

T = 10.0


@pytest.fixture
def pair():
    host, guest = socket.socketpair()
    yield host, guest
    host.close()
    guest.close()


def read_requests(guest, count):
    """The next `count` requests the host sent: [(channel, message)]."""
    decoder, frames = protocol.FrameDecoder(), []
    while len(frames) < count:
        frames += decoder.feed(guest.recv(65536))
    return frames


def in_thread(fn, *args):
    """Run fn in a thread; the returned function joins it and answers its value or raises its exception."""
    box = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()

    def result():
        thread.join(T)
        assert not thread.is_alive(), "the request is still waiting"
        if "error" in box:
            raise box["error"]
        return box["value"]
    return result


def test_replies_reach_their_own_requests_in_whatever_order_they_come(pair):
    host, guest = pair
    client = AgentClient(host)
    first = in_thread(client.request, 2, "exec", T)
    second = in_thread(client.request, 3, "exec", T)
    requests = {channel: message["id"] for channel, message in read_requests(guest, 2)}
    guest.sendall(protocol.encode(3, {"id": requests[3], "more": True, "stdout": b"thr"}))
    guest.sendall(protocol.encode(2, {"id": requests[2], "stdout": b"two", "exit_code": 0}))
    guest.sendall(protocol.encode(3, {"id": requests[3], "stdout": b"ee", "exit_code": 3}))
    assert (first()["stdout"], first()["exit_code"]) == (b"two", 0)
    assert (second()["stdout"], second()["exit_code"]) == (b"three", 3)


def test_a_worker_that_dies_fails_only_the_request_on_its_channel(pair):
    host, guest = pair
    client = AgentClient(host)
    dying = in_thread(client.request, 2, "syscall", T)
    living = in_thread(client.request, 3, "ping", T)
    requests = {channel: message["id"] for channel, message in read_requests(guest, 2)}
    guest.sendall(protocol.encode(2, {"event": "worker_exit", "status": "killed", "signal": 9}))
    with pytest.raises(AgentError, match=r"op 'syscall': the guest process serving it died \(killed by signal 9\)"):
        dying()
    guest.sendall(protocol.encode(3, {"id": requests[3]}))
    assert living()["id"] == requests[3]


def test_a_closed_connection_fails_every_request_in_flight(pair):
    host, guest = pair
    client = AgentClient(host)
    waiting = [in_thread(client.request, channel, "ping", T) for channel in (1, 2, 3)]
    read_requests(guest, 3)
    guest.close()
    for result in waiting:
        with pytest.raises(ConnectionLost, match="agent connection closed"):
            result()
    with pytest.raises(ConnectionLost):
        client.request(1, "ping", T)  # refused at once


def test_an_abandoned_channel_fails_its_request_and_a_late_reply_is_skipped(pair):
    host, guest = pair
    client = AgentClient(host)
    blocked = in_thread(client.request, 4, "syscall", T)
    (_, request), = read_requests(guest, 1)
    client.abandon(4, VmStateError("worker 9 was killed while an op ran on it"))
    with pytest.raises(VmStateError, match="worker 9 was killed"):
        blocked()
    guest.sendall(protocol.encode(4, {"id": request["id"], "ret": 0}))  # too late: nobody waits for it
    answered = in_thread(client.request, 1, "ping", T)
    (_, ping), = read_requests(guest, 1)
    guest.sendall(protocol.encode(1, {"id": ping["id"], "pong": True}))
    assert answered()["pong"] is True


def test_what_the_watch_raises_fails_every_request_in_flight(pair):
    host, guest = pair
    crash = AgentError("VM 'x': kernel panic")

    def watch():
        raise crash
    client = AgentClient(host, watch=watch)
    waiting = [in_thread(client.request, channel, "ping", T) for channel in (1, 2)]
    for result in waiting:
        with pytest.raises(AgentError, match="kernel panic"):
            result()


def test_a_large_request_waits_for_a_guest_that_reads_late_while_another_thread_reads(pair):
    # a read waits in short steps (for the watch); a send must not inherit them
    host, guest = pair
    client = AgentClient(host, watch=lambda: None)
    pending = in_thread(client.request, 2, "ping", T)
    (_, ping), = read_requests(guest, 1)
    big = in_thread(lambda: client.request(3, "write_file", T, data=bytes(1024 * 1024)))
    threading.Event().wait(0.6)  # the guest is busy: the host's socket buffer fills
    (_, write), = read_requests(guest, 1)
    guest.sendall(protocol.encode(3, {"id": write["id"]}) + protocol.encode(2, {"id": ping["id"]}))
    assert big()["id"] == write["id"]
    assert pending()["id"] == ping["id"]
