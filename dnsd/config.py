"""The validated configuration: one frozen value, built before anything starts.

Parsing the command line and the environment lives in `dnsd.cli`; this module holds the
result and the value parsers that turn one flag's text into a checked value. Every parser
raises `ConfigError` with a message that names the flag and the bad value.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import dns.name

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

REVERSE_SUFFIXES = (dns.name.from_text("ip6.arpa."), dns.name.from_text("in-addr.arpa."))


class ConfigError(ValueError):
    """The configuration is not valid."""


UDP_BATCHING = ("c", "python", "off")


@dataclass(frozen=True, slots=True)
class NameServer:
    """One `--ns NAME[=ADDR]`: an apex NS target and, for in-zone targets, its addresses."""

    name: dns.name.Name
    addresses: tuple[IPAddress, ...] = ()


@dataclass(frozen=True, slots=True)
class SoaTimers:
    refresh: int = 60
    retry: int = 30
    expire: int = 3600
    minimum: int = 5


@dataclass(frozen=True, slots=True)
class Listen:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Config:
    zones: tuple[dns.name.Name, ...]
    """Every zone served, forward and reverse, in the order given."""
    listen: tuple[Listen, ...] = (Listen("::", 5353),)
    from_file: str | None = None
    """Path of a file of Kubernetes objects, `-` for standard input; None watches a cluster."""
    ttl: int = 5
    max_ttl: int = 300
    publish_prefixes: tuple[IPNetwork, ...] = ()
    """Explicit allow list of publishable addresses; empty means the default policy."""
    namespaces: frozenset[str] = frozenset()
    """Namespaces to serve; empty means all."""
    expose_default: bool = True
    pod_records: bool = True
    max_answers: int | None = None
    soa_mname: dns.name.Name | None = None
    soa_rname: dns.name.Name | None = None
    ns: tuple[NameServer, ...] = ()
    soa_timers: SoaTimers = field(default_factory=SoaTimers)
    log_level: str = "info"
    log_format: str = "text"
    lameduck: float = 5.0
    """Seconds to keep answering after SIGTERM while /readyz reports 503."""
    tcp_idle_timeout: float = 30.0
    """Seconds a TCP connection may stay idle; CoreDNS keeps its pooled connections 10 s."""
    tcp_max_connections: int = 1000
    """Open TCP connections at most; beyond it the longest-idle connection is closed for a new one."""
    udp_batching: str = "c"
    """c: recvmmsg/sendmmsg batches, plain queries answered in C; python: batches answered in Python;
    off: one datagram per system call (UDP_BATCHING)."""
    rrl: int = 0
    """Response rate limit: UDP responses per second per source network and response; 0 is off."""
    rrl_slip: int = 2
    """Every Nth rate-limited response is sent as an empty TC=1 reply (0: none, 1: all)."""
    http: Listen | None = Listen("::", 8080)
    """Address of /healthz, /readyz and /metrics; None switches them off."""
    kubeconfig: str | None = None
    """kubeconfig file; None: in-cluster when in a pod, else KUBECONFIG or ~/.kube/config."""
    context: str | None = None
    watch_stall_timeout: float = 90.0
    """A watch that sends no byte for this long is dead (bookmarks come about once a minute)."""
    label_selector: str | None = None
    """Only Services matching this label selector are published (filtered by the API server)."""
    reload_interval: float = 1.0
    """How often the file source looks for a changed file, in seconds."""
    transfer_to: tuple[IPNetwork, ...] = ()
    """Clients allowed AXFR/IXFR; empty: no transfers, no journal, no NOTIFY."""
    tsig_key: str | None = None
    """File of TSIG keys transfers must be signed with (and NOTIFY is signed with, the first key)."""
    notify: tuple[Listen, ...] = ()
    """Secondaries told by NOTIFY when the serial moves."""
    notify_interval: float = 1.0
    """At most one NOTIFY per this many seconds: a burst of changes costs one."""

    @property
    def forward_zones(self) -> tuple[dns.name.Name, ...]:
        return tuple(z for z in self.zones if not is_reverse_zone(z))

    @property
    def reverse_zones(self) -> tuple[dns.name.Name, ...]:
        return tuple(z for z in self.zones if is_reverse_zone(z))


def is_reverse_zone(zone: dns.name.Name) -> bool:
    return any(zone.is_subdomain(suffix) for suffix in REVERSE_SUFFIXES)


def parse_domain(text: str, *, flag: str) -> dns.name.Name:
    """An absolute, lower-cased domain name; a missing final dot is implied."""
    text = text.strip()
    if not text:
        raise ConfigError(f"{flag}: empty name")
    try:
        name = dns.name.from_text(text if text.endswith(".") else text + ".")
    except dns.exception.DNSException as exc:
        raise ConfigError(f"{flag}: {text!r} is not a valid domain name ({exc})") from None
    return name.canonicalize()


def parse_zone(text: str) -> dns.name.Name:
    zone = parse_domain(text, flag="--zone")
    if zone == dns.name.root:
        raise ConfigError("--zone: the root zone cannot be served")
    if any(label.startswith(b"*") for label in zone.labels):
        raise ConfigError(f"--zone: {text!r} contains a wildcard label")
    return zone


def parse_listen(text: str, flag: str = "--listen") -> Listen:
    """`HOST:PORT`, `[V6]:PORT`; the host must be an IP address."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{flag}: {text!r} is not [ADDRESS]:PORT")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"{flag}: {text!r} is not HOST:PORT (write IPv6 as [::1]:5353)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"{flag}: {host!r} is not an IP address") from None
    port = parse_int(port_text, flag=f"{flag} port", low=0, high=65535)
    return Listen(host, port)


def parse_int(text: str, *, flag: str, low: int, high: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not an integer") from None
    if value < low or (high is not None and value > high):
        bound = f"{low}..{high}" if high is not None else f">= {low}"
        raise ConfigError(f"{flag}: {value} is out of range ({bound})")
    return value


def parse_float(text: str, *, flag: str, low: float = 0.0, high: float = 3600.0) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a number") from None
    if not low <= value <= high:
        raise ConfigError(f"{flag}: {value:g} is out of range ({low:g}..{high:g})")
    return value


def parse_bool(text: str, *, flag: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise ConfigError(f"{flag}: {text!r} is not true or false")


def parse_prefix(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"--publish-prefix: {text!r} is not a CIDR prefix ({exc})") from None


def parse_nameserver(text: str) -> NameServer:
    name_text, sep, addr_text = text.partition("=")
    name = parse_domain(name_text, flag="--ns")
    if not sep:
        return NameServer(name)
    try:
        address = ipaddress.ip_address(addr_text.strip())
    except ValueError:
        raise ConfigError(f"--ns: {addr_text!r} is not an IP address") from None
    return NameServer(name, (address,))


def parse_soa_timers(text: str) -> SoaTimers:
    parts = text.split(",")
    if len(parts) != 4:
        raise ConfigError(f"--soa-timers: {text!r} is not REFRESH,RETRY,EXPIRE,MINIMUM")
    values = [parse_int(p, flag="--soa-timers", low=0, high=2**31 - 1) for p in parts]
    return SoaTimers(*values)


def parse_transfer_to(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text.strip(), strict=True)
    except ValueError as exc:
        raise ConfigError(f"--transfer-to: {text!r} is not a CIDR prefix ({exc})") from None


def merge_nameservers(servers: list[NameServer]) -> tuple[NameServer, ...]:
    """Repeated `--ns NAME=ADDR` for one name add addresses to that one target."""
    merged: dict[dns.name.Name, list[IPAddress]] = {}
    for server in servers:
        addresses = merged.setdefault(server.name, [])
        addresses.extend(a for a in server.addresses if a not in addresses)
    return tuple(NameServer(name, tuple(addrs)) for name, addrs in merged.items())


def validate(config: Config) -> None:
    """Cross-field rules, checked once every flag parsed on its own."""
    if not config.zones:
        raise ConfigError("--zone: at least one zone is required")
    if len(set(config.zones)) != len(config.zones):
        raise ConfigError("--zone: a zone is given twice")
    if config.reverse_zones and not config.forward_zones:
        raise ConfigError("--zone: reverse zones need a forward zone for their PTR targets")
    if config.ttl > config.max_ttl:
        raise ConfigError(f"--ttl: {config.ttl} is above --max-ttl {config.max_ttl}")
    for server in config.ns:
        if server.addresses and not any(server.name.is_subdomain(z) for z in config.zones):
            raise ConfigError(f"--ns: {server.name} is outside every zone and cannot carry addresses")
    listens = [(entry.host, entry.port) for entry in config.listen]
    if config.http is not None and config.http.port != 0 and (config.http.host, config.http.port) in listens:
        raise ConfigError("--http: the ops endpoint cannot share a DNS --listen address")
    if len(set(listens)) != len(listens):
        raise ConfigError("--listen: an address is given twice")
    if not config.transfer_to and (config.notify or config.tsig_key):
        flag = "--notify" if config.notify else "--tsig-key"
        raise ConfigError(f"{flag}: only a transfer primary (--transfer-to) sends NOTIFY or uses TSIG keys")
