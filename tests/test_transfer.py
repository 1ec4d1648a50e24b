"""Zone transfers (AXFR, IXFR), NOTIFY and TSIG, against real secondaries and real clients.

NSD, Knot and BIND (Debian packages) run as foreground processes on loopback, each configured
as a secondary of a running dnsd (tests/secondaries.py). Each transfers the zones, answers
every name of the table exactly as dnsd does (the one documented difference: a name that exists
at dnsd only as NODATA is NXDOMAIN at a secondary, since a transfer cannot carry an empty name),
and after a change in the cluster gets a NOTIFY, transfers incrementally (their logs say so) and
serves the new answer. The protocol details (ACL, TSIG errors, UDP, malformed requests) are
checked with dnspython and kdig as clients.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest
from conftest import EXAMPLE, REVERSE6, ZONE, DnsdProcess, Zone, make_config, rrsets_text
from fakekube import FakeKubeThread, pod, service, wait_until
from hypothesis import given, settings
from hypothesis import strategies as st
from live import read_frame
from secondaries import KINDS, Nsd, Secondary, TsigKey

from dnsd import transfer
from dnsd.config import Listen
from dnsd.notify import Notifier

QTYPES = ("AAAA", "A", "SRV", "PTR", "CNAME", "SOA", "NS", "TXT")
ZONES = (ZONE, REVERSE6)
KEY = TsigKey("xfr-key.", "hmac-sha256", base64.b64encode(b"dnsd transfer test key, 32 bytes").decode())
WRONG_KEY = TsigKey("xfr-key.", "hmac-sha256", base64.b64encode(b"not the key dnsd has, 32 bytes..").decode())
WEB_POD = f"web-7d4b9c-aaaaa.default.pod.{ZONE}"
WEB = f"web.default.svc.{ZONE}"

# -- helpers ----------------------------------------------------------------------------------


def write_key(path: Path, key: TsigKey) -> Path:
    path.write_text(f'key "{key.name.rstrip(".")}" {{\n\talgorithm {key.algorithm};\n\tsecret "{key.secret}";\n}};\n')
    return path


def keyring(key: TsigKey) -> dict[dns.name.Name, dns.tsig.Key]:
    return dns.tsigkeyring.from_text({key.name: (key.algorithm, key.secret)})


def primary(dnsd_process: type[DnsdProcess], source: list[str], *args: str) -> DnsdProcess:
    zones = [arg for zone in ZONES for arg in ("--zone", zone)]
    return dnsd_process([*zones, *source, "--listen", "127.0.0.1:0", *args]).ready()


def ask(port: int, name: str, qtype: str | int) -> dns.message.Message:
    query = dns.message.make_query(name, qtype, use_edns=True)
    query.flags = 0
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)


def serial_of(port: int, zone: str = ZONE) -> int:
    return int(ask(port, zone, "SOA").answer[0][0].serial)


def negative_soa(message: dns.message.Message) -> set[str]:
    """The SOA of a negative answer. For a question of type SOA without its TTL: BIND sends TTL 0
    there (its zero-no-soa-ttl default) so that caches do not keep it."""
    soa_question = message.question[0].rdtype == dns.rdatatype.SOA
    return {
        re.sub(r" \d+ IN SOA ", " IN SOA ", line) if soa_question else line
        for line in rrsets_text(message.authority)
        if " SOA " in line
    }


def table_names(cluster_json: str, transferred: set[str] = frozenset()) -> tuple[set[str], set[str]]:  # type: ignore[assignment]
    """Every name dnsd has (the engine fed with the same objects, and the names of dnsd's own AXFR),
    and those among them that exist only as empty names: no data and no name below them."""
    zone = Zone(cluster_json, make_config(ZONES))
    names = {dns.name.from_wire(key, 0)[0] for key in zone.index.nodes} | {dns.name.from_text(n) for n in transferred}
    nodes = {name: zone.index.nodes.get(name.to_wire()) for name in names}
    with_data = {name for name, node in nodes.items() if node is None or node.owner is not None}
    empty = set()
    for name, node in nodes.items():
        has_records = node is None or (node.owner is not None and node.record_count > 0)
        below = any(other != name and other.is_subdomain(name) and other in with_data for other in names)
        if not has_records and not below:
            empty.add(name.to_text())
    extra = {f"nothing-here.{ZONE}", f"x.y.default.svc.{ZONE}", f"f.f.f.f.{REVERSE6}"}
    return {name.to_text() for name in names} | extra, empty


def transferred_names(port: int, source: str, key: TsigKey | None) -> set[str]:
    """Owner names of an AXFR of every zone from dnsd, asked from source."""
    names = set()
    for zone in ZONES:
        rcode, lines, _ = axfr(port, zone, source=source, **({"keyring": keyring(key)} if key else {}))
        assert rcode == dns.rcode.NOERROR
        names |= {line.split()[0] for line in lines}
    return names


def differences(secondary: Secondary, dnsd_port: int, cluster_json: str) -> list[str]:
    """Where the secondary's answers differ from dnsd's, over every name and type of the table."""
    names, empty = table_names(cluster_json, transferred_names(dnsd_port, secondary.source, secondary.key))
    assert empty, "the table has no empty name: the NODATA caveat is not exercised"
    wrong = []
    for name in sorted(names):
        for qtype in QTYPES:
            expected = ask(dnsd_port, name, qtype)
            if name in empty:
                # the documented difference: dnsd's NODATA for an empty name is NXDOMAIN there
                assert expected.rcode() == dns.rcode.NOERROR and not expected.answer, name
                want = (dns.rcode.NXDOMAIN, set(), negative_soa(expected))
            else:
                want = (expected.rcode(), rrsets_text(expected.answer), negative_soa(expected))
            for attempt in range(5):
                # NSD, around loading a transfer, has answered a query now and then without the
                # SOA: a difference must persist over five tries (3 s) to count
                actual = secondary.ask(name, qtype)
                got = (actual.rcode(), rrsets_text(actual.answer), negative_soa(actual) if not actual.answer else set())
                if not actual.flags & dns.flags.AA:
                    got = (-1, *got[1:])  # not authoritative: the secondary has no zone
                if want == got:
                    break
                time.sleep(0.3 * (attempt + 1))
            if want != got:
                wrong.append(f"{secondary.kind}: {name} {qtype}: dnsd {want}, secondary {got}")
    return wrong


def edit_cluster(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def ixfr_lines(dnsd: DnsdProcess, source: str, zone: str = ZONE) -> list[str]:
    return [line for line in dnsd.lines if f"IXFR {zone} to {source}: incremental" in line]


def check_incremental(secondary: Secondary, dnsd: DnsdProcess, before: int) -> None:
    """The secondary's own log shows an incremental transfer after the change (and dnsd's agrees)."""
    sent = ixfr_lines(dnsd, secondary.source)
    assert sent, f"dnsd sent {secondary.kind} no incremental IXFR: {dnsd.lines[-20:]}"
    if isinstance(secondary, Nsd):
        # NSD logs the serial and size of what it applied, not the transfer type: an update it
        # applied must match, serial and size, an incremental transfer dnsd sent it.
        # NSD counts the bytes without TSIG records: one per message, 80 bytes with our key
        # (owner 9, type/class/TTL/length 10, algorithm 13, times 8, MAC 2 + 32, ID, error, other 6).
        tsig = 0 if secondary.key is None else 80
        pattern = r"IXFR (\S+)\. to \S+: incremental, serial (\d+), (\d+) messages, (\d+) bytes"
        incremental = {
            (m[1], int(m[2]), int(m[4]) - tsig * int(m[3])) for line in sent if (m := re.search(pattern, line))
        }
        updates = {update for update in secondary.updates() if update[1] != before}
        assert updates & incremental, (updates, incremental)
    else:
        assert secondary.incremental_transfers(), secondary.log()[-3000:]


@pytest.fixture
def cluster(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.yaml"
    # the example plus a Service with no endpoint at all: its name exists at dnsd, empty
    path.write_text(EXAMPLE.read_text() + LONELY_SERVICE)
    return path


LONELY_SERVICE = """
- apiVersion: v1
  kind: Service
  metadata: {name: lonely, namespace: default, creationTimestamp: "2026-11-01T10:00:00Z"}
  spec: {ports: [{port: 80, protocol: TCP}]}
"""


@pytest.fixture
def secondaries() -> Iterator[list[Secondary]]:
    started: list[Secondary] = []
    yield started
    for secondary in started:
        secondary.stop()


def cluster_json(path: Path) -> str:
    import yaml

    return json.dumps(yaml.safe_load(path.read_text()))


# -- real secondaries ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("signed", [False, True], ids=["plain", "tsig"])
def test_secondary_follows_the_file_source(
    kind: str,
    signed: bool,
    tmp_path: Path,
    cluster: Path,
    dnsd_process: type[DnsdProcess],
    secondaries: list[Secondary],
) -> None:
    secondary = KINDS[kind](tmp_path, 0, ZONES, key=KEY if signed else None)
    secondaries.append(secondary)
    key_args = ["--tsig-key", str(write_key(tmp_path / "key.conf", KEY))] if signed else []
    dnsd = primary(
        dnsd_process,
        ["--from-file", str(cluster)],
        "--transfer-to",
        f"{secondary.source}/32",
        "--notify",
        f"127.0.0.1:{secondary.port}",
        *key_args,
    )
    secondary.primary_port = dnsd.port
    secondary.start()
    secondary.wait_serial(serial_of(dnsd.port))
    assert differences(secondary, dnsd.port, cluster_json(cluster)) == []

    # A pod moves, another appears: dnsd serves it, NOTIFYs, the secondary transfers the difference.
    before = serial_of(dnsd.port)
    edit_cluster(cluster, '"2001:db8:0:1::a"', '"2001:db8:0:1::1a"')
    wait_until(lambda: "2001:db8:0:1::1a" in str(ask(dnsd.port, WEB_POD, "AAAA").answer), timeout=10)
    after = serial_of(dnsd.port)
    assert after != before
    # The SOA refresh timer is 60 s: within 15 s only a NOTIFY can have started the transfer.
    secondary.wait_serial(after, timeout=15)
    assert rrsets_text(secondary.ask(WEB_POD, "AAAA").answer) == {f"{WEB_POD.lower()} 5 IN AAAA 2001:db8:0:1::1a"}
    assert differences(secondary, dnsd.port, cluster_json(cluster)) == []
    check_incremental(secondary, dnsd, before)
    if signed:
        assert not [line for line in dnsd.lines if "BADSIG" in line or "BADKEY" in line]


def test_secondaries_follow_the_kubernetes_source(
    tmp_path: Path, dnsd_process: type[DnsdProcess], secondaries: list[Secondary]
) -> None:
    with FakeKubeThread(bookmark_interval=0.3, auto_endpointslices=True) as kube:
        kube.create(service("web", selector={"app": "web"}))
        kube.create(pod("web-1", "2001:db8:1::1", "203.0.113.1", labels={"app": "web"}))
        kube.create(pod("web-2", "2001:db8:1::2", "203.0.113.2", labels={"app": "web"}))
        kube.create(service("empty", selector={"app": "nothing"}))
        secondaries.extend(kind(tmp_path, 0, ZONES) for kind in KINDS.values())
        notify = [arg for s in secondaries for arg in ("--notify", f"127.0.0.1:{s.port}")]
        acl = [arg for s in secondaries for arg in ("--transfer-to", f"{s.source}/32")]
        dnsd = primary(dnsd_process, ["--kubeconfig", kube.kubeconfig], *acl, *notify)
        for secondary in secondaries:
            secondary.primary_port = dnsd.port
            secondary.start()
        for secondary in secondaries:
            secondary.wait_serial(serial_of(dnsd.port))

        def objects() -> str:
            items = [{**o, "kind": k} for k in ("Service", "EndpointSlice", "Pod") for o in kube.list(k)]
            return json.dumps({"kind": "List", "items": items})

        for secondary in secondaries:
            assert differences(secondary, dnsd.port, objects()) == []
        before = serial_of(dnsd.port)
        kube.create(pod("web-3", "2001:db8:1::3", labels={"app": "web"}))
        kube.delete("Pod", "default", "web-1")
        wanted = {"2001:db8:1::2", "2001:db8:1::3"}
        wait_until(lambda: {r.to_text() for s in ask(dnsd.port, WEB, "AAAA").answer for r in s} == wanted, timeout=10)
        time.sleep(1.2)  # both changes in the serial (the serial moves at most once a second)
        after = serial_of(dnsd.port)
        for secondary in secondaries:
            secondary.wait_serial(after, timeout=15)
            got = {r.to_text() for s in secondary.ask(WEB, "AAAA").answer for r in s}
            assert got == wanted, secondary.kind
            assert differences(secondary, dnsd.port, objects()) == []
            check_incremental(secondary, dnsd, before)


def test_a_secondary_with_the_wrong_key_gets_nothing(
    tmp_path: Path, cluster: Path, dnsd_process: type[DnsdProcess], secondaries: list[Secondary]
) -> None:
    secondary = KINDS["knot"](tmp_path, 0, ZONES, key=WRONG_KEY)
    secondaries.append(secondary)
    dnsd = primary(
        dnsd_process,
        ["--from-file", str(cluster)],
        "--transfer-to",
        "127.0.0.0/8",
        "--tsig-key",
        str(write_key(tmp_path / "key.conf", KEY)),
    )
    secondary.primary_port = dnsd.port
    secondary.start()
    dnsd.wait_for("does not verify: BADSIG", timeout=15)
    assert secondary.serial(ZONE) is None
    assert "AXFR to" not in "\n".join(dnsd.lines)


# -- the protocol, with dnspython and kdig as clients -----------------------------------------------


def axfr(port: int, zone: str = ZONE, *, source: str | None = None, host: str = "127.0.0.1", **kwargs: object):
    """(rcode, records as zone-file lines, number of messages) of an AXFR over TCP."""
    query = dns.message.make_query(zone, "AXFR")
    if "keyring" in kwargs:
        query.use_tsig(kwargs.pop("keyring"), kwargs.pop("keyname", None))  # type: ignore[arg-type]
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        if source:
            sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect((host, port))
        dns.query.send_tcp(sock, query)
        lines: list[str] = []
        messages = 0
        tsig_ctx = None
        while True:
            wire = read_frame(sock)
            try:
                reply = dns.message.from_wire(
                    wire, keyring=query.keyring, request_mac=query.mac, xfr=True, tsig_ctx=tsig_ctx, multi=True
                )
            except dns.tsig.PeerError:  # a TSIG error response (unsigned by design)
                return dns.message.from_wire(wire, keyring=_unverified).rcode(), lines, messages + 1
            tsig_ctx = reply.tsig_ctx
            messages += 1
            if reply.rcode() != dns.rcode.NOERROR:
                return reply.rcode(), lines, messages
            for rrset in reply.answer:
                for rdata in rrset:
                    lines.append(
                        f"{rrset.name.to_text().lower()} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rdata}"
                    )
            if len(lines) > 1 and lines[-1] == lines[0]:
                return reply.rcode(), lines, messages


def _unverified(_message: dns.message.Message, _name: dns.name.Name) -> bool:
    return False


def big_cluster(pods: int) -> str:
    from k8s import cluster as make_cluster
    from k8s import endpoint, endpoint_slice
    from k8s import pod as k8s_pod
    from k8s import service as k8s_service

    objects = []
    for s in range(pods // 10):
        objects.append(k8s_service(f"svc-{s}"))
        endpoints = []
        for p in range(10):
            address = f"2001:db8:{s:x}::{p + 1:x}"
            objects.append(k8s_pod(f"svc-{s}-{p}", address))
            endpoints.append(endpoint(address, pod=f"svc-{s}-{p}"))
        objects.append(endpoint_slice(f"svc-{s}-x", f"svc-{s}", *endpoints))
    return make_cluster(*objects)


def test_axfr_acl_tsig_and_udp(tmp_path: Path, dnsd_process: type[DnsdProcess]) -> None:
    """A multi-message AXFR signed on every message (checked by dnspython), and every refusal."""
    path = tmp_path / "cluster.json"
    path.write_text(big_cluster(2000))
    dnsd = primary(
        dnsd_process,
        ["--from-file", str(path)],
        "--listen",
        "[::1]:0",
        "--transfer-to",
        "127.0.0.1/32",
        "--tsig-key",
        str(write_key(tmp_path / "key.conf", KEY)),
    )
    rcode, lines, messages = axfr(dnsd.port, keyring=keyring(KEY))
    assert rcode == dns.rcode.NOERROR
    assert messages > 3  # several messages, each signed: dnspython verified every MAC in the chain
    soa = next(line for line in lines if " SOA " in line)
    assert lines[0] == lines[-1] == soa
    assert len(lines) - 2 == len(set(lines[1:-1]))  # no record twice
    # what was transferred is what dnsd answers, name by name (a sample), and nothing is missing
    by_question: dict[tuple[str, str], set[str]] = {}
    for line in lines[1:-1]:
        by_question.setdefault((line.split()[0], line.split()[3]), set()).add(line)
    for name, qtype in sorted(by_question)[::20]:
        assert rrsets_text(ask(dnsd.port, name, qtype).answer) == by_question[(name, qtype)], name
    pods = {name for name, qtype in by_question if ".pod." in name and qtype == "AAAA"}
    assert len(pods) == 2000
    assert (
        sum(
            len(v)
            for (name, qtype), v in by_question.items()
            if qtype == "AAAA" and ".svc." in name and name.count(".") == 6
        )
        == 2000
    )

    # refusals: unsigned, wrong key, unknown key, from ::1 (outside 127.0.0.1/32), over UDP
    assert axfr(dnsd.port)[0] == dns.rcode.REFUSED
    assert axfr(dnsd.port, keyring=keyring(WRONG_KEY))[0] == dns.rcode.NOTAUTH
    assert dnsd.wait_for("does not verify: BADSIG")
    other = dns.tsigkeyring.from_text({"other.": ("hmac-sha256", KEY.secret)})
    assert axfr(dnsd.port, keyring=other)[0] == dns.rcode.NOTAUTH
    assert dnsd.wait_for("BADKEY")
    ipv6_port = next(port for host, port in dnsd.addresses if host == "::1")
    assert axfr(ipv6_port, host="::1", keyring=keyring(KEY))[0] == dns.rcode.REFUSED
    query = dns.message.make_query(ZONE, "AXFR")
    query.use_tsig(keyring(KEY))
    reply = dns.query.udp(query, "127.0.0.1", port=dnsd.port, timeout=2)
    assert reply.rcode() == dns.rcode.REFUSED and reply.had_tsig  # signed, since the query was
    metrics = scrape(dnsd)
    assert 'dnsd_transfer_requests_total{result="full",type="axfr"} 1.0' in metrics
    assert 'dnsd_transfer_requests_total{result="refused",type="axfr"} 3.0' in metrics
    assert f"dnsd_transfer_messages_total {float(messages)}" in metrics


def scrape(dnsd: DnsdProcess) -> str:
    import urllib.request

    port = re.search(r"ops endpoint on \[?[0-9a-fA-F.:]+?\]?:(\d+)", dnsd.wait_for("ops endpoint on"))
    assert port is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=5) as response:
        return response.read().decode()


def test_tsig_errors_carry_the_tsig_error_code(tmp_path: Path, dnsd_process: type[DnsdProcess]) -> None:
    """RFC 8945 §5.3.2: NOTAUTH with TSIG error BADSIG/BADKEY and an empty MAC (read with kdig too)."""
    path = tmp_path / "cluster.yaml"
    path.write_text(EXAMPLE.read_text())
    dnsd = primary(
        dnsd_process,
        ["--from-file", str(path)],
        "--transfer-to",
        "127.0.0.1/32",
        "--tsig-key",
        str(write_key(tmp_path / "key.conf", KEY)),
    )
    for key, error in ((WRONG_KEY, dns.rcode.BADSIG), (TsigKey("other.", KEY.algorithm, KEY.secret), dns.rcode.BADKEY)):
        query = dns.message.make_query(ZONE, "AXFR")
        query.use_tsig(keyring(key))
        with socket.create_connection(("127.0.0.1", dnsd.port), timeout=5) as sock:
            dns.query.send_tcp(sock, query)
            wire = read_frame(sock)
        # read without verifying: the error response is unsigned by design
        reply = dns.message.from_wire(wire, keyring=_unverified)
        assert reply.rcode() == dns.rcode.NOTAUTH
        assert reply.tsig is not None and reply.tsig[0].error == error and reply.tsig[0].mac == b""
    # kdig (Knot's client, installed by scripts/test) verifies the signed transfer on its own
    good = kdig_axfr(dnsd.port, KEY)
    assert good.returncode == 0 and "SOA" in good.stdout and "fail" not in good.stdout.lower(), good.stdout
    bad = kdig_axfr(dnsd.port, WRONG_KEY)
    assert "server replied with error 'BADSIG'" in bad.stderr, bad.stdout + bad.stderr


def kdig_axfr(port: int, key: TsigKey) -> subprocess.CompletedProcess[str]:
    command = ["kdig", "-y", f"{key.algorithm}:{key.name}:{key.secret}", "@127.0.0.1", "-p", str(port), "AXFR", ZONE]
    return subprocess.run(command, capture_output=True, text=True, timeout=20)


def test_acl_by_source_address(tmp_path: Path, dnsd_process: type[DnsdProcess]) -> None:
    path = tmp_path / "cluster.yaml"
    path.write_text(EXAMPLE.read_text())
    dnsd = primary(dnsd_process, ["--from-file", str(path)], "--transfer-to", "127.0.0.2/32")
    assert axfr(dnsd.port)[0] == dns.rcode.REFUSED
    rcode, lines, _messages = axfr(dnsd.port, source="127.0.0.2")
    assert rcode == dns.rcode.NOERROR and len(lines) > 10
    assert dnsd.wait_for("AXFR from 127.0.0.1 refused: outside --transfer-to")


def test_ixfr_over_udp_and_tcp(tmp_path: Path, cluster: Path, dnsd_process: type[DnsdProcess]) -> None:
    dnsd = primary(dnsd_process, ["--from-file", str(cluster)], "--transfer-to", "127.0.0.1/32")
    first = serial_of(dnsd.port)

    def ixfr(serial: int, *, udp: bool) -> list[dns.rrset.RRset]:
        query = dns.message.make_query(ZONE, "IXFR")
        query.authority = [dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {serial} 0 0 0 0")]
        if udp:
            return dns.query.udp(query, "127.0.0.1", port=dnsd.port, timeout=2).answer
        with socket.create_connection(("127.0.0.1", dnsd.port), timeout=5) as sock:
            dns.query.send_tcp(sock, query)
            records: list[dns.rrset.RRset] = []
            soas = 0
            while soas < 2 or (soas == 2 and records and records[-1].rdtype != dns.rdatatype.SOA):
                answer = dns.message.from_wire(read_frame(sock), xfr=True).answer
                records += answer
                soas = sum(1 for r in records for _ in r if r.rdtype == dns.rdatatype.SOA)
                if len(records) == 1 and soas == 1 and int(records[0][0].serial) == serial:
                    break  # up to date: the SOA alone
            return records

    # current serial: the SOA alone, over UDP and TCP
    for udp in (True, False):
        answer = ixfr(first, udp=udp)
        assert len(answer) == 1 and answer[0].rdtype == dns.rdatatype.SOA and int(answer[0][0].serial) == first
    edit_cluster(cluster, '"2001:db8:0:1::a"', '"2001:db8:0:1::1a"')
    wait_until(lambda: serial_of(dnsd.port) != first, timeout=10)
    second = serial_of(dnsd.port)
    # over UDP an old serial gets the new SOA alone ("ask again over TCP", RFC 1995 §2)
    answer = ixfr(first, udp=True)
    assert len(answer) == 1 and int(answer[0][0].serial) == second
    # over TCP the difference: new SOA, old SOA, removed, new SOA, added, new SOA
    query = dns.message.make_query(ZONE, "IXFR")
    query.authority = [dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {first} 0 0 0 0")]
    with socket.create_connection(("127.0.0.1", dnsd.port), timeout=5) as sock:
        dns.query.send_tcp(sock, query)
        reply = dns.message.from_wire(read_frame(sock), one_rr_per_rrset=True)
    text = [line for rrset in reply.answer for line in rrsets_text([rrset])]
    serials = [int(line.split()[6]) for line in text if " SOA " in line]
    assert serials == [second, first, second, second], text
    removed = text[2 : next(i for i in range(2, len(text)) if " SOA " in text[i])]
    assert any("2001:db8:0:1::a" in line for line in removed)
    assert all("2001:db8:0:1::1a" not in line for line in removed)
    # a serial the journal never had: the whole zone, AXFR-style
    rcode, lines, _ = _ixfr_full(dnsd.port, 12345)
    assert rcode == dns.rcode.NOERROR and lines[0] == lines[-1] and " SOA " not in lines[1]


def _ixfr_full(port: int, serial: int) -> tuple[int, list[str], int]:
    query = dns.message.make_query(ZONE, "IXFR")
    query.authority = [dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {serial} 0 0 0 0")]
    lines: list[str] = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        dns.query.send_tcp(sock, query)
        messages = 0
        while True:
            reply = dns.message.from_wire(read_frame(sock), xfr=True)
            messages += 1
            lines += [line for rrset in reply.answer for line in sorted(rrsets_text([rrset]))]
            if len(lines) > 1 and lines[-1] == lines[0]:
                return reply.rcode(), lines, messages


# -- the engine without processes: malformed input, fuzzing --------------------------------------


def _transfers(**kwargs: object) -> tuple[Zone, transfer.Transfers]:
    zone = Zone(EXAMPLE.read_text(), make_config(ZONES))
    return zone, transfer.Transfers(zone.index, [transfer_net("127.0.0.0/8")], **kwargs)  # type: ignore[arg-type]


def transfer_net(text: str):  # type: ignore[no-untyped-def]
    import ipaddress

    return ipaddress.ip_network(text)


def _rcode(response: bytes | transfer.Plan | None) -> int:
    assert isinstance(response, bytes)
    return response[3] & 0x0F


def test_malformed_and_unusual_requests() -> None:
    _zone, transfers = _transfers()
    query = dns.message.make_query(ZONE, "IXFR").to_wire()  # no SOA in authority
    assert _rcode(transfers.decide(query, "127.0.0.1", tcp=True)) == dns.rcode.FORMERR
    two = dns.message.make_query(ZONE, "AXFR")
    two.question.append(dns.rrset.RRset(dns.name.from_text(ZONE), dns.rdataclass.IN, dns.rdatatype.AXFR))
    assert _rcode(transfers.decide(two.to_wire(), "127.0.0.1", tcp=True)) == dns.rcode.FORMERR
    inside = dns.message.make_query(WEB, "AXFR").to_wire()
    assert _rcode(transfers.decide(inside, "127.0.0.1", tcp=True)) == dns.rcode.NOTAUTH
    chaos = dns.message.make_query(ZONE, "AXFR", rdclass=dns.rdataclass.CH).to_wire()
    assert _rcode(transfers.decide(chaos, "127.0.0.1", tcp=True)) == dns.rcode.NOTAUTH
    assert _rcode(transfers.decide(query[:15], "127.0.0.1", tcp=True)) == dns.rcode.FORMERR
    assert transfers.decide(query[:11], "127.0.0.1", tcp=True) is None
    response = bytearray(dns.message.make_query(ZONE, "AXFR").to_wire())
    response[2] |= 0x80
    assert transfers.decide(bytes(response), "127.0.0.1", tcp=True) is None
    axfr_query = dns.message.make_query(ZONE, "AXFR").to_wire()
    assert isinstance(transfers.decide(axfr_query, "127.0.0.1", tcp=True), transfer.Plan)
    assert _rcode(transfers.decide(axfr_query, "127.0.0.1", tcp=False)) == dns.rcode.REFUSED
    assert _rcode(transfers.decide(axfr_query, "::1", tcp=True)) == dns.rcode.REFUSED
    assert isinstance(transfers.decide(axfr_query, "::ffff:127.0.0.9", tcp=True), transfer.Plan)  # mapped IPv4
    unsynced = Zone(EXAMPLE.read_text(), make_config(ZONES), synced=False)
    assert (
        _rcode(
            transfer.Transfers(unsynced.index, [transfer_net("127.0.0.0/8")]).decide(axfr_query, "127.0.0.1", tcp=True)
        )
        == dns.rcode.SERVFAIL
    )


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=80), st.booleans())
def test_no_input_crashes_the_transfer_path(tail: bytes, tcp: bool) -> None:
    _zone, transfers = _transfers(keys=transfer.parse_keys(f"{KEY.name}:{KEY.algorithm}:{KEY.secret}"))
    base = dns.message.make_query(ZONE, "AXFR").to_wire()
    for data in (tail, base[:12] + tail, base + tail, base[:-4] + tail):
        decided = transfers.decide(data, "127.0.0.1", tcp=tcp)
        if isinstance(decided, transfer.Plan):
            list(decided.messages)
        elif decided is not None:
            assert len(decided) >= 12
            assert decided[2] & 0x80


def test_differences_larger_than_the_zone_go_as_a_whole_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    zone, transfers = _transfers()
    apex = dns.name.from_text(ZONE).to_wire()
    old = zone.index.serial
    zone.index.dirty = True
    zone.index.advance_serial(zone.index.serial + 10)
    huge = tuple((apex, 16, 5, bytes([1, i % 256])) for i in range(zone.index.record_count + 1))
    monkeypatch.setattr(zone.index, "changes_since", lambda *_: [(old, zone.index.serial, (), huge)])
    query = dns.message.make_query(ZONE, "IXFR")
    query.authority = [dns.rrset.from_text(ZONE, 0, "IN", "SOA", f". . {old} 0 0 0 0")]
    plan = transfers.decide(query.to_wire(), "127.0.0.1", tcp=True)
    assert isinstance(plan, transfer.Plan) and plan.result == "full"
    monkeypatch.setattr(zone.index, "changes_since", lambda *_: [(old, zone.index.serial, (), huge[:3])])
    plan = transfers.decide(query.to_wire(), "127.0.0.1", tcp=True)
    assert isinstance(plan, transfer.Plan) and plan.result == "incremental"


def test_a_bug_is_answered_with_servfail(monkeypatch: pytest.MonkeyPatch) -> None:
    zone, transfers = _transfers()

    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(zone.index, "zone_snapshot", broken)
    query = dns.message.make_query(ZONE, "AXFR").to_wire()
    assert _rcode(transfers._decide_safely(query, "127.0.0.1", tcp=True)) == dns.rcode.SERVFAIL


def test_key_files() -> None:
    bind = 'key "a.example" {\n\talgorithm hmac-sha512;\n\tsecret "c2VjcmV0";\n};\nkey b { secret "c2VjcmV0"; };'
    keys = transfer.parse_keys(bind)
    assert [k.to_text() for k in keys] == ["a.example.", "b."]
    assert keys[dns.name.from_text("a.example")].algorithm == dns.name.from_text("hmac-sha512")
    assert keys[dns.name.from_text("b")].algorithm == dns.name.from_text("hmac-sha256")
    lines = "# comment\nk1:hmac-sha256:c2VjcmV0\n\nk2:hmac-sha1:c2VjcmV0  # old\n"
    assert sorted(k.to_text() for k in transfer.parse_keys(lines)) == ["k1.", "k2."]
    for bad in ("", "k1:hmac-sha256", "k1:hmac-nothing:c2VjcmV0", 'key "x" { algorithm hmac-sha256; };'):
        with pytest.raises(transfer.KeyFileError):
            transfer.parse_keys(bad)


def test_flags(tmp_path: Path) -> None:
    from dnsd.cli import load
    from dnsd.config import ConfigError

    key_file = write_key(tmp_path / "k.conf", KEY)
    config, _ = load(
        ["--zone", ZONE, "--from-file", "x", "--transfer-to", "127.0.0.1/32", "--tsig-key", str(key_file)],
        {"DNSD_NOTIFY": "127.0.0.1:5300,[::1]:5301", "DNSD_NOTIFY_INTERVAL": "0.5"},
    )
    assert config.notify == (Listen("127.0.0.1", 5300), Listen("::1", 5301))
    assert config.notify_interval == 0.5 and config.tsig_key == str(key_file)
    for argv in (
        ["--notify", "127.0.0.1:53"],  # without --transfer-to
        ["--transfer-to", "127.0.0.1", "--tsig-key", str(tmp_path / "missing")],
        ["--transfer-to", "10.0.0.1/8"],
        ["--transfer-to", "::/0", "--notify", "ns.example:53"],
    ):
        with pytest.raises(ConfigError):
            load(["--zone", ZONE, "--from-file", "x", *argv], {})


# -- NOTIFY ------------------------------------------------------------------------------------------


class _NotifyTarget(asyncio.DatagramProtocol):
    """A secondary's NOTIFY side: records what arrives, answers with the rcodes it is given."""

    def __init__(self, rcodes: list[int]) -> None:
        self.rcodes = rcodes
        self.received: list[tuple[float, dns.message.Message]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        message = dns.message.from_wire(data)
        self.received.append((time.monotonic(), message))
        rcode = self.rcodes.pop(0) if self.rcodes else dns.rcode.NOERROR
        if rcode < 0:
            return  # no answer at all
        reply = dns.message.make_response(message)
        reply.set_rcode(rcode)
        assert self.transport is not None
        self.transport.sendto(reply.to_wire(), addr)


def test_notify_coalesces_and_retries_with_backoff() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport, target = await loop.create_datagram_endpoint(
            lambda: _NotifyTarget([-1, dns.rcode.REFUSED, -1, dns.rcode.NOERROR]), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        notifier = Notifier([dns.name.from_text(ZONE)], [Listen("127.0.0.1", port)], interval=0.5, first_timeout=0.1)
        started = time.monotonic()
        for serial in range(100, 110):  # a burst: one NOTIFY (then its retries) for the last serial
            notifier.serial_changed(serial)
        await asyncio.sleep(1.5)
        await notifier.close()
        transport.close()
        times = [t - started for t, _ in target.received]
        assert len(times) == 4, times  # no answer, REFUSED, no answer, NOERROR: acknowledged on the 4th
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps[0] >= 0.09 and gaps[1] >= 0.18 and gaps[2] >= 0.36, gaps  # backoff: 0.1, 0.2, 0.4 s
        for _, message in target.received:
            assert message.opcode() == dns.opcode.NOTIFY and message.flags & dns.flags.AA
            assert message.question[0].name == dns.name.from_text(ZONE)
            assert message.question[0].rdtype == dns.rdatatype.SOA
        assert notifier.results["acknowledged"] == 1 and notifier.results["error"] == 1
        assert notifier.results["timeout"] == 2

    asyncio.run(scenario())


def test_notify_at_most_once_per_interval() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport, target = await loop.create_datagram_endpoint(lambda: _NotifyTarget([]), local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        notifier = Notifier([dns.name.from_text(ZONE)], [Listen("127.0.0.1", port)], interval=0.5)
        started = time.monotonic()
        notifier.serial_changed(1)  # at once
        await asyncio.sleep(0.1)
        notifier.serial_changed(2)  # 0.5 s after the first
        await asyncio.sleep(0.5)
        notifier.serial_changed(3)  # these two: one NOTIFY, 0.5 s after the second
        notifier.serial_changed(4)
        await asyncio.sleep(0.8)
        await notifier.close()
        transport.close()
        times = [t - started for t, _ in target.received]
        assert len(times) == 3, times
        assert times[0] < 0.1 and 0.45 < times[1] < 0.7 and 0.95 < times[2] < 1.3, times
        assert notifier.results["acknowledged"] == 3

    asyncio.run(scenario())


def test_notify_gives_up_after_five_retries() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        transport, target = await loop.create_datagram_endpoint(
            lambda: _NotifyTarget([-1] * 10), local_addr=("127.0.0.1", 0)
        )
        port = transport.get_extra_info("sockname")[1]
        notifier = Notifier([dns.name.from_text(ZONE)], [Listen("127.0.0.1", port)], first_timeout=0.02)
        notifier.serial_changed(7)
        await asyncio.sleep(0.02 * 63 + 0.5)
        await notifier.close()
        transport.close()
        assert len(target.received) == 6  # the first try and 5 retries
        assert notifier.results["timeout"] == 6

    asyncio.run(scenario())


# -- the loop stays responsive during a large transfer ------------------------------------------------


def test_large_axfr_keeps_every_callback_under_20ms(tmp_path: Path) -> None:
    from dnsd.app import Collector, Server
    from dnsd.names import AddressPolicy
    from dnsd.records import Synced
    from dnsd.sources.file import parse_objects

    slow: list[str] = []

    class Slow(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("Executing"):
                slow.append(record.getMessage())

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        config = make_config(
            ZONES, listen=(Listen("127.0.0.1", 0),), http=None, transfer_to=(transfer_net("127.0.0.1/32"),)
        )
        server = Server(config)
        collector = Collector()  # as app.run does: no automatic full collections
        collector.start()
        records = parse_objects(big_cluster(10_000), AddressPolicy(()))
        from dnsd.records import Resync

        for kind, items in records.items():
            await server.apply(Resync(kind, tuple(items)))
        await server.apply(Synced())
        await server.listen()
        while server.index.dirty:  # the serial moves (and the journal records the sync) before the transfer
            await asyncio.sleep(0.05)
        port = server.tcp[0].address[1]
        handler = Slow(logging.WARNING)
        logging.getLogger("asyncio").addHandler(handler)
        loop.slow_callback_duration = 0.020
        try:
            # the client in a process of its own, as a secondary would be (a thread would compete
            # for this interpreter's lock and stretch the loop's callbacks)
            output = tmp_path / "dig.out"
            with open(output, "wb") as sink:  # not a pipe: reading it would be this loop's work
                dig = await asyncio.create_subprocess_exec(
                    "dig", "+tcp", "@127.0.0.1", "-p", str(port), "AXFR", ZONE, stdout=sink
                )
                await asyncio.wait_for(dig.wait(), 60)
            out = output.read_bytes()
            size = re.search(rb"XFR size: (\d+) records \(messages (\d+),", out)
            assert size is not None, out[-500:]
            assert int(size[1]) > 20_000 and int(size[2]) > 10, size[0]
        finally:
            logging.getLogger("asyncio").removeHandler(handler)
            await server.close()
            collector.stop()

    asyncio.run(scenario(), debug=True)
    assert not slow, "\n".join(slow[:10])
