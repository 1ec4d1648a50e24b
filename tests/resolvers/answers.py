"""Comparing an answer that came through a resolver with dnsd's own."""

from __future__ import annotations

import dns.message
import dns.query
import dns.rcode
import dns.rdatatype

# Answer RRsets keyed by (owner, type), owners case-folded: (TTL, record data as text).
RRsets = dict[tuple[str, str], tuple[int, frozenset[str]]]


def answer_rrsets(message: dns.message.Message) -> RRsets:
    return {
        (rrset.name.to_text().lower(), dns.rdatatype.to_text(rrset.rdtype)): (
            rrset.ttl,
            frozenset(rdata.to_text().lower() for rdata in rrset),
        )
        for rrset in message.answer
    }


def differences(direct: dns.message.Message, through: dns.message.Message) -> list[str]:
    """How the answer through a resolver differs from dnsd's direct one: the rcode, and the
    answer RRsets as sets (dnsd rotates records); a cache may only lower a TTL, never raise it."""
    problems = []
    if through.rcode() != direct.rcode():
        problems.append(f"rcode {dns.rcode.to_text(through.rcode())}, directly {dns.rcode.to_text(direct.rcode())}")
    direct_rrsets, through_rrsets = answer_rrsets(direct), answer_rrsets(through)
    if {key: data for key, (_, data) in through_rrsets.items()} != {
        key: data for key, (_, data) in direct_rrsets.items()
    }:
        problems.append(f"answer {sorted(through_rrsets.items())}, directly {sorted(direct_rrsets.items())}")
    for key, (ttl, _) in through_rrsets.items():
        if key in direct_rrsets and ttl > direct_rrsets[key][0]:
            problems.append(f"TTL of {key} is {ttl}, above dnsd's {direct_rrsets[key][0]}")
    return problems


def mixed_case(name: str) -> str:
    """The name with every other letter upper-cased: what a 0x20 client sends, reproducibly."""
    spelled = []
    upper = False
    for char in name:
        spelled.append(char.upper() if upper else char)
        upper = upper != char.isalpha()
    return "".join(spelled)


def ask(name: str, qtype: str, port: int, *, timeout: float = 5.0) -> tuple[dns.message.Message, bool]:
    """Asks 127.0.0.1:port over UDP (EDNS, 1232 bytes, RD=1), and over TCP if the reply is
    truncated, as a stub resolver does; returns the reply and whether TCP was needed."""
    query = dns.message.make_query(mixed_case(name), qtype, use_edns=0, payload=1232)
    return dns.query.udp_with_fallback(query, "127.0.0.1", port=port, timeout=timeout)
