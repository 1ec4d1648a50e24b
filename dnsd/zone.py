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
from collections.abc import Iterable
from dataclasses import dataclass

import dns.name

from dnsd.config import Config
from dnsd.names import label_offsets, to_text
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
    NameData,
    RRset,
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
Priority = tuple[str, str, str]
STATIC: Owner = ("static", "", "")


@dataclass(slots=True)
class Answer:
    """One RRset ready to send: records rendered twice in a row so a rotation is one slice."""

    records: tuple[bytes, ...]
    count: int
    window: int
    """How many records one response carries: all, unless --max-answers or 64 KiB say fewer."""
    additional: bytes = b""
    additional_count: int = 0


class ZoneInfo:
    """Per-zone data spliced into responses at send time."""

    __slots__ = ("apex", "apex_wire", "negative_soa")

    def __init__(self, apex: dns.name.Name) -> None:
        self.apex = apex
        self.apex_wire = apex.to_wire()
        self.negative_soa = b""
        """The SOA record after its owner name, TTL = min(SOA TTL, MINIMUM) (RFC 2308 §3)."""


class Node:
    __slots__ = ("answers", "any", "cname", "zone")

    def __init__(self, zone: ZoneInfo, answers: dict[int, Answer]) -> None:
        self.zone = zone
        self.answers = answers
        self.cname = answers.get(CNAME)
        self.any = next((answers[t] for t in ANY_PREFERENCE if t in answers), None)
        if self.any is None and answers:
            self.any = next(iter(answers.values()))


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


def render(name: bytes, data: NameData, zone: ZoneInfo, max_answers: int | None) -> Node:
    question_size = len(name) + 4
    answers: dict[int, Answer] = {}
    for rdtype, rrset in data.items():
        records = tuple(b"\xc0\x0c" + RR_FIXED.pack(rdtype, CLASS_IN, rrset.ttl, len(rd)) + rd for rd in rrset.rdatas)
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
        answers[rdtype] = Answer(records + records, len(records), window, additional, len(rrset.glue))
    return Node(zone, answers)


def _priority(owner: Owner, record: Service | Pod | None) -> Priority:
    if owner == STATIC or record is None:
        return ("", "", "")
    return (record.created or "~", record.namespace, record.name)


class Index:
    """All served zones: the answer nodes, the per-zone SOA, and the serial."""

    def __init__(self, config: Config, *, now: float) -> None:
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
        self._owned: dict[Owner, Contribution] = {}
        self._claims: dict[bytes, dict[Owner, tuple[Priority, NameData]]] = {}
        self._published: dict[bytes, NameData] = {}
        self._below: dict[bytes, int] = {}
        self._set_owner(STATIC, static_contribution(config, self.serial), ("", "", ""))
        self._refresh_soa()
        self.dirty = False

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

    def __len__(self) -> int:
        return len(self.nodes)

    # -- updates ---------------------------------------------------------------------------

    def update(self, changes: Changes, store: Store) -> None:
        """Rebuild the names of the Services and Pods in changes from the store."""
        for key in sorted(changes.services):
            service = store.services.get(key)
            owner = ("svc", *key)
            self._set_owner(owner, service_contribution(service, store, self.config), _priority(owner, service))
        for key in sorted(changes.pods):
            pod = store.pods.get(key)
            owner = ("pod", *key)
            self._set_owner(owner, pod_contribution(pod, self.config), _priority(owner, pod))

    def advance_serial(self, now: float) -> bool:
        """Move the serial forward if answers changed; returns whether it moved."""
        if not self.dirty:
            return False
        self.serial = max((self.serial + 1) & 0xFFFFFFFF, int(now) & 0xFFFFFFFF)
        self._set_owner(STATIC, static_contribution(self.config, self.serial), ("", "", ""))
        self._refresh_soa()
        self.dirty = False
        return True

    def _refresh_soa(self) -> None:
        timers = self.config.soa_timers
        negative_ttl = min(self.config.ttl, timers.minimum)
        for zone in self.zones.values():
            rdata = soa_rdata(zone.apex, self.config, self.serial)
            zone.negative_soa = RR_FIXED.pack(SOA, CLASS_IN, negative_ttl, len(rdata)) + rdata

    def _set_owner(self, owner: Owner, contribution: Contribution, priority: Priority) -> None:
        old = self._owned.get(owner, {})
        touched = [name for name in old.keys() - contribution.keys()]
        touched += [
            name for name, data in contribution.items() if self._claims.get(name, {}).get(owner) != (priority, data)
        ]
        if not touched:
            if not contribution:
                self._owned.pop(owner, None)
            return
        # Decide and render every touched name before changing anything, so an exception
        # (a bug, a name dnspython rejects) leaves the index exactly as it was.
        claims = {name: dict(self._claims.get(name, {})) for name in touched}
        for name in touched:
            if name in contribution:
                claims[name][owner] = (priority, contribution[name])
            else:
                claims[name].pop(owner, None)
        rendered = []
        for name in touched:
            data = self._winner(name, claims[name])
            node = None if data is None else render(name, data, self._zone_of(name), self.config.max_answers)
            rendered.append((name, data, node))
        for name in touched:
            if claims[name]:
                self._claims[name] = claims[name]
            else:
                self._claims.pop(name, None)
        if contribution:
            self._owned[owner] = contribution
        else:
            self._owned.pop(owner, None)
        for name, data, node in rendered:
            self._publish(name, data, node)

    def _winner(self, name: bytes, claims: dict[Owner, tuple[Priority, NameData]]) -> NameData | None:
        if not claims:
            return None
        if len(claims) == 1:
            return next(iter(claims.values()))[1]
        ranked = sorted(claims.items(), key=lambda item: item[1][0])
        if not name.endswith(b"\x04arpa\x00"):
            self.conflicts += 1
            log.warning(
                "%s is claimed by %s; %s wins (oldest)",
                to_text(name),
                ", ".join("/".join(o[1:]) for o, _ in ranked),
                "/".join(ranked[0][0][1:]),
            )
        return ranked[0][1][1]

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

    def _publish(self, name: bytes, data: NameData | None, node: Node | None) -> None:
        previous = self._published.get(name)
        if previous == data:
            return
        self.dirty = True
        self.generation += 1
        self.record_count += _records_in(data) - _records_in(previous)
        if data is not None and node is not None:
            if previous is None:
                for ancestor in self._ancestors(name):
                    count = self._below.get(ancestor, 0) + 1
                    self._below[ancestor] = count
                    if count == 1 and ancestor not in self._published:
                        self.nodes[ancestor] = Node(self._zone_of(ancestor), {})
            self._published[name] = data
            self.nodes[name] = node
            return
        del self._published[name]
        if self._below.get(name, 0) > 0:
            self.nodes[name] = Node(self._zone_of(name), {})
        else:
            self.nodes.pop(name, None)
        for ancestor in self._ancestors(name):
            count = self._below[ancestor] - 1
            if count:
                self._below[ancestor] = count
                continue
            del self._below[ancestor]
            if ancestor not in self._published:
                self.nodes.pop(ancestor, None)


def _records_in(data: NameData | None) -> int:
    return sum(len(rrset.rdatas) for rrset in data.values()) if data else 0


def rrset_of(index: Index, name: dns.name.Name, rdtype: int) -> RRset | None:
    """The published RRset at name (for tests and tools)."""
    data = index._published.get(name.canonicalize().to_wire())
    return None if data is None else data.get(rdtype)
