"""Batched UDP I/O on real loopback sockets: datagrams, peers, replies from the address a query
arrived at, oversized datagrams; for both batches, ctypes (dnsd.transports.mmsg) and C
(dnsd.transports._batch, whose answering test_batch.py checks).

Out of scope: the listener that uses it (test_transports.py).
"""

from __future__ import annotations

import socket

import pytest

from dnsd.transports import mmsg
from dnsd.transports.udp import IP_PKTINFO, IPV6_RECVPKTINFO

try:
    from dnsd.transports import _batch
except ImportError:  # test_batch.py fails on a missing extension; here the ctypes batch is tested
    _batch = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg are Linux-only")
BATCHES = [mmsg.DatagramBatch, *([_batch.DatagramBatch] if _batch is not None else [])]


@pytest.fixture(params=BATCHES, ids=lambda cls: cls.__module__.rsplit(".", 1)[-1])
def batch_class(request: pytest.FixtureRequest) -> type:
    return request.param


def _server(family: int, host: str, *, pktinfo: bool = False) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if pktinfo:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    elif pktinfo:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def _echo_all(batch: mmsg.DatagramBatch, expected: int) -> list[bytes]:
    seen: list[bytes] = []
    while len(seen) < expected:
        received = batch.receive()
        for i in range(received):
            data = batch.datagram(i)
            assert data is not None
            seen.append(data)
            assert batch.queue_reply(i, data[::-1])
        assert batch.send() == 0
    return seen


def test_a_batch_receives_every_datagram_and_answers_each_sender(batch_class: type) -> None:
    server = _server(socket.AF_INET, "127.0.0.1")
    batch = batch_class(server, count=8, size=512)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        assert batch.receive() == 0  # nothing waiting: no blocking, no error
        sent = []
        for n in range(20):  # more than one batch
            client = clients[n % 3]
            payload = f"query {n} ".encode() * (n + 1)
            client.sendto(payload, server.getsockname())
            sent.append(payload)
        assert sorted(_echo_all(batch, 20)) == sorted(sent)
        for n in range(len(sent)):
            client = clients[n % 3]
            client.settimeout(2)
            reply, source = client.recvfrom(4096)
            assert source == server.getsockname()
            assert reply in {p[::-1] for p in sent[n % 3 :: 3]}
    finally:
        server.close()
        for client in clients:
            client.close()


@pytest.mark.parametrize(
    ("family", "wildcard", "client_family", "target"),
    [
        (socket.AF_INET6, "::", socket.AF_INET6, "::1"),
        (socket.AF_INET6, "::", socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "0.0.0.0", socket.AF_INET, "127.0.0.2"),
    ],
)
def test_replies_leave_from_the_address_the_query_was_sent_to(
    batch_class: type, family: int, wildcard: str, client_family: int, target: str
) -> None:
    server = _server(family, wildcard, pktinfo=True)
    batch = batch_class(server, count=4, size=512, pktinfo=True)
    client = socket.socket(client_family, socket.SOCK_DGRAM)
    client.settimeout(2)
    try:
        port = server.getsockname()[1]
        client.sendto(b"where from", (target, port))
        assert _echo_all(batch, 1) == [b"where from"]
        reply, source = client.recvfrom(512)
        assert (reply, source[0], source[1]) == (b"morf erehw", target, port)
    finally:
        server.close()
        client.close()


def test_a_datagram_longer_than_the_buffer_is_flagged(batch_class: type) -> None:
    server = _server(socket.AF_INET, "127.0.0.1")
    batch = batch_class(server, count=4, size=64)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(b"x" * 65, server.getsockname())
        client.sendto(b"y" * 64, server.getsockname())
        data: list[bytes | None] = []
        while len(data) < 2:
            data.extend(batch.datagram(i) for i in range(batch.receive()))
        assert data == [None, b"y" * 64]
        assert not batch.queue_reply(0, b"z" * 65)  # a reply too long for a slot is refused
    finally:
        server.close()
        client.close()


def test_senders_are_read_in_place_and_as_raw_sockaddrs(batch_class: type) -> None:
    server = _server(socket.AF_INET6, "::")
    batch = batch_class(server, count=4, size=512)
    v4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    try:
        port = server.getsockname()[1]
        v4.sendto(b"four", ("127.0.0.1", port))
        v6.sendto(b"six", ("::1", port))
        senders: dict[bytes, tuple[tuple[int, bool], str]] = {}
        while len(senders) < 2:
            for i in range(batch.receive()):
                senders[batch.datagram(i)] = (batch.sender(i), mmsg.peer_host(batch.peer(i)))  # type: ignore[index]
        assert senders == {
            b"four": ((v4.getsockname()[1], False), "::ffff:127.0.0.1"),
            b"six": ((v6.getsockname()[1], True), "::1"),
        }
    finally:
        for sock in (server, v4, v6):
            sock.close()
