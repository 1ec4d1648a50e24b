"""FakeKube: a protocol-faithful kube-apiserver emulation on aiohttp (list/watch, TLS, bearer tokens, faults)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import hashlib
import inspect
import json
import os
import random
import secrets
import shutil
import socket
import ssl
import struct
import tempfile
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from aiohttp import web

from . import endpointslices
from .selectors import FieldSelector, LabelSelector, SelectorError
from .store import RESOURCES, ApiError, Event, Item, Obj, Resource, Store, merge_patch, now_rfc3339, resolve

_TRUE, _FALSE = {"1", "t", "T", "true", "TRUE", "True"}, {"0", "f", "F", "false", "FALSE", "False"}  # Go ParseBool
_PUBLIC = {"/livez", "/readyz", "/healthz", "/version"}
_BATCH = 256 * 1024
_CONTROL_OPS = """create replace patch delete get list bulk_load compact pod_ready pod_terminating
    sync_endpointslices drop_watches stall_watches unstall expire_rv_on_next_watch inject_watch_error fail_next slow
    expire_token revoke_token rotate_token too_large_rv expire_continue_tokens restart open_watches wait_watchers
    forbid clear_faults"""
DropMode = Literal["reset", "truncate", "eof"]


@dataclass
class RequestRecord:
    """One request as the fake saw it. `status` is set once headers go out; `duration` when the response ends."""

    method: str
    path: str
    query: dict[str, str]
    token: bool  # an Authorization header was sent
    verb: str = "other"  # list | watch | get | create | update | patch | delete | discovery | control | other
    resource: str | None = None
    status: int | None = None
    duration: float | None = None
    bytes: int = 0
    fault: str | None = None
    started: float = 0.0  # loop time


@dataclass
class _Fault:
    kind: str  # fail | too_large | expire_rv
    resource: str | None
    verb: str | None
    times: int
    status: int = 0
    retry_after: float | None = None


@dataclass
class _Snapshot:
    items: list[Item]
    rv: int
    query: str
    expires: float


@dataclass(eq=False)
class _Watch:
    res: Resource
    namespace: str | None
    labels: LabelSelector
    fields: FieldSelector
    bookmarks: bool
    record: RequestRecord
    queue: deque[tuple[str, Any]] = field(default_factory=deque)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: bool = False
    command: tuple[str, Any] | None = None

    def matches(self, item: Item) -> bool:
        return self.labels.matches(item.meta.get("labels")) and self.fields.matches(item.obj)


_Objs = list[Obj]  # aliases: inside FakeKube, `list` is the method
_Watches = list[_Watch]


def _bool(q: dict[str, str], name: str) -> bool | None:
    if name not in q:
        return None
    if q[name] not in _TRUE | _FALSE:
        raise ApiError(400, f"invalid boolean value for {name}: {q[name]!r}")
    return q[name] in _TRUE


def _invalid(path: str, message: str) -> ApiError:
    return ApiError(422, f'ListOptions.meta.k8s.io "" is invalid: {path}: Forbidden: {message}', "Invalid")


def _line(type_: str, item: Item) -> str:
    return f'{{"type":"{type_}","object":{item.json()}}}'


def json_patch(doc: Any, ops: list[Obj]) -> Any:
    """RFC 6902 add / replace / remove / test."""
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        target = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if op["op"] == "test":
            current = target[int(last)] if isinstance(target, list) else target.get(last)
            if current != op["value"]:
                raise ApiError(422, f"test operation failed at {op['path']}")
        elif op["op"] == "remove":
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            index = len(target) if last == "-" else int(last)
            if op["op"] == "add":
                target.insert(index, op["value"])
            else:
                target[index] = op["value"]
        else:
            target[last] = op["value"]
    return doc


class FakeKube:
    """An in-process kube-apiserver for tests. `async with FakeKube() as kube:` binds host:0 in the running loop."""

    CONTROL = frozenset(_CONTROL_OPS.split())  # what the /_fake/ API may call

    def __init__(
        self,
        *,
        tls: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 60.0,
        history: int = 1000,
        watchlist: bool | str = True,
        auto_endpointslices: bool = False,
        split_writes: bool = False,
        seed: int = 0,
        min_request_timeout: float = 1800.0,
        continue_ttl: float = 300.0,
        too_large_wait: float = 1.0,
        ignore_limit_rv0: bool = True,
        state_dir: str | None = None,
    ) -> None:
        if watchlist not in (True, False, "ignore"):
            raise ValueError("watchlist must be True, False or 'ignore'")
        self.tls, self.host, self.port = tls, host, port
        self.bookmark_interval, self.watchlist = bookmark_interval, watchlist
        self.auto_endpointslices, self.split_writes = auto_endpointslices, split_writes
        self.min_request_timeout, self.continue_ttl = min_request_timeout, continue_ttl
        self.too_large_wait, self.ignore_limit_rv0 = too_large_wait, ignore_limit_rv0
        self.store = Store(history, seed)
        self.store.listeners.append(self._on_event)
        self.requests: list[RequestRecord] = []
        self._rng = random.Random(seed)
        self._own_dir = state_dir is None
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="fakekube-")
        self.ca_file = os.path.join(self.state_dir, "ca.crt")
        self.token_file = os.path.join(self.state_dir, "token")
        self.kubeconfig = os.path.join(self.state_dir, "kubeconfig")
        self.url = ""
        self.env: dict[str, str] = {}
        self.token = ""
        self._tokens: dict[str, float | None] = {}  # token -> loop-time expiry (None: never)
        self._issued: set[str] = set()  # every token ever issued: the control API accepts them all
        self._watches: dict[str, set[_Watch]] = {r: set() for r in RESOURCES}  # open, not told to end
        self._streams = 0  # watch handlers still running
        self._faults: list[_Fault] = []
        self._forbidden: set[tuple[str, str | None]] = set()
        self._snapshots: dict[str, _Snapshot] = {}
        self._delay_headers = 0.0
        self._trickle_bps: float | None = None
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    async def __aenter__(self) -> FakeKube:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        os.makedirs(self.state_dir, exist_ok=True)
        ssl_ctx = self._make_tls() if self.tls else None
        app = web.Application(client_max_size=256 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, ssl_context=ssl_ctx)
        await site.start()
        self.port = self._runner.addresses[0][1]
        bracketed = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"{'https' if self.tls else 'http'}://{bracketed}:{self.port}"
        self.env = {"KUBERNETES_SERVICE_HOST": self.host, "KUBERNETES_SERVICE_PORT": str(self.port)}
        self.rotate_token(0)
        cluster: Obj = {"server": self.url}
        if self.tls:
            cluster["certificate-authority"] = self.ca_file
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "fakekube",
            "clusters": [{"name": "fakekube", "cluster": cluster}],
            "users": [{"name": "fakekube", "user": {"tokenFile": self.token_file}}],
            "contexts": [
                {"name": "fakekube", "context": {"cluster": "fakekube", "user": "fakekube", "namespace": "default"}}
            ],
        }
        with open(self.kubeconfig, "w") as f:
            json.dump(config, f, indent=1)  # JSON is YAML

    async def close(self) -> None:
        """End every watch cleanly, drop idle keep-alive connections, stop serving."""
        for w in self._selected(None):
            self._command(w, "drop", "eof", fault=False)
        with contextlib.suppress(TimeoutError):  # let the watch handlers finish their last writes
            async with asyncio.timeout(2.0):
                while self._streams:
                    await asyncio.sleep(0.005)
        if self._runner is not None:
            for handler in self._runner.server.connections if self._runner.server else ():
                if handler.transport is not None:
                    handler.transport.abort()
            await self._runner.cleanup()
            self._runner = None
        if self._own_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    def _make_tls(self) -> ssl.SSLContext:
        import trustme

        ca = trustme.CA(organization_name="fakekube")
        cert = ca.issue_cert("127.0.0.1", "::1", "localhost", "kubernetes.default.svc", common_name="kube-apiserver")
        ca.cert_pem.write_to_path(self.ca_file)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(ctx)
        return ctx

    def _now(self) -> float:
        assert self._loop is not None, "FakeKube is not started"
        return self._loop.time()

    # -- store operations ----------------------------------------------------------------------------------
    def _after_write(self, res: Resource, namespace: str | None) -> None:
        if self.auto_endpointslices and res.plural in ("pods", "services"):
            endpointslices.sync(self.store, namespace)

    def create(self, obj: Obj) -> Obj:
        item = self.store.create(obj)
        self._after_write(item.res, item.key[0])
        return copy.deepcopy(item.obj)

    def replace(self, obj: Obj) -> Obj:
        item = self.store.replace(obj)
        self._after_write(item.res, item.key[0])
        return copy.deepcopy(item.obj)

    def patch(self, kind: str, namespace: str | None, name: str, change: Obj | Callable[[Obj], Obj | None]) -> Obj:
        """Apply a JSON merge patch dict, or a callable that mutates (or returns) a deep copy of the object."""
        item = self.store.patch(resolve(kind), namespace, name, change)
        self._after_write(item.res, item.key[0])
        return copy.deepcopy(item.obj)

    def delete(self, kind: str, namespace: str | None, name: str) -> Obj:
        item = self.store.delete(resolve(kind), namespace, name)
        self._after_write(item.res, item.key[0])
        return copy.deepcopy(item.obj)

    def get(self, kind: str, namespace: str | None, name: str) -> Obj | None:
        res = resolve(kind)
        item = self.store.objects[res.plural].get(self.store.key(res, namespace, name))
        return copy.deepcopy(item.obj) if item else None

    def list(self, kind: str, namespace: str | None = None) -> _Objs:
        items = self.store.objects[resolve(kind).plural]
        return [copy.deepcopy(i.obj) for k, i in sorted(items.items()) if namespace in (None, k[0])]

    def bulk_load(self, objs: Iterable[Obj]) -> int:
        """Create many objects fast; the dicts are taken over, not copied. Returns how many were created."""
        count = self.store.bulk_load(objs)
        if self.auto_endpointslices:
            endpointslices.sync(self.store)
        return count

    def compact(self) -> None:
        """Forget all history: watches and exact lists from any older RV get 410; continue tokens expire."""
        self.store.compact()
        self._snapshots.clear()

    def sync_endpointslices(self, namespace: str | None = None) -> int:
        return endpointslices.sync(self.store, namespace)

    def pod_ready(self, namespace: str, name: str, ready: bool = True) -> Obj:
        def change(pod: Obj) -> None:
            conditions = pod.setdefault("status", {}).setdefault("conditions", [])
            for kind in ("Ready", "ContainersReady"):
                cond = next((c for c in conditions if c.get("type") == kind), None)
                if cond is None:
                    cond = {"type": kind}
                    conditions.append(cond)
                if cond.get("status") != str(ready):
                    cond.update(status=str(ready), lastProbeTime=None, lastTransitionTime=now_rfc3339())

        return self.patch("pods", namespace, name, change)

    def pod_terminating(self, namespace: str, name: str, grace: int = 30) -> Obj:
        patch = {"metadata": {"deletionTimestamp": now_rfc3339(), "deletionGracePeriodSeconds": grace}}
        return self.patch("pods", namespace, name, patch)

    # -- watch bookkeeping and fault hooks ---------------------------------------------------------------
    def _on_event(self, res: Resource, event: Event) -> None:
        for w in self._watches[res.plural]:
            w.queue.append(("event", event))
            w.wake.set()

    def _selected(self, resource: str | None) -> _Watches:
        plurals = [resolve(resource).plural] if resource else list(RESOURCES)
        return [w for p in plurals for w in self._watches[p]]

    def _command(self, w: _Watch, action: str, arg: Any, fault: bool = True) -> None:
        """Tell a watch to end; it stops counting as open (and receiving events) at once."""
        self._watches[w.res.plural].discard(w)
        w.command = (action, arg)
        w.record.fault = f"{action} {arg}" if fault else w.record.fault
        w.wake.set()

    def open_watches(self, resource: str | None = None) -> int:
        return len(self._selected(resource))

    async def wait_watchers(self, resource: str | None, n: int, timeout: float = 5.0) -> int:
        """Wait until exactly `n` watches of `resource` (None: any) are open; TimeoutError otherwise."""
        async with asyncio.timeout(timeout):
            while self.open_watches(resource) != n:
                await asyncio.sleep(0.005)
        return n

    def drop_watches(self, mode: DropMode = "reset", resource: str | None = None) -> int:
        """reset: TCP RST; truncate: half an event, then close without the last chunk; eof: clean end."""
        if mode not in ("reset", "truncate", "eof"):
            raise ValueError(f"unknown drop mode {mode!r}")
        watches = self._selected(resource)
        for w in watches:
            self._command(w, "drop", mode)
        return len(watches)

    def stall_watches(self, resource: str | None = None) -> int:
        """The open watches send nothing at all (no bookmarks, no deadline) until unstall()."""
        watches = self._selected(resource)
        for w in watches:
            w.stalled, w.record.fault = True, "stall"
        return len(watches)

    def unstall(self, resource: str | None = None) -> int:
        watches = [w for w in self._selected(resource) if w.stalled]
        for w in watches:
            w.stalled = False
            w.wake.set()
        return len(watches)

    def inject_watch_error(self, code: int = 410, resource: str | None = None) -> int:
        """Each open watch sends one ERROR event carrying a Status with `code`, then ends cleanly."""
        watches = self._selected(resource)
        for w in watches:
            self._command(w, "error", code)
        return len(watches)

    def restart(self, mode: DropMode = "eof") -> int:
        """Close every watch (cleanly, or with mode='reset'); the store is kept."""
        return self.drop_watches(mode)

    def _add_fault(self, kind: str, resource: str | None, verb: str | None, times: int, **kw: Any) -> None:
        self._faults.append(_Fault(kind, resolve(resource).plural if resource else None, verb, times, **kw))

    def _take_fault(self, kind: str, resource: str | None, verb: str) -> _Fault | None:
        for fault in self._faults:
            if fault.kind == kind and fault.resource in (None, resource) and fault.verb in (None, verb):
                fault.times -= 1
                if fault.times <= 0:
                    self._faults.remove(fault)
                return fault
        return None

    def expire_rv_on_next_watch(self, resource: str | None = None, times: int = 1) -> None:
        """The next watch that resumes from an RV gets HTTP 200 + ERROR 410, as if its RV were compacted."""
        self._add_fault("expire_rv", resource, "watch", times)

    def fail_next(
        self,
        status: int = 500,
        times: int = 1,
        retry_after: float | None = None,
        resource: str | None = None,
        verb: str | None = None,
    ) -> None:
        """The next `times` matching API requests (verb: list, watch, get, create, update, patch, delete) fail."""
        self._add_fault("fail", resource, verb, times, status=status, retry_after=retry_after)

    def too_large_rv(self, resource: str | None = None, times: int = 1) -> None:
        """The next list answers 504 Timeout with the ResourceVersionTooLarge cause."""
        self._add_fault("too_large", resource, "list", times)

    def clear_faults(self) -> None:
        self._faults.clear()
        self._forbidden.clear()
        self.slow()

    def forbid(self, resource: str | None = None, verb: str | None = None) -> None:
        """Answer 403 Forbidden to requests on `resource` (None: any) with `verb` (None: any) until clear_faults()."""
        self._forbidden.add((resolve(resource).plural if resource else "*", verb))

    def slow(self, delay_headers: float = 0.0, trickle_bps: float | None = None) -> None:
        """Delay every API response's headers, and/or trickle bodies at `trickle_bps` bytes/s. slow() resets."""
        self._delay_headers, self._trickle_bps = delay_headers, trickle_bps

    def expire_continue_tokens(self, times: int = 1, resource: str | None = None) -> None:
        """Every continue token issued so far expires, and the next `times` pages (any token) get 410 Expired."""
        self._snapshots.clear()
        if times > 0:
            self._add_fault("expire_continue", resource, "list", times)

    # -- tokens ------------------------------------------------------------------------------------------
    def _write_token(self, token: str) -> None:
        tmp = f"{self.token_file}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w") as f:
            f.write(token)
        os.replace(tmp, self.token_file)

    def rotate_token(self, grace: float = 0.0) -> str:
        """Write a new token (temp file + rename); the old one stays valid for `grace` seconds (0: revoked now)."""
        old, self.token = self.token, secrets.token_urlsafe(24)
        self._tokens[self.token] = None
        self._issued.add(self.token)
        if old in self._tokens:
            if grace > 0:
                self._tokens[old] = self._now() + grace
            else:
                del self._tokens[old]
        self._write_token(self.token)
        return self.token

    def expire_token(self) -> str:
        """The current token expires now and a fresh one is written to token_file (as the kubelet would)."""
        return self.rotate_token(0)

    def revoke_token(self) -> None:
        """The current token is refused from now on; token_file is unchanged, so nothing recovers until rotate."""
        self._tokens.pop(self.token, None)

    def _authenticate(self, request: web.Request) -> None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        expiry = self._tokens.get(token, 0.0) if scheme.lower() == "bearer" else 0.0
        if expiry is not None and expiry <= self._now():
            raise ApiError(401, "Unauthorized")

    # -- HTTP ----------------------------------------------------------------------------------------------
    async def _handle(self, request: web.Request) -> web.StreamResponse:
        record = RequestRecord(
            request.method, request.path, dict(request.query), "Authorization" in request.headers, started=self._now()
        )
        self.requests.append(record)
        try:
            try:
                resp = await self._serve(request, record)
            except ApiError as err:
                resp = self._status(err)
            except SelectorError as err:
                resp = self._status(ApiError(400, str(err)))
            except (ValueError, KeyError, TypeError, IndexError) as err:
                resp = self._status(ApiError(400, f"{type(err).__name__}: {err}"))
            except TimeoutError:
                resp = self._status(ApiError(504, "Timeout: the control operation timed out", "Timeout"))
            record.status = record.status or resp.status
            if isinstance(resp, web.Response) and resp.body is not None:
                record.bytes += len(resp.body)  # type: ignore[arg-type]
            return resp
        finally:
            record.duration = self._now() - record.started

    @staticmethod
    def _status(err: ApiError) -> web.Response:
        return web.json_response(err.status(), status=err.code, headers=err.headers)

    async def _serve(self, request: web.Request, record: RequestRecord) -> web.StreamResponse:
        path = request.path
        if path.startswith("/_fake/"):
            record.verb = "control"
            return await self._control(request)
        q = record.query
        route: web.StreamResponse | tuple[str, Resource, Any, Any, Any] | ApiError
        try:
            route = self._route(request.method, path, q)
        except ApiError as err:
            route = err
        if isinstance(route, tuple):
            record.verb, record.resource = route[0], route[1].plural
        elif isinstance(route, web.StreamResponse):
            record.verb = "discovery"
        if path not in _PUBLIC or "Authorization" in request.headers:
            self._authenticate(request)
        if not isinstance(route, tuple):
            if isinstance(route, ApiError):
                raise route
            return route
        verb, res, ns, name, sub = route
        if {(res.plural, verb), (res.plural, None), ("*", verb), ("*", None)} & self._forbidden:
            raise ApiError(403, f'{res.plural} is forbidden: User "fakekube" cannot {verb} resource "{res.plural}"')
        fault = self._take_fault("fail", res.plural, verb)
        if fault:
            record.fault = f"fail {fault.status}"
            error = ApiError(
                fault.status,
                {
                    429: "Too many requests, please try again later.",
                    503: "the server is currently unable to handle the request",
                }.get(fault.status, "Internal error occurred: injected failure"),
            )
            if fault.retry_after is not None:
                error.headers["Retry-After"] = str(max(1, round(fault.retry_after)))
                error.details["retryAfterSeconds"] = max(1, round(fault.retry_after))
            raise error
        if self._delay_headers:
            await asyncio.sleep(self._delay_headers)
        if verb == "watch":
            return await self._watch(request, record, res, ns, q)
        if verb == "list":
            return await self._list(request, record, res, ns, q)
        if verb == "get":
            return self._json(self.store.get_item(res, ns, name).json())
        return await self._write(request, verb, res, ns, name, sub)

    def _route(
        self, method: str, path: str, q: dict[str, str]
    ) -> web.StreamResponse | tuple[str, Resource, Any, Any, Any]:
        parts = [p for p in path.split("/") if p]
        if path in ("/livez", "/readyz", "/healthz"):
            return web.Response(text="ok")
        if path == "/version":
            return web.json_response(
                {"major": "1", "minor": "35", "gitVersion": "v1.35.0-fakekube", "platform": "linux/amd64"}
            )
        if parts == ["api"]:
            return web.json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            )
        if parts == ["apis"]:
            version = {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
            return web.json_response(
                {
                    "kind": "APIGroupList",
                    "apiVersion": "v1",
                    "groups": [{"name": "discovery.k8s.io", "versions": [version], "preferredVersion": version}],
                }
            )
        if parts[:2] == ["api", "v1"]:
            group, rest = "", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis" and parts[2] == "v1":
            group, rest = parts[1], parts[3:]
        else:
            raise ApiError(404, "the server could not find the requested resource")
        force_watch = rest[:1] == ["watch"]
        rest = rest[1:] if force_watch else rest
        if not rest:
            return self._discovery(group)
        ns = None
        if len(rest) >= 3 and rest[0] == "namespaces":
            ns, rest = rest[1], rest[2:]
        res = RESOURCES.get(rest[0])
        if res is None or res.group != group or (ns is not None and not res.namespaced) or len(rest) > 3:
            raise ApiError(404, "the server could not find the requested resource")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub not in (None, "status") or (name and res.namespaced and ns is None):
            raise ApiError(404, "the server could not find the requested resource")
        if name is None:
            verb = {"GET": "list", "POST": "create"}.get(method)
            if verb == "list" and (force_watch or _bool(q, "watch")):
                verb = "watch"
            if verb == "create" and res.namespaced and ns is None:
                verb = None
        else:
            verb = {"GET": "get", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)
        if verb is None:
            raise ApiError(405, f"the server does not allow this method on the requested resource: {method}")
        return verb, res, ns, name, sub

    def _discovery(self, group: str) -> web.Response:
        resources = [
            {
                "name": r.plural,
                "singularName": r.kind.lower(),
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create", "delete", "get", "list", "patch", "update", "watch"],
            }
            for r in RESOURCES.values()
            if r.group == group
        ]
        return web.json_response(
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": f"{group}/v1" if group else "v1",
                "resources": resources,
            }
        )

    def _json(self, text: str, status: int = 200) -> web.Response:
        return web.Response(text=text, status=status, content_type="application/json")

    # -- writes over HTTP ----------------------------------------------------------------------------------
    async def _write(
        self, request: web.Request, verb: str, res: Resource, ns: str | None, name: str | None, sub: str | None
    ) -> web.Response:
        if verb == "delete":
            item = self.store.delete(res, ns, name or "")
            self._after_write(res, ns)
            return self._json(item.json())
        try:
            body = await request.json()
        except ValueError as err:
            raise ApiError(400, f"invalid JSON body: {err}") from None
        if verb == "patch":
            ctype = request.content_type
            current = copy.deepcopy(self.store.get_item(res, ns, name or "").obj)
            if ctype == "application/json-patch+json":
                body = json_patch(current, body)
            elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
                body = merge_patch(current, body, strategic=ctype.startswith("application/strategic"))
            else:
                raise ApiError(415, f"the body of the request was in an unknown format: {ctype}")
            body.setdefault("metadata", {})["resourceVersion"] = current["metadata"]["resourceVersion"]
        if not isinstance(body, dict) or body.get("kind", res.kind) != res.kind:
            raise ApiError(400, f"the body must be a {res.kind} object")
        meta = body.setdefault("metadata", {})
        if ns is not None and meta.setdefault("namespace", ns) != ns:
            raise ApiError(400, "the namespace of the provided object does not match the namespace sent on the request")
        if verb == "create":
            item = self.store.create(body, res, owned=True)
            self._after_write(res, ns)
            return self._json(item.json(), 201)
        if meta.get("name") != name:
            raise ApiError(
                400, f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
            )
        if sub == "status":
            current = copy.deepcopy(self.store.get_item(res, ns, name or "").obj)
            current["status"] = body.get("status", {})
            current["metadata"]["resourceVersion"] = meta.get("resourceVersion")
            body = current
        item = self.store.replace(body, res)
        self._after_write(res, ns)
        return self._json(item.json())

    # -- list ----------------------------------------------------------------------------------------------
    async def _wait_rv(self, rv: int) -> None:
        deadline = self._now() + self.too_large_wait
        while self.store.rv < rv:
            if self._now() >= deadline:
                raise self._too_large(rv)
            await asyncio.sleep(0.01)

    def _too_large(self, rv: int) -> ApiError:
        msg = f"Too large resource version: {rv}, current: {self.store.rv}"
        return ApiError(
            504,
            f"Timeout: {msg}",
            "Timeout",
            retryAfterSeconds=1,
            causes=[{"reason": "ResourceVersionTooLarge", "message": msg}],
        )

    def _selectors(self, res: Resource, q: dict[str, str]) -> tuple[LabelSelector, FieldSelector]:
        return LabelSelector(q.get("labelSelector", "")), FieldSelector(q.get("fieldSelector", ""), res.kind)

    async def _list(
        self, request: web.Request, record: RequestRecord, res: Resource, ns: str | None, q: dict[str, str]
    ) -> web.StreamResponse:
        rv_s, match, cont = q.get("resourceVersion", ""), q.get("resourceVersionMatch", ""), q.get("continue", "")
        try:
            limit = int(q.get("limit") or 0)
            rv = int(rv_s) if rv_s else 0
        except ValueError:
            raise ApiError(400, "invalid limit or resourceVersion") from None
        if "sendInitialEvents" in q:
            raise _invalid("sendInitialEvents", "sendInitialEvents is forbidden for list")
        if match:
            if match not in ("NotOlderThan", "Exact"):
                raise _invalid("resourceVersionMatch", f'unsupported value "{match}"')
            if cont:
                raise _invalid("resourceVersionMatch", "resourceVersionMatch is forbidden when continue is provided")
            if not rv_s:
                raise _invalid(
                    "resourceVersionMatch", "resourceVersionMatch is forbidden unless resourceVersion is provided"
                )
            if match == "Exact" and rv_s == "0":
                raise _invalid(
                    "resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for resourceVersion "0"'
                )
        if cont and rv_s not in ("", "0"):
            raise ApiError(400, "specifying resource version is not allowed when using continue")
        if self._take_fault("too_large", res.plural, "list"):
            record.fault = "too_large_rv"
            raise self._too_large(max(rv, self.store.rv + 1))
        labels, fields = self._selectors(res, q)
        fingerprint = json.dumps([res.plural, ns, labels.text, fields.text])
        if cont:
            if self._take_fault("expire_continue", res.plural, "list"):
                record.fault = "expire_continue"
                self._snapshots.clear()
            snap, offset = self._snapshot(cont, fingerprint)
            items, list_rv = snap.items, snap.rv
        else:
            offset, list_rv = 0, self.store.rv
            if rv_s == "0" and self.ignore_limit_rv0:
                limit = 0
            state = self.store.objects[res.plural]
            if rv_s not in ("", "0"):
                await self._wait_rv(rv)
                if match == "Exact" or (not match and limit):
                    state, list_rv = self.store.state_at(res, rv), rv
                else:
                    list_rv = self.store.rv
            items = [
                i
                for k, i in sorted(state.items())
                if ns in (None, k[0]) and labels.matches(i.meta.get("labels")) and fields.matches(i.obj)
            ]
        end = offset + limit if limit else len(items)
        meta: Obj = {"resourceVersion": str(list_rv)}
        if end < len(items):
            token = cont and json.loads(base64.urlsafe_b64decode(cont + "==")).get("id")
            if not token:
                token = secrets.token_hex(8)
                self._snapshots[token] = _Snapshot(items, list_rv, fingerprint, self._now() + self.continue_ttl)
                while len(self._snapshots) > 64:
                    del self._snapshots[next(iter(self._snapshots))]
            raw = json.dumps(
                {
                    "v": "fakekube/v1",
                    "rv": list_rv,
                    "id": token,
                    "off": end,
                    "q": hashlib.sha256(fingerprint.encode()).hexdigest()[:16],
                }
            )
            meta["continue"] = base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")
            if not labels.requirements and not fields.terms:
                meta["remainingItemCount"] = len(items) - end
        kind_list = (
            f'{{"kind":"{res.kind}List","apiVersion":"{res.api_version}","metadata":{json.dumps(meta)},"items":['
        )
        body = kind_list + ",".join(i.list_json() for i in items[offset:end]) + "]}"
        if not self._trickle_bps:
            return self._json(body)
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        await resp.prepare(request)
        await self._send(resp, record, body.encode())
        return resp

    def _snapshot(self, token: str, fingerprint: str) -> tuple[_Snapshot, int]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            snap_id, offset, digest = data["id"], int(data["off"]), data["q"]
        except (ValueError, KeyError, TypeError):
            raise ApiError(400, "continue key is not valid: malformed token") from None
        if digest != hashlib.sha256(fingerprint.encode()).hexdigest()[:16]:
            raise ApiError(400, "continue key is not valid: it was issued for a different query")
        snap = self._snapshots.get(snap_id)
        if snap is None or snap.expires <= self._now():
            self._snapshots.pop(snap_id, None)
            raise ApiError(
                410,
                "The provided continue parameter is too old to display a consistent list result. "
                "You can start a new list without the continue parameter.",
                "Expired",
            )
        return snap, offset

    # -- watch ---------------------------------------------------------------------------------------------
    async def _watch(
        self, request: web.Request, record: RequestRecord, res: Resource, ns: str | None, q: dict[str, str]
    ) -> web.StreamResponse:
        rv_s, match = q.get("resourceVersion", ""), q.get("resourceVersionMatch", "")
        send_initial, bookmarks = _bool(q, "sendInitialEvents"), bool(_bool(q, "allowWatchBookmarks"))
        if self.watchlist == "ignore":
            send_initial, match = None, ""
        if send_initial is not None:
            if self.watchlist is False:
                raise _invalid(
                    "sendInitialEvents",
                    "sendInitialEvents is forbidden for watch unless the WatchList feature gate is enabled",
                )
            if match != "NotOlderThan":
                raise _invalid(
                    "resourceVersionMatch", "sendInitialEvents requires setting resourceVersionMatch to NotOlderThan"
                )
        elif match:
            raise _invalid(
                "resourceVersionMatch",
                "resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
            )
        try:
            rv = int(rv_s) if rv_s else 0
            timeout = float(q.get("timeoutSeconds") or 0)
        except ValueError:
            raise ApiError(400, "invalid resourceVersion or timeoutSeconds") from None
        labels, fields = self._selectors(res, q)
        w = _Watch(res, ns, labels, fields, bookmarks, record)
        loop_now = self._now()
        if timeout <= 0:
            timeout = self.min_request_timeout * (1 + self._rng.random())
        deadline = loop_now + timeout

        too_old = None
        if send_initial is None and rv_s in ("", "0"):
            initial, end_bookmark = True, self.watchlist is True and bookmarks
        elif send_initial:
            initial, end_bookmark = True, bookmarks
        else:
            initial, end_bookmark = False, False
            if rv_s not in ("", "0"):
                floor = self.store.floor[res.plural]
                if rv < floor:
                    too_old = f"too old resource version: {rv} ({floor + 1})"
                elif self._take_fault("expire_rv", res.plural, "watch"):
                    record.fault = "expire_rv"
                    too_old = f"too old resource version: {rv} ({self.store.rv})"
        if too_old is None:
            # Register and fill the queue synchronously, so no write can fall between snapshot and live events.
            if initial:
                for key, item in self.store.objects[res.plural].items():
                    if ns in (None, key[0]) and w.matches(item):
                        w.queue.append(("initial", item))
                if end_bookmark:
                    w.queue.append(("end", max(rv, self.store.rv)))
            elif rv_s not in ("", "0"):
                w.queue.extend(("event", ev) for ev in self.store.history[res.plural] if ev.rv > rv)
            self._watches[res.plural].add(w)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        self._streams += 1
        try:
            await resp.prepare(request)
            record.status = 200
            if too_old is not None:
                status = ApiError(410, too_old, "Expired").status()
                await self._send(resp, record, (json.dumps({"type": "ERROR", "object": status}) + "\n").encode())
                return resp
            await self._stream(request, resp, w, deadline, max(rv, self.store.rv))
        except ConnectionError:
            pass
        finally:
            self._watches[res.plural].discard(w)
            self._streams -= 1
        return resp

    def _render(self, w: _Watch, entry: tuple[str, Any]) -> str | None:
        tag, value = entry
        if tag == "initial":
            return _line("ADDED", value)
        if tag == "end":
            return w.res.bookmark(value, initial_end=True)
        ev: Event = value
        if w.namespace is not None and ev.item.key[0] != w.namespace:
            return None
        if ev.type == "ADDED":
            return _line("ADDED", ev.item) if w.matches(ev.item) else None
        if ev.type == "DELETED":
            return _line("DELETED", ev.item) if w.matches(ev.item) else None
        assert ev.prev is not None
        now, before = w.matches(ev.item), w.matches(ev.prev)
        if now:
            return _line("MODIFIED" if before else "ADDED", ev.item)
        return _line("DELETED", ev.prev.with_rv(ev.rv)) if before else None

    async def _stream(
        self, request: web.Request, resp: web.StreamResponse, w: _Watch, deadline: float, rv: int
    ) -> None:
        start = self._now()
        next_bookmark = start + self.bookmark_interval
        final_bookmark: float | None = deadline - min(2.0, (deadline - start) / 4)
        while True:
            w.wake.clear()
            if w.command is not None:
                (action, arg), w.command = w.command, None
                if action == "error":
                    msg = (
                        "The resourceVersion for the provided watch is too old."
                        if arg == 410
                        else "injected watch error"
                    )
                    status = ApiError(arg, msg).status()
                    await self._send(resp, w.record, (json.dumps({"type": "ERROR", "object": status}) + "\n").encode())
                    return
                if arg == "truncate":
                    line = self._render(w, w.queue[0]) if w.queue else None
                    data = (line or w.res.bookmark(self.store.rv)).encode()
                    await resp.write(data[: max(1, len(data) // 2)])
                if arg in ("reset", "truncate"):
                    transport = request.transport
                    if transport is not None:
                        sock = transport.get_extra_info("socket")
                        if arg == "reset" and sock is not None:
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        transport.abort()
                return
            if not w.stalled and self._now() >= deadline:
                return  # a clean end at the deadline, even while events keep coming
            if not w.stalled:
                chunk: list[str] = []
                size = 0
                while w.queue and size < _BATCH:
                    line = self._render(w, w.queue.popleft())
                    if line is not None:
                        chunk.append(line)
                        size += len(line)
                if chunk:
                    await self._send(resp, w.record, ("\n".join(chunk) + "\n").encode())
                    continue
                now = self._now()
                due = final_bookmark is not None and now >= final_bookmark
                if w.bookmarks and (now >= next_bookmark or due):
                    rv = max(rv, self.store.rv)
                    await self._send(resp, w.record, (w.res.bookmark(rv) + "\n").encode())
                    next_bookmark = now + self.bookmark_interval
                    final_bookmark = None if due else final_bookmark
                    continue
            wait = None
            if not w.stalled:
                times = [deadline, *([next_bookmark, final_bookmark or deadline] if w.bookmarks else [])]
                wait = max(0.0, min(times) - self._now())
            try:
                async with asyncio.timeout(wait):
                    await w.wake.wait()
            except TimeoutError:
                pass

    async def _send(self, resp: web.StreamResponse, record: RequestRecord, data: bytes) -> None:
        record.bytes += len(data)
        pieces = [data]
        if self.split_writes and len(data) > 1:
            cuts = sorted(self._rng.sample(range(1, len(data)), min(3, len(data) - 1)))
            pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
        for piece in pieces:
            bps = self._trickle_bps
            step = max(1, int(bps / 20)) if bps else len(piece)
            for i in range(0, len(piece), step):
                await resp.write(piece[i : i + step])
                if bps:
                    await asyncio.sleep(step / bps)
            if len(pieces) > 1:
                await asyncio.sleep(0.001)  # a separate TCP segment for each piece

    # -- control API (for a fake in another process) -------------------------------------------------------
    async def _control(self, request: web.Request) -> web.Response:
        _, _, token = request.headers.get("Authorization", "").partition(" ")
        if token.strip() not in self._issued:
            raise ApiError(401, "Unauthorized")
        op = request.path.removeprefix("/_fake/")
        if op == "requests":
            since = int(request.query.get("since", 0))
            return web.json_response({"result": [asdict(r) for r in self.requests[since:]]})
        if op not in self.CONTROL:
            raise ApiError(404, f"unknown control operation {op!r}")
        kwargs = await request.json() if request.can_read_body else {}
        args = kwargs.pop("args", [])
        result = getattr(self, op)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return web.json_response({"result": result})
