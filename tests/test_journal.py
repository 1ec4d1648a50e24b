"""What zone transfers read from the index: a consistent snapshot (AXFR) and the journal of
per-serial differences (IXFR), checked against each other over a sequence of cluster changes.

Out of scope: the transfer protocol itself (test_transfer.py).
"""

from __future__ import annotations

import random

import pytest
from conftest import ZONE, make_config
from k8s import endpoint, endpoint_slice, pod, service

from dnsd.names import AddressPolicy
from dnsd.records import Delete, Resync, Synced, Upsert, endpoint_slice_from, pod_from, service_from
from dnsd.rrsets import SOA
from dnsd.store import Store
from dnsd.zone import RR, Index

POLICY = AddressPolicy()
APEX = b"\x03gua\x07example\x03com\x00"
REVERSE = b"\x018\x01b\x01d\x010\x011\x010\x010\x012\x03ip6\x04arpa\x00"


class JournaledZone:
    def __init__(self, journal: int) -> None:
        self.store = Store()
        self.index = Index(make_config(), now=1_700_000_000, journal=journal)
        self.store.apply(Synced())
        self.index.synced = True
        self.now = 1_700_000_000.0

    def apply(self, event: object) -> None:
        self.index.update(self.store.apply(event), self.store)  # type: ignore[arg-type]

    def advance(self) -> bool:
        self.now += 1
        return self.index.advance_serial(self.now)

    def snapshot(self, apex: bytes = APEX) -> tuple[int, list[RR]]:
        serial, records = self.index.zone_snapshot(apex, self.now)
        return serial, list(records)


def _random_event(rng: random.Random) -> object:
    n = rng.randrange(6)
    address = f"2001:db8:{rng.randrange(3):x}::{rng.randrange(1, 5):x}"
    action = rng.randrange(5)
    if action == 0:
        return Upsert(service_from(service(f"svc-{n % 3}")))
    if action == 1:
        return Delete("Service", "default", f"svc-{n % 3}")
    if action == 2:
        endpoints = [endpoint(address, pod=f"pod-{n}", ready=rng.random() < 0.8)]
        return Upsert(endpoint_slice_from(endpoint_slice(f"svc-{n % 3}-x", f"svc-{n % 3}", *endpoints), POLICY))
    if action == 3:
        return Upsert(pod_from(pod(f"pod-{n}", address, created=f"2026-01-01T00:00:0{n}Z"), POLICY))
    return Delete("Pod", "default", f"pod-{n}")


def _without_soa(records: list[RR]) -> set[RR]:
    return {rr for rr in records if rr[1] != SOA}


@pytest.mark.parametrize("seed", range(8))
def test_journal_steps_turn_each_snapshot_into_the_next(seed: int) -> None:
    rng = random.Random(seed)
    zone = JournaledZone(journal=100)
    history = {APEX: [zone.snapshot(APEX)], REVERSE: [zone.snapshot(REVERSE)]}
    for _ in range(40):
        for _ in range(rng.randrange(1, 4)):
            zone.apply(_random_event(rng))
        if not zone.advance():
            continue
        for apex, snapshots in history.items():
            old_serial, old = snapshots[-1]
            serial, new = zone.snapshot(apex)
            assert new[0] == zone.index.soa_record(apex, serial)
            assert [rr for rr in new if rr[1] == SOA] == [new[0]]
            steps = zone.index.changes_since(apex, old_serial, zone.now)
            assert steps is not None and len(steps) == 1
            (step_old, step_new, removed, added) = steps[0]
            assert (step_old, step_new) == (old_serial, serial)
            assert set(removed) <= _without_soa(old)
            assert not set(added) & _without_soa(old)
            assert (_without_soa(old) - set(removed)) | set(added) == _without_soa(new)
            snapshots.append((serial, new))
        # The snapshots hold exactly what is served, names rendered at query time included.
        assert zone.index.record_count == sum(len(zone.snapshot(apex)[1]) for apex in zone.index.zones)
    # From any remembered serial, the chained steps lead to the current zone.
    for apex, snapshots in history.items():
        current = _without_soa(snapshots[-1][1])
        for serial, records in snapshots[:-1]:
            steps = zone.index.changes_since(apex, serial, zone.now)
            assert steps is not None
            state = _without_soa(records)
            for _old, _new, removed, added in steps:
                state = (state - set(removed)) | set(added)
            assert state == current
        assert zone.index.changes_since(apex, snapshots[-1][0], zone.now) == []


def test_journal_is_bounded_and_unknown_serials_get_none() -> None:
    zone = JournaledZone(journal=3)
    first = zone.index.serial
    for n in range(6):
        zone.apply(Upsert(service_from(service(f"svc-{n}"))))
        piece = endpoint_slice(f"svc-{n}-x", f"svc-{n}", endpoint("2001:db8::1"))
        zone.apply(Upsert(endpoint_slice_from(piece, POLICY)))
        assert zone.advance()
    assert zone.index.changes_since(APEX, first, zone.now) is None
    assert zone.index.changes_since(APEX, 12345, zone.now) is None
    assert len(zone.index.changes_since(APEX, zone.index.serial - 3, zone.now) or []) == 3


def test_snapshot_advances_a_pending_serial_and_stays_consistent() -> None:
    zone = JournaledZone(journal=10)
    zone.apply(Resync("Service", (service_from(service("web")),)))
    piece = endpoint_slice_from(endpoint_slice("web-x", "web", endpoint("2001:db8::1")), POLICY)
    zone.apply(Resync("EndpointSlice", (piece,)))
    before = zone.index.serial
    serial, records = zone.index.zone_snapshot(APEX, zone.now + 5)
    assert serial > before and not zone.index.dirty
    zone.apply(Delete("Service", "default", "web"))  # after the snapshot was taken
    names = {rr[0] for rr in records}
    assert b"\x03web\x07default\x03svc" + APEX in names


def test_no_journal_by_default_and_serial_callback() -> None:
    index = Index(make_config((ZONE,)), now=1_700_000_000)
    seen: list[int] = []
    index.on_serial = seen.append
    store = Store()
    index.update(store.apply(Upsert(service_from(service("web")))), store)
    index.update(
        store.apply(Upsert(endpoint_slice_from(endpoint_slice("web-x", "web", endpoint("2001:db8::1")), POLICY))),
        store,
    )
    assert index.advance_serial(1_700_000_100)
    assert seen == [index.serial] and index.changes_since(APEX, 1_700_000_000, 1_700_000_100) is None


def test_the_step_that_holds_the_initial_sync_is_not_journaled() -> None:
    """Data loaded before the sync would make one journal step of the whole zone; no secondary
    can hold a serial from before the sync, so that step is left out (such a client gets AXFR)."""
    index = Index(make_config(), now=1_700_000_000, journal=10)
    store = Store()
    for record in (
        service_from(service("web")),
        endpoint_slice_from(endpoint_slice("web-x", "web", endpoint("2001:db8::1")), POLICY),
    ):
        index.update(store.apply(Upsert(record)), store)
    unsynced = index.serial
    store.apply(Synced())
    index.synced = True
    assert index.advance_serial(1_700_000_010)
    synced = index.serial
    assert index.changes_since(APEX, unsynced, 1_700_000_010) is None
    index.update(store.apply(Delete("Service", "default", "web")), store)
    assert index.advance_serial(1_700_000_020)
    steps = index.changes_since(APEX, synced, 1_700_000_020)
    assert steps is not None and len(steps) == 1
    assert {rr[0] for rr in steps[0][2]} == {b"\x03web\x07default\x03svc" + APEX}
    assert steps[0][3] == ()
