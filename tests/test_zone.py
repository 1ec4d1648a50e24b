"""Incremental updates of the store and zone index: events in, exactly the touched names change.

In scope: Upsert/Delete/Resync through `Store.apply` and `Index.update`, name ownership
hand-over (PTR, annotation hostnames), empty non-terminals appearing and disappearing, a
failing update leaving the index as it was. Out of scope: wire format (test_protocol.py).
"""

from __future__ import annotations

import dns.name
import dns.rcode
import pytest
from conftest import Zone, make_config, rrsets_text
from hypothesis import given, settings
from hypothesis import strategies as st
from k8s import cluster, endpoint, endpoint_slice, pod, service

from dnsd.names import AddressPolicy
from dnsd.records import Delete, Resync, Upsert, endpoint_slice_from, pod_from, record_from, service_from

POLICY = AddressPolicy()


def _all(zone: Zone):  # type: ignore[no-untyped-def]
    from dnsd.store import Changes

    return Changes(services=set(zone.store.services), pods=set(zone.store.pods))


def apply(zone: Zone, event: object) -> None:
    zone.index.update(zone.store.apply(event), zone.store)  # type: ignore[arg-type]


BASE = [
    service("web", created="2026-01-01T00:00:00Z", annotations={"dnsd.io/hostname": "www.gua.example.com"}),
    endpoint_slice("web-1", "web", endpoint("2001:db8:1::a", pod="web-a")),
    pod("web-a", "2001:db8:1::a", created="2026-01-01T00:00:00Z"),
    service("solo", "lonely"),
    endpoint_slice("solo-1", "solo", endpoint("2001:db8:2::1"), namespace="lonely"),
]


@pytest.fixture
def zone() -> Zone:
    return Zone(cluster(*BASE))


def test_deleting_service_removes_names_while_slices_remain(zone: Zone) -> None:
    apply(zone, Delete("Service", "default", "web"))
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("web-a.web.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("www.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert ("default", "web-1") in zone.store.slices
    # the Service comes back: its slice is picked up again
    apply(zone, Upsert(service_from(service("web"))))
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").answer


def test_empty_non_terminals_follow_their_last_descendant(zone: Zone) -> None:
    assert zone.ask("lonely.svc.gua.example.com.", "A").rcode() == dns.rcode.NOERROR
    apply(zone, Delete("Service", "lonely", "solo"))
    assert zone.ask("lonely.svc.gua.example.com.", "A").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("svc.gua.example.com.", "A").rcode() == dns.rcode.NOERROR  # web still there
    apply(zone, Delete("Service", "default", "web"))
    assert zone.ask("svc.gua.example.com.", "A").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("pod.gua.example.com.", "A").rcode() == dns.rcode.NOERROR  # web-a pod
    apply(zone, Delete("Pod", "default", "web-a"))
    assert zone.ask("pod.gua.example.com.", "A").rcode() == dns.rcode.NXDOMAIN
    # nothing is left but the apex and the reverse zones' apexes
    assert {dns.name.from_wire(key, 0)[0].to_text() for key in zone.index.nodes} == {
        "gua.example.com.",
        "8.b.d.0.1.0.0.2.ip6.arpa.",
        "113.0.203.in-addr.arpa.",
    }


def test_pod_event_touches_only_its_names(zone: Zone) -> None:
    untouched = zone.index.nodes[dns.name.from_text("solo.lonely.svc.gua.example.com.").to_wire()]
    generation = zone.index.generation
    apply(zone, Upsert(pod_from(pod("web-a", "2001:db8:1::a", "2001:db8:1::aa"), POLICY)))
    assert rrsets_text(zone.ask("web.default.svc.gua.example.com.", "AAAA").answer) == {
        "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a",
        "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::aa",
    }
    assert zone.index.nodes[dns.name.from_text("solo.lonely.svc.gua.example.com.").to_wire()] is untouched
    # service name, www alias, endpoint name, pod name, a new PTR and its nibble ancestors
    assert 0 < zone.index.generation - generation < 40


def test_repeating_an_event_changes_nothing(zone: Zone) -> None:
    zone.index.advance_serial(1_700_000_000)
    generation = zone.index.generation
    apply(zone, Upsert(pod_from(pod("web-a", "2001:db8:1::a", created="2026-01-01T00:00:00Z"), POLICY)))
    apply(zone, Resync("Service", tuple(service_from(o) for o in BASE if o["kind"] == "Service")))
    assert zone.index.generation == generation
    assert not zone.index.dirty


def test_ptr_moves_to_next_oldest_pod(zone: Zone) -> None:
    ptr = "a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa."
    apply(zone, Upsert(pod_from(pod("web-b", "2001:db8:1::a", created="2026-02-01T00:00:00Z"), POLICY)))
    assert rrsets_text(zone.ask(ptr, "PTR").answer) == {f"{ptr} 5 IN PTR web-a.default.pod.gua.example.com."}
    apply(zone, Delete("Pod", "default", "web-a"))
    assert rrsets_text(zone.ask(ptr, "PTR").answer) == {f"{ptr} 5 IN PTR web-b.default.pod.gua.example.com."}
    apply(zone, Delete("Pod", "default", "web-b"))
    assert zone.ask(ptr, "PTR").rcode() == dns.rcode.NXDOMAIN


def test_annotation_name_moves_to_next_oldest_service(zone: Zone) -> None:
    newer = service("web2", created="2026-05-01T00:00:00Z", annotations={"dnsd.io/hostname": "www.gua.example.com"})
    apply(zone, Upsert(service_from(newer)))
    apply(zone, Upsert(endpoint_slice_from(endpoint_slice("web2-1", "web2", endpoint("2001:db8:9::9")), POLICY)))
    assert rrsets_text(zone.ask("www.gua.example.com.", "AAAA").answer) == {
        "www.gua.example.com. 5 IN AAAA 2001:db8:1::a"
    }
    assert zone.index.conflicts > 0
    apply(zone, Delete("Service", "default", "web"))
    assert rrsets_text(zone.ask("www.gua.example.com.", "AAAA").answer) == {
        "www.gua.example.com. 5 IN AAAA 2001:db8:9::9"
    }


def test_failed_update_keeps_previous_answers(zone: Zone, monkeypatch: pytest.MonkeyPatch) -> None:
    import dnsd.zone

    before = dict(zone.index.nodes)

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("render bug")

    monkeypatch.setattr(dnsd.zone, "render", broken)
    with pytest.raises(RuntimeError):
        apply(zone, Upsert(pod_from(pod("web-a", "2001:db8:1::b"), POLICY)))
    assert zone.index.nodes == before
    monkeypatch.undo()
    assert rrsets_text(zone.ask("web.default.svc.gua.example.com.", "AAAA").answer) == {
        "web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a"
    }
    # the same event again, once rendering works, is applied in full
    zone.index.update(
        zone.store.apply(Upsert(pod_from(pod("web-a", "2001:db8:1::b"), POLICY))) or _all(zone), zone.store
    )
    assert rrsets_text(zone.ask("web-a.default.pod.gua.example.com.", "AAAA").answer) == {
        "web-a.default.pod.gua.example.com. 5 IN AAAA 2001:db8:1::b"
    }


def test_slice_moving_between_services(zone: Zone) -> None:
    moved = endpoint_slice("web-1", "solo", endpoint("2001:db8:1::a", pod="web-a"))
    apply(zone, Upsert(endpoint_slice_from(moved, POLICY)))
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").answer == []
    apply(zone, Upsert(service_from(service("solo"))))
    assert rrsets_text(zone.ask("solo.default.svc.gua.example.com.", "AAAA").answer) == {
        "solo.default.svc.gua.example.com. 5 IN AAAA 2001:db8:1::a"
    }


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"kind": "ConfigMap", "metadata": {"name": "x"}}, None),
        ({"kind": "EndpointSlice", "metadata": {"name": "x"}, "addressType": "FQDN"}, None),
    ],
)
def test_kinds_not_served(obj: dict, expected: object) -> None:
    assert record_from(obj, POLICY) is expected


def test_sparse_objects_are_read_with_defaults() -> None:
    bare_pod = pod_from({"kind": "Pod", "metadata": {"name": "p"}}, POLICY)
    assert bare_pod.namespace == "default" and bare_pod.addresses == () and bare_pod.active
    legacy = pod_from({"kind": "Pod", "metadata": {"name": "p"}, "status": {"podIP": "2001:db8::1"}}, POLICY)
    assert legacy.addresses == (bytes.fromhex("20010db8000000000000000000000001"),)
    piece = endpoint_slice_from(
        {
            "kind": "EndpointSlice",
            "metadata": {"name": "s"},
            "endpoints": [{"addresses": ["not-an-ip", "2001:db8::1"]}, None],
        },
        POLICY,
    )
    assert piece is not None and piece.service is None
    assert piece.endpoints[0].ready and piece.endpoints[0].serving


def test_object_without_name_is_an_error() -> None:
    from dnsd.records import RecordError

    with pytest.raises(RecordError):
        record_from({"kind": "Pod", "metadata": {}}, POLICY)


def test_pod_names_are_rendered_at_query_time_and_follow_their_pod(zone: Zone) -> None:
    """<pod>.<ns>.pod.Z is not kept as a node but answered from the pod; its namespace and the
    pod. label are empty non-terminals exactly while a named pod is in them."""
    name = "web-a.default.pod.gua.example.com."
    assert b"\x05web-a\x07default\x03pod\x03gua\x07example\x03com\x00" not in zone.index.nodes
    assert rrsets_text(zone.ask(name, "AAAA").answer) == {f"{name} 5 IN AAAA 2001:db8:1::a"}
    generation = zone.index.generation
    apply(zone, Upsert(pod_from(pod("web-a", "2001:db8:1::b", created="2026-01-01T00:00:00Z"), POLICY)))
    assert zone.index.generation > generation
    assert rrsets_text(zone.ask(name, "AAAA").answer) == {f"{name} 5 IN AAAA 2001:db8:1::b"}
    for ent in ("default.pod.gua.example.com.", "pod.gua.example.com."):
        reply = zone.ask(ent, "A")
        assert (reply.rcode(), reply.answer) == (dns.rcode.NOERROR, [])
    generation = zone.index.generation
    apply(zone, Upsert(pod_from(pod("web-a", "2001:db8:1::b", created="2026-01-01T00:00:00Z"), POLICY)))
    assert zone.index.generation == generation  # the same pod again: nothing a client can see
    apply(zone, Delete("Pod", "default", "web-a"))
    for gone in (name, "default.pod.gua.example.com.", "pod.gua.example.com."):
        assert zone.ask(gone, "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.ask("web.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NOERROR


def test_pod_names_outside_canonical_case_are_still_answered() -> None:
    zone = Zone(cluster(pod("Web-B", "2001:db8:1::c", namespace="Team")))
    for asked in ("web-b.team.pod.gua.example.com.", "WEB-B.Team.pod.gua.example.com."):
        answer = rrsets_text(zone.ask(asked, "AAAA").answer)
        assert answer == {"web-b.team.pod.gua.example.com. 5 IN AAAA 2001:db8:1::c"}
    assert zone.ask("team.pod.gua.example.com.", "AAAA").rcode() == dns.rcode.NOERROR


def test_pod_name_lookup_rejects_look_alikes(zone: Zone) -> None:
    for asked in (
        "web-a.default.pod.example.com.",
        "x.web-a.default.pod.gua.example.com.",
        "web-a.default.svc.gua.example.com.",
        "web-a.pod.gua.example.com.",
        "web-a.other.pod.gua.example.com.",
        "web-a.default.podx.gua.example.com.",
    ):
        assert zone.ask(asked, "AAAA").answer == [], asked


def test_endpoint_names_are_rendered_at_query_time_and_follow_their_service() -> None:
    config = make_config(("gua.example.com.", "other.example.net."))
    zone = Zone(
        cluster(
            service("db"),
            endpoint_slice(
                "db-1", "db", endpoint("2001:db8:5::1", hostname="db-0"), endpoint("fd00::1", hostname="db-1")
            ),
        ),
        config,
    )
    assert not any(name.startswith(b"\x04db-0") for name in zone.index.nodes)
    for apex in ("gua.example.com.", "other.example.net."):
        assert rrsets_text(zone.ask(f"db-0.db.default.svc.{apex}", "AAAA").answer) == {
            f"db-0.db.default.svc.{apex} 5 IN AAAA 2001:db8:5::1"
        }
        no_address = zone.ask(f"DB-1.db.default.svc.{apex}", "AAAA")  # a ULA only: the name exists, empty
        assert (no_address.rcode(), no_address.answer) == (dns.rcode.NOERROR, [])
        assert zone.ask(f"db-2.db.default.svc.{apex}", "AAAA").rcode() == dns.rcode.NXDOMAIN
    apply(
        zone,
        Upsert(endpoint_slice_from(endpoint_slice("db-1", "db", endpoint("2001:db8:5::2", hostname="db-0")), POLICY)),
    )
    assert rrsets_text(zone.ask("db-0.db.default.svc.gua.example.com.", "AAAA").answer) == {
        "db-0.db.default.svc.gua.example.com. 5 IN AAAA 2001:db8:5::2"
    }
    assert zone.ask("db-1.db.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.index.record_count == _served_records(zone)
    apply(zone, Delete("Service", "default", "db"))
    assert zone.ask("db-0.db.default.svc.gua.example.com.", "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert zone.index.record_count == _served_records(zone) == 4  # SOA and NS of each zone


def _served_records(zone: Zone) -> int:
    return sum(len(list(zone.index.zone_snapshot(apex, 0)[1])) for apex in zone.index.zones)


def test_endpoint_names_of_a_service_outside_canonical_case_are_still_answered() -> None:
    zone = Zone(cluster(service("Web"), endpoint_slice("web-1", "Web", endpoint("2001:db8:6::1", hostname="a"))))
    assert rrsets_text(zone.ask("a.web.default.svc.gua.example.com.", "AAAA").answer) == {
        "a.web.default.svc.gua.example.com. 5 IN AAAA 2001:db8:6::1"
    }


@pytest.mark.parametrize("pods_first", [True, False])
def test_pod_and_its_endpoint_share_one_address_tuple(pods_first: bool) -> None:
    """Memory: the store keeps one tuple for a pod's addresses and its endpoint's, whichever
    record arrived first; values and answers are unchanged."""
    from dnsd.store import Store

    store = Store()
    the_pod = pod_from(pod("web-a", "2001:db8:1::a"), POLICY)
    piece = endpoint_slice_from(endpoint_slice("web-1", "web", endpoint("2001:db8:1::a", pod="web-a")), POLICY)
    for record in (the_pod, piece) if pods_first else (piece, the_pod):
        store.apply(Upsert(record))
    stored_pod, stored_piece = store.pods[("default", "web-a")], store.slices[("default", "web-1")]
    assert (stored_pod, stored_piece) == (the_pod, piece)
    assert stored_pod.addresses is stored_piece.endpoints[0].addresses


@given(
    addresses=st.lists(
        st.one_of(st.binary(min_size=16, max_size=16), st.binary(min_size=4, max_size=4)), max_size=1200
    ),
    ttl=st.integers(0, 2**31 - 1),
    max_answers=st.one_of(st.none(), st.integers(1, 20)),
)
@settings(max_examples=60, deadline=None)
def test_address_node_renders_as_render_does(addresses: list[bytes], ttl: int, max_answers: int | None) -> None:
    """Pod and endpoint names take a shortcut past the RRset objects; it must not show."""
    from dnsd.rrsets import _address_rrsets
    from dnsd.zone import ZoneInfo, address_node, render

    name = b"\x05web-a\x07default\x03pod\x03gua\x07example\x03com\x00"
    zone = ZoneInfo(dns.name.from_text("gua.example.com."))
    expected = render(name, _address_rrsets(addresses, ttl), zone, max_answers)
    assert address_node(name, addresses, ttl, zone, max_answers, ("pod", "default", "web-a")).same_answers(expected)
