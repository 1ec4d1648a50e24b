"""An emulation of the EndpointSlice controller: one slice per Service and address family, named `<svc>-ipv4|ipv6`."""

from __future__ import annotations

from typing import Any

from .store import RESOURCES, Item, Key, Obj, Store

MANAGED_BY = "endpointslice-controller.k8s.io"
SERVICE_NAME = "kubernetes.io/service-name"
_COMPARED = ("addressType", "endpoints", "ports")


def family(ip: str) -> str:
    return "IPv6" if ":" in ip else "IPv4"


def pod_ips(pod: Obj) -> list[str]:
    status = pod.get("status") or {}
    ips = [p["ip"] for p in status.get("podIPs") or [] if p.get("ip")]
    return ips or ([status["podIP"]] if status.get("podIP") else [])


def pod_is_ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _families(spec: Obj, pods: list[Obj]) -> list[str]:
    if spec.get("ipFamilies"):
        return list(spec["ipFamilies"])
    ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip and ip != "None"]
    if not ips:
        ips = [ip for pod in pods for ip in pod_ips(pod)]
    return sorted({family(ip) for ip in ips}, reverse=True) or ["IPv4"]


def _ports(spec: Obj, pods: list[Obj]) -> list[Obj]:
    out: list[Obj] = []
    for port in spec.get("ports") or []:
        target: Any = port.get("targetPort", port.get("port"))
        if isinstance(target, str) and not target.isdigit():
            named = (
                cp.get("containerPort")
                for pod in pods
                for container in (pod.get("spec") or {}).get("containers") or []
                for cp in container.get("ports") or []
                if cp.get("name") == target
            )
            target = next(named, None)
            if target is None:
                continue
        entry: Obj = {"name": port.get("name", ""), "protocol": port.get("protocol", "TCP"), "port": int(target)}
        if port.get("appProtocol"):
            entry["appProtocol"] = port["appProtocol"]
        out.append(entry)
    return out


def desired(svc: Obj, pods: list[Obj], nodes: dict[Key, Item]) -> dict[str, Obj]:
    """The slices (by name) the controller would write for `svc`, given the Pods of its namespace."""
    meta, spec = svc["metadata"], svc.get("spec") or {}
    selector: dict[str, str] = spec["selector"]
    members = [
        p
        for p in pods
        if all((p["metadata"].get("labels") or {}).get(k) == v for k, v in selector.items())
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]
    members.sort(key=lambda p: p["metadata"]["name"])
    labels = {
        **(meta.get("labels") or {}),
        SERVICE_NAME: meta["name"],
        "endpointslice.kubernetes.io/managed-by": MANAGED_BY,
    }
    if spec.get("clusterIP") == "None":
        labels["service.kubernetes.io/headless"] = ""
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    ports = _ports(spec, members)
    slices: dict[str, Obj] = {}
    for fam in _families(spec, members):
        endpoints: list[Obj] = []
        for pod in members:
            ip = next((ip for ip in pod_ips(pod) if family(ip) == fam), None)
            if ip is None:
                continue
            pmeta, pspec = pod["metadata"], pod.get("spec") or {}
            serving = pod_is_ready(pod)
            terminating = bool(pmeta.get("deletionTimestamp"))
            ready = bool(spec.get("publishNotReadyAddresses")) or (serving and not terminating)
            endpoint: Obj = {
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
                "targetRef": {
                    "kind": "Pod",
                    "namespace": pmeta["namespace"],
                    "name": pmeta["name"],
                    "uid": pmeta["uid"],
                },
            }
            if pspec.get("hostname") and pspec.get("subdomain") == meta["name"]:
                endpoint["hostname"] = pspec["hostname"]
            if pspec.get("nodeName"):
                endpoint["nodeName"] = pspec["nodeName"]
                node = nodes.get(("", pspec["nodeName"]))
                zone = node and (node.meta.get("labels") or {}).get("topology.kubernetes.io/zone")
                if zone:
                    endpoint["zone"] = zone
            endpoints.append(endpoint)
        name = f"{meta['name']}-{fam.lower()}"
        slices[name] = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": name,
                "generateName": f"{meta['name']}-",
                "namespace": meta["namespace"],
                "labels": labels,
                "ownerReferences": [owner],
            },
            "addressType": fam,
            "endpoints": endpoints or None,
            "ports": ports,
        }
    return slices


def sync(store: Store, namespace: str | None = None) -> int:
    """Bring the managed slices of `namespace` (or all) in line with Services and Pods; returns the number of writes."""
    res = RESOURCES["endpointslices"]
    pods: dict[str, list[Obj]] = {}
    for (ns, _), item in store.objects["pods"].items():
        if namespace in (None, ns):
            pods.setdefault(ns, []).append(item.obj)
    wanted: dict[Key, Obj] = {}
    for (ns, _), item in store.objects["services"].items():
        spec = item.obj.get("spec") or {}
        if namespace in (None, ns) and spec.get("selector") and spec.get("type") != "ExternalName":
            for name, body in desired(item.obj, pods.get(ns, []), store.objects["nodes"]).items():
                wanted[ns, name] = body
    existing = {
        key: item
        for key, item in store.objects["endpointslices"].items()
        if namespace in (None, key[0])
        and (item.meta.get("labels") or {}).get("endpointslice.kubernetes.io/managed-by") == MANAGED_BY
    }
    writes = 0
    for key, body in wanted.items():
        current = existing.get(key)
        if current is None:
            store.create(body, res, owned=True)
        elif any(current.obj.get(f) != body.get(f) for f in _COMPARED) or any(
            current.meta.get(f) != body["metadata"][f] for f in ("labels", "ownerReferences")
        ):
            body["metadata"]["resourceVersion"] = current.meta["resourceVersion"]
            store.replace(body, res)
        else:
            continue
        writes += 1
    for key in existing.keys() - wanted.keys():
        store.delete(res, *key)
        writes += 1
    return writes
