"""A real `python -m dnsd` over real UDP and TCP sockets, on loopback only.

Every address used here is 127.0.0.1, 127.0.0.2 or ::1. Checks that must show that something
did *not* happen (no reply to a response packet, none to a port-0 source) do not wait for a
timeout: a normal query is sent after the suspect packets on the same socket and its reply is
read; dnsd answers one socket's datagrams in arrival order, so any reply to an earlier packet
would have arrived first.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest

TIMEOUT = 2.0
WEB = "web.default.svc.gua.example.com."
WEB_AAAA = {"2001:db8:0:1::a", "2001:db8:0:1::b"}
WEB_A = {"203.0.113.10", "203.0.113.11"}
BIG = "big.default.svc.gua.example.com."
BIG_COUNT = 80
BIG_AAAA = {f"2001:db8:5::{n:x}" for n in range(1, BIG_COUNT + 1)}


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture(params=["uvloop", "asyncio"])
def dnsd(request, dnsd_process, tmp_path_factory):
    """Start a ready dnsd with `dnsd(args)`, once on uvloop and once on asyncio's own loop.

    dnsd uses uvloop whenever it can import it; a stub module that fails to import, first on
    the child's PYTHONPATH, gives it the stock loop.
    """
    env: dict[str, str] = {}
    if request.param == "asyncio":
        stub = tmp_path_factory.mktemp("no-uvloop")
        (stub / "uvloop.py").write_text('raise ImportError("uvloop hidden by tests/test_transports.py")\n')
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(stub), os.environ.get("PYTHONPATH")]))
    elif importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop is not installed")

    def launch(args: list[str]):
        return dnsd_process(args, env=env).ready()

    return launch


def start(dnsd, *args: str):
    """A ready demo dnsd with these extra flags."""
    return dnsd(["--demo", *args])


def make_query(name: str = WEB, rdtype: str = "AAAA", *, qid: int | None = None, **kwargs) -> dns.message.Message:
    kwargs.setdefault("use_edns", False)
    query = dns.message.make_query(name, rdtype, **kwargs)
    query.flags &= ~dns.flags.RD
    if qid is not None:
        query.id = qid
    return query


def rdata_texts(response: dns.message.Message, rdtype: str) -> list[str]:
    wanted = dns.rdatatype.from_text(rdtype)
    return [rdata.to_text() for rrset in response.answer if rrset.rdtype == wanted for rdata in rrset]


def assert_authoritative_answer(response: dns.message.Message, rdtype: str, expected: set[str]) -> None:
    assert response.rcode() == dns.rcode.NOERROR
    assert response.flags & dns.flags.QR
    assert response.flags & dns.flags.AA
    assert not response.flags & dns.flags.TC
    texts = rdata_texts(response, rdtype)
    assert sorted(texts) == sorted(expected)


def frame(wire: bytes) -> bytes:
    return len(wire).to_bytes(2, "big") + wire


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


def read_frame(sock: socket.socket) -> bytes:
    return recv_exactly(sock, int.from_bytes(recv_exactly(sock, 2), "big"))


def tcp_connect(host: str, port: int) -> socket.socket:
    return socket.create_connection((host, port), timeout=TIMEOUT)


def read_frames_until(sock: socket.socket, qid: int, limit: int = 1000) -> tuple[list[bytes], bool]:
    """Replies on a TCP connection up to the one with this ID; and whether the server closed first."""
    replies: list[bytes] = []
    for _ in range(limit):
        try:
            reply = read_frame(sock)
        except (AssertionError, ConnectionResetError):
            return replies, True
        replies.append(reply)
        if int.from_bytes(reply[:2], "big") == qid:
            return replies, False
    raise AssertionError(f"no reply with ID {qid} among {limit}")


def assert_serves(port: int, host: str = "127.0.0.1") -> None:
    """dnsd still answers a normal query over UDP and over TCP."""
    udp = dns.query.udp(make_query(), host, port=port, timeout=TIMEOUT)
    assert_authoritative_answer(udp, "AAAA", WEB_AAAA)
    tcp = dns.query.tcp(make_query(rdtype="A"), host, port=port, timeout=TIMEOUT)
    assert_authoritative_answer(tcp, "A", WEB_A)


def drain_until(sock: socket.socket, qid: int, limit: int = 1000) -> list[tuple[bytes, tuple]]:
    """Every datagram on sock up to and including the reply with this ID (the sentinel)."""
    seen: list[tuple[bytes, tuple]] = []
    for _ in range(limit):
        data, peer = sock.recvfrom(65535)
        seen.append((data, peer))
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == qid:
            return seen
    raise AssertionError(f"no reply with ID {qid} among {limit} datagrams")


def big_cluster(path: Path) -> Path:
    """A headless Service with BIG_COUNT ready IPv6 endpoints in one EndpointSlice."""
    lines = [
        "apiVersion: v1",
        "kind: List",
        "items:",
        "- apiVersion: v1",
        "  kind: Service",
        '  metadata: {name: big, namespace: default, creationTimestamp: "2026-11-01T10:00:00Z"}',
        "  spec:",
        "    clusterIP: None",
        "    ipFamilies: [IPv6]",
        "    ports:",
        "    - {name: http, port: 80, protocol: TCP}",
        "- apiVersion: discovery.k8s.io/v1",
        "  kind: EndpointSlice",
        "  metadata:",
        "    name: big-x7k2p",
        "    namespace: default",
        "    labels: {kubernetes.io/service-name: big}",
        "  addressType: IPv6",
        "  ports:",
        "  - {name: http, port: 80, protocol: TCP}",
        "  endpoints:",
    ]
    for n in range(1, BIG_COUNT + 1):
        lines.append(f'  - addresses: ["2001:db8:5::{n:x}"]')
        lines.append("    conditions: {ready: true, serving: true, terminating: false}")
        lines.append(f"    targetRef: {{kind: Pod, name: big-{n}, namespace: default}}")
    path.write_text("\n".join(lines) + "\n")
    return path


def run_dig(port: int, *args: str, server: str = "127.0.0.1") -> str:
    dig = shutil.which("dig")
    if dig is None:
        pytest.skip("dig is not installed")
    result = subprocess.run(
        [dig, f"@{server}", "-p", str(port), "+time=2", "+tries=1", *args],
        capture_output=True,
        text=True,
        timeout=15,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def dig_header(output: str) -> tuple[str, set[str], dict[str, int]]:
    """status, flags and section counts from dig's header lines."""
    status = re.search(r"->>HEADER<<- opcode: QUERY, status: (\w+), id: \d+", output)
    flags = re.search(r";; flags:([^;]*); QUERY: (\d+), ANSWER: (\d+), AUTHORITY: (\d+), ADDITIONAL: (\d+)", output)
    assert status and flags, output
    counts = dict(zip(("query", "answer", "authority", "additional"), map(int, flags.groups()[1:]), strict=True))
    return status.group(1), set(flags.group(1).split()), counts


def dig_answers(output: str, rdtype: str) -> list[str]:
    """The rdata of the answer-section records of this type in dig's output."""
    section = output.split(";; ANSWER SECTION:\n", 1)
    if len(section) == 1:
        return []
    records = []
    for line in section[1].split("\n\n", 1)[0].splitlines():
        fields = line.split()
        if len(fields) >= 5 and fields[3] == rdtype:
            records.append(" ".join(fields[4:]))
    return records


# --- 1. answers over UDP and TCP; dig -------------------------------------------------------------


def test_udp_and_tcp_answer_the_example_names(dnsd):
    port = start(dnsd, "--listen", "127.0.0.1:0").port
    cases = [
        (WEB, "AAAA", WEB_AAAA),
        (WEB, "A", WEB_A),
        ("www.gua.example.com.", "AAAA", WEB_AAAA),
        ("db-0.db.default.svc.gua.example.com.", "AAAA", {"2001:db8:0:2::10"}),
        ("docs.default.svc.gua.example.com.", "CNAME", {"docs.example.org."}),
    ]
    for name, rdtype, expected in cases:
        for use_edns in (False, 0):
            query = make_query(name, rdtype, use_edns=use_edns)
            for response in (
                dns.query.udp(query, "127.0.0.1", port=port, timeout=TIMEOUT),
                dns.query.tcp(query, "127.0.0.1", port=port, timeout=TIMEOUT),
            ):
                assert response.id == query.id
                assert response.question == query.question
                assert_authoritative_answer(response, rdtype, expected)
                assert (response.edns >= 0) == (use_edns is not False)

    missing = dns.query.udp(make_query("nope.default.svc.gua.example.com."), "127.0.0.1", port=port, timeout=TIMEOUT)
    assert missing.rcode() == dns.rcode.NXDOMAIN
    assert missing.flags & dns.flags.AA
    assert [rrset.rdtype for rrset in missing.authority] == [dns.rdatatype.SOA]

    outside = dns.query.tcp(make_query("example.org.", "A"), "127.0.0.1", port=port, timeout=TIMEOUT)
    assert outside.rcode() == dns.rcode.REFUSED
    assert not outside.flags & dns.flags.AA


def test_ipv6_loopback_listener_answers_udp_and_tcp(dnsd):
    process = start(dnsd, "--listen", "[::1]:0")
    assert process.addresses[0][0] == "::1"
    assert_serves(process.port, "::1")


def test_dig_sees_authoritative_answers(dnsd):
    port = start(dnsd, "--listen", "127.0.0.1:0").port

    output = run_dig(port, "+norec", WEB, "AAAA")
    status, flags, counts = dig_header(output)
    assert status == "NOERROR"
    assert flags == {"qr", "aa"}, output  # +norec: no rd; not a resolver: no ra; complete: no tc
    assert ";; flags: qr aa;" in output
    assert counts["answer"] == 2
    assert sorted(dig_answers(output, "AAAA")) == sorted(WEB_AAAA)
    assert "(UDP)" in output

    output = run_dig(port, "+norec", "+tcp", WEB, "A")
    status, flags, _counts = dig_header(output)
    assert (status, flags) == ("NOERROR", {"qr", "aa"}), output
    assert sorted(dig_answers(output, "A")) == sorted(WEB_A)
    assert "(TCP)" in output

    # dig's default sets RD: an authoritative server echoes it and offers no recursion (no ra).
    output = run_dig(port, "+noedns", "db-1.db.default.svc.gua.example.com", "AAAA")
    status, flags, counts = dig_header(output)
    assert (status, flags) == ("NOERROR", {"qr", "aa", "rd"}), output
    assert counts["additional"] == 0  # no OPT without EDNS in the query
    assert dig_answers(output, "AAAA") == ["2001:db8:0:2::11"]

    output = run_dig(port, "+norec", "-x", "2001:db8:0:1::a")
    status, flags, _counts = dig_header(output)
    assert (status, flags) == ("NOERROR", {"qr", "aa"}), output
    assert dig_answers(output, "PTR") == ["web-7d4b9c-aaaaa.default.pod.gua.example.com."]


# --- 2. wildcard listeners reply from the address each query was sent to ---------------------------


def assert_replies_come_from_queried_address(sock: socket.socket, targets: list[str], port: int) -> None:
    """Queries to several local addresses, sent from one socket; each reply's source = its target."""
    sock.settimeout(TIMEOUT)
    # One at a time, then all at once (replies matched by ID).
    for n, host in enumerate(targets):
        query = make_query(qid=0x1000 + n)
        sock.sendto(query.to_wire(), (host, port))
        data, peer = sock.recvfrom(65535)
        assert peer[:2] == (host, port), f"the reply to a query sent to {host} came from {peer[0]}"
        response = dns.message.from_wire(data)
        assert response.id == query.id
        assert_authoritative_answer(response, "AAAA", WEB_AAAA)
    for n, host in enumerate(targets):
        sock.sendto(make_query(qid=0x2000 + n).to_wire(), (host, port))
    for _ in targets:
        data, peer = sock.recvfrom(65535)
        n = int.from_bytes(data[:2], "big") - 0x2000
        assert 0 <= n < len(targets)
        assert peer[:2] == (targets[n], port), f"the reply to a query sent to {targets[n]} came from {peer[0]}"


BATCHING = pytest.mark.parametrize("batching", ["c", "python", "off"])  # answered in C or Python, or unbatched


@BATCHING
def test_ipv6_wildcard_replies_from_each_queried_address(dnsd, batching):
    process = start(dnsd, "--listen", "[::]:0", "--udp-batching", batching)
    assert process.addresses[0][0] == "::"
    port = process.port

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert_replies_come_from_queried_address(sock, ["127.0.0.1", "127.0.0.2", "127.0.0.1"], port)
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        assert_replies_come_from_queried_address(sock, ["::1"], port)
    # A dual-stack client socket: IPv4 targets as mapped addresses, next to ::1.
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::", 0))
        assert_replies_come_from_queried_address(sock, ["::ffff:127.0.0.2", "::1", "::ffff:127.0.0.1"], port)

    # TCP on the same port number, on every loopback address.
    for host in ("127.0.0.1", "127.0.0.2", "::1"):
        response = dns.query.tcp(make_query(rdtype="A"), host, port=port, timeout=TIMEOUT)
        assert_authoritative_answer(response, "A", WEB_A)


@BATCHING
def test_ipv4_wildcard_replies_from_each_queried_address(dnsd, batching):
    process = start(dnsd, "--listen", "0.0.0.0:0", "--udp-batching", batching)
    assert process.addresses[0][0] == "0.0.0.0"
    port = process.port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        assert_replies_come_from_queried_address(sock, ["127.0.0.2", "127.0.0.1", "127.0.0.2"], port)
    for host in ("127.0.0.1", "127.0.0.2"):
        response = dns.query.tcp(make_query(rdtype="A"), host, port=port, timeout=TIMEOUT)
        assert_authoritative_answer(response, "A", WEB_A)


# In a private network namespace whose ephemeral port range is 40000-40001, with TCP 40000 taken:
# only 40001 is free for both protocols. Run there as `helper.py STARTS ROOT`; prints JSON.
PORT_ZERO_HELPER = r"""
import json, re, signal, socket, subprocess, sys
import dns.message, dns.query

starts, root = int(sys.argv[1]), sys.argv[2]
blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
blocker.bind(("127.0.0.1", 40000))
results = []
for n in range(starts):
    proc = subprocess.Popen(
        [sys.executable, "-m", "dnsd", "--demo", "--listen", "127.0.0.1:0", "--http", "off", "--lameduck", "0"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=root,
    )
    result = {"lines": [], "port": None, "synced": False}
    for line in proc.stderr:
        result["lines"].append(line.rstrip())
        match = re.search(r"listening on 127\.0\.0\.1:(\d+) ", line)
        if match:
            result["port"] = int(match.group(1))
        if "synced" in line:
            result["synced"] = True
            break
    if result["synced"]:
        query = dns.message.make_query("web.default.svc.gua.example.com", "AAAA", use_edns=False)
        # Explicit client ports: the two ephemeral ports are both taken.
        for name, ask, source_port in (("udp", dns.query.udp, 50000 + n), ("tcp", dns.query.tcp, 51000 + n)):
            try:
                reply = ask(query, "127.0.0.1", port=result["port"], timeout=2, source="127.0.0.1",
                            source_port=source_port)
                result[name] = sorted(rdata.to_text() for rrset in reply.answer for rdata in rrset)
            except Exception as exc:
                result[name] = repr(exc)
        proc.send_signal(signal.SIGTERM)
    try:
        result["exit"] = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        result["exit"] = proc.wait()
    result["lines"] += proc.stderr.read().splitlines()
    results.append(result)
    if not result["synced"]:
        break
print(json.dumps(results))
"""


def test_port_zero_finds_a_port_free_for_udp_and_tcp(tmp_path):
    """`--listen HOST:0` must start whenever some port is free for both UDP and TCP.

    The UDP port is taken first, then TCP binds the same number; when TCP already holds that
    number (any client connection in TIME_WAIT can), the start must try another port instead
    of failing. Half the UDP picks here collide, so a dnsd that does not try again fails one of
    the starts except with probability 2**-STARTS.
    """
    starts = 12
    unshare, ip = shutil.which("unshare"), shutil.which("ip")
    if unshare is None or ip is None:
        pytest.skip("needs unshare(1) and ip(8) to make a private network namespace")
    probe = subprocess.run([unshare, "-n", "true"], capture_output=True, text=True, timeout=10, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot create a network namespace here: {probe.stderr.strip()}")
    helper = tmp_path / "helper.py"
    helper.write_text(PORT_ZERO_HELPER)
    setup = 'ip link set lo up && echo "40000 40001" > /proc/sys/net/ipv4/ip_local_port_range && exec "$@"'
    root = Path(__file__).resolve().parent.parent
    command = [unshare, "-n", "--", "sh", "-c", setup, "sh", sys.executable, str(helper), str(starts), str(root)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    for n, result in enumerate(results):
        assert result["synced"], f"start {n + 1} of {starts} failed: {result['lines']}"
        assert result["port"] == 40001, result
        assert result["udp"] == sorted(WEB_AAAA), result
        assert result["tcp"] == sorted(WEB_AAAA), result
        assert result["exit"] == 0, result
    assert len(results) == starts


# --- 3. TCP framing, pipelining, idle timeout, bad frames ---------------------------------------


def test_tcp_answers_several_queries_on_one_connection(dnsd):
    port = start(dnsd, "--listen", "127.0.0.1:0").port
    with tcp_connect("127.0.0.1", port) as sock:
        for n, (rdtype, expected) in enumerate([("AAAA", WEB_AAAA), ("A", WEB_A), ("AAAA", WEB_AAAA)] * 2):
            query = make_query(rdtype=rdtype, qid=100 + n, use_edns=0 if n % 2 else False)
            sock.sendall(frame(query.to_wire()))
            response = dns.message.from_wire(read_frame(sock))
            assert response.id == query.id
            assert_authoritative_answer(response, rdtype, expected)


def test_tcp_pipelined_queries_in_one_write(dnsd):
    port = start(dnsd, "--listen", "127.0.0.1:0").port
    queries = {
        0xA001: ("AAAA", WEB_AAAA),
        0xA002: ("A", WEB_A),
        0xA003: ("AAAA", WEB_AAAA),
    }
    with tcp_connect("127.0.0.1", port) as sock:
        sock.sendall(b"".join(frame(make_query(rdtype=t, qid=qid).to_wire()) for qid, (t, _) in queries.items()))
        answered = {}
        for _ in queries:
            response = dns.message.from_wire(read_frame(sock))
            answered[response.id] = response
        assert set(answered) == set(queries)
        for qid, (rdtype, expected) in queries.items():
            assert_authoritative_answer(answered[qid], rdtype, expected)
        # A query split across writes, byte by byte, is answered too.
        wire = frame(make_query(qid=0xA004).to_wire())
        for i in range(len(wire)):
            sock.sendall(wire[i : i + 1])
        assert dns.message.from_wire(read_frame(sock)).id == 0xA004


def test_tcp_idle_connection_is_closed(dnsd):
    port = start(dnsd, "--listen", "127.0.0.1:0", "--tcp-idle-timeout", "1").port
    # Never a byte sent.
    with tcp_connect("127.0.0.1", port) as sock:
        sock.settimeout(5.0)
        began = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.8 <= time.monotonic() - began < 4.0
    # Idle after an answered query.
    with tcp_connect("127.0.0.1", port) as sock:
        sock.sendall(frame(make_query(qid=7).to_wire()))
        assert dns.message.from_wire(read_frame(sock)).id == 7
        sock.settimeout(5.0)
        began = time.monotonic()
        assert sock.recv(1) == b""
        assert 0.8 <= time.monotonic() - began < 4.0
    # A connection that keeps asking within the timeout stays open past it.
    with tcp_connect("127.0.0.1", port) as sock:
        began = time.monotonic()
        for n in range(4):
            sock.sendall(frame(make_query(qid=20 + n).to_wire()))
            assert dns.message.from_wire(read_frame(sock)).id == 20 + n
            time.sleep(0.4)
        assert time.monotonic() - began > 1.5
    assert_serves(port)


def test_tcp_bad_frames_do_not_stop_the_server(dnsd):
    process = start(dnsd, "--listen", "127.0.0.1:0")
    port = process.port
    rng = random.Random(7)

    # A frame with nothing in it, or one too short to have a header: no reply to either; the
    # server may end the connection or answer the query after it.
    for bad in (b"", b"hello"):
        with tcp_connect("127.0.0.1", port) as sock:
            sock.sendall(frame(bad) + frame(make_query(qid=0x0B0B).to_wire()))
            replies, closed = read_frames_until(sock, 0x0B0B)
            assert [int.from_bytes(r[:2], "big") for r in replies] == ([] if closed else [0x0B0B])
        assert_serves(port)

    with tcp_connect("127.0.0.1", port) as sock:  # a header with a question count but no question
        sock.sendall(frame(b"\x0b\x0c\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00"))
        reply = dns.message.from_wire(read_frame(sock))
        assert reply.id == 0x0B0C
        assert reply.rcode() == dns.rcode.FORMERR
    assert_serves(port)

    with tcp_connect("127.0.0.1", port) as sock:  # random frames, then a real query on the same connection
        frames = [rng.randbytes(rng.randrange(1, 300)) for _ in range(50)]
        sock.sendall(b"".join(frame(f) for f in frames) + frame(make_query(qid=0xFFFF).to_wire()))
        # The server may answer them or end the connection; either way it must keep serving.
        replies, _closed = read_frames_until(sock, 0xFFFF)
        for reply in replies:
            assert len(reply) >= 12 and reply[2] & 0x80, reply.hex()
    assert_serves(port)

    for data in (b"\x00", b"\x01\x00", b"\x00\x40" + b"\x00" * 20):  # partial frame, then the client goes
        with tcp_connect("127.0.0.1", port) as sock:
            sock.sendall(data)
    with tcp_connect("127.0.0.1", port) as sock:  # reset instead of a close
        sock.sendall(b"\x00\x40\x12")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    assert_serves(port)
    assert process.proc.poll() is None
    assert not [line for line in process.lines if "Traceback" in line or "internal error" in line]


# --- 4. answers too large for UDP --------------------------------------------------------------


def test_large_answer_is_truncated_over_udp_and_complete_over_tcp(dnsd, tmp_path):
    path = big_cluster(tmp_path / "big.yaml")
    port = dnsd(["--from-file", str(path), "--zone", "gua.example.com", "--listen", "127.0.0.1:0"]).port

    for edns in ({"use_edns": False}, {"use_edns": 0, "payload": 1232}, {"use_edns": 0, "payload": 4096}):
        query = make_query(BIG, "AAAA", **edns)
        response = dns.query.udp(query, "127.0.0.1", port=port, timeout=TIMEOUT, ignore_trailing=True)
        assert response.id == query.id
        assert response.rcode() == dns.rcode.NOERROR
        assert response.flags & dns.flags.TC, edns
        assert response.flags & dns.flags.AA
        assert response.answer == []
        assert response.question == query.question
        assert (response.edns >= 0) == (edns["use_edns"] is not False)
        assert len(response.to_wire()) <= (512 if edns["use_edns"] is False else 1232)

    # The raw datagram without EDNS: fits the classic 512 bytes.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendto(make_query(BIG, "AAAA", qid=0x5151).to_wire(), ("127.0.0.1", port))
        data, _peer = sock.recvfrom(65535)
        assert len(data) <= 512
        assert data[2] & 0x02  # TC

    for edns in (False, 0):
        query = make_query(BIG, "AAAA", use_edns=edns)
        response = dns.query.tcp(query, "127.0.0.1", port=port, timeout=TIMEOUT)
        assert_authoritative_answer(response, "AAAA", BIG_AAAA)
        assert len(rdata_texts(response, "AAAA")) == BIG_COUNT
        assert len(response.to_wire()) > 1232

    # dig with +ignore shows the truncated UDP reply; without it dig retries over TCP and gets all.
    output = run_dig(port, "+norec", "+ignore", "+bufsize=1232", BIG, "AAAA")
    status, flags, counts = dig_header(output)
    assert (status, flags, counts["answer"]) == ("NOERROR", {"qr", "aa", "tc"}, 0), output
    output = run_dig(port, "+norec", "+bufsize=1232", BIG, "AAAA")
    assert "Truncated, retrying in TCP mode" in output
    status, flags, counts = dig_header(output)
    assert (status, flags, counts["answer"]) == ("NOERROR", {"qr", "aa"}, BIG_COUNT), output
    assert set(dig_answers(output, "AAAA")) == BIG_AAAA


# --- 5. hostile input over UDP -------------------------------------------------------------------


@BATCHING
def test_udp_hostile_input(dnsd, batching):
    process = start(dnsd, "--listen", "127.0.0.1:0", "--udp-batching", batching)
    port = process.port
    target = ("127.0.0.1", port)
    rng = random.Random(20261126)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(TIMEOUT)

        # Nothing to answer: empty, shorter than a header, or a response (QR=1).
        silent = [b"", *(rng.randbytes(n) for n in range(1, 12))]
        response = make_query(qid=0x5EED)
        response.flags |= dns.flags.QR | dns.flags.AA
        silent.append(response.to_wire())
        silent.append(b"\x12\x34\x80\x00" + b"\x00" * 8)  # a bare response header
        for datagram in silent:
            sock.sendto(datagram, target)
        sock.sendto(make_query(qid=0x0001).to_wire(), target)
        received = drain_until(sock, 0x0001)
        assert [data[:2].hex() for data, _peer in received[:-1]] == [], "a reply to a datagram that needs none"

        # A header that promises a question and carries none: FORMERR, same ID.
        sock.sendto(bytes.fromhex("beef01000001000000000000"), target)
        reply = dns.message.from_wire(sock.recvfrom(65535)[0])
        assert reply.id == 0xBEEF
        assert reply.flags & dns.flags.QR
        assert reply.rcode() == dns.rcode.FORMERR
        # ... and one whose question stops after the name.
        sock.sendto(bytes.fromhex("bef001000001000000000000") + b"\x03web\x00", target)
        reply = dns.message.from_wire(sock.recvfrom(65535)[0])
        assert (reply.id, reply.rcode()) == (0xBEF0, dns.rcode.FORMERR)

        # Random datagrams and mangled real queries, each with its own ID, in batches that each
        # end with a sentinel query. Only a datagram with a header and QR=0 may be answered,
        # at most once, with QR=1 and the query's ID.
        valid = make_query(WEB, "AAAA", use_edns=0).to_wire()
        qid = 0x8000
        for _batch in range(12):
            sent: dict[int, bytes] = {}
            for _ in range(25):
                qid += 1
                if rng.random() < 0.5:
                    datagram = bytearray(rng.randbytes(rng.randrange(2, 200)))
                else:
                    datagram = bytearray(valid[: rng.randrange(2, len(valid) + 1)])
                    for _flip in range(rng.randrange(1, 4)):
                        datagram[rng.randrange(len(datagram))] = rng.randrange(256)
                datagram[:2] = qid.to_bytes(2, "big")
                sent[qid] = bytes(datagram)
                sock.sendto(bytes(datagram), target)
            sentinel = qid + 1000
            sock.sendto(make_query(qid=sentinel).to_wire(), target)
            replies = drain_until(sock, sentinel)
            answered = [int.from_bytes(data[:2], "big") for data, _peer in replies[:-1]]
            assert len(answered) == len(set(answered)), "a datagram answered twice"
            for data, peer in replies[:-1]:
                rid = int.from_bytes(data[:2], "big")
                assert peer == target
                assert rid in sent, f"a reply with an ID nobody sent: {data.hex()}"
                query = sent[rid]
                assert len(query) >= 12 and not query[2] & 0x80, f"reply to {query.hex()}"
                assert len(data) >= 12 and data[2] & 0x80, f"malformed reply {data.hex()} to {query.hex()}"
                assert len(data) <= 1232
            assert_authoritative_answer(dns.message.from_wire(replies[-1][0]), "AAAA", WEB_AAAA)

    assert_serves(port)
    assert process.proc.poll() is None
    internal = [line for line in process.lines if "Traceback" in line or "internal error" in line]
    assert not internal, internal


def test_udp_query_from_source_port_zero_is_not_answered():
    """Linux refuses to send to port 0, so a socket-level test cannot tell whether dnsd even
    tried; this drives the listener's read loop directly and checks the query never reaches
    the engine (no work, no reply) while the next one does."""
    from dnsd.transports.udp import UdpListener

    query = make_query().to_wire()

    class ScriptedSocket:
        family = socket.AF_INET

        def __init__(self) -> None:
            self.incoming = [(query, ("127.0.0.1", 0)), (query, ("127.0.0.1", 5300))]
            self.sent: list[tuple[bytes, tuple]] = []

        def getsockname(self):
            return ("127.0.0.1", 53)

        def recvfrom(self, size: int):
            if not self.incoming:
                raise BlockingIOError
            return self.incoming.pop(0)

        def sendto(self, data: bytes, peer: tuple) -> None:
            self.sent.append((data, peer))

    sock = ScriptedSocket()
    asked: list[bytes] = []
    listener = UdpListener(sock, lambda data: asked.append(data) or b"reply")  # type: ignore[arg-type]
    listener._readable()
    assert asked == [query]
    assert sock.sent == [(b"reply", ("127.0.0.1", 5300))]


# --- 6. shutdown -----------------------------------------------------------------------------------


def test_sigterm_exits_zero_promptly(dnsd):
    process = start(dnsd, "--listen", "127.0.0.1:0")
    assert_serves(process.port)
    began = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    assert process.proc.wait(timeout=10) == 0
    assert time.monotonic() - began < 2.0
    process.wait_for("shutting down", timeout=2)


def test_sigterm_exits_zero_promptly_with_an_idle_tcp_connection(dnsd):
    """A client holding a pooled connection open (as CoreDNS does) must not hold up the exit."""
    process = start(dnsd, "--listen", "127.0.0.1:0")
    with tcp_connect("127.0.0.1", process.port) as sock:
        sock.sendall(frame(make_query(qid=0x7E57).to_wire()))
        assert dns.message.from_wire(read_frame(sock)).id == 0x7E57
        began = time.monotonic()
        process.proc.send_signal(signal.SIGTERM)
        assert process.proc.wait(timeout=10) == 0
        elapsed = time.monotonic() - began
        sock.settimeout(TIMEOUT)
        assert sock.recv(1) == b""  # closed by the server, not left hanging
    assert elapsed < 2.0, f"exit took {elapsed:.1f}s with one idle TCP connection open"
