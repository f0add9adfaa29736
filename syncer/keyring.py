"""Which ``auths`` entry kubelet uses for an image: its keyring matching, written anew. Pure.

The rules follow Kubernetes ``pkg/credentialprovider/keyring.go`` (``BasicDockerKeyring``):

* A key may carry a scheme (``https://`` is assumed when it has none) and a ``/v1/`` or ``/v2/``
  path prefix, both ignored; what remains is ``host[:port][/path]``.
* The keys are de-duplicated and sorted in *reverse* lexical order, so ``quay.io/coreos`` is
  tried before ``quay.io`` (more specific paths first).
* A key matches an image when the ports are equal (none = none), the hosts have the same
  number of dot-separated labels and each label matches as a glob (``*.docker.io``, ``k8s.*``,
  ``app*.example.com``; a glob never spans a dot), and the key's path is a *string* prefix of
  the image's path (so ``quay.io/core`` also matches ``quay.io/coreos/etcd``).
* Every matching key is returned, in that order: kubelet tries them one after the other.
* No match, and the image is a Docker Hub one (no ``.``/``:`` in its first component, or
  ``docker.io``/``index.docker.io``): the entry for ``index.docker.io`` is used.

Kubelet looks up the image's normalised repository (``docker.io/library/ubuntu`` for ``ubuntu``,
``nvcr.io/nvidia/pytorch`` for ``nvcr.io/nvidia/pytorch:24.01-py3``), see ``repository_of``.
Hosts are compared case-sensitively, as kubelet's ``filepath.Match`` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from syncer.imageref import DOCKER_HUB, parse_image

DEFAULT_REGISTRY = "index.docker.io"


def _split(schemeless: str) -> tuple[str, str]:
    """(host[:port], path) of ``https://`` + ``schemeless`` as Go's url.Parse reads it."""
    rest = schemeless
    for sep in "?#":
        rest = rest.split(sep, 1)[0]
    host, slash, path = rest.partition("/")
    return host, slash + path


def index_key(key: str) -> str | None:
    """The keyring's index key for an ``auths`` key, or None when kubelet ignores the entry."""
    value = key
    for scheme in ("https://", "http://"):
        if value.startswith(scheme):
            value = value[len(scheme):]
            break
    else:
        if "://" in value:
            return None  # url.Parse would read another scheme's URL; kubelet never matches it
    host, path = _split(value)
    if not host or any(c.isspace() for c in host) or _host_port(host) is None:
        return None
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return host + path if path and path != "/" else host


def _host_port(host: str) -> tuple[str, str] | None:
    """(host, port) as net.SplitHostPort splits it (port "" when there is none), or None when
    the port is not a number (url.Parse refuses those)."""
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            return None
        name, rest = host[1:end], host[end + 1:]
        if not rest:
            return name, ""
        return (name, rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    name, colon, port = host.rpartition(":")
    if not colon:
        return host, ""
    if ":" in name:
        return host, ""  # a bare IPv6 address: SplitHostPort fails, the whole host is kept
    return (name, port) if port.isdigit() or not port else None


def _glob(pattern: str) -> re.Pattern[str] | None:
    """Go's filepath.Match syntax (``*``, ``?``, ``[...]`` with ``^`` negation, ``\\`` escapes)
    as a regex; None for a malformed pattern, which matches nothing."""
    out, i = [], 0
    while i < len(pattern):
        char = pattern[i]
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "\\":
            if i + 1 >= len(pattern):
                return None
            i += 1
            out.append(re.escape(pattern[i]))
        elif char == "[":
            end = pattern.find("]", i + 2 if pattern[i + 1:i + 2] == "^" else i + 1)
            if end < 0:
                return None
            body = pattern[i + 1:end]
            negate = body.startswith("^")
            body = body[1:] if negate else body
            if not body:
                return None
            out.append(f"[{'^' if negate else ''}{re.escape(body).replace(chr(92) + '-', '-')}]")
            i = end
        else:
            out.append(re.escape(char))
        i += 1
    try:
        return re.compile("".join(out) + r"\Z")
    except re.error:
        return None


def matches(key: str, image: str) -> bool:
    """True when the index key ``key`` matches the repository ``image`` (both schemeless)."""
    key_host, key_path = _split(key)
    image_host, image_path = _split(image)
    key_hp, image_hp = _host_port(key_host), _host_port(image_host)
    if key_hp is None or image_hp is None or key_hp[1] != image_hp[1]:
        return False
    key_labels, image_labels = key_hp[0].split("."), image_hp[0].split(".")
    if len(key_labels) != len(image_labels) or not image_path.startswith(key_path):
        return False
    for glob, label in zip(key_labels, image_labels, strict=True):
        pattern = _glob(glob)
        if pattern is None or not pattern.match(label):
            return False
    return True


def _is_docker_hub(image: str) -> bool:
    first, slash, _rest = image.partition("/")
    if not first:
        return False
    if not slash or first in ("docker.io", DEFAULT_REGISTRY):
        return True
    return not any(c in first for c in ".:")


def lookup(keys: Iterable[str], image: str) -> list[str]:
    """The ``auths`` keys kubelet would try for ``image`` (a normalised repository), in order."""
    return [key for _source, key in lookup_sources([("", keys)], image)]


def lookup_sources(sources: Sequence[tuple[str, Iterable[str]]], image: str) -> list[tuple[str, str]]:
    """(source, key) pairs kubelet would try for ``image`` when several pull secrets are combined.

    Kubelet adds every pull secret of the pod, in ``imagePullSecrets`` order, to *one* keyring
    (``secretsToTrackedDockerConfigs`` in ``pkg/credentialprovider/secrets``): the most specific
    key wins across secrets, and for the same key the earlier secret is tried first."""
    index: dict[str, list[tuple[str, str]]] = {}
    for source, keys in sources:
        for key in sorted(keys):
            if (found := index_key(key)) is not None:
                index.setdefault(found, []).append((source, key))
    matched = [pair for found in sorted(index, reverse=True) if matches(found, image)
               for pair in index[found]]
    if not matched and _is_docker_hub(image):
        return list(index.get(DEFAULT_REGISTRY, []))
    return matched


def repository_of(image: str) -> str:
    """The normalised repository kubelet looks up for an image reference: ``docker.io/library/
    ubuntu`` for ``ubuntu:22.04``, ``nvcr.io/nvidia/pytorch`` for ``nvcr.io/nvidia/pytorch:24.01-py3``.
    Raises ValueError for a reference that is not one."""
    first, slash, _rest = image.partition("/")
    host = first if slash and ("." in first or ":" in first or first == "localhost") else "docker.io"
    ref = parse_image(image, host)
    return f"{'docker.io' if host in DOCKER_HUB else host}/{ref.repository}"
