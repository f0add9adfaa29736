"""The test server's non-resource paths: version, health and API discovery documents."""

from __future__ import annotations

import re
from typing import Any

from tests.support.kubeapi_http import Request
from tests.support.kubeapi_resources import RESOURCES
from tests.support.kubeapi_status import KubeError


def non_resource(req: Request, port: int) -> tuple[int, Any]:
    """/version, the health endpoints and API discovery (/api, /apis, /api/v1, /apis/G/v1)."""
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
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": f"127.0.0.1:{port}"}],
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
