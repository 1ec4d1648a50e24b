#!/usr/bin/env python3
"""Live heap per object of dnsd's records and zone index, in-process (tracemalloc).

    python3 bench/index_memory.py                  # 1,000 Services x 10 pods
    python3 bench/index_memory.py --services 5000

Builds the records (as the sources do) and the index (as the server does) for Services with
one IPv6 EndpointSlice of N ready pods each, and prints bytes per object (Services, Pods and
EndpointSlices) for the records alone and for everything, plus the largest allocation sites.
Unlike RSS (bench/k8s_sync.py) this counts only live Python objects.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from conftest import make_config  # noqa: E402
from k8s import endpoint, endpoint_slice, pod, service  # noqa: E402

from dnsd.names import AddressPolicy  # noqa: E402
from dnsd.records import (  # noqa: E402
    EndpointSlice,
    Pod,
    Resync,
    Service,
    endpoint_slice_from,
    pod_from,
    service_from,
)
from dnsd.store import Store  # noqa: E402
from dnsd.zone import Index  # noqa: E402


def sample_records(
    service_count: int, pods_per_service: int, policy: AddressPolicy
) -> tuple[list[Service], list[EndpointSlice], list[Pod]]:
    """Services in 50 namespaces, each with one IPv6 EndpointSlice of ready pods named svc-S-P."""
    services, slices, pods = [], [], []
    for s in range(service_count):
        namespace = f"ns-{s % 50}"
        endpoints = []
        for p in range(pods_per_service):
            address, name = f"2001:db8:{s:x}::{p + 1:x}", f"svc-{s}-{p}"
            endpoints.append(endpoint(address, pod=name))
            created = f"2026-11-01T10:{(s * 7 + p) % 60:02d}:{p % 60:02d}Z"
            pods.append(pod_from(pod(name, address, namespace=namespace, created=created), policy))
        services.append(service_from(service(f"svc-{s}", namespace)))
        slices.append(
            endpoint_slice_from(endpoint_slice(f"svc-{s}-x", f"svc-{s}", *endpoints, namespace=namespace), policy)
        )
    return services, slices, pods


def sample_arguments(description: str | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--pods-per-service", type=int, default=10)
    return parser.parse_args()


def main() -> None:
    args = sample_arguments(__doc__)
    policy = AddressPolicy()
    objects = args.services * (args.pods_per_service + 2)
    tracemalloc.start()
    services, slices, pods = sample_records(args.services, args.pods_per_service, policy)
    gc.collect()
    records = tracemalloc.get_traced_memory()[0]
    store, index = Store(), Index(make_config(("gua.example.com.",)), now=time.time())
    for kind, items in (("Service", services), ("EndpointSlice", slices), ("Pod", pods)):
        index.update(store.apply(Resync(kind, tuple(items))), store)
    del services, slices, pods, items
    gc.collect()
    total = tracemalloc.get_traced_memory()[0]
    print(f"{objects:,} objects, {len(index.nodes):,} names")
    print(f"records: {records / objects:.0f} B/object; records + store + index: {total / objects:.0f} B/object")
    for stat in tracemalloc.take_snapshot().statistics("lineno")[:10]:
        print(" ", stat)


if __name__ == "__main__":
    main()
