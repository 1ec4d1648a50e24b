"""DNS protocol behaviour of the engine (RFC 1034/1035, 2308, 6891, 7766, 8482, 8906).

In scope: header bits, EDNS, truncation and size limits, rotation, error rcodes, hostile
input, the fast path agreeing with the dnspython path. Out of scope: which names exist
(test_names.py) and sockets (test_transports.py).
"""

from __future__ import annotations

import random
import struct

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest
from conftest import Zone, make_config, rrsets_text
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import cluster, endpoint, endpoint_slice, pod, service

WEB = "web.default.svc.gua.example.com."


def big_service(name: str, count: int, *, prefix: str = "2001:db8:99") -> list[dict]:
    endpoints = [endpoint(f"{prefix}::{i:x}", pod=f"{name}-{i}") for i in range(1, count + 1)]
    pods = [pod(f"{name}-{i}", f"{prefix}::{i:x}") for i in range(1, count + 1)]
    return [service(name), endpoint_slice(f"{name}-1", name, *endpoints), *pods]


OBJECTS = [
    service("web"),
    endpoint_slice(
        "web-1",
        "web",
        endpoint("2001:db8:1::a", pod="web-a"),
        endpoint("2001:db8:1::b", pod="web-b"),
        endpoint("2001:db8:1::c", pod="web-c"),
    ),
    pod("web-a", "2001:db8:1::a", "203.0.113.10"),
    pod("web-b", "2001:db8:1::b"),
    pod("web-c", "2001:db8:1::c"),
    *big_service("mid", 30, prefix="2001:db8:30"),  # 30 AAAA: > 512 bytes, < 1232
    *big_service("large", 60, prefix="2001:db8:60"),  # 60 AAAA: > 1232 bytes
    *big_service("huge", 2500, prefix="2001:db8:2500"),  # more than fits in 64 KiB
]


@pytest.fixture(scope="module")
def zone() -> Zone:
    return Zone(cluster(*OBJECTS))


def test_header_bits_copied(zone: Zone) -> None:
    for flags in (0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD):
        response = zone.ask(WEB, "AAAA", flags=flags)
        assert response.flags & (dns.flags.RD | dns.flags.CD) == flags
        assert response.flags & dns.flags.AA
        assert not response.flags & (dns.flags.RA | dns.flags.AD | dns.flags.TC)


def test_question_echoed_byte_for_byte(zone: Zone) -> None:
    query = dns.message.make_query("wEb.DeFaUlT.svc.GUA.example.COM.", "AAAA", use_edns=False)
    wire = query.to_wire()
    reply = zone.raw(wire)
    assert reply is not None
    question_end = 12 + len(dns.name.from_text("wEb.DeFaUlT.svc.GUA.example.COM.").to_wire()) + 4
    assert reply[12:question_end] == wire[12:question_end]
    assert reply[:2] == wire[:2]


def test_negative_ttl_is_min_of_soa_ttl_and_minimum() -> None:
    from dnsd.config import SoaTimers

    for ttl, minimum, expected in ((30, 5, 5), (5, 60, 5), (20, 10, 10)):
        zone = Zone(cluster(*OBJECTS[:2]), make_config(ttl=ttl, soa_timers=SoaTimers(minimum=minimum)))
        response = zone.ask("missing.gua.example.com.", "AAAA")
        assert response.rcode() == dns.rcode.NXDOMAIN
        assert response.authority[0].ttl == expected
        assert zone.ask("gua.example.com.", "SOA").answer[0].ttl == ttl


def test_edns_only_when_asked(zone: Zone) -> None:
    assert zone.ask(WEB, "AAAA", use_edns=False).edns == -1
    response = zone.ask(WEB, "AAAA", use_edns=0, payload=4096)
    assert response.edns == 0
    assert response.payload == 1232
    assert not response.ednsflags & dns.flags.DO
    assert zone.ask(WEB, "AAAA", want_dnssec=True).ednsflags & dns.flags.DO


def test_unknown_edns_options_and_flags_not_echoed(zone: Zone) -> None:
    query = dns.message.make_query(
        WEB,
        "AAAA",
        use_edns=0,
        ednsflags=0x4080 | dns.flags.DO,
        options=[dns.edns.GenericOption(100, b"abc"), dns.edns.GenericOption(10, b"c" * 8)],
    )
    response = dns.message.from_wire(zone.raw(query.to_wire()))  # type: ignore[arg-type]
    assert response.rcode() == dns.rcode.NOERROR
    assert response.options == ()
    assert response.ednsflags == dns.flags.DO
    assert response.answer


def test_badvers(zone: Zone) -> None:
    query = dns.message.make_query(WEB, "AAAA", use_edns=1)
    response = dns.message.from_wire(zone.raw(query.to_wire()))  # type: ignore[arg-type]
    assert response.rcode() == dns.rcode.BADVERS
    assert response.edns == 0
    assert not response.answer
    assert not response.flags & dns.flags.AA
    assert response.question[0].name == dns.name.from_text(WEB)


def test_udp_without_edns_truncates_at_512(zone: Zone) -> None:
    response = zone.ask("mid.default.svc.gua.example.com.", "AAAA", use_edns=False)
    assert response.flags & dns.flags.TC
    assert response.answer == []
    assert len(zone.raw(dns.message.make_query("mid.default.svc.gua.example.com.", "AAAA").to_wire()) or b"") <= 1232


def test_edns_payload_limits(zone: Zone) -> None:
    mid = "mid.default.svc.gua.example.com."
    # 30 AAAA fit in 1232 but not in 512: the client's payload decides, never below 512
    assert len(zone.ask(mid, "AAAA", payload=1232).answer[0]) == 30
    assert zone.ask(mid, "AAAA", payload=512).flags & dns.flags.TC
    assert zone.ask(mid, "AAAA", payload=100).flags & dns.flags.TC
    # our cap is 1232 even when the client offers more
    large = zone.ask("large.default.svc.gua.example.com.", "AAAA", payload=4096)
    assert large.flags & dns.flags.TC and not large.answer
    assert len(zone.ask("large.default.svc.gua.example.com.", "AAAA", tcp=True).answer[0]) == 60


def test_additional_dropped_before_truncating() -> None:
    objects = [
        service("srv"),
        endpoint_slice(
            "srv-1", "srv", *[endpoint(f"2001:db8:5::{i}", f"203.0.113.{i}", hostname=f"host-{i}") for i in range(1, 6)]
        ),
    ]
    zone = Zone(cluster(*objects))
    owner = "_http._tcp.srv.default.svc.gua.example.com."
    full = zone.ask(owner, "SRV", use_edns=0, payload=1232)
    assert len(full.answer[0]) == 5 and len(full.additional) == 10  # AAAA and A per target
    small = zone.ask(owner, "SRV", use_edns=False)
    assert not small.flags & dns.flags.TC
    assert len(small.answer[0]) == 5
    assert small.additional == []


def test_tcp_caps_answer_to_64k(zone: Zone) -> None:
    huge = "huge.default.svc.gua.example.com."
    reply = zone.raw(dns.message.make_query(huge, "AAAA").to_wire(), tcp=True)
    assert reply is not None and len(reply) <= 65535
    response = dns.message.from_wire(reply)
    assert not response.flags & dns.flags.TC
    assert 2000 < len(response.answer[0]) < 2500


def test_max_answers_caps_and_rotation_covers_all() -> None:
    zone = Zone(cluster(*OBJECTS[:5]), make_config(max_answers=1))
    firsts = set()
    for _ in range(6):
        answer = zone.ask(WEB, "AAAA").answer
        assert len(answer[0]) == 1
        firsts.add(next(iter(answer[0])).address)
    assert firsts == {"2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c"}


def test_rotation_changes_first_record(zone: Zone) -> None:
    orders = {tuple(rr.address for rr in zone.ask(WEB, "AAAA").answer[0]) for _ in range(3)}
    assert len(orders) == 3
    assert all(sorted(order) == ["2001:db8:1::a", "2001:db8:1::b", "2001:db8:1::c"] for order in orders)


def test_any_is_minimal(zone: Zone) -> None:
    response = zone.ask(WEB, "ANY")
    assert response.rcode() == dns.rcode.NOERROR
    assert len(response.answer) == 1
    apex = zone.ask("gua.example.com.", "ANY")
    assert [rrset.rdtype for rrset in apex.answer] == [dns.rdatatype.SOA]


@pytest.mark.parametrize("opcode", [dns.opcode.IQUERY, dns.opcode.STATUS, dns.opcode.NOTIFY, dns.opcode.UPDATE, 15])
def test_unknown_opcodes_notimp(zone: Zone, opcode: int) -> None:
    query = dns.message.make_query(WEB, "AAAA", use_edns=False)
    wire = bytearray(query.to_wire())
    wire[2] = (opcode << 3) | 0x07  # AA, TC, RD set as well
    wire[3] = 0xB0  # RA, AD, CD
    reply = zone.raw(bytes(wire))
    assert reply is not None
    assert reply[2] == 0x80 | (opcode << 3)
    assert reply[3] == dns.rcode.NOTIMP
    assert reply[4:6] == b"\x00\x00"


@pytest.mark.parametrize("qtype", ["AXFR", "IXFR"])
def test_transfers_refused(zone: Zone, qtype: str) -> None:
    for tcp in (False, True):
        response = zone.ask("gua.example.com.", qtype, tcp=tcp, use_edns=False)
        assert response.rcode() == dns.rcode.REFUSED


def test_other_classes_refused(zone: Zone) -> None:
    assert zone.ask("version.bind.", "TXT", rdclass=dns.rdataclass.CH).rcode() == dns.rcode.REFUSED
    assert zone.ask("gua.example.com.", "SOA", rdclass=dns.rdataclass.CH).rcode() == dns.rcode.REFUSED


def test_drops_responses_and_short_packets(zone: Zone) -> None:
    query = dns.message.make_query(WEB, "AAAA").to_wire()
    assert zone.raw(b"") is None
    assert zone.raw(query[:11]) is None
    assert zone.raw(bytes([query[0], query[1], query[2] | 0x80]) + query[3:]) is None


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda q: q[:12], id="question-missing"),
        pytest.param(lambda q: q[:-3], id="question-cut"),
        pytest.param(lambda q: q + b"junk", id="trailing-junk"),
        pytest.param(lambda q: q[:5] + b"\x02" + q[6:] + q[12:], id="two-questions"),
        pytest.param(lambda q: q[:12] + b"\x40" + q[13:], id="bad-label-length"),
        pytest.param(lambda q: q[:-4] + b"\x00\x29\x00\x01", id="qtype-opt"),
    ],
)
def test_malformed_is_formerr(zone: Zone, mutate) -> None:  # type: ignore[no-untyped-def]
    query = dns.message.make_query(WEB, "AAAA", use_edns=False).to_wire()
    reply = zone.raw(mutate(query))
    assert reply is not None
    assert reply[:2] == query[:2]
    assert reply[3] & 0x0F == dns.rcode.FORMERR
    assert reply[2] & 0x80


def test_compressed_question_takes_careful_path_with_same_answer(zone: Zone) -> None:
    # a question whose name ends in a pointer to itself is a loop: FORMERR, not a hang
    query = dns.message.make_query(WEB, "AAAA", use_edns=False).to_wire()
    looping = query[:12] + b"\x03web\xc0\x0c" + query[-4:]
    reply = zone.raw(looping)
    assert reply is not None and reply[3] & 0x0F == dns.rcode.FORMERR


def test_not_synced_is_servfail_for_zone_data() -> None:
    zone = Zone(cluster(*OBJECTS[:5]), synced=False)
    assert zone.ask(WEB, "AAAA").rcode() == dns.rcode.SERVFAIL
    assert zone.ask("nothing.gua.example.com.", "AAAA").rcode() == dns.rcode.SERVFAIL
    assert zone.ask("example.org.", "A").rcode() == dns.rcode.REFUSED


def test_serial_advances_at_most_once_per_change() -> None:
    zone = Zone(cluster(*OBJECTS[:5]))
    index = zone.index
    index.advance_serial(1_700_000_000)
    first = zone.ask("gua.example.com.", "SOA").answer[0][0].serial
    assert not index.advance_serial(1_700_000_050)  # nothing changed
    zone.load(cluster(*OBJECTS[:4]))  # web-c is gone
    assert index.advance_serial(1_700_000_010)
    second = zone.ask("gua.example.com.", "SOA").answer[0][0].serial
    assert second > first
    negative = zone.ask("missing.gua.example.com.", "AAAA").authority[0][0].serial
    assert negative == second
    zone.load(cluster(*OBJECTS[:3]))
    assert index.advance_serial(1_800_000_000)
    assert zone.ask("gua.example.com.", "SOA").answer[0][0].serial == 1_800_000_000


def _query_strategy() -> st.SearchStrategy[bytes]:
    names = st.sampled_from(
        [
            WEB,
            "web-a.default.pod.gua.example.com.",
            "gua.example.com.",
            "x.gua.example.com.",
            "mid.default.svc.gua.example.com.",
            "svc.gua.example.com.",
            "example.net.",
        ]
    )

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        name = draw(names)
        name = "".join(c.upper() if draw(st.booleans()) else c for c in name)
        qtype = draw(st.sampled_from(["A", "AAAA", "SRV", "SOA", "NS", "TXT", "ANY", "PTR", "CNAME"]))
        edns = draw(st.sampled_from([-1, 0]))
        payload = draw(st.sampled_from([0, 511, 512, 513, 1232, 1233, 4096]))
        query = dns.message.make_query(name, qtype, use_edns=edns, payload=payload, want_dnssec=draw(st.booleans()))
        query.flags = draw(st.sampled_from([0, dns.flags.RD, dns.flags.CD, dns.flags.RD | dns.flags.CD]))
        return query.to_wire()

    return build()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(wire=_query_strategy())
def test_fast_path_matches_dnspython_path(zone: Zone, wire: bytes) -> None:
    """The hand parser and dnspython's parser must lead to the same response."""
    from dnsd import wire as engine

    fast = engine.respond(wire, zone.index)
    careful = engine._careful(wire, zone.index, False)
    assert fast is not None and careful is not None
    fast_message, careful_message = dns.message.from_wire(fast), dns.message.from_wire(careful)
    assert fast_message.flags == careful_message.flags
    assert fast_message.rcode() == careful_message.rcode()
    assert fast_message.question == careful_message.question
    # answers may be rotated differently; compare as sets
    assert rrsets_text(fast_message.answer) == rrsets_text(careful_message.answer)
    assert rrsets_text(fast_message.authority) == rrsets_text(careful_message.authority)
    assert fast_message.edns == careful_message.edns
    assert fast_message.ednsflags == careful_message.ednsflags


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=600))
def test_random_bytes_never_crash(zone: Zone, data: bytes) -> None:
    reply = zone.raw(data)
    if reply is not None:
        assert reply[:2] == data[:2]
        dns.message.from_wire(reply)


def test_mutated_queries_never_crash(zone: Zone) -> None:
    rng = random.Random(1234)
    base = [
        dns.message.make_query(n, t, use_edns=e).to_wire()
        for n in (WEB, "x.gua.example.com.", "huge.default.svc.gua.example.com.")
        for t in ("A", "AAAA", "SRV")
        for e in (-1, 0)
    ]
    for _ in range(3000):
        packet = bytearray(rng.choice(base))
        for _ in range(rng.randint(1, 4)):
            packet[rng.randrange(len(packet))] = rng.randrange(256)
        reply = zone.raw(bytes(packet), tcp=rng.random() < 0.5)
        if reply is not None:
            parsed = dns.message.from_wire(reply)
            assert parsed.id == struct.unpack("!H", packet[:2])[0]
