"""The DNS engine: query bytes in, response bytes out, from one zone index (pure).

`respond` is the only entry point for every transport. Its fast path parses the header and the
question by hand and splices prebuilt answers (`dnsd.zone`) behind the question exactly as the
client sent it. Anything unusual (another opcode, several questions, EDNS version > 0, unknown
or malformed input) goes through dnspython's parser instead, and both paths end in the same
`_answer`, so they cannot disagree about the zone's content.

Performance notes: a typical query costs one `find`, a few slices, one `lower()` and one dict
lookup before `_answer`; dnspython's parse alone costs 20x that (shared/research/perf-baseline.md).
"""

from __future__ import annotations

import itertools
import logging
import struct

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.rdataclass
import dns.rdatatype

from dnsd.zone import Index

log = logging.getLogger("dnsd.engine")

NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
QR, AA, TC = 0x80, 0x04, 0x02
RD, CD = 0x01, 0x10
ANY, AXFR, IXFR, OPT = 255, 252, 251, 41
UDP_PAYLOAD = 1232
UDP_MINIMUM = 512
TCP_MAXIMUM = 65535

COUNTS = struct.Struct("!HHHH")
POINTER = struct.Struct("!H")
# Our OPT record: root owner, type OPT, our payload size, extended rcode, version 0, flags.
_OPT_HEAD = b"\x00\x00\x29" + UDP_PAYLOAD.to_bytes(2, "big")
OPT_PLAIN = _OPT_HEAD + b"\x00\x00\x00\x00\x00\x00"
OPT_DO = _OPT_HEAD + b"\x00\x00\x80\x00\x00\x00"
OPT_BADVERS = _OPT_HEAD + b"\x01\x00"
_FAST_EXCLUDED_TYPES = frozenset({AXFR, IXFR, OPT, 0})

# dnsd implements no EDNS option, so every option is "unknown" and ignored (RFC 6891 §6.1.2),
# whatever its content. dnspython validates the ones it knows (a 5-byte COOKIE, a bad ECS prefix)
# and would fail the whole parse, turning a BADVERS or REFUSED into FORMERR on the careful path
# only; parsed as opaque bytes, both paths treat options alike.
for _code in dns.edns.OptionType:
    dns.edns.register_type(dns.edns.GenericOption, _code)


def _opt(do: bool | None) -> bytes:
    """Our OPT record for a query with EDNS (do is its DO bit), or nothing for one without."""
    return b"" if do is None else OPT_DO if do else OPT_PLAIN


def _udp_limit(payload: int | None) -> int:
    """Largest UDP response: 512 without EDNS, else the client's payload within 512..1232."""
    return UDP_MINIMUM if payload is None else max(UDP_MINIMUM, min(payload, UDP_PAYLOAD))


_ONE_QUESTION = b"\x00\x01\x00\x00\x00\x00"

# Rotates the order of multi-record answers so clients that take the first address spread out.
_turn = itertools.count()


def respond(query: bytes, index: Index, *, tcp: bool = False) -> bytes | None:
    """The response to one DNS message, or None when it must be dropped (no usable header,
    or a response rather than a query)."""
    try:
        if query[2] & 0xF8 or query[4:10] != _ONE_QUESTION:
            return _careful(query, index, tcp)
        end = query.find(b"\x00", 12) + 1
        if end == 0 or end - 12 > 255:
            return _careful(query, index, tcp)
        qtype = query[end] << 8 | query[end + 1]
        if query[end + 2 : end + 4] != b"\x00\x01" or qtype in _FAST_EXCLUDED_TYPES:
            return _careful(query, index, tcp)
        additional = query[10:12]
        if additional == b"\x00\x00":
            if len(query) != end + 4:
                return _careful(query, index, tcp)
            do: bool | None = None
            limit = UDP_MINIMUM
        elif additional == b"\x00\x01":
            opt = end + 4
            if (
                query[opt : opt + 3] != b"\x00\x00\x29"
                or query[opt + 6]  # EDNS version
                or opt + 11 + (query[opt + 9] << 8 | query[opt + 10]) != len(query)
            ):
                return _careful(query, index, tcp)
            limit = _udp_limit(query[opt + 3] << 8 | query[opt + 4])
            do = query[opt + 7] & 0x80 != 0
        else:
            return _careful(query, index, tcp)
        lowered = query[12:end].lower()
        if lowered not in index.nodes and not _well_formed_name(lowered):
            return _careful(query, index, tcp)
    except IndexError:
        return _careful(query, index, tcp)
    return _answer(
        query[:2],
        query[2] & RD,
        query[3] & CD,
        query[12 : end + 4],
        lowered,
        qtype,
        do,
        index,
        TCP_MAXIMUM if tcp else limit,
    )


def _well_formed_name(wire: bytes) -> bool:
    """Whether wire is exactly one uncompressed name (the fast path found its end by `find`)."""
    pos, last = 0, len(wire) - 1
    while pos < last:
        length = wire[pos]
        if length > 63:
            return False
        pos += length + 1
    return pos == last


def header(qid: bytes, flags1: int, flags2: int, an: int = 0, ns: int = 0, ar: int = 0, qd: int = 1) -> bytes:
    """A message header: ID, flags (the second byte holds the rcode), section counts."""
    return qid + bytes((flags1, flags2)) + COUNTS.pack(qd, an, ns, ar)


def _answer(
    qid: bytes,
    rd: int,
    cd: int,
    question: bytes,
    lowered: bytes,
    qtype: int,
    do: bool | None,
    index: Index,
    limit: int,
) -> bytes:
    """The response to one well-formed IN query; question is the name, type and class as sent."""
    opt = _opt(do)
    extra = 0 if do is None else 1
    node = index.lookup(lowered)
    if node is None:
        zone = index.zone_for(lowered)
        if zone is None:
            return header(qid, QR | rd, cd | REFUSED, ar=extra) + question + opt
        rcode = NXDOMAIN
    else:
        zone = node.zone
        rcode = NOERROR
    if not index.synced:
        return header(qid, QR | rd, cd | SERVFAIL, ar=extra) + question + opt
    answer = None
    if node is not None:
        # Node.get, inlined: this runs for every query
        if qtype == 28:
            answer = node.aaaa
        elif qtype == 1:
            answer = node.a
        else:
            answer = node.others.get(qtype) if node.others else None
        if answer is None:
            answer = node.any if qtype == ANY else node.cname
    if answer is None:
        soa = POINTER.pack(0xC00C + len(lowered) - len(zone.apex_wire)) + zone.negative_soa
        response = header(qid, QR | AA | rd, cd | rcode, ns=1, ar=extra) + question + soa + opt
        if len(response) <= limit:
            return response
        return header(qid, QR | AA | TC | rd, cd | rcode, ar=extra) + question + opt
    records = answer.section(next(_turn) % answer.count if answer.count > 1 else 0)
    size = 12 + len(question) + len(records) + len(opt)
    if size + len(answer.additional) <= limit:
        return (
            header(qid, QR | AA | rd, cd, an=answer.window, ar=answer.additional_count + extra)
            + question
            + records
            + answer.additional
            + opt
        )
    if size <= limit:
        return header(qid, QR | AA | rd, cd, an=answer.window, ar=extra) + question + records + opt
    return header(qid, QR | AA | TC | rd, cd, ar=extra) + question + opt


def _careful(query: bytes, index: Index, tcp: bool) -> bytes | None:
    """Everything the fast path does not take, parsed by dnspython."""
    if len(query) < 12 or query[2] & QR:
        return None
    if query[2] & 0x78:  # any opcode but QUERY, whatever follows the header
        return header(query[:2], QR | (query[2] & 0x78), NOTIMP, qd=0)
    if not _frames_exactly(query):
        return _formerr(query)
    try:
        message = dns.message.from_wire(query, ignore_trailing=False)
    except dns.message.ShortHeader:
        return None
    except Exception:
        return _formerr(query)
    qid = query[:2]
    rd = query[2] & RD
    cd = query[3] & CD
    do = None if message.edns < 0 else bool(message.ednsflags & dns.flags.DO)
    if message.edns > 0:
        badvers = OPT_BADVERS + (b"\x80\x00" if do else b"\x00\x00") + b"\x00\x00"
        question = question_of(message)
        return header(qid, QR | rd, cd, ar=1, qd=1 if question else 0) + question + badvers
    if len(message.question) != 1:
        return _formerr(query, do)
    question = question_of(message)
    rrset = message.question[0]
    if rrset.rdclass != dns.rdataclass.IN or rrset.rdtype in (AXFR, IXFR):
        return header(qid, QR | rd, cd | REFUSED, ar=0 if do is None else 1) + question + _opt(do)
    if rrset.rdtype == OPT:
        return _formerr(query, do)
    limit = TCP_MAXIMUM if tcp else _udp_limit(None if do is None else message.payload)
    lowered = rrset.name.canonicalize().to_wire()
    return _answer(qid, rd, cd, question, lowered, rrset.rdtype, do, index, limit)


def _frames_exactly(message: bytes) -> bool:
    """Whether the sections the header counts frame the message exactly: every name valid
    (labels, backward pointers, 255 octets), every record's length within the message, nothing
    after the last. dnspython rejects every message that fails this too, but at ten times the
    cost (40 us), which a flood of mangled queries would otherwise buy (tests/test_fuzz.py
    checks that this never rejects a message dnspython accepts)."""
    size = len(message)
    questions, answers, authorities, additionals = COUNTS.unpack_from(message, 4)
    pos = 12
    for number in range(questions + answers + authorities + additionals):
        pos = _name_end(message, pos)
        if pos < 0:
            return False
        if number < questions:
            pos += 4
        elif pos + 10 <= size:
            pos += 10 + (message[pos + 8] << 8 | message[pos + 9])
        else:
            return False
        if pos > size:
            return False
    return pos == size


def _name_end(message: bytes, pos: int) -> int:
    """Offset after the name at pos, or -1 when it is malformed, by dnspython's rules."""
    size = len(message)
    after = -1
    earliest = pos  # a pointer must go before every earlier target: no loops
    octets = 1
    while pos < size:
        length = message[pos]
        pos += 1
        if length == 0:
            return pos if after < 0 else after
        if length < 64:
            pos += length
            octets += length + 1
            if octets > 255:
                return -1
        elif length >= 0xC0 and pos < size:
            target = (length & 0x3F) << 8 | message[pos]
            if target >= earliest:
                return -1
            if after < 0:
                after = pos + 1
            earliest = pos = target
        else:
            return -1
    return -1


def question_of(message: dns.message.Message) -> bytes:
    """The question section of a parsed message in wire form, as it was sent (b"" if none)."""
    if not message.question:
        return b""
    rrset = message.question[0]
    return rrset.name.to_wire() + struct.pack("!HH", rrset.rdtype, rrset.rdclass)


def _formerr(query: bytes, do: bool | None = None) -> bytes:
    return header(query[:2], QR | (query[2] & (0x78 | RD)), FORMERR, ar=0 if do is None else 1, qd=0) + _opt(do)


def respond_safely(query: bytes, index: Index, *, tcp: bool = False) -> bytes | None:
    """`respond`, with a bug in the engine answered as SERVFAIL instead of reaching the transport."""
    try:
        return respond(query, index, tcp=tcp)
    except Exception:
        log.exception("internal error answering a query; sent SERVFAIL")
        if len(query) < 12 or query[2] & QR:
            return None
        return header(query[:2], QR | (query[2] & (0x78 | RD)), SERVFAIL, qd=0)
