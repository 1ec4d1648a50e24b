"""CoreDNS's `forward` plugin towards one upstream, re-enacted step by step from its source:
CoreDNS has no Debian package and Debian's Go is too old to build it, so the tests cannot run
the real one. References are to coredns/coredns@4b26cced (2026-08-20):

- health check (plugin/pkg/proxy/health.go `send`): `<domain> IN NS`, RD=1 unless `no_rec`,
  over UDP with 1 s timeouts; any reply that is a response (or a QUERY) counts as healthy.
- exchange (plugin/pkg/proxy/connect.go `lookupDNS`): protocol of the client unless `force_tcp`
  or `prefer_udp`; a fresh random ID; UDP read into a buffer of max(client's EDNS size, 512)
  (a larger datagram would be cut and turned into an empty TC reply); replies with another ID
  are skipped; `prefer_udp` retries a TC=1 reply over TCP (plugin/forward/forward.go:197).
- connection reuse (persistent.go, connect.go): one query at a time per connection, the
  connection goes back to the pool after the reply and is reused for the next query; EOF on a
  cached connection is `ErrCachedClosed` and is redialled silently, a reset is an error.
- reply validation (request/request.go `Match`): exactly one question, QR set, name equal after
  lower-casing, same type and class, else CoreDNS answers FORMERR to its client.
"""

from __future__ import annotations

import random
import socket
import struct
import time
from dataclasses import dataclass

import dns.flags
import dns.message
import dns.opcode
import dns.rdataclass
import dns.rdatatype

from .tap import read_frame

HEALTH_CHECK_TIMEOUT = 1.0
READ_TIMEOUT = 2.0


class ConnectionReset(Exception):
    """The upstream reset a pooled connection: CoreDNS counts an error and starts health checks."""


@dataclass
class Forwarded:
    """What CoreDNS made of one forwarded query."""

    reply: dns.message.Message
    proto: str
    """The protocol of the exchange that produced `reply`."""
    wire_size: int
    buffer_size: int
    """The UDP read buffer CoreDNS used (0 over TCP)."""


def matches(query: dns.message.Message, reply: dns.message.Message) -> bool:
    """request.Match: CoreDNS answers FORMERR to its client when this is false."""
    if len(reply.question) != 1 or not reply.flags & dns.flags.QR:
        return False
    asked, answered = query.question[0], reply.question[0]
    return (
        answered.name.to_text().lower() == asked.name.to_text().lower()
        and answered.rdtype == asked.rdtype
        and answered.rdclass == asked.rdclass
    )


def health_check(upstream: tuple[str, int], domain: str = ".", *, recursion_desired: bool = True) -> float:
    """One probe as CoreDNS sends it; returns the seconds the reply took, raises if it counts
    as a failure (no reply within 1 s, or not a DNS response)."""
    probe = dns.message.make_query(domain, dns.rdatatype.NS, use_edns=False)
    if not recursion_desired:
        probe.flags &= ~dns.flags.RD
    started = time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(HEALTH_CHECK_TIMEOUT)
        sock.connect(upstream)
        sock.send(probe.to_wire())
        while True:
            reply = dns.message.from_wire(sock.recv(65535))
            if reply.id == probe.id:  # miekg/dns Exchange skips other IDs
                break
    if not (reply.flags & dns.flags.QR or reply.opcode() == dns.opcode.QUERY):
        raise AssertionError(f"health check reply is not a response: {reply}")
    return time.monotonic() - started


class ForwardProxy:
    """One upstream of `forward . ADDR { [force_tcp] [prefer_udp] }`, with its connection pool."""

    def __init__(self, upstream: tuple[str, int], *, force_tcp: bool = False, prefer_udp: bool = False) -> None:
        self.upstream = upstream
        self.force_tcp = force_tcp
        self.prefer_udp = prefer_udp
        self._tcp: socket.socket | None = None
        self.tcp_dials = 0
        self.cached_closed = 0
        """Pooled TCP connections found closed by dnsd (EOF), redialled as CoreDNS does."""

    def close(self) -> None:
        if self._tcp is not None:
            self._tcp.close()
            self._tcp = None

    def forward(self, query: dns.message.Message, client_proto: str) -> Forwarded:
        """forward.ServeDNS for one client query: the exchange, prefer_udp's TCP retry, Match."""
        proto = "tcp" if self.force_tcp else "udp" if self.prefer_udp else client_proto
        forwarded = self._exchange(query, proto)
        if forwarded.reply.flags & dns.flags.TC and not self.force_tcp and self.prefer_udp:
            forwarded = self._exchange(query, "tcp")
        if not matches(query, forwarded.reply):
            raise AssertionError(f"CoreDNS would answer FORMERR: reply does not match {query.question}")
        return forwarded

    def _exchange(self, query: dns.message.Message, proto: str) -> Forwarded:
        upstream_query = dns.message.from_wire(query.to_wire())
        upstream_query.id = random.randrange(65536)
        wire = upstream_query.to_wire()
        if proto == "udp":
            # state.Size(): the client's EDNS payload, 512 without EDNS.
            buffer_size = max(query.payload if query.edns >= 0 else 512, 512)
            data = self._udp_exchange(wire, upstream_query.id, buffer_size)
        else:
            buffer_size = 0
            data = self._tcp_exchange(wire, upstream_query.id)
        reply = dns.message.from_wire(data)
        reply.id = query.id
        return Forwarded(reply, proto, len(data), buffer_size)

    def _udp_exchange(self, wire: bytes, query_id: int, buffer_size: int) -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.settimeout(READ_TIMEOUT)
            sock.connect(self.upstream)
            sock.send(wire)
            while True:
                data, _, flags, _ = sock.recvmsg(buffer_size)
                if flags & socket.MSG_TRUNC:
                    # CoreDNS would replace it by an empty TC reply (connect.go truncateResponse):
                    # the answer is lost, and dnsd broke the client's size limit.
                    raise AssertionError(f"UDP reply larger than CoreDNS's {buffer_size}-byte buffer")
                if len(data) >= 2 and struct.unpack("!H", data[:2])[0] == query_id:
                    return data

    def _tcp_exchange(self, wire: bytes, query_id: int) -> bytes:
        cached = self._tcp is not None
        if self._tcp is None:
            self._tcp = socket.create_connection(self.upstream, timeout=READ_TIMEOUT)
            self.tcp_dials += 1
        try:
            self._tcp.sendall(struct.pack("!H", len(wire)) + wire)
            while True:
                data = read_frame(self._tcp)
                if data is None:
                    raise EOFError
                if struct.unpack("!H", data[:2])[0] == query_id:
                    return data
        except EOFError:
            self.close()
            if not cached:
                raise AssertionError("dnsd closed a fresh TCP connection without answering") from None
            self.cached_closed += 1
            return self._tcp_exchange(wire, query_id)
        except ConnectionResetError as exc:
            self.close()
            raise ConnectionReset(str(exc)) from None
