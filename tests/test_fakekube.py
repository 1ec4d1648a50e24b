"""The fake API server's own tests: the official clients against it see what research/k8s-api.md §3 records."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from fakekube import FakeKube, FakeKubeProcess, FakeKubeThread, LabelSelector, SelectorError, node, pod, service
from fakekube.endpointslices import MANAGED_BY
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException
from kubernetes.config.incluster_config import InClusterConfigLoader

Obj = dict[str, Any]


def aio(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh loop, bounded in time."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(fn(*args, **kwargs), 30))

    return wrapper


def core(kube: Any) -> client.CoreV1Api:
    cfg = client.Configuration()
    config.load_kube_config(config_file=kube.kubeconfig, client_configuration=cfg)
    return client.CoreV1Api(client.ApiClient(cfg))


class Raw:
    """A bare aiohttp session against a fake, verifying TLS strictly, with the current token."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.ctx = ssl.create_default_context(cafile=kube.ca_file)
        self.ctx.verify_flags |= ssl.VERIFY_X509_STRICT
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))

    async def __aenter__(self) -> Raw:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def request(self, method: str, path: str, token: str | None = "current", **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if token is not None:
            headers["Authorization"] = f"Bearer {self.kube.token if token == 'current' else token}"
        return self.session.request(method, self.kube.url + path, ssl=self.ctx, headers=headers, **kw)

    async def get(self, path: str, **kw: Any) -> tuple[int, Obj, Any]:
        async with self.request("GET", path, **kw) as resp:
            return resp.status, await resp.json(), resp.headers


async def events(resp: aiohttp.ClientResponse, until: Callable[[Obj], bool], limit: int = 1000) -> list[Obj]:
    out: list[Obj] = []
    while len(out) < limit:
        line = await resp.content.readline()
        if not line:
            break
        out.append(json.loads(line))
        if until(out[-1]):
            break
    return out


def is_end(ev: Obj) -> bool:
    annotations = ev["object"]["metadata"].get("annotations") or {}
    return ev["type"] == "BOOKMARK" and annotations.get("k8s.io/initial-events-end") == "true"


def web_pods(n: int, namespace: str = "default") -> list[Obj]:
    return [pod(f"web-{i:02}", f"2001:db8::{i + 1:x}", namespace=namespace, labels={"app": "web"}) for i in range(n)]


# -- selectors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("", {}, True),
        ("a=b", {"a": "b"}, True),
        ("a==b,c!=d", {"a": "b", "c": "x"}, True),
        ("a!=b", {}, True),
        ("a in (x, y),!z", {"a": "y"}, True),
        ("a notin (x,y)", {"a": "x"}, False),
        ("a notin (x,y)", {}, True),
        ("app.kubernetes.io/name,tier", {"app.kubernetes.io/name": "w"}, False),
        ("n>3,n<10", {"n": "7"}, True),
        ("n>3", {"n": "x"}, False),
        ("a=", {"a": ""}, True),
    ],
)
def test_label_selector_grammar(text: str, labels: dict[str, str], expected: bool) -> None:
    assert LabelSelector(text).matches(labels) is expected


@pytest.mark.parametrize("text", ["a in (x", "a=b,", "=b", "a b", "a in x", "-bad=x", "a=b=c"])
def test_label_selector_errors(text: str) -> None:
    with pytest.raises(SelectorError):
        LabelSelector(text)


# -- the sync official client ----------------------------------------------------------------------------------


def test_sync_client_crud_and_selectors() -> None:
    with FakeKubeThread() as kube:
        v1 = core(kube)
        created = v1.create_namespaced_pod(
            "shop", pod("a", "2001:db8::1", namespace="shop", labels={"app": "web", "tier": "fe"})
        )
        assert created.metadata.resource_version and created.metadata.uid and created.metadata.namespace == "shop"
        kube.create(pod("b", "2001:db8::2", namespace="shop", labels={"app": "db"}, phase="Succeeded"))
        kube.create(pod("c", "2001:db8::3", namespace="other", labels={"app": "web"}))
        assert v1.read_namespaced_pod("a", "shop").metadata.labels == {"app": "web", "tier": "fe"}

        everything = v1.list_pod_for_all_namespaces()
        assert [p.metadata.name for p in everything.items] == ["c", "a", "b"]  # sorted by (namespace, name)
        assert int(everything.metadata.resource_version) >= int(created.metadata.resource_version)
        selected = v1.list_pod_for_all_namespaces(
            label_selector="app in (web,db),tier!=be", field_selector=("status.phase!=Succeeded,status.phase!=Failed")
        )
        assert sorted(p.metadata.name for p in selected.items) == ["a", "c"]
        assert [p.metadata.name for p in v1.list_namespaced_pod("shop", field_selector="metadata.name=b").items] == [
            "b"
        ]
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_pod("shop", field_selector="spec.foo=bar")
        assert err.value.status == 400
        assert json.loads(err.value.body)["message"] == "field label not supported: spec.foo"

        raw = json.loads(v1.list_namespaced_pod("shop", _preload_content=False).data)
        assert raw["kind"] == "PodList" and raw["apiVersion"] == "v1"
        assert all("kind" not in item and "apiVersion" not in item for item in raw["items"])

        current = v1.read_namespaced_pod("a", "shop")
        current.metadata.labels["tier"] = "be"
        replaced = v1.replace_namespaced_pod("a", "shop", current)
        assert replaced.metadata.labels["tier"] == "be"
        assert int(replaced.metadata.resource_version) > int(current.metadata.resource_version)
        with pytest.raises(ApiException) as err:  # stale resourceVersion
            v1.replace_namespaced_pod("a", "shop", current)
        assert err.value.status == 409

        patched = v1.patch_namespaced_pod_status(
            "a", "shop", {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
        )
        assert [c.status for c in patched.status.conditions] == ["False"]
        assert patched.status.pod_ips[0].ip == "2001:db8::1"

        v1.create_namespaced_service("shop", service("web", "shop", selector={"app": "web"}))
        assert [s.metadata.name for s in v1.list_service_for_all_namespaces(field_selector="spec.type=ClusterIP").items]
        v1.delete_namespaced_service("web", "shop")
        v1.delete_namespaced_pod("a", "shop")
        with pytest.raises(ApiException) as err:
            v1.read_namespaced_pod("a", "shop")
        assert err.value.status == 404 and json.loads(err.value.body)["reason"] == "NotFound"
        with pytest.raises(ApiException) as err:
            v1.create_namespaced_pod("shop", pod("b", namespace="shop"))
        assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
        assert {r.verb for r in kube.requests} >= {"create", "get", "list", "update", "patch", "delete"}
        assert all(r.token for r in kube.requests)


def test_paginated_list_is_a_consistent_snapshot() -> None:
    with FakeKubeThread() as kube:
        kube.bulk_load(web_pods(25))
        v1 = core(kube)
        first = v1.list_namespaced_pod("default", limit=10)
        rv, token = first.metadata.resource_version, first.metadata.var_continue
        assert token and first.metadata.remaining_item_count == 15
        names = [p.metadata.name for p in first.items]
        kube.delete("Pod", "default", "web-15")  # not listed yet: must still appear
        kube.create(pod("web-99", labels={"app": "web"}))  # created after the snapshot: must not appear
        kube.patch("pods", "default", "web-20", {"metadata": {"labels": {"app": "changed"}}})
        pages = [first]
        while token:
            page = v1.list_namespaced_pod("default", limit=10, _continue=token)
            assert page.metadata.resource_version == rv
            pages.append(page)
            names += [p.metadata.name for p in page.items]
            token = page.metadata.var_continue
        assert names == [f"web-{i:02}" for i in range(25)]
        assert pages[-1].items[0].metadata.labels == {"app": "web"}  # web-20 as it was at the snapshot

        # Tokens are bound to their query and expire.
        token = v1.list_namespaced_pod("default", limit=5, label_selector="app=web").metadata.var_continue
        assert (
            v1.list_namespaced_pod("default", limit=5, label_selector="app=web").metadata.remaining_item_count is None
        )
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_pod("default", limit=5, _continue=token)
        assert err.value.status == 400
        kube.expire_continue_tokens()
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_pod("default", limit=5, label_selector="app=web", _continue=token)
        assert err.value.status == 410 and json.loads(err.value.body)["reason"] == "Expired"
        token = v1.list_namespaced_pod("default", limit=20).metadata.var_continue
        assert len(v1.list_namespaced_pod("default", limit=20, _continue=token).items) == 5  # the fault was used up
        kube.expire_continue_tokens()  # also the next page of a list started afterwards
        token = v1.list_namespaced_pod("default", limit=20).metadata.var_continue
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_pod("default", limit=20, _continue=token)
        assert err.value.status == 410


@aio
async def test_list_resource_version_rules() -> None:
    async with FakeKube(too_large_wait=0.1) as kube, Raw(kube) as http:
        kube.bulk_load(web_pods(5))
        rv_before = str(kube.store.rv)
        kube.patch("pods", "default", "web-01", {"metadata": {"labels": {"v": "2"}}})
        kube.delete("pods", "default", "web-04")

        status, body, _ = await http.get("/api/v1/pods?limit=2&resourceVersion=0")
        assert len(body["items"]) == 4 and "continue" not in body["metadata"]  # limit ignored for RV=0
        status, body, _ = await http.get(f"/api/v1/pods?limit=10&resourceVersion={rv_before}")  # Exact
        assert body["metadata"]["resourceVersion"] == rv_before and len(body["items"]) == 5
        assert "v" not in body["items"][1]["metadata"]["labels"]
        q = f"resourceVersion={rv_before}&resourceVersionMatch=NotOlderThan"
        status, body, _ = await http.get(f"/api/v1/pods?{q}")
        assert body["metadata"]["resourceVersion"] == str(kube.store.rv) and len(body["items"]) == 4

        for query, code in [
            ("resourceVersionMatch=NotOlderThan", 422),
            ("resourceVersionMatch=Exact&resourceVersion=0", 422),
            ("continue=abc&resourceVersion=5", 400),
            ("resourceVersionMatch=Exact&resourceVersion=1&continue=abc", 422),
            ("sendInitialEvents=true", 422),
            ("labelSelector=a%20in%20(", 400),
            ("limit=x", 400),
        ]:
            status, body, _ = await http.get(f"/api/v1/pods?{query}")
            assert (status, body["kind"], body["code"]) == (code, "Status", code), query

        status, body, _ = await http.get(f"/api/v1/pods?resourceVersion={kube.store.rv + 5}")
        assert status == 504 and body["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"
        kube.too_large_rv()
        status, body, _ = await http.get("/api/v1/pods")
        assert status == 504 and body["details"]["retryAfterSeconds"] == 1
        kube.compact()
        status, body, _ = await http.get(f"/api/v1/pods?limit=10&resourceVersion={rv_before}")
        assert (status, body["reason"]) == (410, "Expired")


@aio
async def test_discovery_and_unknown_paths() -> None:
    async with FakeKube() as kube, Raw(kube) as http:
        assert (await http.get("/version", token=None))[1]["major"] == "1"
        assert (await http.get("/api"))[1]["versions"] == ["v1"]
        assert (await http.get("/apis"))[1]["groups"][0]["name"] == "discovery.k8s.io"
        resources = (await http.get("/apis/discovery.k8s.io/v1"))[1]["resources"]
        assert [r["name"] for r in resources] == ["endpointslices"]
        for path in ("/livez", "/readyz"):
            async with http.request("GET", path, token=None) as resp:
                assert resp.status == 200
        status, body, _ = await http.get("/api/v1/secrets")
        assert (status, body["kind"], body["reason"]) == (404, "Status", "NotFound")
        status, body, _ = await http.get("/api/v1/namespaces/x/nodes")
        assert status == 404


# -- watches ---------------------------------------------------------------------------------------------------


def test_sync_watch_sees_changes_and_bookmarks_as_dicts() -> None:
    with FakeKubeThread(bookmark_interval=0.2) as kube:
        v1 = core(kube)
        rv = v1.list_namespaced_pod("default").metadata.resource_version

        def writer() -> None:
            kube.wait_watchers("pods", 1, timeout=5)
            kube.create(pod("p", "2001:db8::1"))
            kube.pod_ready("default", "p", False)
            kube.delete("Pod", "default", "p")

        thread = threading.Thread(target=writer)
        thread.start()
        w = watch.Watch()
        seen: list[tuple[str, str]] = []
        for ev in w.stream(
            v1.list_namespaced_pod,
            "default",
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=10,
            _request_timeout=10,
        ):
            seen.append((ev["type"], type(ev["object"]).__name__))
            if ev["type"] == "BOOKMARK" and ("DELETED", "V1Pod") in seen:
                w.stop()
        thread.join()
        changes = [s for s in seen if s[0] != "BOOKMARK"]
        assert changes == [("ADDED", "V1Pod"), ("MODIFIED", "V1Pod"), ("DELETED", "V1Pod")]
        assert ("BOOKMARK", "dict") in seen
        assert int(w.resource_version) >= int(rv) + 3


def test_sync_watch_too_old_rv_raises_410() -> None:
    with FakeKubeThread() as kube:
        v1 = core(kube)
        rv = kube.create(pod("p"))["metadata"]["resourceVersion"]
        kube.pod_ready("default", "p", False)
        kube.compact()
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
                pass
        assert err.value.status == 410
        kube.create(pod("q"))
        rv = kube.get("pods", "default", "q")["metadata"]["resourceVersion"]
        kube.expire_rv_on_next_watch("pods")  # an RV that is fine, refused once anyway
        with pytest.raises(ApiException) as err:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=5):
                pass
        assert err.value.status == 410
        assert [r.fault for r in kube.requests if r.verb == "watch"] == [None, "expire_rv"]


@aio
async def test_streaming_list_with_kubernetes_aio() -> None:
    from kubernetes.aio import client as aclient
    from kubernetes.aio import config as aconfig

    async with FakeKube(bookmark_interval=30) as kube:
        kube.bulk_load(web_pods(3) + web_pods(2, namespace="other"))
        cfg = aclient.Configuration()
        await aconfig.load_kube_config(config_file=kube.kubeconfig, client_configuration=cfg)
        async with aclient.ApiClient(cfg) as api:
            v1 = aclient.CoreV1Api(api)
            resp = await v1.list_namespaced_pod_without_preload_content(
                "default",
                watch=True,
                send_initial_events=True,
                resource_version_match="NotOlderThan",
                allow_watch_bookmarks=True,
                timeout_seconds=10,
            )
            initial = await events(resp, is_end)
            assert [e["type"] for e in initial] == ["ADDED"] * 3 + ["BOOKMARK"]
            assert initial[-1]["object"]["metadata"]["resourceVersion"] == str(kube.store.rv)
            assert initial[-1]["object"]["spec"] == {"containers": None}
            kube.create(pod("late", labels={"app": "web"}))
            kube.create(pod("elsewhere", namespace="other"))
            kube.delete("pods", "default", "late")
            later = await events(resp, lambda e: e["type"] == "DELETED")
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in later] == [
                ("ADDED", "late"),
                ("DELETED", "late"),
            ]
            resp.close()

            # A legacy watch from RV "" gets the same end bookmark (1.34+ default) ...
            resp = await v1.list_pod_for_all_namespaces_without_preload_content(watch=True, allow_watch_bookmarks=True)
            assert [e["type"] for e in await events(resp, is_end)] == ["ADDED"] * 6 + ["BOOKMARK"]
            resp.close()
            # ... and a dropped connection surfaces as ClientPayloadError in the aio Watch.
            from kubernetes.aio import watch as awatch

            await kube.wait_watchers("pods", 0)  # the server has noticed both closes

            async def dropper() -> None:
                await kube.wait_watchers("pods", 1)
                kube.drop_watches("truncate")

            task = asyncio.create_task(dropper())
            seen = []
            with pytest.raises(aiohttp.ClientPayloadError):
                async for ev in awatch.Watch().stream(
                    v1.list_namespaced_pod, "default", resource_version=str(kube.store.rv)
                ):
                    seen.append(ev["type"])
            await task
            assert seen == []


@aio
async def test_watchlist_modes() -> None:
    query = "/api/v1/pods?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
    async with FakeKube(watchlist=False) as kube, Raw(kube) as http:
        status, body, _ = await http.get(query)
        assert status == 422 and "WatchList" in body["message"]
        kube.create(pod("p"))
        async with http.request("GET", "/api/v1/pods?watch=1&allowWatchBookmarks=true&timeoutSeconds=1") as resp:
            assert [e["type"] for e in await events(resp, lambda e: False)] == ["ADDED", "BOOKMARK"]  # deadline one
    async with FakeKube(watchlist="ignore") as kube, Raw(kube) as http:
        kube.create(pod("p"))
        async with http.request("GET", query + "&timeoutSeconds=1") as resp:
            got = await events(resp, lambda e: False)
            assert got[0]["type"] == "ADDED" and not any(is_end(e) for e in got)
    async with FakeKube() as kube, Raw(kube) as http:
        status, body, _ = await http.get("/api/v1/pods?watch=True&sendInitialEvents=true")
        assert status == 422 and "NotOlderThan" in body["message"]
        status, body, _ = await http.get("/api/v1/pods?watch=true&resourceVersionMatch=NotOlderThan")
        assert status == 422


@aio
async def test_watch_replay_selector_transitions_and_split_writes() -> None:
    async with FakeKube(split_writes=True, seed=7) as kube, Raw(kube) as http:
        start = str(kube.store.rv)
        kube.create(pod("a", labels={"app": "web"}))
        kube.create(pod("b", labels={"app": "db"}))
        fields = "status.phase!=Succeeded,status.phase!=Failed"
        path = f"/api/v1/namespaces/default/pods?watch=1&resourceVersion={start}"
        path += f"&labelSelector=app%3Dweb&fieldSelector={fields}"
        async with http.request("GET", path) as resp:
            assert resp.status == 200 and resp.headers["Content-Type"].startswith("application/json")
            got = await events(resp, lambda e: True)  # replayed from history; "b" does not match
            assert (got[0]["type"], got[0]["object"]["metadata"]["name"]) == ("ADDED", "a")
            done = kube.patch("pods", "default", "a", {"status": {"phase": "Succeeded"}})
            kube.patch("pods", "default", "b", {"metadata": {"labels": {"app": "web"}}})
            kube.patch("pods", "default", "b", {"metadata": {"annotations": {"x": "y"}}})
            got = await events(resp, lambda e: False, limit=3)
            assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
                ("DELETED", "a"),
                ("ADDED", "b"),
                ("MODIFIED", "b"),
            ]
            # The DELETED carries the previous state, with the RV of the change that unmatched it.
            assert got[0]["object"]["status"]["phase"] == "Running"
            assert got[0]["object"]["metadata"]["resourceVersion"] == done["metadata"]["resourceVersion"]
            kube.inject_watch_error(500, "pods")
            got = await events(resp, lambda e: False)
            assert [(e["type"], e["object"]["code"]) for e in got] == [("ERROR", 500)]
        assert kube.requests[-1].bytes > 0


@aio
async def test_drops_stalls_and_deadlines() -> None:
    async with FakeKube(bookmark_interval=0.1) as kube, Raw(kube) as http:
        for mode in ("truncate", "reset"):
            async with http.request("GET", "/api/v1/pods?watch=1&allowWatchBookmarks=true") as resp:
                await events(resp, is_end)
                assert kube.drop_watches(mode, "pods") == 1 and kube.open_watches("pods") == 0  # at once
                with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
                    await events(resp, lambda e: False)
        async with http.request("GET", "/api/v1/pods?watch=1") as resp:
            await kube.wait_watchers("pods", 1)
            kube.drop_watches("eof")
            assert await resp.content.read() == b""  # clean end, no error
        async with http.request(
            "GET", f"/api/v1/pods?watch=1&allowWatchBookmarks=true&resourceVersion={kube.store.rv}"
        ) as resp:
            assert (await events(resp, lambda e: True))[0]["type"] == "BOOKMARK"
            assert kube.stall_watches("pods") == 1
            kube.create(pod("p"))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(resp.content.readline(), 0.4)  # not even bookmarks
            kube.unstall()
            assert json.loads(await resp.content.readline())["type"] == "ADDED"
        t0 = time.monotonic()
        async with http.request("GET", "/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion=1") as resp:
            await resp.content.read()
        assert 0.9 < time.monotonic() - t0 < 3
        kube.restart()
        assert kube.open_watches() == 0


# -- auth and HTTP faults --------------------------------------------------------------------------------------


@aio
async def test_tokens_revocation_rotation_and_open_watches() -> None:
    async with FakeKube() as kube, Raw(kube) as http:
        assert (await http.get("/api/v1/pods", token=None))[0] == 401
        assert (await http.get("/api/v1/pods", token="nope"))[1]["reason"] == "Unauthorized"
        async with http.request("GET", "/api/v1/pods", headers={"Authorization": f"bearer {kube.token}"}) as resp:
            assert resp.status == 200  # the in-cluster loader's lower-case scheme
        old = kube.token
        watch_resp = await http.request("GET", "/api/v1/pods?watch=1&resourceVersion=1")
        new = kube.rotate_token(grace=0.3)
        with open(kube.token_file) as f:
            assert f.read() == new != old
        assert (await http.get("/api/v1/pods", token=old))[0] == 200
        await asyncio.sleep(0.35)
        assert (await http.get("/api/v1/pods", token=old))[0] == 401
        assert (await http.get("/api/v1/pods", token=new))[0] == 200
        kube.revoke_token()
        assert (await http.get("/api/v1/pods"))[0] == 401
        kube.create(pod("still-streaming"))  # authentication happened at request start
        assert json.loads(await watch_resp.content.readline())["type"] == "ADDED"
        watch_resp.close()
        fresh = kube.expire_token()
        assert (await http.get("/api/v1/pods", token=fresh))[0] == 200
        assert [r.token for r in kube.requests[:2]] == [False, True]


def test_token_rotation_seen_by_kubeconfig_token_file() -> None:
    with FakeKubeThread() as kube:
        before = core(kube)
        before.list_namespaced_pod("default")
        kube.rotate_token(0)
        with pytest.raises(ApiException) as err:
            before.list_namespaced_pod("default")  # tokenFile is read once, when the config is loaded
        assert err.value.status == 401
        core(kube).list_namespaced_pod("default")  # reloading picks up the new file

        cfg = client.Configuration()
        InClusterConfigLoader(
            token_filename=kube.token_file, cert_filename=kube.ca_file, environ=kube.env
        ).load_and_set(cfg)
        assert client.CoreV1Api(client.ApiClient(cfg)).list_namespaced_pod("default").items == []


def test_fail_next_and_retry_after() -> None:
    with FakeKubeThread() as kube:
        v1 = core(kube)
        # urllib3 (under the sync client) itself retries a GET answered 429/503 with Retry-After, after sleeping.
        kube.fail_next(429, retry_after=1, resource="pods", verb="list")
        v1.list_namespaced_service("default")  # other resources are unaffected
        t0 = time.monotonic()
        v1.list_namespaced_pod("default")
        assert time.monotonic() - t0 >= 1
        assert [r.status for r in kube.requests if r.resource == "pods"] == [429, 200]
        kube.fail_next(503, times=2)
        for _ in range(2):
            with pytest.raises(ApiException) as err:
                v1.list_namespaced_service("default")
            assert err.value.status == 503
        v1.list_namespaced_pod("default")
        kube.forbid("services", "list")
        with pytest.raises(ApiException) as err:
            v1.list_namespaced_service("default")
        assert err.value.status == 403
        kube.clear_faults()
        kube.slow(delay_headers=0.3)
        t0 = time.monotonic()
        v1.list_namespaced_service("default")
        assert time.monotonic() - t0 >= 0.3
        kube.slow(trickle_bps=4000)
        kube.bulk_load(web_pods(3))
        assert len(v1.list_namespaced_pod("default").items) == 3
        assert [r.fault for r in kube.requests if r.fault] == ["fail 429", "fail 503", "fail 503"]


@aio
async def test_429_with_retry_after_over_raw_http() -> None:
    async with FakeKube() as kube, Raw(kube) as http:
        kube.fail_next(429, retry_after=3, resource="pods", verb="watch")
        assert (await http.get("/api/v1/pods"))[0] == 200  # a list: not the verb asked for
        status, body, headers = await http.get("/api/v1/pods?watch=true")
        assert (status, headers["Retry-After"], body["reason"]) == (429, "3", "TooManyRequests")
        assert body["details"]["retryAfterSeconds"] == 3


# -- EndpointSlice emulation -----------------------------------------------------------------------------------


def slices(kube: FakeKube, svc: str) -> dict[str, Obj]:
    return {
        s["addressType"]: s
        for s in kube.list("EndpointSlice")
        if s["metadata"]["labels"].get("kubernetes.io/service-name") == svc
    }


@aio
async def test_endpointslice_controller() -> None:
    async with FakeKube() as kube:
        kube.create(node("n1", zone="z1"))
        kube.create(
            service("web", selector={"app": "web"}, ports=[("http", 80, "web", "TCP"), ("dns", 53, 5353, "UDP")])
        )
        kube.create(service("empty", selector={"app": "none"}, families=["IPv6"], headless=True))
        p0 = pod(
            "web-0", "10.0.0.1", "2001:db8::1", labels={"app": "web"}, hostname="web-0", subdomain="web", node="n1"
        )
        p0["spec"]["containers"][0]["ports"] = [{"name": "web", "containerPort": 8080}]
        kube.create(p0)
        kube.create(
            pod("web-1", "2001:db8::2", labels={"app": "web"}, hostname="web-1", subdomain="other", ready=False)
        )
        kube.create(pod("done", "2001:db8::3", labels={"app": "web"}, phase="Succeeded"))
        assert kube.sync_endpointslices() == 3
        web = slices(kube, "web")
        assert set(web) == {"IPv4", "IPv6"}
        v6 = web["IPv6"]
        assert (
            v6["metadata"]["name"] == "web-ipv6"
            and v6["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == MANAGED_BY
        )
        assert v6["ports"] == [
            {"name": "http", "protocol": "TCP", "port": 8080},
            {"name": "dns", "protocol": "UDP", "port": 5353},
        ]
        e0, e1 = v6["endpoints"]
        assert e0 == {
            "addresses": ["2001:db8::1"],
            "conditions": {"ready": True, "serving": True, "terminating": False},
            "targetRef": {
                "kind": "Pod",
                "namespace": "default",
                "name": "web-0",
                "uid": kube.get("pods", "default", "web-0")["metadata"]["uid"],
            },
            "hostname": "web-0",
            "nodeName": "n1",
            "zone": "z1",
        }
        assert "hostname" not in e1 and e1["conditions"] == {"ready": False, "serving": False, "terminating": False}
        assert [e["addresses"] for e in web["IPv4"]["endpoints"]] == [["10.0.0.1"]]
        empty = slices(kube, "empty")["IPv6"]
        assert empty["endpoints"] is None and empty["metadata"]["labels"]["service.kubernetes.io/headless"] == ""

        assert kube.sync_endpointslices() == 0  # nothing changed, nothing written
        kube.pod_ready("default", "web-1", True)
        kube.pod_terminating("default", "web-0")
        rv_v4 = web["IPv4"]["metadata"]["resourceVersion"]
        assert kube.sync_endpointslices("default") == 2
        e0, e1 = slices(kube, "web")["IPv6"]["endpoints"]
        assert e0["conditions"] == {"ready": False, "serving": True, "terminating": True}
        assert e1["conditions"]["ready"] is True
        assert slices(kube, "web")["IPv4"]["metadata"]["resourceVersion"] != rv_v4
        kube.delete("pods", "default", "web-0")  # the last IPv4 endpoint: the family goes away
        assert kube.sync_endpointslices() == 2 and set(slices(kube, "web")) == {"IPv6"}
        kube.delete("services", "default", "web")
        kube.sync_endpointslices()
        assert slices(kube, "web") == {}

    async with FakeKube(auto_endpointslices=True) as kube:
        kube.create(service("api", selector={"app": "api"}, families=["IPv6"], publish_not_ready=True))
        kube.create(pod("api-0", "2001:db8::9", labels={"app": "api"}, ready=False))
        (endpoint,) = slices(kube, "api")["IPv6"]["endpoints"]
        assert endpoint["conditions"]["ready"] is True  # publishNotReadyAddresses


# -- driving the fake from synchronous tests and other processes -----------------------------------------------


def test_thread_proxies_and_bulk_load() -> None:
    with FakeKubeThread() as kube:
        t0 = time.monotonic()
        assert kube.bulk_load(web_pods(2000)) == 2000
        v1 = core(kube)
        token, count = None, 0
        while True:
            page = v1.list_namespaced_pod("default", limit=500, _continue=token, _preload_content=False)
            body = json.loads(page.data)
            count += len(body["items"])
            token = body["metadata"].get("continue")
            if not token:
                break
        assert count == 2000 and time.monotonic() - t0 < 20
        assert kube.open_watches("pods") == 0 and isinstance(kube.requests, list)
        assert kube.call(lambda: kube.kube.store.rv) == kube.store.rv  # a plain attribute, read in the loop
        assert kube.patch("pods", "default", "web-00", lambda p: p["metadata"]["labels"].update(x="1"))["metadata"][
            "labels"
        ] == {"app": "web", "x": "1"}


def test_standalone_process_and_control_api(tmp_path: Any) -> None:
    with FakeKubeProcess("--bookmark-interval", "0.2", "--auto-endpointslices", state_dir=str(tmp_path)) as proc:
        assert proc.kubeconfig == os.path.join(tmp_path, "kubeconfig") and proc.url.startswith("https://127.0.0.1:")
        proc.create(service("web", selector={"app": "web"}, families=["IPv6"]))
        proc.create(obj=pod("web-0", "2001:db8::1", labels={"app": "web"}))
        v1 = core(proc)
        assert [p.metadata.name for p in v1.list_namespaced_pod("default").items] == ["web-0"]
        assert proc.get("EndpointSlice", "default", "web-ipv6")["endpoints"][0]["addresses"] == ["2001:db8::1"]
        proc.patch("pods", "default", "web-0", {"metadata": {"labels": {"v": "2"}}})
        proc.fail_next(status=500, verb="list")
        with pytest.raises(ApiException):
            v1.list_namespaced_pod("default")

        result: list[Any] = []

        def watcher() -> None:
            try:
                for ev in watch.Watch().stream(
                    v1.list_namespaced_pod,
                    "default",
                    allow_watch_bookmarks=True,
                    timeout_seconds=10,
                    _request_timeout=10,
                ):
                    result.append(ev["type"])
            except Exception as err:
                result.append(type(err).__name__)

        thread = threading.Thread(target=watcher)
        thread.start()
        assert proc.wait_watchers("pods", 1, timeout=5) == 1
        assert proc.drop_watches(mode="reset") == 1
        thread.join(10)
        assert result[:2] == ["ADDED", "BOOKMARK"] and result[-1] == "ProtocolError"
        proc.revoke_token()
        with pytest.raises(ApiException):
            v1.list_namespaced_pod("default")
        proc.rotate_token()  # the control API still accepts the revoked token
        log = proc.requests()
        assert [r["status"] for r in log if r["verb"] == "list"] == [200, 500, 401]
        assert os.path.exists(proc.token_file)
    assert proc.proc is not None and proc.proc.returncode == 0
