"""RBAC as kube-apiserver's authorizer applies it: rules match verb, group, resource (and
subresource), namespace and resourceNames.

A list or watch names its object only through ``fieldSelector=metadata.name=NAME`` (Kubernetes
>= 1.11, RequestInfo fills the name from the selector; the RBAC docs: "If you restrict list or
watch by resourceName, clients must include a metadata.name field selector"). Without that
selector a list has no name, and a rule with ``resourceNames`` never authorises it. A create
carries no name in its URL, so it can never be bound to one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.support.kubeapi_resources import JSON
from tests.support.kubeapi_status import KubeError


@dataclass(frozen=True)
class Attributes:
    """What a request (or an access review) asks to do: authorizer.Attributes."""

    verb: str
    group: str
    resource: str
    subresource: str | None = None
    namespace: str | None = None
    name: str | None = None


def selected_name(field_selector: str) -> str | None:
    """The name an exact ``metadata.name=NAME`` (or ``==``) term requires, as
    ``fields.Selector.RequiresExactMatch("metadata.name")`` finds it; None otherwise."""
    for term in field_selector.split(","):
        m = re.fullmatch(r"\s*metadata\.name\s*==?\s*([^=!]*?)\s*", term)
        if m:
            return m.group(1)
    return None


def request_name(verb: str, url_name: str | None, query: dict[str, str]) -> str | None:
    """The name RBAC sees: the URL's, or for list/watch the field selector's."""
    if verb in ("list", "watch") and url_name is None:
        return selected_name(query.get("fieldSelector", ""))
    return url_name


def _rule_matches(rule: JSON, attrs: Attributes) -> bool:
    full = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    if not {attrs.verb, "*"} & set(rule.get("verbs", [])):
        return False
    if not {attrs.group, "*"} & set(rule.get("apiGroups", [])):
        return False
    res = set(rule.get("resources", []))
    if not ({full, "*"} & res or (attrs.subresource and f"{attrs.resource}/*" in res)):
        return False
    names = rule.get("resourceNames")
    if names and (not attrs.name or attrs.name not in names):
        return False
    namespaces = rule.get("namespaces")
    return namespaces is None or bool(attrs.namespace and attrs.namespace in namespaces)


def allowed(rules: list[JSON] | None, attrs: Attributes) -> bool:
    """Whether any rule allows the request (``rules`` None: everything is allowed)."""
    return rules is None or any(_rule_matches(rule, attrs) for rule in rules)


def forbidden(user: str, attrs: Attributes) -> KubeError:
    """The 403 Status kube answers (the name appears when the request had one)."""
    resource, group, name, namespace = attrs.resource, attrs.group, attrs.name, attrs.namespace
    full = f"{resource}/{attrs.subresource}" if attrs.subresource else resource
    where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    why = f'User "{user}" cannot {attrs.verb} resource "{full}" in API group "{group}" {where}'
    qualified = f"{resource}.{group}" if group else resource
    msg = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
    details: JSON = {}
    if name:
        details["name"] = name
    if group:
        details["group"] = group
    details["kind"] = resource
    return KubeError(403, "Forbidden", msg, details)
