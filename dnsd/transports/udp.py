"""DNS over UDP: a non-blocking socket drained in a loop from one reader callback.

Not `asyncio.DatagramProtocol`: the stock selector transport allocates a 256 KiB buffer per
datagram and pays one loop iteration per packet (shared/research/perf-baseline.md §4.2-4.3).
Reading until EAGAIN from `add_reader` answers a burst in one wake-up, on uvloop and on the
stock loop alike.

On a wildcard address every reply must leave from the address the query was sent to, or
clients on multi-homed hosts drop it: the socket asks for IP_PKTINFO / IPV6_RECVPKTINFO and
each reply is sent with the destination address of its query as its source.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING

from dnsd.config import Listen
from dnsd.rrl import ResponseRateLimiter
from dnsd.stats import QueryStats
from dnsd.transports import mmsg

try:
    from dnsd.transports import _batch as c_batch
except ImportError:  # built without a C compiler: batches are answered in Python
    c_batch = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from dnsd.transfer import Transfers
    from dnsd.zone import Index

log = logging.getLogger("dnsd.udp")

# Not exported by the socket module before Python 3.13; the value is Linux's.
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
RECEIVE_SIZE = 65535
ANCILLARY_SIZE = socket.CMSG_SPACE(20) * 2
BURST = 64
"""Datagrams answered per wake-up before TCP and timers get a turn."""
BATCH = 64
"""Datagrams per recvmmsg/sendmmsg call, where the platform has them (dnsd.transports.mmsg)."""

Responder = Callable[[bytes], bytes | None]


def is_wildcard(host: str) -> bool:
    return ipaddress.ip_address(host).is_unspecified


def open_socket(listen: Listen) -> socket.socket:
    """A bound, non-blocking UDP socket; `[::]` also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if is_wildcard(listen.host) else 1)
        if is_wildcard(listen.host):
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.bind((listen.host, listen.port))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _reply_ancillary(ancillary: list[tuple[int, int, bytes]]) -> list[tuple[int, int, bytes]]:
    """Ancillary data that sends a reply from the address its query arrived at."""
    for level, kind, data in ancillary:
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            return [(level, IPV6_PKTINFO, data[:20])]
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: send from addr.
            return [(level, IP_PKTINFO, struct.pack("=i4s4s", 0, data[8:12], b"\0\0\0\0"))]
    return []


class UdpListener:
    def __init__(
        self,
        sock: socket.socket,
        respond: Responder,
        stats: QueryStats | None = None,
        transfer: Transfers | None = None,
        rrl: ResponseRateLimiter | None = None,
        index: Index | None = None,
    ) -> None:
        self.sock = sock
        self.respond = respond
        self.index = index
        """The zone index that batches answered in C read (dnsd/transports/_batch.c); respond
        must answer from the same index."""
        self.transfer = transfer
        """Zone transfers (a transfer primary only): IXFR over UDP and TSIG-signed queries."""
        self.rrl = rrl
        """Response rate limiting, None when off (TCP needs none: its source cannot be forged)."""
        self.pktinfo = is_wildcard(sock.getsockname()[0])
        self.received = 0
        self.dropped_replies = 0
        self.stats = stats if stats is not None else QueryStats("udp")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._batch: mmsg.DatagramBatch | c_batch.DatagramBatch | None = None
        self.mode = "off"
        """How UDP is read and answered: c, python or off (Config.udp_batching), as started."""

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    def start(self, mode: str = "c") -> None:
        """Serve on the loop. mode c: recvmmsg/sendmmsg batches with plain queries answered in C
        (python where the extension is not built or there is no index); python: batches answered
        in Python; off, or no recvmmsg on this platform: one datagram per call."""
        self._loop = asyncio.get_running_loop()
        if mode == "c" and (c_batch is None or self.index is None):
            mode = "python"
        if mode != "off" and not mmsg.available():
            mode = "off"
        if mode == "c":
            self._batch = c_batch.DatagramBatch(self.sock, BATCH, RECEIVE_SIZE, pktinfo=self.pktinfo)
        elif mode == "python":
            self._batch = mmsg.DatagramBatch(self.sock, BATCH, RECEIVE_SIZE, pktinfo=self.pktinfo)
        self.mode = mode
        self._loop.add_reader(self.sock.fileno(), self._readable if mode == "off" else self._readable_batches)

    def _readable_batches(self) -> None:
        """`_readable`, a batch of datagrams per system call (up to BURST per wake-up); the batch
        answers what it can itself (in C) and leaves the rest to respond."""
        batch, respond, record, transfer, rrl = self._batch, self.respond, self.stats.record, self.transfer, self.rrl
        assert batch is not None
        index, stats = self.index, self.stats
        # RRL needs every response; a signed query may be the transfer module's (TSIG).
        fast = index is not None and rrl is None and self.mode == "c"
        signed_possible = transfer is not None and bool(transfer.keys)
        for _ in range(max(1, BURST // BATCH)):
            try:
                received = batch.receive()
            except OSError as exc:
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue  # an ICMP error from an earlier reply; it is not about this socket
                log.warning("UDP receive failed: %s", exc)
                return
            if not received:
                return
            self.received += received
            try:
                left = batch.answer(index if fast else None, stats, signed_possible)
            except Exception:  # a bug in the C batch must not stop UDP: Python answers from now on
                log.exception("the C batch failed; UDP is answered in Python from now on")
                self.mode = "python"
                fast = False
                left = range(received)  # a reply slot per datagram: nothing answered in C is sent twice
            for i in left:
                data = batch.datagram(i)
                port, ipv6 = batch.sender(i)
                if data is None or port == 0:  # longer than any DNS message; port 0: a reflection
                    continue
                started = perf_counter_ns()
                if transfer is not None and transfer.claims(data):
                    reply = transfer.respond(data, mmsg.peer_host(batch.peer(i)))
                else:
                    reply = respond(data)
                record(ipv6, data, reply, perf_counter_ns() - started)
                if reply is None:
                    continue
                if rrl is not None:
                    reply = rrl.limit(mmsg.peer_host(batch.peer(i)), reply)
                    if reply is None:
                        continue
                if not batch.queue_reply(i, reply):
                    self.dropped_replies += 1
            # A full send buffer: UDP may lose these replies, the clients retry. Never block.
            self.dropped_replies += batch.send()
            if received < BATCH:
                return

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None
        self.sock.close()

    def _readable(self) -> None:
        sock, respond, record, transfer = self.sock, self.respond, self.stats.record, self.transfer
        rrl = self.rrl
        v6 = sock.family == socket.AF_INET6
        for _ in range(BURST):
            try:
                if self.pktinfo:
                    data, ancillary, _flags, peer = sock.recvmsg(RECEIVE_SIZE, ANCILLARY_SIZE)
                else:
                    data, peer = sock.recvfrom(RECEIVE_SIZE)
                    ancillary = None
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                # An ICMP error from an earlier reply surfaces here; it is not about this socket.
                if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue
                log.warning("UDP receive failed: %s", exc)
                return
            self.received += 1
            if peer[1] == 0:  # nobody can receive a reply on port 0; it is a reflection attempt
                continue
            started = perf_counter_ns()
            claimed = transfer is not None and transfer.claims(data)
            reply = transfer.respond(data, peer[0]) if claimed else respond(data)  # type: ignore[union-attr]
            record(v6 and not peer[0].startswith("::ffff:"), data, reply, perf_counter_ns() - started)
            if reply is None:
                continue
            if rrl is not None:
                reply = rrl.limit(peer[0], reply)
                if reply is None:
                    continue
            try:
                if ancillary:
                    sock.sendmsg([reply], _reply_ancillary(ancillary), 0, peer)
                else:
                    sock.sendto(reply, peer)
            except OSError:
                # A full send buffer or an unreachable peer: UDP may lose this reply, the
                # client retries. Never block the loop for it.
                self.dropped_replies += 1
