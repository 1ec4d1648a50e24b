#!/usr/bin/env python3
"""dnsd against NSD, side by side on loopback: throughput, latency at 10k queries/s, and the ratio.

    python3 bench/vs_nsd.py            # 6 to 8 minutes
    python3 bench/vs_nsd.py --quick    # about 2 minutes

What it does (bench/README.md has the why):

1. Installs dnsperf and nsd (Debian packages, `apt-get update` only when one is missing).
2. Generates the same data twice, a cluster file for dnsd and a zone file for NSD: 1,000
   Services with 3 ready IPv6 endpoints and 1 IPv4 endpoint each (3 AAAA + 1 A), their pods
   and endpoint names, and 1,000 IPv4-only Services (A only), with the same TTL and the same
   SOA/NS apex; and per query mix three query files (warm-up, throughput, latency) in which
   every line has its own random letter case (0x20), no line repeats, and the throughput file
   is longer than any run reads, so no query packet repeats within a run.
3. Checks that both servers give the same answers (rcode, flags, RRsets with TTLs) for a
   sample of names, NXDOMAIN and NODATA included; it stops if they differ.
4. Measures each variant (udp, nodata, edns, tcp; split for throughput with dnsperf on the
   other core): 3 runs per server, alternating NSD and dnsd. Each run starts a fresh server,
   warms it up with a query file of its own, then runs dnsperf at full speed (server and
   dnsperf pinned to CPU 0) and then at a fixed 10k queries/s with per-query latencies.
5. Prints a table and writes bench/results/vs_nsd.json. Every server it started is stopped.

The machine may be shared: a run counts as clean when CPU 0 was busy with little else than
the server and dnsperf (the residual is in the JSON); a dirty run is repeated while the time
budget allows. Quote the medians and the ratio measured in the same run, not absolutes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode

ROOT = Path(__file__).resolve().parent.parent

ZONE = "gua.example.com"
TTL = 30
SOA_TIMERS = (3600, 600, 86400, 60)
"""refresh, retry, expire, minimum: negative answers carry TTL min(TTL, minimum) = 30 on both."""
NS_NAME = f"ns1.{ZONE}"
NS_ADDRESS = "198.51.100.53"
HOSTMASTER = f"hostmaster.{ZONE}"
NAMESPACES = 10
CLIENTS = 10
QPS_CEILING = 420_000
"""The throughput query files are sized for this rate: NSD measured 320-355k queries/s here, in
either layout (dnsperf-bound with a core of its own). A run that reads past the end of its file
is flagged ("looped"); the warm-up file may loop, its queries occur nowhere else."""
WARM_LINES = 50_000
MEMO = "n/a (dnsd has no response memo)"

MIXES = {
    # (name set, query type, share)
    "base": (("dual", "AAAA", 0.45), ("dual", "A", 0.45), ("missing", "AAAA", 0.05), ("missing", "A", 0.05)),
    "nodata": (
        ("a_only", "AAAA", 0.30),
        ("dual", "AAAA", 0.30),
        ("dual", "A", 0.30),
        ("missing", "AAAA", 0.05),
        ("missing", "A", 0.05),
    ),
}


@dataclass(frozen=True)
class Variant:
    name: str
    mix: str
    mode: str = "udp"
    edns: bool = False
    layout: str = "onecore"
    latency: bool = True
    about: str = ""


VARIANTS = {
    v.name: v
    for v in (
        Variant("udp", "base", about="UDP, no EDNS, 45% AAAA / 45% A / 10% NXDOMAIN"),
        Variant("nodata", "nodata", about="UDP, 30% AAAA for A-only names (NODATA)"),
        Variant("edns", "base", edns=True, about="UDP, EDNS(0) in every query (dnsperf -e)"),
        Variant("tcp", "base", mode="tcp", about="TCP, 10 connections, pipelined (dnsperf -m tcp)"),
        Variant("split", "base", layout="split", latency=False, about="UDP, server on CPU 1, dnsperf on CPU 0"),
    )
}

# -- tools ---------------------------------------------------------------------------------------


def which(program: str) -> str | None:
    return shutil.which(program, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")


def ensure_tools() -> dict[str, str]:
    """dnsperf and nsd, installed from Debian packages when missing."""
    missing = [package for package, program in (("dnsperf", "dnsperf"), ("nsd", "nsd")) if which(program) is None]
    if missing:
        if os.geteuid() != 0:
            sys.exit(f"missing {', '.join(missing)}: run as root, or apt-get install {' '.join(missing)}")
        print(f"installing {', '.join(missing)} (apt-get)", flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        lock = ["-o", "DPkg::Lock::Timeout=300"]
        subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", *missing], check=True, env=env
        )
    tools = {"dnsperf": which("dnsperf"), "nsd": which("nsd")}
    if None in tools.values():
        sys.exit(f"still missing after installing: {tools}")
    return tools  # type: ignore[return-value]


def version(command: list[str]) -> str:
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    text = (result.stdout + result.stderr).strip().splitlines()
    return next((line for line in text if re.search(r"\d+\.\d+", line)), "?").strip()


# -- data ----------------------------------------------------------------------------------------


@dataclass
class Data:
    objects: list[dict] = field(default_factory=list)
    records: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    """Owner (lower case, relative to ZONE) -> type -> RDATA texts, as NSD gets them."""
    names: dict[str, list[str]] = field(default_factory=dict)
    """Query name sets: dual (3 AAAA + 1 A), a_only, missing (absolute, lower case, no dot)."""

    def add(self, owner: str, rdtype: str, *rdatas: str) -> None:
        self.records.setdefault(owner, {}).setdefault(rdtype, []).extend(rdatas)


def _pod(name: str, namespace: str, *ips: str) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-11-01T10:00:00Z"},
        "spec": {"containers": [{"name": "app", "image": "app:1"}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips]},
    }


def _slice(name: str, namespace: str, service: str, family: str, endpoints: list[tuple[str, str]]) -> dict:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
            },
        },
        "addressType": family,
        # An unnamed port, as single-port Services usually have: no SRV records.
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {
                "addresses": [address],
                "conditions": {"ready": True, "serving": True, "terminating": False},
                "targetRef": {"kind": "Pod", "namespace": namespace, "name": pod},
                "nodeName": "node-1",
            }
            for address, pod in endpoints
        ],
    }


def _service(name: str, namespace: str, families: list[str]) -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": "2026-11-01T10:00:00Z"},
        "spec": {
            "type": "ClusterIP",
            "ipFamilyPolicy": "RequireDualStack" if len(families) > 1 else "SingleStack",
            "ipFamilies": families,
            "selector": {"app": name},
            "ports": [{"port": 80, "protocol": "TCP", "targetPort": 8080}],
        },
    }


def build_data(services: int) -> Data:
    """`services` dual-stack Services (3 AAAA + 1 A) and as many IPv4-only ones (A only).

    Dual Service i has pods i-0 (IPv6 and IPv4), i-1 and i-2 (IPv6): an IPv6 slice with the
    three pods and an IPv4 slice with pod i-0. dnsd publishes the Service name (3 AAAA + 1 A),
    one name per endpoint (<pod>.<svc>.<ns>.svc) and one per pod (<pod>.<ns>.pod); the zone
    file gets exactly these records."""
    data = Data(names={"dual": [], "a_only": [], "missing": []})
    for i in range(services):
        namespace, name = f"ns-{i % NAMESPACES}", f"svc-{i}"
        v6 = [f"2001:db8:1:{i:x}::{p + 1:x}" for p in range(3)]
        v4 = f"198.18.{i >> 8}.{i & 255}"
        pods = [f"{name}-{p}" for p in range(3)]
        data.objects.append(_service(name, namespace, ["IPv6", "IPv4"]))
        data.objects.append(_pod(pods[0], namespace, v6[0], v4))
        data.objects.extend(_pod(pods[p], namespace, v6[p]) for p in (1, 2))
        data.objects.append(_slice(f"{name}-v6", namespace, name, "IPv6", list(zip(v6, pods, strict=True))))
        data.objects.append(_slice(f"{name}-v4", namespace, name, "IPv4", [(v4, pods[0])]))
        owner = f"{name}.{namespace}.svc"
        data.add(owner, "AAAA", *v6)
        data.add(owner, "A", v4)
        for p, pod in enumerate(pods):
            for pod_owner in (f"{pod}.{owner}", f"{pod}.{namespace}.pod"):
                data.add(pod_owner, "AAAA", v6[p])
                if p == 0:
                    data.add(pod_owner, "A", v4)
        data.names["dual"].append(f"{owner}.{ZONE}")
    for i in range(services):
        namespace, name = f"ns-{i % NAMESPACES}", f"legacy-{i}"
        v4, pod = f"198.19.{i >> 8}.{i & 255}", f"legacy-{i}-0"
        data.objects.append(_service(name, namespace, ["IPv4"]))
        data.objects.append(_pod(pod, namespace, v4))
        data.objects.append(_slice(f"{name}-v4", namespace, name, "IPv4", [(v4, pod)]))
        owner = f"{name}.{namespace}.svc"
        for a_owner in (owner, f"{pod}.{owner}", f"{pod}.{namespace}.pod"):
            data.add(a_owner, "A", v4)
        data.names["a_only"].append(f"{owner}.{ZONE}")
    for k in range(services):
        # Half look like Services that do not exist, half are unrelated names under the apex.
        missing = f"svc-{services + k}.ns-{k % NAMESPACES}.svc" if k % 2 else f"nx-{k}.www"
        data.names["missing"].append(f"{missing}.{ZONE}")
    return data


def cluster_file(data: Data) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": data.objects})


def zone_file(data: Data, serial: int) -> str:
    refresh, retry, expire, minimum = SOA_TIMERS
    lines = [
        f"$ORIGIN {ZONE}.",
        f"$TTL {TTL}",
        f"@ SOA {NS_NAME}. {HOSTMASTER}. {serial} {refresh} {retry} {expire} {minimum}",
        f"@ NS {NS_NAME}.",
        f"{NS_NAME}. A {NS_ADDRESS}",
    ]
    for owner, rrsets in data.records.items():
        for rdtype, rdatas in rrsets.items():
            lines.extend(f"{owner} {rdtype} {rdata}" for rdata in rdatas)
    return "\n".join(lines) + "\n"


# -- query files ---------------------------------------------------------------------------------


PIECE = 6
PIECE_MASK = (1 << PIECE) - 1


class CaseMixer:
    """Spellings of one name with its own random letter case, none repeated (0x20).

    The k-th spelling is a bijection of k over the name's letter bits, so spellings differ until
    2^letters of them (2^20 for the shortest name here); it is put together from precomputed
    spellings of pieces of up to PIECE letters."""

    def __init__(self, name: str, rng: random.Random) -> None:
        letters = [i for i, c in enumerate(name) if c.isalpha()]
        self.bits = len(letters)
        self.mask = (1 << self.bits) - 1
        self.half = self.bits // 2
        self.mul1 = rng.getrandbits(self.bits) | 1
        self.mul2 = rng.getrandbits(self.bits) | 1
        self.xor = rng.getrandbits(self.bits)
        self.count = 0
        starts = [0] + [letters[j] for j in range(PIECE, self.bits, PIECE)]
        ends = [*starts[1:], len(name)]
        self.pieces = []
        for start, end in zip(starts, ends, strict=True):
            piece = name[start:end]
            positions = [i for i, c in enumerate(piece) if c.isalpha()]
            table = []
            for m in range(1 << len(positions)):
                chars = list(piece)
                for bit, i in enumerate(positions):
                    if m >> bit & 1:
                        chars[i] = chars[i].upper()
                table.append("".join(chars))
            self.pieces.append((table, PIECE * len(self.pieces)))

    def next(self) -> str:
        k = self.count
        if k > self.mask:
            raise RuntimeError("out of distinct spellings")
        self.count = k + 1
        mask = self.mask
        x = (k * self.mul1) & mask
        x ^= x >> self.half
        x = ((x * self.mul2) & mask) ^ self.xor
        return "".join([table[x >> shift & PIECE_MASK] for table, shift in self.pieces])


@dataclass
class QueryFiles:
    mix: str
    paths: dict[str, Path]
    """warm, main, lat"""
    lines: dict[str, int]
    nxdomain_share: float
    nodata_share: float


def write_query_files(data: Data, mix: str, sizes: dict[str, int], directory: Path, seed: int) -> QueryFiles:
    """Three files of one mix, drawn from the same spellings so no line occurs twice in any."""
    rng = random.Random(f"{seed}-{mix}")
    parts = MIXES[mix]
    mixers = {(names, qtype): [CaseMixer(name, rng) for name in data.names[names]] for names, qtype, _share in parts}
    weights = [share for _names, _qtype, share in parts]
    picks = [(mixers[names, qtype], f" {qtype}\n", len(mixers[names, qtype])) for names, qtype, _share in parts]
    paths = {}
    main_counts = [0] * len(parts)
    for part, size in sizes.items():
        path = directory / f"queries-{mix}-{part}.txt"
        paths[part] = path
        drawn = rng.choices(range(len(parts)), weights, k=size)
        if part == "main":
            main_counts = [drawn.count(i) for i in range(len(parts))]
        random_ = rng.random
        with open(path, "w") as out:
            for start in range(0, size, 65536):
                buffer = []
                for pick in drawn[start : start + 65536]:
                    choices, suffix, count = picks[pick]
                    buffer.append(choices[int(random_() * count)].next() + suffix)
                out.write("".join(buffer))
    total = max(sum(main_counts), 1)
    counts = {
        "missing": sum(n for n, (names, _qtype, _share) in zip(main_counts, parts, strict=True) if names == "missing"),
        "nodata": sum(n for n, part in zip(main_counts, parts, strict=True) if part[:2] == ("a_only", "AAAA")),
        "all": total,
    }
    return QueryFiles(
        mix,
        paths,
        dict(sizes),
        counts["missing"] / max(counts["all"], 1),
        counts["nodata"] / max(counts["all"], 1),
    )


# -- processes -----------------------------------------------------------------------------------

STARTED: list[subprocess.Popen] = []
"""Every process group this script started; stopped in `stop_all`."""


def free_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def _pinned(cpus: set[int] | None):
    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


def group_cpu_ns(pgid: int) -> int:
    """CPU time (ns) of every thread of every live process in process group pgid."""
    total = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            if int(stat.rpartition(")")[2].split()[2]) != pgid:
                continue
            for task in os.listdir(f"/proc/{entry}/task"):
                total += int(Path(f"/proc/{entry}/task/{task}/schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total


def cpu_ticks() -> dict[str, tuple[int, int]]:
    """(busy, total) clock ticks per CPU line of /proc/stat ('cpu', 'cpu0', ...)."""
    result = {}
    for line in Path("/proc/stat").read_text().splitlines():
        if not line.startswith("cpu"):
            break
        name, *values = line.split()
        numbers = [int(v) for v in values[:8]]
        idle = numbers[3] + numbers[4]
        result[name] = (sum(numbers) - idle, sum(numbers))
    return result


class Server:
    kind = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = workdir / f"{self.kind}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, cpus: set[int] | None) -> None:
        self.port = free_port()
        command = self.command()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_pinned(cpus),  # this script runs no threads
            )
        STARTED.append(self.proc)
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        query = dns.message.make_query(ZONE, "SOA")
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log_tail()}")
            try:
                reply = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=0.2)
                if reply.rcode() == dns.rcode.NOERROR and reply.answer:
                    return
            except (OSError, dns.exception.Timeout):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.kind} not answering on port {self.port}: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])
        except OSError:
            return ""

    def cpu_ns(self) -> int:
        return group_cpu_ns(self.proc.pid) if self.proc else 0

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None


class Nsd(Server):
    kind = "nsd"

    def __init__(self, workdir: Path, program: str, zone_path: Path) -> None:
        super().__init__(workdir)
        self.program = program
        self.zone_path = zone_path

    def command(self) -> list[str]:
        directory = self.workdir / "nsd"
        directory.mkdir(exist_ok=True)
        conf = directory / "nsd.conf"
        conf.write_text(
            f"""server:
    ip-address: 127.0.0.1
    port: {self.port}
    do-ip6: no
    server-count: 1
    reuseport: no
    username: ""
    chroot: ""
    database: ""
    zonesdir: "{directory}"
    zonelistfile: "{directory}/zone.list"
    xfrdfile: "{directory}/xfrd.state"
    xfrdir: "{directory}"
    pidfile: "{directory}/nsd.pid"
    verbosity: 0
    hide-version: yes
    minimal-responses: yes
    tcp-count: 256
    # Debian's NSD is built with RRL; at its 200 QPS per /24 a benchmark measures the limiter.
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: {ZONE}
    zonefile: "{self.zone_path}"
"""
        )
        return [self.program, "-d", "-c", str(conf)]


class Dnsd(Server):
    kind = "dnsd"

    def __init__(self, workdir: Path, cluster_path: Path, udp_batching: str = "c") -> None:
        super().__init__(workdir)
        self.cluster_path = cluster_path
        self.udp_batching = udp_batching

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "dnsd",
            "--zone",
            ZONE,
            "--from-file",
            str(self.cluster_path),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--http",
            "off",
            "--lameduck",
            "0",
            "--ttl",
            str(TTL),
            "--soa-timers",
            ",".join(map(str, SOA_TIMERS)),
            "--ns",
            f"{NS_NAME}={NS_ADDRESS}",
            "--soa-rname",
            HOSTMASTER,
            "--log-level",
            "warning",
            "--udp-batching",
            self.udp_batching,
        ]


def stop(proc: subprocess.Popen) -> None:
    """Stop the process group of one process this script started."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace)
            # Children (NSD's xfrd and server) may outlive the parent by a moment.
            deadline = time.monotonic() + grace
            while group_alive(proc.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if not group_alive(proc.pid):
                break
        except subprocess.TimeoutExpired:
            continue
    if proc in STARTED:
        STARTED.remove(proc)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_all() -> None:
    for proc in list(STARTED):
        stop(proc)


# -- dnsperf -------------------------------------------------------------------------------------


@dataclass
class Perf:
    returncode: int
    output: str
    cpu_s: float
    summary: dict


def parse_dnsperf(text: str) -> dict:
    summary: dict = {}
    patterns = {
        "sent": r"Queries sent:\s+(\d+)",
        "completed": r"Queries completed:\s+(\d+)",
        "lost": r"Queries lost:\s+(\d+)",
        "qps": r"Queries per second:\s+([\d.]+)",
        "avg_latency_ms": r"Average Latency \(s\):\s+([\d.]+)",
        "runtime_s": r"Run time \(s\):\s+([\d.]+)",
    }
    for key, pattern in patterns.items():
        match = re.search(pattern, text)
        if match:
            summary[key] = float(match.group(1))
    if "avg_latency_ms" in summary:
        summary["avg_latency_ms"] *= 1000
    match = re.search(r"Response codes:\s+(.*)", text)
    if match:
        summary["rcodes"] = {code: int(n) for code, n in re.findall(r"(\w+) (\d+) \(", match.group(1))}
    match = re.search(r"Average packet size:\s+request (\d+), response (\d+)", text)
    if match:
        summary["request_bytes"], summary["response_bytes"] = int(match.group(1)), int(match.group(2))
    return summary


def latencies_ms(text: str) -> list[float]:
    """Per-query latencies from dnsperf -v lines such as '> NOERROR name AAAA 0.000123'."""
    out = []
    for line in text.splitlines():
        if line.startswith("> "):
            try:
                out.append(float(line.rsplit(None, 1)[1]) * 1000)
            except (ValueError, IndexError):
                continue
    return out


def dnsperf(program: str, port: int, queries: Path, seconds: float, cpus: set[int] | None, extra: list[str]) -> Perf:
    command = [program, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds)]
    command += ["-c", str(CLIENTS), *extra]
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_pinned(cpus),  # this script runs no threads
        )
        STARTED.append(proc)
        try:
            _pid, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
        finally:
            if proc.returncode is None:
                stop(proc)
            elif proc in STARTED:
                STARTED.remove(proc)
        out.seek(0)
        text = out.read().decode(errors="replace")
    return Perf(proc.returncode, text, usage.ru_utime + usage.ru_stime, parse_dnsperf(text))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


# -- verification --------------------------------------------------------------------------------


def _canonical(section) -> list:
    return sorted(
        (
            rrset.name.to_text().lower(),
            rrset.ttl,
            rrset.rdclass,
            rrset.rdtype,
            sorted(r.to_text().lower() for r in rrset),
        )
        for rrset in section
    )


def _shape(reply) -> dict:
    return {
        "rcode": reply.rcode(),
        "flags": dns.flags.to_text(reply.flags),
        "question": [q.name.to_text() for q in reply.question],
        "answer": _canonical(reply.answer),
        "authority": _canonical(reply.authority),
        "additional": _canonical(reply.additional),
        "edns": reply.edns,
        "payload": reply.payload if reply.edns >= 0 else None,
        "ednsflags": reply.ednsflags,
    }


def verify(nsd: Server, dnsd: Server, data: Data, seed: int) -> dict:
    """Ask both servers the same questions; every answer must be the same."""
    rng = random.Random(seed)

    def mixed(name: str) -> str:
        return "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c for c in name)

    names = data.names
    cases: list[tuple[str, str]] = []
    for name in rng.sample(names["dual"], 25):
        cases += [(name, "AAAA"), (name, "A"), (name, "MX"), (name, "TXT")]
        service, namespace = name.split(".")[:2]
        cases += [(f"{service}-0.{name}", "A"), (f"{service}-1.{name}", "AAAA"), (f"{service}-2.{name}", "A")]
        cases += [(f"{service}-0.{namespace}.pod.{ZONE}", "AAAA"), (f"{service}-1.{namespace}.pod.{ZONE}", "A")]
        cases += [(f"below.{name}", "AAAA")]
    for name in rng.sample(names["a_only"], 15):
        cases += [(name, "AAAA"), (name, "A")]
    for name in rng.sample(names["missing"], 20):
        cases += [(name, "AAAA"), (name, "A")]
    cases += [(ZONE, "SOA"), (ZONE, "NS"), (ZONE, "A"), (NS_NAME, "A"), (NS_NAME, "AAAA")]
    cases += [(f"svc.{ZONE}", "AAAA"), (f"ns-3.svc.{ZONE}", "A"), (f"pod.{ZONE}", "A"), (f"ns-1.pod.{ZONE}", "AAAA")]
    cases += [(f"_http._tcp.{names['dual'][0]}", "SRV"), (f"www.{ZONE}", "A")]
    mismatches = []
    checked = 0
    for name, rdtype in cases:
        for edns in (-1, 0):
            query = dns.message.make_query(
                mixed(name), rdtype, use_edns=edns, want_dnssec=edns == 0 and rng.random() < 0.3
            )
            query.flags &= ~dns.flags.RD if rng.random() < 0.5 else 0xFFFF
            replies = [dns.query.udp(query, "127.0.0.1", port=s.port, timeout=2) for s in (nsd, dnsd)]
            shapes = [_shape(r) for r in replies]
            checked += 1
            if shapes[0] != shapes[1]:
                mismatches.append(
                    {"query": f"{query.question[0].name} {rdtype} edns={edns}", "nsd": shapes[0], "dnsd": shapes[1]}
                )
    return {"cases": checked, "mismatches": mismatches}


def dnsd_serial(server: Server) -> int:
    reply = dns.query.udp(dns.message.make_query(ZONE, "SOA"), "127.0.0.1", port=server.port, timeout=2)
    return reply.answer[0][0].serial


def stable_serial(server: Server, timeout: float = 15) -> int:
    """dnsd's serial once it stops moving (it steps once, a second after the file is loaded)."""
    deadline = time.monotonic() + timeout
    serial = dnsd_serial(server)
    while time.monotonic() < deadline:
        time.sleep(1.3)
        again = dnsd_serial(server)
        if again == serial:
            return serial
        serial = again
    raise RuntimeError("dnsd's SOA serial keeps moving")


# -- measurement ---------------------------------------------------------------------------------

LAYOUTS = {
    # server CPUs, dnsperf CPUs, /proc/stat lines whose busy time must be only server + dnsperf
    "onecore": ({0}, {0}, ("cpu0",)),
    "split": ({1}, {0}, ("cpu0", "cpu1")),
}
HZ = os.sysconf("SC_CLK_TCK")


@dataclass
class Settings:
    dnsperf: str
    secs: float
    lat_secs: float
    warmup: float
    lat_qps: int
    dirty_limit: float
    settle: float
    files: dict[str, QueryFiles]


def settle(limit: float, cpus: tuple[str, ...], window: float = 0.25) -> float:
    """Wait (at most `limit` seconds) until the CPUs a run uses are almost idle; the time waited."""
    started = time.monotonic()
    while True:
        before = cpu_ticks()
        time.sleep(window)
        after = cpu_ticks()
        busy = sum(after[c][0] - before[c][0] for c in cpus) / HZ / window
        waited = time.monotonic() - started
        if busy < 0.15 * len(cpus) or waited >= limit:
            return round(waited - window, 1)


def dnsperf_flags(variant: Variant) -> list[str]:
    return (["-m", "tcp"] if variant.mode == "tcp" else []) + (["-e"] if variant.edns else [])


def full_speed(server: Server, variant: Variant, settings: Settings) -> dict:
    """dnsperf at full speed against a warmed-up server: QPS, CPU per query, and whether the run is clean."""
    _server_cpus, perf_cpus, check = LAYOUTS[variant.layout]
    files = settings.files[variant.mix]
    ticks, cpu, wall = cpu_ticks(), server.cpu_ns(), time.monotonic()
    perf = dnsperf(settings.dnsperf, server.port, files.paths["main"], settings.secs, perf_cpus, dnsperf_flags(variant))
    ticks2, cpu2, wall2 = cpu_ticks(), server.cpu_ns(), time.monotonic()
    if perf.returncode != 0 or "qps" not in perf.summary:
        raise RuntimeError(f"dnsperf failed against {server.kind}: {perf.output[-2000:]}")
    summary = perf.summary
    completed = summary.get("completed", 0) or 1
    server_s = (cpu2 - cpu) / 1e9
    busy = sum(ticks2[c][0] - ticks[c][0] for c in check) / HZ
    elapsed = wall2 - wall
    result = dict(
        qps=round(summary["qps"]),
        sent=int(summary.get("sent", 0)),
        completed=int(summary.get("completed", 0)),
        lost=int(summary.get("lost", 0)),
        rcodes=summary.get("rcodes", {}),
        request_bytes=summary.get("request_bytes"),
        response_bytes=summary.get("response_bytes"),
        avg_latency_ms=round(summary.get("avg_latency_ms", float("nan")), 3),
        server_cpu_pct=round(100 * server_s / elapsed, 1),
        dnsperf_cpu_pct=round(100 * perf.cpu_s / elapsed, 1),
        server_us_per_query=round(server_s / completed * 1e6, 2),
        dnsperf_us_per_query=round(perf.cpu_s / completed * 1e6, 2),
        residual_cpu_pct=round(100 * (busy - server_s - perf.cpu_s) / elapsed, 1),
        looped=summary.get("sent", 0) > files.lines["main"],
    )
    result["clean"] = result["residual_cpu_pct"] < settings.dirty_limit
    nxdomain = result["rcodes"].get("NXDOMAIN", 0) / completed
    result["rcodes_as_expected"] = abs(nxdomain - files.nxdomain_share) < 0.01 and set(result["rcodes"]) <= {
        "NOERROR",
        "NXDOMAIN",
    }
    return result


def fixed_rate(server: Server, variant: Variant, settings: Settings) -> dict:
    """dnsperf at settings.lat_qps with per-query latencies: p50, p99, p99.9, max."""
    _server_cpus, perf_cpus, _check = LAYOUTS[variant.layout]
    lat = dnsperf(
        settings.dnsperf,
        server.port,
        settings.files[variant.mix].paths["lat"],
        settings.lat_secs,
        perf_cpus,
        [*dnsperf_flags(variant), "-Q", str(settings.lat_qps), "-v"],
    )
    if lat.returncode != 0 or "qps" not in lat.summary:
        raise RuntimeError(f"dnsperf -Q failed against {server.kind}: {lat.output[-2000:]}")
    values = latencies_ms(lat.output)
    return {
        "qps": round(lat.summary.get("qps", 0)),
        "queries": len(values),
        "lost": int(lat.summary.get("lost", 0)),
        "p50_ms": round(percentile(values, 50), 3),
        "p99_ms": round(percentile(values, 99), 3),
        "p999_ms": round(percentile(values, 99.9), 3),
        "max_ms": round(max(values, default=float("nan")), 3),
    }


def warm_up(server: Server, variant: Variant, settings: Settings) -> None:
    _server_cpus, perf_cpus, _check = LAYOUTS[variant.layout]
    files = settings.files[variant.mix]
    dnsperf(settings.dnsperf, server.port, files.paths["warm"], settings.warmup, perf_cpus, dnsperf_flags(variant))


def start_server(server: Server, variant: Variant, settings: Settings) -> dict:
    """Wait for quiet CPUs, then start a fresh server in the variant's layout."""
    server_cpus, _perf_cpus, check = LAYOUTS[variant.layout]
    result: dict = {"server": server.kind}
    result["waited_for_quiet_s"] = settle(settings.settle, check)
    result["started"] = time.strftime("%H:%M:%S")
    started = time.monotonic()
    server.start(server_cpus)
    result["start_s"] = round(time.monotonic() - started, 2)
    return result


def run_one(server: Server, variant: Variant, settings: Settings) -> dict:
    """A fresh server: warm-up, full-speed run, then a fixed-rate run with per-query latency."""
    result = start_server(server, variant, settings)
    try:
        warm_up(server, variant, settings)
        result.update(full_speed(server, variant, settings))
        if variant.latency:
            result["latency"] = fixed_rate(server, variant, settings)
    finally:
        server.stop()
    return result


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None and v == v]
    return statistics.median(values) if values else None


def summarize(runs: list[dict]) -> dict:
    clean = [r for r in runs if r.get("clean")]
    used = clean or runs
    out = {
        "runs": len(runs),
        "clean_runs": len(clean),
        "qps": median([r["qps"] for r in used]),
        "qps_min": min(r["qps"] for r in used),
        "qps_max": max(r["qps"] for r in used),
        "server_us_per_query": median([r["server_us_per_query"] for r in used]),
        "dnsperf_us_per_query": median([r["dnsperf_us_per_query"] for r in used]),
        "server_cpu_pct": median([r["server_cpu_pct"] for r in used]),
        "dnsperf_cpu_pct": median([r["dnsperf_cpu_pct"] for r in used]),
        "lost": sum(r["lost"] for r in used),
        "rcodes_as_expected": all(r["rcodes_as_expected"] for r in runs),
        "looped": any(r["looped"] for r in runs),
        "response_bytes": median([r.get("response_bytes") for r in used]),
    }
    lat = [r["latency"] for r in runs if "latency" in r]
    if lat:
        out["lat_p50_ms"] = median([x["p50_ms"] for x in lat])
        out["lat_p99_ms"] = median([x["p99_ms"] for x in lat])
        out["lat_p999_ms"] = median([x["p999_ms"] for x in lat])
        out["lat_lost"] = sum(x["lost"] for x in lat)
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def cell(value: float | None, fmt: str = "{:,.0f}") -> str:
    """A table cell: the value formatted, or '-' when there is none."""
    return "-" if value is None else fmt.format(value)


def latency_cell(summary: dict) -> str:
    if "lat_p50_ms" not in summary:
        return "-"
    return f"{cell(summary['lat_p50_ms'], '{:.3f}')} / {cell(summary['lat_p99_ms'], '{:.3f}')}"


def table(results: dict) -> str:
    rows = [
        "| variant | NSD QPS | dnsd QPS | dnsd/NSD | NSD µs/q | dnsd µs/q "
        "| NSD p50 / p99 ms | dnsd p50 / p99 ms | clean runs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in results.items():
        a, b = v["nsd"], v["dnsd"]
        rows.append(
            f"| {name} | {cell(a['qps'])} | {cell(b['qps'])} | {cell(v['ratio_qps'], '{:.2f}')} "
            f"| {cell(a['server_us_per_query'], '{:.2f}')} | {cell(b['server_us_per_query'], '{:.2f}')} "
            f"| {latency_cell(a)} | {latency_cell(b)} | {a['clean_runs']}/{a['runs']}, {b['clean_runs']}/{b['runs']} |"
        )
    return "\n".join(rows)


def summary_notes(summary: dict, lat_qps: int) -> list[str]:
    """What a reader of one summary (see `summarize`) must know: unexpected rcodes, looped files, losses, dirty runs."""
    found = []
    if not summary["rcodes_as_expected"]:
        found.append("rcodes differ from the query mix")
    if summary["looped"]:
        found.append("dnsperf read past the end of the query file")
    if summary["lost"]:
        found.append(f"{summary['lost']} queries lost")
    if summary.get("lat_lost"):
        found.append(f"{summary['lat_lost']} queries lost at {lat_qps}/s")
    if summary["clean_runs"] < summary["runs"]:
        found.append(f"{summary['runs'] - summary['clean_runs']} dirty run(s) kept (no retries left)")
    return found


def notes(results: dict, lat_qps: int) -> list[str]:
    """What a reader of the table must know: the summaries' notes, and saturation in the split layout."""
    lines = []
    for name, v in results.items():
        found = []
        for kind in ("nsd", "dnsd"):
            s = v[kind]
            found += [f"{kind}: {note}" for note in summary_notes(s, lat_qps)]
            if v["layout"] == "split":
                found.append(
                    f"{kind}: server {s['server_cpu_pct']:.0f}%, dnsperf {s['dnsperf_cpu_pct']:.0f}% of a core"
                )
        if v["layout"] == "split" and v["nsd"]["dnsperf_cpu_pct"] >= 95:
            found.append("NSD is bound by dnsperf here, so this ratio flatters dnsd")
        if found:
            lines.append(f"{name}: " + "; ".join(found))
    return lines


def git_state() -> dict:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False).stdout.strip()

    return {"commit": git("rev-parse", "--short", "HEAD"), "dnsd_changed": bool(git("status", "--porcelain", "dnsd"))}


def cpu_model() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    return match.group(1).strip() if match else platform.processor()


def udp_batching(requested: str) -> str:
    """What dnsd's --udp-batching will be in effect: c needs the extension built in this checkout."""
    if requested != "c":
        return requested
    built = subprocess.run([sys.executable, "-c", "import dnsd.transports._batch"], cwd=ROOT, capture_output=True)
    return "c" if built.returncode == 0 else "python (the C extension is not built)"


def event_loop() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of the dnsperf runs, shared with bench/under_changes.py; `run_times` resolves their defaults."""
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer reruns")
    parser.add_argument("--secs", type=float, help="seconds per full-speed run (default 6, quick 2)")
    parser.add_argument("--lat-secs", type=float, help="seconds per fixed-rate latency run (default 4, quick 1)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per run (default 1, quick 0.5)")
    parser.add_argument("--lat-qps", type=int, default=10_000, help="query rate of the latency runs")
    parser.add_argument("--services", type=int, default=1_000, help="dual-stack Services (and as many IPv4-only)")
    parser.add_argument("--dirty-limit", type=float, default=10.0, help="%% of a core used by others: run is dirty")
    parser.add_argument("--retries", type=int, default=None, help="reruns of dirty runs in all (default 6)")
    parser.add_argument("--budget", type=float, default=None, help="no reruns after this many seconds")
    parser.add_argument(
        "--settle",
        type=float,
        default=None,
        help="most seconds to wait for quiet CPUs before a run (default 3, quick 1)",
    )
    parser.add_argument("--seed", type=int, default=20261126)
    parser.add_argument(
        "--udp-batching", choices=("c", "python", "off"), default="c", help="dnsd's --udp-batching (default c)"
    )


def run_times(args: argparse.Namespace) -> tuple[float, float, float, float]:
    """Seconds of the full-speed run, the fixed-rate run, the warm-up, and the most to wait for quiet CPUs."""
    quick = args.quick
    secs = args.secs or (2.0 if quick else 6.0)
    lat_secs = args.lat_secs or (1.0 if quick else 4.0)
    warmup = args.warmup or (0.5 if quick else 1.0)
    settle_s = args.settle if args.settle is not None else (1.0 if quick else 3.0)
    return secs, lat_secs, warmup, settle_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser)
    parser.add_argument("--runs", type=int, default=3, help="runs per server and variant")
    parser.add_argument(
        "--variants", default=None, help=f"comma-separated, of {','.join(VARIANTS)} (default all; quick: not split)"
    )
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "vs_nsd.json"))
    parser.add_argument("--keep", action="store_true", help="keep the generated files (path printed)")
    args = parser.parse_args()
    quick = args.quick
    secs, lat_secs, warmup, settle_s = run_times(args)
    retries = args.retries if args.retries is not None else (1 if quick else 6)
    budget = args.budget or (110 if quick else 540)
    names = args.variants.split(",") if args.variants else [v for v in VARIANTS if not (quick and v == "split")]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}")
    if (os.cpu_count() or 1) < 2 and any(VARIANTS[v].layout == "split" for v in names):
        names = [v for v in names if VARIANTS[v].layout != "split"]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))

    began = time.monotonic()
    tools = ensure_tools()
    workdir = Path(tempfile.mkdtemp(prefix="vs_nsd-"))
    try:
        return bench(args, names, tools, workdir, (secs, lat_secs, warmup, settle_s), retries, budget, began)
    finally:
        stop_all()
        if args.keep:
            print(f"generated files kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def bench(args, names, tools, workdir, times, retries, budget, began) -> int:
    secs, lat_secs, warmup, settle_s = times
    data = build_data(args.services)
    cluster_path = workdir / "cluster.json"
    cluster_path.write_text(cluster_file(data))
    # The zone file's serial is dnsd's, so negative answers carry the same SOA.
    dnsd = Dnsd(workdir, cluster_path, args.udp_batching)
    t = time.monotonic()
    dnsd.start(None)
    dnsd_start_s = time.monotonic() - t
    zone_path = workdir / "nsd" / f"{ZONE}.zone"
    zone_path.parent.mkdir(exist_ok=True)
    try:
        zone_path.write_text(zone_file(data, stable_serial(dnsd)))
        nsd = Nsd(workdir, tools["nsd"], zone_path)
        nsd.start(None)
        try:
            checked = verify(nsd, dnsd, data, args.seed)
        finally:
            nsd.stop()
    finally:
        dnsd.stop()
    sizes: dict[str, dict[str, int]] = {}
    files: dict[str, QueryFiles] = {}
    if not checked["mismatches"]:
        mixes = sorted({VARIANTS[v].mix for v in names})
        for mix in mixes:
            sizes[mix] = {
                "warm": WARM_LINES,
                "main": int(QPS_CEILING * secs) + 20_000,
                "lat": int(args.lat_qps * lat_secs * 1.1) + 1_000,
            }
        t = time.monotonic()
        files = {mix: write_query_files(data, mix, sizes[mix], workdir, args.seed) for mix in mixes}
        lines = sum(n for per_mix in sizes.values() for n in per_mix.values())
        print(f"query files: {len(mixes)} mixes, {lines:,} lines in {time.monotonic() - t:.1f} s", flush=True)

    record_count = sum(len(v) for rrsets in data.records.values() for v in rrsets.values()) + 3
    report: dict = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "cpu_model": cpu_model(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "dnsd_event_loop": event_loop(),
            "dnsd_udp_batching": udp_batching(args.udp_batching),
            "nsd": version([tools["nsd"], "-v"]),
            "dnsperf": version([tools["dnsperf"], "-h"]),
            **git_state(),
        },
        "settings": {
            "secs": secs,
            "lat_secs": lat_secs,
            "warmup": warmup,
            "settle": settle_s,
            "runs": args.runs,
            "lat_qps": args.lat_qps,
            "clients": CLIENTS,
            "dirty_limit_pct": args.dirty_limit,
            "layouts": {k: {"server_cpus": sorted(v[0]), "dnsperf_cpus": sorted(v[1])} for k, v in LAYOUTS.items()},
            "variants": {v: VARIANTS[v].about for v in names},
        },
        "data": {
            "zone": ZONE,
            "dual_names": len(data.names["dual"]),
            "a_only_names": len(data.names["a_only"]),
            "owner_names": len(data.records) + 2,
            "records": record_count,
            "kubernetes_objects": len(data.objects),
            "query_lines": sizes,
            "nxdomain_share": {m: round(f.nxdomain_share, 4) for m, f in files.items()},
            "nodata_share": {m: round(f.nodata_share, 4) for m, f in files.items()},
            "dnsd_ready_s": round(dnsd_start_s, 2),
        },
        "memo": MEMO,
        "verification": {"cases": checked["cases"], "mismatches": len(checked["mismatches"])},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if checked["mismatches"]:
        report["verification"]["examples"] = checked["mismatches"][:5]
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"ANSWERS DIFFER in {len(checked['mismatches'])} of {checked['cases']} cases; see {out}")
        for m in checked["mismatches"][:3]:
            print(json.dumps(m, default=str))
        return 1
    print(
        f"answers identical: {checked['cases']} queries (incl. NXDOMAIN, NODATA, EDNS); "
        f"dnsd ready in {dnsd_start_s:.1f} s"
    )

    settings = Settings(tools["dnsperf"], secs, lat_secs, warmup, args.lat_qps, args.dirty_limit, settle_s, files)
    results: dict = {}
    raw: dict = {}
    for name in names:
        variant = VARIANTS[name]
        runs: dict[str, list[dict]] = {"nsd": [], "dnsd": []}
        dirty: list[dict] = []
        for r in range(args.runs):
            for server in (nsd, dnsd) if r % 2 == 0 else (dnsd, nsd):
                while True:
                    result = run_one(server, variant, settings)
                    lat = result.get("latency")
                    print(
                        f"  {name:6} run {r + 1} {server.kind:4}: {result['qps']:>8,} qps  "
                        f"server {result['server_us_per_query']:5.2f} us/q  others {result['residual_cpu_pct']:5.1f}%"
                        + (
                            f"  @{args.lat_qps // 1000}k p50 {lat['p50_ms']:.3f} p99 {lat['p99_ms']:.3f} ms"
                            if lat
                            else ""
                        )
                        + ("" if result["clean"] else "  DIRTY"),
                        flush=True,
                    )
                    if result["clean"] or retries <= 0 or time.monotonic() - began > budget:
                        break
                    retries -= 1
                    dirty.append(result)
                runs[server.kind].append(result)
        summary = {kind: summarize(runs[kind]) for kind in ("nsd", "dnsd")}
        results[name] = {
            "about": variant.about,
            "layout": variant.layout,
            **summary,
            "ratio_qps": ratio(summary["dnsd"]["qps"], summary["nsd"]["qps"]),
            # NSD's server CPU per query over dnsd's: the ratio without dnsperf's share of the core.
            "ratio_cpu": ratio(summary["nsd"]["server_us_per_query"], summary["dnsd"]["server_us_per_query"]),
        }
        raw[name] = {"runs": runs, "discarded_dirty": dirty}
    report["results"] = results
    report["notes"] = notes(results, args.lat_qps)
    report["runs"] = raw
    report["elapsed_s"] = round(time.monotonic() - began)
    text = table(results)
    report["table"] = text
    out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    title = (
        f"dnsd vs NSD {report['date']}, median of {args.runs} runs each, alternating; server and dnsperf "
        f"both on CPU 0 (split: server on CPU 1); latency at {args.lat_qps:,} queries/s; memo: {MEMO}"
    )
    print_report(title, text, report, out)
    return 0


def print_report(title: str, text: str, report: dict, out: Path) -> None:
    """The end of a benchmark's output: what was measured, the table, the notes, where the JSON went."""
    print()
    print(title)
    print(text)
    for line in report["notes"]:
        print(f"  {line}")
    print(f"written {out} ({report['elapsed_s']} s)")


if __name__ == "__main__":
    sys.exit(main())
