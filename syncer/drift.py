"""Drift and prune decisions for one target. Pure: no I/O, no secret material in what it returns.

Drift is a managed entry that differs from Vault while Vault is unchanged: someone edited
the secret by hand. "Vault unchanged" needs a basis that is not secret material, so each
write records the KV v2 version it wrote per host (annotation ``registry-syncer.io/vault-versions``,
e.g. ``nvcr.io=3,quay.io=7``). When Vault's version is still the recorded one and the entry
differs, that is drift; when the version moved, it is a rotation. With KV v1 there is no
version, so every difference is treated as a rotation and applied (documented limit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from syncer import dockerconfig
from syncer.credential import Credential
from syncer.hosts import is_registry_host
from syncer.text import safe_list


def split_hosts(text: str) -> tuple[list[str], list[str]]:
    """The managed-hosts annotation ``a,b`` -> (valid hosts, ignored items).

    The annotation is ours, but anyone who may edit the Secret can edit it too: only items that
    are registry hosts (as the config accepts them) are taken, so nothing else can reach a log
    line, a prune decision or a rewritten annotation.
    """
    hosts: list[str] = []
    ignored: list[str] = []
    for item in text.split(","):
        if item:
            (hosts if is_registry_host(item) else ignored).append(item)
    return hosts, ignored


def parse_hosts(text: str) -> list[str]:
    """``a,b`` -> ``["a", "b"]``: the valid hosts of the managed-hosts annotation."""
    return split_hosts(text)[0]


def ignored_warning(ignored: list[str]) -> str:
    """One bounded line about ignored annotation items: their count and the first few, escaped."""
    return (f"ignored {len(ignored)} invalid item(s) in the managed-hosts annotation: "
            f"{safe_list(ignored, limit=40, items=3)}")


_MAX_VERSION_DIGITS = 18
"""A KV version fits in 18 digits; longer (or non-ASCII) digit strings are someone's edit."""


def parse_versions(text: str) -> dict[str, int]:
    """``nvcr.io=3,quay.io=7`` -> ``{"nvcr.io": 3, "quay.io": 7}``; bad items are ignored."""
    versions = {}
    for item in text.split(","):
        host, sep, number = item.rpartition("=")
        # isdigit() alone admits "²" and 5,000-digit numbers, which int() refuses (ValueError).
        if (sep and is_registry_host(host) and number.isascii() and number.isdigit()
                and len(number) <= _MAX_VERSION_DIGITS):
            versions[host] = int(number)
    return versions


def format_versions(versions: Mapping[str, int]) -> str:
    """The inverse of parse_versions, sorted so unchanged state compares equal."""
    return ",".join(f"{h}={v}" for h, v in sorted(versions.items()))


def drifted(doc: Mapping[str, Any], wanted: Mapping[str, tuple[Credential, str, int | None]],
            recorded: Mapping[str, int]) -> list[str]:
    """Hosts whose entry differs from Vault although Vault's version is the one last written."""
    auths = doc.get("auths", {})
    hosts = []
    for host, (credential, email, version) in wanted.items():
        if version is None or recorded.get(host) != version:
            continue
        key = dockerconfig.find_key(doc, host)
        old = auths.get(key) if key is not None else None
        if old != dockerconfig.build_entry(old, credential, email):
            hosts.append(host)
    return sorted(hosts)


def unconfigured(managed: Iterable[str], configured: Iterable[str]) -> list[str]:
    """Managed hosts no longer configured for the target (the prune candidates)."""
    keep = {dockerconfig.normalize_key(h) for h in configured}
    return sorted(h for h in managed if dockerconfig.normalize_key(h) not in keep)
