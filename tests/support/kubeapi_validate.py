"""Validation the way kube-apiserver validates: DNS-1123 names, labels, annotations, Secret data
(base64, the dockerconfigjson shape, the 1 MiB limit, type immutability), Leases and Events.
Pure functions: they fill a list of FieldErrors or raise a 400 KubeError."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from tests.support.kubeapi_resources import JSON, ResourceType
from tests.support.kubeapi_status import FieldError, KubeError, bad_request

MAX_SECRET_BYTES = 1024 * 1024
MAX_ANNOTATIONS_BYTES = 256 * 1024
SECRET_REDACTED = "<secret contents redacted>"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
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


def valid_label_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if "/" in key and not prefix:
        return False
    if prefix and (len(prefix) > 253 or not DNS1123_SUBDOMAIN_RE.fullmatch(prefix)):
        return False
    return 0 < len(name) <= 63 and bool(_QUALIFIED_NAME_RE.fullmatch(name))


def valid_label_value(value: str) -> bool:
    return value == "" or (len(value) <= 63 and bool(_QUALIFIED_NAME_RE.fullmatch(value)))


# validation


def validate_meta(rt: ResourceType, obj: JSON, errors: list[FieldError]) -> None:
    meta = obj.get("metadata") or {}
    name = meta.get("name", "")
    if rt.plural == "namespaces":
        if len(name) > 63 or not DNS1123_LABEL_RE.fullmatch(name):
            errors.append(FieldError("Invalid", "metadata.name", _LABEL_MSG, name))
    elif len(name) > 253 or not DNS1123_SUBDOMAIN_RE.fullmatch(name):
        errors.append(FieldError("Invalid", "metadata.name", _SUBDOMAIN_MSG, name))
    for key, value in (meta.get("labels") or {}).items():
        if not valid_label_key(key):
            errors.append(FieldError("Invalid", "metadata.labels", "name part must be a valid label", key))
        if not valid_label_value(value):
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
        if not valid_label_key(key.lower()):
            errors.append(FieldError("Invalid", "metadata.annotations", "name part must be valid", key))
    if total > MAX_ANNOTATIONS_BYTES:
        errors.append(
            FieldError("TooLong", "metadata.annotations", f"must have at most {MAX_ANNOTATIONS_BYTES} bytes")
        )


def check_types(rt: ResourceType, obj: Any) -> None:
    """The decoding step: shapes a Go client could not even unmarshal are 400s."""
    prefix = f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: json: '

    def bad(what: str, where: str, want: str) -> KubeError:
        return bad_request(f"{prefix}cannot unmarshal {what} into Go struct field {where} of type {want}")

    if not isinstance(obj, dict):
        raise bad_request(f"{prefix}cannot unmarshal non-object into Go value of type {rt.kind}")
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


def validate_kind(rt: ResourceType, obj: JSON, old: JSON | None, errors: list[FieldError]) -> None:
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
