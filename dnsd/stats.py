"""Per-query counters, kept as plain integers and arrays and turned into metrics at scrape time.

prometheus-client's Counter and Histogram take a lock and a label lookup per call, which costs
about as much as answering the query. Here a query costs a few array increments: sizes are
counted per exact length (one slot per possible message size) and durations per power-of-two
slot of CoreDNS's buckets (an integer `bit_length`, no search), and /metrics folds them into
Prometheus histograms (`dnsd.ops`). `record` costs about 0.55 us (the README gives the timeit
command); bisect-based histograms cost 1.25 us. The C batch (dnsd/transports/_batch.c) counts the
queries it answers into the same arrays, with the same slots (`TYPE_SLOTS`), at no Python cost.
"""

from __future__ import annotations

from array import array

# CoreDNS's buckets: dns_request_duration_seconds is ExponentialBuckets(0.00025, 2, 16), and
# these are its request/response size buckets.
DURATION_BOUNDS = tuple(0.00025 * 2**i for i in range(16))
SIZE_BOUNDS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16000, 32000, 48000, 64000)
_SLOT_NS = 250_000

COUNTED_TYPES = frozenset({1, 2, 5, 6, 12, 15, 16, 28, 33, 35, 41, 43, 46, 48, 52, 64, 65, 99, 251, 252, 255, 257})
"""Query types counted by name; any other (a client picks it freely) is counted as one `other`,
so the label values of dnsd_dns_requests form a fixed set whatever is sent."""
SLOT_TYPES: tuple[int | None, ...] = (None, *sorted(COUNTED_TYPES))
"""The query type each slot of QueryStats.requests counts; slot 0 counts every other type."""
TYPE_SLOTS = bytes(SLOT_TYPES.index(qtype) if qtype in COUNTED_TYPES else 0 for qtype in range(65536))
"""Query type -> its slot (a table, so that the C fast path counts as this module does)."""


def _zeros(n: int) -> array:
    return array("Q", bytes(8 * n))


class QueryStats:
    """What one transport (udp or tcp) answered."""

    __slots__ = (
        "dropped",
        "duration_ns",
        "durations",
        "proto",
        "rcodes",
        "request_sizes",
        "requests",
        "response_sizes",
    )

    type_slots = TYPE_SLOTS

    def __init__(self, proto: str) -> None:
        self.proto = proto
        self.requests = _zeros(2 * len(SLOT_TYPES))
        """Queries per address family (IPv4 first, then IPv6) and query type slot (SLOT_TYPES)."""
        self.rcodes = _zeros(16)
        self.dropped = 0
        self.durations = _zeros(17)
        """Slot i counts durations in (bound[i-1], bound[i]]; slot 16 is above the last bound."""
        self.duration_ns = 0
        self.request_sizes = _zeros(65536)
        self.response_sizes = _zeros(65536)

    def record(self, ipv6: bool, query: bytes, reply: bytes | None, nanoseconds: int) -> None:
        end = query.find(b"\x00", 12)
        type_slot = TYPE_SLOTS[query[end + 1] << 8 | query[end + 2]] if 0 < end < len(query) - 2 else 0
        self.requests[len(SLOT_TYPES) * ipv6 + type_slot] += 1
        slot = ((nanoseconds - 1) // _SLOT_NS).bit_length() if nanoseconds > 0 else 0
        self.durations[slot if slot < 16 else 16] += 1
        self.duration_ns += nanoseconds
        self.request_sizes[len(query) & 0xFFFF] += 1
        if reply is None:
            self.dropped += 1
            return
        self.rcodes[reply[3] & 0x0F] += 1
        self.response_sizes[len(reply) & 0xFFFF] += 1


def size_histogram(sizes: array) -> tuple[list[tuple[str, int]], int]:
    """Cumulative (upper bound, count) pairs over SIZE_BOUNDS, +Inf last, and the sum."""
    buckets, running, total = [], 0, 0
    previous = -1
    for bound in (*SIZE_BOUNDS, 65535):
        for size in range(previous + 1, bound + 1):
            count = sizes[size]
            running += count
            total += count * size
        previous = bound
        buckets.append(("+Inf" if bound == 65535 else str(float(bound)), running))
    return buckets, total


def duration_histogram(stats: QueryStats) -> tuple[list[tuple[str, int]], float]:
    running, buckets = 0, []
    for bound, count in zip((*DURATION_BOUNDS, None), stats.durations, strict=True):
        running += count
        buckets.append(("+Inf" if bound is None else repr(bound), running))
    return buckets, stats.duration_ns / 1e9
