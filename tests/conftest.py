"""Shared helpers: an in-memory zone built from YAML, a query helper, and a real dnsd process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import dns.message
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import pytest

from dnsd import wire
from dnsd.config import Config, parse_zone
from dnsd.names import AddressPolicy
from dnsd.records import Synced
from dnsd.sources.file import parse_objects
from dnsd.store import Store
from dnsd.zone import Index

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "dnsd" / "examples" / "cluster.yaml"
ZONE = "gua.example.com."
REVERSE6 = "8.b.d.0.1.0.0.2.ip6.arpa."
REVERSE4 = "113.0.203.in-addr.arpa."


def make_config(zones: Sequence[str] = (ZONE, REVERSE6, REVERSE4), **overrides: object) -> Config:
    return Config(zones=tuple(parse_zone(z) for z in zones), **overrides)  # type: ignore[arg-type]


class Zone:
    """A store and an index fed from YAML text, as the file source would feed them."""

    def __init__(self, text: str, config: Config | None = None, *, synced: bool = True) -> None:
        self.config = config or make_config()
        self.store = Store(self.config.namespaces)
        self.index = Index(self.config, now=1_700_000_000)
        self.load(text)
        if synced:
            self.store.apply(Synced())
            self.index.synced = True

    def load(self, text: str) -> None:
        from dnsd.records import Resync

        records = parse_objects(text, AddressPolicy(self.config.publish_prefixes))
        for kind, items in records.items():
            self.index.update(self.store.apply(Resync(kind, tuple(items))), self.store)

    def ask(
        self,
        qname: str,
        qtype: str | int = "AAAA",
        *,
        use_edns: bool | int = True,
        payload: int = 1232,
        want_dnssec: bool = False,
        tcp: bool = False,
        flags: int | None = None,
        rdclass: int = dns.rdataclass.IN,
    ) -> dns.message.Message:
        query = dns.message.make_query(
            qname, qtype, rdclass, use_edns=use_edns, payload=payload, want_dnssec=want_dnssec
        )
        if flags is not None:
            query.flags = flags
        reply = self.raw(query.to_wire(), tcp=tcp)
        assert reply is not None, "no reply"
        response = dns.message.from_wire(reply)
        assert response.id == query.id
        return response

    def raw(self, data: bytes, *, tcp: bool = False) -> bytes | None:
        return wire.respond(data, self.index, tcp=tcp)


def rrsets_text(section: Sequence[dns.rrset.RRset]) -> set[str]:
    """A section as a set of zone-file lines, lower-cased owner names, one record per line."""
    lines = set()
    for rrset in section:
        for rdata in rrset:
            lines.add(f"{rrset.name.to_text().lower()} {rrset.ttl} IN {dns.rdatatype.to_text(rrset.rdtype)} {rdata}")
    return lines


def stop_process(proc: subprocess.Popen | None, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after timeout: for the servers the tests start (not dnsd)."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def read_log(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def free_port() -> int:
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp_sock:
            udp_sock.bind(("127.0.0.1", 0))
            port = udp_sock.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp_sock:
                try:
                    tcp_sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port
    raise RuntimeError("no free port")


_LISTENING = re.compile(r"listening on \[?([0-9a-fA-F.:]+?)\]?:(\d+) ")


class DnsdProcess:
    """A dnsd child process (`python -m dnsd ARGS` unless a command is given); its stderr is
    collected in `lines`, and the addresses it listens on in `addresses`."""

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        command: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
        inherit_env: bool = True,
        cwd: Path = ROOT,
        stdin: bytes | None = None,
    ) -> None:
        # Many dnsd processes run at once: their ops endpoints take any free port, and they
        # stop at once, unless a test says otherwise.
        defaults = {"PYTHONUNBUFFERED": "1", "DNSD_HTTP": "127.0.0.1:0", "DNSD_LAMEDUCK": "0"}
        full_env = {**os.environ, **defaults, **(env or {})} if inherit_env else dict(env or {})
        self.proc = subprocess.Popen(
            [*(command or (sys.executable, "-m", "dnsd")), *args],
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=full_env,
            cwd=cwd,
        )
        if stdin is not None:
            assert self.proc.stdin is not None
            self.proc.stdin.write(stdin)
            self.proc.stdin.close()
        self.lines: list[str] = []
        self.addresses: list[tuple[str, int]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            match = _LISTENING.search(line)
            if match:
                self.addresses.append((match.group(1), int(match.group(2))))

    def wait_for_match(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """The first stderr line matching pattern, waiting for it; fails if dnsd exits first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = re.search(pattern, line)
                if match:
                    return match
            if self.proc.poll() is not None:
                self._reader.join(2)
                raise AssertionError(f"dnsd exited {self.proc.returncode} before {pattern!r}: {self.lines}")
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} within {timeout}s: {self.lines}")

    def wait_for(self, text: str, timeout: float = 15.0) -> str:
        return self.wait_for_match(re.escape(text), timeout).string

    def ready(self) -> DnsdProcess:
        self.wait_for("synced")
        return self

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._reader.join(2)
        return code


@pytest.fixture
def dnsd_process() -> Iterator[type[DnsdProcess]]:
    """Start dnsd children with `dnsd_process(args)`; every one is stopped after the test."""
    started: list[DnsdProcess] = []

    class Tracked(DnsdProcess):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            started.append(self)

    yield Tracked
    for process in started:
        process.stop()
