"""Reading what a resolver sent to dnsd (the tap's exchanges): which questions, in which case,
over which transport, how often, and whether anything took a retry path."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from .tap import Exchange

_TC = 0x02  # in the third header byte


@dataclass(frozen=True)
class Question:
    """A question as sent: `raw` is the wire form (name in its case, type, class)."""

    raw: bytes
    name: str
    """Presentation form as sent, with the trailing dot."""
    qtype: int

    @property
    def key(self) -> tuple[str, int]:
        """What the question asks, whatever the case it was spelled in."""
        return self.name.lower(), self.qtype

    def __str__(self) -> str:
        return f"{self.name} {dns.rdatatype.to_text(self.qtype)}"


def question(message: bytes) -> Question | None:
    """The one question of a message, parsed by hand so that the case survives; None when the
    message is not a one-question message with an uncompressed name."""
    if len(message) < 12 or struct.unpack("!H", message[4:6])[0] != 1:
        return None
    labels: list[str] = []
    position = 12
    while True:
        if position >= len(message):
            return None
        length = message[position]
        if length == 0:
            break
        if length & 0xC0:
            return None
        labels.append(message[position + 1 : position + 1 + length].decode("latin-1"))
        position += 1 + length
    end = position + 5
    if end > len(message):
        return None
    qtype = struct.unpack("!H", message[position + 1 : position + 3])[0]
    return Question(message[12:end], ".".join(labels) + ".", qtype)


def _self_and_ancestors(name: str) -> list[str]:
    labels = name.rstrip(".").split(".")
    return [".".join(labels[i:]) + "." for i in range(len(labels))]


def _unusable(reply: bytes) -> list[str]:
    """What makes a resolver discard an authoritative reply and ask again: no AA (BIND's
    static-stub calls it lame), or a negative answer without the zone's SOA (Unbound throws it
    away and re-sends up to outbound-msg-retry times)."""
    try:
        message = dns.message.from_wire(reply)
    except dns.exception.DNSException as exc:
        return [f"reply does not parse ({exc})"]
    problems = []
    if message.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) and not message.flags & dns.flags.TC:
        if not message.flags & dns.flags.AA:
            problems.append("reply without AA")
        if not message.answer and not any(rrset.rdtype == dns.rdatatype.SOA for rrset in message.authority):
            problems.append("negative reply without SOA")
    return problems


def rcode(message: bytes) -> int:
    return message[3] & 0x0F


def truncated(message: bytes) -> bool:
    return bool(message[2] & _TC)


def asked(exchanges: Iterable[Exchange]) -> set[tuple[str, int]]:
    """The questions that reached dnsd, case-folded."""
    return {q.key for exchange in exchanges if (q := question(exchange.query)) is not None}


def randomised_case(exchanges: Iterable[Exchange]) -> bool:
    """Whether any query spelled its name in mixed case (0x20 at work)."""
    for exchange in exchanges:
        q = question(exchange.query)
        if q is not None and q.name != q.name.lower() and q.name != q.name.upper():
            return True
    return False


def retry_problems(
    exchanges: Sequence[Exchange], needs_tcp: set[tuple[str, int]], *, nxdomain_revalidation: bool = False
) -> list[str]:
    """Everything in one resolution that shows a retry path: a query without reply (timeout), an
    rcode other than NOERROR/NXDOMAIN (FORMERR, SERVFAIL...), a question not echoed byte for byte
    (0x20 resolvers re-ask), the same question sent twice, and TCP where truncation did not call
    for it. `needs_tcp` are the questions whose answer does not fit in UDP: for each, exactly one
    truncated UDP reply and then one TCP query.

    `nxdomain_revalidation`: a QNAME-minimising Unbound that gets NXDOMAIN for a minimised name
    (type A) resolves that name once more for its validator ("schedule NXDOMAIN validation" at
    verbosity 4), minimising again from the zone's apex: the name and its ancestors are asked a
    second time (type A), whatever the server answered. Those repeats are not retries."""
    problems: list[str] = []
    sent: Counter[tuple[str, str, int]] = Counter()
    nxdomain: set[tuple[str, int]] = set()
    truncated_udp: set[tuple[str, int]] = set()
    for exchange in exchanges:
        q = question(exchange.query)
        if q is None:
            problems.append(f"{exchange.proto} query without a single plain question: {exchange.query.hex()}")
            continue
        sent[(exchange.proto, *q.key)] += 1
        if exchange.reply is None:
            problems.append(f"no reply to {exchange.proto} {q} (a timeout for the resolver)")
            continue
        if rcode(exchange.reply) == dns.rcode.NXDOMAIN:
            nxdomain.add(q.key)
        elif rcode(exchange.reply) != dns.rcode.NOERROR:
            problems.append(f"{dns.rcode.to_text(rcode(exchange.reply))} to {exchange.proto} {q}")
        problems += [f"{problem}: {exchange.proto} {q}" for problem in _unusable(exchange.reply)]
        echoed = question(exchange.reply)
        if echoed is None or echoed.raw != q.raw:
            problems.append(f"question not echoed as sent: {q} -> {echoed}")
        if exchange.proto == "udp" and truncated(exchange.reply):
            truncated_udp.add(q.key)
            if q.key not in needs_tcp:
                problems.append(f"truncated UDP reply to {q}, which should fit")
        if exchange.proto == "tcp" and q.key not in truncated_udp:
            problems.append(f"TCP query for {q} without a truncated UDP reply before it")
    revalidated = {
        ancestor
        for name, qtype in nxdomain
        if nxdomain_revalidation and qtype == dns.rdatatype.A
        for ancestor in _self_and_ancestors(name)
    }
    for (proto, name, qtype), count in sent.items():
        if count > 1 + (proto == "udp" and qtype == dns.rdatatype.A and name in revalidated):
            problems.append(f"{name} {dns.rdatatype.to_text(qtype)} sent {count} times over {proto}")
    for name, qtype in needs_tcp:
        if sent[("udp", name, qtype)] != 1 or sent[("tcp", name, qtype)] != 1 or (name, qtype) not in truncated_udp:
            problems.append(
                f"{name} {dns.rdatatype.to_text(qtype)}: expected one truncated UDP reply and one TCP query, "
                f"saw {sent[('udp', name, qtype)]} UDP and {sent[('tcp', name, qtype)]} TCP"
            )
    return problems


def timeline(exchanges: Sequence[Exchange]) -> str:
    """The exchanges one per line, for a failure message: when sent (ms after the first), over
    what, the question as sent, and dnsd's reply (rcode, flags, ms taken) or its absence."""
    if not exchanges:
        return "(nothing sent to dnsd)"
    start = exchanges[0].sent_at
    lines = []
    for exchange in exchanges:
        line = f"{(exchange.sent_at - start) * 1000:8.1f} ms {exchange.proto} {question(exchange.query)}"
        if exchange.reply is None or exchange.replied_at is None:
            line += " -> no reply"
        else:
            taken = (exchange.replied_at - exchange.sent_at) * 1000
            line += f" -> in {taken:.1f} ms: {_summary(exchange.reply)}"
        lines.append(line)
    return "\n".join(lines)


def _summary(reply: bytes) -> str:
    """rcode, flags and the records of a reply, on one line."""
    try:
        message = dns.message.from_wire(reply)
    except dns.exception.DNSException as exc:
        return f"unparseable ({exc}): {reply.hex()}"
    sections = [
        f"{label} {' | '.join(rrset.to_text() for rrset in section)}"
        for label, section in (("an", message.answer), ("ns", message.authority), ("ar", message.additional))
        if section
    ]
    head = f"{dns.rcode.to_text(message.rcode())} [{dns.flags.to_text(message.flags)}]"
    return " ".join([head, *sections])
