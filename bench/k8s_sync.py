#!/usr/bin/env python3
"""dnsd against a large cluster: time to synced, memory per object, change-to-answer latency.

    python bench/k8s_sync.py                      # 10,000 Services / 100,000 Pods, and 1,000 Pods
    python bench/k8s_sync.py --services 100 --pods-per-service 10 --changes 200   # a quick run

For each size it starts the test API server (tests/fakekube) as its own process, loaded with
the cluster (EndpointSlices generated as the EndpointSlice controller would), then a dnsd
process against it, and reports:

- time from dnsd's start to /readyz 200 (synced), and the API server's own time spent
  answering the sync requests (from its request log), so the figure attributable to dnsd is
  visible;
- peak and steady RSS of dnsd, and the steady RSS above an empty dnsd (synced to an empty API
  server), per object;
- the time from an API write (a pod's address changes) to dnsd answering the new address for
  that pod's name, p50/p99 over N changes. Each change is timed from the API server's
  acknowledgement of the write to the first answer with the new address (UDP, polled every
  0.5 ms).

It prints a table and writes a JSON result file (bench/results/k8s_sync.json by default).
Everything runs on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import dns.message  # noqa: E402
import dns.query  # noqa: E402
from fakekube import FakeKubeProcess, pod, service  # noqa: E402

ZONE = "gua.example.com"


def cluster(services: int, per_service: int) -> list[dict]:
    """Services, their pods, and one IPv6 EndpointSlice per Service as the controller writes it."""
    items = []
    for s in range(services):
        namespace = f"ns-{s % 50}"
        items.append(service(f"svc-{s}", namespace, selector={"app": f"svc-{s}"}))
        endpoints = []
        for p in range(per_service):
            name, address = f"svc-{s}-{p}", f"2001:db8:{s >> 16:x}:{s & 0xFFFF:x}::{p + 1:x}"
            items.append(pod(name, address, namespace=namespace, labels={"app": f"svc-{s}"}))
            endpoints.append(
                {
                    "addresses": [address],
                    "conditions": {"ready": True, "serving": True, "terminating": False},
                    "targetRef": {"kind": "Pod", "namespace": namespace, "name": name},
                }
            )
        items.append(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"svc-{s}-ipv6",
                    "namespace": namespace,
                    "labels": {
                        "kubernetes.io/service-name": f"svc-{s}",
                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                    },
                },
                "addressType": "IPv6",
                "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                "endpoints": endpoints,
            }
        )
    return items


def rss(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


class Dnsd:
    def __init__(self, kubeconfig: str) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="dnsd-bench-", suffix=".log", delete=False)  # noqa: SIM115 - lives as long as the process
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "dnsd",
                "--zone",
                ZONE,
                "--kubeconfig",
                kubeconfig,
                "--listen",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,
            cwd=ROOT,
        )
        self.dns_port = self._port(r"listening on 127\.0\.0\.1:(\d+)")
        self.http_port = self._port(r"ops endpoint on 127\.0\.0\.1:(\d+)")

    def _port(self, pattern: str) -> int:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            match = re.search(pattern, Path(self.log.name).read_text())
            if match:
                return int(match.group(1))
            if self.proc.poll() is not None:
                raise RuntimeError(Path(self.log.name).read_text())
            time.sleep(0.01)
        raise TimeoutError(pattern)

    def wait_ready(self, timeout: float = 600) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.02)
        raise TimeoutError("dnsd did not become ready")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def measure_changes(fake: FakeKubeProcess, dnsd: Dnsd, services: int, per_service: int, count: int) -> list[float]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(0.5)
    latencies = []
    for n in range(count):
        s, p = (n * 7919) % services, n % per_service
        namespace, name = f"ns-{s % 50}", f"svc-{s}-{p}"
        new = f"2001:db8:ffff:{n:x}::{p + 1:x}"
        query = dns.message.make_query(f"{name}.{namespace}.pod.{ZONE}", "AAAA").to_wire()
        # Timed from the API server's acknowledgement of the write: before it, the time is the
        # test API server's, not dnsd's (the request itself takes about a millisecond).
        fake.remote.patch("Pod", namespace, name, {"status": {"podIPs": [{"ip": new}], "podIP": new}})
        started = time.perf_counter()
        wanted = socket.inet_pton(socket.AF_INET6, new)
        while True:
            sock.sendto(query, ("127.0.0.1", dnsd.dns_port))
            reply = sock.recv(4096)
            if reply.endswith(wanted):
                break
            time.sleep(0.0005)
        latencies.append(time.perf_counter() - started)
    sock.close()
    return latencies


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_size(services: int, per_service: int, changes: int, baseline_kib: int) -> dict:
    items = cluster(services, per_service)
    with tempfile.TemporaryDirectory() as tmp:
        load = Path(tmp) / "cluster.json"
        load.write_text(json.dumps({"kind": "List", "items": items}))
        del items
        loading = time.monotonic()
        fake = FakeKubeProcess("--load", str(load), "--bookmark-interval", "60", start_timeout=600)
        fake.start()
        fake_load = time.monotonic() - loading
        try:
            requests_before = len(fake.remote.requests())
            dnsd = Dnsd(fake.kubeconfig)
            try:
                synced = dnsd.wait_ready()
                _, peak_at_sync = rss(dnsd.proc.pid)
                sync_requests = fake.remote.requests(requests_before)
                # paged lists end, so their duration is the server's time; a streaming list stays open
                fake_busy = sum((r.get("duration") or 0) for r in sync_requests if not r["query"].get("watch"))
                time.sleep(3)
                steady, peak = rss(dnsd.proc.pid)
                latencies = measure_changes(fake, dnsd, services, per_service, changes)
            finally:
                dnsd.stop()
        finally:
            fake.stop()
    objects = services * (1 + per_service) + services  # Services, Pods and one slice each
    return {
        "services": services,
        "pods": services * per_service,
        "objects": objects,
        "fake_load_seconds": round(fake_load, 2),
        "synced_seconds": round(synced, 2),
        "fake_busy_seconds_during_sync": round(fake_busy, 2) if fake_busy else None,
        "rss_steady_mib": round(steady / 1024, 1),
        "rss_peak_mib": round(max(peak, peak_at_sync) / 1024, 1),
        "rss_above_empty_bytes_per_object": round((steady - baseline_kib) * 1024 / objects),
        "changes": changes,
        "change_to_answer_p50_ms": round(statistics.median(latencies) * 1000, 2),
        "change_to_answer_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "change_to_answer_max_ms": round(max(latencies) * 1000, 2),
    }


def empty_baseline() -> int:
    fake = FakeKubeProcess()
    fake.start()
    try:
        dnsd = Dnsd(fake.kubeconfig)
        try:
            dnsd.wait_ready()
            time.sleep(2)
            return rss(dnsd.proc.pid)[0]
        finally:
            dnsd.stop()
    finally:
        fake.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=10_000)
    parser.add_argument("--pods-per-service", type=int, default=10)
    parser.add_argument("--small-pods", type=int, default=1_000, help="pods of the small comparison run")
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "k8s_sync.json"))
    args = parser.parse_args()

    baseline = empty_baseline()
    print(f"empty dnsd (synced, no objects): {baseline / 1024:.1f} MiB RSS", flush=True)
    sizes = [
        (max(1, args.small_pods // args.pods_per_service), args.pods_per_service),
        (args.services, args.pods_per_service),
    ]
    results = []
    for services, per_service in sizes:
        print(f"running {services} Services x {per_service} pods ...", flush=True)
        results.append(run_size(services, per_service, args.changes, baseline))
        print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "empty_rss_mib": round(baseline / 1024, 1),
        "runs": results,
    }
    if len(results) == 2:
        report["p99_ratio_large_to_small"] = round(
            results[1]["change_to_answer_p99_ms"] / max(results[0]["change_to_answer_p99_ms"], 1e-9), 2
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print()
    print(
        "| pods | services | synced (s) | API server busy (s) | RSS steady / peak (MiB) | bytes/object above empty "
        "| change->answer p50 / p99 (ms) |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['pods']:,} | {r['services']:,} | {r['synced_seconds']} | {r['fake_busy_seconds_during_sync']} "
            f"| {r['rss_steady_mib']} / {r['rss_peak_mib']} | {r['rss_above_empty_bytes_per_object']} "
            f"| {r['change_to_answer_p50_ms']} / {r['change_to_answer_p99_ms']} |"
        )
    if "p99_ratio_large_to_small" in report:
        print(f"\np99 ratio, large/small: {report['p99_ratio_large_to_small']}")
    print(f"\nwritten to {args.out}")


if __name__ == "__main__":
    main()
