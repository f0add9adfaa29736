"""Label and field selectors as kube-apiserver parses them (pure functions)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tests.support.kubeapi_resources import JSON, ResourceType
from tests.support.kubeapi_status import bad_request
from tests.support.kubeapi_validate import valid_label_key, valid_label_value

# fieldSelector labels accepted per resource (besides metadata.name / metadata.namespace)
_FIELD_LABELS: dict[tuple[str, str], dict[str, str]] = {
    ("", "secrets"): {"type": "type"},
    ("", "namespaces"): {"status.phase": "status.phase"},
    ("", "events"): {
        "involvedObject.kind": "involvedObject.kind",
        "involvedObject.namespace": "involvedObject.namespace",
        "involvedObject.name": "involvedObject.name",
        "involvedObject.uid": "involvedObject.uid",
        "involvedObject.apiVersion": "involvedObject.apiVersion",
        "involvedObject.resourceVersion": "involvedObject.resourceVersion",
        "involvedObject.fieldPath": "involvedObject.fieldPath",
        "reason": "reason",
        "reportingComponent": "reportingComponent",
        "source": "source.component",
        "type": "type",
    },
    ("events.k8s.io", "events"): {
        "regarding.kind": "regarding.kind",
        "regarding.namespace": "regarding.namespace",
        "regarding.name": "regarding.name",
        "regarding.uid": "regarding.uid",
        "reason": "reason",
        "reportingController": "reportingController",
        "type": "type",
    },
}


def get_path(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(obj, dict):
            return None
        obj = obj.get(part)
    return obj


def _split_top_level(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return parts


@dataclass(frozen=True)
class LabelRequirement:
    """One term of a label selector: op is ``in``, ``notin``, ``exists`` or ``!exists``."""

    key: str
    op: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        """Whether a label set satisfies this term (``!=``/``notin`` match a missing key)."""
        if self.op == "exists":
            return self.key in labels
        if self.op == "!exists":
            return self.key not in labels
        if self.op == "in":
            return labels.get(self.key) in self.values
        return labels.get(self.key) not in self.values


def parse_label_selector(selector: str) -> list[LabelRequirement]:
    """Parse a kube label selector (``k=v``, ``k!=v``, ``k in (a,b)``, ``k notin (a)``, ``k``,
    ``!k``, comma = AND). Raises KubeError(400) when it does not parse."""
    reqs: list[LabelRequirement] = []
    for raw in _split_top_level(selector):
        term = raw.strip()
        if not term:
            if selector.strip():
                raise bad_request("unable to parse requirement: found '', expected: identifier")
            continue
        values: set[str] = set()
        m = re.fullmatch(r"(\S+?)\s+(in|notin)\s*\(([^()]*)\)", term)
        if m:
            key, op = m.group(1), m.group(2)
            values = {v.strip() for v in m.group(3).split(",")}
        elif term.startswith("!"):
            key, op = term[1:].strip(), "!exists"
        elif "!=" in term:
            key, value = (part.strip() for part in term.split("!=", 1))
            op, values = "notin", {value}
        elif "=" in term:
            key, value = (part.strip() for part in re.split(r"==?", term, maxsplit=1))
            op, values = "in", {value}
        else:
            key, op = term, "exists"
        if not valid_label_key(key) or re.search(r"\s", key) or not all(valid_label_value(v) for v in values):
            raise bad_request(f"unable to parse requirement: invalid label key or value {term!r}")
        reqs.append(LabelRequirement(key, op, frozenset(values)))
    return reqs


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    value: str
    negate: bool

    def matches(self, obj: JSON) -> bool:
        return (str(get_path(obj, self.path) or "") == self.value) != self.negate


def parse_field_selector(rt: ResourceType, selector: str) -> list[FieldRequirement]:
    allowed = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
    allowed.update(_FIELD_LABELS.get((rt.group, rt.plural), {}))
    out: list[FieldRequirement] = []
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        if not m:
            raise bad_request(f"invalid selector: '{term}'; can't understand '{term}'")
        label, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if label not in allowed:
            raise bad_request(f"field label not supported: {label}")
        out.append(FieldRequirement(allowed[label], value, op == "!="))
    return out
