"""Fuzzing the wire entry point (`wire.respond`) on a real index: hostile packets of every shape.

Every packet goes through `check_exchange`, which holds the engine to its contract:

- `respond` itself never raises (the transports' `respond_safely` is a last resort, not a plan);
- None (no reply) only for a packet shorter than a header or with QR=1;
- every reply parses with dnspython (no trailing bytes), echoes the ID, has QR=1, carries no
  question or the query's question exactly as sent (case included);
- over UDP a reply is at most 512 bytes, or, when the query carries a valid EDNS OPT, at most
  max(512, min(its payload, 1232)); over TCP at most 65535.

The packet generators take a `random.Random`, so hypothesis drives them here (a short budget:
`DNSD_FUZZ_EXAMPLES`, default 1500 per test) and `bench/fuzz.py` runs them for minutes on end.
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Callable

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import pytest
from conftest import EXAMPLE, Zone
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from k8s import cluster, endpoint, endpoint_slice, pod, service

from dnsd import wire

EXAMPLES = int(os.environ.get("DNSD_FUZZ_EXAMPLES", "1500"))
ZONE_NAME = "gua.example.com."
NAMES = (
    ZONE_NAME,
    "web.default.svc.gua.example.com.",
    "big.default.svc.gua.example.com.",
    "_http._tcp.big.default.svc.gua.example.com.",
    "svc.gua.example.com.",
    "nope.gua.example.com.",
    "a.8.b.d.0.1.0.0.2.ip6.arpa.",
    "example.org.",
    ".",
)
QTYPES = (1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 46, 48, 99, 251, 252, 255, 666, 1000, 65535, 0)


def fuzz_zone() -> Zone:
    """The example cluster plus a Service with 300 endpoints (answers past 512, 1232 and 16 KiB)."""
    endpoints = [endpoint(f"2001:db8:b19::{i:x}", pod=f"big-{i}") for i in range(1, 301)]
    pods = [pod(f"big-{i}", f"2001:db8:b19::{i:x}", f"198.51.100.{i % 250 + 1}") for i in range(1, 301)]
    extra = cluster(service("big"), endpoint_slice("big-1", "big", *endpoints), *pods)
    return Zone(EXAMPLE.read_text() + "\n---\n" + extra)


# --- generators ----------------------------------------------------------------------------------


def _labels(rng: random.Random) -> bytes:
    """A name in wire form: a real one, a random one, one with oversized labels or over 255 octets."""
    kind = rng.randrange(6)
    if kind == 0:
        text = rng.choice(NAMES)
        name = dns.name.from_text("".join(c.upper() if rng.random() < 0.3 else c for c in text))
        return name.to_wire()
    if kind == 1:  # random label bytes, any octet (dots, zeros, high bytes)
        return b"".join(bytes([n]) + rng.randbytes(n) for n in (rng.randrange(1, 64) for _ in range(rng.randrange(5))))
    if kind == 2:  # a label length over 63 (reserved label types 0x40/0x80)
        return bytes([rng.randrange(64, 192)]) + rng.randbytes(rng.randrange(0, 80)) + b"\x00"
    if kind == 3:  # a name longer than 255 octets
        return b"".join(b"\x3f" + b"a" * 63 for _ in range(rng.randrange(4, 8))) + b"\x00"
    if kind == 4:  # a compression pointer: to itself, forward, backward, to the header
        return rng.choice((b"\xc0\x0c", b"\xc0\x0e", b"\xc0\x00", b"\x01a\xc0\x0c", b"\xff\xff", b"\xc0"))
    return b"\x00"


def _opt(rng: random.Random) -> bytes:
    """An OPT record: any payload, version, flags; options of every size up to ~64 KiB."""
    options = b""
    for _ in range(rng.randrange(4)):
        code = rng.choice((3, 8, 9, 10, 11, 12, 15, 100, 65001, rng.randrange(65536)))
        size = rng.choice((0, 1, 4, 8, 40, rng.randrange(0, 2000), rng.randrange(0, 65000)))
        declared = size if rng.random() < 0.9 else rng.randrange(65536)  # lie about the length
        options += struct.pack("!HH", code, declared) + rng.randbytes(size)
    rdlength = len(options) if rng.random() < 0.9 else rng.randrange(65536)
    payload = rng.choice((0, 1, 511, 512, 1232, 4096, 65535, rng.randrange(65536)))
    version = 0 if rng.random() < 0.8 else rng.randrange(256)
    flags = rng.choice((0, 0x8000, 0x4000, 0xFFFF, rng.randrange(65536)))
    owner = b"\x00" if rng.random() < 0.9 else _labels(rng)
    return (
        owner
        + struct.pack(
            "!HHBBHH", 41, payload, rng.randrange(256) if rng.random() < 0.1 else 0, version, flags, rdlength & 0xFFFF
        )
        + options
    )


def structured_packet(rng: random.Random) -> bytes:
    """A header with any bits and counts, then questions, records and OPTs built from parts."""
    qid = rng.randrange(65536)
    flags = rng.choice((0, 0x0100, 0x0010, 0x0110, rng.randrange(65536) & 0x7FFF, rng.randrange(65536)))
    body = b""
    questions = rng.choice((0, 1, 1, 1, 2, rng.randrange(65536)))
    for _ in range(min(questions, 3)):
        qtype = rng.choice(QTYPES) if rng.random() < 0.9 else rng.randrange(65536)
        qclass = rng.choice((1, 1, 1, 3, 4, 254, 255, rng.randrange(65536)))
        body += _labels(rng) + struct.pack("!HH", qtype, qclass)
    additional = 0
    for _ in range(rng.choice((0, 1, 1, 2))):
        body += _opt(rng)
        additional += 1
    counts = [questions, 0, 0, additional]
    if rng.random() < 0.2:
        counts[rng.randrange(4)] = rng.randrange(65536)  # a count that lies
    packet = struct.pack("!HH", qid, flags) + struct.pack("!HHHH", *counts) + body
    if rng.random() < 0.1:
        packet += rng.randbytes(rng.randrange(1, 40))  # trailing garbage
    return packet


def valid_query(rng: random.Random) -> bytes:
    """A query dnspython builds: the corpus the mutator starts from."""
    edns = rng.choice((-1, 0, 0, 1))
    options = []
    if edns >= 0 and rng.random() < 0.3:
        options = [dns.edns.GenericOption(rng.choice((3, 10, 100, 12)), rng.randbytes(rng.randrange(0, 300)))]
    query = dns.message.make_query(
        rng.choice(NAMES),
        rng.choice([qtype for qtype in QTYPES if qtype not in (0, 41)]),
        use_edns=edns,
        payload=rng.choice((512, 1232, 4096, 100)),
        want_dnssec=rng.random() < 0.3,
        options=options,
    )
    query.flags = rng.choice((0, dns.flags.RD, dns.flags.CD))
    return query.to_wire()


def mutated_query(rng: random.Random) -> bytes:
    """A valid query with a few bytes flipped, inserted, cut or duplicated."""
    packet = bytearray(valid_query(rng))
    for _ in range(rng.randrange(1, 5)):
        action = rng.randrange(5)
        at = rng.randrange(len(packet)) if packet else 0
        if action == 0 and packet:
            packet[at] = rng.randrange(256)
        elif action == 1:
            packet[at:at] = rng.randbytes(rng.randrange(1, 8))
        elif action == 2:
            del packet[at : at + rng.randrange(1, 8)]
        elif action == 3:
            packet = packet[: rng.randrange(len(packet) + 1)]
        else:
            packet[at:at] = packet[at : at + rng.randrange(1, 40)]
    return bytes(packet)


def random_packet(rng: random.Random) -> bytes:
    return rng.randbytes(rng.choice((rng.randrange(0, 13), rng.randrange(12, 600), rng.randrange(0, 4000))))


GENERATORS: tuple[Callable[[random.Random], bytes], ...] = (random_packet, mutated_query, structured_packet)


def any_packet(rng: random.Random) -> bytes:
    return rng.choice(GENERATORS)(rng)


# --- the contract --------------------------------------------------------------------------------


def _edns_payload(query: bytes) -> int | None:
    """The query's EDNS payload when dnspython accepts it as a query with one valid OPT, else None."""
    try:
        message = dns.message.from_wire(query, ignore_trailing=False)
    except Exception:
        return None
    return message.payload if message.edns >= 0 else None


def check_exchange(query: bytes, *, tcp: bool, index: object) -> bytes | None:
    """Answer query with the engine and hold the reply to the contract; returns the reply."""
    reply = wire.respond(query, index, tcp=tcp)  # type: ignore[arg-type]
    if reply is None:
        assert len(query) < 12 or query[2] & 0x80, f"no reply to a query: {query.hex()}"
        return None
    assert len(query) >= 12 and not query[2] & 0x80, f"a reply to a packet that needs none: {query.hex()}"
    try:
        message = dns.message.from_wire(reply, ignore_trailing=False)
    except dns.exception.DNSException as exc:
        raise AssertionError(f"unparseable reply {reply.hex()} to {query.hex()}: {exc!r}") from None
    assert reply[:2] == query[:2], "ID not echoed"
    assert message.flags & dns.flags.QR
    if message.question:
        assert len(message.question) == 1
        asked = dns.message.from_wire(query, ignore_trailing=False, question_only=True).question[0]
        echoed = message.question[0]
        assert echoed.name.labels == asked.name.labels, "question name not echoed exactly"
        assert (echoed.rdtype, echoed.rdclass) == (asked.rdtype, asked.rdclass)
    if tcp:
        assert len(reply) <= 65535
    else:
        payload = _edns_payload(query)
        limit = 512 if payload is None else max(512, min(payload, 1232))
        assert len(reply) <= limit, f"{len(reply)}-byte UDP reply over the {limit}-byte limit to {query.hex()}"
    return reply


# --- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def index() -> object:
    return fuzz_zone().index


FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@FUZZ
@given(data=st.binary(max_size=700), tcp=st.booleans())
def test_random_bytes(index: object, data: bytes, tcp: bool) -> None:
    check_exchange(data, tcp=tcp, index=index)


@FUZZ
@given(rng=st.randoms(use_true_random=False), tcp=st.booleans())
def test_mutated_valid_queries(index: object, rng: random.Random, tcp: bool) -> None:
    check_exchange(mutated_query(rng), tcp=tcp, index=index)


@FUZZ
@given(rng=st.randoms(use_true_random=False), tcp=st.booleans())
def test_structured_hostile_packets(index: object, rng: random.Random, tcp: bool) -> None:
    """Bad counts, oversized and looping names, several questions and OPTs, huge EDNS options."""
    check_exchange(structured_packet(rng), tcp=tcp, index=index)


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_valid_queries_get_answers_within_limits(index: object, rng: random.Random) -> None:
    """Well-formed queries always get a question-echoing answer, never FORMERR."""
    query = valid_query(rng)
    for tcp in (False, True):
        reply = check_exchange(query, tcp=tcp, index=index)
        assert reply is not None
        message = dns.message.from_wire(reply)
        assert message.rcode() != dns.rcode.FORMERR
        assert len(message.question) == 1


def test_contract_catches_violations(index: object) -> None:
    """The checker itself fails on a wrong ID, an oversized UDP reply and a lost question case."""
    query = dns.message.make_query("Big.default.svc.gua.example.com.", "AAAA", use_edns=False).to_wire()
    good = wire.respond(query, index)  # type: ignore[arg-type]
    assert good is not None
    broken_id = bytes([good[0] ^ 0xFF]) + good[1:]
    oversized = wire.respond(query, index, tcp=True)  # type: ignore[arg-type]
    assert oversized is not None and len(oversized) > 512
    lowered = good[:12] + good[12:].replace(b"Big", b"big", 1)
    for bad in (broken_id, oversized, lowered):
        with pytest.raises(AssertionError):
            _check_fixed_reply(query, bad)


def _check_fixed_reply(query: bytes, reply: bytes) -> None:
    original = wire.respond
    wire.respond = lambda *_args, **_kwargs: reply  # type: ignore[assignment]
    try:
        check_exchange(query, tcp=False, index=None)
    finally:
        wire.respond = original  # type: ignore[assignment]


def test_compression_loops_and_pointer_chains(index: object) -> None:
    """Questions made of pointers that loop (to themselves, to each other) or point forward."""
    header = bytes.fromhex("abcd00000001000000000000")
    tails = (
        b"\xc0\x0c",  # to itself
        b"\x01a\xc0\x0c",  # a label, then back to its own start
        b"\xc0\x0e\xc0\x0c",  # two pointers pointing at each other
        b"\xc0\x20",  # forward, past the end
        b"\x01a" * 120 + b"\xc0\x0c",  # a long loop
    )
    for tail in tails:
        for tcp in (False, True):
            reply = check_exchange(header + tail + b"\x00\x1c\x00\x01", tcp=tcp, index=index)
            assert reply is not None and dns.message.from_wire(reply).rcode() == dns.rcode.FORMERR


def test_huge_edns_option_answered_within_limits(index: object) -> None:
    """An OPT carrying a 60 KiB option (a TCP-sized query) is answered, the option not echoed."""
    option = dns.edns.GenericOption(65001, b"\xaa" * 60_000)
    query = dns.message.make_query("web.default.svc.gua.example.com.", "AAAA", use_edns=0, options=[option])
    for tcp in (False, True):
        reply = check_exchange(query.to_wire(max_size=65535), tcp=tcp, index=index)
        assert reply is not None
        message = dns.message.from_wire(reply)
        assert message.rcode() == dns.rcode.NOERROR and message.answer and not message.options


def test_malformed_known_option_is_ignored_like_any_option(index: object) -> None:
    """Regression: a COOKIE or ECS option dnspython finds malformed made the careful path answer
    FORMERR (instead of BADVERS, REFUSED or an answer) while the fast path ignored it. dnsd
    implements no option, so every option is unknown and ignored (RFC 6891 §6.1.2)."""
    bad_options = [dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05"), dns.edns.GenericOption(8, b"\xff" * 3)]
    cases = (
        ("web.default.svc.gua.example.com.", "AAAA", 1, dns.rcode.BADVERS),  # careful path: version 1
        ("web.default.svc.gua.example.com.", "AAAA", 0, dns.rcode.NOERROR),  # fast path
        ("web.default.svc.gua.example.com.", 0, 0, dns.rcode.NOERROR),  # careful path: type 0
        ("example.org.", "AXFR", 0, dns.rcode.REFUSED),  # careful path: a transfer
    )
    for option in bad_options:
        for name, qtype, version, rcode in cases:
            query = dns.message.make_query(name, qtype, use_edns=version, options=[option])
            reply = check_exchange(query.to_wire(), tcp=False, index=index)
            assert reply is not None
            assert dns.message.from_wire(reply).rcode() == rcode, (option, name, qtype, version)


@FUZZ
@given(rng=st.randoms(use_true_random=False))
def test_framing_precheck_never_rejects_what_dnspython_accepts(rng: random.Random) -> None:
    """`wire._frames_exactly` answers FORMERR without dnspython (40 us -> 2 us per mangled query);
    it must never call malformed a message dnspython parses, or behaviour would change."""
    packet = any_packet(rng)
    if len(packet) < 12 or wire._frames_exactly(packet):
        return
    with pytest.raises(Exception):  # noqa: B017 - any parse failure is what we want
        dns.message.from_wire(packet, ignore_trailing=False)


def test_framing_precheck_accepts_real_queries() -> None:
    rng = random.Random(3)
    for _ in range(300):
        assert wire._frames_exactly(valid_query(rng))
    compressed = (
        bytes.fromhex("abcd00000002000000000000") + b"\x03www\x00\x00\x01\x00\x01" + b"\xc0\x0c\x00\x1c\x00\x01"
    )
    assert wire._frames_exactly(compressed)
    assert not wire._frames_exactly(compressed + b"\x00")  # trailing byte
    assert not wire._frames_exactly(compressed[:-1])  # cut short
    looping = bytes.fromhex("abcd00000001000000000000") + b"\xc0\x0c\x00\x01\x00\x01"
    assert not wire._frames_exactly(looping)
