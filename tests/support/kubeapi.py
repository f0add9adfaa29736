"""A small, strict Kubernetes API test server (there is no kube-apiserver on these machines).

It speaks HTTPS/JSON like a real API server for the handful of resources the syncer touches
(namespaces, secrets, serviceaccounts, core/v1 and events.k8s.io/v1 events, leases, token and
access reviews) and is strict where real clusters are strict: resourceVersion preconditions,
AlreadyExists, missing namespaces, Secret validation (base64, dockerconfigjson, type immutability,
the 1 MiB limit), RBAC per bearer token and the PATCH content types. Error bodies are kube
``Status`` objects and never echo secret contents.

Tests reach into the state directly (``put_secret``, ``get_secret`` ...), observe every request
(``requests``, ``count``, ``writes``) and inject faults (``add_fault``, ``before``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import datetime as dt
import json
import re
import socket
import ssl
import struct
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import jwt
import trustme
from cryptography.hazmat.primitives.asymmetric import rsa

JSON = dict[str, Any]

MAX_SECRET_BYTES = 1024 * 1024
MAX_BODY_BYTES = 3 * 1024 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
DEFAULT_ISSUER = "https://kubernetes.default.svc.cluster.local"
SECRET_REDACTED = "<secret contents redacted>"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_QUALIFIED_NAME_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_CONFIG_KEY_RE = re.compile(r"[-._a-zA-Z0-9]+")
_SUBDOMAIN_MSG = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
_LABEL_MSG = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)


# --------------------------------------------------------------------------------------------
# resource table


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
_BY_PATH = {(r.group, r.version, r.plural): r for r in RESOURCES}
_STORED = [r for r in RESOURCES if "get" in r.verbs]
_VIRTUAL = {"tokenreviews", "selfsubjectreviews", "selfsubjectaccessreviews"}

# strategic-merge-patch list merge keys (path from the object root -> key)
_SMP_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("imagePullSecrets",): "name",
    ("secrets",): "name",
    ("metadata", "ownerReferences"): "uid",
}

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


# --------------------------------------------------------------------------------------------
# records, faults, errors


@dataclass
class RequestRecord:
    """One request as the server saw it (bodies are never kept: they may hold secrets)."""

    method: str
    path: str
    query: dict[str, str]
    verb: str
    api_group: str
    resource: str
    namespace: str | None
    name: str | None
    subresource: str | None
    user: str
    status: int = 0
    content_type: str = ""
    dry_run: bool = False


@dataclass
class _Fault:
    match: Callable[[RequestRecord], bool]
    status: int | None
    reason: str
    delay: float
    reset: bool
    times: int | None


@dataclass
class _Hook:
    match: Callable[[RequestRecord], bool]
    action: Callable[[], object]
    times: int | None


@dataclass
class _Identity:
    user: str
    uid: str
    groups: list[str]
    rules: list[JSON] | None
    extra: dict[str, list[str]] = field(default_factory=dict)
    expires_at: float | None = None
    service_account: tuple[str, str, str] | None = None  # namespace, name, uid


class KubeError(Exception):
    """An error answered as a kube ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: JSON | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}
        self.headers = headers or {}

    def status(self) -> JSON:
        """The Status body."""
        body: JSON = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details:
            body["details"] = self.details
        body["code"] = self.code
        return body


def _details(rt: ResourceType | None, name: str | None, kind: str | None = None) -> JSON:
    out: JSON = {}
    if name:
        out["name"] = name
    if rt is not None and rt.group:
        out["group"] = rt.group
    if kind or rt is not None:
        out["kind"] = kind or (rt.plural if rt else "")
    return out


def _not_found(rt: ResourceType, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{rt.qualified} "{name}" not found', _details(rt, name))


def _ns_not_found(namespace: str) -> KubeError:
    return KubeError(
        404,
        "NotFound",
        f'namespaces "{namespace}" not found',
        {"name": namespace, "kind": "namespaces"},
    )


def _conflict(rt: ResourceType, name: str, detail: str | None = None) -> KubeError:
    detail = detail or (
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return KubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {detail}',
        _details(rt, name),
    )


def _bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message)


@dataclass
class FieldError:
    """A kube field.Error: ``path: Kind: detail``."""

    kind: str  # Invalid | Required | TooLong | Forbidden | NotSupported
    path: str
    detail: str = ""
    value: Any = None

    _REASONS = {
        "Invalid": ("FieldValueInvalid", "Invalid value"),
        "Required": ("FieldValueRequired", "Required value"),
        "TooLong": ("FieldValueTooLong", "Too long"),
        "Forbidden": ("FieldValueForbidden", "Forbidden"),
        "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
    }

    def body(self) -> str:
        """The message without the field path."""
        label = self._REASONS[self.kind][1]
        text = label
        if self.kind in ("Invalid", "NotSupported"):
            text += f": {json.dumps(self.value)}"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __str__(self) -> str:
        return f"{self.path}: {self.body()}"

    def cause(self) -> JSON:
        """A StatusCause."""
        return {"reason": self._REASONS[self.kind][0], "message": self.body(), "field": self.path}


def _invalid(rt: ResourceType, name: str, errors: list[FieldError]) -> KubeError:
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details = _details(rt, name, rt.kind)
    details["causes"] = [e.cause() for e in errors]
    return KubeError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {text}', details)


_DEFAULT_REASONS = {
    400: ("BadRequest", "the server rejected our request for an unknown reason"),
    401: ("Unauthorized", "Unauthorized"),
    403: ("Forbidden", "forbidden"),
    404: ("NotFound", "the server could not find the requested resource"),
    405: ("MethodNotAllowed", "the server does not allow this method on the requested resource"),
    409: ("Conflict", "the object has been modified"),
    410: ("Expired", "the resourceVersion is too old"),
    422: ("Invalid", "the request is invalid"),
    429: ("TooManyRequests", "Too many requests, please try again later."),
    500: ("InternalError", "Internal error occurred: injected fault"),
    503: ("ServiceUnavailable", "the server is currently unable to handle the request"),
    504: ("Timeout", "the server was unable to return a response in the time allotted"),
}


# --------------------------------------------------------------------------------------------
# pure helpers: time, selectors, patches


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _get_path(obj: Any, dotted: str) -> Any:
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


def _valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return False
    if prefix and (len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME_RE.fullmatch(name))


def _valid_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_QUALIFIED_NAME_RE.fullmatch(value)))


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
                raise _bad_request("unable to parse requirement: found '', expected: identifier")
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
        if (
            not _valid_label_key(key)
            or re.search(r"\s", key)
            or not all(_valid_label_value(v) for v in values)
        ):
            raise _bad_request(f"unable to parse requirement: invalid label key or value {term!r}")
        reqs.append(LabelRequirement(key, op, frozenset(values)))
    return reqs


@dataclass(frozen=True)
class _FieldRequirement:
    path: str
    value: str
    negate: bool

    def matches(self, obj: JSON) -> bool:
        return (str(_get_path(obj, self.path) or "") == self.value) != self.negate


def _parse_field_selector(rt: ResourceType, selector: str) -> list[_FieldRequirement]:
    allowed = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
    allowed.update(_FIELD_LABELS.get((rt.group, rt.plural), {}))
    out: list[_FieldRequirement] = []
    for raw in selector.split(","):
        term = raw.strip()
        if not term:
            continue
        m = re.fullmatch(r"([^=!]+)(==|=|!=)(.*)", term)
        if not m:
            raise _bad_request(f"invalid selector: '{term}'; can't understand '{term}'")
        label, op, value = m.group(1).strip(), m.group(2), m.group(3).strip()
        if label not in allowed:
            raise _bad_request(f"field label not supported: {label}")
        out.append(_FieldRequirement(allowed[label], value, op == "!="))
    return out


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch: RFC 7386 plus merge-by-key for the known lists and the
    ``$patch`` / ``$deleteFromPrimitiveList`` / ``$setElementOrder`` / ``$retainKeys`` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    deletions: list[tuple[str, list[Any]]] = []
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions.append((key.split("/", 1)[1], value if isinstance(value, list) else []))
            continue
        sub = (*path, key)
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and sub in _SMP_MERGE_KEYS:
            result[key] = _smp_merge_list(result.get(key) or [], value, _SMP_MERGE_KEYS[sub], sub)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value, sub)
        else:
            result[key] = _strip_directives(copy.deepcopy(value))
    for fld, values in deletions:
        if isinstance(result.get(fld), list):
            result[fld] = [v for v in result[fld] if v not in values]
    return result


def _smp_merge_list(current: list[Any], patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    out = [copy.deepcopy(i) for i in current] if isinstance(current, list) else []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(_strip_directives(item))
            continue
        idx = next((n for n, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            out = [c for c in out if not (isinstance(c, dict) and c.get(key) == item[key])]
        elif idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, path)
    return out


class JsonPatchError(Exception):
    """A JSON patch operation that cannot be applied (never carries values)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise JsonPatchError("path is not a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _resolve_parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict) and tok in cur:
            cur = cur[tok]
        elif isinstance(cur, list) and tok.isdigit() and int(tok) < len(cur):
            cur = cur[int(tok)]
        else:
            raise JsonPatchError(f"doc is missing path: {path}: missing value")
    return cur, tokens[-1]


def _jp_get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise JsonPatchError(f"doc is missing key: {path}: missing value")


def _jp_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise JsonPatchError(f"add operation does not apply: index out of bounds: {path}")
    else:
        raise JsonPatchError(f"add operation does not apply: doc is missing path: {path}")
    return doc


def _jp_remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise JsonPatchError("remove operation does not apply: cannot remove the root")
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise JsonPatchError(f"remove operation does not apply: doc is missing path: {path}")
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """Apply an RFC 6902 JSON patch (add/remove/replace/move/copy/test) to a copy of doc."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise JsonPatchError("patch operation is not an object")
        kind = op.get("op")
        path = op.get("path")
        src = op.get("from", "")
        if not isinstance(path, str) or not isinstance(src, str):
            raise JsonPatchError(f"{kind} operation has an invalid path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"{kind} operation has no value")
        if kind == "add":
            doc = _jp_add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _jp_remove(doc, path)
        elif kind == "replace":
            _jp_get(doc, path)
            if _pointer(path):
                doc = _jp_remove(doc, path)
            doc = _jp_add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "test":
            if not _json_equal(_jp_get(doc, path), op["value"]):
                raise JsonPatchError(f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_jp_get(doc, src))
            if kind == "move":
                if path.startswith(src + "/"):
                    raise JsonPatchError("move operation cannot move a value into its own child")
                doc = _jp_remove(doc, src)
            doc = _jp_add(doc, path, value)
        else:
            raise JsonPatchError(f"Unexpected kind: {kind}")
    return doc


# --------------------------------------------------------------------------------------------
# validation


def _validate_meta(rt: ResourceType, obj: JSON, errors: list[FieldError]) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if rt.plural == "namespaces":
        if len(name) > 63 or not _DNS1123_LABEL_RE.fullmatch(name):
            errors.append(FieldError("Invalid", "metadata.name", _LABEL_MSG, name))
    elif len(name) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(name):
        errors.append(FieldError("Invalid", "metadata.name", _SUBDOMAIN_MSG, name))
    for key, value in (meta.get("labels") or {}).items():
        if not _valid_label_key(key):
            errors.append(FieldError("Invalid", "metadata.labels", "name part must be a valid label", key))
        if not _valid_label_value(value):
            errors.append(
                FieldError(
                    "Invalid",
                    "metadata.labels",
                    "a valid label must be an empty string or consist of alphanumeric "
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric "
                    "character (at most 63 characters)",
                    value,
                )
            )
    annotations = meta.get("annotations") or {}
    total = 0
    for key, value in annotations.items():
        total += len(key) + len(value)
        if not _valid_label_key(key.lower()):
            errors.append(FieldError("Invalid", "metadata.annotations", "name part must be valid", key))
    if total > MAX_ANNOTATIONS_BYTES:
        errors.append(
            FieldError("TooLong", "metadata.annotations", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes")
        )


def _check_types(rt: ResourceType, obj: Any) -> None:
    """The decoding step: shapes a Go client could not even unmarshal are 400s."""
    prefix = f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: '

    def bad(what: str, where: str, want: str) -> KubeError:
        return _bad_request(f"{prefix}cannot unmarshal {what} into Go struct field {where} of type {want}")

    if not isinstance(obj, dict):
        raise _bad_request(f"{prefix}cannot unmarshal non-object into Go value of type {rt.kind}")
    meta = obj.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise bad("non-object", f"{rt.kind}.metadata", "v1.ObjectMeta")
    meta = meta or {}
    for fld in ("name", "namespace", "generateName", "resourceVersion", "uid"):
        if meta.get(fld) is not None and not isinstance(meta[fld], str):
            raise bad("non-string", f"ObjectMeta.metadata.{fld}", "string")
    maps = [("metadata", "labels"), ("metadata", "annotations")]
    if rt.kind == "Secret":
        maps += [("", "data"), ("", "stringData")]
        if obj.get("type") is not None and not isinstance(obj["type"], str):
            raise bad("non-string", "Secret.type", "v1.SecretType")
    for parent, fld in maps:
        container = meta if parent == "metadata" else obj
        value = container.get(fld)
        if value is None:
            continue
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise bad("non-string map", f"{rt.kind}.{parent + '.' if parent else ''}{fld}", "map")


def _b64_error(value: str) -> str | None:
    try:
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        alphabet = re.compile(r"[A-Za-z0-9+/=]")
        pos = next((i for i, ch in enumerate(value) if not alphabet.match(ch)), len(value))
        return f"illegal base64 data at input byte {pos}"
    return None


def _validate_secret(obj: JSON, old: JSON | None, errors: list[FieldError]) -> None:
    data: dict[str, str] = obj.get("data") or {}
    total = 0
    decoded: dict[str, bytes] = {}
    for key, value in data.items():
        if not _CONFIG_KEY_RE.fullmatch(key) or key in (".", "..") or len(key) > 253:
            errors.append(
                FieldError(
                    "Invalid",
                    f"data[{key}]",
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                    key,
                )
            )
        err = _b64_error(value)
        if err:
            errors.append(FieldError("Invalid", f"data[{key}]", err, SECRET_REDACTED))
            continue
        decoded[key] = base64.b64decode(value)
        total += len(decoded[key])
    if total > MAX_SECRET_BYTES:
        errors.append(FieldError("TooLong", "data", f"must have at most {MAX_SECRET_BYTES} bytes"))
    stype = obj.get("type") or "Opaque"
    if stype == "kubernetes.io/dockerconfigjson":
        raw = decoded.get(".dockerconfigjson")
        if ".dockerconfigjson" not in data:
            errors.append(FieldError("Required", "data[.dockerconfigjson]"))
        elif raw is not None:
            try:
                parsed = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid UTF-8"
                errors.append(FieldError("Invalid", "data[.dockerconfigjson]", msg, SECRET_REDACTED))
            else:
                if not isinstance(parsed, dict):
                    kind = type(parsed).__name__.replace("list", "array").replace("str", "string")
                    errors.append(
                        FieldError(
                            "Invalid",
                            "data[.dockerconfigjson]",
                            f"json: cannot unmarshal {kind} into Go value of type map[string]interface {{}}",
                            SECRET_REDACTED,
                        )
                    )
    elif stype == "kubernetes.io/dockercfg" and ".dockercfg" not in data:
        errors.append(FieldError("Required", "data[.dockercfg]"))
    elif stype == "kubernetes.io/basic-auth" and not ({"username", "password"} & data.keys()):
        errors.append(FieldError("Required", "data[username]", "either username or password is required"))
    elif stype == "kubernetes.io/ssh-auth" and "ssh-privatekey" not in data:
        errors.append(FieldError("Required", "data[ssh-privatekey]"))
    elif stype == "kubernetes.io/tls":
        errors.extend(FieldError("Required", f"data[{k}]") for k in ("tls.crt", "tls.key") if k not in data)
    if old is not None:
        old_type = old.get("type") or "Opaque"
        if stype != old_type:
            errors.append(FieldError("Invalid", "type", "field is immutable", stype))
        if old.get("immutable") is True:
            if obj.get("data") != old.get("data"):
                errors.append(FieldError("Forbidden", "data", "field is immutable when `immutable` is set"))
            if obj.get("immutable") is not True:
                errors.append(
                    FieldError("Forbidden", "immutable", "field is immutable when `immutable` is set")
                )


def _validate_kind(rt: ResourceType, obj: JSON, old: JSON | None, errors: list[FieldError]) -> None:
    if rt.kind == "Secret":
        _validate_secret(obj, old, errors)
    elif rt.kind == "Lease":
        spec = obj.get("spec") or {}
        duration = spec.get("leaseDurationSeconds")
        if duration is not None and (not isinstance(duration, int) or duration <= 0):
            errors.append(
                FieldError("Invalid", "spec.leaseDurationSeconds", "must be greater than 0", duration)
            )
        transitions = spec.get("leaseTransitions")
        if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
            errors.append(
                FieldError(
                    "Invalid",
                    "spec.leaseTransitions",
                    "must be greater than or equal to 0",
                    transitions,
                )
            )
    elif rt.kind == "Event" and rt.group == "events.k8s.io":
        for fld in ("eventTime", "reportingController", "reportingInstance", "action", "reason"):
            if not obj.get(fld):
                errors.append(FieldError("Required", fld))
        if obj.get("type") not in ("Normal", "Warning"):
            errors.append(
                FieldError(
                    "NotSupported", "type", 'supported values: "Normal", "Warning"', obj.get("type", "")
                )
            )
        if len(obj.get("note") or "") > 1024:
            errors.append(FieldError("TooLong", "note", "must have at most 1024 bytes"))
    elif rt.kind == "Event":
        etype = obj.get("type")
        if etype and etype not in ("Normal", "Warning"):
            errors.append(FieldError("NotSupported", "type", 'supported values: "Normal", "Warning"', etype))
        involved_ns = (obj.get("involvedObject") or {}).get("namespace")
        ns = (obj.get("metadata") or {}).get("namespace")
        if involved_ns and ns and involved_ns != ns:
            errors.append(
                FieldError(
                    "Invalid",
                    "involvedObject.namespace",
                    "does not match event.namespace",
                    involved_ns,
                )
            )


# --------------------------------------------------------------------------------------------
# HTTP plumbing


class _Handler(BaseHTTPRequestHandler):
    """Hands every request to the KubeAPIServer that owns the HTTP server."""

    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True
    timeout = 60
    server: _HTTPServer

    def setup(self) -> None:
        """Finish the TLS handshake in this thread (not in the accept loop)."""
        super().setup()
        conn = self.connection
        if isinstance(conn, ssl.SSLSocket):
            try:
                conn.do_handshake()
            except (OSError, ssl.SSLError):
                self.close_connection = True
                raise

    def handle(self) -> None:
        """Serve requests until the connection closes; swallow socket errors quietly."""
        with contextlib.suppress(OSError, ssl.SSLError, ValueError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Silenced: requests may carry secrets."""

    def do_GET(self) -> None:  # noqa: N802
        """Dispatch."""
        self.server.kube._handle(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET  # noqa: N815


def _object_key(req: _Request, rt: ResourceType) -> tuple[str, str]:
    """(namespace, name) of the object a request names; namespace "" for cluster-scoped kinds."""
    return (req.namespace or "" if rt.namespaced else "", req.name or "")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, kube: KubeAPIServer, ctx: ssl.SSLContext) -> None:
        self.kube = kube
        self.ssl_ctx = ctx
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = self.socket.accept()
        tls = self.ssl_ctx.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        with self.sockets_lock:
            self.open_sockets.add(tls)
        return tls, addr

    def shutdown_request(self, request: Any) -> None:
        with self.sockets_lock:
            self.open_sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet: a client hanging up mid-request is normal in fault tests."""

    def close_all(self) -> None:
        """Hang up every open keep-alive connection."""
        with self.sockets_lock:
            socks = list(self.open_sockets)
            self.open_sockets.clear()
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


@dataclass
class _Request:
    method: str
    path: str
    query: dict[str, str]
    headers: Any
    body: bytes
    verb: str = ""
    group: str = ""
    version: str = ""
    resource: str = ""
    namespace: str | None = None
    name: str | None = None
    subresource: str | None = None
    rt: ResourceType | None = None
    is_resource: bool = False
    unknown: bool = False

    @property
    def content_type(self) -> str:
        return str(self.headers.get("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def dry_run(self) -> bool:
        return self.query.get("dryRun") == "All"


def _parse_request(method: str, target: str, headers: Any, body: bytes) -> _Request:
    split = urlsplit(target)
    query = {k: v[0] for k, v in parse_qs(split.query, keep_blank_values=True).items()}
    path = split.path
    req = _Request(method, path, query, headers, body)
    parts = [unquote(p) for p in path.strip("/").split("/")] if path.strip("/") else []
    rest: list[str]
    if parts[:1] == ["api"] and len(parts) >= 3:
        req.group, req.version, rest = "", parts[1], parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 4:
        req.group, req.version, rest = parts[1], parts[2], parts[3:]
    else:
        req.verb = method.lower()
        return req
    req.is_resource = True
    watch = False
    if rest[0] == "watch":
        watch, rest = True, rest[1:]
    if not rest:
        req.unknown = True
        return req
    if (
        rest[0] == "namespaces"
        and len(rest) >= 3
        and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
    ):
        req.namespace, req.resource = rest[1], rest[2]
        tail = rest[3:]
    else:
        req.resource, tail = rest[0], rest[1:]
    if len(tail) > 2:
        req.unknown = True
    req.name = tail[0] if tail else None
    req.subresource = tail[1] if len(tail) > 1 else None
    if req.resource == "namespaces":
        req.namespace = req.name
    req.rt = _BY_PATH.get((req.group, req.version, req.resource))
    if req.rt is None:
        req.unknown = True
    if query.get("watch") in ("true", "1"):
        watch = True
    req.verb = {
        "GET": "watch" if watch else ("get" if req.name else "list"),
        "HEAD": "get",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if req.name else "deletecollection",
    }.get(method, method.lower())
    return req


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    if handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
        chunks = []
        while True:
            size = int(handler.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                handler.rfile.readline()
                break
            chunks.append(handler.rfile.read(size))
            handler.rfile.readline()
        return b"".join(chunks)
    length = int(handler.headers.get("Content-Length") or 0)
    return handler.rfile.read(length) if length else b""


# --------------------------------------------------------------------------------------------
# the server


class KubeAPIServer:
    """A strict in-process Kubernetes API server over HTTPS for tests."""

    #: real kube answers a list in a missing namespace with an empty list; this server (by the
    #: project's contract) answers 404 so a typo in a namespace is loud. Set False for kube's way.
    list_missing_namespace_404 = True
    api_audiences: tuple[str, ...] = (DEFAULT_ISSUER,)
    issuer = DEFAULT_ISSUER

    def __init__(self, ca: trustme.CA, latency: float = 0.0) -> None:
        self.ca = ca
        self.latency = latency
        self.ca_pem: bytes = ca.cert_pem.bytes()
        self.requests: list[RequestRecord] = []
        #: tracebacks of bugs in this server (answered as 500); the ``kube`` fixture asserts none
        self.internal_errors: list[str] = []
        self._lock = threading.RLock()
        self._rv = 0
        self._objects: dict[tuple[str, str], dict[tuple[str, str], JSON]] = {
            (r.group, r.plural): {} for r in _STORED
        }
        self._tokens: dict[str, _Identity] = {}
        self._faults: list[_Fault] = []
        self._hooks: list[_Hook] = []
        self._signing_key: rsa.RSAPrivateKey | None = None
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""
        self.port = 0

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on 127.0.0.1 (random port) and serve in a background thread."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
        self._server = _HTTPServer(self, ctx)
        self.port = int(self._server.server_address[1])
        self.url = f"https://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and hang up open connections."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server.close_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def __enter__(self) -> KubeAPIServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- direct state access (bypasses auth) -----------------------------------------------

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    @staticmethod
    def _resolve(kind_plural: str) -> ResourceType:
        plural, _, group = kind_plural.partition(".")
        for rt in _STORED:
            if rt.plural == plural and (not group or rt.group == group):
                return rt
        raise KeyError(f"unknown resource {kind_plural!r}")

    def _store(self, rt: ResourceType) -> dict[tuple[str, str], JSON]:
        return self._objects[(rt.group, rt.plural)]

    def _stamp_new(self, rt: ResourceType, obj: JSON, namespace: str | None) -> JSON:
        meta = obj.setdefault("metadata", {})
        if rt.namespaced and namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = _now()
        meta["resourceVersion"] = self._next_rv()
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        return obj

    def put_object(self, kind_plural: str, namespace: str | None, obj: JSON) -> JSON:
        """Create or replace any stored object verbatim (no validation); returns a copy."""
        rt = self._resolve(kind_plural)
        obj = copy.deepcopy(obj)
        name = obj["metadata"]["name"]
        with self._lock:
            if rt.namespaced and namespace and ("", namespace) not in self._objects[("", "namespaces")]:
                self.add_namespace(namespace)
            key = (namespace or "", name)
            old = self._store(rt).get(key)
            self._stamp_new(rt, obj, namespace)
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
                obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            self._store(rt)[key] = obj
            return copy.deepcopy(obj)

    def get_object(self, kind_plural: str, namespace: str | None, name: str) -> JSON | None:
        """A deep copy of a stored object (``secrets``, ``leases``, ``events.events.k8s.io`` ...)."""
        rt = self._resolve(kind_plural)
        with self._lock:
            obj = self._store(rt).get((namespace or "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def delete_object(self, kind_plural: str, namespace: str | None, name: str) -> None:
        """Remove a stored object if present."""
        rt = self._resolve(kind_plural)
        with self._lock:
            self._store(rt).pop((namespace or "", name), None)

    def list_objects(self, kind_plural: str, namespace: str | None = None) -> list[JSON]:
        """Deep copies of stored objects of a kind (all namespaces when namespace is None)."""
        rt = self._resolve(kind_plural)
        with self._lock:
            return [
                copy.deepcopy(o)
                for (ns, _), o in self._store(rt).items()
                if namespace is None or ns == namespace
            ]

    def add_namespace(self, name: str, labels: dict[str, str] | None = None, phase: str = "Active") -> None:
        """Create (or replace) a namespace; kube's ``kubernetes.io/metadata.name`` label is added."""
        all_labels = {"kubernetes.io/metadata.name": name, **(labels or {})}
        obj: JSON = {
            "metadata": {"name": name, "labels": all_labels},
            "spec": {"finalizers": ["kubernetes"]},
            "status": {"phase": phase},
        }
        with self._lock:
            old = self._objects[("", "namespaces")].get(("", name))
            self._stamp_new(_BY_PATH[("", "v1", "namespaces")], obj, None)
            if old is not None:
                obj["metadata"]["uid"] = old["metadata"]["uid"]
            if phase == "Terminating":
                obj["metadata"]["deletionTimestamp"] = _now()
            self._objects[("", "namespaces")][("", name)] = obj

    def remove_namespace(self, name: str) -> None:
        """Drop a namespace and everything in it."""
        with self._lock:
            self._objects[("", "namespaces")].pop(("", name), None)
            for rt in _STORED:
                if rt.namespaced:
                    store = self._store(rt)
                    for key in [k for k in store if k[0] == name]:
                        del store[key]

    def put_secret(
        self,
        namespace: str,
        name: str,
        type: str = "Opaque",  # noqa: A002
        data: dict[str, bytes] | None = None,
        annotations: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> JSON:
        """Create or replace a Secret (bumps resourceVersion, keeps uid; creates the namespace
        if missing). ``data`` values are raw bytes (str is UTF-8 encoded)."""
        meta: JSON = {"name": name}
        if annotations:
            meta["annotations"] = dict(annotations)
        if labels:
            meta["labels"] = dict(labels)
        obj: JSON = {"metadata": meta, "type": type}
        if data:
            obj["data"] = {
                k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode() for k, v in data.items()
            }
        return self.put_object("secrets", namespace, obj)

    def get_secret(self, namespace: str, name: str) -> JSON | None:
        """The stored Secret (data values are base64 strings), a deep copy, or None."""
        return self.get_object("secrets", namespace, name)

    def secret_data(self, namespace: str, name: str) -> dict[str, bytes] | None:
        """The decoded data of a stored Secret, or None when it does not exist."""
        obj = self.get_secret(namespace, name)
        if obj is None:
            return None
        return {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}

    def delete_secret(self, namespace: str, name: str) -> None:
        """Remove a Secret if present."""
        self.delete_object("secrets", namespace, name)

    def add_service_account(
        self, namespace: str, name: str, image_pull_secrets: list[str] | None = None
    ) -> JSON:
        """Create or replace a ServiceAccount."""
        obj: JSON = {"metadata": {"name": name}}
        if image_pull_secrets is not None:
            obj["imagePullSecrets"] = [{"name": n} for n in image_pull_secrets]
        return self.put_object("serviceaccounts", namespace, obj)

    def events(self, namespace: str | None = None) -> list[JSON]:
        """Stored events of both APIs (each keeps its apiVersion), in creation order."""
        with self._lock:
            out = [
                copy.deepcopy(o)
                for grp in ("", "events.k8s.io")
                for (ns, _), o in self._objects[(grp, "events")].items()
                if namespace is None or ns == namespace
            ]
        out.sort(key=lambda o: int(o["metadata"].get("resourceVersion") or 0))
        return out

    # ---- auth ------------------------------------------------------------------------------

    def add_token(
        self,
        token: str,
        user: str = "admin",
        rules: list[JSON] | None = None,
        groups: Iterable[str] = (),
        uid: str = "",
    ) -> None:
        """Register a bearer token. ``rules`` None = allowed everything; else RBAC-like rules."""
        with self._lock:
            self._tokens[token] = _Identity(user, uid, list(groups), copy.deepcopy(rules))

    def set_rules(self, token: str, rules: list[JSON] | None) -> None:
        """Replace a token's rules (None = allowed everything)."""
        with self._lock:
            self._tokens[token].rules = copy.deepcopy(rules)

    def remove_token(self, token: str) -> None:
        """Forget a token: later requests with it get 401."""
        with self._lock:
            self._tokens.pop(token, None)

    @property
    def signing_key(self) -> rsa.RSAPrivateKey:
        """The service-account token signing key (generated on first use)."""
        with self._lock:
            if self._signing_key is None:
                self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._signing_key

    def issue_service_account_token(
        self,
        namespace: str,
        name: str,
        audiences: list[str] | None = None,
        ttl: int = 3600,
        rules: list[JSON] | None = None,
    ) -> str:
        """A signed projected-style SA JWT, also registered as a bearer token for that SA.
        Creates the ServiceAccount if it does not exist."""
        sa = self.get_object("serviceaccounts", namespace, name)
        if sa is None:
            sa = self.add_service_account(namespace, name)
        sa_uid = sa["metadata"]["uid"]
        now = int(time.time())
        jti = str(uuid.uuid4())
        claims = {
            "iss": self.issuer,
            "sub": f"system:serviceaccount:{namespace}:{name}",
            "aud": list(audiences) if audiences else list(self.api_audiences),
            "exp": now + ttl,
            "iat": now,
            "nbf": now,
            "jti": jti,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": sa_uid},
            },
        }
        token = jwt.encode(claims, self.signing_key, algorithm="RS256", headers={"kid": "kubeapi-test"})
        with self._lock:
            self._tokens[token] = _Identity(
                user=f"system:serviceaccount:{namespace}:{name}",
                uid=sa_uid,
                groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                rules=copy.deepcopy(rules),
                extra={"authentication.kubernetes.io/credential-id": [f"JTI={jti}"]},
                expires_at=float(now + ttl),
                service_account=(namespace, name, sa_uid),
            )
        return token

    def _identity(self, token: str) -> _Identity | None:
        """Who a bearer token is, or None (unknown, expired, or its SA is gone)."""
        with self._lock:
            ident = self._tokens.get(token)
            if ident is None:
                return None
            if ident.expires_at is not None and time.time() >= ident.expires_at:
                return None
            if ident.service_account is not None:
                ns, name, uid = ident.service_account
                sa = self._objects[("", "serviceaccounts")].get((ns, name))
                if sa is None or sa["metadata"]["uid"] != uid:
                    return None
            return ident

    def _allowed(
        self,
        ident: _Identity,
        verb: str,
        group: str,
        resource: str,
        subresource: str | None,
        namespace: str | None,
        name: str | None,
    ) -> bool:
        rules = ident.rules
        if rules is None:
            return True
        full = f"{resource}/{subresource}" if subresource else resource
        for rule in rules:
            if not {verb, "*"} & set(rule.get("verbs", [])):
                continue
            if not {group, "*"} & set(rule.get("apiGroups", [])):
                continue
            res = set(rule.get("resources", []))
            if not ({full, "*"} & res or (subresource and f"{resource}/*" in res)):
                continue
            names = rule.get("resourceNames")
            if names and (not name or name not in names):
                continue
            namespaces = rule.get("namespaces")
            if namespaces is not None and (not namespace or namespace not in namespaces):
                continue
            return True
        return False

    @staticmethod
    def _forbidden(
        user: str,
        verb: str,
        group: str,
        resource: str,
        subresource: str | None,
        namespace: str | None,
        name: str | None,
    ) -> KubeError:
        full = f"{resource}/{subresource}" if subresource else resource
        where = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
        why = f'User "{user}" cannot {verb} resource "{full}" in API group "{group}" {where}'
        qualified = f"{resource}.{group}" if group else resource
        msg = f'{qualified} "{name}" is forbidden: {why}' if name else f"{qualified} is forbidden: {why}"
        details: JSON = {}
        if name:
            details["name"] = name
        if group:
            details["group"] = group
        details["kind"] = resource
        return KubeError(403, "Forbidden", msg, details)

    # ---- observation -----------------------------------------------------------------------

    def reset_requests(self) -> None:
        """Forget recorded requests."""
        with self._lock:
            self.requests.clear()

    def count(
        self,
        verb: str | None = None,
        resource: str | None = None,
        namespace: str | None = None,
        name: str | None = None,
    ) -> int:
        """How many recorded requests match all the given attributes."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if (verb is None or r.verb == verb)
                and (resource is None or r.resource == resource)
                and (namespace is None or r.namespace == namespace)
                and (name is None or r.name == name)
            )

    def writes(self, resource: str = "secrets") -> int:
        """Successful (2xx), non-dry-run create/update/patch/delete requests on a resource."""
        with self._lock:
            return sum(
                1
                for r in self.requests
                if r.resource == resource
                and r.verb in ("create", "update", "patch", "delete")
                and 200 <= r.status < 300
                and not r.dry_run
            )

    # ---- fault injection -------------------------------------------------------------------

    def add_fault(
        self,
        match: Callable[[RequestRecord], bool],
        *,
        status: int | None = None,
        reason: str = "",
        delay: float = 0.0,
        reset: bool = False,
        times: int | None = 1,
    ) -> None:
        """Before a matching request: sleep ``delay``, then drop the connection (``reset``) or
        answer a Status with ``status`` (429 gets ``Retry-After: 1``). times=None = forever."""
        with self._lock:
            self._faults.append(_Fault(match, status, reason, delay, reset, times))

    def before(
        self, match: Callable[[RequestRecord], bool], action: Callable[[], object], times: int | None = 1
    ) -> None:
        """Run ``action`` right before a matching request is processed (e.g. a concurrent edit)."""
        with self._lock:
            self._hooks.append(_Hook(match, action, times))

    def clear_faults(self) -> None:
        """Drop all faults and hooks."""
        with self._lock:
            self._faults.clear()
            self._hooks.clear()

    def _take(self, items: list[Any], record: RequestRecord) -> list[Any]:
        """Consume matching faults/hooks (all hooks, only the first fault)."""
        taken = []
        with self._lock:
            for item in list(items):
                if not item.match(record):
                    continue
                taken.append(item)
                if item.times is not None:
                    item.times -= 1
                    if item.times <= 0:
                        items.remove(item)
                if isinstance(item, _Fault):
                    break
        return taken

    # ---- kubeconfig ------------------------------------------------------------------------

    def write_kubeconfig(
        self, path: str | Path, token: str, namespace: str = "default", context: str = "test"
    ) -> str:
        """Write a kubeconfig (JSON is valid YAML) for this server and token; returns the path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": context,
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": context, "user": {"token": token}}],
            "contexts": [
                {
                    "name": context,
                    "context": {"cluster": context, "user": context, "namespace": namespace},
                }
            ],
            "current-context": context,
        }
        out = Path(path)
        out.write_text(json.dumps(config, indent=2))
        out.chmod(0o600)
        return str(out)

    # ---- request handling ------------------------------------------------------------------

    def _handle(self, h: _Handler) -> None:
        try:
            body = _read_body(h)
        except (OSError, ValueError):
            h.close_connection = True
            return
        req = _parse_request(h.command, h.path, h.headers, body)
        auth = str(h.headers.get("Authorization") or "")
        ident: _Identity | None = None
        if auth[:7].lower() == "bearer ":
            ident = self._identity(auth[7:].strip())
        record = RequestRecord(
            method=req.method,
            path=req.path,
            query=dict(req.query),
            verb=req.verb,
            api_group=req.group,
            resource=req.resource,
            namespace=req.namespace,
            name=req.name,
            subresource=req.subresource,
            user=ident.user if ident else "",
            content_type=req.content_type,
            dry_run=req.dry_run,
        )
        with self._lock:
            self.requests.append(record)
        if self.latency:
            time.sleep(self.latency)

        status, payload, headers = 500, None, {}
        try:
            for fault in self._take(self._faults, record):
                if fault.delay:
                    time.sleep(fault.delay)
                if fault.reset:
                    record.status = 0
                    self._reset(h)
                    return
                if fault.status is not None:
                    raise self._fault_error(fault, req)
            for hook in self._take(self._hooks, record):
                hook.action()
            if ident is None and not self._public(req):
                raise KubeError(401, "Unauthorized", "Unauthorized")
            if len(body) > MAX_BODY_BYTES:
                raise KubeError(413, "RequestEntityTooLarge", "request entity too large")
            status, payload = self._route(req, ident)
        except KubeError as err:
            status, payload, headers = err.code, err.status(), err.headers
        except Exception:  # a bug in the test server: answer 500, never leak request contents
            self.internal_errors.append(traceback.format_exc())
            status = 500
            payload = KubeError(500, "InternalError", "Internal error occurred: test server failure").status()
        if record.name is None and req.verb == "create" and req.name:
            record.name = req.name  # like kube audit's objectRef: the created object's name
        record.status = status
        self._send(h, status, payload, headers)

    @staticmethod
    def _public(req: _Request) -> bool:
        return not req.is_resource and req.path.rstrip("/") in (
            "/version",
            "/healthz",
            "/livez",
            "/readyz",
        )

    @staticmethod
    def _fault_error(fault: _Fault, req: _Request) -> KubeError:
        code = int(fault.status or 500)
        reason, message = _DEFAULT_REASONS.get(code, ("InternalError", f"injected fault {code}"))
        reason = fault.reason or reason
        headers = {"Retry-After": "1"} if code == 429 else {}
        if code == 409 and req.rt is not None and req.name:
            return KubeError(
                409,
                reason,
                _conflict(req.rt, req.name).message,
                _details(req.rt, req.name),
                headers,
            )
        details = _details(req.rt, req.name) if req.rt is not None else {}
        if code == 429:
            details["retryAfterSeconds"] = 1
        return KubeError(code, reason, message, details, headers)

    @staticmethod
    def _reset(h: _Handler) -> None:
        h.close_connection = True
        conn = h.connection
        with contextlib.suppress(OSError):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            conn.close()

    @staticmethod
    def _send(h: _Handler, status: int, payload: Any, headers: dict[str, str]) -> None:
        data = b"" if payload is None else json.dumps(payload, separators=(",", ":")).encode()
        try:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(data)))
            h.send_header("Audit-Id", str(uuid.uuid4()))
            h.send_header("Cache-Control", "no-cache, private")
            for key, value in headers.items():
                h.send_header(key, value)
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        except OSError:
            h.close_connection = True

    def _route(self, req: _Request, ident: _Identity | None) -> tuple[int, Any]:
        if not req.is_resource:
            return self._non_resource(req, ident)
        assert ident is not None
        if req.unknown or req.rt is None:
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        rt = req.rt
        if (
            req.subresource
            and not (rt.plural == "serviceaccounts" and req.subresource == "token")
            and not (rt.plural == "namespaces" and req.subresource in ("status", "finalize"))
        ):
            raise KubeError(404, "NotFound", "the server could not find the requested resource")
        if rt.plural == "selfsubjectaccessreviews" or rt.plural == "selfsubjectreviews":
            pass  # every authenticated user may ask about themselves (system:basic-user)
        elif not self._allowed(
            ident, req.verb, rt.group, rt.plural, req.subresource, req.namespace, req.name
        ):
            raise self._forbidden(
                ident.user, req.verb, rt.group, rt.plural, req.subresource, req.namespace, req.name
            )
        if (
            req.verb not in rt.verbs
            or (rt.namespaced and req.namespace is None and req.verb not in ("list", "watch"))
            or (not rt.namespaced and rt.plural != "namespaces" and req.namespace is not None)
        ):
            raise KubeError(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
                _details(rt, req.name),
            )
        dry = req.query.get("dryRun")
        if dry is not None and dry != "All":
            raise _bad_request(f'dryRun: Unsupported value: "{dry}": supported values: "All"')
        if rt.plural in _VIRTUAL:
            return self._review(req, ident)
        if req.subresource == "token":
            return self._token_request(req)
        handler = {
            "get": self._get,
            "list": self._list,
            "create": self._create,
            "update": self._update,
            "patch": self._patch,
            "delete": self._delete,
        }.get(req.verb)
        if handler is None:
            raise KubeError(
                405,
                "MethodNotAllowed",
                f"{req.verb} is not supported by this test server",
                _details(rt, req.name),
            )
        return handler(req)

    # ---- non-resource paths ----------------------------------------------------------------

    def _non_resource(self, req: _Request, ident: _Identity | None) -> tuple[int, Any]:
        path = req.path.rstrip("/") or "/"
        if path == "/version":
            return 200, {
                "major": "1",
                "minor": "31",
                "gitVersion": "v1.31.0",
                "gitCommit": "0000000000000000000000000000000000000000",
                "gitTreeState": "clean",
                "buildDate": "2024-08-13T07:28:49Z",
                "goVersion": "go1.22.5",
                "compiler": "gc",
                "platform": "linux/amd64",
            }
        if path in ("/healthz", "/livez", "/readyz"):
            return 200, "ok"
        if req.method != "GET":
            raise KubeError(405, "MethodNotAllowed", "the server does not allow this method")
        if path == "/api":
            return 200, {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{self.port}"}
                ],
            }
        if path == "/apis":
            groups = sorted({r.group for r in RESOURCES if r.group})
            return 200, {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [
                    {
                        "name": g,
                        "versions": [{"groupVersion": f"{g}/v1", "version": "v1"}],
                        "preferredVersion": {"groupVersion": f"{g}/v1", "version": "v1"},
                    }
                    for g in groups
                ],
            }
        m = re.fullmatch(r"/api/(v1)|/apis/([^/]+)/(v1)", path)
        if m:
            group = m.group(2) or ""
            resources = [r for r in RESOURCES if r.group == group]
            if resources:
                return 200, {
                    "kind": "APIResourceList",
                    "apiVersion": "v1",
                    "groupVersion": resources[0].api_version,
                    "resources": [
                        {
                            "name": r.plural,
                            "singularName": r.kind.lower(),
                            "namespaced": r.namespaced,
                            "kind": r.kind,
                            "verbs": sorted(r.verbs),
                        }
                        for r in resources
                    ],
                }
        raise KubeError(404, "NotFound", "the server could not find the requested resource")

    # ---- CRUD --------------------------------------------------------------------------------

    def _require_namespace(self, req: _Request, for_create: bool) -> None:
        rt = req.rt
        assert rt is not None
        if not rt.namespaced or req.namespace is None:
            return
        ns = self._objects[("", "namespaces")].get(("", req.namespace))
        if ns is None:
            if for_create or req.verb == "list":
                raise _ns_not_found(req.namespace)
            raise _not_found(rt, req.name or "")
        if for_create and (ns.get("status") or {}).get("phase") == "Terminating":
            raise KubeError(
                403,
                "Forbidden",
                f'{rt.qualified} "{req.name or ""}" is forbidden: unable to create new content in '
                f"namespace {req.namespace} because it is being terminated",
                {
                    **_details(rt, req.name),
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {req.namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def _get(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        with self._lock:
            return 200, copy.deepcopy(self._existing(req, rt))

    def _existing(self, req: _Request, rt: ResourceType) -> JSON:
        """The stored object the request names (call under the lock); 404 when there is none."""
        assert req.name
        self._require_namespace(req, for_create=False)
        obj = self._store(rt).get(_object_key(req, rt))
        if obj is None:
            raise _not_found(rt, req.name)
        return obj

    def _list(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None
        label_matchers = parse_label_selector(req.query.get("labelSelector", ""))
        field_matchers = _parse_field_selector(rt, req.query.get("fieldSelector", ""))
        limit = int(req.query.get("limit") or 0) if req.query.get("limit", "").isdigit() else 0
        start_after: list[str] | None = None
        if req.query.get("continue"):
            try:
                start_after = json.loads(base64.urlsafe_b64decode(req.query["continue"]))["k"]
            except (ValueError, KeyError, TypeError) as exc:
                raise _bad_request("continue key is not valid: illegal base64 data") from exc
        with self._lock:
            if (
                rt.namespaced
                and req.namespace is not None
                and self.list_missing_namespace_404
                and (("", req.namespace) not in self._objects[("", "namespaces")])
            ):
                raise _ns_not_found(req.namespace)
            items = [
                (key, obj)
                for key, obj in sorted(self._store(rt).items())
                if (not rt.namespaced or req.namespace is None or key[0] == req.namespace)
                and all(m.matches(obj["metadata"].get("labels") or {}) for m in label_matchers)
                and all(m.matches(obj) for m in field_matchers)
            ]
            rv = str(self._rv)
        if start_after is not None:
            items = [(k, o) for k, o in items if list(k) > start_after]
        meta: JSON = {"resourceVersion": rv}
        if limit and len(items) > limit:
            last = items[limit - 1][0]
            meta["continue"] = base64.urlsafe_b64encode(json.dumps({"k": list(last)}).encode()).decode()
            meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        out = []
        for _, obj in items:
            item = copy.deepcopy(obj)
            item.pop("kind", None)
            item.pop("apiVersion", None)
            out.append(item)
        return 200, {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": out,
        }

    def _decode_body(self, req: _Request) -> JSON:
        rt = req.rt
        assert rt is not None
        if req.content_type not in ("", "application/json"):
            raise KubeError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, "
                "application/vnd.kubernetes.protobuf",
            )
        try:
            obj = json.loads(req.body or b"null")
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid JSON"
            raise _bad_request(f"couldn't get version/kind; json parse error: {msg}") from exc
        _check_types(rt, obj)
        if obj.get("kind") not in (None, "", rt.kind) or obj.get("apiVersion") not in (
            None,
            "",
            rt.api_version,
        ):
            raise _bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version})"
            )
        return dict(obj)

    def _normalize(self, rt: ResourceType, obj: JSON) -> None:
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        for fld in ("labels", "annotations"):
            if fld in meta and not meta[fld]:
                del meta[fld]
        if rt.kind == "Secret":
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {}) or {}
                obj["data"] = data
                for key, value in string_data.items():
                    data[key] = base64.b64encode(value.encode("utf-8")).decode()
            if not obj.get("type"):
                obj["type"] = "Opaque"
            if "data" in obj and obj["data"] is None:
                del obj["data"]
        if rt.plural == "namespaces":
            labels = meta.setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = meta.get("name", "")
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})

    def _validate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        errors: list[FieldError] = []
        _validate_meta(rt, obj, errors)
        _validate_kind(rt, obj, old, errors)
        if errors:
            raise _invalid(rt, obj["metadata"].get("name", ""), errors)

    def _create(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None
        obj = self._decode_body(req)
        meta = obj.setdefault("metadata", {})
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and body_ns != req.namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        req.name = name or None
        for fld in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            if fld == "resourceVersion" and meta.get(fld):
                raise _invalid(
                    rt,
                    name,
                    [FieldError("Invalid", "metadata.resourceVersion", "must be empty on create", meta[fld])],
                )
            meta.pop(fld, None)
        with self._lock:
            self._require_namespace(req, for_create=True)
            if not name:
                raise _invalid(
                    rt,
                    "",
                    [FieldError("Required", "metadata.name", "name or generateName is required")],
                )
            self._normalize(rt, obj)
            self._validate(rt, obj, None)
            key = (req.namespace or "" if rt.namespaced else "", name)
            if key in self._store(rt):
                raise KubeError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{name}" already exists',
                    _details(rt, name),
                )
            self._stamp_new(rt, obj, req.namespace if rt.namespaced else None)
            if not req.dry_run:
                self._store(rt)[key] = obj
            else:
                self._rv -= 1  # a dry run consumes no resourceVersion
                obj["metadata"].pop("resourceVersion", None)
            return 201, copy.deepcopy(obj)

    def _commit_update(self, req: _Request, old: JSON, new: JSON) -> tuple[int, Any]:
        """Preconditions, validation, no-op detection and storage for update and patch."""
        rt = req.rt
        assert rt is not None and req.name
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise _bad_request("metadata must be an object")
        old_meta = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise _conflict(rt, req.name)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise _conflict(
                rt,
                req.name,
                f"Precondition failed: UID in precondition: {meta['uid']}, "
                f"UID in object meta: {old_meta['uid']}",
            )
        for fld in ("uid", "creationTimestamp", "deletionTimestamp"):
            if fld in old_meta:
                meta[fld] = old_meta[fld]
            else:
                meta.pop(fld, None)
        if rt.namespaced:
            meta["namespace"] = req.namespace
        self._normalize(rt, new)
        self._validate(rt, new, old)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return 200, copy.deepcopy(old)  # no-op: kube does not write (resourceVersion stays)
        if req.dry_run:
            return 200, copy.deepcopy(new)
        meta["resourceVersion"] = self._next_rv()
        self._store(rt)[(req.namespace or "" if rt.namespaced else "", req.name)] = new
        return 200, copy.deepcopy(new)

    def _update(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        obj = self._decode_body(req)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != req.name:
            raise _bad_request(
                f"the name of the object ({meta.get('name') or ''}) does not match the name on "
                f"the URL ({req.name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != req.namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self._lock:
            return self._commit_update(req, self._existing(req, rt), obj)

    def _patch(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        ctype = req.content_type
        supported = (
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        )
        if ctype not in supported:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(supported)}",
            )
        try:
            patch = json.loads(req.body or b"null")
        except ValueError as exc:
            raise _bad_request("error decoding patch: invalid JSON") from exc
        if ctype == "application/json-patch+json" and not isinstance(patch, list):
            kind = "object" if isinstance(patch, dict) else type(patch).__name__
            raise _bad_request(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
        if ctype != "application/json-patch+json" and not isinstance(patch, dict):
            raise _bad_request(
                "error decoding patch: json: cannot unmarshal non-object into Go value of type "
                "map[string]interface {}"
            )
        with self._lock:
            old = self._existing(req, rt)
            if ctype == "application/json-patch+json":
                try:
                    new = json_patch(old, patch)
                except JsonPatchError as exc:
                    raise KubeError(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our request: {exc}",
                        _details(rt, req.name, rt.kind),
                    ) from exc
            elif ctype == "application/merge-patch+json":
                new = merge_patch(old, patch)
            else:
                new = strategic_merge_patch(old, patch)
            if not isinstance(new, dict):
                raise _bad_request("the patched object is not a JSON object")
            _check_types(rt, new)
            meta = new.get("metadata") or {}
            if meta.get("name") != req.name:
                raise _invalid(
                    rt,
                    req.name,
                    [FieldError("Invalid", "metadata.name", "field is immutable", meta.get("name"))],
                )
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            return self._commit_update(req, old, new)

    def _delete(self, req: _Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        opts: JSON = {}
        if req.body:
            try:
                opts = json.loads(req.body) or {}
            except ValueError as exc:
                raise _bad_request("invalid DeleteOptions") from exc
        pre = opts.get("preconditions") or {} if isinstance(opts, dict) else {}
        with self._lock:
            key = _object_key(req, rt)
            old = self._existing(req, rt)
            for fld, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                want = pre.get(fld)
                if want and want != old["metadata"].get(fld):
                    raise _conflict(
                        rt,
                        req.name,
                        f"Precondition failed: {label} in precondition: {want}, {label} in "
                        f"object meta: {old['metadata'].get(fld)}",
                    )
            if rt.plural == "namespaces":
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = _now()
                new["status"] = {"phase": "Terminating"}
                if not req.dry_run:
                    new["metadata"]["resourceVersion"] = self._next_rv()
                    self._store(rt)[key] = new
                return 200, copy.deepcopy(new)
            if not req.dry_run:
                del self._store(rt)[key]
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {**_details(rt, req.name), "uid": old["metadata"]["uid"]},
            }

    # ---- reviews and token requests ----------------------------------------------------------

    def _review_body(self, req: _Request) -> JSON:
        try:
            body = json.loads(req.body or b"{}")
        except ValueError as exc:
            raise _bad_request("couldn't get version/kind; json parse error") from exc
        if not isinstance(body, dict):
            raise _bad_request("the request body must be an object")
        return body

    def _review(self, req: _Request, ident: _Identity) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None
        body = self._review_body(req)
        spec = body.get("spec") or {}
        base = {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": {"creationTimestamp": None}}
        if rt.plural == "selfsubjectreviews":
            return 201, {**base, "status": {"userInfo": self._user_info(ident)}}
        if rt.plural == "selfsubjectaccessreviews":
            ra = spec.get("resourceAttributes")
            nra = spec.get("nonResourceAttributes")
            if ra:
                allowed = self._allowed(
                    ident,
                    ra.get("verb", ""),
                    ra.get("group", ""),
                    ra.get("resource", ""),
                    ra.get("subresource") or None,
                    ra.get("namespace") or None,
                    ra.get("name") or None,
                )
            elif nra:
                allowed = ident.rules is None or nra.get("path") in ("/version", "/api", "/apis")
            else:
                raise _invalid(
                    rt,
                    "",
                    [
                        FieldError(
                            "Required",
                            "spec.resourceAttributes",
                            "exactly one of nonResourceAttributes or resourceAttributes must be specified",
                        )
                    ],
                )
            status: JSON = {"allowed": allowed}
            if allowed:
                status["reason"] = "allowed by the test server's rules"
            return 201, {**base, "spec": spec, "status": status}
        # TokenReview
        token = spec.get("token") or ""
        audiences = list(spec.get("audiences") or [])
        result = self._review_token(token, audiences)
        return 201, {**base, "spec": spec, "status": result}  # kube echoes the spec

    def _user_info(self, ident: _Identity) -> JSON:
        info: JSON = {
            "username": ident.user,
            "groups": [*ident.groups, "system:authenticated"],
        }
        if ident.uid:
            info["uid"] = ident.uid
        if ident.extra:
            info["extra"] = copy.deepcopy(ident.extra)
        return info

    def _review_token(self, token: str, audiences: list[str]) -> JSON:
        wanted = audiences or list(self.api_audiences)
        failed = {"authenticated": False, "user": {}, "error": "[invalid bearer token, unknown]"}
        if token.count(".") == 2:
            try:
                claims = jwt.decode(
                    token,
                    self.signing_key.public_key(),
                    algorithms=["RS256"],
                    issuer=self.issuer,
                    options={"verify_aud": False, "require": ["exp", "iat", "sub"]},
                    leeway=0,
                )
            except jwt.PyJWTError as exc:
                return {**failed, "error": f"[invalid bearer token, {type(exc).__name__}]"}
            token_aud = claims.get("aud") or []
            token_aud = [token_aud] if isinstance(token_aud, str) else list(token_aud)
            matched = [a for a in wanted if a in token_aud]
            if not matched:
                return {
                    **failed,
                    "error": (
                        f"[invalid bearer token, token audiences {json.dumps(token_aud)} is "
                        f"invalid for the target audiences {json.dumps(wanted)}, unknown]"
                    ),
                }
            ident = self._identity(token)
            kio = claims.get("kubernetes.io") or {}
            sa = kio.get("serviceaccount") or {}
            if ident is None:
                # signed by us but not registered (e.g. SA deleted): validate the SA like kube
                stored = self.get_object("serviceaccounts", kio.get("namespace"), sa.get("name", ""))
                if stored is None or stored["metadata"]["uid"] != sa.get("uid"):
                    return {**failed, "error": "[invalid bearer token, service account deleted]"}
                ident = _Identity(
                    claims["sub"],
                    sa.get("uid", ""),
                    ["system:serviceaccounts", f"system:serviceaccounts:{kio.get('namespace')}"],
                    None,
                )
            return {"authenticated": True, "user": self._user_info(ident), "audiences": matched}
        ident = self._identity(token) if token else None
        if ident is None:
            return failed
        return {"authenticated": True, "user": self._user_info(ident), "audiences": wanted}

    def _token_request(self, req: _Request) -> tuple[int, Any]:
        assert req.namespace is not None and req.name
        body = self._review_body(req)
        spec = body.get("spec") or {}
        ttl = int(spec.get("expirationSeconds") or 3600)
        if ttl < 600:
            raise _invalid(
                _BY_PATH[("", "v1", "serviceaccounts")],
                req.name,
                [
                    FieldError(
                        "Invalid",
                        "spec.expirationSeconds",
                        "may not specify a duration less than 10 minutes",
                        ttl,
                    )
                ],
            )
        with self._lock:
            self._require_namespace(req, for_create=True)
            if self._objects[("", "serviceaccounts")].get((req.namespace, req.name)) is None:
                raise _not_found(_BY_PATH[("", "v1", "serviceaccounts")], req.name)
        token = self.issue_service_account_token(req.namespace, req.name, spec.get("audiences") or None, ttl)
        exp = dt.datetime.fromtimestamp(time.time() + ttl, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return 201, {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": req.name, "namespace": req.namespace, "creationTimestamp": None},
            "spec": {**spec, "expirationSeconds": ttl},
            "status": {"token": token, "expirationTimestamp": exp},
        }


def iter_records(records: Iterable[RequestRecord], **attrs: Any) -> Iterator[RequestRecord]:
    """Records whose attributes equal all of ``attrs`` (e.g. ``verb="patch"``)."""
    for rec in records:
        if all(getattr(rec, k) == v for k, v in attrs.items()):
            yield rec
