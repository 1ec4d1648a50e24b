"""Services, EndpointSlices and Pods from a Kubernetes API server: list + watch, as client-go does.

One reflector per resource (and per namespace, with --namespace):

    streaming list (watch + sendInitialEvents) ── or, where refused, paged list (limit/continue)
        → Resync(kind, records)   the complete set, replacing what was known
    watch from the list's resourceVersion with bookmarks, timeoutSeconds 5-10 min
        → Upsert / Delete per event; a clean end re-watches from the last resourceVersion
    410 Gone (HTTP, or an ERROR event)  → relist (consistent read), replacing the records
    429                                  → wait Retry-After
    401                                  → re-read the credentials (rotated token), retry
    anything else (reset, 5xx, no bytes for 90 s) → exponential backoff with jitter, max 30 s

The official `kubernetes` package only loads the configuration (kubeconfig or in-cluster,
TLS, token). Requests go through aiohttp directly and responses are read as raw JSON and cut
down to `dnsd.records` at once: the client's models cost ~1 ms and ~58 KiB per pod
(shared/research/k8s-api.md §3.6), and `kubernetes.aio` ends every watch after 300 s.
List pages are decoded in a worker thread so the event loop keeps answering queries.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import random
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import aiohttp

from dnsd.names import AddressPolicy
from dnsd.records import (
    Delete,
    Event,
    Kind,
    Record,
    RecordError,
    Resync,
    Synced,
    Upsert,
    endpoint_slice_from,
    pod_from,
    service_from,
)

log = logging.getLogger("dnsd.source.kubernetes")

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
PAGE_SIZE = 250
"""Items per list page. json.loads holds the GIL for a whole page, so the page size bounds how
long the event loop can wait for the decoding thread: 250 realistic pods take ~5-10 ms."""
SWITCH_INTERVAL = 0.001
"""How soon a decoding thread must hand the GIL back to the event loop (CPython's default: 5 ms)."""
WATCH_SECONDS = (300, 600)
"""Watch timeoutSeconds is drawn from this range, as client-go does, so watches spread out."""
STALL_SECONDS = 90.0
"""A watch that sends no byte for this long is dead; bookmarks come about once a minute."""
BACKOFF_FIRST, BACKOFF_CAP, BACKOFF_RESET = 0.8, 30.0, 120.0
TOKEN_REREAD_SECONDS = 60.0
PAUSE_EVERY = 0.004

PATHS: dict[Kind, tuple[str, str]] = {
    "Service": ("/api/v1", "services"),
    "EndpointSlice": ("/apis/discovery.k8s.io/v1", "endpointslices"),
    "Pod": ("/api/v1", "pods"),
}
POD_FIELD_SELECTOR = "status.phase!=Succeeded,status.phase!=Failed"
"""Finished pods never get names; the server leaves them out (and sends DELETED when one finishes)."""


class ApiError(Exception):
    """The API server answered with an error Status."""

    def __init__(self, code: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.retry_after = retry_after


class StreamingListRefused(Exception):
    """The server does not do streaming lists (sendInitialEvents)."""


# -- configuration ---------------------------------------------------------------------------


@dataclass
class Credentials:
    """Where the API server is and how to authenticate, from the official config loaders.

    `reload()` re-runs the loader: that re-reads a rotated service-account token or a
    kubeconfig `tokenFile`. It runs at most every minute, and at once after a 401."""

    kubeconfig: str | None = None
    context: str | None = None
    host: str = ""
    ssl_context: ssl.SSLContext | bool = True
    authorization: str | None = None
    source: str = ""
    loaded_at: float = 0.0

    def reload(self) -> None:
        from kubernetes import client, config

        configuration = client.Configuration()
        if self.kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ:
            config.incluster_config.InClusterConfigLoader(
                token_filename=os.path.join(SERVICE_ACCOUNT, "token"),
                cert_filename=os.path.join(SERVICE_ACCOUNT, "ca.crt"),
                try_refresh_token=False,
            ).load_and_set(configuration)
            self.source = "in-cluster service account"
        else:
            config.load_kube_config(
                config_file=self.kubeconfig,
                context=self.context,
                client_configuration=configuration,
                persist_config=False,
            )
            self.source = f"kubeconfig {self.kubeconfig or os.environ.get('KUBECONFIG') or '~/.kube/config'}"
        self.host = configuration.host.rstrip("/")
        # kubernetes 37 files the token under "BearerToken"; older releases under "authorization"
        self.authorization = configuration.get_api_key_with_prefix("BearerToken", alias="authorization") or None
        if configuration.username and configuration.password and not self.authorization:
            self.authorization = configuration.get_basic_auth_token()
        self.ssl_context = _ssl_context(configuration) if self.host.startswith("https:") else False
        self.loaded_at = time.monotonic()

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        return headers


def _ssl_context(configuration: Any) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif configuration.tls_server_name:
        context.check_hostname = True
    return context


# -- decoding --------------------------------------------------------------------------------

CONVERTERS: dict[Kind, Callable[[Mapping[str, Any], AddressPolicy], Record | None]] = {
    "Service": lambda obj, _policy: service_from(obj),
    "EndpointSlice": endpoint_slice_from,
    "Pod": pod_from,
}


def decode_page(body: bytes, kind: Kind, policy: AddressPolicy) -> tuple[list[Record], str, str | None]:
    """Records, list resourceVersion and continue token of one list page (runs in a thread).

    List items carry no `kind`: the converter is chosen by the resource asked for."""
    page = json.loads(body)
    convert = CONVERTERS[kind]
    records = []
    for item in page.get("items") or ():
        try:
            record = convert(item, policy)
        except RecordError as exc:
            log.warning("%s skipped: %s", kind, exc)
            continue
        if record is not None:
            records.append(record)
    metadata = page.get("metadata") or {}
    return records, str(metadata.get("resourceVersion") or ""), metadata.get("continue") or None


@dataclass(slots=True)
class WatchEvent:
    type: str
    object: Mapping[str, Any]

    @property
    def resource_version(self) -> str | None:
        metadata = self.object.get("metadata") or {}
        return metadata.get("resourceVersion")


def _split_lines(chunk: bytes) -> tuple[list[bytes], bytes]:
    """The complete non-blank lines of chunk, and what follows the last newline."""
    *lines, rest = chunk.split(b"\n")
    return [line for line in lines if line.strip()], rest


# -- the reflector ---------------------------------------------------------------------------


@dataclass
class Backoff:
    """Exponential with jitter, capped; forgets failures after a healthy stretch (client-go)."""

    failures: int = 0
    last_failure: float = 0.0

    def next_delay(self) -> float:
        now = time.monotonic()
        if now - self.last_failure > BACKOFF_RESET:
            self.failures = 0
        self.last_failure = now
        delay = min(BACKOFF_CAP, BACKOFF_FIRST * 2**self.failures)
        self.failures += 1
        return delay * random.uniform(0.5, 1.0)


@dataclass
class ReflectorState:
    """What a reflector knows about its stream, for logs and metrics."""

    kind: Kind
    namespace: str | None
    listed: bool = False
    resource_version: str | None = None
    restarts: int = 0
    relists: int = 0
    last_event: float = 0.0
    last_error: str = ""
    streaming: bool | None = None
    """Whether the server does streaming lists; None until known."""


@dataclass
class Reflector:
    kind: Kind
    namespace: str | None
    session: aiohttp.ClientSession
    credentials: Credentials
    policy: AddressPolicy
    emit: Callable[[Event], Any]
    label_selector: str | None = None
    stall_timeout: float = STALL_SECONDS
    decoder: concurrent.futures.Executor | None = None
    """Where list pages are decoded; one thread for all reflectors keeps GIL contention low."""
    state: ReflectorState = field(init=False)

    def __post_init__(self) -> None:
        self.state = ReflectorState(self.kind, self.namespace)
        self._backoff = Backoff()
        self._listed = asyncio.Event()
        self._events = 0
        self._last_pause = time.monotonic()

    @property
    def name(self) -> str:
        return f"{self.kind}" + (f" in {self.namespace}" if self.namespace else "")

    async def wait_listed(self) -> None:
        await self._listed.wait()

    def _pause_due(self) -> bool:
        """Whether the loop is due a turn: it gets one every few milliseconds, since buffered
        events arrive in bursts that would otherwise be parsed in one go while queries wait."""
        return time.monotonic() - self._last_pause > PAUSE_EVERY

    def _watch_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self.stall_timeout)

    def _url(self, **query: str | int | None) -> str:
        prefix, plural = PATHS[self.kind]
        path = f"{prefix}/namespaces/{self.namespace}/{plural}" if self.namespace else f"{prefix}/{plural}"
        params = {k: v for k, v in query.items() if v is not None}
        if self.kind == "Pod":
            params["fieldSelector"] = POD_FIELD_SELECTOR
        if self.kind == "Service" and self.label_selector:
            params["labelSelector"] = self.label_selector
        return f"{self.credentials.host}{path}?{urlencode(params)}"

    async def run(self) -> None:
        """Follow the resource until cancelled; never raises for anything the server does."""
        unauthorized = 0
        while True:
            try:
                if self.state.resource_version is None:
                    await self._relist()
                    unauthorized = 0
                    continue
                started, events = time.monotonic(), self._events
                await self._watch(self.state.resource_version)
                unauthorized = 0
                if self._events > events or time.monotonic() - started > 1.0:
                    continue
                # A watch that ends at once with nothing in it, again and again, must not spin.
                delay = self._backoff.next_delay()
                self.state.last_error = "watch ended at once"
            except asyncio.CancelledError:
                raise
            except ApiError as exc:
                self.state.last_error = str(exc)
                if exc.code in (410, 504):  # expired, or a resourceVersion the server does not have yet
                    log.info("%s: %s; relisting", self.name, exc)
                    self.state.resource_version = None
                    continue
                if exc.code == 401 and unauthorized == 0:
                    unauthorized += 1
                    log.info("%s: 401; re-reading credentials", self.name)
                    await asyncio.to_thread(self.credentials.reload)
                    continue
                delay = exc.retry_after if exc.code == 429 and exc.retry_after is not None else None
                delay = delay if delay is not None else self._backoff.next_delay()
                log.warning("%s: %s; retrying in %.1fs", self.name, exc, delay)
            except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
                self.state.last_error = f"{type(exc).__name__}: {exc}"
                delay = self._backoff.next_delay()
                log.warning("%s: %s; reconnecting in %.1fs", self.name, self.state.last_error, delay)
            self.state.restarts += 1
            await asyncio.sleep(delay)

    async def _get(self, url: str, *, timeout: aiohttp.ClientTimeout) -> aiohttp.ClientResponse:
        if time.monotonic() - self.credentials.loaded_at > TOKEN_REREAD_SECONDS:
            await asyncio.to_thread(self.credentials.reload)
        response = await self.session.get(
            url, headers=self.credentials.headers(), ssl=self.credentials.ssl_context, timeout=timeout
        )
        if response.status >= 400:
            await _raise_status(response)
        return response

    async def _relist(self) -> None:
        self.state.relists += 1
        if self.state.streaming is not False:
            try:
                await self._streaming_list()
                return
            except StreamingListRefused as exc:
                log.info("%s: no streaming list (%s); listing in pages", self.name, exc)
                self.state.streaming = False
        await self._paged_list()

    async def _paged_list(self) -> None:
        """limit/continue from a consistent read; the pages are one snapshot."""
        records: list[Record] = []
        token: str | None = None
        resource_version = ""
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60)
        while True:
            response = await self._get(self._url(limit=PAGE_SIZE, **{"continue": token}), timeout=timeout)
            async with response:
                body = await response.read()
            page, resource_version, token = await asyncio.get_running_loop().run_in_executor(
                self.decoder, decode_page, body, self.kind, self.policy
            )
            records.extend(page)
            if not token:
                break
        self._replace(records, resource_version)

    async def _streaming_list(self) -> None:
        """One watch that starts with every object and a bookmark marking the end of them."""
        url = self._url(
            watch="true",
            sendInitialEvents="true",
            resourceVersionMatch="NotOlderThan",
            allowWatchBookmarks="true",
            timeoutSeconds=random.randint(*WATCH_SECONDS),
        )
        try:
            response = await self._get(url, timeout=self._watch_timeout())
        except ApiError as exc:
            if exc.code in (400, 422):
                raise StreamingListRefused(str(exc)) from None
            raise
        initial: dict[tuple[str, str], Record] = {}
        async with response:
            # One line reader for the whole stream: a chunk may hold the end of the initial
            # events and the first live ones, and a second reader would lose the latter.
            events = self._events_of(response)
            async for event in events:
                if event.type == "BOOKMARK":
                    annotations = (event.object.get("metadata") or {}).get("annotations") or {}
                    if annotations.get("k8s.io/initial-events-end") == "true":
                        self.state.streaming = True
                        self._replace(list(initial.values()), event.resource_version or "")
                        initial.clear()  # the records live on in the store; this dict need not
                        await self._follow(events)
                        return
                    raise StreamingListRefused("a bookmark before the end of the initial events")
                if event.type in ("ADDED", "MODIFIED"):
                    record = self._record(event.object)
                    if record is not None:
                        initial[record.key] = record
                elif event.type == "DELETED":
                    initial.pop(_key_of(event.object), None)
        raise StreamingListRefused("the stream ended before the end of the initial events")

    async def _watch(self, resource_version: str) -> None:
        url = self._url(
            watch="true",
            resourceVersion=resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=random.randint(*WATCH_SECONDS),
        )
        response = await self._get(url, timeout=self._watch_timeout())
        async with response:
            await self._follow(self._events_of(response))

    async def _events_of(self, response: aiohttp.ClientResponse) -> AsyncIterator[WatchEvent]:
        """The events of a watch stream (newline-delimited JSON, however the chunks cut it);
        an ERROR event is raised as the error it carries.

        Lines are split here rather than in a generator of their own: each event crosses one
        generator fewer, which is a measurable part of an event's cost at 100 events/s."""
        pending = b""
        async for chunk in response.content.iter_any():
            lines, pending = _split_lines(pending + chunk if pending else chunk)
            for line in lines:
                event = self._event(line)
                if self._pause_due():
                    await asyncio.sleep(0)
                    self._last_pause = time.monotonic()
                yield event
        if pending.strip():
            yield self._event(pending)

    def _event(self, line: bytes) -> WatchEvent:
        event = _parse_event(line)
        self.state.last_event = time.time()
        self._events += 1
        if event.type == "ERROR":
            raise _status_error(event.object)
        return event

    async def _follow(self, events: AsyncIterator[WatchEvent]) -> None:
        """Apply watch events until the server ends the stream cleanly."""
        debug = log.isEnabledFor(logging.DEBUG)  # the message's arguments cost more than the check
        async for event in events:
            resource_version = event.resource_version
            if debug:
                log.debug("%s: %s at %s", self.name, event.type, resource_version)
            if event.type in ("ADDED", "MODIFIED"):
                record = self._record(event.object)
                if record is not None:
                    self.emit(Upsert(record, self.state.last_event))  # when the event arrived
                else:
                    self._emit_delete(event.object)
            elif event.type == "DELETED":
                self._emit_delete(event.object)
            if resource_version:
                self.state.resource_version = resource_version
            self._backoff.failures = 0

    def _record(self, obj: Mapping[str, Any]) -> Record | None:
        try:
            return CONVERTERS[self.kind](obj, self.policy)
        except RecordError as exc:
            log.warning("%s: object skipped: %s", self.name, exc)
            return None

    def _emit_delete(self, obj: Mapping[str, Any]) -> None:
        namespace, name = _key_of(obj)
        if name:
            self.emit(Delete(self.kind, namespace, name, time.time()))

    def _replace(self, records: list[Record], resource_version: str) -> None:
        self.emit(Resync(self.kind, tuple(records), self.namespace))
        self.state.resource_version = resource_version or None
        self.state.listed = True
        self.state.last_event = time.time()
        log.info("%s: listed %d objects at resourceVersion %s", self.name, len(records), resource_version)
        self._listed.set()


def _key_of(obj: Mapping[str, Any]) -> tuple[str, str]:
    metadata = obj.get("metadata") or {}
    return (metadata.get("namespace") or "default", metadata.get("name") or "")


def _parse_event(line: bytes) -> WatchEvent:
    data = json.loads(line)
    if not isinstance(data, dict) or not isinstance(data.get("object"), dict):
        raise ValueError(f"not a watch event: {line[:200]!r}")
    return WatchEvent(str(data.get("type")), data["object"])


def _status_error(status: Mapping[str, Any]) -> ApiError:
    details = status.get("details") or {}
    retry = details.get("retryAfterSeconds") if isinstance(details, dict) else None
    return ApiError(int(status.get("code") or 500), str(status.get("message") or status.get("reason")), retry)


async def _raise_status(response: aiohttp.ClientResponse) -> None:
    async with response:
        try:
            status = json.loads(await response.read())
        except ValueError:
            status = {}
    message = status.get("message") if isinstance(status, dict) else None
    retry_after = None
    header = response.headers.get("Retry-After")
    if header and header.isdigit():
        retry_after = float(header)
    raise ApiError(response.status, str(message or response.reason), retry_after)


# -- the source ------------------------------------------------------------------------------


class KubernetesSource:
    """Events from every reflector, then `Synced` once each has listed."""

    def __init__(
        self,
        credentials: Credentials,
        policy: AddressPolicy,
        *,
        namespaces: frozenset[str] = frozenset(),
        label_selector: str | None = None,
        stall_timeout: float = STALL_SECONDS,
    ) -> None:
        self.stall_timeout = stall_timeout
        self.credentials = credentials
        self.policy = policy
        self.namespaces = sorted(namespaces) or [None]
        self.label_selector = label_selector
        self.reflectors: list[Reflector] = []

    async def events(self, initial: object = None) -> AsyncIterator[Event]:
        queue: asyncio.Queue[Event] = asyncio.Queue()
        await asyncio.to_thread(self.credentials.reload)
        log.info("watching %s (%s)", self.credentials.host, self.credentials.source)
        connector = aiohttp.TCPConnector(limit=0, enable_cleanup_closed=True)
        decoder = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="dnsd-decode")
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))
        async with aiohttp.ClientSession(connector=connector, raise_for_status=False) as session:
            self.reflectors = [
                Reflector(
                    kind,
                    namespace,
                    session,
                    self.credentials,
                    self.policy,
                    queue.put_nowait,
                    label_selector=self.label_selector,
                    stall_timeout=self.stall_timeout,
                    decoder=decoder,
                )
                for kind in PATHS
                for namespace in self.namespaces
            ]
            tasks = [asyncio.create_task(r.run(), name=f"reflector {r.name}") for r in self.reflectors]
            waiter = asyncio.create_task(self._announce_synced(queue))
            try:
                while True:
                    yield await queue.get()
            finally:
                waiter.cancel()
                for task in tasks:
                    task.cancel()
                await asyncio.gather(waiter, *tasks, return_exceptions=True)
                decoder.shutdown(wait=False, cancel_futures=True)

    async def _announce_synced(self, queue: asyncio.Queue[Event]) -> None:
        await asyncio.gather(*(r.wait_listed() for r in self.reflectors))
        queue.put_nowait(Synced())
