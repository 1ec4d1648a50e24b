"""dnsd following a Kubernetes API: real dnsd processes against the fake API server over HTTPS.

In scope: answers following API writes made through the official client, every fault hook of
the fake (dnsd keeps the last good data during the fault and ends with exactly the API's
state), token rotation, streaming-list fallback, server-side filtering. The oracle for "the
API's state" is the file source's engine fed with the objects the API holds: a cluster must
answer exactly as a file of the same objects does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
from conftest import REVERSE6, ZONE, DnsdProcess, Zone, make_config, rrsets_text
from fakekube import FakeKubeThread, pod, service, wait_until

QTYPES = ("A", "AAAA", "SRV", "PTR", "CNAME")
WEB = f"web.default.svc.{ZONE}"


@pytest.fixture
def kube() -> Iterator[FakeKubeThread]:
    with FakeKubeThread(bookmark_interval=0.3, auto_endpointslices=True) as fake:
        fake.create(service("web", selector={"app": "web"}))
        fake.create(pod("web-1", "2001:db8:1::1", "203.0.113.1", labels={"app": "web"}))
        fake.create(pod("web-2", "2001:db8:1::2", "203.0.113.2", labels={"app": "web"}))
        fake.create(service("db", selector={"app": "db"}, headless=True, ports=[("pg", 5432, 5432, "TCP")]))
        for n in range(2):
            fake.create(pod(f"db-{n}", f"2001:db8:2::{n}", labels={"app": "db"}, hostname=f"db-{n}", subdomain="db"))
        yield fake


def start(dnsd_process: type[DnsdProcess], kube: FakeKubeThread, *args: str) -> DnsdProcess:
    return dnsd_process(
        [
            "--zone",
            ZONE,
            "--zone",
            REVERSE6,
            "--kubeconfig",
            kube.kubeconfig,
            "--listen",
            "127.0.0.1:0",
            "--watch-stall-timeout",
            "2",
            *args,
        ]
    ).ready()


def ask(port: int, name: str, qtype: str) -> dns.message.Message:
    query = dns.message.make_query(name, qtype)
    return dns.query.udp(query, "127.0.0.1", port=port, timeout=2)


def addresses(port: int, name: str = WEB, qtype: str = "AAAA") -> set[str]:
    return {rdata.to_text() for rrset in ask(port, name, qtype).answer for rdata in rrset}


def api_objects(kube: FakeKubeThread) -> list[dict]:
    objects = []
    for kind in ("Service", "EndpointSlice", "Pod"):
        objects += [{**obj, "kind": kind} for obj in kube.list(kind)]
    return objects


class Oracle:
    """Expected answers for everything the API holds, plus every name seen so far (so names of
    deleted objects are checked to be gone)."""

    def __init__(self) -> None:
        self.names: set[str] = set()

    def differences(self, kube: FakeKubeThread, port: int) -> list[str]:
        zone = Zone(json.dumps({"kind": "List", "items": api_objects(kube)}), make_config((ZONE, REVERSE6)))
        self.names |= {dns.name.from_wire(key, 0)[0].to_text() for key in zone.index.nodes}
        wrong = []
        for name in sorted(self.names):
            for qtype in QTYPES:
                expected = zone.ask(name, qtype)
                actual = ask(port, name, qtype)
                if (expected.rcode(), rrsets_text(expected.answer)) != (actual.rcode(), rrsets_text(actual.answer)):
                    wrong.append(
                        f"{name} {qtype}: expected {dns.rcode.to_text(expected.rcode())} "
                        f"{sorted(rrsets_text(expected.answer))}, got {dns.rcode.to_text(actual.rcode())} "
                        f"{sorted(rrsets_text(actual.answer))}"
                    )
        return wrong

    def converge(self, kube: FakeKubeThread, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            wrong = self.differences(kube, port)
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise AssertionError("dnsd did not converge to the API's state:\n" + "\n".join(wrong[:20]))
            time.sleep(0.1)


def test_answers_follow_the_api(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    assert addresses(server.port) == {"2001:db8:1::1", "2001:db8:1::2"}
    oracle.converge(kube, server.port)
    # not ready: out of the answer
    kube.pod_ready("default", "web-2", False)
    wait_until(lambda: addresses(server.port) == {"2001:db8:1::1"})
    # deleted pod: gone, and its pod name too
    kube.delete("Pod", "default", "web-1")
    wait_until(lambda: addresses(server.port) == set())
    assert ask(server.port, f"web-1.default.pod.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN
    # scaled to zero: the Service name still exists, with no data
    kube.delete("Pod", "default", "web-2")
    wait_until(lambda: ask(server.port, WEB, "AAAA").rcode() == dns.rcode.NOERROR and not addresses(server.port))
    # a new pod that gains a second address family later
    kube.create(pod("web-3", "2001:db8:1::3", labels={"app": "web"}))
    wait_until(lambda: addresses(server.port) == {"2001:db8:1::3"})
    assert addresses(server.port, qtype="A") == set()
    kube.patch("Pod", "default", "web-3", {"status": {"podIPs": [{"ip": "2001:db8:1::3"}, {"ip": "203.0.113.3"}]}})
    wait_until(lambda: addresses(server.port, qtype="A") == {"203.0.113.3"})
    oracle.converge(kube, server.port)


def test_single_stack_ipv4_service_answers_aaaa_from_pod_ips(
    dnsd_process: type[DnsdProcess], kube: FakeKubeThread
) -> None:
    kube.create(service("legacy", selector={"app": "legacy"}, families=["IPv4"]))
    kube.create(pod("legacy-1", "10.244.0.7", "2001:db8:3::7", labels={"app": "legacy"}))
    server = start(dnsd_process, kube)
    legacy = f"legacy.default.svc.{ZONE}"
    wait_until(lambda: addresses(server.port, legacy) == {"2001:db8:3::7"})
    Oracle().converge(kube, server.port)


def test_service_deletion_removes_names_before_its_slices_go(
    dnsd_process: type[DnsdProcess], kube: FakeKubeThread
) -> None:
    server = start(dnsd_process, kube)
    kube.kube.auto_endpointslices = False  # the garbage collector is slow: slices outlive the Service
    kube.delete("Service", "default", "web")
    wait_until(lambda: ask(server.port, WEB, "AAAA").rcode() == dns.rcode.NXDOMAIN)
    assert kube.list("EndpointSlice", "default")
    assert ask(server.port, f"web-1.web.default.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN


FAULTS = {
    "drop-reset": lambda kube: kube.drop_watches("reset"),
    "drop-truncate": lambda kube: kube.drop_watches("truncate"),
    "drop-eof": lambda kube: kube.drop_watches("eof"),
    "watch-error-410": lambda kube: kube.inject_watch_error(410),
    "watch-error-500": lambda kube: kube.inject_watch_error(500),
    "restart": lambda kube: kube.restart(),
    "restart-reset": lambda kube: kube.restart("reset"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_watch_faults_converge(dnsd_process: type[DnsdProcess], kube: FakeKubeThread, fault: str) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    oracle.converge(kube, server.port)
    kube.wait_watchers(None, 3, timeout=5)
    first = len(kube.requests)
    FAULTS[fault](kube)
    # the last good data keeps serving through the fault
    assert addresses(server.port) == {"2001:db8:1::1", "2001:db8:1::2"}
    kube.create(pod("web-9", "2001:db8:1::9", labels={"app": "web"}))
    kube.delete("Pod", "default", "db-1")
    try:
        oracle.converge(kube, server.port)
    except AssertionError:
        print("\n".join(server.lines[-20:]))
        for r in kube.requests[first:]:
            print(r.path, r.query, r.status, r.fault)
        print([(s["metadata"]["name"], s["metadata"]["resourceVersion"]) for s in kube.list("EndpointSlice")])
        raise


@pytest.mark.parametrize(
    ("fault", "args"),
    [
        ("fail-500", {"status": 500, "times": 3}),
        ("fail-503", {"status": 503, "times": 2}),
        ("fail-429", {"status": 429, "times": 2, "retry_after": 1}),
    ],
)
def test_http_errors_are_retried(dnsd_process: type[DnsdProcess], kube: FakeKubeThread, fault: str, args: dict) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    oracle.converge(kube, server.port)
    kube.fail_next(**args)
    kube.drop_watches("eof")
    assert addresses(server.port) == {"2001:db8:1::1", "2001:db8:1::2"}
    kube.delete("Pod", "default", "web-1")
    oracle.converge(kube, server.port)
    assert any(r.status == args["status"] for r in kube.requests)


def test_errors_before_the_first_sync_are_retried(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    kube.fail_next(status=503, times=4)
    server = start(dnsd_process, kube)
    assert addresses(server.port) == {"2001:db8:1::1", "2001:db8:1::2"}
    assert sum(1 for r in kube.requests if r.status == 503) == 4


def test_stalled_watch_is_detected(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    kube.wait_watchers(None, 3, timeout=5)
    kube.stall_watches()
    kube.delete("Pod", "default", "web-2")
    # the stalled streams say nothing; after --watch-stall-timeout 2 dnsd reconnects
    oracle.converge(kube, server.port, timeout=20)
    server.wait_for("reconnecting")
    kube.unstall()


def test_objects_deleted_while_disconnected_disappear_after_410(
    dnsd_process: type[DnsdProcess], kube: FakeKubeThread
) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    oracle.converge(kube, server.port)
    kube.wait_watchers(None, 3, timeout=5)
    kube.stall_watches()
    kube.delete("Service", "default", "db")
    kube.delete("Pod", "default", "web-1")
    kube.compact()  # the history of those deletions is gone: only a relist can show them
    kube.drop_watches("reset")
    kube.unstall()
    oracle.converge(kube, server.port, timeout=20)
    assert ask(server.port, f"db.default.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN
    server.wait_for("relisting")


def test_token_rotation_does_not_interrupt_the_watch(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    kube.wait_watchers(None, 3, timeout=5)
    watches_before = sum(1 for r in kube.requests if r.query.get("watch"))
    kube.rotate_token(grace=0.5)
    time.sleep(1.0)  # the old token is now refused for new requests
    kube.create(pod("web-5", "2001:db8:1::5", labels={"app": "web"}))
    wait_until(lambda: "2001:db8:1::5" in addresses(server.port))
    # the open watches carried the change: no new watch was needed for it
    assert sum(1 for r in kube.requests if r.query.get("watch")) == watches_before
    # a reconnect now needs the new token: dnsd re-reads it on the 401 and goes on
    kube.drop_watches("eof")
    kube.delete("Pod", "default", "web-5")
    oracle.converge(kube, server.port)


def test_expired_token_is_reread(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    kube.wait_watchers(None, 3, timeout=5)
    kube.rotate_token(grace=0)
    kube.drop_watches("eof")
    kube.delete("Pod", "default", "web-2")
    Oracle().converge(kube, server.port)
    assert any(r.status == 401 for r in kube.requests)


@pytest.mark.parametrize("watchlist", [True, False, "ignore"])
def test_sync_with_and_without_streaming_lists(dnsd_process: type[DnsdProcess], watchlist: object) -> None:
    with FakeKubeThread(bookmark_interval=0.3, auto_endpointslices=True, watchlist=watchlist) as kube:
        kube.create(service("web", selector={"app": "web"}))
        for n in range(7):
            kube.create(pod(f"web-{n}", f"2001:db8:1::{n + 1}", labels={"app": "web"}))
        server = start(dnsd_process, kube)
        Oracle().converge(kube, server.port)
        streaming = [r for r in kube.requests if r.query.get("sendInitialEvents")]
        lists = [r for r in kube.requests if not r.query.get("watch") and r.path.endswith("pods")]
        if watchlist is True:
            assert streaming and not lists
        else:
            assert lists, "fell back to paged lists"


def test_paged_list_with_expiring_continue_tokens(dnsd_process: type[DnsdProcess]) -> None:
    with FakeKubeThread(bookmark_interval=0.3, auto_endpointslices=True, watchlist=False) as kube:
        kube.create(service("web", selector={"app": "web"}))
        kube.bulk_load(pod(f"p-{n}", f"2001:db8:4::{n:x}", labels={"app": "web"}) for n in range(1, 1201))
        kube.sync_endpointslices()
        kube.expire_continue_tokens()
        server = start(dnsd_process, kube)
        response = dns.query.tcp(dns.message.make_query(WEB, "AAAA"), "127.0.0.1", port=server.port, timeout=5)
        assert sum(len(rrset) for rrset in response.answer) == 1200
        pages = [r for r in kube.requests if r.path.endswith("/pods") and r.query.get("limit")]
        assert len(pages) >= 3 and all(r.query["limit"] == "250" for r in pages)


def test_server_side_filters(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    kube.create(service("other", "elsewhere", selector={"app": "other"}, labels={"dns": "public"}))
    kube.create(pod("other-1", "2001:db8:5::1", namespace="elsewhere", labels={"app": "other"}))
    kube.create(service("hidden", "elsewhere", selector={"app": "other"}))
    server = start(dnsd_process, kube, "--namespace", "elsewhere", "--label-selector", "dns=public")
    wait_until(lambda: addresses(server.port, f"other.elsewhere.svc.{ZONE}") == {"2001:db8:5::1"})
    assert ask(server.port, WEB, "AAAA").rcode() == dns.rcode.NXDOMAIN
    assert ask(server.port, f"hidden.elsewhere.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN
    paths = {r.path for r in kube.requests}
    assert all("/namespaces/elsewhere/" in p for p in paths if p.endswith(("pods", "services", "endpointslices")))
    pod_requests = [r for r in kube.requests if r.path.endswith("/pods")]
    assert pod_requests and all("status.phase!=Succeeded" in r.query.get("fieldSelector", "") for r in pod_requests)
    service_requests = [r for r in kube.requests if r.path.endswith("/services")]
    assert service_requests and all(r.query.get("labelSelector") == "dns=public" for r in service_requests)


def test_finished_pod_leaves_through_the_field_selector(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    name = f"db-0.default.pod.{ZONE}"
    wait_until(lambda: addresses(server.port, name) == {"2001:db8:2::"})
    kube.patch("Pod", "default", "db-0", {"status": {"phase": "Succeeded"}})
    wait_until(lambda: ask(server.port, name, "AAAA").rcode() == dns.rcode.NXDOMAIN)
    Oracle().converge(kube, server.port)


def test_only_list_and_watch_are_used(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    Oracle().converge(kube, server.port)
    assert {r.method for r in kube.requests if not r.path.startswith("/_fake")} == {"GET"}
    assert all(
        r.path.endswith(("/pods", "/services", "/endpointslices"))
        for r in kube.requests
        if not r.path.startswith("/_fake")
    )


def test_slow_api_server_keeps_last_data_and_converges(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    server = start(dnsd_process, kube)
    oracle = Oracle()
    oracle.converge(kube, server.port)
    kube.slow(delay_headers=0.5, trickle_bps=20_000)
    kube.drop_watches("reset")
    kube.delete("Pod", "default", "web-1")
    kube.create(pod("web-7", "2001:db8:1::7", labels={"app": "web"}))
    assert addresses(server.port) == {"2001:db8:1::1", "2001:db8:1::2"}  # answered at once, from the last data
    oracle.converge(kube, server.port, timeout=30)
    kube.slow()


def test_too_large_resource_version_relists_from_scratch(dnsd_process: type[DnsdProcess]) -> None:
    """504 ResourceVersionTooLarge on a list: dnsd lists again (paged lists: streaming refused)."""
    with FakeKubeThread(bookmark_interval=0.3, auto_endpointslices=True, watchlist=False) as kube:
        kube.create(service("web", selector={"app": "web"}))
        kube.create(pod("web-1", "2001:db8:1::1", labels={"app": "web"}))
        kube.too_large_rv(times=2)
        server = start(dnsd_process, kube)
        Oracle().converge(kube, server.port)
        assert sum(1 for r in kube.requests if r.status == 504) == 2


def test_writes_through_the_official_client(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    """A user's tooling writes with the official kubernetes client; dnsd follows."""
    from kubernetes import client, config

    api_client = config.new_client_from_config(config_file=kube.kubeconfig)
    core = client.CoreV1Api(api_client)
    server = start(dnsd_process, kube)
    oracle = Oracle()
    core.create_namespaced_service(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "api"},
            "spec": {"selector": {"app": "api"}, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        },
    )
    core.create_namespaced_pod(
        "default",
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "api-0", "labels": {"app": "api"}},
            "spec": {"containers": [{"name": "main", "image": "example/api:1"}]},
            "status": {
                "phase": "Running",
                "podIPs": [{"ip": "2001:db8:7::1"}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        },
    )
    wait_until(lambda: addresses(server.port, f"api.default.svc.{ZONE}") == {"2001:db8:7::1"})
    core.patch_namespaced_pod_status(
        "api-0", "default", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )
    wait_until(lambda: addresses(server.port, f"api.default.svc.{ZONE}") == set())
    core.delete_namespaced_service("api", "default")
    wait_until(lambda: ask(server.port, f"api.default.svc.{ZONE}", "AAAA").rcode() == dns.rcode.NXDOMAIN)
    oracle.converge(kube, server.port)
    api_client.close()


def test_programming_latency_is_measured(dnsd_process: type[DnsdProcess], kube: FakeKubeThread) -> None:
    from test_ops import get, metric, ops_port

    server = start(dnsd_process, kube, "--http", "127.0.0.1:0")
    port = ops_port(server)
    kube.create(pod("web-4", "2001:db8:1::4", labels={"app": "web"}))
    wait_until(lambda: "2001:db8:1::4" in addresses(server.port))
    text = get(port, "/metrics")[1]
    assert metric(text, "dnsd_programming_duration_seconds_count") >= 2  # the pod and its slice
    assert metric(text, "dnsd_programming_duration_seconds_bucket", le="1.024") >= 2
    assert metric(text, "dnsd_kubernetes_synced", resource="Pod") == 1
