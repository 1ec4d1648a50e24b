"""The composition root: config -> source -> store -> zone index -> listeners; signals; shutdown.

Shutdown order (SIGTERM or SIGINT): close the listeners, let open TCP queries finish within a
timeout, stop the source, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime
import errno
import functools
import gc
import logging
import signal
import socket
import time

from prometheus_client import Histogram

from dnsd import wire
from dnsd.config import Config, Listen
from dnsd.names import AddressPolicy
from dnsd.notify import Notifier
from dnsd.ops import Ops
from dnsd.records import Delete, Event, Kind, Record, Resync, Synced, Upsert
from dnsd.rrl import ResponseRateLimiter
from dnsd.sources.file import FileSource
from dnsd.sources.kubernetes import Credentials, KubernetesSource
from dnsd.stats import QueryStats
from dnsd.store import Changes, Store
from dnsd.transfer import Transfers, load_keys
from dnsd.transports import tcp, udp
from dnsd.zone import Index

log = logging.getLogger("dnsd")

Source = FileSource | KubernetesSource

UPDATE_SLICE = 0.005
"""Longest stretch of index updates before the loop gets to answer queries again."""
SERIAL_STEP = 1.0
"""The serial advances at most once per second, so bursts of changes cost one SOA rebuild."""
JOURNAL_STEPS = 100
"""Serial steps of differences a transfer primary keeps for IXFR (100 s of changes at least)."""


PROGRAMMING_BUCKETS = tuple(0.001 * 2**i for i in range(20))
"""1 ms to about 9 minutes, as CoreDNS's programming-latency histogram."""


def _changed_at(event: Upsert | Delete) -> float:
    """When the change happened: the EndpointSlice controller's trigger time if it says."""
    record = event.record if isinstance(event, Upsert) else None
    trigger = getattr(record, "trigger_time", None)
    if trigger:
        with contextlib.suppress(ValueError):
            return datetime.datetime.fromisoformat(trigger.replace("Z", "+00:00")).timestamp()
    return event.received


def _return_free_memory() -> None:
    """Hand the heap pages freed after a large list back to the OS (glibc keeps them otherwise,
    and a sync's transient JSON would stay in the resident size for good)."""
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not glibc, nothing to do
        ctypes.CDLL(None).malloc_trim(0)


class Collector:
    """Keeps Python's cyclic garbage collector from stalling the loop.

    An automatic full collection scans every tracked object; with 100,000 records that stalls
    the loop for 50-100 ms at a random moment. dnsd's records are acyclic and freed by
    reference counting, so after each sync they are frozen (never scanned again), automatic
    collection is left to the young generations (a few hundred objects each time), and the
    old generation is collected on a timer, when it holds only what arrived since.
    """

    FULL_EVERY = 600.0

    def __init__(self) -> None:
        self._handle: asyncio.TimerHandle | None = None
        self._saved = gc.get_threshold()

    def start(self) -> None:
        young, middle, _old = self._saved
        gc.set_threshold(young, middle, 1_000_000_000)  # no automatic full collections
        self._handle = asyncio.get_running_loop().call_later(self.FULL_EVERY, self._collect)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
        gc.set_threshold(*self._saved)

    def _collect(self) -> None:
        gc.collect()
        self._handle = asyncio.get_running_loop().call_later(self.FULL_EVERY, self._collect)


class Server:
    """One running dnsd: the index, what feeds it and what serves it."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.policy = AddressPolicy(config.publish_prefixes)
        self.store = Store(config.namespaces)
        self.index = Index(config, now=time.time(), journal=JOURNAL_STEPS if config.transfer_to else 0)
        self.transfers: Transfers | None = None
        self.notifier: Notifier | None = None
        if config.transfer_to:  # a transfer primary: transfers, a journal for IXFR, NOTIFY
            keys = load_keys(config.tsig_key) if config.tsig_key else {}
            self.transfers = Transfers(self.index, config.transfer_to, keys)
            self.notifier = Notifier(
                config.zones, config.notify, interval=config.notify_interval, key=next(iter(keys.values()), None)
            )
            self.index.on_serial = self.notifier.serial_changed
        self.udp: list[udp.UdpListener] = []
        self.tcp: list[tcp.TcpListener] = []
        self.source: Source | None = None
        self.udp_stats, self.tcp_stats = QueryStats("udp"), QueryStats("tcp")
        self.rrl = ResponseRateLimiter(config.rrl, config.rrl_slip) if config.rrl else None
        self.programming = Histogram(
            "dnsd_programming_duration_seconds",
            "Time from a Kubernetes change (the EndpointSlice trigger time, else the event's arrival) "
            "to the answer being served",
            registry=None,
            buckets=PROGRAMMING_BUCKETS,
        )
        self.draining = False
        self._serial_timer: asyncio.TimerHandle | None = None
        self._last_serial_step = 0.0
        self._slice_end = 0.0
        self._unsynced = Changes()
        """Owners touched before the first complete sync, rendered once when it completes."""
        self._stopping = asyncio.Event()
        self.stopping_again = asyncio.Event()

    async def listen(self) -> None:
        """Bind every listener before serving anything, so a bad address fails the start."""
        listens = list(self.config.listen)
        for entry in listens:
            try:
                udp_sock, tcp_sock = _open_pair(entry)
            except OSError as exc:
                no_ipv6 = exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL)
                if no_ipv6 and entry == Listen("::", 5353) and listens == [entry]:
                    log.warning("cannot listen on %s (%s); trying 0.0.0.0:5353", entry, exc.strerror)
                    entry = Listen("0.0.0.0", 5353)
                    udp_sock, tcp_sock = _open_pair(entry)
                else:
                    raise OSError(exc.errno, f"cannot listen on {entry}: {exc.strerror}") from None
            self.udp.append(
                udp.UdpListener(
                    udp_sock,
                    functools.partial(wire.respond_safely, index=self.index),
                    self.udp_stats,
                    transfer=self.transfers,
                    rrl=self.rrl,
                    index=self.index,
                )
            )
            self.tcp.append(
                tcp.TcpListener(
                    tcp_sock,
                    functools.partial(wire.respond_safely, index=self.index, tcp=True),
                    idle_timeout=self.config.tcp_idle_timeout,
                    max_connections=self.config.tcp_max_connections,
                    stats=self.tcp_stats,
                    transfer=self.transfers,
                )
            )
        for listener in self.udp:
            listener.start(self.config.udp_batching)
        for tcp_listener in self.tcp:
            await tcp_listener.start()
        for listener in self.udp:
            log.info("listening on %s (UDP and TCP; UDP batching: %s)", Listen(*listener.address[:2]), listener.mode)

    async def apply(self, event: Event) -> None:
        """Feed one source event through the store into the index.

        A Resync of a large cluster is applied in slices with the loop free in between, so
        queries keep being answered (from the old data, then the new, name by name)."""
        self._slice_end = time.monotonic() + UPDATE_SLICE
        if isinstance(event, Resync):
            for changes in self.store.resync_steps(event):
                await self._update(changes)
                await self._breathe()
            gc.freeze()  # these records are long-lived: keep them out of every future collection
        else:
            await self._update(self.store.apply(event))
            if isinstance(event, Upsert | Delete) and event.received:
                self.programming.observe(max(0.0, time.time() - _changed_at(event)))
        if isinstance(event, Synced) and not self.index.synced:
            unsynced, self._unsynced = self._unsynced, Changes()
            await self._update(unsynced)
            gc.freeze()
            _return_free_memory()
            self.index.synced = True
            self.index.generation += 1
            log.info("synced: %d names in %d zones", len(self.index), len(self.config.zones))
        self._schedule_serial()

    async def _update(self, changes: Changes) -> None:
        """Rebuild the touched owners, letting the loop answer queries every UPDATE_SLICE."""
        if not self.store.synced:
            # Zone data is SERVFAIL until every kind is listed: render each owner once then,
            # not once per kind that mentions it (a Service would be rendered three times).
            self._unsynced.update(changes)
            return
        for key in sorted(changes.services):
            self.index.update_service(key, self.store)
            await self._breathe()
        for key in sorted(changes.pods):
            self.index.update_pod(key, self.store)
            await self._breathe()

    async def _breathe(self) -> None:
        """Yield to the loop once UPDATE_SLICE has passed since it last had a turn."""
        if time.monotonic() > self._slice_end:
            self._schedule_serial()
            await asyncio.sleep(0)
            self._slice_end = time.monotonic() + UPDATE_SLICE

    def _schedule_serial(self) -> None:
        if not self.index.dirty or self._serial_timer is not None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, self._last_serial_step + SERIAL_STEP - loop.time())
        self._serial_timer = loop.call_later(delay, self._advance_serial)

    def _advance_serial(self) -> None:
        self._serial_timer = None
        self._last_serial_step = asyncio.get_running_loop().time()
        if self.index.advance_serial(time.time()):
            log.debug("serial %d", self.index.serial)

    async def feed(self, source: Source, initial: dict[Kind, list[Record]] | None) -> None:
        async for event in source.events(initial):
            try:
                await self.apply(event)
            except Exception:  # a bug in one update must not stop the source or the server
                log.exception("failed to apply %s; the previous answers keep serving", type(event).__name__)

    def not_ready_reason(self) -> str:
        """Empty when ready to serve; else why not (for /readyz)."""
        if self.draining:
            return "shutting down"
        if not self.index.synced:
            reflectors = getattr(self.source, "reflectors", [])
            waiting = [r.name for r in reflectors if not r.state.listed]
            return "not synced" + (f" (waiting for {', '.join(waiting)})" if waiting else "")
        return ""

    def stop(self) -> None:
        if self._stopping.is_set():
            self.stopping_again.set()  # a second signal cuts the lameduck short
        self._stopping.set()

    async def wait_stopped(self) -> None:
        await self._stopping.wait()

    async def close(self) -> None:
        for listener in self.udp:
            listener.close()
        await asyncio.gather(*(listener.close() for listener in self.tcp))
        if self._serial_timer is not None:
            self._serial_timer.cancel()
        if self.notifier is not None:
            await self.notifier.close()


def _open_pair(entry: Listen) -> tuple[socket.socket, socket.socket]:
    """UDP and TCP sockets on one address and port. Port 0 takes a port the kernel picks for
    UDP and also free for TCP: a TIME_WAIT connection may hold the first pick's TCP side."""
    attempts = 20 if entry.port == 0 else 1
    for attempt in range(attempts):
        udp_sock = udp.open_socket(entry)
        try:
            return udp_sock, tcp.open_socket(Listen(entry.host, udp_sock.getsockname()[1]))
        except OSError as exc:
            udp_sock.close()
            if exc.errno != errno.EADDRINUSE or attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


async def run(config: Config, records: dict[Kind, list[Record]] | None = None) -> int:
    server = Server(config)
    if config.from_file is not None:
        server.source = FileSource(config.from_file, server.policy, interval=config.reload_interval)
    else:
        server.source = KubernetesSource(
            Credentials(config.kubeconfig, config.context),
            server.policy,
            namespaces=config.namespaces,
            label_selector=config.label_selector,
            stall_timeout=config.watch_stall_timeout,
        )
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, server.stop)
    ops = Ops(server, config.http) if config.http is not None else None
    try:
        await server.listen()
        if ops is not None:
            await ops.start()
    except OSError as exc:
        log.error("%s", exc.strerror or exc)
        await server.close()
        return 1
    collector = Collector()
    collector.start()
    feeder = asyncio.create_task(server.feed(server.source, records), name="source")
    stopped = asyncio.create_task(server.wait_stopped())
    await asyncio.wait({feeder, stopped}, return_when=asyncio.FIRST_COMPLETED)
    if feeder.done() and feeder.exception() is not None:
        log.error("source failed: %s", feeder.exception())
    if not stopped.done():
        # stdin is read once: keep serving what it gave until told to stop
        await stopped
    # Shutdown order: not ready (load balancers and CoreDNS stop sending) -> keep answering for
    # the lameduck period -> close listeners, finish open TCP queries -> stop the source.
    server.draining = True
    if config.lameduck > 0:
        log.info("shutting down: not ready, answering for %.1fs more (lameduck)", config.lameduck)
        server.stopping_again.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.stopping_again.wait(), config.lameduck)
    log.info("shutting down: closing listeners")
    await server.close()
    feeder.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):  # already reported above
        await feeder
    if ops is not None:
        await ops.close()
    collector.stop()
    return 0
