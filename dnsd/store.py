"""The current set of records, keyed by (kind, namespace, name); the only writer of that state.

`Store.apply` takes one event and says which Services and Pods it touched, so the zone can
rebuild exactly those owners' names. Frozen records make change detection plain `==`: an
event that repeats what is known touches nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableMapping
from dataclasses import dataclass, field, replace
from typing import Generic, TypeVar

from dnsd.records import (
    Delete,
    EndpointSlice,
    Event,
    Kind,
    Pod,
    Record,
    Resync,
    Service,
    Synced,
    Upsert,
)

Key = tuple[str, str]
R = TypeVar("R", Service, EndpointSlice, Pod)


class Table(MutableMapping[Key, R], Generic[R]):
    """Records by (namespace, name), held as namespace -> name -> record.

    A flat dict would hold a key tuple per record, as large as a small record (56 bytes, for
    100,000 pods 5.6 MB); the nested form holds only the record's own strings."""

    __slots__ = ("_by_namespace", "_size")

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, R]] = {}
        self._size = 0

    def get(self, key: Key, default: R | None = None) -> R | None:  # type: ignore[override]
        names = self._by_namespace.get(key[0])
        return names.get(key[1], default) if names is not None else default

    def __getitem__(self, key: Key) -> R:
        return self._by_namespace[key[0]][key[1]]

    def __setitem__(self, key: Key, record: R) -> None:
        names = self._by_namespace.setdefault(record.namespace, {})
        self._size += record.name not in names
        names[record.name] = record  # the record's own strings as keys, not the caller's

    def __delitem__(self, key: Key) -> None:
        names = self._by_namespace[key[0]]
        del names[key[1]]
        self._size -= 1
        if not names:
            del self._by_namespace[key[0]]

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and self.get(key) is not None  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Key]:
        for namespace, names in self._by_namespace.items():
            for name in names:
                yield (namespace, name)

    def __len__(self) -> int:
        return self._size


@dataclass(slots=True)
class Changes:
    services: set[Key] = field(default_factory=set)
    pods: set[Key] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.services or self.pods)

    def update(self, other: Changes) -> None:
        self.services |= other.services
        self.pods |= other.pods


class Store:
    def __init__(self, namespaces: Iterable[str] = ()) -> None:
        self.namespaces = frozenset(namespaces)
        self.services: Table[Service] = Table()
        self.slices: Table[EndpointSlice] = Table()
        self.pods: Table[Pod] = Table()
        self.synced = False
        self._slices_by_service: dict[Key, set[Key]] = {}
        self._services_by_pod: dict[str, dict[str, Key | tuple[Key, ...]]] = {}
        """Services whose slices name a pod, by namespace and pod name, once per slice that does.
        A lone Key when there is one: nearly every pod backs one Service, and this map has an
        entry per pod, so it holds no tuple of its own for the pod's key or its Services."""

    def services_of_pod(self, key: Key) -> tuple[Key, ...]:
        entry = self._services_by_pod.get(key[0], _NO_PODS).get(key[1])
        if entry is None:
            return ()
        return (entry,) if isinstance(entry[0], str) else entry  # type: ignore[return-value]

    def slices_of(self, service: Key) -> list[EndpointSlice]:
        return [self.slices[k] for k in sorted(self._slices_by_service.get(service, ()))]

    def apply(self, event: Event) -> Changes:
        if isinstance(event, Upsert):
            return self._put(event.record)
        if isinstance(event, Delete):
            return self._remove(event.kind, (event.namespace, event.name))
        if isinstance(event, Resync):
            changes = Changes()
            for step in self.resync_steps(event):
                changes.update(step)
            return changes
        if isinstance(event, Synced):
            self.synced = True
            return Changes()
        raise TypeError(f"not an event: {event!r}")

    def _table(self, kind: Kind) -> Table:
        tables: dict[str, Table] = {"Service": self.services, "EndpointSlice": self.slices, "Pod": self.pods}
        return tables[kind]

    def _wanted(self, namespace: str) -> bool:
        return not self.namespaces or namespace in self.namespaces

    def _put(self, record: Record) -> Changes:
        if not self._wanted(record.namespace):
            return Changes()
        if isinstance(record, Service):
            if self.services.get(record.key) == record:
                return Changes()
            self.services[record.key] = record
            return Changes(services={record.key})
        if isinstance(record, EndpointSlice):
            old = self.slices.get(record.key)
            if old == record:
                return Changes()
            changes = self._unindex(old) if old is not None else Changes()
            self.slices[record.key] = record = self._with_pod_addresses(record)
            changes.update(self._index(record))
            return changes
        if self.pods.get(record.key) == record:
            return Changes()
        self.pods[record.key] = self._with_endpoint_addresses(record)
        return Changes(services=set(self.services_of_pod(record.key)), pods={record.key})

    # A pod's addresses are nearly always its endpoint's too: both records then hold one tuple
    # (the second copy was a tenth of the memory per pod), whichever of the two came first.

    def _with_pod_addresses(self, piece: EndpointSlice) -> EndpointSlice:
        endpoints = list(piece.endpoints)
        shared = False
        for position, endpoint in enumerate(endpoints):
            pod = self.pods.get((piece.namespace, endpoint.pod)) if endpoint.pod else None
            if pod is not None and pod.addresses == endpoint.addresses and pod.addresses is not endpoint.addresses:
                endpoints[position] = replace(endpoint, addresses=pod.addresses)
                shared = True
        return replace(piece, endpoints=tuple(endpoints)) if shared else piece

    def _with_endpoint_addresses(self, pod: Pod) -> Pod:
        for service in self.services_of_pod((pod.namespace, pod.name)):
            for key in self._slices_by_service.get(service, ()):
                for endpoint in self.slices[key].endpoints:
                    if endpoint.pod == pod.name and endpoint.addresses == pod.addresses:
                        shared = endpoint.addresses is pod.addresses
                        return pod if shared else replace(pod, addresses=endpoint.addresses)
        return pod

    def _remove(self, kind: Kind, key: Key) -> Changes:
        if kind == "Service":
            return Changes(services={key}) if self.services.pop(key, None) else Changes()
        if kind == "EndpointSlice":
            old = self.slices.pop(key, None)
            return self._unindex(old) if old is not None else Changes()
        if self.pods.pop(key, None) is None:
            return Changes()
        return Changes(services=set(self.services_of_pod(key)), pods={key})

    def resync_steps(self, event: Resync, *, step: int = 500) -> Iterator[Changes]:
        """Replace one kind's records (in one namespace, if the event names one), in steps.

        New and changed records go in first and records that are gone leave last, so a
        consumer that answers between steps never sees a name vanish that both the old and
        the new set hold."""
        fresh: dict[Key, Record] = {}
        for start in range(0, len(event.records), step * 4):
            for r in event.records[start : start + step * 4]:
                in_scope = event.namespace is None or r.namespace == event.namespace
                if r.kind_name == event.kind and in_scope and self._wanted(r.namespace):
                    fresh[r.key] = r
            yield Changes()  # a pause point: building the new set aside takes a while for 100k objects
        table = self._table(event.kind)
        known = list(table)
        gone: list[Key] = []
        for start in range(0, len(known), step * 4):
            gone.extend(
                k
                for k in known[start : start + step * 4]
                if k not in fresh and (event.namespace is None or k[0] == event.namespace)
            )
            yield Changes()
        records = list(fresh.values())
        for start in range(0, len(records), step):
            changes = Changes()
            for record in records[start : start + step]:
                changes.update(self._put(record))
            yield changes
        for start in range(0, len(gone), step):
            changes = Changes()
            for key in gone[start : start + step]:
                changes.update(self._remove(event.kind, key))
            yield changes

    def _service_of(self, piece: EndpointSlice) -> Key | None:
        return (piece.namespace, piece.service) if piece.service else None

    def _index(self, piece: EndpointSlice) -> Changes:
        service = self._service_of(piece)
        if service is None:
            return Changes()
        self._slices_by_service.setdefault(service, set()).add(piece.key)
        by_name = self._services_by_pod.setdefault(piece.namespace, {})
        for pod in _pods_named(piece):
            known = self.services_of_pod((piece.namespace, pod))
            by_name[pod] = (*known, service) if known else service
        return Changes(services={service})

    def _unindex(self, piece: EndpointSlice) -> Changes:
        service = self._service_of(piece)
        if service is None:
            return Changes()
        keys = self._slices_by_service.get(service)
        if keys is not None:
            keys.discard(piece.key)
            if not keys:
                del self._slices_by_service[service]
        by_name = self._services_by_pod.get(piece.namespace, _NO_PODS)
        for pod in _pods_named(piece):
            services = list(self.services_of_pod((piece.namespace, pod)))
            if service not in services:
                continue
            services.remove(service)
            if len(services) > 1:
                by_name[pod] = tuple(services)
            elif services:
                by_name[pod] = services[0]
            else:
                del by_name[pod]
        if not by_name:
            self._services_by_pod.pop(piece.namespace, None)
        return Changes(services={service})


_NO_PODS: dict[str, Key | tuple[Key, ...]] = {}


def _pods_named(piece: EndpointSlice) -> set[str]:
    return {e.pod for e in piece.endpoints if e.pod}
