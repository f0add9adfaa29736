"""Registry host keys as kubelet compares them. Pure; shared by config validation and the merge."""

from __future__ import annotations

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
