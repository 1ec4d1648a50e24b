#!/usr/bin/env python3
"""dnsd's own CPU time per Kubernetes change, with no query load.

    python3 bench/change_cost.py                              # this checkout: 3 runs, about 2 minutes
    python3 bench/change_cost.py --checkout /tmp/old --checkout .   # two checkouts, alternating
    python3 bench/change_cost.py --profile /tmp/prof          # and a py-spy profile per checkout

under_changes.py measures what the changes cost in queries per second, which needs a quiet
machine. CPU seconds per change are much less sensitive to other work on the machine, so this
is the figure to compare while working on the change path. What it does:

1. Loads the test API server (tests/fakekube, its own process) with vs_nsd.py's cluster
   (1,000 dual-stack and 1,000 IPv4-only Services, 9,000 objects) and starts under_changes.py's
   change driver (the official client, JSON patches, each change put back about a second later).
2. Per run: a fresh dnsd from the checkout (vs_nsd.py's flags, `--kubeconfig`, /metrics on),
   ready on /readyz; its idle CPU over a few seconds; then `--changes` writes at `--rate` per
   second, and a 1.5 s tail (the serial step and anything deferred). dnsd's CPU time (every
   thread, from /proc/PID/task/*/schedstat) over the changes and the tail, minus the idle rate
   over as long, divided by the writes, is its CPU per change. dnsd's /metrics must show every
   write applied (read outside the measured window: a scrape costs CPU too).
3. Runs alternate between checkouts (old, new, old, new, ...); the figure is the median.
   With `--profile DIR`, one more run per checkout with `py-spy record` attached during the
   changes (not counted: sampling slows the process) writes dnsd's stacks there.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import vs_nsd  # noqa: E402
from under_changes import Driver, http_get, read_metrics, threads_cpu_ns  # noqa: E402

TAIL_SECONDS = 1.5
"""After the last write: dnsd applies it within milliseconds, the serial moves within a second."""
IDLE_SECONDS = 3.0


@dataclass(frozen=True)
class Checkout:
    path: Path
    label: str

    @classmethod
    def at(cls, path: Path) -> Checkout:
        """The checkout at `path`, labelled with its commit (and whether dnsd/ differs from it)."""

        def git(*args: str) -> str:
            return subprocess.run(["git", *args], cwd=path, capture_output=True, text=True, check=False).stdout.strip()

        commit = git("rev-parse", "--short", "HEAD") or "?"
        edited = git("status", "--porcelain", "--untracked-files=no", "--", "dnsd")
        return cls(path, f"{path} ({commit}{' + edits' if edited else ''})")


class Dnsd:
    """dnsd from one checkout following the API server, with vs_nsd.py's flags and /metrics."""

    def __init__(self, checkout: Checkout, kubeconfig: str, log: Path) -> None:
        self.port, self.http_port = vs_nsd.free_port(), vs_nsd.free_port()
        command = [sys.executable, "-m", "dnsd", "--zone", vs_nsd.ZONE, "--kubeconfig", kubeconfig]
        command += ["--listen", f"127.0.0.1:{self.port}", "--http", f"127.0.0.1:{self.http_port}"]
        command += ["--lameduck", "0", "--ttl", str(vs_nsd.TTL), "--soa-timers", ",".join(map(str, vs_nsd.SOA_TIMERS))]
        command += ["--ns", f"{vs_nsd.NS_NAME}={vs_nsd.NS_ADDRESS}", "--soa-rname", vs_nsd.HOSTMASTER]
        command += ["--log-level", "warning"]
        env = {**os.environ, "PYTHONPATH": str(checkout.path)}  # this checkout's dnsd, not the installed one
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=checkout.path,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
            )
        vs_nsd.STARTED.append(self.proc)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsd exited: {self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError):
                if self.get("/readyz")[0] == 200:
                    return
            time.sleep(0.05)
        raise TimeoutError(f"dnsd not ready: {self.log.read_text(errors='replace')[-2000:]}")

    def get(self, path: str) -> tuple[int, str]:
        return http_get(self.http_port, path)

    def applied(self) -> int:
        """Changes dnsd has applied: the count of its programming-latency histogram."""
        return int(read_metrics(self.http_port)["applied"])

    def cpu_ns(self) -> int:
        return threads_cpu_ns(self.pid)

    def stop(self) -> None:
        vs_nsd.stop(self.proc)


def measure(dnsd: Dnsd, driver: Driver, changes: int, rate: float) -> dict:
    """One measured stretch of changes on a ready dnsd: CPU per change, idle rate subtracted."""
    time.sleep(1.0)  # the sync's aftermath (freezing, the first serial step) is not a change's cost
    idle_start, idle_cpu = time.monotonic(), dnsd.cpu_ns()
    time.sleep(IDLE_SECONDS)
    idle_ns_per_s = (dnsd.cpu_ns() - idle_cpu) / (time.monotonic() - idle_start)
    applied_before = dnsd.applied()
    start, cpu_start = time.monotonic(), dnsd.cpu_ns()
    driver.ask("go")
    time.sleep(changes / rate)
    segment = driver.ask("halt")
    time.sleep(TAIL_SECONDS)
    cpu_ns, window = dnsd.cpu_ns() - cpu_start, time.monotonic() - start
    writes = len(segment["acks"])
    applied = dnsd.applied() - applied_before
    driver.ask("revert")
    busy_ns = cpu_ns - idle_ns_per_s * window
    return {
        "writes": writes,
        "applied": applied,
        "write_errors": len(segment["errors"]),
        "window_s": round(window, 2),
        "cpu_ms": round(cpu_ns / 1e6, 1),
        "idle_us_per_s": round(idle_ns_per_s / 1e3, 1),
        "us_per_change": round(busy_ns / 1e3 / max(writes, 1), 1),
    }


def run(checkout: Checkout, kubeconfig: str, driver: Driver, args: argparse.Namespace, workdir: Path) -> dict:
    dnsd = Dnsd(checkout, kubeconfig, workdir / "dnsd.log")
    try:
        dnsd.wait_ready()
        result = measure(dnsd, driver, args.changes, args.rate)
    finally:
        dnsd.stop()
    if result["applied"] != result["writes"]:
        result["note"] = f"dnsd applied {result['applied']} of {result['writes']} writes"
    return result


def profile(checkout: Checkout, kubeconfig: str, driver: Driver, args: argparse.Namespace, workdir: Path) -> Path:
    """One stretch of changes with py-spy attached to a ready dnsd; the stacks it wrote.

    Collapsed stacks (py-spy's "raw" format: grep-able, and speedscope and flamegraph.pl read
    them) with native frames, so time in TLS and the JSON decoder shows; threads waiting in a
    system call (epoll, a lock) are sampled too and must be left out when reading it."""
    out = Path(args.profile) / f"change_cost-{checkout.path.name or 'root'}-{int(time.time())}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    dnsd = Dnsd(checkout, kubeconfig, workdir / "dnsd-profiled.log")
    try:
        dnsd.wait_ready()
        time.sleep(1.0)
        seconds = math.ceil(args.changes / args.rate + TAIL_SECONDS)
        command = [py_spy, "record", "--pid", str(dnsd.pid), "--format", "raw", "--rate", "1000", "--native"]
        command += ["--threads", "--duration", str(seconds), "--output", str(out)]
        with open(workdir / "py-spy.log", "ab") as log:
            recorder = subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
        vs_nsd.STARTED.append(recorder)
        time.sleep(0.5)  # py-spy attaching
        driver.ask("go")
        time.sleep(args.changes / args.rate)
        driver.ask("halt")
        recorder.wait(seconds + 30)
        vs_nsd.STARTED.remove(recorder)
        driver.ask("revert")
    finally:
        dnsd.stop()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", help="a checkout whose dnsd to run (repeatable; default: this)")
    parser.add_argument("--changes", type=int, default=3000, help="writes per run (default 3000)")
    parser.add_argument("--rate", type=float, default=100.0, help="writes per second (default 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs per checkout (default 3)")
    parser.add_argument("--services", type=int, default=1000, help="dual-stack Services in the cluster")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--profile", metavar="DIR", help="also record one py-spy profile per checkout into DIR")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "change_cost.json"))
    args = parser.parse_args()
    checkouts = [Checkout.at(Path(p).resolve()) for p in (args.checkout or [str(ROOT)])]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: sys.exit(128 + number))
    workdir = Path(tempfile.mkdtemp(prefix="change_cost-"))
    try:
        return bench(args, checkouts, workdir)
    finally:
        vs_nsd.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)


def bench(args: argparse.Namespace, checkouts: list[Checkout], workdir: Path) -> int:
    from fakekube import FakeKubeProcess

    began = time.monotonic()
    cluster_path = workdir / "cluster.json"
    cluster_path.write_text(vs_nsd.cluster_file(vs_nsd.build_data(args.services)))
    fake = FakeKubeProcess("--load", str(cluster_path), "--bookmark-interval", "60", start_timeout=120)
    fake.start()
    driver: Driver | None = None
    runs: dict[str, list[dict]] = {c.label: [] for c in checkouts}
    profiles: dict[str, str] = {}
    try:
        driver = Driver(fake.kubeconfig, args.rate, args.services, args.seed, workdir / "driver.log")
        for _ in range(args.runs):
            for checkout in checkouts:
                result = run(checkout, fake.kubeconfig, driver, args, workdir)
                runs[checkout.label].append(result)
                print(
                    f"  {checkout.label}: {result['us_per_change']:7.1f} us/change  ({result['writes']} writes, "
                    f"{result['cpu_ms']} ms CPU in {result['window_s']} s, idle {result['idle_us_per_s']} us/s)"
                    + (f"  {result['note']}" if "note" in result else ""),
                    flush=True,
                )
        if args.profile:
            for checkout in checkouts:
                profiles[checkout.label] = str(profile(checkout, fake.kubeconfig, driver, args, workdir))
                print(f"  profile of {checkout.label}: {profiles[checkout.label]}", flush=True)
    finally:
        if driver is not None:
            driver.close()
        fake.stop()

    summary = {
        label: {
            "us_per_change_median": statistics.median(r["us_per_change"] for r in results),
            "us_per_change_min": min(r["us_per_change"] for r in results),
            "us_per_change_max": max(r["us_per_change"] for r in results),
            "all_applied": all(r["applied"] == r["writes"] for r in results),
        }
        for label, results in runs.items()
    }
    report = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "settings": {"changes": args.changes, "rate": args.rate, "runs": args.runs, "services": args.services},
        "python": sys.version.split()[0],
        "dnsd_event_loop": vs_nsd.event_loop(),
        "summary": summary,
        "runs": runs,
        "profiles": profiles,
        "elapsed_s": round(time.monotonic() - began),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\ndnsd CPU per Kubernetes change, median of {args.runs} runs of {args.changes} writes at {args.rate:g}/s:")
    for label, s in summary.items():
        applied = "" if s["all_applied"] else "  (not every write applied: see the JSON)"
        print(
            f"  {s['us_per_change_median']:7.1f} us  (min {s['us_per_change_min']}, max {s['us_per_change_max']})"
            f"  {label}{applied}"
        )
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
