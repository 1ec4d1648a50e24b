"""Builders for Kubernetes objects as `kubectl get -o json` prints them (only the fields dnsd reads)."""

from __future__ import annotations

import json
from typing import Any

Obj = dict[str, Any]


def service(
    name: str,
    namespace: str = "default",
    *,
    created: str = "2026-01-01T00:00:00Z",
    annotations: dict[str, str] | None = None,
    external_name: str | None = None,
) -> Obj:
    spec: Obj = {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}
    if external_name is not None:
        spec = {"type": "ExternalName", "externalName": external_name}
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "creationTimestamp": created,
            "annotations": annotations or {},
        },
        "spec": spec,
    }


def endpoint(
    *addresses: str,
    pod: str | None = None,
    hostname: str | None = None,
    ready: bool | None = True,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> Obj:
    entry: Obj = {"addresses": list(addresses), "conditions": {}}
    if ready is not None:
        entry["conditions"]["ready"] = ready
    if serving is not None:
        entry["conditions"]["serving"] = serving
    if terminating is not None:
        entry["conditions"]["terminating"] = terminating
    if pod is not None:
        entry["targetRef"] = {"kind": "Pod", "name": pod, "namespace": "default"}
    if hostname is not None:
        entry["hostname"] = hostname
    return entry


def endpoint_slice(
    name: str,
    service_name: str | None,
    *endpoints: Obj,
    namespace: str = "default",
    address_type: str = "IPv6",
    ports: list[tuple[str, str, int]] | None = None,
) -> Obj:
    labels = {"kubernetes.io/service-name": service_name} if service_name else {}
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "addressType": address_type,
        "ports": [{"name": n, "protocol": p, "port": port} for n, p, port in (ports or [("http", "TCP", 80)])],
        "endpoints": list(endpoints),
    }


def pod(
    name: str,
    *ips: str,
    namespace: str = "default",
    created: str = "2026-01-01T00:00:00Z",
    phase: str = "Running",
    deleting: bool = False,
    host_network: bool = False,
) -> Obj:
    metadata: Obj = {"name": name, "namespace": namespace, "creationTimestamp": created}
    if deleting:
        metadata["deletionTimestamp"] = "2026-01-02T00:00:00Z"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"hostNetwork": host_network} if host_network else {},
        "status": {"phase": phase, "podIPs": [{"ip": ip} for ip in ips]},
    }


def cluster(*objects: Obj) -> str:
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)})
