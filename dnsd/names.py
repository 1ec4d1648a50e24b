"""The naming scheme and the address policy (pure).

Owner names for zone Z:

    <svc>.<ns>.svc.Z                     Service: addresses of its ready endpoints
    <ep>.<svc>.<ns>.svc.Z                one endpoint (EndpointSlice hostname, else the pod name)
    _<port>._<proto>.<svc>.<ns>.svc.Z    SRV, one per ready named endpoint per named port
    <pod>.<ns>.pod.Z                     a pod's own addresses
    reverse name of an address           PTR -> <pod>.<ns>.pod.Z (first forward zone)
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from socket import AF_INET, AF_INET6, inet_pton  # text <-> packed conversions only: no I/O

import dns.name

from dnsd.config import IPNetwork

_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})?")
MAX_NAME_OCTETS = 255

# Default policy: IPv6 global unicast 2000::/3 only (so no ULA, link-local, loopback, multicast);
# IPv4 anything but these. `ipaddress.is_global` is deliberately not used: it rejects
# documentation and other special-purpose ranges that are real, routable GUAs for this purpose.
_IPV4_NOT_PUBLISHABLE = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)


def _int_ranges(networks: Iterable[IPNetwork]) -> tuple[tuple[int, int], ...]:
    return tuple((int(n.network_address), int(n.broadcast_address)) for n in networks)


class AddressPolicy:
    """Decides which addresses dnsd publishes; addresses are packed bytes (4 or 16 octets)."""

    __slots__ = ("_explicit", "_v4_allow", "_v4_deny", "_v6_allow")

    def __init__(self, prefixes: Iterable[IPNetwork] = ()) -> None:
        prefixes = tuple(prefixes)
        self._explicit = bool(prefixes)
        self._v4_allow = _int_ranges(p for p in prefixes if p.version == 4)
        self._v6_allow = _int_ranges(p for p in prefixes if p.version == 6)
        self._v4_deny = _int_ranges(_IPV4_NOT_PUBLISHABLE)

    def publishable(self, packed: bytes) -> bool:
        value = int.from_bytes(packed, "big")
        if len(packed) == 16:
            if not self._explicit:
                return packed[0] & 0xE0 == 0x20
            return any(lo <= value <= hi for lo, hi in self._v6_allow)
        if self._explicit:
            return any(lo <= value <= hi for lo, hi in self._v4_allow)
        return not any(lo <= value <= hi for lo, hi in self._v4_deny)


def pack_address(text: str) -> bytes | None:
    """The packed form of an IP address string, or None if it is not one.

    `inet_pton` first: `ipaddress` costs about ten times as much, and every watch event of a pod
    or an EndpointSlice packs its addresses. It accepts a subset of what `ipaddress` does, with
    the same result (tests/test_names.py checks), so anything it refuses (an IPv6 scope
    "%eth0", say) is left to `ipaddress`."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    try:
        return inet_pton(AF_INET6 if ":" in text else AF_INET, text)
    except (OSError, ValueError):
        pass
    try:
        return ipaddress.ip_address(text).packed
    except ValueError:
        return None


def is_dns_label(text: str) -> bool:
    """A single DNS label dnsd is willing to publish: 1-63 letters, digits, '-' or '_'."""
    return _LABEL.fullmatch(text) is not None


# Names inside the zone index are lower-cased uncompressed wire format (bytes): hashing and
# comparing those is an order of magnitude cheaper than dns.name.Name, whose comparisons
# lower-case every label every time, and it is the form the wire engine looks names up in.


def label(text: str) -> bytes:
    """One wire label of a text already checked with `is_dns_label`."""
    raw = text.lower().encode("ascii")
    return bytes((len(raw),)) + raw


def join(*parts: bytes) -> bytes | None:
    """Concatenated wire labels ending in a wire name; None beyond 255 octets."""
    wire = b"".join(parts)
    return wire if len(wire) <= MAX_NAME_OCTETS else None


def label_offsets(wire: bytes) -> list[int]:
    """Start of every label of a wire name, the root label included."""
    offsets, pos = [], 0
    while True:
        offsets.append(pos)
        length = wire[pos]
        if length == 0:
            return offsets
        pos += length + 1


def is_within(wire: bytes, zone: bytes) -> bool:
    """Whether a wire name is zone or below it (label-aligned)."""
    if not wire.endswith(zone):
        return False
    return len(wire) - len(zone) in label_offsets(wire)


def zone_of(wire: bytes, zones: Iterable[bytes]) -> bytes | None:
    """The most specific zone (wire) containing a wire name."""
    best = None
    for zone in zones:
        if is_within(wire, zone) and (best is None or len(zone) > len(best)):
            best = zone
    return best


def to_text(wire: bytes) -> str:
    return dns.name.from_wire(wire, 0)[0].to_text()


_IP6_ARPA = b"\x03ip6\x04arpa\x00"
_IN_ADDR_ARPA = b"\x07in-addr\x04arpa\x00"


def reverse_name(packed: bytes) -> bytes:
    """The PTR owner of an address, as wire."""
    if len(packed) == 16:
        nibbles = packed.hex()[::-1]
        return b"".join(b"\x01" + c.encode() for c in nibbles) + _IP6_ARPA
    return b"".join(label(str(octet)) for octet in reversed(packed)) + _IN_ADDR_ARPA
