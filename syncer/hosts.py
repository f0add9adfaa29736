"""Registry host keys as kubelet compares them. Pure; shared by config validation and the merge."""

from __future__ import annotations

import re
from functools import lru_cache


@lru_cache(maxsize=4096)  # the same few hundred keys, once per secret per cycle
def normalize_key(key: str) -> str:
    """Reduce an ``auths`` key to what kubelet matches on: host[:port][/path], lower-case host.

    The scheme and a ``/v1/`` or ``/v2/`` suffix are ignored, see
    https://kubernetes.io/docs/concepts/containers/images/#config-json
    """
    rest = key.strip()
    for scheme in ("https://", "http://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme):]
    rest = rest.rstrip("/")
    for suffix in ("/v1", "/v2"):
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
    host, sep, path = rest.partition("/")
    return host.lower() + sep + path


# The one registry-host pattern: config validation accepts a host only if it matches, and text read
# back from a Secret (the managed-hosts annotation, which tenants can edit) is taken only when it
# matches, i.e. when it could have been written by us. The path may hold any printable character but
# whitespace and ',' (the annotation's separator), so every configured host survives the round trip
# through the annotation; the lengths are bounded (a DNS name, a 255-character path).
_REGISTRY_HOST = re.compile(
    r"(https://)?[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(:\d{1,5})?(/[^\s,]{0,255})?\Z")


def is_registry_host(text: str) -> bool:
    """True for ``host[:port][/path]`` (a DNS name or IPv4 address); False for anything else,
    including controls, bidi and zero-width characters anywhere (``str.isprintable``)."""
    return text.isprintable() and _REGISTRY_HOST.match(text) is not None
