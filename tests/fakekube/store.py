"""The in-memory object store: one global resourceVersion, per-resource history rings, Status errors."""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped kinds


class ApiError(Exception):
    """An error answered as a `Status` object."""

    REASONS = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Expired",
        415: "UnsupportedMediaType",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }

    def __init__(self, code: int, message: str, reason: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.reason = reason or self.REASONS.get(code, "Unknown")
        self.details = details
        self.headers: dict[str, str] = {}

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


@dataclass(frozen=True)
class Resource:
    plural: str
    kind: str
    group: str = ""
    namespaced: bool = True
    zero: Obj = field(default_factory=dict)  # the Go zero value, less metadata: what a BOOKMARK carries

    @property
    def api_version(self) -> str:
        return f"{self.group}/v1" if self.group else "v1"

    @property
    def prefix(self) -> str:
        return f'{{"kind":"{self.kind}","apiVersion":"{self.api_version}",'

    def bookmark(self, rv: int, initial_end: bool = False) -> str:
        meta: Obj = {"resourceVersion": str(rv), "creationTimestamp": None}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        obj = {"kind": self.kind, "apiVersion": self.api_version, "metadata": meta, **self.zero}
        return json.dumps({"type": "BOOKMARK", "object": obj}, separators=(",", ":"))


_NODE_INFO = [
    "machineID",
    "systemUUID",
    "bootID",
    "kernelVersion",
    "osImage",
    "containerRuntimeVersion",
    "kubeletVersion",
    "kubeProxyVersion",
    "operatingSystem",
    "architecture",
]
RESOURCES = {
    r.plural: r
    for r in (
        Resource("pods", "Pod", zero={"spec": {"containers": None}, "status": {}}),
        Resource("services", "Service", zero={"spec": {}, "status": {"loadBalancer": {}}}),
        Resource(
            "endpointslices",
            "EndpointSlice",
            "discovery.k8s.io",
            zero={"addressType": "", "endpoints": None, "ports": None},
        ),
        Resource(
            "nodes",
            "Node",
            namespaced=False,
            zero={
                "spec": {},
                "status": {
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                    "nodeInfo": dict.fromkeys(_NODE_INFO, ""),
                },
            },
        ),
        Resource("namespaces", "Namespace", namespaced=False, zero={"spec": {}, "status": {}}),
    )
}
_ALIASES = {name: r for r in RESOURCES.values() for name in (r.plural, r.kind, r.kind.lower())}


def resolve(name: str | Resource) -> Resource:
    """A resource by kind ("Pod"), plural ("pods") or lower-case kind ("pod")."""
    if isinstance(name, Resource):
        return name
    try:
        return _ALIASES[name]
    except KeyError:
        raise ValueError(f"unknown kind {name!r}; known: {sorted(RESOURCES)}") from None


class Item:
    """One stored object version. Never mutated after creation, so lists and snapshots may share it."""

    __slots__ = ("_json", "obj", "res")

    def __init__(self, res: Resource, obj: Obj) -> None:
        rest = {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        self.obj: Obj = {"kind": res.kind, "apiVersion": res.api_version, **rest}
        self.res = res
        self._json: str | None = None

    @property
    def meta(self) -> Obj:
        meta: Obj = self.obj["metadata"]
        return meta

    @property
    def key(self) -> Key:
        return self.meta.get("namespace", ""), self.meta["name"]

    @property
    def rv(self) -> int:
        return int(self.meta["resourceVersion"])

    def json(self) -> str:
        """The object with kind and apiVersion, as a watch event carries it."""
        if self._json is None:
            self._json = json.dumps(self.obj, separators=(",", ":"))
        return self._json

    def list_json(self) -> str:
        """The object without kind and apiVersion, as a list item."""
        return "{" + self.json()[len(self.res.prefix) :]

    def with_rv(self, rv: int) -> Item:
        return Item(self.res, {**self.obj, "metadata": {**self.meta, "resourceVersion": str(rv)}})


@dataclass(slots=True)
class Event:
    rv: int
    type: str  # ADDED | MODIFIED | DELETED
    item: Item  # new state; for DELETED the last state with the deletion's RV
    prev: Item | None  # state before (MODIFIED and DELETED)


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "podIPs": "ip",
    "hostIPs": "ip",
    "ownerReferences": "uid",
    "env": "name",
    "volumes": "name",
}


def merge_patch(target: Any, patch: Any, strategic: bool = False, field_name: str = "") -> Any:
    """RFC 7386 JSON merge patch; `strategic` also merges lists of objects by the well-known keys in _MERGE_KEYS."""
    if isinstance(patch, list) and strategic and isinstance(target, list) and field_name in _MERGE_KEYS:
        mkey, merged = _MERGE_KEYS[field_name], list(target)
        for element in patch:
            at = next(
                (i for i, t in enumerate(merged) if isinstance(t, dict) and t.get(mkey) == element.get(mkey)), None
            )
            if at is None:
                merged.append(element)
            else:
                merged[at] = merge_patch(merged[at], element, strategic)
        return merged
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value, strategic, key)
    return result


class Store:
    """Objects by resource and key, a global RV and a bounded history ring per resource."""

    def __init__(self, history: int = 1000, seed: int = 0) -> None:
        self.rv = 1
        self.history_size = history
        self.objects: dict[str, dict[Key, Item]] = {r: {} for r in RESOURCES}
        self.history: dict[str, deque[Event]] = {r: deque() for r in RESOURCES}
        self.floor: dict[str, int] = dict.fromkeys(RESOURCES, 0)  # a watch from RV n needs n >= floor
        self.listeners: list[Callable[[Resource, Event], None]] = []
        self.rng = random.Random(seed)

    # -- reads -------------------------------------------------------------------------------------------------
    def key(self, res: Resource, namespace: str | None, name: str) -> Key:
        return (namespace or "default") if res.namespaced else "", name

    def get_item(self, res: Resource, namespace: str | None, name: str) -> Item:
        item = self.objects[res.plural].get(self.key(res, namespace, name))
        if item is None:
            raise ApiError(404, f'{res.plural} "{name}" not found', name=name, group=res.group, kind=res.plural)
        return item

    def state_at(self, res: Resource, rv: int) -> dict[Key, Item]:
        """The objects as they were at `rv` (410 when the history no longer reaches back that far)."""
        if rv < self.floor[res.plural]:
            raise ApiError(410, "The resourceVersion for the provided list is too old.")
        state = dict(self.objects[res.plural])
        for ev in reversed(self.history[res.plural]):
            if ev.rv <= rv:
                break
            if ev.type == "ADDED":
                del state[ev.item.key]
            else:
                assert ev.prev is not None
                state[ev.item.key] = ev.prev
        return state

    # -- writes ------------------------------------------------------------------------------------------------
    def _record(self, res: Resource, type_: str, item: Item, prev: Item | None) -> None:
        objects = self.objects[res.plural]
        if type_ == "DELETED":
            objects.pop(item.key, None)
        else:
            objects[item.key] = item
        ring = self.history[res.plural]
        if len(ring) >= self.history_size:
            self.floor[res.plural] = ring.popleft().rv
        event = Event(self.rv, type_, item, prev)
        ring.append(event)
        for listener in self.listeners:
            listener(res, event)

    def _uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def create(self, obj: Obj, res: Resource | None = None, *, owned: bool = False) -> Item:
        res = res or resolve(obj.get("kind", ""))
        if not owned:
            obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "name or generateName is required")
            suffix = "".join(self.rng.choice("bcdfghjklmnpqrstvwxz2456789") for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        if res.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        if key in self.objects[res.plural]:
            raise ApiError(
                409,
                f'{res.plural} "{meta["name"]}" already exists',
                "AlreadyExists",
                name=meta["name"],
                group=res.group,
                kind=res.plural,
            )
        self.rv += 1
        meta.update(uid=meta.get("uid") or self._uid(), resourceVersion=str(self.rv))
        meta.setdefault("creationTimestamp", now_rfc3339())
        meta.setdefault("generation", 1)
        item = Item(res, obj)
        self._record(res, "ADDED", item, None)
        return item

    def replace(self, obj: Obj, res: Resource | None = None, *, check_rv: bool = True) -> Item:
        res = res or resolve(obj.get("kind", ""))
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        old = self.get_item(res, meta.get("namespace"), meta.get("name", ""))
        if check_rv and meta.get("resourceVersion") and meta["resourceVersion"] != old.meta["resourceVersion"]:
            raise ApiError(
                409,
                f'Operation cannot be fulfilled on {res.plural} "{meta["name"]}": the object has been '
                "modified; please apply your changes to the latest version and try again",
            )
        self.rv += 1
        generation = old.meta.get("generation", 1)
        if any(
            obj.get(k) != old.obj.get(k)
            for k in (set(obj) | set(old.obj)) - {"metadata", "status", "kind", "apiVersion"}
        ):
            generation += 1
        meta.update(
            namespace=old.meta.get("namespace"),
            uid=old.meta["uid"],
            generation=generation,
            creationTimestamp=old.meta["creationTimestamp"],
            resourceVersion=str(self.rv),
        )
        if not res.namespaced:
            meta.pop("namespace", None)
        item = Item(res, obj)
        self._record(res, "MODIFIED", item, old)
        return item

    def patch(
        self,
        res: Resource,
        namespace: str | None,
        name: str,
        change: Obj | Callable[[Obj], Obj | None],
        *,
        strategic: bool = False,
    ) -> Item:
        current = copy.deepcopy(self.get_item(res, namespace, name).obj)
        if callable(change):
            result = change(current)
            new = current if result is None else result
        else:
            new = merge_patch(current, change, strategic)
        new.setdefault("metadata", {}).update(name=name, namespace=current["metadata"].get("namespace"))
        new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        return self.replace(new, res)

    def delete(self, res: Resource, namespace: str | None, name: str) -> Item:
        old = self.get_item(res, namespace, name)
        self.rv += 1
        item = old.with_rv(self.rv)
        self._record(res, "DELETED", item, old)
        return item

    def bulk_load(self, objs: Iterable[Obj]) -> int:
        """Create many objects, taking ownership of the dicts (no copies). Returns how many."""
        count = 0
        for obj in objs:
            self.create(obj, owned=True)
            count += 1
        return count

    def compact(self) -> None:
        """Forget every history event: watches and exact lists from any older RV get 410."""
        for plural in RESOURCES:
            self.history[plural].clear()
            self.floor[plural] = self.rv
