"""Hostile traffic against a real dnsd over loopback, while a second client checks that normal
queries keep being answered; response rate limiting; amplification; bounded metrics.

Every address here is on loopback (127.0.0.0/8, ::1).
"""

from __future__ import annotations

import contextlib
import random
import re
import resource
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import pytest
from conftest import ZONE, DnsdProcess, Zone
from live import (
    BIG,
    BIG_COUNT,
    TIMEOUT,
    cluster_file,
    frame,
    metric_value,
    metrics,
    read_frame,
    rss_kib,
    start_dnsd,
    tcp_exchange,
    udp_exchange,
)

from dnsd import rrl, wire
from dnsd.stats import COUNTED_TYPES

WEB = "web.default.svc.gua.example.com."


def query_wire(name: str = WEB, rdtype: str | int = "AAAA", *, qid: int | None = None, edns: int = -1) -> bytes:
    query = dns.message.make_query(name, rdtype, use_edns=edns if edns >= 0 else False)
    query.flags = 0
    if qid is not None:
        query.id = qid
    return query.to_wire()


@pytest.fixture
def dnsd(tmp_path: Path) -> Iterator[Callable[..., DnsdProcess]]:
    """Start ready dnsd processes serving the example cluster plus Service big; all stopped after."""
    started: list[DnsdProcess] = []

    def launch(*flags: str) -> DnsdProcess:
        process = start_dnsd(tmp_path, *flags)
        started.append(process)
        return process

    yield launch
    for process in started:
        assert process.proc.poll() is None, f"dnsd died: {process.lines[-20:]}"
        assert process.stop() == 0
        assert not [line for line in process.lines if "Traceback" in line or "internal error" in line]


@dataclass
class Prober:
    """A second client asking normal questions (UDP and TCP in turn, every `interval` seconds)
    while an attack runs; each must be answered correctly within `timeout`."""

    port: int
    interval: float = 0.02
    timeout: float = 1.0
    tries: int = 1
    """UDP tries per query, as a resolver retries a lost datagram (TCP gets one)."""
    answered: int = 0
    retried: int = 0
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        qid = 0
        while not self._stop.is_set():
            qid = (qid + 1) & 0xFFFF
            tcp = qid % 2 == 0
            query = query_wire(qid=qid)
            started = time.monotonic()
            try:
                reply = self._ask(query, tcp)
                message = dns.message.from_wire(reply)
                assert message.rcode() == dns.rcode.NOERROR and message.answer, message
                self.answered += 1
                self.latencies.append(time.monotonic() - started)
            except Exception as exc:
                self.failures.append(f"{'tcp' if tcp else 'udp'} {qid}: {exc!r}")
            self._stop.wait(self.interval)

    def _ask(self, query: bytes, tcp: bool) -> bytes:
        if tcp:
            return tcp_exchange(self.port, query, self.timeout)
        for attempt in range(self.tries):
            try:
                return udp_exchange(self.port, query, self.timeout)
            except TimeoutError:
                if attempt == self.tries - 1:
                    raise
                self.retried += 1
        raise AssertionError("unreachable")

    def summary(self) -> str:
        worst = max(self.latencies, default=0.0)
        return f"{self.answered} answered, {self.retried} UDP retries, slowest {worst * 1000:.0f} ms"

    @contextmanager
    def running(self) -> Iterator[Prober]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(5)

    def assert_served(self, minimum: int = 20) -> None:
        assert not self.failures, f"{len(self.failures)} normal queries failed: {self.failures[:5]}"
        assert self.answered >= minimum, f"only {self.answered} normal queries answered"


# --- floods and connections ----------------------------------------------------------------------


FLOODER = """
import random, socket, sys, time
port, seconds, rate, seed = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = random.Random(seed)
valid = bytes.fromhex(sys.argv[5])
packets = [rng.randbytes(rng.randrange(0, 600)) for _ in range(500)]
for _ in range(500):
    mangled = bytearray(valid)
    for _flip in range(3):
        mangled[rng.randrange(len(mangled))] = rng.randrange(256)
    packets.append(bytes(mangled))
rng.shuffle(packets)
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.setblocking(False)
started = time.monotonic()
sent, deadline = 0, started + seconds
while time.monotonic() < deadline:
    for packet in packets[:100]:
        try:
            sock.sendto(packet, ("127.0.0.1", port))
            sent += 1
        except BlockingIOError:
            time.sleep(0.0005)
    packets = packets[100:] + packets[:100]
    if rate:  # paced: sleep off any lead over the target rate
        lead = sent / rate - (time.monotonic() - started)
        if lead > 0:
            time.sleep(lead)
    while True:  # the attacker does not care about replies (FORMERR and the like)
        try:
            sock.recv(65535)
        except BlockingIOError:
            break
print(sent)
"""


def _flood(port: int, seconds: float, rate: int) -> int:
    """Garbage from another process (a Python thread here would starve the prober of the GIL)."""
    flooder = subprocess.run(
        [sys.executable, "-c", FLOODER, str(port), str(seconds), str(rate), "6", query_wire(edns=0).hex()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return int(flooder.stdout)


def test_garbage_datagram_flood(dnsd) -> None:
    """Random datagrams and mangled queries (half each) from another process: 4 s at 20,000 a
    second, every normal query of the prober answered meanwhile (UDP gets a resolver's three
    tries); then 2 s as fast as a process can send (several times what one core can answer, so
    the kernel drops datagrams, the prober's too), after which dnsd answers at once."""
    process = dnsd()
    received_before = 0.0
    with Prober(process.port, tries=3, timeout=0.5).running() as prober:
        sent = _flood(process.port, 4.0, 20_000)
    received = metric_value(metrics(process), "dnsd_dns_requests_total") - received_before
    print(f"paced flood: {sent:,} sent, {received:,.0f} read by dnsd; prober: {prober.summary()}")
    prober.assert_served(minimum=20)
    assert sent >= 60_000, sent
    assert received >= sent * 0.95, (received, sent)  # dnsd kept up: (almost) nothing lost in the kernel

    rss_before = rss_kib(process.proc.pid)
    flat_out = _flood(process.port, 2.0, 0)
    started = time.monotonic()
    while True:  # dnsd first works through the datagrams queued in its socket buffer (4 MiB)
        try:
            reply = dns.message.from_wire(udp_exchange(process.port, query_wire(), timeout=0.3))
            break
        except TimeoutError:
            assert time.monotonic() - started < 5.0, "no answer within 5 s of the flood's end"
    recovered = time.monotonic() - started
    assert reply.answer
    print(
        f"flat-out flood: {flat_out:,} sent in 2 s, answered again {recovered:.2f} s after it; "
        f"RSS {rss_before} -> {rss_kib(process.proc.pid)} KiB"
    )
    assert rss_kib(process.proc.pid) - rss_before < 8 * 1024


def _open_idle(port: int, count: int) -> list[socket.socket]:
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        sockets.append(sock)
    return sockets


def _closed_by_server(sock: socket.socket, wait: float = 0.0) -> bool:
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except (TimeoutError, BlockingIOError):
        return False
    except ConnectionError:
        return True


def test_thousands_of_idle_tcp_connections_hold_memory_at_the_cap(dnsd) -> None:
    """3,000 idle connections against the default cap of 1,000: the longest-idle ones are closed
    for the new ones, memory stays flat past the cap, and new clients are always served."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(8000, hard), hard))
    process = dnsd("--tcp-idle-timeout", "120")
    pid = process.proc.pid
    # a new TCP client may meet a full accept queue while thousands connect at once: its SYN is
    # retried after 1 s, so the prober allows 3 s
    with ExitStack() as stack, Prober(process.port, timeout=3.0).running() as prober:
        rss_start = rss_kib(pid)
        started = time.monotonic()
        first = _open_idle(process.port, 1000)
        # regression: asyncio's default backlog (100) made this take 6-9 s of SYN retries
        assert time.monotonic() - started < 3.0
        for sock in first:
            stack.callback(sock.close)
        time.sleep(0.5)
        rss_at_cap = rss_kib(pid)
        at_cap = metrics(process)
        assert metric_value(at_cap, "dnsd_tcp_connections") >= 999
        more = _open_idle(process.port, 2000)
        for sock in more:
            stack.callback(sock.close)
        time.sleep(0.5)
        rss_after = rss_kib(pid)
        text = metrics(process)
        # every connection past the cap closed the longest-idle one: the first 2,000 are gone
        assert metric_value(text, "dnsd_tcp_connections") <= 1000
        assert metric_value(text, "dnsd_tcp_connections_evicted_total") >= 1990
        assert all(_closed_by_server(sock, 0.5) for sock in first[:50])
        assert not any(_closed_by_server(sock) for sock in more[-50:])
        # and the survivors are real connections that still answer
        for sock in more[-5:]:
            sock.settimeout(TIMEOUT)
            sock.sendall(frame(query_wire(qid=77)))
            assert read_frame(sock)[:2] == b"\x00\x4d"
    prober.assert_served()
    print(f"RSS: {rss_start} KiB empty, {rss_at_cap} KiB at 1,000 connections, {rss_after} KiB after 3,000")
    assert rss_after - rss_at_cap < 8 * 1024, (rss_start, rss_at_cap, rss_after)


def test_connection_cap_evicts_connections_stuck_mid_query(dnsd) -> None:
    """A connection waiting for the rest of its query waits on its client, so at the cap it
    can be closed like an idle one: half-sent queries cannot lock new clients out."""
    process = dnsd("--tcp-max-connections", "3", "--tcp-idle-timeout", "60")
    with ExitStack() as stack:
        half = [socket.create_connection(("127.0.0.1", process.port), timeout=TIMEOUT) for _ in range(3)]
        for sock in half:
            stack.callback(sock.close)
            sock.sendall(b"\x00\x40" + b"\x00" * 10)  # a prefix and part of the body
        time.sleep(0.3)
        reply = dns.message.from_wire(tcp_exchange(process.port, query_wire()))
        assert reply.rcode() == dns.rcode.NOERROR
        assert _closed_by_server(half[0], 1.0)
    text = metrics(process)
    assert metric_value(text, "dnsd_tcp_connections_evicted_total") >= 1
    assert metric_value(text, "dnsd_tcp_connections_rejected_total") == 0


def test_shutdown_with_idle_connections_logs_no_error(tmp_path: Path) -> None:
    """Regression: close() cancelled idle connection handlers, and Python 3.11's stream callback
    logged each cancelled one as an ERROR with a traceback at every shutdown."""
    process = start_dnsd(tmp_path)
    try:
        sockets = _open_idle(process.port, 3)
        time.sleep(0.2)
        assert process.stop() == 0
    finally:
        process.stop()
    for sock in sockets:
        sock.close()
    assert not [line for line in process.lines if "ERROR" in line or "Traceback" in line], process.lines


def test_slowloris_is_dropped_by_the_timeout(dnsd) -> None:
    """A length prefix then nothing, half a prefix, a prefix and half a body: each connection
    is closed once --tcp-idle-timeout passes, while other clients are served."""
    process = dnsd("--tcp-idle-timeout", "1")
    with ExitStack() as stack, Prober(process.port).running() as prober:
        slow = []
        for start in (b"\x00\x20", b"\x00", b"\x00\x20" + query_wire()[:10]):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=TIMEOUT)
            stack.callback(sock.close)
            sock.sendall(start)
            slow.append(sock)
        started = time.monotonic()
        for sock in slow:
            assert _closed_by_server(sock, 3.0)
        elapsed = time.monotonic() - started
        assert 0.5 < elapsed < 3.0, elapsed
    prober.assert_served(minimum=10)


def test_length_prefix_65535_with_a_short_body(dnsd) -> None:
    """A frame announcing 65,535 bytes that sends 100: no reply, closed at the timeout, memory flat."""
    process = dnsd("--tcp-idle-timeout", "1")
    rss_before = rss_kib(process.proc.pid)
    with ExitStack() as stack, Prober(process.port).running() as prober:
        sockets = []
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", process.port), timeout=TIMEOUT)
            stack.callback(sock.close)
            sock.sendall(b"\xff\xff" + b"\xab" * 100)
            sockets.append(sock)
        for sock in sockets:
            sock.settimeout(3.0)
            assert sock.recv(65535) == b"", "a reply to an incomplete frame"
    prober.assert_served(minimum=10)
    assert rss_kib(process.proc.pid) - rss_before < 8 * 1024


def test_a_thousand_pipelined_queries_on_one_connection(dnsd) -> None:
    """1,000 queries written at once on one connection, then read: all answered, IDs matching."""
    process = dnsd()
    names = [WEB, BIG, "nope.gua.example.com.", ZONE]
    queries = {qid: query_wire(names[qid % 4], "AAAA", qid=qid, edns=qid % 2 - 1) for qid in range(1, 1001)}
    with (
        Prober(process.port).running() as prober,
        socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock,
    ):
        sock.sendall(b"".join(frame(query) for query in queries.values()))
        replies = [read_frame(sock) for _ in range(1000)]
    prober.assert_served(minimum=1)
    raw_by_id = {int.from_bytes(raw[:2], "big"): raw for raw in replies}
    assert sorted(raw_by_id) == sorted(queries)
    assert all(raw[2] & 0x80 for raw in replies)
    seen = {qid: dns.message.from_wire(raw_by_id[qid]) for qid in (1, 2, 3, 4, 997, 998, 999, 1000)}
    # qid % 4: 1 Service big (complete over TCP), 2 NXDOMAIN, 3 the apex (NODATA for AAAA), 0 Service web
    assert len(seen[1].answer[0]) == BIG_COUNT and seen[4].answer
    assert seen[2].rcode() == dns.rcode.NXDOMAIN and seen[3].rcode() == dns.rcode.NOERROR and not seen[3].answer


def test_client_that_never_reads_is_dropped(dnsd) -> None:
    """Queries for a large answer, pipelined, replies never read: dnsd stops after a bounded
    buffer, drops the connection at the timeout, and keeps serving others."""
    process = dnsd("--tcp-idle-timeout", "1")
    rss_before = rss_kib(process.proc.pid)
    with (
        Prober(process.port).running() as prober,
        socket.create_connection(("127.0.0.1", process.port), timeout=TIMEOUT) as sock,
    ):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        burst = frame(query_wire(BIG, "AAAA")) * 2000
        sock.settimeout(5.0)
        with contextlib.suppress(TimeoutError, ConnectionError):
            sock.sendall(burst)  # dnsd stops reading, or closes the connection: either is fine
        time.sleep(2.5)
        assert process.proc.poll() is None
        grown = rss_kib(process.proc.pid) - rss_before
    prober.assert_served(minimum=10)
    assert grown < 16 * 1024, grown


# --- response rate limiting ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def zone(tmp_path_factory: pytest.TempPathFactory) -> Zone:
    return Zone(cluster_file(tmp_path_factory.mktemp("zone")).read_text())


def test_rrl_unit_token_bucket_and_slip(zone: Zone) -> None:
    """The bucket passes `rate` a second per key, slips every Nth limited response, refills."""
    limiter = rrl.ResponseRateLimiter(rate=5, slip=2, table_size=1024)
    reply = wire.respond(query_wire(), zone.index)
    assert reply is not None
    outcomes = [limiter.limit("192.0.2.7", reply, now=100.0) for _ in range(25)]
    sent = [o for o in outcomes if o == reply]
    slipped = [o for o in outcomes if o is not None and o != reply]
    assert len(sent) == 5
    assert len(slipped) == 10 and limiter.truncated == 10 and limiter.dropped == 10
    for slip in slipped:
        message = dns.message.from_wire(slip)
        assert message.flags & dns.flags.TC and not message.answer and message.id == int.from_bytes(reply[:2], "big")
        assert message.question == dns.message.from_wire(reply).question
    # same /24 shares the budget; another /24, another IPv6 /56 and another response do not
    assert limiter.limit("192.0.2.200", reply, now=100.0) != reply
    assert limiter.limit("192.0.3.7", reply, now=100.0) == reply
    assert limiter.limit("::ffff:192.0.2.9", reply, now=100.0) != reply  # IPv4-mapped is IPv4
    assert limiter.limit("2001:db8:0:ff::1", reply, now=100.0) == reply
    assert limiter.limit("2001:db8:0:ff:1::1", reply, now=100.0) == reply  # same /56
    for _ in range(4):
        limiter.limit("2001:db8:0:ff::1", reply, now=100.0)
    assert limiter.limit("2001:db8:0:1ff::1", reply, now=100.0) == reply  # another /56
    other = wire.respond(query_wire(BIG), zone.index)
    assert limiter.limit("192.0.2.7", other, now=100.0) == other
    # half a second later, half the rate is back
    assert [limiter.limit("192.0.2.7", reply, now=100.5) == reply for _ in range(3)] == [True, True, False]


def test_rrl_keys_nxdomain_by_zone_and_errors_together(zone: Zone) -> None:
    """Random names under the zone share one NXDOMAIN budget; every error shares one budget."""
    limiter = rrl.ResponseRateLimiter(rate=3, slip=0, table_size=1024)
    nxdomains = [wire.respond(query_wire(f"r{i}.gua.example.com."), zone.index) for i in range(10)]
    assert [limiter.limit("198.51.100.1", r, now=5.0) is not None for r in nxdomains] == [True] * 3 + [False] * 7
    errors = [
        wire.respond(query_wire(f"x{i}.example.org."), zone.index)
        for i in range(3)  # REFUSED
    ] + [wire.respond(query_wire(edns=1), zone.index), wire.respond(b"\x12\x34\x01\x00" + b"\x00" * 8, zone.index)]
    assert [limiter.limit("198.51.100.1", r, now=5.0) is not None for r in errors] == [True] * 3 + [False] * 2
    # answers for distinct names are distinct responses
    positives = [wire.respond(query_wire(name), zone.index) for name in (WEB, BIG, ZONE)]
    assert all(limiter.limit("198.51.100.1", r, now=5.0) is not None for r in positives)
    # a reply dnsd would never make (too short to classify) counts as an error, and does not crash
    assert limiter.limit("203.0.113.1", b"\x00\x01", now=5.0) == b"\x00\x01"
    assert limiter.limit("198.51.100.1", b"\x00\x01", now=5.0) is None  # that network's errors are spent


def test_rrl_table_is_fixed_size() -> None:
    limiter = rrl.ResponseRateLimiter(rate=1, slip=2, table_size=1024)
    reply = bytes.fromhex("abcd84000001000000000000") + b"\x03www\x00\x00\x01\x00\x01"
    sizes = (len(limiter.tags), len(limiter.tokens), len(limiter.stamps))
    for i in range(50_000):
        limiter.limit(f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", reply, now=1.0)
    assert (len(limiter.tags), len(limiter.tokens), len(limiter.stamps)) == sizes
    assert len(limiter._prefixes) <= rrl._CACHE_LIMIT


def _udp_burst(port: int, source: str, queries: list[bytes], wait: float = 1.0) -> list[bytes]:
    """Send queries from source as fast as possible; every reply that comes back within wait."""
    replies = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((source, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setblocking(False)
        for query in queries:
            sock.sendto(query, ("127.0.0.1", port))
            try:
                while True:
                    replies.append(sock.recv(65535))
            except BlockingIOError:
                pass
        deadline = time.monotonic() + wait
        sock.settimeout(0.1)
        while time.monotonic() < deadline:
            try:
                replies.append(sock.recv(65535))
            except TimeoutError:
                continue
    return replies


def test_rrl_limits_a_flood_from_one_network_only(dnsd) -> None:
    """--rrl 50: a burst of 2,000 identical queries from 127.0.0.1 gets about 50 answers and
    TC=1 for every second limited one; a client in 127.0.1.0/24 at the same time is not
    affected, nor is TCP from the flooded network."""
    process = dnsd("--rrl", "50", "--rrl-slip", "2")
    flood = [query_wire(qid=i) for i in range(2000)]
    bystander: dict[str, int] = {}

    def other_network() -> None:
        for i in range(20):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                sock.bind(("127.0.1.1", 0))
                sock.settimeout(TIMEOUT)
                sock.sendto(query_wire(qid=60000 + i), ("127.0.0.1", process.port))
                reply = dns.message.from_wire(sock.recv(65535))
                key = "answered" if reply.answer and not reply.flags & dns.flags.TC else "limited"
                bystander[key] = bystander.get(key, 0) + 1
            time.sleep(0.02)

    thread = threading.Thread(target=other_network)
    started = time.monotonic()
    thread.start()
    replies = _udp_burst(process.port, "127.0.0.1", flood)
    thread.join()
    elapsed = time.monotonic() - started
    full = [r for r in replies if not r[2] & 0x02]
    slips = [r for r in replies if r[2] & 0x02]
    print(f"RRL: {len(flood)} queries in {elapsed:.2f} s: {len(full)} answered, {len(slips)} TC=1, rest dropped")
    assert bystander == {"answered": 20}
    assert 50 <= len(full) <= 50 + 50 * elapsed + 5, (len(full), elapsed)
    limited = len(flood) - len(full)
    assert abs(len(slips) - limited / 2) <= 2, (len(slips), limited)
    for slip in slips:
        message = dns.message.from_wire(slip)
        assert not message.answer and message.question[0].name.to_text() == WEB
    tcp = dns.message.from_wire(tcp_exchange(process.port, query_wire()))
    assert tcp.answer and not tcp.flags & dns.flags.TC
    text = metrics(process)
    assert metric_value(text, "dnsd_rrl_truncated_total") == len(slips)
    assert metric_value(text, "dnsd_rrl_dropped_total") == limited - len(slips)


def test_rrl_off_by_default(dnsd) -> None:
    process = dnsd()
    replies = _udp_burst(process.port, "127.0.0.1", [query_wire(qid=i) for i in range(500)], wait=0.5)
    assert len(replies) == 500 and not any(r[2] & 0x02 for r in replies)
    assert metric_value(metrics(process), "dnsd_rrl_dropped_total") == 0


# --- amplification -------------------------------------------------------------------------------

AMPLIFICATION_TYPES = ("A", "AAAA", "SRV", "PTR", "SOA", "NS", "ANY", "TXT", "CNAME", "MX", "DNSKEY", "TYPE1000")


def amplification_table(index: object) -> list[tuple[float, int, int, str, str, bool]]:
    """(ratio, reply size, query size, name, type, edns) for every name and type over UDP; the
    queries are the smallest a client can send (no EDNS option, no cookie)."""
    opt = b"\x00\x00\x29\x04\xd0\x00\x00\x00\x00\x00\x00"  # EDNS(0), payload 1232
    rows = []
    for name_wire in list(index.nodes):  # type: ignore[attr-defined]
        name = dns.name.from_wire(name_wire, 0)[0].to_text()
        for rdtype in AMPLIFICATION_TYPES:
            for edns in (False, True):
                question = name_wire + struct.pack("!HH", dns.rdatatype.from_text(rdtype), 1)
                query = struct.pack("!HHHHHH", 0x1234, 0, 1, 0, 0, int(edns)) + question + (opt if edns else b"")
                reply = wire.respond(query, index)  # type: ignore[arg-type]
                assert reply is not None
                rows.append((len(reply) / len(query), len(reply), len(query), name, rdtype, edns))
    return sorted(rows, reverse=True)


def test_amplification_is_bounded(zone: Zone) -> None:
    """Every name in the example zone plus a 120-address Service, every common type: a UDP reply
    without EDNS is at most 512 bytes, with EDNS at most 1232; ANY is one RRset. The worst
    response/query ratio is printed (README, Reliability)."""
    rows = amplification_table(zone.index)
    assert all(size <= 512 for _ratio, size, _q, _n, _t, edns in rows if not edns)
    assert all(size <= 1232 for _ratio, size, _q, _n, _t, edns in rows if edns)
    worst_plain = next(row for row in rows if not row[5])
    worst_edns = rows[0]
    print(f"worst without EDNS: {worst_plain[:5]}; with EDNS: {worst_edns[:5]}")
    assert worst_plain[0] < 20 and worst_edns[0] < 40
    for name_wire in list(zone.index.nodes):
        name = dns.name.from_wire(name_wire, 0)[0]
        query = struct.pack("!HHHHHH", 1, 0, 1, 0, 0, 0) + name_wire + b"\x00\xff\x00\x01"
        reply = wire.respond(query, zone.index)
        assert reply is not None
        assert reply[6:8] in (b"\x00\x00", b"\x00\x01") or _one_rrset(reply), name


def _one_rrset(reply: bytes) -> bool:
    answer = dns.message.from_wire(reply).answer
    return len(answer) == 1


# --- metrics cannot be grown ---------------------------------------------------------------------


def test_metrics_label_sets_are_bounded(dnsd) -> None:
    """3,000 queries with distinct query types (and garbage) leave at most one series per known
    type plus `other` per proto and family, and no duplicate series."""
    process = dnsd()
    rdtypes = random.Random(5).sample(range(65536), 3000)
    queries = [query_wire(WEB, rdtype, qid=i) for i, rdtype in enumerate(rdtypes)]
    queries += [struct.pack("!H", i) + random.Random(i).randbytes(40) for i in range(300)]
    _udp_burst(process.port, "127.0.0.1", queries, wait=0.5)
    with socket.create_connection(("127.0.0.1", process.port), timeout=TIMEOUT) as sock:
        sock.sendall(b"".join(frame(query) for query in queries[:200]))
        for _ in range(200):
            read_frame(sock)
    text = metrics(process)
    series = re.findall(r"^(dnsd_[a-z_]+(?:\{[^}]*\})?) ", text, re.MULTILINE)
    assert len(series) == len(set(series)), "a series appears twice"
    requests = [s for s in series if s.startswith("dnsd_dns_requests_total")]
    types = {re.search(r'type="([^"]*)"', s).group(1) for s in requests}
    assert "other" in types
    assert len(types) <= len(COUNTED_TYPES) + 1
    assert len(requests) <= 2 * 2 * (len(COUNTED_TYPES) + 1)
    assert len(series) < 400, len(series)
    assert metric_value(text, "dnsd_dns_requests_total") >= 3000
