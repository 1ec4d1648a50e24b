"""Shutdown: SIGTERM -> /readyz 503 while DNS keeps answering (lameduck) -> clean exit 0, also as PID 1."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time

import dns.message
import dns.query
import dns.rcode
import pytest
from conftest import ROOT, DnsdProcess
from test_ops import get, ops_port

WEB = "web.default.svc.gua.example.com"


def answers(port: int) -> bool:
    response = dns.query.udp(dns.message.make_query(WEB, "AAAA"), "127.0.0.1", port=port, timeout=1)
    return response.rcode() == dns.rcode.NOERROR and bool(response.answer)


def test_lameduck_keeps_answering_while_not_ready(dnsd_process: type[DnsdProcess]) -> None:
    process = dnsd_process(
        ["--demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"], env={"DNSD_LAMEDUCK": "2"}
    ).ready()
    http = ops_port(process)
    assert get(http, "/readyz")[0] == 200
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    process.wait_for("lameduck")
    status, body = get(http, "/readyz")
    assert status == 503 and "shutting down" in body
    assert get(http, "/healthz")[0] == 200
    answered = 0
    while time.monotonic() - started < 1.5:
        assert answers(process.port)
        answered += 1
        time.sleep(0.05)
    assert answered > 10
    assert process.proc.wait(10) == 0
    assert time.monotonic() - started >= 2.0


def test_second_signal_ends_lameduck(dnsd_process: type[DnsdProcess]) -> None:
    process = dnsd_process(["--demo", "--listen", "127.0.0.1:0"], env={"DNSD_LAMEDUCK": "30"}).ready()
    started = time.monotonic()
    process.proc.send_signal(signal.SIGTERM)
    process.wait_for("lameduck")
    process.proc.send_signal(signal.SIGINT)
    assert process.proc.wait(10) == 0
    assert time.monotonic() - started < 10


def test_clean_exit_as_pid_1() -> None:
    """In a container dnsd is PID 1, which gets no default signal handling from the kernel."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.fail("unshare (util-linux) is needed to run dnsd as PID 1")
    command = [
        unshare,
        "--pid",
        "--fork",
        "--mount-proc",
        sys.executable,
        "-c",
        "import os, sys; assert os.getpid() == 1, os.getpid(); "
        "sys.argv = ['dnsd', '--demo', '--listen', '127.0.0.1:0', '--http', 'off', '--lameduck', '0.5']; "
        "from dnsd.cli import main; sys.exit(main())",
    ]
    proc = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "synced" in line:
            break
    # the child of unshare is dnsd, PID 1 in its namespace: signal it from outside
    child = int(subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()[0])
    started = time.monotonic()
    subprocess.run(["kill", "-TERM", str(child)], check=True)
    assert proc.wait(10) == 0, "".join(lines) + proc.stderr.read()
    assert time.monotonic() - started < 5
