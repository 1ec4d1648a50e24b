"""Helpers for tests against a running dnsd over loopback sockets (test_compliance, test_abuse)."""

from __future__ import annotations

import re
import socket
import urllib.request
from pathlib import Path

from conftest import EXAMPLE, REVERSE4, REVERSE6, ZONE, DnsdProcess
from k8s import cluster, endpoint, endpoint_slice, pod, service

TIMEOUT = 3.0
BIG = "big.default.svc.gua.example.com."
BIG_COUNT = 120
"""AAAA records of Service big: 120 x 28 bytes, past 1232 bytes, well under 64 KiB."""


def cluster_file(directory: Path) -> Path:
    """The bundled example cluster, Service big (a UDP answer that must truncate) and Service
    mid (an answer that just fits 1232 bytes: the worst amplification)."""
    endpoints = [endpoint(f"2001:db8:b16::{i:x}", pod=f"big-{i}") for i in range(1, BIG_COUNT + 1)]
    pods = [pod(f"big-{i}", f"2001:db8:b16::{i:x}") for i in range(1, BIG_COUNT + 1)]
    # Service mid: 40 AAAA, an answer that just fits 1232 bytes (the worst amplification)
    mid_endpoints = [endpoint(f"2001:db8:40::{i:x}", pod=f"mid-{i}") for i in range(1, 41)]
    mid_pods = [pod(f"mid-{i}", f"2001:db8:40::{i:x}") for i in range(1, 41)]
    extra = cluster(
        service("big"),
        endpoint_slice("big-1", "big", *endpoints),
        *pods,
        service("mid"),
        endpoint_slice("mid-1", "mid", *mid_endpoints),
        *mid_pods,
    )
    path = directory / "cluster.yaml"
    path.write_text(EXAMPLE.read_text() + "\n---\n" + extra)
    return path


def start_dnsd(directory: Path, *flags: str) -> DnsdProcess:
    """A ready dnsd on 127.0.0.1 (any free port) serving `cluster_file`."""
    zones = [arg for zone in (ZONE, REVERSE6, REVERSE4) for arg in ("--zone", zone)]
    process = DnsdProcess([*zones, "--from-file", str(cluster_file(directory)), "--listen", "127.0.0.1:0", *flags])
    try:
        return process.ready()
    except BaseException:
        process.stop()
        raise


def metrics(process: DnsdProcess) -> str:
    match = process.wait_for_match(r"ops endpoint on \[?([0-9a-fA-F.:]+?)\]?:(\d+) ")
    with urllib.request.urlopen(f"http://127.0.0.1:{match.group(2)}/metrics", timeout=TIMEOUT) as response:
        return response.read().decode()


def metric_value(text: str, name: str) -> float:
    """The sum of every sample of one metric (all label sets)."""
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return sum(float(value) for value in pattern.findall(text))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def udp_exchange(port: int, query: bytes, timeout: float = TIMEOUT) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(query, ("127.0.0.1", port))
        while True:
            data = sock.recv(65535)
            if data[:2] == query[:2]:
                return data


def frame(message: bytes) -> bytes:
    return len(message).to_bytes(2, "big") + message


def recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def read_frame(sock: socket.socket) -> bytes:
    return recv_exactly(sock, int.from_bytes(recv_exactly(sock, 2), "big"))


def tcp_exchange(port: int, query: bytes, timeout: float = TIMEOUT) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(frame(query))
        return read_frame(sock)
