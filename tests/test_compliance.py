"""EDNS and protocol compliance, sent as real packets to a real dnsd over UDP and TCP.

One test per check of ISC's EDNS compliance tester, genreport (the engine of ednscomp.isc.org
and of the DNS Flag Day checkers; the test table is genreport.c:244-360, summarised with the
expected correct responses in shared/research/interop.md §3.2), and per "a server should answer"
case of RFC 8906 §8 (as hickory-dns's conformance tests assert them, rfc8906/{basic,extended}.rs).
Every query is for `<zone> SOA` with RD=0 unless the check says otherwise, like genreport's.
Each check runs over UDP and over TCP.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdatatype
import dns.tsig
import pytest
from conftest import DnsdProcess
from live import BIG, BIG_COUNT, start_dnsd, tcp_exchange, udp_exchange

ZONE = "gua.example.com."
SOA = dns.rdatatype.SOA
Z_BIT = 0x0040
"""The header's reserved Z bit (dnspython has no name for it)."""
UNKNOWN_EDNS_FLAG = 0x0080
"""genreport's ednsflags test sets this undefined EDNS flag bit (+ednsflags=0x0080)."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DnsdProcess]:
    process = start_dnsd(Path(tmp_path_factory.mktemp("compliance")))
    yield process
    assert process.stop() == 0
    assert not [line for line in process.lines if "Traceback" in line or "internal error" in line]


@dataclass
class Asker:
    """Sends one query's wire bytes to the running dnsd over UDP or TCP; returns the reply's bytes."""

    port: int
    tcp: bool

    def __call__(self, query: bytes) -> bytes:
        return (tcp_exchange if self.tcp else udp_exchange)(self.port, query)


@pytest.fixture(params=["udp", "tcp"])
def ask(request: pytest.FixtureRequest, server: DnsdProcess) -> Asker:
    return Asker(server.port, request.param == "tcp")


def soa_query(
    *,
    edns: int = -1,
    flags: int = 0,
    ednsflags: int = 0,
    options: tuple[dns.edns.Option, ...] = (),
    payload: int = 1232,
    name: str = ZONE,
    rdtype: int | str = SOA,
) -> dns.message.Message:
    query = dns.message.make_query(
        name, rdtype, use_edns=edns if edns >= 0 else False, ednsflags=ednsflags, payload=payload, options=list(options)
    )
    query.flags = flags
    return query


@dataclass
class Reply:
    raw: bytes
    message: dns.message.Message

    @property
    def flags(self) -> int:
        return self.message.flags

    def has(self, flag: int) -> bool:
        return bool(self.message.flags & flag)


def exchange(ask: Callable[[bytes], bytes], query: dns.message.Message | bytes) -> Reply:
    wire = query if isinstance(query, bytes) else query.to_wire()
    raw = ask(wire)
    assert raw[:2] == wire[:2], "ID not echoed"
    message = dns.message.from_wire(raw, ignore_trailing=False)
    assert message.flags & dns.flags.QR
    return Reply(raw, message)


def assert_soa_answer(reply: Reply, *, edns: bool) -> None:
    """genreport's correct answer to `<zone> SOA`: NOERROR, one SOA, AA, RA/AD/TC/Z clear, OPT iff EDNS."""
    message = reply.message
    assert message.rcode() == dns.rcode.NOERROR
    assert [(rrset.name.to_text(), rrset.rdtype, len(rrset)) for rrset in message.answer] == [(ZONE, SOA, 1)]
    assert reply.has(dns.flags.AA)
    for flag in (dns.flags.RA, dns.flags.AD, dns.flags.TC):
        assert not reply.has(flag)
    assert not message.flags & Z_BIT
    assert (message.edns >= 0) == edns
    if edns:
        assert message.edns == 0 and not message.options


def assert_badvers(reply: Reply) -> None:
    """RFC 6891 §6.1.3 / RFC 8906 8.2.2: BADVERS, OPT version 0, no answer, AA clear, no option."""
    message = reply.message
    assert message.rcode() == dns.rcode.BADVERS
    assert message.edns == 0 and not message.options
    assert not message.answer
    assert not reply.has(dns.flags.AA)
    assert not message.ednsflags & UNKNOWN_EDNS_FLAG and not message.ednsflags & 0x40


# --- genreport EDNS group (the default checks) ---------------------------------------------------


def test_dns_plain(ask: Asker) -> None:
    """dns: `+noedns +norec SOA` -> the SOA, AA, no OPT, RD clear (RFC 8906 8.1.1)."""
    reply = exchange(ask, soa_query())
    assert_soa_answer(reply, edns=False)
    assert not reply.has(dns.flags.RD)


def test_edns(ask: Asker) -> None:
    """edns: `+edns=0` -> the SOA with an OPT of version 0 (RFC 8906 8.2.1)."""
    reply = exchange(ask, soa_query(edns=0))
    assert_soa_answer(reply, edns=True)
    assert not reply.message.ednsflags & dns.flags.DO


def test_edns1(ask: Asker) -> None:
    """edns1: `+edns=1 +noednsneg` -> BADVERS (RFC 8906 8.2.2)."""
    assert_badvers(exchange(ask, soa_query(edns=1)))


def test_edns_at_512_fits_or_truncates(ask: Asker) -> None:
    """edns@512: `+dnssec +bufsize=512 DNSKEY` -> at most 512 bytes with OPT; and an answer
    that cannot fit in 512 comes back TC=1 over UDP, complete over TCP (RFC 8906 8.2.7)."""
    reply = exchange(ask, soa_query(edns=0, ednsflags=dns.flags.DO, payload=512, rdtype="DNSKEY"))
    assert len(reply.raw) <= 512
    assert reply.message.rcode() == dns.rcode.NOERROR and reply.message.edns == 0
    big = exchange(ask, soa_query(edns=0, ednsflags=dns.flags.DO, payload=512, name=BIG, rdtype="AAAA"))
    assert big.message.rcode() == dns.rcode.NOERROR and big.message.edns == 0
    if ask.tcp:
        assert not big.has(dns.flags.TC) and sum(len(rrset) for rrset in big.message.answer) == BIG_COUNT
    else:
        assert big.has(dns.flags.TC) and not big.message.answer and len(big.raw) <= 512


def test_ednsopt(ask: Asker) -> None:
    """ednsopt: `+ednsopt=100` -> the SOA; the unknown option is not echoed (RFC 8906 8.2.3)."""
    assert_soa_answer(exchange(ask, soa_query(edns=0, options=(dns.edns.GenericOption(100, b""),))), edns=True)


def test_edns1opt(ask: Asker) -> None:
    """edns1opt: `+edns=1 +ednsopt=100` -> BADVERS without the option (RFC 8906 8.2.6)."""
    assert_badvers(exchange(ask, soa_query(edns=1, options=(dns.edns.GenericOption(100, b""),))))


def test_do(ask: Asker) -> None:
    """do: `+dnssec` -> the SOA, DO copied into the reply's OPT (RFC 3225 §3, RFC 8906 8.2.8)."""
    reply = exchange(ask, soa_query(edns=0, ednsflags=dns.flags.DO))
    assert_soa_answer(reply, edns=True)
    assert reply.message.ednsflags & dns.flags.DO


def test_ednsflags(ask: Asker) -> None:
    """ednsflags: `+ednsflags=0x0080` -> the SOA; the undefined flag is not echoed (`mbz`);
    RFC 8906 8.2.4 uses 0x40."""
    for undefined in (UNKNOWN_EDNS_FLAG, 0x40):
        reply = exchange(ask, soa_query(edns=0, ednsflags=undefined))
        assert_soa_answer(reply, edns=True)
        assert reply.message.ednsflags == 0


def test_optlist(ask: Asker) -> None:
    """optlist: `+nsid +subnet=0.0.0.0/0 +expire +cookie=0102030405060708` -> the SOA (RFC 8906 8.2.10)."""
    options = (
        dns.edns.NSIDOption(b""),
        dns.edns.ECSOption("0.0.0.0", 0),
        dns.edns.GenericOption(dns.edns.OptionType.EXPIRE, b""),
        dns.edns.CookieOption(bytes.fromhex("0102030405060708"), b""),
    )
    assert_soa_answer(exchange(ask, soa_query(edns=0, options=options)), edns=True)


def test_ednstcp_complete_answer_over_tcp(server: DnsdProcess) -> None:
    """ednstcp / edns512tcp (the DNS Flag Day 2020 check): `+dnssec +bufsize=512 +tcp` -> the
    complete answer over TCP; here for an answer that does not fit 512 bytes."""
    query = soa_query(edns=0, ednsflags=dns.flags.DO, payload=512, name=BIG, rdtype="AAAA")
    udp = dns.message.from_wire(udp_exchange(server.port, query.to_wire()))
    assert udp.flags & dns.flags.TC and not udp.answer
    raw = tcp_exchange(server.port, query.to_wire())
    reply = dns.message.from_wire(raw)
    assert reply.rcode() == dns.rcode.NOERROR and not reply.flags & dns.flags.TC
    assert sum(len(rrset) for rrset in reply.answer) == BIG_COUNT
    assert reply.edns == 0 and reply.ednsflags & dns.flags.DO


# --- genreport FULL group ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bit",
    [dns.flags.AA, dns.flags.AD, dns.flags.CD, dns.flags.RA, dns.flags.TC, Z_BIT],
    ids=["aa", "ad", "cd", "ra", "tc", "zflag"],
)
def test_header_bits(ask: Asker, bit: int) -> None:
    """aa, ad, cd, ra, tc, zflag: the bit set in the query -> the SOA; only CD is echoed, Z never
    (RFC 8906 8.1.3.1-8.1.3.3)."""
    reply = exchange(ask, soa_query(flags=bit))
    assert_soa_answer(reply, edns=False)
    assert reply.has(dns.flags.CD) == (bit == dns.flags.CD)
    assert not reply.has(dns.flags.RD)


def test_rd(ask: Asker) -> None:
    """rd: `+rec` -> the SOA with RD copied and RA clear (RFC 8906 8.1.3.4)."""
    reply = exchange(ask, soa_query(flags=dns.flags.RD))
    assert_soa_answer(reply, edns=False)
    assert reply.has(dns.flags.RD)


def _opcode15(flags: int, with_question: bool) -> bytes:
    query = soa_query()
    wire = query.to_wire()
    header = struct.pack("!HH", query.id, (15 << 11) | flags) + struct.pack("!HHHH", int(with_question), 0, 0, 0)
    return header + (wire[12:] if with_question else b"")


@pytest.mark.parametrize("with_question", [False, True], ids=["header-only", "with-question"])
def test_opcode(ask: Asker, with_question: bool) -> None:
    """opcode: `+header-only +opcode=15` -> NOTIMP, opcode 15, no sections, AA/RD/AD clear, no
    OPT (RFC 8906 8.1.4; hickory also asks with a question)."""
    reply = exchange(ask, _opcode15(0, with_question))
    message = reply.message
    assert message.rcode() == dns.rcode.NOTIMP
    assert message.opcode() == 15
    assert not message.question and not message.answer and not message.authority and not message.additional
    assert message.edns < 0
    assert message.flags & 0x87F0 == dns.flags.QR  # every flag but QR clear (opcode and rcode aside)


def test_opcodeflg(ask: Asker) -> None:
    """opcodeflg: opcode 15 with tc, rd, ra, cd, ad, aa and z set -> NOTIMP with all of them clear
    (NSD does not answer this one at all: genreport reports it as `reset`)."""
    every = dns.flags.AA | dns.flags.TC | dns.flags.RD | dns.flags.RA | Z_BIT | dns.flags.AD | dns.flags.CD
    reply = exchange(ask, _opcode15(every, False))
    assert reply.message.rcode() == dns.rcode.NOTIMP
    assert reply.message.opcode() == 15
    assert reply.message.flags & 0x87F0 == dns.flags.QR


def test_type666(ask: Asker) -> None:
    """type666: `+noedns TYPE666` -> NOERROR, no answer, AA, the SOA in authority (RFC 8906 8.1.2
    asks TYPE1000)."""
    for rdtype in (666, 1000):
        reply = exchange(ask, soa_query(rdtype=rdtype))
        message = reply.message
        assert message.rcode() == dns.rcode.NOERROR and not message.answer
        assert reply.has(dns.flags.AA)
        assert [(rrset.name.to_text(), rrset.rdtype) for rrset in message.authority] == [(ZONE, SOA)]


def test_docd(ask: Asker) -> None:
    """docd: `+dnssec +cd` -> the SOA with DO and CD echoed (RFC 4035 §3.1.6)."""
    reply = exchange(ask, soa_query(edns=0, ednsflags=dns.flags.DO, flags=dns.flags.CD))
    assert_soa_answer(reply, edns=True)
    assert reply.has(dns.flags.CD) and reply.message.ednsflags & dns.flags.DO


def test_edns1do(ask: Asker) -> None:
    """edns1do: `+edns=1 +dnssec` -> BADVERS, with DO copied (RFC 8906 8.2.9)."""
    reply = exchange(ask, soa_query(edns=1, ednsflags=dns.flags.DO))
    assert_badvers(reply)
    assert reply.message.ednsflags & dns.flags.DO


def test_edns1flags(ask: Asker) -> None:
    """RFC 8906 8.2.5: `+edns=1 +ednsflags=0x40` -> BADVERS without the undefined flag."""
    assert_badvers(exchange(ask, soa_query(edns=1, ednsflags=0x40)))


OPTIONS = {
    "nsid": dns.edns.NSIDOption(b""),
    "cookie": dns.edns.CookieOption(bytes.fromhex("0102030405060708"), b""),
    "expire": dns.edns.GenericOption(dns.edns.OptionType.EXPIRE, b""),
    "subnet": dns.edns.ECSOption("0.0.0.0", 0),
}


@pytest.mark.parametrize("version", [0, 1], ids=["edns", "edns1"])
@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_single_options(ask: Asker, option: str, version: int) -> None:
    """ednsnsid, ednscookie, ednsexpire, ednssubnet and their edns1 variants: NOERROR with the
    SOA (v0) or BADVERS (v1); dnsd implements none of these options, so none is answered."""
    reply = exchange(ask, soa_query(edns=version, options=(OPTIONS[option],)))
    if version == 0:
        assert_soa_answer(reply, edns=True)
    else:
        assert_badvers(reply)


def test_tcp_plain(server: DnsdProcess) -> None:
    """tcp: `+noedns +tcp` -> the SOA over TCP (RFC 8906 8.1.5)."""
    raw = tcp_exchange(server.port, soa_query().to_wire())
    assert_soa_answer(Reply(raw, dns.message.from_wire(raw)), edns=False)


# --- genreport COMM and TYPE groups --------------------------------------------------------------


@pytest.mark.parametrize("client", ["bind11", "dig11"])
def test_bind11_and_dig11(ask: Asker, client: str) -> None:
    """bind11 / dig11: what BIND 9.11 and its dig send (COOKIE, AD; dig11 with RD) -> NOERROR."""
    flags = dns.flags.AD | (dns.flags.RD if client == "dig11" else 0)
    reply = exchange(ask, soa_query(edns=0, flags=flags, options=(OPTIONS["cookie"],)))
    assert_soa_answer(reply, edns=True)
    assert reply.has(dns.flags.RD) == (client == "dig11")


def test_type_group(server: DnsdProcess) -> None:
    """TYPE group: every type genreport asks (and every other one up to 260, plus 1000 and the
    private range) at the apex -> NOERROR with data or NODATA + SOA, never FORMERR/NOTIMP/silence.
    AXFR/IXFR (transfers) and OPT (a meta-type) are the exceptions, checked elsewhere."""
    rdtypes = [*range(1, 261), 1000, 32768, 65280, 65534]
    for rdtype in rdtypes:
        if rdtype in (dns.rdatatype.OPT, dns.rdatatype.AXFR, dns.rdatatype.IXFR):
            continue
        query = soa_query(rdtype=rdtype)
        reply = dns.message.from_wire(udp_exchange(server.port, query.to_wire()))
        assert reply.rcode() == dns.rcode.NOERROR, rdtype
        assert reply.flags & dns.flags.AA, rdtype
        if rdtype in (dns.rdatatype.SOA, dns.rdatatype.NS, dns.rdatatype.ANY):
            assert reply.answer, rdtype
        else:
            assert not reply.answer and [rrset.rdtype for rrset in reply.authority] == [SOA], rdtype


def test_dnswkk_tsig_with_unknown_key_is_answered(ask: Asker) -> None:
    """dnswkk: a query signed with TSIG key "." (unknown here) -> an answer, never silence.
    genreport marks the check optional; RFC 8945 §5.2.2 would have NOTAUTH/BADKEY."""
    query = soa_query(edns=0)
    query.use_tsig(dns.tsig.Key(".", b"\x00" * 16, dns.tsig.HMAC_SHA256))
    raw = ask(query.to_wire())
    assert raw[:2] == query.to_wire()[:2] and raw[2] & 0x80
    assert raw[3] & 0x0F in (dns.rcode.FORMERR, dns.rcode.NOTAUTH, dns.rcode.REFUSED)


# --- RFC 8906: a server should answer -----------------------------------------------------------


def test_answers_outside_the_zone_and_other_classes(ask: Asker) -> None:
    """RFC 8906 §3 and §7: names outside the zone (CoreDNS's `. NS` probe with RD=1) and classes
    other than IN get REFUSED, AA clear, never silence."""
    for name, rdtype, rdclass in ((".", "NS", "IN"), ("example.org.", "A", "IN"), ("version.bind.", "TXT", "CH")):
        query = dns.message.make_query(name, rdtype, rdclass, use_edns=False)
        query.flags = dns.flags.RD
        reply = exchange(ask, query)
        assert reply.message.rcode() == dns.rcode.REFUSED
        assert not reply.has(dns.flags.AA) and reply.has(dns.flags.RD)
        assert reply.message.question == query.question


def test_any_is_one_rrset(ask: Asker) -> None:
    """RFC 8482: ANY answers one RRset (minimal), NOERROR, AA."""
    reply = exchange(ask, soa_query(rdtype="ANY"))
    assert reply.message.rcode() == dns.rcode.NOERROR and reply.has(dns.flags.AA)
    assert len(reply.message.answer) == 1


def test_nxdomain_has_soa(ask: Asker) -> None:
    reply = exchange(ask, soa_query(name="no-such-name.gua.example.com.", rdtype="AAAA"))
    assert reply.message.rcode() == dns.rcode.NXDOMAIN and reply.has(dns.flags.AA)
    assert [(rrset.name.to_text(), rrset.rdtype) for rrset in reply.message.authority] == [(ZONE, SOA)]


def test_several_opt_records_are_formerr(ask: Asker) -> None:
    """RFC 6891 §6.1.1: more than one OPT -> FORMERR (answered, ID echoed)."""
    wire = bytearray(soa_query(edns=0).to_wire())
    opt = bytes(wire[-11:])
    wire[10:12] = b"\x00\x02"
    reply = exchange(ask, bytes(wire) + opt)
    assert reply.message.rcode() == dns.rcode.FORMERR


def test_malformed_cookie_with_edns1_is_badvers(ask: Asker) -> None:
    """Regression (found by tests/test_fuzz.py): a 5-byte COOKIE made dnspython fail the parse,
    so an EDNS version 1 query got FORMERR instead of BADVERS."""
    assert_badvers(exchange(ask, soa_query(edns=1, options=(dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05"),))))
    reply = exchange(ask, soa_query(edns=0, options=(dns.edns.GenericOption(10, b"\x01\x02\x03\x04\x05"),)))
    assert_soa_answer(reply, edns=True)


def test_question_case_and_class_echoed(ask: Asker) -> None:
    """0x20: the question comes back byte for byte, on the fast path and the careful one (EDNS 1)."""
    for edns in (-1, 0, 1):
        query = soa_query(name="GuA.ExAmPlE.cOm.", edns=edns)
        wire = query.to_wire()
        reply = exchange(ask, wire)
        end = 12 + len(b"\x03GuA\x07ExAmPlE\x03cOm\x00") + 4
        assert reply.raw[12:end] == wire[12:end]


def test_rd_and_cd_together(ask: Asker) -> None:
    reply = exchange(ask, soa_query(flags=dns.flags.RD | dns.flags.CD))
    assert reply.has(dns.flags.RD) and reply.has(dns.flags.CD)
