"""DNS over TCP (RFC 7766): 2-byte length framing, many and pipelined queries per connection.

Queries on one connection are answered in order as they arrive, without waiting for the
client to read earlier replies; a connection idle longer than the timeout is closed cleanly
(CoreDNS keeps pooled upstream connections 10 s and redials on a clean close).

At the connection cap, a new connection closes the one that has been idle longest (it loses
nothing: it waits for a query, and clients redial on a clean close), and only when every
connection is busy with a query is the new one closed at once. So thousands of idle
connections hold memory at the cap and cannot lock real clients out, unlike refusing new
connections until an idle timeout frees a place (NSD's way).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
from collections.abc import Callable
from time import perf_counter_ns
from typing import TYPE_CHECKING

from dnsd.config import Listen
from dnsd.stats import QueryStats

if TYPE_CHECKING:
    from dnsd.transfer import Transfers

log = logging.getLogger("dnsd.tcp")

Responder = Callable[[bytes], bytes | None]
WRITE_HIGH_WATER = 64 * 1024
"""Buffered replies per connection before waiting for the client to read (one largest message)."""
LISTEN_BACKLOG = 1024
"""Connections the kernel completes before dnsd accepts them. asyncio's default of 100 made
new connections wait 1 s (a SYN retry) whenever more than 100 arrived at once."""
SWEEP_EVERY = 0.25
"""Longest time between checks for connections idle past the timeout."""


def open_socket(listen: Listen) -> socket.socket:
    """A bound, listening TCP socket; `[::]` also takes IPv4 (dual stack)."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            wildcard = ipaddress.ip_address(listen.host).is_unspecified
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if wildcard else 1)
        sock.bind((listen.host, listen.port))
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit of open files towards wanted (within the hard limit): a soft limit
    of 1024, common in containers, would make accept() fail below a cap of 1000 connections."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        if soft != resource.RLIM_INFINITY and soft < target:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ImportError, ValueError, OSError) as exc:
        log.warning("cannot raise the open-files limit to %d: %s", wanted, exc)


class TcpListener:
    def __init__(
        self,
        sock: socket.socket,
        respond: Responder,
        *,
        idle_timeout: float,
        max_connections: int,
        stats: QueryStats | None = None,
        transfer: Transfers | None = None,
    ) -> None:
        self.sock = sock
        self.transfer = transfer
        """Zone transfers (a transfer primary only): its queries may take many messages."""
        self.respond = respond
        self.idle_timeout = idle_timeout
        self.max_connections = max_connections
        self.rejected = 0
        """New connections closed at once: at the cap with every connection busy."""
        self.evicted = 0
        """Idle connections closed at the cap to make room for a new one."""
        self.stats = stats if stats is not None else QueryStats("tcp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        """Connections waiting on their client, longest first: closing one loses at most a query
        the client has not finished sending, or replies it does not read."""
        self._waiting: dict[asyncio.Task[None], float] = {}
        """When each connection waiting for a query (or the rest of one) began, longest first.
        A timer sweeps those past the idle timeout: an `asyncio.timeout` per read cost 3.3 us,
        twice per query, a third of what a TCP query cost in all."""
        self._sweeper: asyncio.TimerHandle | None = None

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    @property
    def connections(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        raise_open_files_limit(self.max_connections + 256)
        # asyncio listens on the socket again, with its own default backlog unless told
        self._server = await asyncio.start_server(self._serve, sock=self.sock, backlog=LISTEN_BACKLOG)
        self._sweeper = asyncio.get_running_loop().call_later(self._sweep_interval, self._sweep)

    @property
    def _sweep_interval(self) -> float:
        return min(SWEEP_EVERY, self.idle_timeout / 4)

    def _sweep(self) -> None:
        """Close the connections that have waited on their client longer than the timeout."""
        loop = asyncio.get_running_loop()
        began_before = loop.time() - self.idle_timeout
        expired = []
        for task, began in self._waiting.items():  # longest first: stop at the first in time
            if began > began_before:
                break
            expired.append(task)
        for task in expired:
            del self._waiting[task]
            writer = self._idle.pop(task, None)
            if writer is not None:
                writer.close()  # the pending read ends as a clean close
        self._sweeper = loop.call_later(self._sweep_interval, self._sweep)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end idle connections, let busy ones finish within timeout, then cut them."""
        if self._server is not None:
            self._server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        for writer in list(self._idle.values()):
            writer.close()  # its read ends as a clean close
        if self._connections:
            _done, pending = await asyncio.wait(set(self._connections), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            if not self._idle:
                self.rejected += 1
                writer.close()
                return
            # The longest-idle connection makes room; its read then ends as a clean close.
            longest_idle = next(iter(self._idle))
            self._idle.pop(longest_idle).close()
            self._waiting.pop(longest_idle, None)
            self._connections.discard(longest_idle)
            self.evicted += 1
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._exchange(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        except asyncio.CancelledError:
            # Only close() cancels, for a connection still busy after its grace period. Ending
            # quietly: Python 3.11's stream callback logs a cancelled handler as an error.
            pass
        except OSError as exc:
            log.debug("TCP connection ended: %s", exc)
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        peer = writer.get_extra_info("peername") or ("",)
        ipv6 = ":" in peer[0] and not peer[0].startswith("::ffff:")
        clock = asyncio.get_running_loop().time
        while True:
            # Waiting on the client (for a query, or below for room for replies) makes the
            # connection evictable; a client that stops halfway (slowloris) is swept at the
            # timeout, which counts from the start of the query's length prefix.
            self._idle[task] = writer
            self._waiting[task] = clock()
            try:
                prefix = await reader.readexactly(2)
                length = int.from_bytes(prefix, "big")
                if length == 0:
                    return
                query = await reader.readexactly(length)
            finally:
                self._idle.pop(task, None)
                self._waiting.pop(task, None)
            if self.transfer is not None and self.transfer.claims(query):
                await self.transfer.serve(query, peer[0], writer)
                continue
            started = perf_counter_ns()
            reply = self.respond(query)
            self.stats.record(ipv6, query, reply, perf_counter_ns() - started)
            if reply is None:
                continue
            writer.write(len(reply).to_bytes(2, "big") + reply)
            if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                # A client that sends queries and never reads the replies gets no more than
                # the timeout, and holds at most one high-water mark of memory meanwhile.
                self._idle[task] = writer
                try:
                    async with asyncio.timeout(self.idle_timeout):
                        await writer.drain()
                finally:
                    self._idle.pop(task, None)
