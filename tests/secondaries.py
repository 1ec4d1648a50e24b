"""Real secondary servers from Debian packages (NSD, Knot, BIND) as foreground processes on loopback.

Each runs with its own configuration and state in a directory of its own, on an unprivileged
port, as a child of the test (never through systemd), transferring its zones from a dnsd
primary. Each sends its transfers from an address of its own in 127/8, so dnsd's log tells
which secondary asked for what.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
from conftest import free_port, read_log, stop_process


@dataclass(frozen=True)
class TsigKey:
    name: str
    algorithm: str
    secret: str


class Secondary:
    kind = ""
    program = ""
    source = ""
    """The loopback address this secondary transfers from."""

    def __init__(self, workdir: Path, primary_port: int, zones: Sequence[str], *, key: TsigKey | None = None) -> None:
        self.dir = workdir / self.kind
        self.dir.mkdir(parents=True, exist_ok=True)
        self.primary_port = primary_port
        self.zones = [z.rstrip(".") for z in zones]
        self.key = key
        self.port = free_port()
        self.log_path = self.dir / "log"
        self.proc: subprocess.Popen[bytes] | None = None

    @classmethod
    def available(cls) -> bool:
        return shutil.which(cls.program) is not None or Path("/usr/sbin", cls.program).exists()

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> Secondary:
        if not self.available():
            raise RuntimeError(f"{self.program} is not installed (scripts/test installs nsd, knot and bind9)")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir
            )
        self.wait_answering()
        return self

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return read_log(self.log_path)

    def ask(self, name: str, qtype: str | int, *, tries: int = 3) -> dns.message.Message:
        query = dns.message.make_query(name, qtype, use_edns=True)
        query.flags = 0  # no RD: an authoritative server's answer
        for attempt in range(tries):
            try:
                return dns.query.udp(query, "127.0.0.1", port=self.port, timeout=2)
            except dns.exception.Timeout:
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def serial(self, zone: str) -> int | None:
        try:
            reply = self.ask(zone, "SOA", tries=1)
        except (dns.exception.Timeout, OSError):
            return None
        for rrset in reply.answer:
            if rrset.rdtype == dns.rdatatype.SOA:
                return int(rrset[0].serial)
        return None

    def wait_answering(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.kind} exited {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                dns.query.udp(dns.message.make_query(self.zones[0], "SOA"), "127.0.0.1", port=self.port, timeout=0.3)
                return
            except (dns.exception.Timeout, OSError):
                time.sleep(0.1)
        raise AssertionError(f"{self.kind} does not answer on port {self.port}:\n{self.log()[-3000:]}")

    def wait_serial(self, serial: int, timeout: float = 20.0) -> float:
        """Seconds until every zone is at serial (or newer, RFC 1982)."""
        started = time.monotonic()
        while True:
            serials = [self.serial(zone) for zone in self.zones]
            if all(s is not None and (s - serial) & 0xFFFFFFFF < 0x80000000 for s in serials):
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"{self.kind}: serials {serials}, wanted {serial}:\n{self.log()[-3000:]}")
            time.sleep(0.05)

    def incremental_transfers(self) -> list[str]:
        """Log lines that show an incremental (IXFR) transfer was received and applied."""
        raise NotImplementedError


class Nsd(Secondary):
    kind, program, source = "nsd", "nsd", "127.0.0.11"

    def command(self) -> list[str]:
        key_name = "NOKEY"
        lines = [
            "server:",
            f"  ip-address: 127.0.0.1@{self.port}",
            f"  port: {self.port}",
            '  username: ""',
            '  chroot: ""',
            f'  zonesdir: "{self.dir}"',
            '  database: ""',
            f'  pidfile: "{self.dir}/nsd.pid"',
            f'  xfrdfile: "{self.dir}/xfrd.state"',
            f'  zonelistfile: "{self.dir}/zone.list"',
            f'  xfrdir: "{self.dir}"',
            f'  logfile: "{self.log_path}"',
            "  verbosity: 2",
            "  server-count: 1",
            "  do-ip6: no",
            "  reuseport: no",
            "remote-control:",
            "  control-enable: no",
        ]
        if self.key is not None:
            key_name = self.key.name
            lines += [
                "key:",
                f"  name: {key_name}",
                f"  algorithm: {self.key.algorithm}",
                f'  secret: "{self.key.secret}"',
            ]
        for zone in self.zones:
            lines += [
                "zone:",
                f"  name: {zone}",
                f"  zonefile: {zone}.zone",
                f"  outgoing-interface: {self.source}",
                f"  request-xfr: 127.0.0.1@{self.primary_port} {key_name}",
                f"  allow-notify: 127.0.0.1 {key_name}",
            ]
        (self.dir / "nsd.conf").write_text("\n".join(lines) + "\n")
        return [_program(self.program), "-d", "-c", str(self.dir / "nsd.conf")]

    _UPDATE = re.compile(r"zone (\S+)\. received update to serial (\d+) at \S+ from 127\.0\.0\.1@\d+.*? of (\d+) bytes")

    def updates(self) -> list[tuple[str, int, int]]:
        """(zone, serial, bytes transferred) for each update NSD applied."""
        return [(m[1], int(m[2]), int(m[3])) for m in self._UPDATE.finditer(self.log())]


class Knot(Secondary):
    kind, program, source = "knot", "knotd", "127.0.0.12"

    def command(self) -> list[str]:
        lines = [
            "server:",
            f"  listen: 127.0.0.1@{self.port}",
            f"  rundir: {self.dir}",
            "control:",
            f"  listen: {self.dir}/knot.sock",
            "log:",
            "  - target: stderr",
            "    any: info",
            "database:",
            f"  storage: {self.dir}",
        ]
        key_line = []
        if self.key is not None:
            lines += ["key:", f"  - id: {self.key.name}", f"    algorithm: {self.key.algorithm}"]
            lines += [f"    secret: {self.key.secret}"]
            key_line = [f"    key: {self.key.name}"]
        lines += [
            "remote:",
            "  - id: primary",
            f"    address: 127.0.0.1@{self.primary_port}",
            f"    via: {self.source}",
            *key_line,
            "acl:",
            "  - id: notify_from_primary",
            "    address: 127.0.0.1",
            "    action: notify",
            *key_line,
            "template:",
            "  - id: default",
            f"    storage: {self.dir}",
            "    master: primary",
            "    acl: notify_from_primary",
            "zone:",
        ]
        lines += [f"  - domain: {zone}" for zone in self.zones]
        (self.dir / "knot.conf").write_text("\n".join(lines) + "\n")
        return [_program(self.program), "-c", str(self.dir / "knot.conf")]

    def incremental_transfers(self) -> list[str]:
        return re.findall(r".*IXFR, incoming, remote 127\.0\.0\.1@\d+, finished.*", self.log())


class Bind(Secondary):
    kind, program, source = "bind", "named", "127.0.0.13"

    def command(self) -> list[str]:
        key_clause = f" key {self.key.name}" if self.key is not None else ""
        text = [
            "options {",
            f'  directory "{self.dir}";',
            f"  listen-on port {self.port} {{ 127.0.0.1; }};",
            "  listen-on-v6 { none; };",
            f'  pid-file "{self.dir}/named.pid";',
            f'  session-keyfile "{self.dir}/session.key";',
            f'  managed-keys-directory "{self.dir}";',
            f"  transfer-source {self.source};",
            "  recursion no;",
            "  dnssec-validation no;",
            "  notify no;",
            "};",
            "controls { };",
            "logging {",
            "  channel out { stderr; severity debug 3; print-time yes; };",
            "  category xfer-in { out; };",
            "  category notify { out; };",
            "  category general { out; };",
            "  category default { null; };",
            "};",
        ]
        if self.key is not None:
            text += [
                f'key "{self.key.name}" {{ algorithm {self.key.algorithm}; secret "{self.key.secret}"; }};',
            ]
        for zone in self.zones:
            text += [
                f'zone "{zone}" {{',
                "  type secondary;",
                f"  primaries {{ 127.0.0.1 port {self.primary_port}{key_clause}; }};",
                f'  file "{zone}.db";',
                "};",
            ]
        (self.dir / "named.conf").write_text("\n".join(text) + "\n")
        return [_program(self.program), "-g", "-n", "1", "-d", "3", "-c", str(self.dir / "named.conf")]

    def incremental_transfers(self) -> list[str]:
        return re.findall(r".*transfer of '[^']+' from 127\.0\.0\.1#\d+: got incremental response.*", self.log())


def _program(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


KINDS: dict[str, type[Secondary]] = {"nsd": Nsd, "knot": Knot, "bind": Bind}
