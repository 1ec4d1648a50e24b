"""The C batch (dnsd/transports/_batch.c) against the Python engine, over real loopback UDP.

The Python engine is the reference, both its parsers (the hand-written fast path,
`dnsd.wire.respond`, and dnspython's, `wire._careful`): for generated queries over generated
zones the C batch must send the same response byte for byte (one of the reference's, when it
rotates a multi-record answer), and it must count what QueryStats.record counts. What the
batch leaves to Python goes through the listener's own path (respond_safely).

Out of scope: the listener's sockets, wildcard addresses and hostile input end to end
(test_transports.py runs those with --udp-batching c, python and off); the ctypes batch (test_mmsg.py).
"""

from __future__ import annotations

import asyncio
import os
import select
import socket
import struct
from collections.abc import Callable

import dns.edns
import dns.flags
import dns.message
import dns.name
import pytest
from conftest import Zone, make_config
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import cluster, endpoint, endpoint_slice, pod, service

from dnsd import wire
from dnsd.config import Listen, parse_nameserver
from dnsd.stats import QueryStats
from dnsd.transports import mmsg
from dnsd.transports.udp import UdpListener, open_socket

try:
    from dnsd.transports import _batch
except ImportError:
    _batch = None  # type: ignore[assignment]

# scripts/test builds the extension (it installs a C compiler), so it must be there; elsewhere
# (DNSD_TEST_WITHOUT_C=1) these tests say they were skipped instead of failing.
pytestmark = [
    # The C code reports an index it cannot read as "unraisable" and leaves the query to Python,
    # which would hide the bug from the comparison.
    pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.skipif(not mmsg.available(), reason="recvmmsg/sendmmsg are Linux-only"),
    pytest.mark.skipif(_batch is None and os.environ.get("DNSD_TEST_WITHOUT_C") == "1", reason="not built"),
]
MANGLE_ZONE = Zone(
    cluster(
        service("web"),
        endpoint_slice("web-6", "web", *(endpoint(f"2001:db8::{i}", pod=f"web-{i}") for i in range(1, 20))),
        *(pod(f"web-{i}", f"2001:db8::{i}") for i in range(1, 20)),
    )
)
ROTATIONS = 64
"""More than the records of any generated answer: every rotation is among this many responses."""
NAMESPACES = ("default", "Prod", "a-very-long-namespace-name-for-sizes")


def test_the_extension_is_built() -> None:
    assert _batch is not None, "dnsd.transports._batch is not built: install gcc and the Python headers"


@st.composite
def clusters(draw: st.DrawFn) -> str:
    """Services with 0-60 IPv6 and 0-3 IPv4 endpoints (answers around 512 and 1232 bytes), named
    ports (SRV records of several sizes), pods with names, in namespaces of several lengths."""
    objects = []
    for n in range(draw(st.integers(1, 5))):
        namespace = draw(st.sampled_from(NAMESPACES))
        name = draw(st.sampled_from(["web", "db", "x", "a-service-with-a-long-name"])) + str(n)
        count = draw(st.sampled_from([0, 1, 2, 3, 15, 16, 17, 18, 40, 41, 42, 43, 60]))
        v4 = draw(st.integers(0, 3))
        ports = draw(st.sampled_from([[("http", "TCP", 80)], [("http", "TCP", 80), ("dns-over-tcp", "TCP", 53)]]))
        six = [endpoint(f"2001:db8:{n}::{i + 1:x}", pod=f"{name}-{i}") for i in range(count)]
        four = [endpoint(f"198.51.100.{n * 4 + i + 1}", pod=f"{name}-{i}") for i in range(v4)]
        objects.append(service(name, namespace))
        objects.append(endpoint_slice(f"{name}-6", name, *six, namespace=namespace, ports=ports))
        objects.append(endpoint_slice(f"{name}-4", name, *four, namespace=namespace, address_type="IPv4", ports=ports))
        for i in range(max(count, v4)):
            ips = [f"2001:db8:{n}::{i + 1:x}"] if i < count else []
            ips += [f"198.51.100.{n * 4 + i + 1}"] if i < v4 else []
            objects.append(pod(f"{name}-{i}", *ips, namespace=namespace))
    return cluster(*objects)


def _names(zone: Zone) -> list[str]:
    """Every name the index holds, some rendered ones and some that do not exist."""
    names = [dns.name.from_wire(key, 0)[0].to_text() for key in zone.index.nodes]
    return [*names, "web0-0.default.pod.gua.example.com.", "nothing.gua.example.com.", "example.org."]


@st.composite
def queries(draw: st.DrawFn, names: list[str]) -> bytes:
    name = draw(st.sampled_from(names))
    name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
    qtype = draw(st.sampled_from(["A", "AAAA", "SRV", "SOA", "NS", "TXT", "PTR", "CNAME", "MX", "ANY", 65, 300]))
    edns = draw(st.sampled_from([-1, 0]))
    payload = draw(st.sampled_from([0, 511, 512, 513, 700, 1231, 1232, 1233, 4096]))
    query = dns.message.make_query(name, qtype, use_edns=edns, payload=payload, want_dnssec=draw(st.booleans()))
    query.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD]))
    query.id = 0  # set by the test: each query of a round has its own ID
    return query.to_wire()


def _serve_round(
    batch: _batch.DatagramBatch, server: socket.socket, zone: Zone, stats: QueryStats, n: int, signed_possible: bool
) -> int:
    """Receive n datagrams, answer them as the listener does; how many the C code answered."""
    answered_in_c = 0
    seen = 0
    while seen < n:
        received = batch.receive()
        if not received:
            server_ready(server)
            continue
        seen += received
        left = batch.answer(zone.index, stats, signed_possible)
        answered_in_c += received - len(left)
        for i in left:
            data = batch.datagram(i)
            assert data is not None
            reply = wire.respond_safely(data, zone.index)
            stats.record(batch.sender(i)[1], data, reply, 1)
            if reply is not None:
                assert batch.queue_reply(i, reply)
        assert batch.send() == 0
    return answered_in_c


def server_ready(server: socket.socket) -> None:
    assert select.select([server], [], [], 2)[0], "the queries did not arrive"


def assert_same_response(c_reply: bytes, answer: Callable[[], bytes | None]) -> None:
    """c_reply is byte for byte a response the reference gives: multi-record answers rotate (one
    step per response), so the reference is asked until it has started at every record."""
    seen = []
    for _ in range(ROTATIONS):
        reference = answer()
        assert reference is not None
        if reference == c_reply:
            return
        seen.append(reference)
    pytest.fail(f"the C batch sent {c_reply.hex()}; the reference would send one of {[r.hex() for r in seen[:3]]}...")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(text=clusters(), max_answers=st.sampled_from([None, 1, 5, 20]), data=st.data())
def test_c_batch_answers_as_the_python_engine(text: str, max_answers: int | None, data: st.DataObject) -> None:
    assert _batch is not None
    config = make_config(max_answers=max_answers, ns=(parse_nameserver("ns1.gua.example.com=2001:db8::53"),))
    zone = Zone(text, config)
    wires = data.draw(st.lists(queries(_names(zone)), min_size=1, max_size=40))
    family = data.draw(st.sampled_from([socket.AF_INET, socket.AF_INET6]))
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    with socket.socket(family, socket.SOCK_DGRAM) as server, socket.socket(family, socket.SOCK_DGRAM) as client:
        server.bind((host, 0))
        server.setblocking(False)
        client.settimeout(5)
        batch = _batch.DatagramBatch(server, 16, 65535)  # fewer slots than queries: several batches
        c_stats, reference_stats = QueryStats("udp"), QueryStats("udp")
        sent = {}
        for qid, query in enumerate(wires, 1):
            query = struct.pack("!H", qid) + query[2:]
            sent[qid] = query
            client.sendto(query, server.getsockname())
        signed_possible = data.draw(st.booleans())  # as with TSIG keys: what Transfers.claims takes is left
        answered_in_c = _serve_round(batch, server, zone, c_stats, len(sent), signed_possible)
        replies = {}
        for _ in sent:
            reply = client.recv(65535)
            replies[struct.unpack("!H", reply[:2])[0]] = reply
    assert replies.keys() == sent.keys()
    for qid, query in sent.items():
        assert_same_response(replies[qid], lambda query=query: wire.respond(query, zone.index))
        # ... and as dnspython's parser leads the engine to answer (test_protocol.py checks the
        # two Python parsers on a fixed zone; here on generated ones).
        assert_same_response(replies[qid], lambda query=query: wire._careful(query, zone.index, False))
        reference_stats.record(family == socket.AF_INET6, query, wire.respond(query, zone.index), 1)
    for counter in ("requests", "rcodes", "request_sizes", "response_sizes"):
        assert getattr(c_stats, counter) == getattr(reference_stats, counter), counter
    assert sum(c_stats.durations) == len(sent)
    assert answered_in_c <= len(sent)


@st.composite
def mutated(draw: st.DrawFn, names: list[str]) -> bytes:
    """A query with some bytes after its ID overwritten, cut short or extended."""
    query = bytearray(draw(queries(names)))
    for _ in range(draw(st.integers(1, 4))):
        query[draw(st.integers(2, len(query) - 1))] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from([None, None, 1, 4, 11]))
    tail = draw(st.sampled_from([b"", b"", b"\x00", b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"]))
    return bytes(query[: len(query) - cut] if cut else query) + tail


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mangled_queries_get_the_python_engines_answers(data: st.DataObject) -> None:
    """The C parser takes only what it can prove plain; everything else, however mangled, is
    answered (or not) exactly as the Python engine answers it."""
    assert _batch is not None
    zone = MANGLE_ZONE
    wires = data.draw(st.lists(mutated(_names(zone)), min_size=1, max_size=30))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        batch = _batch.DatagramBatch(server, 16, 65535)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(5)
            sent = {}
            for qid, query in enumerate(wires, 1):
                query = struct.pack("!H", qid) + query[2:]
                sent[qid] = query
                client.sendto(query, server.getsockname())
            _serve_round(batch, server, zone, QueryStats("udp"), len(sent), data.draw(st.booleans()))
            expected = {qid for qid, query in sent.items() if wire.respond_safely(query, zone.index) is not None}
            replies = {}
            for _ in expected:
                reply = client.recv(65535)
                replies[struct.unpack("!H", reply[:2])[0]] = reply
            client.settimeout(0.05)
            with pytest.raises(TimeoutError):
                client.recv(65535)  # nothing for the queries the engine drops
    assert replies.keys() == expected
    for qid in expected:
        assert_same_response(replies[qid], lambda query=sent[qid]: wire.respond_safely(query, zone.index))


def test_most_plain_queries_are_answered_in_c() -> None:
    """The comparison above holds whoever answers; this checks the C code does answer: plain
    queries for nodes and for names in no node, with and without EDNS, and nothing else."""
    assert _batch is not None
    endpoints = [endpoint(f"2001:db8::{i}", pod="p" * i) for i in range(1, 4)]  # SRV targets of 3 sizes
    ports = [("http", "TCP", 80), ("dns", "UDP", 53)]
    config = make_config(ns=(parse_nameserver("ns1.gua.example.com=2001:db8::53"),))
    zone = Zone(cluster(service("web"), endpoint_slice("web-1", "web", *endpoints, ports=ports)), config)
    plain = [
        dns.message.make_query(name, rdtype, use_edns=edns).to_wire()
        for name, rdtype in [
            ("WEB.default.svc.gua.example.com.", "AAAA"),  # 3 records of one size
            ("web.default.svc.gua.example.com.", "A"),  # NODATA
            ("_http._tcp.web.default.svc.gua.example.com.", "SRV"),  # 3 records of 3 sizes, glue
            ("gua.example.com.", "NS"),  # glue in the additional section
            ("missing.gua.example.com.", "AAAA"),  # NXDOMAIN
            ("example.org.", "AAAA"),  # REFUSED
        ]
        for edns in (-1, 0)
    ]
    # What a TSIG record looks like after its owner, inside an (unknown) EDNS option: the
    # transfer module's with TSIG keys (Transfers.claims), a plain query without.
    tsig_lookalike = dns.message.make_query(
        "web.default.svc.gua.example.com.",
        "AAAA",
        use_edns=0,
        options=[dns.edns.GenericOption(65001, b"\x00\xfa\x00\xff\x00\x00\x00\x00")],
    ).to_wire()
    plain.append(tsig_lookalike)
    others = [
        dns.message.make_query("p.default.pod.gua.example.com.", "AAAA").to_wire(),  # rendered when asked
        dns.message.make_query("x.default.pod.gua.example.com.", "AAAA").to_wire(),  # might have been
        dns.message.make_query("web.default.svc.gua.example.com.", "ANY").to_wire(),
        dns.message.make_query("default.svc.gua.example.com.", "AAAA").to_wire(),  # empty non-terminal
        b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x03web\xc0\x0c\x00\x1c\x00\x01",  # a pointer loop
    ]
    queries = [struct.pack("!H", n) + query[2:] for n, query in enumerate(plain + others)]
    left, unsynced, signed = set(), set(), set()
    stats = QueryStats("udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        batch = _batch.DatagramBatch(server, 64, 65535)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for query in queries:
                client.sendto(query, server.getsockname())
        received = 0
        while received < len(queries):  # usually one batch; a loaded machine may split it
            server_ready(server)
            count = batch.receive()
            received += count
            number = [struct.unpack("!H", batch.datagram(i)[:2])[0] for i in range(count)]  # type: ignore[index]
            left |= {number[i] for i in batch.answer(zone.index, stats, False)}
            # What the calls below queue replaces what the one above queued (a slot per datagram).
            unsynced |= {number[i] for i in batch.answer(None, stats, False)}
            signed |= {number[i] for i in batch.answer(zone.index, stats, True)}  # TSIG keys configured
    assert left == set(range(len(plain), len(queries)))
    assert unsynced == set(range(len(queries)))
    assert signed - left == {plain.index(tsig_lookalike)}


def test_a_rendered_name_is_answered_in_c_once_python_rendered_it() -> None:
    assert _batch is not None
    zone = Zone(cluster(service("web"), pod("web-0", "2001:db8::7")))
    query = dns.message.make_query("WEB-0.default.pod.gua.example.com.", "AAAA").to_wire()
    stats = QueryStats("udp")
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        server.setblocking(False)
        client.settimeout(5)
        batch = _batch.DatagramBatch(server, 4, 65535)
        answered_by = []
        for _ in range(2):
            client.sendto(query, server.getsockname())
            server_ready(server)
            assert batch.receive() == 1
            left = batch.answer(zone.index, stats, False)
            answered_by.append("python" if left else "c")
            for i in left:
                reply = wire.respond(query, zone.index)  # renders the name, and keeps it for a while
                assert reply is not None and batch.queue_reply(i, reply)
            assert batch.send() == 0
            response = dns.message.from_wire(client.recv(65535))
            assert [r.to_text() for r in response.answer[0]] == ["2001:db8::7"]
    assert answered_by == ["python", "c"]


def test_a_failing_c_batch_leaves_the_batch_to_python(dnsd_process, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A QueryStats the C code cannot read makes answer() raise: the listener answers in Python."""

    zone = Zone(cluster(service("web"), endpoint_slice("web-6", "web", endpoint("2001:db8::1"))))

    class Unreadable(QueryStats):
        __slots__ = ()
        type_slots = b"too short"

    async def serve_one() -> bytes:
        sock = open_socket(Listen("127.0.0.1", 0))
        listener = UdpListener(
            sock, lambda data: wire.respond_safely(data, zone.index), Unreadable("udp"), index=zone.index
        )
        listener.start("c")
        assert listener.mode == "c"
        loop = asyncio.get_running_loop()
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        client.setblocking(False)
        try:
            query = dns.message.make_query("web.default.svc.gua.example.com.", "AAAA").to_wire()
            await loop.sock_sendto(client, query, listener.address)
            reply = await asyncio.wait_for(loop.sock_recv(client, 65535), 5)
            assert listener.mode == "python"  # and stays so: one error in the log, not one per batch
            return reply
        finally:
            client.close()
            listener.close()

    reply = dns.message.from_wire(asyncio.run(serve_one()))
    assert [r.to_text() for r in reply.answer[0]] == ["2001:db8::1"]
