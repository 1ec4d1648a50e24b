"""DNS over TCP (RFC 7766): 2-byte length framing, many and pipelined queries per connection.

Queries on one connection are answered in order as they arrive, without waiting for the
client to read earlier replies; a connection idle longer than the timeout is closed cleanly
(CoreDNS keeps pooled upstream connections 10 s and redials on a clean close). Beyond the
connection cap, new connections are closed at once.
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
WRITE_HIGH_WATER = 256 * 1024


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
        sock.listen(1024)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


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
        self.stats = stats if stats is not None else QueryStats("tcp")
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._idle: set[asyncio.Task[None]] = set()
        """Connections waiting for their next query: closing them loses nothing."""

    @property
    def address(self) -> tuple:
        return self.sock.getsockname()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, sock=self.sock)

    async def close(self, timeout: float = 5.0) -> None:
        """Stop accepting, end idle connections, let busy ones finish within timeout, then cut them."""
        if self._server is not None:
            self._server.close()
        for task in self._idle:
            task.cancel()
        if self._connections:
            _done, pending = await asyncio.wait(set(self._connections), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._connections) >= self.max_connections:
            self.rejected += 1
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._exchange(reader, writer)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
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
        while True:
            self._idle.add(task)
            try:
                async with asyncio.timeout(self.idle_timeout):
                    prefix = await reader.readexactly(2)
            finally:
                self._idle.discard(task)
            length = int.from_bytes(prefix, "big")
            if length == 0:
                return
            async with asyncio.timeout(self.idle_timeout):
                query = await reader.readexactly(length)
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
                await writer.drain()
