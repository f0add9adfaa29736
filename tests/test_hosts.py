"""Registry host keys: kubelet's matching form (``normalize_key``) and the one host pattern
(``is_registry_host``) that config validation and the managed-hosts annotation share."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from syncer.config import ConfigError, from_mapping
from syncer.drift import format_versions, parse_hosts, parse_versions
from syncer.hosts import is_registry_host, normalize_key


@pytest.mark.parametrize(("key", "normal"), [
    ("nvcr.io", "nvcr.io"),
    ("https://nvcr.io/v1/", "nvcr.io"),
    ("HTTPS://NVCR.IO/v2", "nvcr.io"),
    ("https://index.docker.io/v1/", "index.docker.io"),
    ("Registry.Local:5000/Team/Repo/", "registry.local:5000/Team/Repo"),  # the path keeps its case
    ("http://r.io", "r.io"),
    ("  quay.io  ", "quay.io"),
])
def test_normalize_key_ignores_scheme_case_and_v1_v2_suffix(key: str, normal: str) -> None:
    assert normalize_key(key) == normal


@pytest.mark.parametrize("text", ["nvcr.io", "https://nvcr.io", "10.0.0.1:5000", "r.io/team/repo",
                                  "https://index.docker.io/v1/", "a", "r.io:5000/ünï/$+:'q=1"])
def test_registry_hosts(text: str) -> None:
    assert is_registry_host(text)


@pytest.mark.parametrize("text", ["", "http://r.io", "-r.io", "r.io-", "r io", "r.io:port",
                                  "r.io/a,b", "r.io/\u202eevil", "r.io/zero\u200bwidth", "r.io/\n", "r.io\n",
                                  "a" * 254,
                                  "r.io/" + "p" * 256, "user:pw@r.io", "r.io:123456"])
def test_not_registry_hosts(text: str) -> None:
    assert not is_registry_host(text)


def _config_accepts(host: str) -> bool:
    data: dict[str, Any] = {
        "vault": {"address": "https://v.example.com", "auth": {"method": "token", "token_file": "/t"}},
        "registries": [{"host": host, "path": "p"}],
        "targets": [{"namespace": "ns", "name": "pull"}],
    }
    try:
        from_mapping(data, {})
    except ConfigError:
        return False
    return True


_HOSTISH = st.text(alphabet="abcXYZ019.-:/,=_~ü\u202e\u200b\n\t https", min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(st.lists(_HOSTISH, min_size=1, max_size=3))
def test_every_configurable_host_survives_the_annotations(hosts: list[str]) -> None:
    """Config and annotation reader use one pattern: what the syncer may write as a managed host
    (or a host=version item) it reads back unchanged, so ownership is never lost on a round trip."""
    accepted = sorted({h for h in hosts if _config_accepts(h)})
    assert parse_hosts(",".join(accepted)) == accepted
    versions = {h: i for i, h in enumerate(accepted)}
    assert parse_versions(format_versions(versions)) == versions
