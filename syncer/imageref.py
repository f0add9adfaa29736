"""Image references as a container runtime reads them (``[HOST/]NAME[:TAG][@DIGEST]``). Pure.

The grammar is distribution's reference grammar
(https://github.com/distribution/reference/blob/main/reference.go): lower-case path components
joined by ``/``, a tag of at most 128 word characters, dots and dashes, and a digest
``ALGORITHM:HEX``. A name whose first component has a ``.`` or ``:`` or is ``localhost`` starts
with a registry host; Docker Hub's one-component names live under ``library/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*\Z")
_TAG = re.compile(r"[\w][\w.-]{0,127}\Z")
_DIGEST = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}\Z")
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}\Z")
MAX_NAME = 255
"""distribution refuses repository names longer than this."""
DOCKER_HUB = frozenset({"docker.io", "index.docker.io", "registry-1.docker.io"})


@dataclass(frozen=True)
class ImageRef:
    """One image on one registry host."""

    repository: str
    """The repository name on the registry (``nvidia/pytorch``, ``library/ubuntu``)."""
    reference: str
    """The tag or the digest the manifest is fetched by (a digest wins over a tag)."""
    text: str
    """The reference as configured, for messages and the ``image`` metric label."""


def _hostport(key: str) -> str:
    """``host[:port]`` of an auths key or registry host, lower-case, without scheme or path."""
    rest = key.strip()
    for scheme in ("https://", "http://"):
        if rest.lower().startswith(scheme):
            rest = rest[len(scheme):]
    return rest.split("/", 1)[0].lower()


def same_registry(a: str, b: str) -> bool:
    """True when two hosts name the same registry (Docker Hub's aliases are one registry)."""
    ha, hb = _hostport(a), _hostport(b)
    return ha == hb or (ha in DOCKER_HUB and hb in DOCKER_HUB)


def _split_host(text: str) -> tuple[str, str]:
    """(host, rest) when ``text`` starts with a registry host, else ("", text)."""
    first, sep, rest = text.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest
    return "", text


def parse_image(text: str, registry_host: str) -> ImageRef:
    """Parse ``text`` as an image on ``registry_host``. Raises ValueError with the reason.

    A reference may name the host itself; another host is an error (the credentials of one
    registry say nothing about another). Without a tag or digest the tag is ``latest``.
    """
    value = text.strip()
    if not value or value != text:
        raise ValueError(f"is not an image reference (got {text!r})")
    host, rest = _split_host(value)
    if host and not same_registry(host, registry_host):
        raise ValueError(f"names the host {host!r}, not this registry's host {_hostport(registry_host)!r}; "
                         "canary images must live on the registry whose credentials they check")
    name, at, digest = rest.partition("@")
    tag, tagged = "", False
    last_slash = name.rfind("/")
    if ":" in name[last_slash + 1:]:
        name, _, tag = name.rpartition(":")
        tagged = True
    if at and not (_DIGEST.match(digest) and (not digest.startswith("sha256:") or _SHA256.match(digest))):
        raise ValueError(f"has an invalid digest {digest!r} (expected sha256:<64 hex digits>)")
    if tagged and not _TAG.match(tag):
        raise ValueError(f"has an invalid tag {tag!r}")
    components = name.split("/")
    if not name or not all(_COMPONENT.match(c) for c in components):
        raise ValueError(f"has an invalid repository name {name!r} (lower-case letters, digits and "
                         "'.', '_', '-' separators, components joined by '/')")
    if _hostport(registry_host) in DOCKER_HUB and len(components) == 1:
        name = "library/" + name
    if len(name) > MAX_NAME:
        raise ValueError(f"has a repository name longer than {MAX_NAME} characters")
    return ImageRef(repository=name, reference=digest or tag or "latest", text=value)
