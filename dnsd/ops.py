"""The operations endpoint (aiohttp): /healthz, /readyz and /metrics.

/healthz answers while the event loop runs. /readyz answers 200 only when the zone data is
synced with its source and the server is not draining. /metrics reads the server's state at
scrape time through one prometheus-client collector, so serving DNS pays nothing for it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import dns.rcode
import dns.rdatatype
from aiohttp import web
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dnsd import rrsets
from dnsd.config import Listen
from dnsd.stats import SLOT_TYPES, QueryStats, duration_histogram, size_histogram

if TYPE_CHECKING:
    from dnsd.app import Server

log = logging.getLogger("dnsd.ops")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class ServerCollector(Collector):
    def __init__(self, server: Server) -> None:
        self.server = server

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        server = self.server
        index = server.index
        yield GaugeMetricFamily(
            "dnsd_zone_names", "Owner names in the zones, empty non-terminals included", value=len(index.nodes)
        )
        yield GaugeMetricFamily("dnsd_zone_records", "Resource records served", value=index.record_count)
        serial = GaugeMetricFamily("dnsd_zone_serial", "SOA serial", labels=["zone"])
        for zone in server.config.zones:
            serial.add_metric([zone.to_text()], index.serial)
        yield serial
        yield GaugeMetricFamily(
            "dnsd_zone_synced", "1 once the source delivered complete data", value=int(index.synced)
        )
        yield CounterMetricFamily(
            "dnsd_zone_name_conflicts_total",
            "Names claimed by several Services (the oldest wins)",
            value=index.conflicts,
        )
        skipped = CounterMetricFamily("dnsd_skipped_names_total", "Names not published, by reason", labels=["reason"])
        for reason, count in sorted(rrsets.skipped.items()):
            skipped.add_metric([reason], count)
        yield skipped
        yield from self._queries((server.udp_stats, server.tcp_stats))
        yield from self._protection()
        yield from self._kubernetes()
        if server.transfers is not None:
            yield from server.transfers.metrics(server.notifier.results if server.notifier else None)

    def _protection(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        """Response rate limiting and the TCP connection cap (no labels: nothing an attacker can grow)."""
        server = self.server
        rrl = server.rrl
        yield CounterMetricFamily(
            "dnsd_rrl_dropped_total", "UDP responses dropped by response rate limiting", value=rrl.dropped if rrl else 0
        )
        yield CounterMetricFamily(
            "dnsd_rrl_truncated_total",
            "UDP responses sent as TC=1 (slip) by response rate limiting",
            value=rrl.truncated if rrl else 0,
        )
        yield GaugeMetricFamily(
            "dnsd_tcp_connections", "Open TCP connections", value=sum(listener.connections for listener in server.tcp)
        )
        yield CounterMetricFamily(
            "dnsd_tcp_connections_evicted_total",
            "Idle TCP connections closed at --tcp-max-connections to make room for a new one",
            value=sum(listener.evicted for listener in server.tcp),
        )
        yield CounterMetricFamily(
            "dnsd_tcp_connections_rejected_total",
            "TCP connections closed at once at --tcp-max-connections, every connection being busy",
            value=sum(listener.rejected for listener in server.tcp),
        )

    def _queries(self, all_stats: tuple[QueryStats, ...]) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily("dnsd_dns_requests", "DNS queries received", labels=["proto", "family", "type"])
        responses = CounterMetricFamily("dnsd_dns_responses", "DNS responses sent, by rcode", labels=["proto", "rcode"])
        dropped = CounterMetricFamily(
            "dnsd_dns_dropped", "DNS messages not answered (malformed, responses)", labels=["proto"]
        )
        duration = HistogramMetricFamily(
            "dnsd_dns_request_duration_seconds", "Time to answer a query", labels=["proto"]
        )
        request_size = HistogramMetricFamily("dnsd_dns_request_size_bytes", "Size of queries", labels=["proto"])
        response_size = HistogramMetricFamily("dnsd_dns_response_size_bytes", "Size of responses", labels=["proto"])
        for stats in all_stats:
            for family, offset in (("1", 0), ("2", len(SLOT_TYPES))):  # CoreDNS: 1 = IPv4, 2 = IPv6
                for qtype, count in zip(SLOT_TYPES, stats.requests[offset : offset + len(SLOT_TYPES)], strict=True):
                    if count:
                        requests.add_metric([stats.proto, family, _type_name(qtype)], count)
            for rcode, count in enumerate(stats.rcodes):
                if count:
                    responses.add_metric([stats.proto, dns.rcode.to_text(rcode)], count)
            dropped.add_metric([stats.proto], stats.dropped)
            buckets, total = duration_histogram(stats)
            duration.add_metric([stats.proto], buckets, total)
            for family_metric, sizes in ((request_size, stats.request_sizes), (response_size, stats.response_sizes)):
                buckets, size_total = size_histogram(sizes)
                family_metric.add_metric([stats.proto], buckets, size_total)
        yield from (requests, responses, dropped, duration, request_size, response_size)

    def _kubernetes(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        reflectors = getattr(self.server.source, "reflectors", None)
        if not reflectors:
            return
        labels = ["resource", "namespace"]
        restarts = CounterMetricFamily(
            "dnsd_kubernetes_watch_restarts_total", "Watches or lists that failed and were retried", labels=labels
        )
        relists = CounterMetricFamily(
            "dnsd_kubernetes_relists_total", "Complete lists (first sync included)", labels=labels
        )
        last = GaugeMetricFamily(
            "dnsd_kubernetes_last_event_timestamp_seconds", "Unix time of the last event or list", labels=labels
        )
        synced = GaugeMetricFamily("dnsd_kubernetes_synced", "1 once the resource was listed", labels=labels)
        for reflector in reflectors:
            state = reflector.state
            key = [state.kind, state.namespace or ""]
            restarts.add_metric(key, state.restarts)
            relists.add_metric(key, state.relists)
            last.add_metric(key, state.last_event)
            synced.add_metric(key, int(state.listed))
        yield from (restarts, relists, last, synced)


def _type_name(qtype: int | None) -> str:
    # a bounded label set: well-known types by name, the rest as "other"
    return "other" if qtype is None else dns.rdatatype.to_text(qtype)


class Ops:
    def __init__(self, server: Server, listen: Listen) -> None:
        self.server = server
        self.listen = listen
        self.registry = CollectorRegistry()
        self.registry.register(ServerCollector(server))
        self.registry.register(server.programming)
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    def application(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/readyz", self.readyz)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self) -> None:
        self._runner = web.AppRunner(self.application(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, reuse_address=True)
        await site.start()
        sockets = site._server.sockets if site._server is not None else []
        self.address = sockets[0].getsockname()[:2] if sockets else (self.listen.host, self.listen.port)
        log.info("ops endpoint on %s (/healthz, /readyz, /metrics)", Listen(*self.address))

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def healthz(self, _request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, _request: web.Request) -> web.Response:
        reason = self.server.not_ready_reason()
        if reason:
            return web.Response(status=503, text=f"not ready: {reason}\n")
        return web.Response(text="ready\n")

    async def metrics(self, _request: web.Request) -> web.Response:
        started = time.perf_counter()
        body = generate_latest(self.registry)
        log.debug("metrics rendered in %.1f ms", (time.perf_counter() - started) * 1000)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
