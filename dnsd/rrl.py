"""Response rate limiting (RRL) for UDP, as NSD, Knot DNS and BIND have it (pure, no I/O).

A UDP source address can be forged, so an open authoritative server can be made to send its
answers to a victim (reflection), bigger than the queries (amplification). RRL bounds what any
one network can receive: responses are counted per *key*, and a key that goes over
`rate` responses per second has its further responses dropped, except every `slip`-th, which
is sent as an empty TC=1 reply so that a real client behind that network retries over TCP
(a forged source cannot complete a TCP handshake, and TCP is not limited).

The key, as in BIND's and Knot's RRL ("identical responses counted together"):

- the source network: the /24 of an IPv4 address, the /56 of an IPv6 address (one customer's
  delegation), IPv4-mapped IPv6 counted as IPv4;
- the response class: positive answer, NODATA, NXDOMAIN, error, truncated;
- the name: the question's name (lower-cased) and type for answers and NODATA; the *zone* for
  NXDOMAIN (so a flood of random names in one zone shares one budget, as Knot's and NSD's
  "imputed name" does); none for errors (every REFUSED, FORMERR, NOTIMP, SERVFAIL, BADVERS from
  one network shares one budget).

Each key has a token bucket: `rate` tokens a second, at most `rate` saved up (a one-second
burst). The table is fixed-size (`TABLE_SIZE` slots, about 1.5 MiB) and indexed by the key's
hash (Python's hash of bytes is salted per process, so slots cannot be aimed at); a key whose
slot holds another key takes the slot over with a full bucket, so memory never grows and a
flood of distinct keys costs nothing but table churn, as in NSD.
"""

from __future__ import annotations

import socket
from array import array
from time import monotonic

TABLE_SIZE = 1 << 16
_MASK = TABLE_SIZE - 1
_CACHE_LIMIT = 4096
"""Source addresses whose network prefix is remembered (parsing one costs about 0.3 us)."""
_MAPPED = b"\x00" * 10 + b"\xff\xff"

_POSITIVE, _NODATA, _NXDOMAIN, _ERROR, _TRUNCATED = b"P", b"D", b"X", b"E", b"T"


def source_prefix(host: str) -> bytes:
    """The network a source address is counted in: /24 for IPv4, /56 for IPv6."""
    host = host.partition("%")[0]  # a link-local scope
    if ":" not in host:
        return b"4" + socket.inet_pton(socket.AF_INET, host)[:3]
    packed = socket.inet_pton(socket.AF_INET6, host)
    if packed[:12] == _MAPPED:
        return b"4" + packed[12:15]
    return b"6" + packed[:7]


def _question_end(reply: bytes) -> int:
    """Offset after the question's name and type/class (12 when there is no question)."""
    if reply[5] == 0 and reply[4] == 0:
        return 12
    pos = 12
    for _ in range(128):
        length = reply[pos]
        if length == 0 or length >= 0xC0:
            return pos + (1 if length == 0 else 2) + 4
        pos += length + 1
    return pos


def response_key(reply: bytes) -> bytes:
    """The class and imputed name of a response: what 'identical responses' share."""
    rcode = reply[3] & 0x0F
    if rcode == 3:  # NXDOMAIN: the zone, found where the SOA's owner points into the question
        end = _question_end(reply)
        pointer = (reply[end] << 8 | reply[end + 1]) if len(reply) > end + 1 else 0
        start = pointer & 0x3FFF if pointer >= 0xC000 else 12
        return _NXDOMAIN + reply[start : end - 4].lower()
    if rcode or reply[4:6] == b"\x00\x00":
        return _ERROR
    name_end = reply.find(b"\x00", 12) + 1
    name = reply[12 : name_end + 2].lower()  # the name and the type
    if reply[2] & 0x02:
        return _TRUNCATED + name
    if reply[6:8] != b"\x00\x00":
        return _POSITIVE + name
    if reply[8:10] != b"\x00\x00":
        return _NODATA + name
    return _ERROR  # NOERROR with nothing in it: BADVERS (its rcode lives in the OPT record)


def truncated(reply: bytes) -> bytes:
    """The slip reply: the same header with TC=1 and only the question (no records, no OPT)."""
    try:
        end = min(_question_end(reply), len(reply))
    except IndexError:  # not a reply dnsd makes: the header alone
        end = 12
    return reply[:2] + bytes((reply[2] | 0x02, reply[3])) + reply[4:6] + b"\x00\x00\x00\x00\x00\x00" + reply[12:end]


class ResponseRateLimiter:
    """Decides, per UDP response, whether it is sent, dropped, or sent as a TC=1 slip."""

    def __init__(self, rate: int, slip: int = 2, table_size: int = TABLE_SIZE) -> None:
        if table_size & (table_size - 1):
            raise ValueError("table_size must be a power of two")
        self.rate = float(rate)
        self.slip = slip
        self.mask = table_size - 1
        self.tags = array("q", bytes(8 * table_size))
        self.tokens = array("d", bytes(8 * table_size))
        self.stamps = array("d", bytes(8 * table_size))
        self.dropped = 0
        self.truncated = 0
        self._prefixes: dict[str, bytes] = {}
        self._limited = 0

    def limit(self, host: str, reply: bytes, now: float | None = None) -> bytes | None:
        """The reply to send to host: reply itself, its TC=1 slip, or None (drop)."""
        prefix = self._prefixes.get(host)
        if prefix is None:
            if len(self._prefixes) >= _CACHE_LIMIT:
                self._prefixes.clear()
            try:
                prefix = source_prefix(host)
            except OSError:
                prefix = host.encode()
            self._prefixes[host] = prefix
        try:
            key = hash(prefix + response_key(reply))
        except IndexError:  # not a reply dnsd makes; count it with the errors
            key = hash(prefix + _ERROR)
        if now is None:
            now = monotonic()
        slot = key & self.mask
        rate = self.rate
        if self.tags[slot] != key:
            self.tags[slot] = key
            self.tokens[slot] = rate - 1.0
            self.stamps[slot] = now
            return reply
        tokens = self.tokens[slot] + (now - self.stamps[slot]) * rate
        if tokens > rate:
            tokens = rate
        self.stamps[slot] = now
        if tokens >= 1.0:
            self.tokens[slot] = tokens - 1.0
            return reply
        self.tokens[slot] = tokens
        self._limited += 1
        if self.slip and self._limited % self.slip == 0:
            self.truncated += 1
            return truncated(reply)
        self.dropped += 1
        return None
