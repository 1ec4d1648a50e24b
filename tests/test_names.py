"""The naming contract, as a table: cluster objects in, (qname, qtype) -> rcode and records out.

In scope: every row of the names table and the address/readiness/label rules of issue 2,
answered by the pure engine (`wire.respond`) over an index built from the objects. Out of
scope: sockets (test_transports.py) and the protocol edge cases (test_protocol.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import dns.rcode
import dns.reversename
import pytest
from conftest import Zone, make_config, rrsets_text
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s import cluster, endpoint, endpoint_slice, pod, service

Z = "gua.example.com."


def rev(address: str) -> str:
    return dns.reversename.from_address(address).to_text()


SOA = f"{Z} 5 IN SOA ns.dns.{Z} hostmaster.{Z} 1700000000 60 30 3600 5"

OBJECTS = [
    # web: two ready pods, one not ready, one terminating but serving; dual-stack slices
    service("web", annotations={"dnsd.io/hostname": "www.gua.example.com,shop.gua.example.com"}),
    endpoint_slice(
        "web-v6",
        "web",
        endpoint("2001:db8:1::a", pod="web-a"),
        endpoint("2001:db8:1::b", pod="web-b", ready=None),
        endpoint("2001:db8:1::c", pod="web-c", ready=False, serving=False),
        endpoint("2001:db8:1::d", pod="web-d", ready=False, serving=True, terminating=True),
        ports=[("http", "TCP", 8080), ("", "TCP", 9090)],
    ),
    endpoint_slice(
        "web-v4",
        "web",
        endpoint("203.0.113.10", pod="web-a"),
        endpoint("203.0.113.11", pod="web-b"),
        address_type="IPv4",
        ports=[("http", "TCP", 8080)],
    ),
    pod("web-a", "2001:db8:1::a", "203.0.113.10"),
    pod("web-b", "2001:db8:1::b", "203.0.113.11"),
    pod("web-c", "2001:db8:1::c"),
    pod("web-d", "2001:db8:1::d", deleting=True),
    # db: headless StatefulSet, hostnames; the same endpoint listed in two slices counts once
    service("db"),
    endpoint_slice(
        "db-1",
        "db",
        endpoint("2001:db8:2::10", pod="db-0", hostname="db-0"),
        endpoint("2001:db8:2::11", pod="db-1", hostname="db-1"),
        ports=[("pg", "TCP", 5432), ("metrics", "UDP", 9187)],
    ),
    endpoint_slice("db-2", "db", endpoint("2001:db8:2::11", pod="db-1", hostname="db-1"), ports=[("pg", "TCP", 5432)]),
    pod("db-0", "2001:db8:2::10"),
    pod("db-1", "2001:db8:2::11"),
    # legacy: SingleStack IPv4 on private addresses; the pod's podIPs carry a GUA
    service("legacy"),
    endpoint_slice("legacy-1", "legacy", endpoint("10.244.1.7", pod="legacy-x"), address_type="IPv4"),
    pod("legacy-x", "10.244.1.7", "2001:db8:3::7"),
    # ula: only ULA, link-local and private addresses: the name exists with no address
    service("ula"),
    endpoint_slice("ula-1", "ula", endpoint("fd00::5", "fe80::5", pod="ula-x")),
    pod("ula-x", "fd00::5", "10.1.2.3", "100.64.0.1", "192.168.1.1", "172.16.0.1", "127.0.0.1", "169.254.0.1"),
    # drain: no ready endpoint left, the serving one is answered
    service("drain"),
    endpoint_slice("drain-1", "drain", endpoint("2001:db8:4::1", ready=False, serving=True, terminating=True)),
    # empty: no endpoints at all
    service("empty"),
    # hidden: annotated away; orphan slice: its Service does not exist
    service("hidden", annotations={"dnsd.io/expose": "false"}),
    endpoint_slice("hidden-1", "hidden", endpoint("2001:db8:5::1")),
    endpoint_slice("orphan-1", "orphan", endpoint("2001:db8:6::1")),
    # fqdn slices are ignored
    service("fq"),
    endpoint_slice("fq-1", "fq", endpoint("example.org"), address_type="FQDN"),
    # naming edge cases: a pod name with dots, endpoints without names, colliding hostnames
    service("odd"),
    endpoint_slice(
        "odd-1",
        "odd",
        endpoint("2001:db8:7::1", pod="dotted.pod"),
        endpoint("2001:db8:7::2"),
        endpoint("2001:db8:7::3", hostname="same"),
        endpoint("2001:db8:7::4", hostname="same"),
        endpoint("2001:db8:7::5", pod="x" * 64),
    ),
    pod("dotted.pod", "2001:db8:7::1"),
    # split: endpoints in two slices with different ports; each SRV takes its own slice's port
    service("split"),
    endpoint_slice("split-1", "split", endpoint("2001:db8:f::1", hostname="one"), ports=[("http", "TCP", 8080)]),
    endpoint_slice("split-2", "split", endpoint("2001:db8:f::2", hostname="two"), ports=[("http", "TCP", 9090)]),
    # host network: no pod name, no PTR; its address still answers for its Service
    service("node-agent"),
    endpoint_slice("node-agent-1", "node-agent", endpoint("2001:db8:8::1", pod="agent-x")),
    pod("agent-x", "2001:db8:8::1", host_network=True),
    # finished pods and pods without addresses get no name
    pod("job-done", "2001:db8:9::1", phase="Succeeded"),
    pod("job-failed", "2001:db8:9::2", phase="Failed"),
    pod("pending"),
    # two pods sharing one address: the oldest gets the PTR
    pod("old", "2001:db8:a::1", created="2025-01-01T00:00:00Z"),
    pod("new", "2001:db8:a::1", created="2026-06-01T00:00:00Z"),
    # ExternalName and TTL annotation
    service("docs", external_name="docs.example.org"),
    service("slow", annotations={"dnsd.io/ttl": "60"}),
    endpoint_slice("slow-1", "slow", endpoint("2001:db8:b::1")),
    service("capped", annotations={"dnsd.io/ttl": "999999"}),
    endpoint_slice("capped-1", "capped", endpoint("2001:db8:b::2")),
    # annotation hostnames: conflicts, invalid names, external-dns spelling, other namespace
    service(
        "alias-old",
        "team",
        created="2025-01-01T00:00:00Z",
        annotations={"external-dns.alpha.kubernetes.io/hostname": "api.gua.example.com,deep.name.gua.example.com"},
    ),
    endpoint_slice("alias-old-1", "alias-old", endpoint("2001:db8:c::1"), namespace="team"),
    service(
        "alias-new",
        "team",
        created="2026-01-01T00:00:00Z",
        annotations={
            "dnsd.io/hostname": "api.gua.example.com,*.gua.example.com,gua.example.com,"
            "x.svc.gua.example.com,y.pod.gua.example.com,other.example.net,bad_label!.gua.example.com"
        },
    ),
    endpoint_slice("alias-new-1", "alias-new", endpoint("2001:db8:c::2"), namespace="team"),
]


@dataclass
class Case:
    qname: str
    qtype: str
    rcode: str = "NOERROR"
    answer: list[str] = field(default_factory=list)
    authority: list[str] = field(default_factory=list)
    additional: list[str] | None = None
    id: str = ""


CASES = [
    Case(
        "web.default.svc.gua.example.com.",
        "AAAA",
        answer=[
            "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a",
            "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::b",
        ],
        id="service-ready-only",
    ),
    Case(
        "web.default.svc.gua.example.com.",
        "A",
        answer=[
            "web.default.svc.gua.example.com. 5 IN A 203.0.113.10",
            "web.default.svc.gua.example.com. 5 IN A 203.0.113.11",
        ],
        id="service-a",
    ),
    Case(
        "WEB.Default.SVC.gua.EXAMPLE.com.",
        "AAAA",
        answer=[
            "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a",
            "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::b",
        ],
        id="case-insensitive",
    ),
    Case(
        "web-a.web.default.svc.gua.example.com.",
        "AAAA",
        answer=["web-a.web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a"],
        id="endpoint-by-pod-name",
    ),
    Case(
        "web-a.web.default.svc.gua.example.com.",
        "A",
        answer=["web-a.web.default.svc.gua.example.com. 5 IN A 203.0.113.10"],
        id="endpoint-a",
    ),
    Case("web-c.web.default.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="endpoint-not-ready"),
    Case(
        "_http._tcp.web.default.svc.gua.example.com.",
        "SRV",
        answer=[
            "_http._tcp.web.default.svc.gua.example.com. 5 IN SRV 0 1 8080 web-a.web.default.svc.gua.example.com.",
            "_http._tcp.web.default.svc.gua.example.com. 5 IN SRV 0 1 8080 web-b.web.default.svc.gua.example.com.",
        ],
        additional=[
            "web-a.web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a",
            "web-a.web.default.svc.gua.example.com. 5 IN A 203.0.113.10",
            "web-b.web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::b",
            "web-b.web.default.svc.gua.example.com. 5 IN A 203.0.113.11",
        ],
        id="srv-with-additional",
    ),
    Case("_tcp.web.default.svc.gua.example.com.", "A", authority=[SOA], id="ent-proto"),
    Case(
        "db-0.db.default.svc.gua.example.com.",
        "AAAA",
        answer=["db-0.db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:2::10"],
        id="endpoint-by-hostname",
    ),
    Case(
        "_pg._tcp.db.default.svc.gua.example.com.",
        "SRV",
        answer=[
            "_pg._tcp.db.default.svc.gua.example.com. 5 IN SRV 0 1 5432 db-0.db.default.svc.gua.example.com.",
            "_pg._tcp.db.default.svc.gua.example.com. 5 IN SRV 0 1 5432 db-1.db.default.svc.gua.example.com.",
        ],
        additional=[
            "db-0.db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:2::10",
            "db-1.db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:2::11",
        ],
        id="srv-deduplicated-endpoint",
    ),
    Case(
        "_metrics._udp.db.default.svc.gua.example.com.",
        "SRV",
        answer=[
            "_metrics._udp.db.default.svc.gua.example.com. 5 IN SRV 0 1 9187 db-0.db.default.svc.gua.example.com.",
            "_metrics._udp.db.default.svc.gua.example.com. 5 IN SRV 0 1 9187 db-1.db.default.svc.gua.example.com.",
        ],
        id="srv-port-from-own-slice",
    ),
    Case(
        "_http._tcp.split.default.svc.gua.example.com.",
        "SRV",
        answer=[
            "_http._tcp.split.default.svc.gua.example.com. 5 IN SRV 0 1 8080 one.split.default.svc.gua.example.com.",
            "_http._tcp.split.default.svc.gua.example.com. 5 IN SRV 0 1 9090 two.split.default.svc.gua.example.com.",
        ],
        id="srv-port-per-slice",
    ),
    Case(
        "db.default.svc.gua.example.com.",
        "AAAA",
        answer=[
            "db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:2::10",
            "db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:2::11",
        ],
        id="headless-dedup",
    ),
    Case(
        "legacy.default.svc.gua.example.com.",
        "AAAA",
        answer=["legacy.default.svc.gua.example.com. 5 IN AAAA 2001:db8:3::7"],
        id="aaaa-from-podips",
    ),
    Case("legacy.default.svc.gua.example.com.", "A", authority=[SOA], id="private-ipv4-not-published"),
    Case("ula.default.svc.gua.example.com.", "AAAA", authority=[SOA], id="ula-only-nodata"),
    Case("ula.default.svc.gua.example.com.", "A", authority=[SOA], id="private-v4-nodata"),
    Case("ula-x.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="pod-without-gua"),
    Case(
        "drain.default.svc.gua.example.com.",
        "AAAA",
        answer=["drain.default.svc.gua.example.com. 5 IN AAAA 2001:db8:4::1"],
        id="serving-fallback",
    ),
    Case("empty.default.svc.gua.example.com.", "AAAA", authority=[SOA], id="no-endpoints-nodata"),
    Case("hidden.default.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="expose-false"),
    Case("orphan.default.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="slice-without-service"),
    Case("fq.default.svc.gua.example.com.", "AAAA", authority=[SOA], id="fqdn-slice-ignored"),
    Case(
        "odd.default.svc.gua.example.com.",
        "AAAA",
        answer=[f"odd.default.svc.gua.example.com. 5 IN AAAA 2001:db8:7::{n}" for n in range(1, 6)],
        id="unnamed-endpoints-add-addresses",
    ),
    Case(
        "same.odd.default.svc.gua.example.com.",
        "AAAA",
        answer=[
            "same.odd.default.svc.gua.example.com. 5 IN AAAA 2001:db8:7::3",
            "same.odd.default.svc.gua.example.com. 5 IN AAAA 2001:db8:7::4",
        ],
        id="colliding-endpoint-names-merge",
    ),
    Case("dotted.pod.odd.default.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="dotted-no-name"),
    Case(
        "node-agent.default.svc.gua.example.com.",
        "AAAA",
        answer=["node-agent.default.svc.gua.example.com. 5 IN AAAA 2001:db8:8::1"],
        id="host-network-service",
    ),
    Case("agent-x.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="host-network-no-pod"),
    Case(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "PTR",
        "NXDOMAIN",
        authority=[
            "8.b.d.0.1.0.0.2.ip6.arpa. 5 IN SOA ns.dns.8.b.d.0.1.0.0.2.ip6.arpa. "
            "hostmaster.8.b.d.0.1.0.0.2.ip6.arpa. 1700000000 60 30 3600 5"
        ],
        id="host-network-no-ptr",
    ),
    Case(
        "web-a.default.pod.gua.example.com.",
        "AAAA",
        answer=["web-a.default.pod.gua.example.com. 5 IN AAAA 2001:db8:1::a"],
        id="pod-name",
    ),
    Case(
        "web-a.default.pod.gua.example.com.",
        "A",
        answer=["web-a.default.pod.gua.example.com. 5 IN A 203.0.113.10"],
        id="pod-name-a",
    ),
    Case(
        "web-c.default.pod.gua.example.com.",
        "AAAA",
        answer=["web-c.default.pod.gua.example.com. 5 IN AAAA 2001:db8:1::c"],
        id="pod-not-ready-still-named",
    ),
    Case("web-d.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="pod-terminating"),
    Case("job-done.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="pod-succeeded"),
    Case("job-failed.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="pod-failed"),
    Case("pending.default.pod.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="pod-no-address"),
    Case(
        rev("2001:db8:1::a"),
        "PTR",
        answer=[f"{rev('2001:db8:1::a')} 5 IN PTR web-a.default.pod.gua.example.com."],
        id="ptr-v6",
    ),
    Case(
        "10.113.0.203.in-addr.arpa.",
        "PTR",
        answer=["10.113.0.203.in-addr.arpa. 5 IN PTR web-a.default.pod.gua.example.com."],
        id="ptr-v4",
    ),
    Case(
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.a.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "PTR",
        answer=[
            "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.a.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. 5 IN PTR "
            "old.default.pod.gua.example.com."
        ],
        id="ptr-oldest-pod",
    ),
    Case(
        "1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa.",
        "PTR",
        authority=[
            "8.b.d.0.1.0.0.2.ip6.arpa. 5 IN SOA ns.dns.8.b.d.0.1.0.0.2.ip6.arpa. "
            "hostmaster.8.b.d.0.1.0.0.2.ip6.arpa. 1700000000 60 30 3600 5"
        ],
        id="ent-reverse-nibble",
    ),
    Case(
        "www.gua.example.com.",
        "AAAA",
        answer=[
            "www.gua.example.com. 5 IN AAAA 2001:db8:1::a",
            "www.gua.example.com. 5 IN AAAA 2001:db8:1::b",
        ],
        id="annotation-hostname",
    ),
    Case(
        "shop.gua.example.com.",
        "A",
        answer=[
            "shop.gua.example.com. 5 IN A 203.0.113.10",
            "shop.gua.example.com. 5 IN A 203.0.113.11",
        ],
        id="annotation-second-hostname",
    ),
    Case(
        "api.gua.example.com.",
        "AAAA",
        answer=["api.gua.example.com. 5 IN AAAA 2001:db8:c::1"],
        id="annotation-conflict-oldest-wins",
    ),
    Case(
        "deep.name.gua.example.com.",
        "AAAA",
        answer=["deep.name.gua.example.com. 5 IN AAAA 2001:db8:c::1"],
        id="external-dns-annotation",
    ),
    Case("name.gua.example.com.", "AAAA", authority=[SOA], id="ent-annotation-ancestor"),
    Case("anything.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="no-wildcard"),
    Case("x.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="annotation-under-svc-ignored"),
    Case("gua.example.com.", "AAAA", authority=[SOA], id="annotation-apex-ignored"),
    Case(
        "docs.default.svc.gua.example.com.",
        "AAAA",
        answer=["docs.default.svc.gua.example.com. 5 IN CNAME docs.example.org."],
        id="externalname-cname",
    ),
    Case(
        "docs.default.svc.gua.example.com.",
        "CNAME",
        answer=["docs.default.svc.gua.example.com. 5 IN CNAME docs.example.org."],
        id="externalname-cname-type",
    ),
    Case(
        "slow.default.svc.gua.example.com.",
        "AAAA",
        answer=["slow.default.svc.gua.example.com. 60 IN AAAA 2001:db8:b::1"],
        id="ttl-annotation",
    ),
    Case(
        "capped.default.svc.gua.example.com.",
        "AAAA",
        answer=["capped.default.svc.gua.example.com. 300 IN AAAA 2001:db8:b::2"],
        id="ttl-annotation-clamped",
    ),
    Case("svc.gua.example.com.", "AAAA", authority=[SOA], id="ent-svc"),
    Case("default.svc.gua.example.com.", "A", authority=[SOA], id="ent-namespace"),
    Case("pod.gua.example.com.", "AAAA", authority=[SOA], id="ent-pod"),
    Case("default.pod.gua.example.com.", "NS", authority=[SOA], id="ent-pod-namespace"),
    Case("web.default.svc.gua.example.com.", "TXT", authority=[SOA], id="unknown-type-nodata"),
    Case("web.default.svc.gua.example.com.", "TYPE1000", authority=[SOA], id="type1000-nodata"),
    Case("gua.example.com.", "SOA", answer=[SOA], id="apex-soa"),
    Case("gua.example.com.", "NS", answer=["gua.example.com. 5 IN NS ns.dns.gua.example.com."], id="apex-ns"),
    Case("nothing.default.svc.gua.example.com.", "AAAA", "NXDOMAIN", authority=[SOA], id="nxdomain"),
    Case("example.com.", "SOA", "REFUSED", id="parent-refused"),
    Case(".", "NS", "REFUSED", id="root-ns-probe"),
    Case("web.default.svc.cluster.local.", "AAAA", "REFUSED", id="out-of-zone"),
]


@pytest.fixture(scope="module")
def zone() -> Zone:
    return Zone(cluster(*OBJECTS))


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_names(zone: Zone, case: Case) -> None:
    response = zone.ask(case.qname, case.qtype)
    assert dns.rcode.to_text(response.rcode()) == case.rcode
    assert rrsets_text(response.answer) == set(case.answer)
    assert rrsets_text(response.authority) == set(case.authority)
    if case.additional is not None:
        assert rrsets_text(response.additional) == set(case.additional)
    assert response.question[0].name.to_text() == case.qname  # echoed as sent, case included
    authoritative = case.rcode != "REFUSED"
    assert bool(response.flags & dns.flags.AA) == authoritative
    assert not response.flags & dns.flags.RA


def test_publish_prefix_replaces_default_policy() -> None:
    import ipaddress

    config = make_config(publish_prefixes=(ipaddress.ip_network("fd00::/8"), ipaddress.ip_network("10.0.0.0/8")))
    zone = Zone(cluster(*OBJECTS), config)
    assert rrsets_text(zone.ask("ula.default.svc.gua.example.com.", "AAAA").answer) == {
        "ula.default.svc.gua.example.com. 5 IN AAAA fd00::5"
    }
    assert rrsets_text(zone.ask("legacy.default.svc.gua.example.com.", "A").answer) == {
        "legacy.default.svc.gua.example.com. 5 IN A 10.244.1.7"
    }
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").answer == []


def test_default_policy_keeps_documentation_and_global_ranges() -> None:
    from dnsd.names import AddressPolicy, pack_address

    policy = AddressPolicy()
    published = ["2001:db8::1", "2a00:1450::1", "3fff::1", "203.0.113.1", "8.8.8.8", "172.32.0.1"]
    hidden = [
        "fd00::1",
        "fc00::1",
        "fe80::1",
        "::1",
        "ff02::1",
        "4000::1",
        "::ffff:8.8.8.8",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "100.64.0.1",
        "100.127.255.255",
        "127.0.0.1",
        "169.254.1.1",
    ]
    assert all(policy.publishable(pack_address(a)) for a in published)  # type: ignore[arg-type]
    assert not any(policy.publishable(pack_address(a)) for a in hidden)  # type: ignore[arg-type]


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(
        st.ip_addresses().map(str),
        st.text(alphabet="0123456789abcdefABCDEF:.% \t\x00é", max_size=45),
        st.ip_addresses()
        .map(str)
        .flatmap(
            lambda text: st.tuples(st.integers(0, len(text)), st.sampled_from(":.%0f \t")).map(
                lambda cut: text[: cut[0]] + cut[1] + text[cut[0] :]
            )
        ),
    )
)
def test_pack_address_reads_what_ipaddress_reads(text: str) -> None:
    """pack_address's inet_pton shortcut changes nothing: the same bytes, the same refusals."""
    import ipaddress

    from dnsd.names import pack_address

    try:
        expected: bytes | None = ipaddress.ip_address(text.strip()).packed
    except ValueError:
        expected = None
    assert pack_address(text) == expected


def test_pack_address_keeps_ipaddress_readings_inet_pton_refuses() -> None:
    from dnsd.names import pack_address

    assert pack_address("fe80::1%eth0") == bytes.fromhex("fe80" + "00" * 13 + "01")
    assert pack_address(" 2001:db8::1\n") == bytes.fromhex("20010db8" + "00" * 11 + "01")
    assert pack_address("01.2.3.4") is None
    assert pack_address(None) is None  # type: ignore[arg-type]


def test_pod_records_false_hides_pod_names_and_ptr() -> None:
    zone = Zone(cluster(*OBJECTS), make_config(pod_records=False))
    assert zone.ask("web-a.default.pod.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    ptr = rev("2001:db8:1::a")
    assert zone.ask(ptr, "PTR").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").answer


def test_expose_default_false_publishes_only_annotated() -> None:
    objects = [
        *OBJECTS,
        service("public", annotations={"dnsd.io/expose": "true"}),
        endpoint_slice("public-1", "public", endpoint("2001:db8:d::1")),
    ]
    zone = Zone(cluster(*objects), make_config(expose_default=False))
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert rrsets_text(zone.ask("public.default.svc.gua.example.com.", "AAAA").answer) == {
        "public.default.svc.gua.example.com. 5 IN AAAA 2001:db8:d::1"
    }


def test_namespace_filter() -> None:
    zone = Zone(cluster(*OBJECTS), make_config(namespaces=frozenset({"team"})))
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("alias-old.team.svc.gua.example.com.", "AAAA").answer


def test_several_forward_zones_and_ptr_to_first() -> None:
    config = make_config(zones=("gua.example.com.", "k8s.example.net.", "8.b.d.0.1.0.0.2.ip6.arpa."))
    zone = Zone(cluster(*OBJECTS), config)
    for origin in ("gua.example.com.", "k8s.example.net."):
        assert zone.ask(f"web.default.svc.{origin}", "AAAA").answer
        assert zone.ask(f"web-a.default.pod.{origin}", "AAAA").answer
    ptr = rev("2001:db8:1::a")
    assert rrsets_text(zone.ask(ptr, "PTR").answer) == {f"{ptr} 5 IN PTR web-a.default.pod.gua.example.com."}
    # annotation names live only in the zone they name
    assert zone.ask("www.k8s.example.net.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    # an address outside every reverse zone gets no PTR
    assert zone.ask("10.113.0.203.in-addr.arpa.", "PTR").rcode() == dns.rcode.REFUSED


def test_long_names_are_skipped() -> None:
    from dnsd.rrsets import skipped

    long_ns, long_svc = "n" * 63, "s" * 63
    objects = [
        service(long_svc, long_ns),
        endpoint_slice("l-1", long_svc, endpoint("2001:db8:e::1", pod="p" * 63, hostname="h" * 63), namespace=long_ns),
    ]
    config = make_config(zones=("a" * 60 + ".gua.example.com.",))
    before = skipped["name_too_long"]
    zone = Zone(cluster(*objects), config)
    service_name = f"{long_svc}.{long_ns}.svc.{'a' * 60}.gua.example.com."
    # 212 octets: served; the endpoint name would be 276 octets: counted and skipped, and
    # without an endpoint name there is no SRV target either
    assert rrsets_text(zone.ask(service_name, "AAAA").answer) == {f"{service_name} 5 IN AAAA 2001:db8:e::1"}
    assert skipped["name_too_long"] > before
    assert zone.ask(f"_http._tcp.{service_name}", "SRV").rcode() == dns.rcode.NXDOMAIN
