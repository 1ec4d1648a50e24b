"""What each owner publishes: a Service, a Pod, or the zones' own apex data (pure).

An owner's contribution is a mapping from owner name to RRsets. The zone index (`dnsd.zone`)
resolves names claimed by several owners and renders the wire form; this module only decides
which records exist, following the naming contract in `dnsd.names`.
"""

from __future__ import annotations

import logging
import struct
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import dns.exception
import dns.name

from dnsd.config import Config
from dnsd.names import (
    child,
    is_dns_label,
    pod_name,
    reverse_name,
    service_name,
    zone_of,
)
from dnsd.records import Endpoint, EndpointSlice, Pod, Service
from dnsd.store import Store

log = logging.getLogger("dnsd.zone")

A, NS, CNAME, SOA, PTR, AAAA, SRV = 1, 2, 5, 6, 12, 28, 33
PROTOCOL_LABELS = {"TCP": "_tcp", "UDP": "_udp", "SCTP": "_sctp"}


@dataclass(frozen=True, slots=True)
class Glue:
    """An address record sent in the additional section with an RRset (SRV targets, NS glue)."""

    owner: dns.name.Name
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
Contribution = dict[dns.name.Name, NameData]

# Counts of things skipped, by reason; exported as metrics later.
skipped: Counter[str] = Counter()


def _address_rrsets(addresses: Iterable[bytes], ttl: int) -> dict[int, RRset]:
    v6 = sorted({a for a in addresses if len(a) == 16})
    v4 = sorted({a for a in addresses if len(a) == 4})
    data: dict[int, RRset] = {}
    if v6:
        data[AAAA] = RRset(AAAA, ttl, tuple(v6))
    if v4:
        data[A] = RRset(A, ttl, tuple(v4))
    return data


def _glue(owner: dns.name.Name, addresses: Iterable[bytes], ttl: int) -> list[Glue]:
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
        label = endpoint.hostname or endpoint.pod
        if label is not None and not is_dns_label(label):
            _skip(
                "invalid_label",
                "%s/%s: endpoint name %r is not a DNS label; it gets no name",
                service.namespace,
                service.name,
                label,
            )
            label = None
        result.append(ServedEndpoint(label.lower() if label else None, tuple(addresses), tuple(ports)))
    return result


def service_ttl(service: Service, config: Config) -> int:
    if service.ttl is None:
        return config.ttl
    return min(max(service.ttl, 1), config.max_ttl)


def is_exposed(service: Service, config: Config) -> bool:
    return config.expose_default if service.expose is None else service.expose


def annotation_names(service: Service, config: Config) -> list[dns.name.Name]:
    """The valid names from the hostname annotations; the rest are logged and counted."""
    names = []
    for text in service.hostnames:
        where = f"{service.namespace}/{service.name}: hostname {text!r}"
        try:
            name = dns.name.from_text(text if text.endswith(".") else text + ".").canonicalize()
        except dns.exception.DNSException:
            _skip("invalid_hostname", "%s is not a valid name; ignored", where)
            continue
        if any(label == b"*" for label in name.labels):
            _skip("invalid_hostname", "%s is a wildcard; ignored", where)
            continue
        if not all(is_dns_label(label.decode("ascii", "replace")) for label in name.labels[:-1]):
            _skip("invalid_hostname", "%s has an invalid label; ignored", where)
            continue
        zone = zone_of(name, config.forward_zones)
        if zone is None:
            _skip("invalid_hostname", "%s is outside every forward zone; ignored", where)
            continue
        reserved = (dns.name.Name((b"svc", *zone.labels)), dns.name.Name((b"pod", *zone.labels)))
        if name == zone or any(name.is_subdomain(r) for r in reserved):
            _skip("invalid_hostname", "%s is the apex or under svc./pod.; ignored", where)
            continue
        names.append(name)
    return names


def service_contribution(service: Service | None, store: Store, config: Config) -> Contribution:
    if service is None or not is_exposed(service, config):
        return {}
    ttl = service_ttl(service, config)
    bases = []
    for zone in config.forward_zones:
        try:
            bases.append(service_name(zone, service.namespace, service.name))
        except dns.name.NameTooLong:
            _skip("name_too_long", "%s/%s: name too long in %s", service.namespace, service.name, zone)
    aliases = annotation_names(service, config)
    contribution: Contribution = {}
    if service.external_name is not None:
        try:
            target = dns.name.from_text(service.external_name.rstrip(".") + ".").canonicalize()
        except dns.exception.DNSException:
            _skip(
                "invalid_external_name",
                "%s/%s: externalName %r is not a valid name",
                service.namespace,
                service.name,
                service.external_name,
            )
            return {name: {} for name in bases}
        data = {CNAME: RRset(CNAME, ttl, (target.to_wire(),))}
        return {name: data for name in bases + aliases}
    endpoints = served_endpoints(service, store.slices_of(service.key), store)
    addresses = {a for e in endpoints for a in e.addresses}
    service_data = _address_rrsets(addresses, ttl)
    for name in bases + aliases:
        contribution[name] = service_data
    for base in bases:
        by_label: dict[str, set[bytes]] = {}
        for endpoint in endpoints:
            if endpoint.label is not None:
                by_label.setdefault(endpoint.label, set()).update(endpoint.addresses)
        targets: dict[str, dns.name.Name] = {}
        for label, label_addresses in by_label.items():
            try:
                name = child(label, base)
            except dns.name.NameTooLong:
                _skip("name_too_long", "%s.%s: name too long; skipped", label, base)
                continue
            targets[label] = name
            contribution[name] = _address_rrsets(label_addresses, ttl)
        srv: dict[dns.name.Name, tuple[set[bytes], list[Glue]]] = {}
        for endpoint in endpoints:
            target = targets.get(endpoint.label) if endpoint.label else None
            if target is None:
                continue
            for port_name, protocol, port in endpoint.ports:
                proto_label = PROTOCOL_LABELS.get(protocol.upper())
                if not port_name or proto_label is None or not is_dns_label(port_name):
                    continue
                try:
                    owner = dns.name.Name((b"_" + port_name.lower().encode(), proto_label.encode(), *base.labels))
                except dns.name.NameTooLong:
                    _skip("name_too_long", "_%s.%s.%s: name too long; skipped", port_name, proto_label, base)
                    continue
                rdatas, glue = srv.setdefault(owner, (set(), []))
                rdatas.add(struct.pack("!HHH", 0, 1, port) + target.to_wire())
                glue.extend(_glue(target, by_label[endpoint.label], ttl))
        for owner, (rdatas, glue) in srv.items():
            unique_glue = tuple(sorted(set(glue), key=lambda g: (g.owner, g.rdtype, g.rdata)))
            contribution[owner] = {SRV: RRset(SRV, ttl, tuple(sorted(rdatas)), unique_glue)}
    return contribution


def pod_contribution(pod: Pod | None, config: Config) -> Contribution:
    if pod is None or not config.pod_records or not pod.active or pod.host_network:
        return {}
    if not pod.addresses:
        return {}
    if not is_dns_label(pod.name):
        _skip("invalid_label", "pod %s/%s: name is not a DNS label; it gets no name", pod.namespace, pod.name)
        return {}
    contribution: Contribution = {}
    names = []
    for zone in config.forward_zones:
        try:
            names.append(pod_name(zone, pod.namespace, pod.name))
        except dns.name.NameTooLong:
            _skip("name_too_long", "pod %s/%s: name too long in %s", pod.namespace, pod.name, zone)
    data = _address_rrsets(pod.addresses, config.ttl)
    for name in names:
        contribution[name] = data
    if names and names[0].is_subdomain(config.forward_zones[0]) and config.reverse_zones:
        ptr = RRset(PTR, config.ttl, (names[0].to_wire(),))
        for address in pod.addresses:
            reverse = reverse_name(address)
            if zone_of(reverse, config.reverse_zones) is not None:
                contribution[reverse] = {PTR: ptr}
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
    contribution: Contribution = {}
    glue_names: dict[dns.name.Name, list[bytes]] = {}
    for server in config.ns:
        glue_names.setdefault(server.name, []).extend(a.packed for a in server.addresses)
    for zone in config.zones:
        servers = [s.name for s in config.ns] or [soa_mname(zone, config)]
        glue = []
        for name in servers:
            if zone_of(name, config.zones) is not None:
                glue.extend(_glue(name, glue_names.get(name, ()), config.ttl))
        contribution[zone] = {
            SOA: RRset(SOA, config.ttl, (soa_rdata(zone, config, serial),)),
            NS: RRset(NS, config.ttl, tuple(sorted(n.to_wire() for n in servers)), tuple(glue)),
        }
    for name, addresses in glue_names.items():
        if addresses and zone_of(name, config.zones) is not None:
            data = dict(contribution.get(name, {}))
            data.update(_address_rrsets(addresses, config.ttl))
            contribution[name] = data
    return contribution
