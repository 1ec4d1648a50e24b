"""Real resolvers from Debian's packages, each started in the foreground with its own
configuration in a scratch directory, on 127.0.0.1 and an unprivileged port, and configured to
send dnsd's zones to one address (the tap in front of dnsd).

Nothing here may reach beyond loopback: root hints name 127.0.0.254 (where nothing listens),
outgoing queries leave from 127.0.0.1, and only names in dnsd's zones are ever asked. The system
services the packages install (on port 53) are left alone: every resolver here has its own port,
configuration, working directory and PID file.

Each resolver also reports, from its own statistics, whatever shows a retry path upstream
(`upstream_problems`), so the tests do not rest on the tap alone.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from conftest import free_port, read_log, stop_process

START_TIMEOUT = 20.0
ROOT_HINTS = ". 3600000 NS a.root-servers.net.\na.root-servers.net. 3600000 A 127.0.0.254\n"


class Resolver:
    """One resolver process. Subclasses give the program, its configuration and its statistics."""

    program = ""
    package = ""
    description = ""
    randomises_case = False
    """Sends names upstream in random case (0x20) by itself."""
    minimises_qnames = False
    """Asks dnsd for the ancestors of a name first (QNAME minimisation, RFC 9156)."""
    revalidates_nxdomain = False
    """Asks a minimised name that got NXDOMAIN once more (see traffic.retry_problems)."""
    log_warning = re.compile(r"(?!)")
    """Lines of the resolver's log that tell of trouble upstream."""

    def __init__(self, workdir: Path, zones: tuple[str, ...], upstream_port: int) -> None:
        self.workdir = workdir
        self.zones = zones
        self.upstream_port = upstream_port
        self.port = free_port()
        self.log_path = workdir / "output.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def executable(self) -> str:
        path = shutil.which(self.program) or shutil.which(self.program, path="/usr/sbin:/usr/bin")
        if path is None:
            # Fail, not skip: scripts/test installs the package, so a missing program is a broken
            # environment, and a skipped interoperability test would hide it.
            raise AssertionError(f"{self.program} not found: install the Debian package {self.package}")
        return path

    def command(self) -> list[str]:
        raise NotImplementedError

    def write_config(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "root.hints").write_text(ROOT_HINTS)
        self.write_config()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        self._wait_listening()

    def _wait_listening(self) -> None:
        """Until a TCP connection to the port succeeds: every resolver here opens its UDP and TCP
        sockets together, and a probe query would land in the cache and in the tap."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.description} exited {self.proc.returncode}:\n{self.log()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError(f"{self.description} not listening on {self.port} after {START_TIMEOUT}s:\n{self.log()}")

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        return read_log(self.log_path)

    def log_problems(self) -> list[str]:
        return [line for line in self.log().splitlines() if self.log_warning.search(line)]

    def upstream_problems(self, tcp_queries: int) -> list[str]:
        """What the resolver's own statistics say went wrong towards dnsd, given that it should
        have sent exactly `tcp_queries` queries over TCP."""
        raise NotImplementedError


def _unbound_stats(lines: str) -> dict[str, float]:
    stats = {}
    for line in lines.splitlines():
        name, _, value = line.partition("=")
        if value:
            stats[name] = float(value)
    return stats


class Unbound(Resolver):
    program = "unbound"
    package = "unbound"
    randomises_case = True
    log_warning = re.compile(r"\b(error|warning):")
    zone_clause = ""
    address_key = ""

    def command(self) -> list[str]:
        return [self.executable(), "-d", "-c", str(self.workdir / "unbound.conf")]

    def write_config(self) -> None:
        zone_lines = []
        for zone in self.zones:
            # Unbound answers the documentation prefixes' reverse zones itself (RFC 6303 local
            # zones) unless told otherwise; dnsd's zone is not signed nor delegated from the root.
            zone_lines += [f'    local-zone: "{zone}" nodefault', f'    domain-insecure: "{zone}"']
        stubs = []
        for zone in self.zones:
            address = f"127.0.0.1@{self.upstream_port}"
            stubs += [f"{self.zone_clause}:", f'    name: "{zone}"', f"    {self.address_key}: {address}"]
        config = [
            "server:",
            f"    interface: 127.0.0.1@{self.port}",
            f"    port: {self.port}",
            "    do-ip6: no",
            "    outgoing-interface: 127.0.0.1",
            '    username: ""',
            '    chroot: ""',
            f'    directory: "{self.workdir}"',
            f'    pidfile: "{self.workdir}/unbound.pid"',
            "    use-syslog: no",
            '    logfile: ""',
            "    verbosity: 1",
            "    num-threads: 1",
            "    so-reuseport: no",
            "    extended-statistics: yes",
            "    statistics-cumulative: yes",
            # The target is on loopback, which Unbound never queries by default.
            "    do-not-query-localhost: no",
            "    use-caps-for-id: yes",
            "    qname-minimisation: yes",
            # Unbound re-sends after an RTT-based timeout, down to 50 ms once it has seen dnsd
            # answer in a millisecond: on a busy machine a scheduling stall of the tap, dnsd or
            # Unbound itself would read as a retry (seen with the stub zone). A 1 s floor keeps
            # the test about the protocol; a query dnsd leaves unanswered still shows in the tap.
            "    infra-cache-min-rtt: 1000",
            # A validating resolver, as deployed: the root trust anchor from dns-root-data.
            '    trust-anchor-file: "/usr/share/dns/root.key"',
            f'    root-hints: "{self.workdir}/root.hints"',
            *zone_lines,
            "remote-control:",
            "    control-enable: yes",
            f'    control-interface: "{self.workdir}/unbound.ctl"',
            "    control-use-cert: no",
            *stubs,
        ]
        (self.workdir / "unbound.conf").write_text("\n".join(config) + "\n")

    def stats(self) -> dict[str, float]:
        control = shutil.which("unbound-control", path="/usr/sbin:/usr/bin")
        assert control is not None, "unbound-control not found: install the Debian package unbound"
        output = subprocess.run(
            [control, "-c", str(self.workdir / "unbound.conf"), "stats_noreset"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout
        return _unbound_stats(output)

    def upstream_problems(self, tcp_queries: int) -> list[str]:
        stats = self.stats()
        problems = []
        expected = {
            "num.query.tcpout": tcp_queries,
            "unwanted.replies": 0,
            "num.answer.rcode.SERVFAIL": 0,
            "total.requestlist.exceeded": 0,
        }
        for name, value in expected.items():
            if stats.get(name, 0.0) != value:
                problems.append(f"unbound {name} = {stats.get(name, 0.0):g}, expected {value}")
        return problems


class UnboundForward(Unbound):
    description = "Unbound forward-zone"
    zone_clause = "forward-zone"
    address_key = "forward-addr"


class UnboundStub(Unbound):
    description = "Unbound stub-zone"
    zone_clause = "stub-zone"
    address_key = "stub-addr"
    minimises_qnames = True
    revalidates_nxdomain = True


def _static_root_trust_anchors() -> str:
    """dns-root-data's root keys as BIND `static-key`s: the default (`dnssec-validation auto`,
    RFC 5011 managed keys) asks the root for its DNSKEY every second or so while no root server
    answers, and those queries would mix into the statistics read below."""
    keys = []
    for line in Path("/usr/share/dns/root.key").read_text().splitlines():
        fields = line.partition(";")[0].split()  # ";{id = 20326 ...}" comments follow the key
        if len(fields) >= 7 and fields[:3] == [".", "IN", "DNSKEY"]:
            flags, protocol, algorithm, *key = fields[3:]
            keys.append(f'    . static-key {flags} {protocol} {algorithm} "{"".join(key)}";')
    assert keys, "no root key in /usr/share/dns/root.key (Debian package dns-root-data)"
    return "trust-anchors {\n" + "\n".join(keys) + "\n};"


class Bind(Resolver):
    """BIND 9 with a forward zone (`forward only`): static-stub would suit an authoritative
    target better, but its server-addresses take no port."""

    program = "named"
    package = "bind9"
    description = "BIND 9 forward zone"
    log_warning = re.compile(r"^(lame-servers|edns-disabled):|FORMERR|timed out")

    def __init__(self, workdir: Path, zones: tuple[str, ...], upstream_port: int) -> None:
        super().__init__(workdir, zones, upstream_port)
        self.stats_port = free_port()

    def command(self) -> list[str]:
        # -f: foreground, logging as configured (into output.log via the file channel below).
        return [self.executable(), "-f", "-c", str(self.workdir / "named.conf")]

    def write_config(self) -> None:
        zones = "".join(
            f'zone "{zone}" {{ type forward; forward only; forwarders {{ 127.0.0.1 port {self.upstream_port}; }}; }};\n'
            for zone in self.zones
        )
        insecure = " ".join(f'"{zone}";' for zone in self.zones)
        config = f"""
options {{
    directory "{self.workdir}";
    pid-file "{self.workdir}/named.pid";
    session-keyfile "{self.workdir}/session.key";
    managed-keys-directory "{self.workdir}";
    listen-on port {self.port} {{ 127.0.0.1; }};
    listen-on-v6 {{ none; }};
    query-source address 127.0.0.1;
    recursion yes;
    allow-query {{ 127.0.0.1; }};
    // Validating, as deployed; dnsd's zones are unsigned and not delegated from the root.
    dnssec-validation yes;
    validate-except {{ {insecure} }};
    qname-minimization relaxed;
    querylog yes;
}};
controls {{ }};
statistics-channels {{ inet 127.0.0.1 port {self.stats_port} allow {{ 127.0.0.1; }}; }};
logging {{
    channel everything {{ file "{self.workdir}/output.log"; severity info; print-category yes; print-severity yes; }};
    category default {{ everything; }};
    category queries {{ everything; }};
    category lame-servers {{ everything; }};
    category edns-disabled {{ everything; }};
    category resolver {{ everything; }};
}};
zone "." {{ type hint; file "{self.workdir}/root.hints"; }};
{_static_root_trust_anchors()}
{zones}"""
        (self.workdir / "named.conf").write_text(config)

    def resolver_stats(self) -> dict[str, int]:
        """The default view's resolver statistics (Queryv4, Truncated, Retry, QueryTimeout...)."""
        url = f"http://127.0.0.1:{self.stats_port}/json/v1/server"
        with urllib.request.urlopen(url, timeout=5) as response:
            document = json.load(response)
        return dict(document["views"]["_default"]["resolver"]["stats"])

    def upstream_problems(self, tcp_queries: int) -> list[str]:
        stats = self.resolver_stats()
        # BIND counts its TCP query after a truncated reply as a retry too (seen here: Retry goes
        # from 0 to 1 with the large Service's answer, and with nothing else).
        expected = {"Truncated": tcp_queries, "Retry": tcp_queries}
        for counter in ("QueryTimeout", "FORMERR", "SERVFAIL", "OtherError", "EDNS0Fail", "Mismatch", "Lame"):
            expected[counter] = 0
        return [
            f"named resolver {name} = {stats.get(name, 0)}, expected {value}"
            for name, value in expected.items()
            if stats.get(name, 0) != value
        ]


class Dnsmasq(Resolver):
    program = "dnsmasq"
    package = "dnsmasq-base"
    description = "dnsmasq server=/zone/addr#port"
    # ("reply is truncated" is expected: the large Service.)
    log_warning = re.compile(r"(?i)rebind|mismatch|timed out|refused|maximum number|SERVFAIL|FORMERR")

    def __init__(self, workdir: Path, zones: tuple[str, ...], upstream_port: int) -> None:
        super().__init__(workdir, zones, upstream_port)
        # dnsmasq 2.91 added 0x20 (off by default); Debian 12 has 2.90. Switch it on where it exists.
        help_text = subprocess.run([self.executable(), "--help"], capture_output=True, text=True).stdout
        self.randomises_case = "--do-0x20-encode" in help_text

    def command(self) -> list[str]:
        return [self.executable(), "--keep-in-foreground", f"--conf-file={self.workdir / 'dnsmasq.conf'}"]

    def write_config(self) -> None:
        lines = [
            f"port={self.port}",
            "listen-address=127.0.0.1",
            "bind-interfaces",
            "no-resolv",
            "no-hosts",
            "no-poll",
            "pid-file=",
            "user=",
            "log-queries=extra",
            "log-facility=-",
            # As on an edge router: answers with private addresses are dropped outside the zones
            # named in rebind-domain-ok.
            "stop-dns-rebind",
        ]
        for zone in self.zones:
            bare = zone.rstrip(".")
            lines += [f"server=/{bare}/127.0.0.1#{self.upstream_port}", f"rebind-domain-ok=/{bare}/"]
        if self.randomises_case:
            lines.append("do-0x20-encode")
        (self.workdir / "dnsmasq.conf").write_text("\n".join(lines) + "\n")

    def server_stats(self) -> dict[str, int]:
        """SIGUSR1 makes dnsmasq log, per upstream server, the queries it sent, retried and lost."""
        assert self.proc is not None
        before = self.log()
        self.proc.send_signal(signal.SIGUSR1)
        server = rf"server 127\.0\.0\.1#{self.upstream_port}"
        pattern = re.compile(rf"{server}: queries sent (\d+), retried (\d+), failed (\d+)")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            match = pattern.search(self.log(), len(before))
            if match:
                return dict(zip(("sent", "retried", "failed"), map(int, match.groups()), strict=True))
            time.sleep(0.05)
        raise AssertionError(f"no server statistics from dnsmasq after SIGUSR1:\n{self.log()[len(before) :]}")

    def upstream_problems(self, tcp_queries: int) -> list[str]:
        stats = self.server_stats()
        return [f"dnsmasq to dnsd: {name} {stats[name]}" for name in ("retried", "failed") if stats[name]]


class Kresd(Resolver):
    program = "kresd"
    package = "knot-resolver"
    description = "Knot Resolver policy.STUB"
    randomises_case = True  # its default for forwarding targets
    log_warning = re.compile(r"(?i)error|fail|timed? ?out")

    def command(self) -> list[str]:
        return [self.executable(), "--noninteractive", "--config", str(self.workdir / "kresd.conf"), str(self.workdir)]

    def write_config(self) -> None:
        zone_names = ", ".join(f"todname('{zone}')" for zone in self.zones)
        zone_texts = ", ".join(f"'{zone}'" for zone in self.zones)
        config = f"""
net.listen('127.0.0.1', {self.port}, {{ kind = 'dns' }})
net.ipv6 = false
cache.open(10 * MB, 'lmdb://{self.workdir}/cache')
-- Iteration, should any happen, ends on loopback where nothing listens.
modules.load('hints > iterate')
hints.root({{ ['a.root-servers.net.'] = '127.0.0.254' }})
policy.add(policy.suffix(policy.STUB({{'127.0.0.1@{self.upstream_port}'}}), {{ {zone_names} }}))
-- Validating, as deployed (the root trust anchor is kresd's default); dnsd's zones are not signed.
-- These modules ask the root at start; their timeouts would mix into worker.stats() (read below).
modules.unload('priming')
modules.unload('detect_time_skew')
modules.unload('ta_update')
trust_anchors.set_insecure({{ {zone_texts} }})
log_level('info')
"""
        (self.workdir / "kresd.conf").write_text(config)

    def control(self, expression: str) -> str:
        """The value of one Lua expression, as text, from kresd's control socket (rundir/control/PID).
        The socket prompts with "> " on connect and after every answer."""
        assert self.proc is not None
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.workdir / "control" / str(self.proc.pid)))
            sock.sendall(expression.encode() + b"\n")
            output = b""
            while not (output.startswith(b"> ") and output.endswith(b"\n> ")):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                output += chunk
        return output.decode(errors="replace").removeprefix("> ").removesuffix("\n> ")

    def worker_stats(self) -> dict[str, float]:
        """Outbound queries (udp, tcp), timeouts, errors; tojson gives a Lua string, quoted."""
        return dict(json.loads(self.control("tojson(worker.stats())").strip("'")))

    def upstream_problems(self, tcp_queries: int) -> list[str]:
        stats = self.worker_stats()
        expected = {"tcp": tcp_queries, "timeout": 0, "err_udp": 0, "err_tcp": 0}
        return [
            f"kresd worker.stats() {name} = {stats.get(name)}, expected {value}"
            for name, value in expected.items()
            if stats.get(name) != value
        ]
