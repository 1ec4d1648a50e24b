#!/usr/bin/env python3
"""CPU per query of the engine alone (`wire.respond`, no sockets) by kind of name, in-process.

    python3 bench/lookup_cost.py                 # 1,000 Services x 10 pods

Service names are prebuilt answers; pod and endpoint names are rendered from the records when
asked, and a small cache (zone.RENDERED_CACHE names) keeps recent ones. The script prints the
best of 5 timeit repeats per kind: a Service name, an endpoint name and a pod name asked again
(cached), endpoint and pod names asked round-robin over more names than the cache holds
(rendered every time), and NXDOMAIN. Figures are per call on this machine; compare them with
each other, from one run.
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import dns.message  # noqa: E402
from conftest import make_config  # noqa: E402
from index_memory import sample_arguments, sample_records  # noqa: E402

from dnsd import wire  # noqa: E402
from dnsd.names import AddressPolicy  # noqa: E402
from dnsd.records import Resync  # noqa: E402
from dnsd.store import Store  # noqa: E402
from dnsd.zone import RENDERED_CACHE, Index  # noqa: E402

ZONE = "gua.example.com."


def query(name: str) -> bytes:
    return dns.message.make_query(name, "AAAA", use_edns=False).to_wire()


def main() -> None:
    args = sample_arguments(__doc__)
    policy = AddressPolicy()
    services, slices, pods = sample_records(args.services, args.pods_per_service, policy)
    store, index = Store(), Index(make_config((ZONE,)), now=time.time())
    for kind, items in (("Service", services), ("EndpointSlice", slices), ("Pod", pods)):
        index.update(store.apply(Resync(kind, tuple(items))), store)
    index.synced = True

    def ns(s: int) -> str:
        return f"ns-{s % 50}"

    every = [(s, p) for s in range(args.services) for p in range(args.pods_per_service)]
    if len(every) <= RENDERED_CACHE:
        sys.exit(f"need more than {RENDERED_CACHE} pods to defeat the cache")
    kinds = {
        "Service name (prebuilt)": [query(f"svc-0.{ns(0)}.svc.{ZONE}")],
        "endpoint name, cached": [query(f"svc-0-1.svc-0.{ns(0)}.svc.{ZONE}")],
        "pod name, cached": [query(f"svc-0-1.{ns(0)}.pod.{ZONE}")],
        "endpoint name, rendered": [query(f"svc-{s}-{p}.svc-{s}.{ns(s)}.svc.{ZONE}") for s, p in every],
        "pod name, rendered": [query(f"svc-{s}-{p}.{ns(s)}.pod.{ZONE}") for s, p in every],
        "NXDOMAIN": [query(f"nope.{ns(0)}.svc.{ZONE}")],
    }
    number = 20_000
    print(f"{len(services):,} Services, {len(pods):,} pods; best of 5 x {number:,} calls of wire.respond")
    for label, queries in kinds.items():
        cycle = iter(queries * (5 * number // len(queries) + 1))
        best = min(timeit.repeat(lambda cycle=cycle: wire.respond(next(cycle), index), number=number, repeat=5))
        print(f"  {label:<28} {best / number * 1e6:5.2f} us")


if __name__ == "__main__":
    main()
