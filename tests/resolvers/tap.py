"""A wiretap between a resolver and dnsd: a transparent UDP and TCP relay on loopback that keeps
every query the resolver sent and the reply dnsd gave, byte for byte.

Resolver logs and statistics say *that* something went wrong (a retry, a timeout, a TCP
fallback); the tap says which query it was. It forwards bytes unchanged, one upstream socket
per UDP query (so a reply goes back to the port its query came from) and one upstream
connection per TCP connection (so connection reuse and pipelining pass through as they are).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

# Longer than any resolver waits for an answer: a query dnsd leaves unanswered shows up as an
# exchange without reply rather than as a tap that gave up first.
UPSTREAM_TIMEOUT = 5.0
_POLL = 0.2


@dataclass
class Exchange:
    """One query the resolver sent, and dnsd's reply (None: none came)."""

    proto: str
    query: bytes
    reply: bytes | None = None
    sent_at: float = field(default_factory=time.monotonic)
    replied_at: float | None = None
    """When dnsd's reply reached the tap."""


class Tap:
    """Listens on 127.0.0.1:`port` (UDP and TCP) and relays to `upstream`, recording `exchanges`."""

    def __init__(self, upstream: tuple[str, int], *, fault: Callable[[bytes], bytes | None] | None = None) -> None:
        self.upstream = upstream
        self.fault = fault
        """For testing the tests: rewrites each UDP reply (None drops it) before the resolver sees it."""
        self.exchanges: list[Exchange] = []
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._udp, self._tcp = _bind_pair()
        self.port: int = self._udp.getsockname()[1]
        self._threads = [
            threading.Thread(target=self._serve_udp, name="tap-udp", daemon=True),
            threading.Thread(target=self._serve_tcp, name="tap-tcp", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def mark(self) -> int:
        """A position in `exchanges`; `since(mark)` is everything recorded after it."""
        with self._lock:
            return len(self.exchanges)

    def since(self, mark: int) -> list[Exchange]:
        with self._lock:
            return list(self.exchanges[mark:])

    def settle(self, mark: int, *, quiet: float = 0.05, timeout: float = 2.0) -> list[Exchange]:
        """The exchanges since `mark` once the resolver is done with them: every query answered
        (or `timeout` passed) and nothing new for `quiet` seconds. A resolver may still be asking
        in the background (Unbound validating an NXDOMAIN) when its client has the answer."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            exchanges = self.since(mark)
            if all(e.reply is not None for e in exchanges) and (
                not exchanges or time.monotonic() - max(e.sent_at for e in exchanges) >= quiet
            ):
                return exchanges
            time.sleep(0.01)
        return self.since(mark)

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            open_sockets = list(self._sockets)
        for sock in open_sockets:
            _shutdown(sock)
        for thread in self._threads:
            thread.join(2)
        self._udp.close()
        self._tcp.close()

    def _record(self, exchange: Exchange) -> None:
        with self._lock:
            self.exchanges.append(exchange)

    def _track(self, sock: socket.socket, keep: bool) -> None:
        with self._lock:
            if keep:
                self._sockets.add(sock)
            else:
                self._sockets.discard(sock)

    def _serve_udp(self) -> None:
        self._udp.settimeout(_POLL)
        while not self._closing.is_set():
            try:
                data, client = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._relay_udp, args=(data, client), daemon=True).start()

    def _relay_udp(self, data: bytes, client: tuple[str, int]) -> None:
        exchange = Exchange("udp", data)
        self._record(exchange)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as upstream:
            upstream.settimeout(UPSTREAM_TIMEOUT)
            upstream.connect(self.upstream)
            upstream.send(data)
            try:
                exchange.reply = upstream.recv(65535)
            except OSError:
                return
            exchange.replied_at = time.monotonic()
        if self.fault is not None:
            exchange.reply = self.fault(exchange.reply)
            if exchange.reply is None:
                return
        with contextlib.suppress(OSError):  # the tap is closing
            self._udp.sendto(exchange.reply, client)

    def _serve_tcp(self) -> None:
        self._tcp.settimeout(_POLL)
        while not self._closing.is_set():
            try:
                client, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            threading.Thread(target=self._relay_tcp, args=(client,), daemon=True).start()

    def _relay_tcp(self, client: socket.socket) -> None:
        """Queries client -> dnsd in this thread, replies dnsd -> client in another, matched by ID
        (RFC 7766 lets both sides pipeline and reorder)."""
        pending: dict[int, Exchange] = {}
        upstream = socket.create_connection(self.upstream, timeout=UPSTREAM_TIMEOUT)
        upstream.settimeout(None)
        for sock in (client, upstream):
            self._track(sock, True)
        replies = threading.Thread(target=self._relay_tcp_replies, args=(upstream, client, pending), daemon=True)
        replies.start()
        try:
            while (query := read_frame(client)) is not None:
                exchange = Exchange("tcp", query)
                if len(query) >= 2:
                    pending[struct.unpack("!H", query[:2])[0]] = exchange
                self._record(exchange)
                upstream.sendall(struct.pack("!H", len(query)) + query)
            upstream.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        replies.join(UPSTREAM_TIMEOUT)
        for sock in (client, upstream):
            self._track(sock, False)
            sock.close()

    def _relay_tcp_replies(self, upstream: socket.socket, client: socket.socket, pending: dict[int, Exchange]) -> None:
        try:
            while (reply := read_frame(upstream)) is not None:
                exchange = pending.pop(struct.unpack("!H", reply[:2])[0], None) if len(reply) >= 2 else None
                if exchange is not None:
                    exchange.reply, exchange.replied_at = reply, time.monotonic()
                client.sendall(struct.pack("!H", len(reply)) + reply)
            client.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _bind_pair() -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on the same free port of 127.0.0.1 (a resolver names one port)."""
    for _ in range(50):
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            tcp.bind(("127.0.0.1", udp.getsockname()[1]))
        except OSError:
            udp.close()
            tcp.close()
            continue
        tcp.listen(64)
        return udp, tcp
    raise RuntimeError("no free port for the tap")


def _read_exactly(sock: socket.socket, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes | None:
    """One length-prefixed DNS message, or None at the end of the stream."""
    prefix = _read_exactly(sock, 2)
    if prefix is None:
        return None
    return _read_exactly(sock, struct.unpack("!H", prefix)[0])


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (any more)
        sock.shutdown(socket.SHUT_RDWR)
