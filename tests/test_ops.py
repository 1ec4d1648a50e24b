"""The ops endpoint of a running dnsd: /healthz, /readyz, /metrics."""

from __future__ import annotations

import re
import urllib.error
import urllib.request

from conftest import DnsdProcess


def ops_port(process: DnsdProcess) -> int:
    line = process.wait_for("ops endpoint on")
    match = re.search(r"ops endpoint on \[?[0-9a-fA-F.:]+?\]?:(\d+)", line)
    assert match, line
    return int(match.group(1))


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_health_ready_and_metrics(dnsd_process: type[DnsdProcess]) -> None:
    process = dnsd_process(["--demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]).ready()
    port = ops_port(process)
    assert get(port, "/healthz") == (200, "ok\n")
    assert get(port, "/readyz") == (200, "ready\n")
    status, metrics = get(port, "/metrics")
    assert status == 200
    assert re.search(r"^dnsd_zone_synced 1\.0$", metrics, re.M)
    names = float(re.search(r"^dnsd_zone_names (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert names > 50
    assert re.search(r'^dnsd_zone_serial\{zone="gua.example.com."\} \d+', metrics, re.M)
    assert re.search(r"^dnsd_zone_records \d+", metrics, re.M)
    assert get(port, "/nothing")[0] == 404


def test_not_ready_until_synced(dnsd_process: type[DnsdProcess], tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A cluster that cannot be reached: alive, not ready, and SERVFAIL for zone data."""
    import dns.message
    import dns.query
    import dns.rcode

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: c, cluster: {server: 'http://127.0.0.1:9'}}]\n"
        "contexts: [{name: c, context: {cluster: c, user: u}}]\n"
        "users: [{name: u, user: {token: t}}]\n"
    )
    process = dnsd_process(
        [
            "--zone",
            "gua.example.com",
            "--kubeconfig",
            str(kubeconfig),
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ]
    )
    port = ops_port(process)
    process.wait_for("listening on")
    assert get(port, "/healthz")[0] == 200
    status, body = get(port, "/readyz")
    assert status == 503 and "not synced" in body
    query = dns.message.make_query("web.default.svc.gua.example.com", "AAAA")
    response = dns.query.udp(query, "127.0.0.1", port=process.port, timeout=2)
    assert response.rcode() == dns.rcode.SERVFAIL
    process.wait_for("reconnecting in")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample; labels must match exactly those given (others ignored)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} {labels}")


def test_query_metrics(dnsd_process: type[DnsdProcess]) -> None:
    import dns.message
    import dns.query

    process = dnsd_process(["--demo", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"]).ready()
    port = ops_port(process)
    queries = [
        ("web.default.svc.gua.example.com", "AAAA"),
        ("nothing.gua.example.com", "A"),
        ("example.org", "A"),
        ("web.default.svc.gua.example.com", "A"),
    ]
    for name, qtype in queries:
        dns.query.udp(dns.message.make_query(name, qtype), "127.0.0.1", port=process.port, timeout=2)
    dns.query.tcp(
        dns.message.make_query("db.default.svc.gua.example.com", "AAAA"), "127.0.0.1", port=process.port, timeout=2
    )
    text = get(port, "/metrics")[1]
    assert metric(text, "dnsd_dns_requests_total", proto="udp", family="1", type="AAAA") == 1
    assert metric(text, "dnsd_dns_requests_total", proto="udp", family="1", type="A") == 3
    assert metric(text, "dnsd_dns_requests_total", proto="tcp", family="1", type="AAAA") == 1
    assert metric(text, "dnsd_dns_responses_total", proto="udp", rcode="NOERROR") == 2
    assert metric(text, "dnsd_dns_responses_total", proto="udp", rcode="NXDOMAIN") == 1
    assert metric(text, "dnsd_dns_responses_total", proto="udp", rcode="REFUSED") == 1
    assert metric(text, "dnsd_dns_request_duration_seconds_count", proto="udp") == 4
    assert metric(text, "dnsd_dns_request_duration_seconds_bucket", proto="udp", le="+Inf") == 4
    assert metric(text, "dnsd_dns_request_size_bytes_count", proto="tcp") == 1
    assert 40 < metric(text, "dnsd_dns_request_size_bytes_sum", proto="tcp") < 100
    assert metric(text, "dnsd_dns_response_size_bytes_bucket", proto="udp", le="511.0") == 4
