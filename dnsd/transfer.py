"""Zone transfers out: AXFR (RFC 5936) and IXFR (RFC 1995), behind an address ACL and TSIG (RFC 8945).

A transport hands this module every query it `claims` (AXFR and IXFR, and, when TSIG keys are
configured, any query that carries a TSIG record). Deciding what to answer is synchronous and
pure: the ACL, the TSIG check, the zone, the serial. A TCP transfer then streams its records as
a sequence of messages, each up to MESSAGE_TARGET bytes plus one record, each signed when the
request was (RFC 8945 §5.3.1: every message's MAC covers the previous MAC), and the writer
yields to the event loop every SLICE seconds so that 100,000 pods do not stall other queries.

Answers: AXFR over UDP, a transfer from outside `--transfer-to`, or an unsigned transfer when
keys are configured get REFUSED; a bad TSIG gets NOTAUTH with the TSIG error BADKEY, BADSIG or
BADTIME; a name that is not a zone apex gets NOTAUTH; data not synced yet gets SERVFAIL. IXFR
over UDP gets the current SOA alone (RFC 1995 §2: up to date, or "ask again over TCP").
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.TSIG
import dns.tsig
from prometheus_client.core import CounterMetricFamily

from dnsd import wire
from dnsd.config import IPNetwork
from dnsd.wire import AA, AXFR, COUNTS, FORMERR, IXFR, NOERROR, QR, RD, REFUSED, SERVFAIL
from dnsd.zone import RR, RR_FIXED, Index

log = logging.getLogger("dnsd.transfer")

SOA, TSIG = 6, 250
CLASS_IN, CLASS_ANY = 1, 255
NOTAUTH = 9
MESSAGE_TARGET = 16 * 1024
"""A message is closed once it passes this size (RFC 5936 allows 64 KiB; smaller messages let
the loop breathe between them and cost one TSIG each)."""
SLICE = 0.002
"""Longest stretch of building messages before the loop gets a turn."""
WRITE_HIGH_WATER = 256 * 1024
STALL_TIMEOUT = 30.0
"""Seconds a transfer waits for the client to read before the connection is given up."""
TSIG_FUDGE = 300
_TSIG_TAIL = b"\x00\xfa\x00\xff\x00\x00\x00\x00"
"""Type TSIG, class ANY, TTL 0: how a TSIG record looks after its owner name."""


class KeyFileError(ValueError):
    """The TSIG key file cannot be used."""


_KEY_BLOCK = re.compile(r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>[^}]*)\}\s*;?', re.IGNORECASE)
_KEY_FIELD = re.compile(r'(?P<field>algorithm|secret)\s+"?(?P<value>[^";\s]+)"?\s*;', re.IGNORECASE)
_LINE = re.compile(r"^(?P<name>[^:\s]+):(?P<algorithm>[^:\s]+):(?P<secret>\S+)$")


def parse_keys(text: str, source: str = "--tsig-key") -> dict[dns.name.Name, dns.tsig.Key]:
    """TSIG keys from text: BIND's `key "NAME" { algorithm ALG; secret "BASE64"; };` blocks (what
    `tsig-keygen` writes) or `NAME:ALGORITHM:BASE64` lines; `#` starts a comment in the latter."""
    keys: dict[dns.name.Name, dns.tsig.Key] = {}
    found: list[tuple[str, str, str]] = []
    for block in _KEY_BLOCK.finditer(text):
        fields = {m["field"].lower(): m["value"] for m in _KEY_FIELD.finditer(block["body"])}
        if "secret" not in fields:
            raise KeyFileError(f"{source}: key {block['name']!r} has no secret")
        found.append((block["name"], fields.get("algorithm", "hmac-sha256"), fields["secret"]))
    if not found:
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            match = _LINE.match(line)
            if match is None:
                raise KeyFileError(f"{source}: line {number} is not NAME:ALGORITHM:SECRET nor a BIND key block")
            found.append((match["name"], match["algorithm"], match["secret"]))
    for name_text, algorithm_text, secret in found:
        try:
            name = dns.name.from_text(name_text).canonicalize()
            algorithm = dns.name.from_text(algorithm_text.lower())
            key = dns.tsig.Key(name, secret, algorithm)
            dns.tsig.get_context(key)  # an unknown algorithm fails here, not at the first transfer
        except (dns.exception.DNSException, ValueError, NotImplementedError, TypeError) as exc:
            raise KeyFileError(f"{source}: key {name_text!r}: {exc or type(exc).__name__}") from None
        if not key.secret:
            raise KeyFileError(f"{source}: key {name_text!r} has an empty secret")
        keys[name] = key
    if not keys:
        raise KeyFileError(f"{source}: no key found")
    return keys


def load_keys(path: str) -> dict[dns.name.Name, dns.tsig.Key]:
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"--tsig-key: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_keys(text, f"--tsig-key {path}")


def serial_newer(a: int, b: int) -> bool:
    """RFC 1982: whether serial a is greater than serial b."""
    return a != b and (a - b) & 0xFFFFFFFF < 0x80000000


class Signer:
    """Signs a response, or each message of a multi-message response, for one request."""

    def __init__(self, key: dns.tsig.Key, request: dns.rdtypes.ANY.TSIG.TSIG) -> None:
        self.key = key
        self.request_mac: bytes | None = request.mac
        self.original_id = request.original_id
        self._context: object | None = None

    def sign(self, message: bytes, error: int = 0, other: bytes = b"") -> bytes:
        now = int(time.time())
        rdata = dns.rdtypes.ANY.TSIG.TSIG(
            dns.rdataclass.ANY, dns.rdatatype.TSIG, self.key.algorithm, now, TSIG_FUDGE, b"", self.original_id,
            error, other,
        )  # fmt: skip
        # multi=True throughout: the first digest is the single-message digest, and the
        # context it returns chains the next message's MAC to this one's.
        signed, self._context = dns.tsig.sign(message, self.key, rdata, now, self.request_mac, self._context, True)
        self.request_mac = None
        return _append_tsig(message, self.key.name, signed)


def _append_tsig(message: bytes, key_name: dns.name.Name, rdata: dns.rdtypes.ANY.TSIG.TSIG) -> bytes:
    rd = rdata.to_wire()
    assert rd is not None
    record = key_name.to_wire() + RR_FIXED.pack(TSIG, CLASS_ANY, 0, len(rd)) + rd
    arcount = int.from_bytes(message[10:12], "big") + 1
    return message[:10] + arcount.to_bytes(2, "big") + message[12:] + record


def _unsigned_error(qid: bytes, flags1: int, question: bytes, tsig: dns.rrset.RRset, error: int) -> bytes:
    """NOTAUTH with a TSIG error and an empty MAC (RFC 8945 §5.3.2: BADKEY, BADSIG)."""
    request = tsig[0]
    rdata = request.replace(mac=b"", error=error, other=b"")
    message = wire.header(qid, flags1, NOTAUTH, qd=1 if question else 0) + question
    return _append_tsig(message, tsig.name, rdata)


class Compressor:
    """Owner names of one message as pointers to names written earlier in it (RFC 1035 §4.1.4)."""

    __slots__ = ("offsets",)

    def __init__(self) -> None:
        self.offsets: dict[bytes, int] = {}

    def encode(self, name: bytes, at: int) -> bytes:
        """name (uncompressed wire) as it is written at offset `at`, remembering its suffixes."""
        offsets = self.offsets
        pointer = offsets.get(name)
        if pointer is not None:
            return struct.pack("!H", 0xC000 | pointer)
        pos, end = 0, len(name) - 1
        while pos < end:
            if at + pos < 0x4000:
                offsets[name[pos:]] = at + pos
            pos += name[pos] + 1
            pointer = offsets.get(name[pos:]) if pos < end else None
            if pointer is not None:
                return name[:pos] + struct.pack("!H", 0xC000 | pointer)
        return name


BREATHE_EVERY = 8
"""Records between two points where a transfer may give the loop a turn (None in the stream)."""


def build_messages(
    qid: bytes, flags1: int, question: bytes, opt: bytes, records: Iterable[RR], target: int = MESSAGE_TARGET
) -> Iterator[bytes | None]:
    """The messages of one transfer: records in order, a message closed once it passes target.
    The first message carries the question; every message carries opt (our OPT, or nothing).
    Every BREATHE_EVERY records a None says "the caller may yield to the loop here"."""
    first = True
    parts: list[bytes] = []
    count = 0
    size = 0
    compressor = Compressor()
    head = 12 + len(question)
    for owner, rdtype, ttl, rdata in records:
        encoded = compressor.encode(owner, head + size)
        record = encoded + RR_FIXED.pack(rdtype, CLASS_IN, ttl, len(rdata)) + rdata
        parts.append(record)
        count += 1
        size += len(record)
        if not count % BREATHE_EVERY:
            yield None
        if head + size >= target:
            yield (
                wire.header(qid, flags1, NOERROR, an=count, ar=1 if opt else 0, qd=1 if first else 0)
                + (question if first else b"")
                + b"".join(parts)
                + opt
            )
            first, parts, count, size, head = False, [], 0, 0, 12
            compressor = Compressor()
    if parts or first:
        yield (
            wire.header(qid, flags1, NOERROR, an=count, ar=1 if opt else 0, qd=1 if first else 0)
            + (question if first else b"")
            + b"".join(parts)
            + opt
        )


@dataclass
class TransferStats:
    """What transfers did, for /metrics."""

    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(kind: axfr|ixfr|other, result: full|incremental|uptodate|refused|notauth|...) -> count"""
    messages: int = 0
    bytes: int = 0


@dataclass
class Plan:
    """A transfer to stream: its messages, and what to count when done."""

    kind: str
    zone: str
    serial: int
    result: str
    messages: Iterator[bytes | None]
    """The messages to send, with None where the sender may give the loop a turn."""
    signer: Signer | None


class Transfers:
    """Serves zone transfers from one index to the addresses in `allowed`, with TSIG when keyed."""

    def __init__(
        self,
        index: Index,
        allowed: Sequence[IPNetwork],
        keys: dict[dns.name.Name, dns.tsig.Key] | None = None,
        *,
        target: int = MESSAGE_TARGET,
    ) -> None:
        self.index = index
        self.allowed = tuple(allowed)
        self.keys = dict(keys or {})
        self.target = target
        self.stats = TransferStats()

    # -- what the transports ask ---------------------------------------------------------------

    def claims(self, query: bytes) -> bool:
        """Whether query is for this module: a transfer, or (with keys) a signed query."""
        if len(query) < 17 or query[2] & 0xF8:  # QR set or an opcode other than QUERY
            return False
        end = query.find(b"\x00", 12)
        if end > 0 and query[end + 1 : end + 3] in (b"\x00\xfc", b"\x00\xfb"):
            return True
        return bool(self.keys) and query[10:12] != b"\x00\x00" and _TSIG_TAIL in query[-400:]

    def allows(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)

    def respond(self, query: bytes, host: str, *, tcp: bool = False) -> bytes | None:
        """The one response to a claimed query (UDP, or anything that is not a TCP transfer)."""
        decided = self._decide_safely(query, host, tcp=tcp)
        if isinstance(decided, Plan):  # only TCP plans transfers, and TCP goes through serve()
            raise AssertionError("a transfer planned for a single response")
        return decided

    async def serve(self, query: bytes, host: str, writer: asyncio.StreamWriter) -> None:
        """Answer a claimed query on a TCP connection: one response, or a transfer's messages."""
        loop = asyncio.get_running_loop()
        slice_end = loop.time() + SLICE  # deciding (the index's snapshot) counts against the first slice
        started = time.monotonic()
        decided = self._decide_safely(query, host, tcp=True)
        if decided is None:
            return
        if isinstance(decided, bytes):
            writer.write(len(decided).to_bytes(2, "big") + decided)
            return
        messages = sent = 0
        try:
            for message in decided.messages:
                if message is None:
                    if loop.time() > slice_end:
                        await asyncio.sleep(0)
                        slice_end = loop.time() + SLICE
                    continue
                if decided.signer is not None:
                    message = decided.signer.sign(message)
                writer.write(len(message).to_bytes(2, "big") + message)
                messages += 1
                sent += len(message)
                if writer.transport.get_write_buffer_size() > WRITE_HIGH_WATER:
                    async with asyncio.timeout(STALL_TIMEOUT):  # a secondary that stopped reading
                        await writer.drain()
                    slice_end = loop.time() + SLICE
                elif loop.time() > slice_end:
                    await asyncio.sleep(0)
                    slice_end = loop.time() + SLICE
        except (ConnectionError, TimeoutError):
            raise  # the transport's to handle: the client went away or stopped reading
        except Exception:
            # A bug while building the stream: the client sees the connection end (it cannot
            # take a response after messages already sent) and retries; the server goes on.
            log.exception("internal error during a transfer to %s; connection closed", host)
            self.stats.requests[(decided.kind, "failed")] += 1
            writer.close()
            return
        finally:
            self.stats.messages += messages
            self.stats.bytes += sent
        self.stats.requests[(decided.kind, decided.result)] += 1
        log.info(
            "%s %s to %s: %s, serial %d, %d messages, %d bytes in %.3fs",
            decided.kind.upper(), decided.zone, host, decided.result, decided.serial, messages, sent,
            time.monotonic() - started,
        )  # fmt: skip

    def metrics(self, notify_results: Counter[str] | None = None) -> Iterator[CounterMetricFamily]:
        """Transfer and NOTIFY counters for /metrics (read at scrape time)."""
        requests = CounterMetricFamily(
            "dnsd_transfer_requests",
            "Zone transfer requests (and TSIG-signed queries), by outcome",
            labels=["type", "result"],
        )
        for (kind, result), count in sorted(self.stats.requests.items()):
            requests.add_metric([kind, result], count)
        yield requests
        yield CounterMetricFamily("dnsd_transfer_messages", "Zone transfer messages sent", value=self.stats.messages)
        yield CounterMetricFamily("dnsd_transfer_bytes", "Zone transfer bytes sent", value=self.stats.bytes)
        notifies = CounterMetricFamily("dnsd_notify_messages", "NOTIFY messages sent, by outcome", labels=["result"])
        for result in ("acknowledged", "error", "timeout"):
            notifies.add_metric([result], (notify_results or Counter())[result])
        yield notifies

    # -- deciding ------------------------------------------------------------------------------

    def _decide_safely(self, query: bytes, host: str, *, tcp: bool) -> bytes | Plan | None:
        """`decide`, with a bug answered as SERVFAIL rather than ending the connection or the reader."""
        try:
            return self.decide(query, host, tcp=tcp)
        except Exception:
            log.exception("internal error answering a transfer request; sent SERVFAIL")
            self.stats.requests[("other", "servfail")] += 1
            if len(query) < 12 or query[2] & QR:
                return None
            return wire.header(query[:2], QR | (query[2] & RD), SERVFAIL, qd=0)

    def decide(self, query: bytes, host: str, *, tcp: bool) -> bytes | Plan | None:
        """What to answer: a response, a transfer to stream, or None to drop."""
        if len(query) < 12 or query[2] & QR:
            return None
        qid = query[:2]
        try:
            # First without checking the TSIG, to know what was asked and with which key.
            message = dns.message.from_wire(query, keyring=_accept_any_tsig, ignore_trailing=False)
        except dns.message.ShortHeader:
            return None
        except Exception:
            self.stats.requests[("other", "formerr")] += 1
            return wire.header(qid, QR | (query[2] & RD), FORMERR, qd=0)
        flags1 = QR | AA | (query[2] & RD)
        question = wire.question_of(message)
        qtype = message.question[0].rdtype if len(message.question) == 1 else None
        kind = "axfr" if qtype == AXFR else "ixfr" if qtype == IXFR else "other"
        opt = b"" if message.edns < 0 else wire.OPT_DO if message.ednsflags & 0x8000 else wire.OPT_PLAIN
        signer: Signer | None = None
        if message.tsig is not None:
            checked = self._check_tsig(query, message, qid, flags1, question)
            if isinstance(checked, bytes):
                self.stats.requests[(kind, "notauth")] += 1
                return checked
            signer = checked

        def error(rcode: int, result: str) -> bytes:
            self.stats.requests[(kind, result)] += 1
            flags = flags1 & ~AA if rcode == REFUSED else flags1
            response = wire.header(qid, flags, rcode, ar=1 if opt else 0, qd=1 if question else 0) + question + opt
            return signer.sign(response) if signer is not None else response

        if qtype not in (AXFR, IXFR):
            if signer is None:  # claimed for a TSIG it turned out not to carry
                return wire.respond(query, self.index, tcp=tcp)
            reply = wire.respond(_without_tsig(query, message), self.index, tcp=tcp)
            return None if reply is None else _signed_within(reply, signer, tcp, message)
        if len(message.question) != 1 or message.edns > 0:
            return error(FORMERR, "formerr")
        if not self.allows(host):
            log.info("%s from %s refused: outside --transfer-to", kind.upper(), host)
            return error(REFUSED, "refused")
        if self.keys and signer is None:
            log.info("%s from %s refused: not signed with a --tsig-key", kind.upper(), host)
            return error(REFUSED, "refused")
        if qtype == AXFR and not tcp:
            return error(REFUSED, "refused")
        rrset = message.question[0]
        apex = rrset.name.canonicalize().to_wire()
        if rrset.rdclass != dns.rdataclass.IN or apex not in self.index.zones:
            return error(NOTAUTH, "notauth")
        if not self.index.synced:
            return error(SERVFAIL, "servfail")
        now = time.time()
        if qtype == IXFR:
            client = _client_serial(message, rrset.name)
            if client is None:
                return error(FORMERR, "formerr")
            if not tcp:
                self.index.advance_serial(now)
                result = "uptodate" if not serial_newer(self.index.serial, client) else "tcp"
                self.stats.requests[(kind, result)] += 1
                soa = self.index.soa_record(apex, self.index.serial)
                response = b"".join(m for m in build_messages(qid, flags1, question, opt, [soa], 1 << 20) if m)
                return signer.sign(response) if signer is not None else response
            changes = self.index.changes_since(apex, client, now)
            current = self.index.serial
            if changes == [] or (changes is None and not serial_newer(current, client)):
                records: Iterable[RR] = [self.index.soa_record(apex, current)]
                result = "uptodate"
            elif changes is not None and sum(len(d[2]) + len(d[3]) for d in changes) <= self.index.record_count:
                records = self._incremental(apex, current, changes)
                result = "incremental"
            else:
                # The journal does not reach back, or its differences outweigh the zone (a relist
                # renamed everything): the whole zone, AXFR-style (RFC 1995 §4 allows it).
                current, records = self._full(apex, now)
                result = "full"
        else:
            (current, records), result = self._full(apex, now), "full"
        messages = build_messages(qid, flags1, question, opt, records, self.target)
        return Plan(kind, rrset.name.to_text(), current, result, messages, signer)

    def _check_tsig(
        self, query: bytes, message: dns.message.Message, qid: bytes, flags1: int, question: bytes
    ) -> Signer | bytes:
        """The signer for responses to a validly signed query, else the NOTAUTH response."""
        tsig = message.tsig
        assert tsig is not None
        key = self.keys.get(tsig.name.canonicalize())
        if key is None or key.algorithm != tsig[0].algorithm:
            log.info("TSIG key %s unknown (or another algorithm): BADKEY", tsig.name)
            return _unsigned_error(qid, flags1, question, tsig, dns.rcode.BADKEY)
        try:
            dns.message.from_wire(query, keyring={key.name: key}, ignore_trailing=False)
        except dns.tsig.BadTime:
            signer = Signer(key, tsig[0])
            response = wire.header(qid, flags1, NOTAUTH, qd=1 if question else 0) + question
            return signer.sign(response, dns.rcode.BADTIME, struct.pack("!Q", int(time.time()))[2:])
        except (dns.tsig.BadSignature, dns.tsig.BadKey, dns.tsig.BadAlgorithm, dns.exception.DNSException):
            log.info("TSIG with key %s does not verify: BADSIG", tsig.name)
            return _unsigned_error(qid, flags1, question, tsig, dns.rcode.BADSIG)
        return Signer(key, tsig[0])

    def _full(self, apex: bytes, now: float) -> tuple[int, Iterator[RR]]:
        """The serial, and SOA, every other record, SOA (RFC 5936 §2.2)."""
        serial, records = self.index.zone_snapshot(apex, now)

        def framed() -> Iterator[RR]:
            soa = next(records)
            yield soa
            yield from records
            yield soa

        return serial, framed()

    def _incremental(self, apex: bytes, current: int, changes: list) -> Iterator[RR]:
        """RFC 1995 §4: the new SOA, then per step the old SOA, deletions, the new SOA, additions;
        the new SOA again at the end."""
        soa = self.index.soa_record(apex, current)
        yield soa
        for old, new, removed, added in changes:
            yield self.index.soa_record(apex, old)
            yield from removed
            yield self.index.soa_record(apex, new)
            yield from added
        yield soa


def _accept_any_tsig(_message: dns.message.Message, _name: dns.name.Name) -> bool:
    """A dnspython keyring that reads a TSIG without checking it (`False`: known, not verified)."""
    return False


def _client_serial(message: dns.message.Message, apex: dns.name.Name) -> int | None:
    """The serial of the SOA an IXFR query carries in its authority section (RFC 1995 §3)."""
    for rrset in message.authority:
        if rrset.rdtype == SOA and rrset.name == apex and len(rrset) == 1:
            return int(rrset[0].serial)
    return None


def _without_tsig(query: bytes, message: dns.message.Message) -> bytes:
    """The query with its (last, verified) TSIG record cut off, for the ordinary engine."""
    tsig = message.tsig
    assert tsig is not None
    rdata = tsig[0].to_wire()
    assert rdata is not None
    owner = tsig.name.to_wire()
    start = len(query) - len(owner) - 10 - len(rdata)
    if start < 12 or query[start : start + len(owner)].lower() != owner.lower():
        start = len(query) - 12 - len(rdata)  # the owner was a compression pointer
    arcount = int.from_bytes(query[10:12], "big") - 1
    return query[:10] + arcount.to_bytes(2, "big") + query[12:start]


def _signed_within(reply: bytes, signer: Signer, tcp: bool, message: dns.message.Message) -> bytes:
    """reply signed; over UDP, cut to header and question with TC when the TSIG would not fit."""
    signed = signer.sign(reply)
    limit = wire.TCP_MAXIMUM if tcp else max(wire.UDP_MINIMUM, min(message.payload, wire.UDP_PAYLOAD))
    if message.edns < 0 and not tcp:
        limit = wire.UDP_MINIMUM
    if len(signed) <= limit:
        return signed
    question = wire.question_of(message)
    truncated = reply[:2] + bytes((reply[2] | 0x02, reply[3])) + COUNTS.pack(1 if question else 0, 0, 0, 0)
    return signer.sign(truncated + question)
