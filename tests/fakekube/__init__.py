"""fakekube: a protocol-faithful fake kube-apiserver for dnsd's tests (see shared research k8s-api.md §6)."""

from .objects import node, pod, service
from .selectors import FieldSelector, LabelSelector, SelectorError
from .server import FakeKube, RequestRecord
from .store import RESOURCES, ApiError, Resource, Store
from .sync import FakeKubeError, FakeKubeProcess, FakeKubeThread, RemoteFakeKube, wait_until

__all__ = [
    "RESOURCES",
    "ApiError",
    "FakeKube",
    "FakeKubeError",
    "FakeKubeProcess",
    "FakeKubeThread",
    "FieldSelector",
    "LabelSelector",
    "RemoteFakeKube",
    "RequestRecord",
    "Resource",
    "SelectorError",
    "Store",
    "node",
    "pod",
    "service",
    "wait_until",
]
