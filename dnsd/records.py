"""Compact frozen records of the Kubernetes objects dnsd reads, and the events that carry them.

API objects are cut down the moment they are parsed: only the fields the naming scheme needs
survive, and addresses are kept packed and already filtered by the address policy. Nothing
downstream of this module ever sees a full API object.
"""

from __future__ import annotations

import datetime
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from dnsd.names import AddressPolicy, pack_address

Kind = Literal["Service", "EndpointSlice", "Pod"]
KINDS: tuple[Kind, ...] = ("Service", "EndpointSlice", "Pod")

HOSTNAME_ANNOTATIONS = ("dnsd.io/hostname", "external-dns.alpha.kubernetes.io/hostname")
EXPOSE_ANNOTATION = "dnsd.io/expose"
TTL_ANNOTATION = "dnsd.io/ttl"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class RecordError(ValueError):
    """An object that cannot be read as the kind it claims to be."""


@dataclass(frozen=True, slots=True)
class Service:
    kind_name: ClassVar[Kind] = "Service"
    namespace: str
    name: str
    created: int
    """creationTimestamp in Unix seconds; the oldest claim on a name wins."""
    external_name: str | None = None
    hostnames: tuple[str, ...] = ()
    """Extra FQDNs from the hostname annotations, unchecked."""
    expose: bool | None = None
    """The `dnsd.io/expose` annotation, None when absent."""
    ttl: int | None = None
    """The `dnsd.io/ttl` annotation, unclamped; None when absent or not a number."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    protocol: str
    port: int


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[bytes, ...]
    """Publishable addresses only, packed."""
    ready: bool
    serving: bool
    hostname: str | None = None
    pod: str | None = None
    """Name of the Pod in targetRef, if the target is a Pod."""


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    kind_name: ClassVar[Kind] = "EndpointSlice"
    namespace: str
    name: str
    service: str | None
    ports: tuple[Port, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    trigger_time: str | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True, slots=True)
class Pod:
    kind_name: ClassVar[Kind] = "Pod"
    namespace: str
    name: str
    created: int
    addresses: tuple[bytes, ...] = ()
    """Publishable addresses from status.podIPs, packed."""
    host_network: bool = False
    active: bool = True
    """Neither terminating (deletionTimestamp set) nor finished (Succeeded/Failed)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)


Record = Service | EndpointSlice | Pod


@dataclass(frozen=True, slots=True)
class Upsert:
    record: Record
    received: float = 0.0
    """Unix time the source learnt of the change (0: unknown), for the programming-latency metric."""


@dataclass(frozen=True, slots=True)
class Delete:
    kind: Kind
    namespace: str
    name: str
    received: float = 0.0


@dataclass(frozen=True, slots=True)
class Resync:
    """The complete current set of one kind (in one namespace, if given): anything not in it is gone."""

    kind: Kind
    records: tuple[Record, ...]
    namespace: str | None = None


@dataclass(frozen=True, slots=True)
class Synced:
    """Every kind has been listed once: the data is complete."""


Event = Upsert | Delete | Resync | Synced


def _metadata(obj: Mapping[str, Any]) -> tuple[Mapping[str, Any], str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise RecordError("object has no metadata")
    name = meta.get("name")
    namespace = meta.get("namespace") or "default"
    if isinstance(namespace, str):
        namespace = sys.intern(namespace)  # a few namespaces, shared by every record in them
    if not isinstance(name, str) or not name:
        raise RecordError("object has no metadata.name")
    if not isinstance(namespace, str):
        raise RecordError(f"{name}: metadata.namespace is not a string")
    return meta, namespace, name


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(obj: Mapping[str, Any], field: str, where: str) -> list[Any]:
    """A list-valued field; absent or null is empty, anything else is an error."""
    value = obj.get(field)
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"{where}: {field} is a {type(value).__name__}, not a list")
    return value


def _packed(values: Any, policy: AddressPolicy) -> tuple[bytes, ...]:
    if not isinstance(values, list):
        return ()
    packed: list[bytes] = []
    for value in values:
        address = pack_address(value) if isinstance(value, str) else None
        if address is not None and policy.publishable(address) and address not in packed:
            packed.append(address)
    return tuple(packed)


UNKNOWN_CREATION = 2**62
"""Objects without a creationTimestamp sort after every real one."""


def _created(meta: Mapping[str, Any]) -> int:
    """creationTimestamp as Unix seconds: an int is a third the size of the RFC 3339 text."""
    created = meta.get("creationTimestamp")
    if not isinstance(created, str) or not created:
        return UNKNOWN_CREATION
    try:
        return int(datetime.datetime.fromisoformat(created.replace("Z", "+00:00")).timestamp())
    except ValueError:
        return UNKNOWN_CREATION


def service_from(obj: Mapping[str, Any]) -> Service:
    meta, namespace, name = _metadata(obj)
    annotations = _mapping(meta.get("annotations"))
    spec = _mapping(obj.get("spec"))
    external_name = None
    if spec.get("type") == "ExternalName" and isinstance(spec.get("externalName"), str):
        external_name = spec["externalName"]
    hostnames: list[str] = []
    for annotation in HOSTNAME_ANNOTATIONS:
        value = annotations.get(annotation)
        if isinstance(value, str):
            hostnames.extend(h.strip() for h in value.split(",") if h.strip())
    expose_text = annotations.get(EXPOSE_ANNOTATION)
    expose = None
    if isinstance(expose_text, str):
        expose = expose_text.strip().lower() == "true"
    ttl = None
    ttl_text = annotations.get(TTL_ANNOTATION)
    if isinstance(ttl_text, (str, int)):
        try:
            ttl = int(ttl_text)
        except ValueError:
            ttl = None
    return Service(
        namespace=namespace,
        name=name,
        created=_created(meta),
        external_name=external_name,
        hostnames=tuple(dict.fromkeys(hostnames)),
        expose=expose,
        ttl=ttl,
    )


def _endpoint_from(obj: Mapping[str, Any], policy: AddressPolicy) -> Endpoint:
    conditions = _mapping(obj.get("conditions"))
    ready = conditions.get("ready") is not False
    serving_value = conditions.get("serving")
    serving = ready if serving_value is None else serving_value is True
    target = _mapping(obj.get("targetRef"))
    pod = target.get("name") if target.get("kind", "Pod") == "Pod" else None
    if isinstance(pod, str):
        pod = sys.intern(pod)  # the same string as the Pod record's name
    hostname = obj.get("hostname")
    return Endpoint(
        addresses=_packed(obj.get("addresses"), policy),
        ready=ready,
        serving=serving,
        hostname=hostname if isinstance(hostname, str) and hostname else None,
        pod=pod if isinstance(pod, str) and pod else None,
    )


def endpoint_slice_from(obj: Mapping[str, Any], policy: AddressPolicy) -> EndpointSlice | None:
    """None for slices dnsd does not serve (addressType FQDN)."""
    meta, namespace, name = _metadata(obj)
    if obj.get("addressType") == "FQDN":
        return None
    labels = _mapping(meta.get("labels"))
    service = labels.get(SERVICE_NAME_LABEL)
    ports = []
    for port in _list(obj, "ports", name):
        port = _mapping(port)
        number = port.get("port")
        if isinstance(number, int) and not isinstance(number, bool):
            ports.append(Port(str(port.get("name") or ""), str(port.get("protocol") or "TCP"), number))
    endpoints = tuple(_endpoint_from(_mapping(e), policy) for e in _list(obj, "endpoints", name) if e is not None)
    trigger = _mapping(meta.get("annotations")).get(TRIGGER_TIME_ANNOTATION)
    return EndpointSlice(
        namespace=namespace,
        name=name,
        service=service if isinstance(service, str) and service else None,
        ports=tuple(ports),
        endpoints=endpoints,
        trigger_time=trigger if isinstance(trigger, str) else None,
    )


def pod_from(obj: Mapping[str, Any], policy: AddressPolicy) -> Pod:
    meta, namespace, name = _metadata(obj)
    spec = _mapping(obj.get("spec"))
    status = _mapping(obj.get("status"))
    ips = [_mapping(entry).get("ip") for entry in _list(status, "podIPs", name)]
    if not ips and isinstance(status.get("podIP"), str):
        ips = [status["podIP"]]
    finished = status.get("phase") in ("Succeeded", "Failed")
    return Pod(
        namespace=namespace,
        name=sys.intern(name),
        created=_created(meta),
        addresses=_packed(ips, policy),
        host_network=spec.get("hostNetwork") is True,
        active=not finished and not meta.get("deletionTimestamp"),
    )


def record_from(obj: Mapping[str, Any], policy: AddressPolicy) -> Record | None:
    """The record for one API object; None for kinds and objects dnsd does not serve."""
    kind = obj.get("kind")
    if kind == "Service":
        return service_from(obj)
    if kind == "EndpointSlice":
        return endpoint_slice_from(obj, policy)
    if kind == "Pod":
        return pod_from(obj, policy)
    return None
