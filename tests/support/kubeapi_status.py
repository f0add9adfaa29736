"""kube ``Status`` errors and their builders (NotFound, Conflict, Invalid ...) for the test server."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.kubeapi_resources import JSON, ResourceType


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


def status_details(rt: ResourceType | None, name: str | None, kind: str | None = None) -> JSON:
    out: JSON = {}
    if name:
        out["name"] = name
    if rt is not None and rt.group:
        out["group"] = rt.group
    if kind or rt is not None:
        out["kind"] = kind or (rt.plural if rt else "")
    return out


def not_found(rt: ResourceType, name: str) -> KubeError:
    return KubeError(404, "NotFound", f'{rt.qualified} "{name}" not found', status_details(rt, name))


def ns_not_found(namespace: str) -> KubeError:
    return KubeError(
        404,
        "NotFound",
        f'namespaces "{namespace}" not found',
        {"name": namespace, "kind": "namespaces"},
    )


def conflict(rt: ResourceType, name: str, detail: str | None = None) -> KubeError:
    detail = detail or (
        "the object has been modified; please apply your changes to the latest version and try again"
    )
    return KubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {detail}',
        status_details(rt, name),
    )


def bad_request(message: str) -> KubeError:
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


def invalid_error(rt: ResourceType, name: str, errors: list[FieldError]) -> KubeError:
    text = str(errors[0]) if len(errors) == 1 else "[" + ", ".join(map(str, errors)) + "]"
    details = status_details(rt, name, rt.kind)
    details["causes"] = [e.cause() for e in errors]
    return KubeError(422, "Invalid", f'{rt.qualified_kind} "{name}" is invalid: {text}', details)


DEFAULT_REASONS = {
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
