#!/usr/bin/env python3
"""Zone transfers: cluster change to the new answer on each secondary, and AXFR at 100,000 pods.

    python bench/transfer.py                         # 100 changes; AXFR of 10,000 Services / 100,000 Pods
    python bench/transfer.py --changes 20 --services 1000   # a quick run

1. Change to answer on the secondaries. The test API server (tests/fakekube) holds a small cluster
   (100 Services, 1,000 Pods); a dnsd follows it as a transfer primary (--transfer-to, --notify)
   and NSD, Knot and BIND run as its secondaries (tests/secondaries.py: foreground processes,
   loopback, unprivileged ports). Each change moves one pod to a new address; it is timed from
   the API server's acknowledgement of the write to the first answer with the new address from
   each secondary (and from dnsd itself), polled every 2 ms. Changes are at least 1.2 s apart, so
   each one gets a serial of its own (the serial moves at most once a second, and NOTIFY goes out
   at most once per --notify-interval): changes that come faster are batched into the next second.

2. AXFR at scale. The API server holds 10,000 Services / 100,000 Pods (bench/k8s_sync.py's
   cluster); once dnsd is synced, a client on loopback transfers the forward zone and counts
   messages, records and bytes without parsing them (so the time is dnsd's), while another
   thread sends dnsd a UDP query every 10 ms: the slowest answer during the transfer shows
   whether the transfer held up the event loop.

Results go to bench/results/transfer.json. Needs nsd, knot and bind9 (scripts/test installs them).
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import dns.exception  # noqa: E402
import dns.message  # noqa: E402
import dns.rdatatype  # noqa: E402
from fakekube import FakeKubeProcess  # noqa: E402
from k8s_sync import ZONE, Dnsd, cluster  # noqa: E402
from secondaries import KINDS, Secondary  # noqa: E402


class Primary(Dnsd):
    """bench/k8s_sync.py's dnsd process, started with extra flags (a transfer primary)."""

    def __init__(self, kubeconfig: str, extra: list[str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="dnsd-bench-", suffix=".log", delete=False)  # noqa: SIM115
        self.started = time.monotonic()
        command = [sys.executable, "-m", "dnsd", "--zone", ZONE, "--kubeconfig", kubeconfig]
        command += ["--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", *extra]
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=self.log, cwd=ROOT)
        self.dns_port = self._port(r"listening on 127\.0\.0\.1:(\d+)")
        self.http_port = self._port(r"ops endpoint on 127\.0\.0\.1:(\d+)")


def answers(port: int, name: str, sock: socket.socket) -> set[str]:
    query = dns.message.make_query(name, "AAAA")
    query.flags = 0
    sock.sendto(query.to_wire(), ("127.0.0.1", port))
    try:
        reply = dns.message.from_wire(sock.recv(65535))
    except (TimeoutError, dns.exception.DNSException):
        return set()
    return {rdata.to_text() for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA for rdata in rrset}


def soa_serial(port: int, sock: socket.socket) -> int | None:
    sock.sendto(dns.message.make_query(ZONE, "SOA").to_wire(), ("127.0.0.1", port))
    try:
        reply = dns.message.from_wire(sock.recv(65535))
    except (TimeoutError, dns.exception.DNSException):
        return None
    return int(reply.answer[0][0].serial) if reply.answer else None


def measure_secondaries(changes: int, workdir: Path) -> dict:
    services, per_service = 100, 10
    load = workdir / "small.json"
    load.write_text(json.dumps({"kind": "List", "items": cluster(services, per_service)}))
    fake = FakeKubeProcess("--load", str(load), "--bookmark-interval", "60")
    fake.start()
    secondaries: list[Secondary] = [kind(workdir, 0, [ZONE]) for kind in KINDS.values()]
    notify = [arg for s in secondaries for arg in ("--notify", f"127.0.0.1:{s.port}")]
    dnsd = Primary(fake.kubeconfig, ["--transfer-to", "127.0.0.0/8", *notify])
    try:
        dnsd.wait_ready()
        for secondary in secondaries:
            secondary.primary_port = dnsd.dns_port
            secondary.start()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.settimeout(0.2)
        probe = f"svc-0-0.ns-0.pod.{ZONE}"
        deadline = time.monotonic() + 60
        while any(not answers(s.port, probe, sock) for s in secondaries):
            if time.monotonic() > deadline:
                raise TimeoutError("the secondaries did not load the zone")
            time.sleep(0.1)
        # The serial moves at most once a second: start once it has stood still for 1.5 s (dnsd
        # may move it once more right after the sync), as every later change does.
        stable_since, serial = time.monotonic(), soa_serial(dnsd.dns_port, sock)
        while time.monotonic() - stable_since < 1.5:
            time.sleep(0.1)
            now_serial = soa_serial(dnsd.dns_port, sock)
            if now_serial != serial:
                stable_since, serial = time.monotonic(), now_serial
        latencies: dict[str, list[float]] = {"dnsd": [], **{s.kind: [] for s in secondaries}}
        ports = {"dnsd": dnsd.dns_port, **{s.kind: s.port for s in secondaries}}
        for n in range(changes):
            s, p = (n * 37) % services, n % per_service
            namespace, name = f"ns-{s % 50}", f"svc-{s}-{p}"
            new = str(ipaddress.ip_address(f"2001:db8:eeee:{n:x}::{p + 1:x}"))  # as answers print it
            qname = f"{name}.{namespace}.pod.{ZONE}"
            fake.remote.patch("Pod", namespace, name, {"status": {"podIPs": [{"ip": new}], "podIP": new}})
            started = time.perf_counter()
            pending = dict(ports)
            while pending:
                for who, port in list(pending.items()):
                    if new in answers(port, qname, sock):
                        latencies[who].append(time.perf_counter() - started)
                        del pending[who]
                if time.perf_counter() - started > 30:
                    raise TimeoutError(f"change {n}: no new answer from {sorted(pending)}")
                time.sleep(0.002)
            time.sleep(1.2)
        incremental = {s.kind: len(s.incremental_transfers()) for s in secondaries if s.kind != "nsd"}
        sent = Path(dnsd.log.name).read_text().count(": incremental, serial")
    finally:
        for secondary in secondaries:
            secondary.stop()
        dnsd.stop()
        fake.stop()
    return {
        "services": services,
        "pods": services * per_service,
        "changes": changes,
        "change_to_answer_ms": {
            who: {
                "median": round(statistics.median(values) * 1000, 1),
                "worst": round(max(values) * 1000, 1),
            }
            for who, values in latencies.items()
        },
        "incremental_transfers_logged": incremental,
        "incremental_transfers_sent_by_dnsd": sent,
    }


def raw_axfr(port: int, zone: str) -> dict:
    """Transfer zone, counting messages, records and bytes from the headers only: the time is
    dnsd's, not a parser's. The transfer ends with the message that ends with the SOA again."""
    query = dns.message.make_query(zone, "AXFR").to_wire()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=120) as sock:
        sock.sendall(len(query).to_bytes(2, "big") + query)
        reader = sock.makefile("rb", buffering=1 << 20)
        messages = records = size = 0
        soa_tail = b""
        while True:
            length = int.from_bytes(reader.read(2), "big")
            message = reader.read(length)
            if len(message) != length or length < 12:
                raise EOFError("transfer cut short")
            if message[3] & 0x0F:
                raise RuntimeError(f"rcode {message[3] & 0x0F}")
            messages += 1
            size += length
            records += int.from_bytes(message[6:8], "big")
            if not soa_tail:  # the first record is the SOA: its serial and timers end its RDATA
                soa = dns.message.from_wire(message, xfr=True).answer[0][0]
                soa_tail = b"".join(
                    value.to_bytes(4, "big") for value in (soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum)
                )
            if records > 1 and message.endswith(soa_tail):
                break
    return {"seconds": round(time.perf_counter() - started, 2), "messages": messages, "records": records, "bytes": size}


def measure_axfr(services: int, per_service: int, workdir: Path) -> dict:
    load = workdir / "large.json"
    load.write_text(json.dumps({"kind": "List", "items": cluster(services, per_service)}))
    fake = FakeKubeProcess("--load", str(load), "--bookmark-interval", "60", start_timeout=600)
    fake.start()
    dnsd = Primary(fake.kubeconfig, ["--transfer-to", "127.0.0.1/32"])
    try:
        synced = dnsd.wait_ready()
        time.sleep(3)  # the serial moves (and the journal records the sync) before transferring
        stop = threading.Event()
        probe_latencies: list[float] = []

        def probe() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.settimeout(5)
            query = dns.message.make_query(f"svc-1.ns-1.svc.{ZONE}", "AAAA").to_wire()
            while not stop.is_set():
                started = time.perf_counter()
                sock.sendto(query, ("127.0.0.1", dnsd.dns_port))
                sock.recv(65535)
                probe_latencies.append(time.perf_counter() - started)
                time.sleep(0.01)
            sock.close()

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            result = raw_axfr(dnsd.dns_port, ZONE)
        finally:
            stop.set()
            prober.join()
    finally:
        dnsd.stop()
        fake.stop()
    return {
        "services": services,
        "pods": services * per_service,
        "synced_seconds": round(synced, 1),
        "axfr": result,
        "queries_during_axfr": len(probe_latencies),
        "query_latency_during_axfr_ms": {
            "median": round(statistics.median(probe_latencies) * 1000, 2),
            "worst": round(max(probe_latencies) * 1000, 2),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=100)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--pods-per-service", type=int, default=10)
    parser.add_argument("--skip-axfr", action="store_true", help="keep the AXFR figures of the last run")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "transfer.json")
    args = parser.parse_args()
    result: dict = {
        "date": datetime.date.today().isoformat(),
        "command": " ".join(["python", "bench/transfer.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
    }
    with tempfile.TemporaryDirectory() as tmp:
        result["secondaries"] = measure_secondaries(args.changes, Path(tmp))
        print(json.dumps(result["secondaries"], indent=2))
        if not args.skip_axfr:
            result["axfr_at_scale"] = measure_axfr(args.services, args.pods_per_service, Path(tmp))
            print(json.dumps(result["axfr_at_scale"], indent=2))
        elif args.output.exists():  # keep the figures of the last full run
            previous = json.loads(args.output.read_text())
            if "axfr_at_scale" in previous:
                result["axfr_at_scale"] = {**previous["axfr_at_scale"], "date": previous["date"]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.output}")


if __name__ == "__main__":
    main()
