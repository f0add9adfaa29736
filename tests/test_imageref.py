"""Image references parsed against a registry host (syncer.imageref), table-driven.

Cases follow distribution's reference grammar
(https://github.com/distribution/reference/blob/main/reference.go).
"""

from __future__ import annotations

import pytest

from syncer.imageref import parse_image, same_registry

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "host", "repository", "reference"), [
    ("nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3"),
    ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io", "nvidia/pytorch", "24.01-py3"),
    ("team/app", "quay.io", "team/app", "latest"),
    (f"team/app@{DIGEST}", "quay.io", "team/app", DIGEST),
    (f"team/app:v1@{DIGEST}", "quay.io", "team/app", DIGEST),
    ("ubuntu", "docker.io", "library/ubuntu", "latest"),
    ("index.docker.io/ubuntu:22.04", "docker.io", "library/ubuntu", "22.04"),
    ("ubuntu", "quay.io", "ubuntu", "latest"),
    ("localhost:5000/a/b:1", "localhost:5000", "a/b", "1"),
    ("harbor.example.com:8443/p/x_y.z-w:tag", "https://harbor.example.com:8443", "p/x_y.z-w", "tag"),
    ("a__b/c-----d:T_1.x", "r.io", "a__b/c-----d", "T_1.x"),
])
def test_valid_references(text: str, host: str, repository: str, reference: str) -> None:
    image = parse_image(text, host)
    assert (image.repository, image.reference, image.text) == (repository, reference, text)


@pytest.mark.parametrize(("text", "host", "why"), [
    ("ghcr.io/team/app:v1", "quay.io", "names the host"),
    ("nvcr.io:443/nvidia/x", "nvcr.io", "names the host"),
    ("Team/App", "quay.io", "invalid repository name"),
    ("team//app", "quay.io", "invalid repository name"),
    ("team/app:", "quay.io", "invalid tag"),
    ("team/-app", "quay.io", "invalid repository name"),
    ("team/app:-v1", "quay.io", "invalid tag"),
    ("team/app:" + "t" * 129, "quay.io", "invalid tag"),
    ("team/app@sha256:abc", "quay.io", "invalid digest"),
    ("team/app@sha256:" + "AB" * 32, "quay.io", "invalid digest"),
    ("team/app@md5", "quay.io", "invalid digest"),
    (" team/app", "quay.io", "not an image reference"),
    ("", "quay.io", "not an image reference"),
    ("a/" + "b" * 260, "quay.io", "longer than 255"),
    ("team/app\n:v1", "quay.io", "invalid"),
])
def test_invalid_references_say_why(text: str, host: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_image(text, host)


@pytest.mark.parametrize(("a", "b", "same"), [
    ("docker.io", "index.docker.io", True),
    ("registry-1.docker.io", "docker.io", True),
    ("https://Quay.IO/v2/", "quay.io", True),
    ("quay.io", "quay.io:443", False),
    ("ghcr.io", "quay.io", False),
])
def test_same_registry(a: str, b: str, same: bool) -> None:
    assert same_registry(a, b) is same
