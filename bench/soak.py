#!/usr/bin/env python3
"""A soak test: dnsd at full load for minutes, its memory and errors sampled throughout.

    python3 bench/soak.py                 # 10 minutes (installs dnsperf with apt-get if missing)
    python3 bench/soak.py --minutes 1     # a quick look

dnsd serves the data bench/vs_nsd.py generates (1,000 dual-stack and 1,000 IPv4-only Services
with their pods and EndpointSlices) on loopback. dnsperf (DNS-OARC) sends the "nodata" mix of
vs_nsd.py (answers, NODATA and NXDOMAIN, every name in random letter case) over UDP as fast as
dnsd answers, with 10 clients, for the whole run; a second dnsperf keeps 1,000 queries a second
going over TCP, on pipelined, reused connections. dnsd runs on CPU 0 and dnsperf on CPU 1 where
there are two.

Every 10 s the script samples dnsd's RSS (/proc) and /metrics. It passes when:
- RSS at the end is within 5 % (or 4 MiB) of RSS after the first minute of load (flat, no leak);
- dnsperf lost no query and got no SERVFAIL, and dnsd logged no error or traceback;
- /metrics counted as many responses as dnsperf completed queries.

Results go to bench/results/soak.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import vs_nsd  # noqa: E402  (the data, the query files and dnsperf's output parser)

SAMPLE_EVERY = 10.0
TCP_QPS = 1000


def ensure_dnsperf() -> str:
    program = vs_nsd.which("dnsperf")
    if program is not None:
        return program
    if os.geteuid() != 0:
        sys.exit("missing dnsperf: run as root, or apt-get install dnsperf")
    print("installing dnsperf (apt-get)", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    lock = ["-o", "DPkg::Lock::Timeout=300"]
    subprocess.run(["apt-get", *lock, "update", "-qq"], check=True, env=env)
    install = ["apt-get", *lock, "install", "-y", "-qq", "--no-install-recommends", "dnsperf"]
    subprocess.run(install, check=True, env=env)
    program = vs_nsd.which("dnsperf")
    if program is None:
        sys.exit("dnsperf still missing after apt-get install")
    return program


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    """The dnsd_ counters that say what was answered and what went wrong, summed over labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    totals: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(dnsd_[a-z_]+?)(\{[^}]*\})? (\S+)$", text, re.MULTILINE):
        key = name
        if name == "dnsd_dns_responses_total":
            rcode = re.search(r'rcode="([^"]+)"', labels)
            key = f"{name}:{rcode.group(1) if rcode else ''}"
        totals[key] = totals.get(key, 0.0) + float(value)
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--services", type=int, default=1000)
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "soak.json")
    args = parser.parse_args()
    seconds = args.minutes * 60
    dnsperf = ensure_dnsperf()
    cpus = os.sched_getaffinity(0)
    server_cpus, perf_cpus = ({0}, {1}) if {0, 1} <= cpus else (None, None)

    with tempfile.TemporaryDirectory(prefix="dnsd-soak-") as scratch:
        workdir = Path(scratch)
        data = vs_nsd.build_data(args.services)
        cluster = workdir / "cluster.json"
        cluster.write_text(vs_nsd.cluster_file(data))
        queries = vs_nsd.write_query_files(data, "nodata", {"main": 500_000}, workdir, seed=7).paths["main"]
        port, http_port = vs_nsd.free_port(), vs_nsd.free_port()
        log_path = workdir / "dnsd.log"
        with open(log_path, "wb") as log:
            dnsd = subprocess.Popen(
                [
                    sys.executable, "-m", "dnsd", "--zone", vs_nsd.ZONE, "--from-file", str(cluster),
                    "--listen", f"127.0.0.1:{port}", "--http", f"127.0.0.1:{http_port}", "--lameduck", "0",
                ],
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group, which vs_nsd.stop signals
                preexec_fn=vs_nsd._pinned(server_cpus),
            )  # fmt: skip
        try:
            deadline = time.monotonic() + 60
            while b"synced" not in log_path.read_bytes():
                if dnsd.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"dnsd did not start:\n{log_path.read_text()}")
                time.sleep(0.1)
            time.sleep(1.0)
            rss_idle = rss_kib(dnsd.pid)
            base = [dnsperf, "-s", "127.0.0.1", "-p", str(port), "-d", str(queries), "-l", str(seconds)]
            outputs = {name: (workdir / f"dnsperf-{name}.txt").open("w+") for name in ("udp", "tcp")}
            perfs = {
                "udp": subprocess.Popen(
                    [*base, "-c", "10"], stdout=outputs["udp"], stderr=subprocess.STDOUT,
                    preexec_fn=vs_nsd._pinned(perf_cpus),
                ),
                "tcp": subprocess.Popen(
                    [*base, "-m", "tcp", "-c", "4", "-Q", str(TCP_QPS)], stdout=outputs["tcp"],
                    stderr=subprocess.STDOUT, preexec_fn=vs_nsd._pinned(perf_cpus),
                ),
            }  # fmt: skip
            print(f"soak: {args.minutes:g} min of dnsperf (UDP flat out, TCP {TCP_QPS}/s) against dnsd pid {dnsd.pid}")
            started = time.monotonic()
            samples = []
            while any(perf.poll() is None for perf in perfs.values()):
                time.sleep(SAMPLE_EVERY)
                if dnsd.poll() is not None:
                    sys.exit(f"dnsd exited with {dnsd.returncode}:\n{log_path.read_text()[-3000:]}")
                elapsed = time.monotonic() - started
                metrics = scrape(http_port)
                sample = {
                    "t_s": round(elapsed, 1),
                    "rss_kib": rss_kib(dnsd.pid),
                    "cpu_s": round(cpu_seconds(dnsd.pid), 1),
                    "requests": metrics.get("dnsd_dns_requests_total", 0),
                    "servfail": metrics.get("dnsd_dns_responses_total:SERVFAIL", 0),
                    "dropped": metrics.get("dnsd_dns_dropped_total", 0),
                }
                samples.append(sample)
                print(
                    f"  {elapsed:5.0f} s  RSS {sample['rss_kib'] / 1024:6.1f} MiB  "
                    f"{sample['requests']:12,.0f} queries  SERVFAIL {sample['servfail']:.0f}",
                    flush=True,
                )
            results = {}
            for name, out in outputs.items():
                out.seek(0)
                results[name] = vs_nsd.parse_dnsperf(out.read())
            final = scrape(http_port)
        finally:
            if dnsd.poll() is None:
                vs_nsd.stop(dnsd)
        log_text = log_path.read_text(errors="replace")

    warm = next((s for s in samples if s["t_s"] >= 60), samples[0])
    rss_end = samples[-1]["rss_kib"]
    completed = sum(r.get("completed", 0) for r in results.values())
    lost = sum(r.get("lost", 0) for r in results.values())
    servfail = sum(r.get("rcodes", {}).get("SERVFAIL", 0) for r in results.values())
    responses = sum(v for k, v in final.items() if k.startswith("dnsd_dns_responses_total:"))
    errors = [line for line in log_text.splitlines() if " ERROR " in line or "Traceback" in line]
    flat = rss_end - warm["rss_kib"] <= max(0.05 * warm["rss_kib"], 4096)
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "minutes": args.minutes,
        "services": args.services,
        "rss_kib": {"idle": rss_idle, "after_1_min": warm["rss_kib"], "end": rss_end,
                    "max": max(s["rss_kib"] for s in samples)},
        "dnsperf": results,
        "queries_completed": completed,
        "queries_lost": lost,
        "servfail": servfail,
        "dnsd_responses_counted": responses,
        "dnsd_log_errors": errors[:20],
        "samples": samples,
        "passed": bool(flat and lost == 0 and servfail == 0 and not errors and responses >= completed),
    }  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1) + "\n")
    udp_qps = results["udp"].get("qps", 0)
    print(
        f"RSS idle {rss_idle / 1024:.1f} MiB, after 1 min {warm['rss_kib'] / 1024:.1f} MiB, "
        f"end {rss_end / 1024:.1f} MiB; {completed:,.0f} queries ({udp_qps:,.0f}/s UDP), "
        f"{lost:.0f} lost, {servfail:.0f} SERVFAIL, {len(errors)} log errors -> "
        + ("PASS" if report["passed"] else "FAIL")
    )
    print(f"wrote {args.output}")
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
