"""Small builders for the objects tests feed the fake (full enough for the EndpointSlice emulation)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from .store import Obj


def pod(
    name: str,
    *ips: str,
    namespace: str = "default",
    labels: Mapping[str, str] | None = None,
    ready: bool = True,
    phase: str = "Running",
    hostname: str | None = None,
    subdomain: str | None = None,
    node: str | None = None,
) -> Obj:
    """A Pod with `status.podIPs` (first IP also in `podIP`) and a Ready condition."""
    spec: Obj = {"containers": [{"name": "main", "image": "example/app:1"}]}
    for key, value in (("hostname", hostname), ("subdomain", subdomain), ("nodeName", node)):
        if value:
            spec[key] = value
    status: Obj = {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]}
    if ips:
        status.update(podIP=ips[0], podIPs=[{"ip": ip} for ip in ips])
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status}


def service(
    name: str,
    namespace: str = "default",
    *,
    selector: Mapping[str, str] | None = None,
    ports: Iterable[tuple[str, int, int | str, str]] = (("http", 80, 8080, "TCP"),),
    cluster_ips: Iterable[str] = (),
    headless: bool = False,
    families: Iterable[str] = (),
    publish_not_ready: bool = False,
    labels: Mapping[str, str] | None = None,
) -> Obj:
    """A ClusterIP (or headless) Service; ports are (name, port, targetPort, protocol)."""
    ips = ["None"] if headless else list(cluster_ips)
    spec: Obj = {
        "type": "ClusterIP",
        "ports": [{"name": n, "port": p, "targetPort": t, "protocol": proto} for n, p, t, proto in ports],
    }
    if selector:
        spec["selector"] = dict(selector)
    if ips:
        spec.update(clusterIP=ips[0], clusterIPs=ips)
    if families:
        spec["ipFamilies"] = list(families)
    if publish_not_ready:
        spec["publishNotReadyAddresses"] = True
    meta: Obj = {"name": name, "namespace": namespace, "labels": dict(labels or {})}
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def node(name: str, zone: str | None = None) -> Obj:
    labels = {"kubernetes.io/hostname": name, **({"topology.kubernetes.io/zone": zone} if zone else {})}
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels}, "spec": {}, "status": {}}
