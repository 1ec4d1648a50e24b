"""The zone index: owner name -> prebuilt wire answers, updated one owner at a time (pure).

Every owner (a Service, a Pod, the static apex data) contributes RRsets to some names. A name
claimed by several owners is given to the oldest one (creationTimestamp, then namespace/name):
that is how PTR records and annotation hostnames resolve conflicts deterministically. Every
ancestor of an existing name inside its zone exists as an empty non-terminal, counted so that
it disappears with its last descendant.

Queries and updates run on one thread (the event loop), and an update computes all new nodes
before it changes `nodes`, so a query never sees half an update and a failing update changes
nothing. The cost of an update is proportional to the names its owners touch.

Wire layout: a node's answer records are rendered for a response whose question name sits at
offset 12 with this node's (lower-cased) length, so owner names are compression pointers into
the question, whatever case the client used. The negative-answer SOA is kept per zone and
spliced in at send time, so a serial change touches one node per zone, not every name.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import dns.name

from dnsd.config import Config
from dnsd.names import join, label, label_offsets, to_text
from dnsd.records import Pod, Service
from dnsd.rrsets import (
    AAAA,
    CNAME,
    NS,
    PTR,
    SOA,
    SRV,
    A,
    Contribution,
    EndpointNames,
    NameData,
    RRset,
    has_own_names,
    pod_contribution,
    service_contribution,
    soa_rdata,
    static_contribution,
)
from dnsd.store import Changes, Store

log = logging.getLogger("dnsd.zone")

RR_FIXED = struct.Struct("!HHIH")
CLASS_IN = 1
MAX_MESSAGE = 65535
OPT_SIZE = 11
ANY_PREFERENCE = (SOA, AAAA, A, CNAME, SRV, PTR, NS)

Owner = tuple[str, str, str]
Priority = tuple[int, str, str]
STATIC: Owner = ("static", "", "")
RENDERED_CACHE = 4096
MAX_ADDRESS_RECORDS = 1000
"""Address records that surely fit one message with any question (1000 x 28 bytes < 64 KiB)."""

RR = tuple[bytes, int, int, bytes]
"""One resource record for zone transfers: (lower-case wire owner, type, TTL, uncompressed RDATA)."""
Delta = tuple[int, int, tuple[RR, ...], tuple[RR, ...]]
"""One serial step of a zone for IXFR: (old serial, new serial, removed, added), SOA not included."""


class Answer:
    """One RRset ready to send, as compact as Python allows (a cluster has one per name).

    Records of one fixed size (A, AAAA: the common case) are one bytes object; other types keep
    a tuple of records. A rotation that wraps around costs one concatenation when sent, which
    is cheaper than keeping every multi-record answer twice."""

    __slots__ = ("additional", "additional_count", "count", "records", "size", "window")

    def __init__(self, records: list[bytes], window: int, additional: bytes = b"", additional_count: int = 0) -> None:
        self.count = len(records)
        self.window = window
        """How many records one response carries: all, unless --max-answers or 64 KiB say fewer."""
        self.additional = additional
        self.additional_count = additional_count
        sizes = {len(r) for r in records}
        self.size = sizes.pop() if len(sizes) == 1 else 0
        self.records: bytes | tuple[bytes, ...] = b"".join(records) if self.size else tuple(records)

    def section(self, start: int) -> bytes:
        """`window` records beginning with the start-th, wrapping around."""
        records = self.records
        if self.count == 1:
            return records if self.size else records[0]  # type: ignore[return-value]
        if self.size:
            cut, end = start * self.size, (start + self.window) * self.size
            if end <= len(records):
                return records[cut:end]  # type: ignore[return-value]
            return records[cut:] + records[: end - len(records)]  # type: ignore[operator]
        picked = records[start : start + self.window]
        if len(picked) < self.window:
            picked += records[: self.window - len(picked)]  # type: ignore[operator]
        return b"".join(picked)  # type: ignore[arg-type]

    def each_record(self) -> Iterator[bytes]:
        """Every record once, in wire form (owner pointer, type, class, TTL, length, RDATA)."""
        if not self.size:
            yield from self.records  # type: ignore[misc]
            return
        for start in range(0, len(self.records), self.size):
            yield self.records[start : start + self.size]  # type: ignore[misc]

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Answer)
            and self.records == other.records
            and self.window == other.window
            and self.additional == other.additional
        )

    __hash__ = None  # type: ignore[assignment]


class ZoneInfo:
    """Per-zone data spliced into responses at send time."""

    __slots__ = ("apex", "apex_wire", "negative_soa")

    def __init__(self, apex: dns.name.Name) -> None:
        self.apex = apex
        self.apex_wire = apex.to_wire()
        self.negative_soa = b""
        """The SOA record after its owner name, TTL = min(SOA TTL, MINIMUM) (RFC 2308 §3)."""


class Node:
    """One owner name: its answers by type, and which owner holds it (None: an empty non-terminal).

    AAAA and A have slots of their own: they are what nearly every query asks, and a dict per
    name would cost more than the rest of the node."""

    __slots__ = ("a", "aaaa", "others", "owner", "priority", "zone")

    def __init__(
        self,
        zone: ZoneInfo,
        answers: dict[int, Answer] | None = None,
        owner: Owner | None = None,
        priority: Priority = (-1, "", ""),
    ) -> None:
        answers = dict(answers or {})
        self.zone = zone
        self.aaaa = answers.pop(AAAA, None)
        self.a = answers.pop(A, None)
        self.others = answers or None
        self.owner = owner
        self.priority = priority

    def get(self, rdtype: int) -> Answer | None:
        if rdtype == AAAA:
            return self.aaaa
        if rdtype == A:
            return self.a
        return self.others.get(rdtype) if self.others else None

    @property
    def cname(self) -> Answer | None:
        return self.others.get(CNAME) if self.others else None

    @property
    def any(self) -> Answer | None:
        """The one RRset an ANY query gets (RFC 8482)."""
        for rdtype in ANY_PREFERENCE:
            answer = self.get(rdtype)
            if answer is not None:
                return answer
        return next(iter(self.others.values())) if self.others else None

    def answers(self) -> dict[int, Answer]:
        found = {AAAA: self.aaaa, A: self.a, **(self.others or {})}
        return {rdtype: answer for rdtype, answer in found.items() if answer is not None}

    def same_answers(self, other: Node) -> bool:
        return self.aaaa == other.aaaa and self.a == other.a and self.others == other.others

    @property
    def record_count(self) -> int:
        answers = [self.aaaa, self.a, *(self.others or {}).values()]
        return sum(answer.count for answer in answers if answer is not None)

    def rrs(self, name: bytes) -> Iterator[RR]:
        """The node's records as transfer RRs (glue is not the node's: it has names of its own)."""
        for answer in (self.aaaa, self.a, *(self.others or {}).values()):
            if answer is None:
                continue
            for record in answer.each_record():
                rdtype, _class, ttl, _length = RR_FIXED.unpack_from(record, 2)
                yield (name, rdtype, ttl, record[12:])


def compressed_name(name: bytes, qname: bytes) -> bytes:
    """A wire name as a pointer into the question name (at offset 12) where they share a suffix."""
    question_offsets = set(label_offsets(qname))
    for offset in label_offsets(name):
        suffix = name[offset:]
        if suffix == b"\x00":
            break
        start = len(qname) - len(suffix)
        if start in question_offsets and qname[start:] == suffix:
            return name[:offset] + struct.pack("!H", 0xC000 | (12 + start))
    return name


def render(
    name: bytes,
    data: NameData,
    zone: ZoneInfo,
    max_answers: int | None,
    owner: Owner | None = None,
    priority: Priority = (-1, "", ""),
) -> Node:
    question_size = len(name) + 4
    answers: dict[int, Answer] = {}
    for rdtype, rrset in data.items():
        records = [b"\xc0\x0c" + RR_FIXED.pack(rdtype, CLASS_IN, rrset.ttl, len(rd)) + rd for rd in rrset.rdatas]
        budget = MAX_MESSAGE - 12 - question_size - OPT_SIZE
        window = 0
        for size in sorted((len(r) for r in records), reverse=True):
            if budget < size or (max_answers is not None and window >= max_answers):
                break
            budget -= size
            window += 1
        additional = b"".join(
            compressed_name(g.owner, name) + RR_FIXED.pack(g.rdtype, CLASS_IN, g.ttl, len(g.rdata)) + g.rdata
            for g in rrset.glue
        )
        answers[rdtype] = Answer(records, window, additional, len(rrset.glue))
    return Node(zone, answers, owner, priority)


ADDRESS_TYPES = ((AAAA, 16), (A, 4))


def address_node(
    name: bytes,
    addresses: Iterable[bytes],
    ttl: int,
    zone: ZoneInfo,
    max_answers: int | None,
    owner: Owner,
) -> Node:
    """`render` for a name with address records only, without the RRset objects in between:
    pod and endpoint names are rendered when asked, so this is on the query path."""
    answers: dict[int, Answer] = {}
    for rdtype, size in ADDRESS_TYPES:
        chosen = sorted({a for a in addresses if len(a) == size})
        if len(chosen) > MAX_ADDRESS_RECORDS:  # the 64 KiB message limit applies: render works it out
            data = {rdtype: RRset(rdtype, ttl, tuple(chosen))}
            answers.update(render(name, data, zone, max_answers).answers())
        elif chosen:
            head = b"\xc0\x0c" + RR_FIXED.pack(rdtype, CLASS_IN, ttl, size)
            window = len(chosen) if max_answers is None else min(len(chosen), max_answers)
            answers[rdtype] = Answer([head + a for a in chosen], window)
    return Node(zone, answers, owner)


def _priority(owner: Owner, record: Service | Pod | None) -> Priority:
    if owner == STATIC or record is None:
        return (-1, "", "")
    return (record.created, record.namespace, record.name)


class Index:
    """All served zones: the answer nodes, the per-zone SOA, and the serial."""

    def __init__(self, config: Config, *, now: float, journal: int = 0) -> None:
        self.config = config
        self.nodes: dict[bytes, Node] = {}
        self.zones: dict[bytes, ZoneInfo] = {z.to_wire(): ZoneInfo(z) for z in config.zones}
        self.synced = False
        self.serial = int(now) & 0xFFFFFFFF
        self.generation = 0
        """Increases with every change of any answer; a response memo is valid for one value."""
        self.dirty = False
        """Answers changed since the serial last advanced."""
        self.conflicts = 0
        self.record_count = 0
        """Resource records in the answers of all names (glue not counted)."""
        self._owned: dict[Owner, bytes | tuple[bytes, ...]] = {}
        """The names each owner contributes to."""
        self._contested: dict[bytes, dict[Owner, Node]] = {}
        """Every claimant's node, for the few names several owners claim."""
        self._below: dict[bytes, int] = {}
        """How many names with data lie strictly below each empty-non-terminal candidate."""
        self.on_serial: Callable[[int], None] | None = None
        """Called after the serial moved (NOTIFY to secondaries)."""
        self._journal: deque[tuple[int, int, dict[bytes, tuple[tuple[RR, ...], tuple[RR, ...]]]]] = deque(
            maxlen=journal or None
        )
        """Per serial step, each zone's removed and added records (IXFR); empty unless journal > 0."""
        self._journal_size = journal
        self._complete_step = True
        """Whether every change of the serial step under way was noted (see `_note_change`)."""
        self._touched: dict[bytes, Node | None] = {}
        """Names changed since the serial last moved, with what they served before (journal only)."""
        # A cluster has a pod name and an endpoint name per pod. A node for each would cost more
        # than the pod's record, so these names are rendered when asked from the two tables below
        # (issue 3's memory budget). Names of objects not in canonical (lower) case, which a
        # lower-cased query cannot find by key, are kept as nodes instead.
        self._named_pods: dict[str, dict[str, Pod]] = {}
        """Pods answered at <pod>.<ns>.pod.Z, by namespace and name."""
        self._endpoint_names: dict[str, dict[str, EndpointNames]] = {}
        """Services' endpoint names <endpoint>.<svc>.<ns>.svc.Z, by namespace and Service name."""
        self._rendered_count = 0
        """Names the two tables answer, in each forward zone."""
        self.rendered_cache: dict[bytes, Node] = {}
        """Recently asked names of the two tables, rendered; dropped when their owner changes (the
        C batch answers from it too)."""
        self._forward = {z.to_wire(): self.zones[z.to_wire()] for z in config.forward_zones}
        self._pod_suffixes = {b"\x03pod" + apex: zone for apex, zone in self._forward.items()}
        self._svc_suffixes = {b"\x03svc" + apex: zone for apex, zone in self._forward.items()}
        self.rendered_suffixes = (*self._pod_suffixes, *self._svc_suffixes)
        """Lower-case wire suffixes of the names `rendered` may answer: a name that ends otherwise
        and is not a node does not exist (the C batch answers NXDOMAIN for it by this)."""
        self._set_owner(STATIC, static_contribution(config, self.serial), (-1, "", ""))
        self._refresh_soa()
        self.dirty = False
        self._touched.clear()
        self._complete_step = True

    # -- queries ---------------------------------------------------------------------------

    def zone_for(self, lowered_wire: bytes) -> ZoneInfo | None:
        """The most specific zone of a lower-cased wire name, walking label boundaries."""
        pos, size = 0, len(lowered_wire)
        while pos < size:
            zone = self.zones.get(lowered_wire[pos:])
            if zone is not None:
                return zone
            length = lowered_wire[pos]
            if length == 0:
                return None
            pos += length + 1
        return None

    def _note_change(self, name: bytes, before: Node | None) -> None:
        """Keep what name served before this serial step, for the journal. A change made while
        the data is not synced makes the step incomplete: that step is not journaled (it would
        hold the whole zone, and no secondary can hold a serial from before the sync)."""
        if not self.synced:
            self._complete_step = False
        elif name not in self._touched:
            self._touched[name] = before

    def __len__(self) -> int:
        return len(self.nodes) + self._rendered_count * len(self._forward)

    def lookup(self, name: bytes) -> Node | None:
        """The node of a lower-cased wire name, kept or rendered on demand; None: no such name."""
        node = self.nodes.get(name)
        if node is None or node.owner is None:
            return self.rendered(name) or node
        return node

    def rendered(self, name: bytes) -> Node | None:
        """The node of a pod name or an endpoint name, rendered from its table (None: not one).
        Every NXDOMAIN query comes here: a name that ends otherwise costs two endswith."""
        node = self.rendered_cache.get(name)
        if node is not None or not (self._named_pods or self._endpoint_names):
            return node
        for suffix, zone in self._pod_suffixes.items():
            if name.endswith(suffix):
                labels = _labels(name, len(name) - len(suffix), 2)
                node = self._render_pod_name(name, zone, *labels) if labels else None
                break
        else:
            for suffix, zone in self._svc_suffixes.items():
                if name.endswith(suffix):
                    labels = _labels(name, len(name) - len(suffix), 3)
                    node = self._render_endpoint_name(name, zone, *labels) if labels else None
                    break
        if node is not None:
            if len(self.rendered_cache) >= RENDERED_CACHE:
                self.rendered_cache.clear()
            self.rendered_cache[name] = node
        return node

    def _render_pod_name(self, name: bytes, zone: ZoneInfo, pod_label: str, namespace: str) -> Node | None:
        pod = self._named_pods.get(namespace, _NOTHING).get(pod_label)
        if pod is None:
            return None
        owner = ("pod", pod.namespace, pod.name)
        return address_node(name, pod.addresses, self.config.ttl, zone, self.config.max_answers, owner)

    def _render_endpoint_name(
        self, name: bytes, zone: ZoneInfo, endpoint_label: str, service: str, namespace: str
    ) -> Node | None:
        table = self._endpoint_names.get(namespace, _NOTHING).get(service)
        if table is None or endpoint_label not in table.addresses:
            return None
        owner = ("svc", namespace, service)
        return address_node(name, table.addresses[endpoint_label], table.ttl, zone, self.config.max_answers, owner)

    # -- updates ---------------------------------------------------------------------------

    def update(self, changes: Changes, store: Store) -> None:
        """Rebuild the names of the Services and Pods in changes from the store."""
        for key in sorted(changes.services):
            self.update_service(key, store)
        for key in sorted(changes.pods):
            self.update_pod(key, store)

    def update_service(self, key: tuple[str, str], store: Store) -> None:
        namespace, name = key
        service = store.services.get(key)
        owner = ("svc", *key)
        canonical = name == name.lower() and namespace == namespace.lower()
        contribution, table = service_contribution(service, store, self.config, endpoint_table=canonical)
        self._set_owner(owner, contribution, _priority(owner, service))
        services = self._endpoint_names.get(namespace)
        before = services.get(name) if services else None
        if before != table:
            before_labels = before.addresses if before is not None else _NOTHING
            after_labels = table.addresses if table is not None else _NOTHING
            middle = label(name) + label(namespace) + b"\x03svc"
            for endpoint_label in before_labels.keys() | after_labels.keys():
                old = before.ttl if before is not None else 0, before_labels.get(endpoint_label)
                new = table.ttl if table is not None else 0, after_labels.get(endpoint_label)
                if not _same_addresses(old, new):
                    # No ancestor counts: the Service's own name, a node, is the parent of these.
                    for own_name in self._names_below(label(endpoint_label) + middle):
                        self._publish_rendered(own_name, old, new, ancestors=False)
        self._rendered_count += len(table.addresses if table else ()) - len(before.addresses if before else ())
        if table is not None:
            self._endpoint_names.setdefault(namespace, {})[name] = table
        elif services is not None and before is not None:
            del services[name]
            if not services:
                del self._endpoint_names[namespace]

    def update_pod(self, key: tuple[str, str], store: Store) -> None:
        """A pod's PTRs are kept as nodes (several pods may claim one); its own names are not,
        unless its name is not in canonical (lower) case, which the query-time lookup needs."""
        namespace, name = key
        pod = store.pods.get(key)
        owner = ("pod", *key)
        answered = name == name.lower() and namespace == namespace.lower() and has_own_names(pod, self.config)
        contribution = pod_contribution(pod, self.config, forward=not answered)
        self._set_owner(owner, contribution, _priority(owner, pod))
        pods = self._named_pods.get(namespace)
        before = pods.get(name) if pods else None
        ttl = self.config.ttl
        old = ttl, before.addresses if before is not None else None
        new = ttl, pod.addresses if answered else None  # type: ignore[union-attr]
        if not _same_addresses(old, new):
            for own_name in self._names_below(label(name) + label(namespace) + b"\x03pod"):
                self._publish_rendered(own_name, old, new, ancestors=True)
        if answered and pod is not None:
            if pods is None:
                pods = self._named_pods[pod.namespace] = {}
            self._rendered_count += before is None
            pods[pod.name] = pod
        elif before is not None and pods is not None:
            del pods[name]
            self._rendered_count -= 1
            if not pods:
                del self._named_pods[namespace]

    def _names_below(self, labels: bytes) -> list[bytes]:
        """labels + each forward zone, where that is not too long for a name."""
        return [wire for zone in self._forward if (wire := join(labels, zone)) is not None]

    def _publish_rendered(self, name: bytes, before: Addresses, after: Addresses, *, ancestors: bool) -> None:
        """Account for a change of a name answered from the tables (no addresses: no such name)."""
        if self._journal_size and name not in self._touched:
            ttl, addresses = before
            self._note_change(
                name,
                None
                if addresses is None or not self.synced
                else address_node(name, addresses, ttl, self._zone_of(name), self.config.max_answers, ("", "", "")),
            )
        self.dirty = True
        self.generation += 1
        self.record_count += len(set(after[1] or ())) - len(set(before[1] or ()))
        self.rendered_cache.pop(name, None)
        if ancestors and before[1] is None:
            self._add_descendant(name)
        elif ancestors and after[1] is None:
            self._drop_descendant(name)

    def advance_serial(self, now: float) -> bool:
        """Move the serial forward if answers changed; returns whether it moved."""
        if not self.dirty:
            return False
        old_serial = self.serial
        self.serial = max((self.serial + 1) & 0xFFFFFFFF, int(now) & 0xFFFFFFFF)
        if self._journal_size and self._complete_step:
            self._journal.append((old_serial, self.serial, self._deltas()))
        self._set_owner(STATIC, static_contribution(self.config, self.serial), (-1, "", ""))
        self._touched.clear()
        self._complete_step = True
        self._refresh_soa()
        self.dirty = False
        if self.on_serial is not None:
            self.on_serial(self.serial)
        return True

    # -- zone transfers ----------------------------------------------------------------------

    def soa_record(self, apex: bytes, serial: int) -> RR:
        """The apex SOA as it was (or is) at serial."""
        return (apex, SOA, self.config.ttl, soa_rdata(self.zones[apex].apex, self.config, serial))

    def zone_snapshot(self, apex: bytes, now: float) -> tuple[int, Iterator[RR]]:
        """For AXFR: the serial (advanced first if answers changed) and every record of the zone,
        the apex SOA first. The iterator reads a copy taken now, so a transfer that sends it a
        slice at a time sends one consistent version whatever changes meanwhile."""
        self.advance_serial(now)
        serial, nodes = self.serial, self.nodes.copy()
        # Copies made in C, a dict per namespace: a copy of 100,000 pods one by one would hold
        # the loop for tens of milliseconds. Records and tables are immutable, so this is enough.
        pods = [by_name.copy() for by_name in self._named_pods.values()]
        tables = [(ns, by_name.copy()) for ns, by_name in self._endpoint_names.items()]
        zone = self.zones[apex]

        def rendered(labels: bytes, addresses: tuple[bytes, ...], ttl: int, owner: Owner) -> Iterator[RR]:
            """A pod or endpoint name's records, rendered as a query would have them."""
            name = join(labels, apex)
            if name is None or self.zone_for(name) is not zone:
                return
            node = nodes.get(name)
            if node is None or node.owner is None:
                yield from address_node(name, addresses, ttl, zone, self.config.max_answers, owner).rrs(name)

        def records() -> Iterator[RR]:
            yield self.soa_record(apex, serial)
            for name, node in nodes.items():
                if node.owner is None or node.zone is not zone:
                    continue
                for rr in node.rrs(name):
                    if rr[1] != SOA:
                        yield rr
            if apex not in self._forward:
                return
            for pod in (pod for by_name in pods for pod in by_name.values()):
                labels = label(pod.name) + label(pod.namespace) + b"\x03pod"
                yield from rendered(labels, pod.addresses, self.config.ttl, ("pod", pod.namespace, pod.name))
            for namespace, service, table in ((ns, name, t) for ns, by_name in tables for name, t in by_name.items()):
                middle = label(service) + label(namespace) + b"\x03svc"
                for endpoint_label, addresses in table.addresses.items():
                    owner = ("svc", namespace, service)
                    yield from rendered(label(endpoint_label) + middle, addresses, table.ttl, owner)

        return serial, records()

    def changes_since(self, apex: bytes, serial: int, now: float) -> list[Delta] | None:
        """For IXFR: the steps from serial to the current serial (advanced first if answers
        changed), oldest first; [] when serial is current; None when the journal does not reach
        back to serial (the client then gets the whole zone)."""
        self.advance_serial(now)
        if serial == self.serial:
            return []
        steps = list(self._journal)
        for position, (old, _new, _zones) in enumerate(steps):
            if old == serial:
                empty: tuple[tuple[RR, ...], tuple[RR, ...]] = ((), ())
                return [(old, new, *zones.get(apex, empty)) for old, new, zones in steps[position:]]
        return None

    def _deltas(self) -> dict[bytes, tuple[tuple[RR, ...], tuple[RR, ...]]]:
        removed: dict[bytes, list[RR]] = {}
        added: dict[bytes, list[RR]] = {}
        for name, before in self._touched.items():
            after = self.lookup(name)
            old = set(before.rrs(name)) if before is not None else set()
            new = set(after.rrs(name)) if after is not None and after.owner is not None else set()
            zone = self._zone_of(name).apex_wire
            removed.setdefault(zone, []).extend(sorted(rr for rr in old - new if rr[1] != SOA))
            added.setdefault(zone, []).extend(sorted(rr for rr in new - old if rr[1] != SOA))
        return {zone: (tuple(removed[zone]), tuple(added[zone])) for zone in removed if removed[zone] or added[zone]}

    def _refresh_soa(self) -> None:
        timers = self.config.soa_timers
        negative_ttl = min(self.config.ttl, timers.minimum)
        for zone in self.zones.values():
            rdata = soa_rdata(zone.apex, self.config, self.serial)
            zone.negative_soa = RR_FIXED.pack(SOA, CLASS_IN, negative_ttl, len(rdata)) + rdata

    def _set_owner(self, owner: Owner, contribution: Contribution, priority: Priority) -> None:
        """Make owner's names exactly those in contribution.

        Every node is rendered before anything changes, so an exception (a bug, a name that
        cannot be rendered) leaves the index as it was. Unchanged names cost one comparison."""
        if not contribution and owner not in self._owned:
            return  # most pods: their names are rendered when asked, and they have no PTRs
        max_answers = self.config.max_answers
        rendered = [
            (name, render(name, data, self._zone_of(name), max_answers, owner, priority))
            for name, data in contribution.items()
        ]
        owned = self._owned.get(owner, ())
        previous = (owned,) if isinstance(owned, bytes) else owned
        removed = [name for name in previous if name not in contribution]
        # Keep the name objects the index already holds: `nodes` keeps the key it was first given,
        # and a second copy of every name would cost as much as a node.
        held = {name: name for name in previous}
        names = [held.get(name, name) for name in contribution]
        if len(names) == 1:
            self._owned[owner] = names[0]  # most owners own one name: no tuple for it
        elif names:
            self._owned[owner] = tuple(names)
        else:
            self._owned.pop(owner, None)
        for name, node in rendered:
            contested = self._contested.get(name)
            current = self.nodes.get(name)
            if contested is None and current is not None and current.owner not in (None, owner):
                contested = self._contested[name] = {current.owner: current}  # type: ignore[dict-item]
            if contested is None:
                self._publish(name, node)
            else:
                contested[owner] = node
                self._publish(name, self._winner(name, contested))
        for name in removed:
            contested = self._contested.get(name)
            if contested is None:
                self._publish(name, None)
                continue
            contested.pop(owner, None)
            if len(contested) == 1:
                del self._contested[name]
            self._publish(name, self._winner(name, contested))

    def _winner(self, name: bytes, contested: dict[Owner, Node]) -> Node:
        ranked = sorted(contested.values(), key=lambda node: node.priority)
        if len(ranked) > 1 and not name.endswith(b"\x04arpa\x00"):
            self.conflicts += 1
            log.warning(
                "%s is claimed by %s; %s wins (oldest)",
                to_text(name),
                ", ".join("/".join(n.owner[1:]) for n in ranked if n.owner),
                "/".join(ranked[0].owner[1:]) if ranked[0].owner else "?",
            )
        return ranked[0]

    def _zone_of(self, name: bytes) -> ZoneInfo:
        zone = self.zone_for(name)
        if zone is None:
            raise ValueError(f"{to_text(name)} is outside every zone")
        return zone

    def _ancestors(self, name: bytes) -> Iterable[bytes]:
        """The names strictly between name and its zone's apex."""
        apex_size = len(self._zone_of(name).apex_wire)
        pos = name[0] + 1
        while len(name) - pos > apex_size:
            yield name[pos:]
            pos += name[pos] + 1

    def _publish(self, name: bytes, node: Node | None) -> None:
        """Serve node at name (None: the name has no data any more)."""
        previous = self.nodes.get(name)
        had_data = previous is not None and previous.owner is not None
        if node is not None and had_data and previous.same_answers(node):  # type: ignore[union-attr]
            if previous.owner != node.owner:  # type: ignore[union-attr]
                self.nodes[name] = node  # same answers from another owner: nothing a client can see
            return
        if node is None and not had_data:
            return
        if self._journal_size and name not in self._touched:
            self._note_change(name, previous if had_data else None)
        self.dirty = True
        self.generation += 1
        self.record_count += (node.record_count if node else 0) - (previous.record_count if had_data else 0)  # type: ignore[union-attr]
        if node is not None:
            if not had_data:
                self._add_descendant(name)
            self.nodes[name] = node
            return
        if self._below.get(name, 0) > 0:
            self.nodes[name] = Node(self._zone_of(name))
        else:
            del self.nodes[name]
        self._drop_descendant(name)

    def _add_descendant(self, name: bytes) -> None:
        """A name with data appeared: its ancestors exist (as empty non-terminals if nothing else)."""
        for ancestor in self._ancestors(name):
            count = self._below.get(ancestor, 0) + 1
            self._below[ancestor] = count
            if count == 1 and ancestor not in self.nodes:
                self.nodes[ancestor] = Node(self._zone_of(ancestor))

    def _drop_descendant(self, name: bytes) -> None:
        for ancestor in self._ancestors(name):
            count = self._below[ancestor] - 1
            if count:
                self._below[ancestor] = count
                continue
            del self._below[ancestor]
            ent = self.nodes.get(ancestor)
            if ent is not None and ent.owner is None:
                del self.nodes[ancestor]


_NOTHING: dict = {}


def _labels(name: bytes, end: int, count: int) -> list[str] | None:
    """The labels of name[:end] as text when there are exactly count of them."""
    starts, pos = [], 0
    while pos < end and len(starts) < count:
        starts.append(pos)
        pos += name[pos] + 1
    if pos != end or len(starts) != count:
        return None
    return [name[start + 1 : start + 1 + name[start]].decode("latin-1") for start in starts]


Addresses = tuple[int, tuple[bytes, ...] | None]
"""What a pod or endpoint name answers: (TTL, addresses); None addresses: the name does not exist."""


def _same_addresses(old: Addresses, new: Addresses) -> bool:
    if old[1] is None or new[1] is None:
        return old[1] is new[1]
    return old[0] == new[0] and set(old[1]) == set(new[1])
