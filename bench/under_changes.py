#!/usr/bin/env python3
"""dnsd's UDP throughput with and without 100 Kubernetes changes per second, side by side in one run.

    python3 bench/under_changes.py             # 1.5 to 2 minutes
    python3 bench/under_changes.py --quick     # shorter runs, about a minute

Issue 5 asks for no throughput loss larger than 10 % while 100 Kubernetes changes per second
are applied. What it does (bench/README.md has the why):

1. Loads the test API server (tests/fakekube, its own process) with vs_nsd.py's cluster:
   1,000 dual-stack Services with 3 ready pods each (an IPv6 and an IPv4 EndpointSlice) and
   1,000 IPv4-only Services, and writes vs_nsd.py's query files for its `udp` variant (45 %
   AAAA, 45 % A for the Service names, 10 % NXDOMAIN; every query in its own random letter
   case, no packet repeated within a run).
2. Starts a change driver, a process that writes to the API server with the official
   `kubernetes` client as a user's tooling would: at a steady 100 writes per second it marks
   an endpoint not ready in an EndpointSlice (JSON patch) or moves a pod's IPv6 address (pod
   status), each on a pod of a queried Service, and puts each change back about a second later.
3. Runs quiet, changing, changing, quiet, quiet, changing (3 each). A run: a fresh dnsd
   following the API server (ready on /readyz), changes on (changing runs), 1 s warm-up,
   dnsperf at full speed for 6 s, then at 10k queries/s for 4 s with per-query latencies;
   dnsd's /metrics is read before and after the full-speed run (changes dnsd applied); at the
   end of a changing run every name the pending changes touch must answer what the API holds.
   Layout: dnsd and dnsperf on CPU 0 (vs_nsd.py's `onecore`), the API server, the driver and
   this script on CPU 1, so the changes cost CPU 0 only dnsd's own work for them.
4. A run is dirty when CPU 0 was busy with other work (over 10 % of a core), or, changing, when
   the driver fell short of 95 % of its rate; dirty runs are repeated and kept in the JSON.
5. Prints a table and writes bench/results/under_changes.json.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import http.client
import json
import os
import platform
import random
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rdatatype  # noqa: E402
import vs_nsd  # noqa: E402
from vs_nsd import NAMESPACES, ZONE  # noqa: E402

DNS_CPU = 0
"""dnsd and dnsperf share this core, as in vs_nsd.py's `onecore` layout."""
API_CPU = 1
"""The API server, the change driver and this script: the changes' cost outside dnsd stays off DNS_CPU."""
PENDING = 50
"""Changes in force at once: the driver puts the oldest back once this many are pending, so at
100 writes/s a change lasts about a second and the cluster stays close to its loaded state
(response sizes barely move between quiet and changing runs)."""
ORDER = ("quiet", "changing", "changing", "quiet", "quiet", "changing")
VARIANT = vs_nsd.VARIANTS["udp"]


# -- the change driver (its own process) ----------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One endpoint of dual-stack Service `service`: not ready, or its pod on another IPv6 address."""

    service: int
    endpoint: int
    kind: str
    """"ready" (the EndpointSlice marks it not ready) or "address" (the pod's IPv6 address moves)."""

    @property
    def namespace(self) -> str:
        return f"ns-{self.service % NAMESPACES}"

    @property
    def pod(self) -> str:
        return f"svc-{self.service}-{self.endpoint}"


def loaded_address(service: int, endpoint: int) -> str:
    """The pod's IPv6 address as vs_nsd.build_data writes it."""
    return f"2001:db8:1:{service:x}::{endpoint + 1:x}"


def moved_address(service: int, endpoint: int) -> str:
    return f"2001:db8:2:{service:x}::{endpoint + 1:x}"


class ChangeWriter:
    """Writes changes through the official client and knows what each touched name should answer."""

    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(api)
        self.discovery = client.DiscoveryV1Api(api)
        self.not_ready: set[tuple[int, int]] = set()
        self.moved: set[tuple[int, int]] = set()

    def write(self, change: Change, applied: bool) -> None:
        key = (change.service, change.endpoint)
        if change.kind == "ready":
            # serving follows ready for a pod that is not terminating, as the controller writes it
            path = f"/endpoints/{change.endpoint}/conditions"
            patch = [
                {"op": "replace", "path": f"{path}/ready", "value": not applied},
                {"op": "replace", "path": f"{path}/serving", "value": not applied},
            ]
            self.discovery.patch_namespaced_endpoint_slice(
                f"svc-{change.service}-v6", change.namespace, patch, _content_type="application/json-patch+json"
            )
            (self.not_ready.add if applied else self.not_ready.discard)(key)
        else:
            address = (moved_address if applied else loaded_address)(*key)
            patch = [{"op": "replace", "path": "/status/podIPs/0/ip", "value": address}]
            self.core.patch_namespaced_pod_status(
                change.pod, change.namespace, patch, _content_type="application/json-patch+json"
            )
            (self.moved.add if applied else self.moved.discard)(key)

    def expected(self, changes: list[Change]) -> dict[str, list[str]]:
        """AAAA answers (sorted) of the Service and pod names these changes touch, from the API's state.

        An endpoint's addresses are its slice's and its pod's: a moved pod adds its new address to
        the Service's answer, a not-ready endpoint adds none (serving is false too)."""
        names: dict[str, list[str]] = {}
        for change in changes:
            service, namespace = change.service, change.namespace
            answer = set()
            for endpoint in range(3):
                if (service, endpoint) not in self.not_ready:
                    answer.add(loaded_address(service, endpoint))
                    if (service, endpoint) in self.moved:
                        answer.add(moved_address(service, endpoint))
            names[f"svc-{service}.{namespace}.svc.{ZONE}"] = sorted(answer)
            key = (service, change.endpoint)
            pod_address = moved_address(*key) if key in self.moved else loaded_address(*key)
            names[f"{change.pod}.{namespace}.pod.{ZONE}"] = [pod_address]
        return names


def drive(kubeconfig: str, rate: float, services: int, seed: int) -> None:
    """The driver process: reads `go`, `halt`, `revert`, `quit` on stdin, answers one JSON line each.

    `go` starts writing at `rate` per second, paced against a schedule (a late write is made at
    once, so the average holds); `halt` stops and reports the segment (the monotonic time each
    write was acknowledged, errors, the largest lag behind schedule, and what the names touched
    by the pending changes should answer); `revert` puts the pending changes back."""
    writer = ChangeWriter(kubeconfig)
    # Not-ready changes skip endpoint 0: its pod is in the IPv4 slice too, ready there, and dnsd
    # publishes a pod's podIPs through any ready endpoint, so the Service would keep its AAAA.
    targets = [Change(s, e, "address") for s in range(services) for e in range(3)]
    targets += [Change(s, e, "ready") for s in range(services) for e in (1, 2)]
    random.Random(seed).shuffle(targets)
    # one change per endpoint at a time: two pending changes on one endpoint would not revert cleanly
    pending: collections.deque[Change] = collections.deque()
    busy: set[tuple[int, int]] = set()
    position = 0
    running = False
    next_at = 0.0
    segment: dict = {}

    def answer(payload: object) -> None:
        print(json.dumps(payload), flush=True)

    answer({"ready": True})
    while True:
        timeout = max(0.0, next_at - time.monotonic()) if running else None
        readable, _, _ = select.select([sys.stdin], [], [], timeout)
        if readable:
            command = sys.stdin.readline().strip()
            if command in ("", "quit"):
                return
            if command == "go":
                running, next_at = True, time.monotonic()
                segment = {"acks": [], "durations": [], "errors": [], "lag_max_s": 0.0}
                answer({"going": True})
            elif command == "halt":
                running = False
                answer({**segment, "expected": writer.expected(list(pending))})
            elif command == "revert":
                while pending:
                    change = pending.popleft()
                    writer.write(change, applied=False)
                    busy.discard((change.service, change.endpoint))
                answer({"reverted": True})
            continue
        if len(pending) >= PENDING:
            change, applied = pending.popleft(), False
            busy.discard((change.service, change.endpoint))
        else:
            while (targets[position].service, targets[position].endpoint) in busy:
                position = (position + 1) % len(targets)
            change, applied = targets[position], True
            position = (position + 1) % len(targets)
        sent = time.monotonic()
        segment["lag_max_s"] = max(segment["lag_max_s"], sent - next_at)
        next_at += 1 / rate
        try:
            writer.write(change, applied)
        except Exception as error:  # report, keep the pace; the run's figures show the shortfall
            segment["errors"].append(f"{type(error).__name__}: {str(error)[:200]}")
            if applied:
                continue  # nothing changed, nothing to put back
        else:
            acked = time.monotonic()
            segment["acks"].append(acked)
            segment["durations"].append(acked - sent)
        if applied:
            pending.append(change)
            busy.add((change.service, change.endpoint))


class Driver:
    """The change driver as seen from the benchmark: a child process on API_CPU, one command at a time."""

    def __init__(self, kubeconfig: str, rate: float, services: int, seed: int, log: Path) -> None:
        command = [sys.executable, __file__, "--drive", kubeconfig, "--rate", str(rate)]
        command += ["--services", str(services), "--seed", str(seed)]
        with open(log, "ab") as stderr:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
        vs_nsd.STARTED.append(self.proc)
        self.log = log
        self.ask(None, timeout=60)

    def ask(self, command: str | None, timeout: float = 30) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        readable, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if readable else ""
        if not line:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"change driver did not answer {command!r}: {tail}")
        return json.loads(line)

    def cpu_ns(self) -> int:
        return threads_cpu_ns(self.proc.pid)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, OSError, ValueError):  # it is stopped by signal below anyway
            self.ask("quit", timeout=5)
        vs_nsd.stop(self.proc)


# -- dnsd following the API server ---------------------------------------------------------------


class FollowingDnsd(vs_nsd.Dnsd):
    """vs_nsd.py's dnsd with the same flags, following the API server instead of a file, /readyz and
    /metrics on (nothing scrapes them while dnsperf runs)."""

    def __init__(self, workdir: Path, kubeconfig: str) -> None:
        super().__init__(workdir, Path("unused"))
        self.kubeconfig = kubeconfig
        self.http_port = 0

    def command(self) -> list[str]:
        command = super().command()
        at = command.index("--from-file")
        command[at : at + 2] = ["--kubeconfig", self.kubeconfig]
        self.http_port = vs_nsd.free_port()
        while self.http_port == self.port:
            self.http_port = vs_nsd.free_port()
        command[command.index("--http") + 1] = f"127.0.0.1:{self.http_port}"
        return command

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.http_port, path)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"dnsd exited: {self.log_tail()}")
            try:
                if self.get("/readyz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.05)
        else:
            raise TimeoutError(f"dnsd not ready: {self.log_tail()}")
        super().wait_ready(max(1.0, deadline - time.monotonic()))

    def metrics(self) -> dict[str, float]:
        return read_metrics(self.http_port)


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of a GET on dnsd's ops endpoint at 127.0.0.1:port."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, ""
    except http.client.HTTPException:  # not (yet) dnsd's endpoint on that port: ask again later
        return 0, ""


def read_metrics(port: int) -> dict[str, float]:
    """The samples these benchmarks read: changes applied (and their time), serial, watch restarts, relists."""
    status, text = http_get(port, "/metrics")
    if status != 200:
        raise RuntimeError(f"/metrics answered {status}")
    wanted = {
        "dnsd_programming_duration_seconds_count": "applied",
        "dnsd_programming_duration_seconds_sum": "applied_seconds",
        "dnsd_zone_serial": "serial",
        "dnsd_kubernetes_watch_restarts_total": "watch_restarts",
        "dnsd_kubernetes_relists_total": "relists",
    }
    out = dict.fromkeys(wanted.values(), 0.0)
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        key = wanted.get(name.partition("{")[0])
        if key:  # summed over labels: resources for the counters, the one zone for the serial
            out[key] += float(value.rsplit(" ", 1)[-1])
    return out


def threads_cpu_ns(pid: int) -> int:
    """CPU time (ns) of every thread of one process."""
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            total += int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return total


def check_answers(dnsd: FollowingDnsd, expected: dict[str, list[str]], timeout: float = 3.0) -> dict:
    """Every name the pending changes touch answers what the API server holds (dnsd may need a moment)."""
    deadline = time.monotonic() + timeout
    wrong = dict(expected)
    answered: dict[str, list[str]] = {}
    while wrong and time.monotonic() < deadline:
        for name, addresses in list(wrong.items()):
            reply = dns.query.udp(dns.message.make_query(name, "AAAA"), "127.0.0.1", port=dnsd.port, timeout=2)
            got = sorted(r.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.AAAA for r in rrset)
            if got == addresses:
                del wrong[name]
            else:
                answered[name] = got
        if wrong:
            time.sleep(0.1)
    first = next(iter(wrong), None)
    example = {"name": first, "expected": wrong[first], "answered": answered[first]} if first else None
    return {"names": len(expected), "matching": len(expected) - len(wrong), "example_wrong": example}


# -- one run ----------------------------------------------------------------------------------------


def rate_in(acks: list[float], start: float, end: float) -> float:
    return sum(start <= t < end for t in acks) / max(end - start, 1e-9)


def run_one(
    dnsd: FollowingDnsd,
    load: str,
    driver: Driver,
    fake_pid: int,
    settings: vs_nsd.Settings,
    rate: float,
) -> dict:
    """A fresh dnsd: changes on (changing), warm-up, full speed, fixed rate; changes off, answers checked."""
    result = vs_nsd.start_server(dnsd, VARIANT, settings)
    result["load"] = load
    changing = load == "changing"
    driving = False
    try:
        if changing:
            driver.ask("go")
            driving = True
        vs_nsd.warm_up(dnsd, VARIANT, settings)
        before = dnsd.metrics()
        api_before = (threads_cpu_ns(fake_pid), driver.cpu_ns(), vs_nsd.cpu_ticks())
        start = time.monotonic()
        result.update(vs_nsd.full_speed(dnsd, VARIANT, settings))
        end = time.monotonic()
        after = dnsd.metrics()
        api_after = (threads_cpu_ns(fake_pid), driver.cpu_ns(), vs_nsd.cpu_ticks())
        result["latency"] = vs_nsd.fixed_rate(dnsd, VARIANT, settings)
        latency_end = time.monotonic()
        window = end - start
        applied = after["applied"] - before["applied"]
        result["changes"] = {
            "applied_by_dnsd_per_s": round(applied / window, 1),
            "applied_mean_ms": round(1000 * (after["applied_seconds"] - before["applied_seconds"]) / applied, 2)
            if applied
            else None,
            "serial_steps": int(after["serial"] - before["serial"]),
            "watch_restarts": int(after["watch_restarts"] - before["watch_restarts"]),
            "relists": int(after["relists"] - before["relists"]),
            "api_server_cpu_pct": round(100 * (api_after[0] - api_before[0]) / 1e9 / window, 1),
            "driver_cpu_pct": round(100 * (api_after[1] - api_before[1]) / 1e9 / window, 1),
            # from /proc/stat ticks, which under-count the API server's and driver's millisecond bursts
            "cpu1_busy_pct": round(
                100 * (api_after[2][f"cpu{API_CPU}"][0] - api_before[2][f"cpu{API_CPU}"][0]) / vs_nsd.HZ / window, 1
            ),
        }
        if changing:
            segment = driver.ask("halt")
            driving = False
            result["changes"].update(
                written_per_s=round(rate_in(segment["acks"], start, end), 1),
                written_per_s_at_fixed_rate=round(rate_in(segment["acks"], end, latency_end), 1),
                write_p50_ms=round(1000 * statistics.median(segment["durations"]), 2) if segment["durations"] else None,
                write_p99_ms=round(1000 * vs_nsd.percentile(segment["durations"], 99), 2)
                if segment["durations"]
                else None,
                lag_max_s=round(segment["lag_max_s"], 3),
                errors=len(segment["errors"]),
                error_examples=segment["errors"][:3],
                answers_after=check_answers(dnsd, segment["expected"]),
            )
            if result["changes"]["written_per_s"] < 0.95 * rate:
                result["clean"] = False
                result["dirty_reason"] = "the driver fell short of its rate"
        if not result["clean"] and "dirty_reason" not in result:
            result["dirty_reason"] = "CPU 0 busy with other work"
    finally:
        if driving and driver.proc.poll() is None:  # a failed run: leave the cluster as loaded
            driver.ask("halt")
        if changing and driver.proc.poll() is None:
            driver.ask("revert")
        dnsd.stop()
    return result


# -- report -----------------------------------------------------------------------------------------


def summarize(runs: list[dict]) -> dict:
    out = vs_nsd.summarize(runs)
    used = [r for r in runs if r.get("clean")] or runs
    for key in ("applied_by_dnsd_per_s", "written_per_s", "applied_mean_ms", "write_p99_ms", "api_server_cpu_pct"):
        out[key] = vs_nsd.median([r["changes"].get(key) for r in used])
    out["watch_restarts"] = sum(r["changes"]["watch_restarts"] for r in runs)
    out["write_errors"] = sum(r["changes"].get("errors", 0) for r in runs)
    checks = [r["changes"]["answers_after"] for r in runs if "answers_after" in r["changes"]]
    if checks:
        out["answers_checked"] = sum(c["names"] for c in checks)
        out["answers_matching"] = sum(c["matching"] for c in checks)
    return out


def table(results: dict, rate: float) -> str:
    cell = vs_nsd.cell
    rows = [
        "| load | dnsd QPS | min / max | dnsd µs/q | p50 / p99 ms at 10k qps | changes written/s | applied by dnsd/s "
        "| clean runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for load, s in results.items():
        label = "quiet" if load == "quiet" else f"{rate:g} changes/s"
        rows.append(
            f"| {label} | {cell(s['qps'])} | {cell(s['qps_min'])} / {cell(s['qps_max'])} "
            f"| {cell(s['server_us_per_query'], '{:.2f}')} | {vs_nsd.latency_cell(s)} "
            f"| {cell(s.get('written_per_s'), '{:.1f}')} | {cell(s.get('applied_by_dnsd_per_s'), '{:.1f}')} "
            f"| {s['clean_runs']}/{s['runs']} |"
        )
    return "\n".join(rows)


def notes(results: dict, rate: float, lat_qps: int) -> list[str]:
    """What a reader of the table must know: the summaries' notes, watch restarts, failed writes, wrong answers."""
    lines = []
    for load, s in results.items():
        found = vs_nsd.summary_notes(s, lat_qps)
        if s["watch_restarts"]:
            found.append(f"{s['watch_restarts']} watch restarts in dnsd")
        if s["write_errors"]:
            found.append(f"{s['write_errors']} API writes failed")
        lines += [f"{load}: {note}" for note in found]
    changing = results["changing"]
    if changing.get("answers_checked") is not None and changing["answers_matching"] != changing["answers_checked"]:
        lines.append(
            f"changing: {changing['answers_checked'] - changing['answers_matching']} of "
            f"{changing['answers_checked']} touched names did not answer what the API holds"
        )
    if (changing.get("applied_by_dnsd_per_s") or 0) < 0.9 * rate:
        lines.append(f"changing: dnsd applied {changing.get('applied_by_dnsd_per_s')} changes/s, not {rate:g}")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vs_nsd.add_run_arguments(parser)
    parser.add_argument("--rate", type=float, default=100.0, help="Kubernetes changes per second")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "under_changes.json"))
    parser.add_argument("--drive", metavar="KUBECONFIG", help=argparse.SUPPRESS)  # the change driver's process
    args = parser.parse_args()
    if args.drive:
        drive(args.drive, args.rate, args.services, args.seed)
        return 0
    if (os.cpu_count() or 1) < 2:
        sys.exit("needs 2 CPUs: dnsd and dnsperf on one, the API server and the change driver on the other")
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    # Everything this script starts inherits API_CPU; dnsd and dnsperf are pinned to DNS_CPU when started.
    os.sched_setaffinity(0, {API_CPU})

    began = time.monotonic()
    tools = vs_nsd.ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="under_changes-"))
    try:
        return bench(args, tools, workdir, began)
    finally:
        vs_nsd.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, tools: dict[str, str], workdir: Path, began: float) -> int:
    from fakekube import FakeKubeProcess

    secs, lat_secs, warmup, settle_s = vs_nsd.run_times(args)
    retries = args.retries if args.retries is not None else (2 if args.quick else 6)
    budget = args.budget or (150 if args.quick else 420)

    data = vs_nsd.build_data(args.services)
    cluster_path = workdir / "cluster.json"
    cluster_path.write_text(vs_nsd.cluster_file(data))
    sizes = {"warm": vs_nsd.WARM_LINES, "main": int(vs_nsd.QPS_CEILING * secs) + 20_000}
    sizes["lat"] = int(args.lat_qps * lat_secs * 1.1) + 1_000
    files = {VARIANT.mix: vs_nsd.write_query_files(data, VARIANT.mix, sizes, workdir, args.seed)}
    settings = vs_nsd.Settings(
        tools["dnsperf"], secs, lat_secs, warmup, args.lat_qps, args.dirty_limit, settle_s, files
    )

    fake = FakeKubeProcess("--load", str(cluster_path), "--bookmark-interval", "60", start_timeout=120)
    fake.start()
    driver: Driver | None = None
    try:
        assert fake.proc is not None
        driver = Driver(fake.kubeconfig, args.rate, args.services, args.seed, workdir / "driver.log")
        dnsd = FollowingDnsd(workdir, fake.kubeconfig)
        print(
            f"API server loaded with {len(data.objects):,} objects; change driver ready; "
            f"{sum(sizes.values()):,} query lines",
            flush=True,
        )
        runs: dict[str, list[dict]] = {"quiet": [], "changing": []}
        dirty: list[dict] = []
        for load in ORDER:
            while True:
                result = run_one(dnsd, load, driver, fake.proc.pid, settings, args.rate)
                changes, lat = result["changes"], result["latency"]
                print(
                    f"  {load:8} {result['qps']:>8,} qps  dnsd {result['server_us_per_query']:5.2f} us/q  "
                    f"@{args.lat_qps // 1000}k p50 {lat['p50_ms']:.3f} p99 {lat['p99_ms']:.3f} ms  "
                    f"written {changes.get('written_per_s', 0):5.1f}/s  "
                    f"applied {changes['applied_by_dnsd_per_s']:5.1f}/s"
                    f"  others CPU0 {result['residual_cpu_pct']:4.1f}%"
                    + ("" if result["clean"] else f"  DIRTY ({result['dirty_reason']})"),
                    flush=True,
                )
                if result["clean"] or retries <= 0 or time.monotonic() - began > budget:
                    break
                retries -= 1
                dirty.append(result)
            runs[load].append(result)
    finally:
        if driver is not None:
            driver.close()
        fake.stop()

    results = {load: summarize(runs[load]) for load in ("quiet", "changing")}
    ratio = vs_nsd.ratio(results["changing"]["qps"], results["quiet"]["qps"])
    text = table(results, args.rate)
    report = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": vs_nsd.cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "dnsd_event_loop": vs_nsd.event_loop(),
            "dnsperf": vs_nsd.version([tools["dnsperf"], "-h"]),
            **vs_nsd.git_state(),
        },
        "settings": {
            "secs": secs,
            "lat_secs": lat_secs,
            "warmup": warmup,
            "settle": settle_s,
            "order": list(ORDER),
            "rate": args.rate,
            "pending_changes": PENDING,
            "lat_qps": args.lat_qps,
            "clients": vs_nsd.CLIENTS,
            "dirty_limit_pct": args.dirty_limit,
            "cpus": {"dnsd_and_dnsperf": DNS_CPU, "api_server_driver_script": API_CPU},
            "variant": VARIANT.about,
        },
        "data": {
            "zone": ZONE,
            "dual_services": len(data.names["dual"]),
            "a_only_services": len(data.names["a_only"]),
            "kubernetes_objects": len(data.objects),
            "query_lines": sizes,
            "nxdomain_share": round(files[VARIANT.mix].nxdomain_share, 4),
        },
        "memo": vs_nsd.MEMO,
        "results": results,
        "ratio_qps_changing_to_quiet": ratio,
        "target": "changing/quiet >= 0.90 (issue 5: no throughput loss larger than 10 %)",
        "notes": notes(results, args.rate, args.lat_qps),
        "runs": runs,
        "discarded_dirty": dirty,
        "elapsed_s": round(time.monotonic() - began),
        "table": text,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    title = (
        f"dnsd under Kubernetes changes {report['date']}, median of {len(runs['quiet'])} runs each "
        f"({', '.join(ORDER)}); dnsd and dnsperf on CPU {DNS_CPU}, API server and change driver on CPU {API_CPU}; "
        f"latency at {args.lat_qps:,} queries/s"
    )
    vs_nsd.print_report(title, f"{text}\nchanging/quiet QPS: {ratio} (target >= 0.90)", report, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
