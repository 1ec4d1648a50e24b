"""What each owner publishes: a Service, a Pod, or the zones' own apex data (pure).

An owner's contribution is a mapping from owner name to RRsets. The zone index (`dnsd.zone`)
resolves names claimed by several owners and renders the wire form; this module only decides
which records exist, following the naming contract in `dnsd.names`.
"""

from __future__ import annotations

import logging
import struct
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dns.exception
import dns.name

from dnsd.config import Config
from dnsd.names import is_dns_label, join, label, reverse_name, to_text, zone_of
from dnsd.records import Endpoint, EndpointSlice, Pod, Service
from dnsd.store import Store

log = logging.getLogger("dnsd.zone")

A, NS, CNAME, SOA, PTR, AAAA, SRV = 1, 2, 5, 6, 12, 28, 33
PROTOCOL_LABELS = {"TCP": "_tcp", "UDP": "_udp", "SCTP": "_sctp"}


@dataclass(frozen=True, slots=True)
class Glue:
    """An address record sent in the additional section with an RRset (SRV targets, NS glue)."""

    owner: bytes
    """Lower-cased wire name, like every name in a contribution."""
    rdtype: int
    ttl: int
    rdata: bytes


@dataclass(frozen=True, slots=True)
class RRset:
    rdtype: int
    ttl: int
    rdatas: tuple[bytes, ...]
    """Uncompressed RDATA in wire form, sorted so equal sets compare equal."""
    glue: tuple[Glue, ...] = ()


NameData = Mapping[int, RRset]
Contribution = dict[bytes, NameData]

# Counts of things skipped, by reason; exported as metrics later.
skipped: Counter[str] = Counter()


@dataclass(frozen=True, slots=True)
class ZoneWires:
    forward: tuple[bytes, ...]
    reverse: tuple[bytes, ...]
    reserved: tuple[tuple[bytes, bytes, bytes], ...]
    """(zone, svc.zone, pod.zone) per forward zone: where annotation names may not go."""


def zone_wires(config: Config) -> ZoneWires:
    # Called per owner update: a Config's hash (dnspython names) costs more than the update.
    cached = _zone_wires.get(id(config))
    if cached is not None and cached[0] is config:
        return cached[1]
    wires = _compute_zone_wires(config)
    _zone_wires.clear()
    _zone_wires[id(config)] = (config, wires)
    return wires


_zone_wires: dict[int, tuple[Config, ZoneWires]] = {}


def _compute_zone_wires(config: Config) -> ZoneWires:
    forward = tuple(z.to_wire() for z in config.forward_zones)
    return ZoneWires(
        forward=forward,
        reverse=tuple(z.to_wire() for z in config.reverse_zones),
        reserved=tuple((z, b"\x03svc" + z, b"\x03pod" + z) for z in forward),
    )


def _address_rrsets(addresses: Iterable[bytes], ttl: int) -> dict[int, RRset]:
    v6 = sorted({a for a in addresses if len(a) == 16})
    v4 = sorted({a for a in addresses if len(a) == 4})
    data: dict[int, RRset] = {}
    if v6:
        data[AAAA] = RRset(AAAA, ttl, tuple(v6))
    if v4:
        data[A] = RRset(A, ttl, tuple(v4))
    return data


def _glue(owner: bytes, addresses: Iterable[bytes], ttl: int) -> list[Glue]:
    return [Glue(owner, AAAA if len(a) == 16 else A, ttl, a) for a in sorted(set(addresses))]


def _skip(reason: str, message: str, *args: object) -> None:
    skipped[reason] += 1
    log.warning(message, *args)


@dataclass(frozen=True, slots=True)
class ServedEndpoint:
    label: str | None
    addresses: tuple[bytes, ...]
    ports: tuple[tuple[str, str, int], ...]


def served_endpoints(service: Service, slices: list[EndpointSlice], store: Store) -> list[ServedEndpoint]:
    """The endpoints a Service answers with: the ready ones, else (graceful drain) the serving ones.

    The same endpoint in several slices counts once; its addresses are the slice's and its
    pod's own `status.podIPs`, so a SingleStack IPv4 Service still answers AAAA.
    """
    merged: dict[tuple, tuple[Endpoint, list[bytes], list[tuple[str, str, int]]]] = {}
    for piece in slices:
        ports = [(p.name, p.protocol, p.port) for p in piece.ports]
        for endpoint in piece.endpoints:
            identity = (
                ("pod", endpoint.pod)
                if endpoint.pod
                else ("host", endpoint.hostname)
                if endpoint.hostname
                else ("addresses", endpoint.addresses)
            )
            known = merged.get(identity)
            if known is None:
                merged[identity] = (endpoint, list(endpoint.addresses), list(ports))
                continue
            first, addresses, known_ports = known
            if (endpoint.ready and not first.ready) or (endpoint.serving and not first.serving):
                first = Endpoint(
                    first.addresses,
                    first.ready or endpoint.ready,
                    first.serving or endpoint.serving,
                    first.hostname or endpoint.hostname,
                    first.pod,
                )
            addresses.extend(a for a in endpoint.addresses if a not in addresses)
            known_ports.extend(p for p in ports if p not in known_ports)
            merged[identity] = (first, addresses, known_ports)
    chosen = [m for m in merged.values() if m[0].ready] or [m for m in merged.values() if m[0].serving]
    result = []
    for endpoint, addresses, ports in chosen:
        if endpoint.pod:
            pod = store.pods.get((service.namespace, endpoint.pod))
            if pod is not None:
                addresses = addresses + [a for a in pod.addresses if a not in addresses]
        # The endpoint's own tuple when nothing was added: the zone keeps these per endpoint.
        served_addresses = endpoint.addresses if list(endpoint.addresses) == addresses else tuple(addresses)
        endpoint_label = endpoint.hostname or endpoint.pod
        if endpoint_label is not None and not is_dns_label(endpoint_label):
            _skip(
                "invalid_label",
                "%s/%s: endpoint name %r is not a DNS label; it gets no name",
                service.namespace,
                service.name,
                endpoint_label,
            )
            endpoint_label = None
        served_label = sys.intern(endpoint_label.lower()) if endpoint_label else None
        result.append(ServedEndpoint(served_label, served_addresses, tuple(ports)))
    return result


def service_ttl(service: Service, config: Config) -> int:
    if service.ttl is None:
        return config.ttl
    return min(max(service.ttl, 1), config.max_ttl)


def is_exposed(service: Service, config: Config) -> bool:
    return config.expose_default if service.expose is None else service.expose


def annotation_names(service: Service, config: Config) -> list[bytes]:
    """The valid names from the hostname annotations; the rest are logged and counted."""
    wires = zone_wires(config)
    names = []
    for text in service.hostnames:
        where = f"{service.namespace}/{service.name}: hostname {text!r}"
        try:
            name = dns.name.from_text(text if text.endswith(".") else text + ".").canonicalize()
        except dns.exception.DNSException:
            _skip("invalid_hostname", "%s is not a valid name; ignored", where)
            continue
        if any(part == b"*" for part in name.labels):
            _skip("invalid_hostname", "%s is a wildcard; ignored", where)
            continue
        if not all(is_dns_label(part.decode("ascii", "replace")) for part in name.labels[:-1]):
            _skip("invalid_hostname", "%s has an invalid label; ignored", where)
            continue
        wire = name.to_wire()
        zone = zone_of(wire, wires.forward)
        if zone is None:
            _skip("invalid_hostname", "%s is outside every forward zone; ignored", where)
            continue
        _apex, svc, pod = next(r for r in wires.reserved if r[0] == zone)
        if wire == zone or wire.endswith(svc) or wire.endswith(pod):
            _skip("invalid_hostname", "%s is the apex or under svc./pod.; ignored", where)
            continue
        names.append(wire)
    return names


@dataclass(frozen=True, slots=True)
class EndpointNames:
    """What the names <endpoint>.<svc>.<ns>.svc.Z of one Service answer, by endpoint label.

    A cluster has one such name per pod behind a Service, so the zone does not keep them as
    nodes but renders them from this table when asked (and the tuples are the endpoints' own)."""

    ttl: int
    addresses: Mapping[str, tuple[bytes, ...]]


def service_contribution(
    service: Service | None, store: Store, config: Config, *, endpoint_table: bool = False
) -> tuple[Contribution, EndpointNames | None]:
    """A Service's names; with endpoint_table, its endpoint names come as a table instead."""
    if service is None or not is_exposed(service, config):
        return {}, None
    where = f"{service.namespace}/{service.name}"
    if not (is_dns_label(service.name) and is_dns_label(service.namespace)):
        _skip("invalid_label", "service %s: name or namespace is not a DNS label; it gets no name", where)
        return {}, None
    ttl = service_ttl(service, config)
    middle = label(service.name) + label(service.namespace) + b"\x03svc"
    bases = []
    for zone in zone_wires(config).forward:
        base = join(middle, zone)
        if base is None:
            _skip("name_too_long", "service %s: name too long in %s", where, to_text(zone))
        else:
            bases.append(base)
    aliases = annotation_names(service, config)
    if service.external_name is not None:
        try:
            target = dns.name.from_text(service.external_name.rstrip(".") + ".").canonicalize().to_wire()
        except dns.exception.DNSException:
            _skip(
                "invalid_external_name", "service %s: externalName %r is not a valid name", where, service.external_name
            )
            return {name: {} for name in bases}, None
        data = {CNAME: RRset(CNAME, ttl, (target,))}
        return {name: data for name in bases + aliases}, None
    endpoints = served_endpoints(service, store.slices_of(service.key), store)
    service_data = _address_rrsets({a for e in endpoints for a in e.addresses}, ttl)
    contribution: Contribution = {name: service_data for name in bases + aliases}
    by_label: dict[str, tuple[bytes, ...]] = {}
    for endpoint in endpoints:
        if endpoint.label is not None:
            known = by_label.get(endpoint.label)
            by_label[endpoint.label] = (
                endpoint.addresses if known is None else tuple(sorted({*known, *endpoint.addresses}))
            )
    for base in bases:
        port_owners: dict[tuple[str, str], bytes | None] = {}
        targets: dict[str, bytes] = {}
        for name_label, label_addresses in by_label.items():
            name = join(label(name_label), base)
            if name is None:
                _skip("name_too_long", "%s.%s: name too long; skipped", name_label, to_text(base))
                continue
            targets[name_label] = name
            if not endpoint_table:
                contribution[name] = _address_rrsets(label_addresses, ttl)
        srv: dict[bytes, tuple[set[bytes], set[Glue]]] = {}
        for endpoint in endpoints:
            target = targets.get(endpoint.label) if endpoint.label else None
            if target is None:
                continue
            for port_name, protocol, port in endpoint.ports:
                owner = port_owners.get((port_name, protocol), b"")
                if owner == b"":  # not seen yet for this base: most endpoints share their ports
                    owner = port_owners[(port_name, protocol)] = _srv_owner(port_name, protocol, base)
                if owner is None:
                    continue
                rdatas, glue = srv.setdefault(owner, (set(), set()))
                rdatas.add(struct.pack("!HHH", 0, 1, port) + target)
                glue.update(_glue(target, by_label[endpoint.label], ttl))
        for owner, (rdatas, glue) in srv.items():
            ordered_glue = tuple(sorted(glue, key=lambda g: (g.owner, g.rdtype, g.rdata)))
            contribution[owner] = {SRV: RRset(SRV, ttl, tuple(sorted(rdatas)), ordered_glue)}
    return contribution, EndpointNames(ttl, by_label) if endpoint_table and by_label and bases else None


def is_named(pod: Pod | None, config: Config) -> bool:
    """Whether a pod has names of its own (and PTRs): active, with addresses of its own."""
    return pod is not None and config.pod_records and pod.active and not pod.host_network and bool(pod.addresses)


def pod_address_data(pod: Pod, config: Config) -> NameData:
    return _address_rrsets(pod.addresses, config.ttl)


def has_own_names(pod: Pod | None, config: Config) -> bool:
    """Whether a pod is answered at <pod>.<ns>.pod.Z (and its addresses' PTRs point there)."""
    return is_named(pod, config) and is_dns_label(pod.name) and is_dns_label(pod.namespace)  # type: ignore[union-attr]


def _srv_owner(port_name: str, protocol: str, base: bytes) -> bytes | None:
    """_<port>._<proto>.<base>, None for an unnamed or invalid port or a name too long."""
    proto_label = PROTOCOL_LABELS.get(protocol.upper())
    if not port_name or proto_label is None or not is_dns_label(port_name):
        return None
    owner = join(label("_" + port_name), label(proto_label), base)
    if owner is None:
        _skip("name_too_long", "_%s.%s.%s: name too long; skipped", port_name, proto_label, to_text(base))
    return owner


def pod_contribution(pod: Pod | None, config: Config, *, forward: bool = True) -> Contribution:
    """A pod's names: its own (unless forward is False: the zone renders those) and PTRs."""
    if pod is None or not is_named(pod, config):
        return {}
    if not (is_dns_label(pod.name) and is_dns_label(pod.namespace)):
        _skip("invalid_label", "pod %s/%s: name is not a DNS label; it gets no name", pod.namespace, pod.name)
        return {}
    wires = zone_wires(config)
    contribution: Contribution = {}
    if not (forward or wires.reverse):
        return contribution
    middle = label(pod.name) + label(pod.namespace) + b"\x03pod"
    if forward:
        data = pod_address_data(pod, config)
        for zone in wires.forward:
            name = join(middle, zone)
            if name is None:
                _skip("name_too_long", "pod %s/%s: name too long in %s", pod.namespace, pod.name, to_text(zone))
                continue
            contribution[name] = data
    first = join(middle, wires.forward[0]) if wires.forward else None
    if first is not None and wires.reverse:
        ptr = {PTR: RRset(PTR, config.ttl, (first,))}
        for address in pod.addresses:
            reverse = reverse_name(address)
            if zone_of(reverse, wires.reverse) is not None:
                contribution[reverse] = ptr
    return contribution


def soa_rdata(zone: dns.name.Name, config: Config, serial: int) -> bytes:
    timers = config.soa_timers
    return (
        soa_mname(zone, config).to_wire()
        + (config.soa_rname or dns.name.Name((b"hostmaster", *zone.labels))).to_wire()
        + struct.pack("!IIIII", serial, timers.refresh, timers.retry, timers.expire, timers.minimum)
    )


def soa_mname(zone: dns.name.Name, config: Config) -> dns.name.Name:
    if config.soa_mname is not None:
        return config.soa_mname
    if config.ns:
        return config.ns[0].name
    return dns.name.Name((b"ns", b"dns", *zone.labels))


def static_contribution(config: Config, serial: int) -> Contribution:
    """Apex SOA and NS of every zone, and addresses of in-zone name servers."""
    zones = [z.to_wire() for z in config.zones]
    contribution: Contribution = {}
    glue_addresses: dict[bytes, list[bytes]] = {}
    for server in config.ns:
        glue_addresses.setdefault(server.name.to_wire(), []).extend(a.packed for a in server.addresses)
    for zone in config.zones:
        servers = [s.name.to_wire() for s in config.ns] or [soa_mname(zone, config).to_wire()]
        glue = [g for name in servers for g in _glue(name, glue_addresses.get(name, ()), config.ttl)]
        contribution[zone.to_wire()] = {
            SOA: RRset(SOA, config.ttl, (soa_rdata(zone, config, serial),)),
            NS: RRset(NS, config.ttl, tuple(sorted(servers)), tuple(glue)),
        }
    for name, addresses in glue_addresses.items():
        if addresses and zone_of(name, zones) is not None:
            data = dict(contribution.get(name, {}))
            data.update(_address_rrsets(addresses, config.ttl))
            contribution[name] = data
    return contribution
