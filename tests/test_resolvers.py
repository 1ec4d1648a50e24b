"""dnsd behind real resolvers (issue 6, "Behind real resolvers").

Unbound (forward-zone and stub-zone), BIND 9 (forward zone), dnsmasq (`server=/zone/addr#port`)
and Knot Resolver (`policy.STUB`) from Debian's packages run on loopback, each in front of its
own dnsd, which serves the example cluster plus a Service too large for a UDP answer. Between
resolver and dnsd a tap keeps every query the resolver sent and every reply (resolvers/tap.py).
For each name in CASES:

- the answer through the resolver equals dnsd's direct answer (rcode, answer RRsets as sets;
  a TTL may only have gone down);
- the resolver really asked dnsd (each resolver starts with an empty cache and asks each name
  once);
- nothing took a retry path: every query got a reply, NOERROR or NXDOMAIN, with the question
  echoed byte for byte (Unbound and Knot Resolver randomise its case, 0x20; dnsmasq 2.90 cannot,
  so the client's mixed case goes through it), no question was sent twice, and TCP came only
  after a truncated UDP reply, for the large Service alone.

Then, per resolver, its own statistics (unbound-control, BIND's statistics channel, dnsmasq's
SIGUSR1 dump, kresd's worker.stats()) and dnsd's /metrics must say the same: no timeout, retry,
FORMERR or TCP query beyond the large Service.

CoreDNS cannot be installed here: the last tests re-enact its `forward` plugin (resolvers/coredns.py).
"""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.reversename
import pytest
from conftest import EXAMPLE, REVERSE4, REVERSE6, ZONE, DnsdProcess
from resolvers import coredns, traffic
from resolvers.answers import ask, differences, mixed_case
from resolvers.servers import Bind, Dnsmasq, Kresd, Resolver, UnboundForward, UnboundStub
from resolvers.tap import Exchange, Tap

ZONES = (ZONE, REVERSE6, REVERSE4)
BIG = "big.default.svc.gua.example.com."
BIG_ENDPOINTS = 100  # 100 AAAA records: about 2,900 bytes, well over 1232
NXDOMAIN = dns.rcode.NXDOMAIN


@dataclass(frozen=True)
class Case:
    what: str
    name: str
    qtype: str
    rcode: int = dns.rcode.NOERROR
    answered: bool = True
    """False: NOERROR with an empty answer (NODATA, empty non-terminal)."""
    needs_tcp: bool = False

    @property
    def key(self) -> tuple[str, int]:
        return self.name.lower(), dns.rdatatype.from_text(self.qtype)


def reverse(address: str) -> str:
    return dns.reversename.from_address(address).to_text()


CASES = (
    Case("service AAAA", "web.default.svc.gua.example.com.", "AAAA"),
    Case("service A", "web.default.svc.gua.example.com.", "A"),
    Case("endpoint", "db-0.db.default.svc.gua.example.com.", "AAAA"),
    Case("pod", "web-7d4b9c-aaaaa.default.pod.gua.example.com.", "AAAA"),
    Case("hostname annotation", "www.gua.example.com.", "AAAA"),
    Case("SRV", "_postgres._tcp.db.default.svc.gua.example.com.", "SRV"),
    Case("PTR v6", reverse("2001:db8:0:1::b"), "PTR"),
    Case("PTR v4", "11.113.0.203.in-addr.arpa.", "PTR"),
    Case("apex SOA", ZONE, "SOA"),
    Case("NXDOMAIN", "nothing.default.svc.gua.example.com.", "AAAA", NXDOMAIN, answered=False),
    Case("NXDOMAIN reverse", reverse("2001:db8:0:9::9"), "PTR", NXDOMAIN, answered=False),
    Case("NODATA no published address", "internal.default.svc.gua.example.com.", "AAAA", answered=False),
    Case("NODATA other type", "db-1.db.default.svc.gua.example.com.", "TXT", answered=False),
    Case("empty non-terminal", "default.pod.gua.example.com.", "AAAA", answered=False),
    Case("empty non-terminal SRV", "_tcp.db.default.svc.gua.example.com.", "SRV", answered=False),
    Case("large Service over TCP", BIG, "AAAA", needs_tcp=True),
)
RESOLVERS = (UnboundForward, UnboundStub, Bind, Dnsmasq, Kresd)


def write_cluster(path: Path) -> Path:
    """The example cluster, and a Service whose AAAA answer only fits over TCP."""
    big = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": "big", "namespace": "default", "creationTimestamp": "2026-11-01T10:00:00Z"},
                "spec": {"clusterIP": "None", "ipFamilies": ["IPv6"], "ports": [{"name": "http", "port": 80}]},
            },
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {"name": "big-1", "namespace": "default", "labels": {"kubernetes.io/service-name": "big"}},
                "addressType": "IPv6",
                "ports": [{"name": "http", "port": 80}],
                "endpoints": [
                    {"addresses": [f"2001:db8:0:5::{n:x}"], "conditions": {"ready": True}}
                    for n in range(1, BIG_ENDPOINTS + 1)
                ],
            },
        ],
    }
    path.write_text(EXAMPLE.read_text() + "\n---\n" + json.dumps(big) + "\n")
    return path


@pytest.fixture(scope="module")
def cluster_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cluster(tmp_path_factory.mktemp("cluster") / "cluster.yaml")


def start_dnsd(cluster: Path, *extra: str) -> DnsdProcess:
    zones = [argument for zone in ZONES for argument in ("--zone", zone)]
    process = DnsdProcess([*zones, "--from-file", str(cluster), "--listen", "127.0.0.1:0", *extra])
    try:
        return process.ready()
    except BaseException:
        process.stop()
        raise


def dnsd_metrics(process: DnsdProcess) -> str:
    port = int(process.wait_for_match(r"ops endpoint on \[?[0-9a-fA-F.:]+?\]?:(\d+)").group(1))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return response.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """Every sample of one metric: its labels and value."""
    found = []
    for match in re.finditer(rf"^{name}(?:\{{(.*?)\}})? (\S+)$", text, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1) or ""))
        found.append((labels, float(match.group(2))))
    return found


@dataclass
class Behind:
    """A resolver in front of its own dnsd, with the tap between them."""

    resolver: Resolver
    dnsd: DnsdProcess
    tap: Tap
    resolved: dict[Case, tuple[dns.message.Message, list[Exchange]]] = field(default_factory=dict)
    direct_queries: Counter[str] = field(default_factory=Counter)

    def resolve(self, case: Case) -> tuple[dns.message.Message, list[Exchange]]:
        """The resolver's answer to the case, and what it sent dnsd for it (once per case: a
        second time would come from its cache)."""
        if case not in self.resolved:
            mark = self.tap.mark()
            reply, _ = ask(case.name, case.qtype, self.resolver.port)
            self.resolved[case] = (reply, self.tap.settle(mark))
        return self.resolved[case]

    def direct(self, case: Case) -> dns.message.Message:
        reply, used_tcp = ask(case.name, case.qtype, self.dnsd.port)
        self.direct_queries["udp"] += 1
        self.direct_queries["tcp"] += used_tcp
        return reply


@pytest.fixture(scope="module", params=RESOLVERS, ids=[r.__name__ for r in RESOLVERS])
def behind(
    request: pytest.FixtureRequest, cluster_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Behind]:
    dnsd = start_dnsd(cluster_file)
    tap: Tap | None = None
    resolver: Resolver | None = None
    try:
        tap = Tap(("127.0.0.1", dnsd.port))
        resolver = request.param(tmp_path_factory.mktemp(request.param.__name__), ZONES, tap.port)
        resolver.start()
        yield Behind(resolver, dnsd, tap)
    finally:
        if resolver is not None:
            resolver.stop()
        if tap is not None:
            tap.close()
        dnsd.stop()


@pytest.mark.parametrize("case", CASES, ids=[case.what for case in CASES])
def test_answer_through_resolver_equals_direct(behind: Behind, case: Case) -> None:
    reply, exchanges = behind.resolve(case)
    direct = behind.direct(case)
    # The table means what it says (a typo in a name would otherwise compare NXDOMAIN to NXDOMAIN).
    assert (direct.rcode(), bool(direct.answer)) == (case.rcode, case.answered), direct
    assert differences(direct, reply) == [], f"{behind.resolver.description}: {case.name} {case.qtype}"
    assert case.key in traffic.asked(exchanges), "answered without asking dnsd"
    problems = traffic.retry_problems(
        exchanges,
        {case.key} if case.needs_tcp else set(),
        nxdomain_revalidation=behind.resolver.revalidates_nxdomain,
    )
    assert problems == [], (
        f"{behind.resolver.description} took a retry path for {case.name} {case.qtype}:\n" + traffic.timeline(exchanges)
    )


def test_resolver_and_dnsd_statistics_show_no_retry(behind: Behind) -> None:
    for case in CASES:  # each only once: the answers above may have asked them already
        behind.resolve(case)
    exchanges = behind.tap.since(0)
    sent = Counter(exchange.proto for exchange in exchanges)
    assert sent["tcp"] == sum(case.needs_tcp for case in CASES)
    assert behind.resolver.upstream_problems(sent["tcp"]) == []
    assert behind.resolver.log_problems() == []
    if behind.resolver.randomises_case:
        assert traffic.randomised_case(exchanges), "0x20 is on, yet every name went out in one case"
    if behind.resolver.minimises_qnames:
        # The ancestors of the names, asked first (Unbound: type A, one label at a time).
        ancestors = {("svc.gua.example.com.", dns.rdatatype.A), ("default.svc.gua.example.com.", dns.rdatatype.A)}
        assert ancestors <= traffic.asked(exchanges)

    # dnsd saw exactly the tap's queries and the test's own direct ones, and answered all of them.
    metrics = dnsd_metrics(behind.dnsd)
    for proto in ("udp", "tcp"):
        requests = samples(metrics, "dnsd_dns_requests_total")
        received = sum(value for labels, value in requests if labels["proto"] == proto)
        assert received == sent[proto] + behind.direct_queries[proto], proto
    rcodes = {labels["rcode"] for labels, value in samples(metrics, "dnsd_dns_responses_total") if value}
    assert rcodes <= {"NOERROR", "NXDOMAIN"}
    assert sum(value for _, value in samples(metrics, "dnsd_dns_dropped_total")) == 0


def lowercase_question(reply: bytes) -> bytes:
    """The reply with its question name lower-cased: what a server that rebuilds the question
    from a normalised name sends, breaking 0x20."""
    question = traffic.question(reply)
    assert question is not None
    name_end = 12 + len(question.raw) - 4
    return reply[:12] + reply[12:name_end].lower() + reply[name_end:]


def test_checks_catch_a_server_that_breaks_0x20(cluster_file: Path, tmp_path: Path) -> None:
    """The checks above can fail: with dnsd's replies rewritten on their way to Unbound (question
    lower-cased), the answer still comes through, but the traffic shows Unbound's re-asks."""
    dnsd = start_dnsd(cluster_file)
    tap = Tap(("127.0.0.1", dnsd.port), fault=lowercase_question)
    resolver = UnboundForward(tmp_path, ZONES, tap.port)
    try:
        resolver.start()
        behind = Behind(resolver, dnsd, tap)
        reply, exchanges = behind.resolve(CASES[0])
        assert differences(behind.direct(CASES[0]), reply) == []
        problems = traffic.retry_problems(exchanges, set())
    finally:
        resolver.stop()
        tap.close()
        dnsd.stop()
    assert any(problem.startswith("question not echoed as sent") for problem in problems), problems
    assert any(problem.endswith("times over udp") for problem in problems), problems


# --- CoreDNS's forward plugin, re-enacted --------------------------------------------------------


@pytest.fixture(scope="module")
def dnsd_for_coredns(cluster_file: Path) -> Iterator[DnsdProcess]:
    process = start_dnsd(cluster_file)
    yield process
    process.stop()


@pytest.mark.parametrize(("domain", "recursion_desired"), [(".", True), (".", False), (ZONE, True)])
def test_coredns_health_check_is_answered(dnsd_for_coredns: DnsdProcess, domain: str, recursion_desired: bool) -> None:
    """The default probe `. IN NS` (RD=1; `no_rec` clears RD) and the Corefile's in-zone one must
    get a reply within CoreDNS's 1 s, or CoreDNS marks dnsd down after max_fails probes."""
    upstream = ("127.0.0.1", dnsd_for_coredns.port)
    for _ in range(3):  # CoreDNS probes repeatedly: every probe counts
        seconds = coredns.health_check(upstream, domain, recursion_desired=recursion_desired)
        assert seconds < coredns.HEALTH_CHECK_TIMEOUT


@pytest.mark.parametrize("client_payload", [None, 1232, 4096], ids=["no-EDNS", "EDNS-1232", "EDNS-4096"])
@pytest.mark.parametrize("mode", ["client-protocol", "prefer_udp", "force_tcp"])
def test_coredns_forward_gets_every_answer(
    dnsd_for_coredns: DnsdProcess, mode: str, client_payload: int | None
) -> None:
    """Every name through the re-enacted `forward`: each reply passes CoreDNS's Match, fits its
    UDP buffer, equals the direct answer, and TCP (a TC retry, or force_tcp) uses one connection."""
    upstream = ("127.0.0.1", dnsd_for_coredns.port)
    proxy = coredns.ForwardProxy(upstream, force_tcp=mode == "force_tcp", prefer_udp=mode == "prefer_udp")
    try:
        for case in CASES:
            query = dns.message.make_query(
                mixed_case(case.name), case.qtype, use_edns=client_payload is not None, payload=client_payload or 0
            )
            forwarded = proxy.forward(query, "udp")
            if forwarded.reply.flags & dns.flags.TC:
                # Without prefer_udp CoreDNS hands TC to its client, which asks again over TCP.
                assert mode == "client-protocol" and case.needs_tcp, case
                forwarded = proxy.forward(query, "tcp")
            direct, _ = ask(case.name, case.qtype, dnsd_for_coredns.port)
            assert differences(direct, forwarded.reply) == [], case
            assert forwarded.reply.question[0].name.to_text() == query.question[0].name.to_text(), "case not echoed"
            if forwarded.proto == "udp":
                assert forwarded.wire_size <= forwarded.buffer_size
            assert (forwarded.proto == "tcp") == (mode == "force_tcp" or case.needs_tcp), case
    finally:
        proxy.close()
    assert proxy.tcp_dials == 1, "CoreDNS reuses one TCP connection for sequential queries"
    assert proxy.cached_closed == 0


def test_coredns_pooled_connection_closed_cleanly(cluster_file: Path) -> None:
    """A pooled connection that dnsd closes when idle must end with EOF (CoreDNS redials silently,
    ErrCachedClosed), not a reset (an error, then health checks). The Corefile's `expire 10s`
    keeps CoreDNS below dnsd's default 30 s; here dnsd's timeout is 1 s to get there quickly."""
    process = start_dnsd(cluster_file, "--tcp-idle-timeout", "1")
    proxy = coredns.ForwardProxy(("127.0.0.1", process.port), force_tcp=True)
    query = dns.message.make_query("web.default.svc.gua.example.com.", "AAAA")
    try:
        proxy.forward(query, "tcp")
        time.sleep(1.6)
        forwarded = proxy.forward(query, "tcp")
    finally:
        proxy.close()
        process.stop()
    assert forwarded.reply.rcode() == dns.rcode.NOERROR and forwarded.reply.answer
    assert (proxy.tcp_dials, proxy.cached_closed) == (2, 1)
