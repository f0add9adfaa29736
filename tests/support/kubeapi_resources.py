"""The Kubernetes API test server's resource table: which kinds it serves, where, with which verbs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JSON = dict[str, Any]


@dataclass(frozen=True)
class ResourceType:
    """One served resource: where it lives and what it is called."""

    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    verbs: frozenset[str]

    @property
    def api_version(self) -> str:
        """``v1`` or ``group/version``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """``secrets`` or ``leases.coordination.k8s.io`` (as kube error messages spell it)."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def qualified_kind(self) -> str:
        """``Secret`` or ``Lease.coordination.k8s.io``."""
        return f"{self.kind}.{self.group}" if self.group else self.kind


_CRUD = frozenset({"get", "list", "watch", "create", "update", "patch", "delete"})
RESOURCES: tuple[ResourceType, ...] = (
    ResourceType("", "v1", "namespaces", "Namespace", False, _CRUD),
    ResourceType("", "v1", "secrets", "Secret", True, _CRUD),
    ResourceType("", "v1", "serviceaccounts", "ServiceAccount", True, _CRUD),
    ResourceType("", "v1", "events", "Event", True, _CRUD),
    ResourceType("events.k8s.io", "v1", "events", "Event", True, _CRUD),
    ResourceType("coordination.k8s.io", "v1", "leases", "Lease", True, _CRUD),
    ResourceType("authentication.k8s.io", "v1", "tokenreviews", "TokenReview", False, frozenset({"create"})),
    ResourceType(
        "authentication.k8s.io",
        "v1",
        "selfsubjectreviews",
        "SelfSubjectReview",
        False,
        frozenset({"create"}),
    ),
    ResourceType(
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        False,
        frozenset({"create"}),
    ),
)
BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
STORED = [r for r in RESOURCES if "get" in r.verbs]
VIRTUAL = {"tokenreviews", "selfsubjectreviews", "selfsubjectaccessreviews"}
