"""Kubelet's keyring matching (syncer.keyring), table-driven from the behaviour documented in
Kubernetes' pkg/credentialprovider/keyring.go and its tests: globs per host label, equal label
counts, ports, path prefixes, the /v1/ and /v2/ suffixes, the order and Docker Hub fallback."""

from __future__ import annotations

import pytest

from syncer.keyring import index_key, lookup, lookup_sources, matches, repository_of

# (key as the index holds it, looked-up repository, match?)
MATCH_CASES = [
    ("*.kubernetes.io", "prefix.kubernetes.io", True),
    ("prefix.*.io", "prefix.kubernetes.io", True),
    ("prefix.kubernetes.*", "prefix.kubernetes.io", True),
    ("*-good.kubernetes.io", "prefix-good.kubernetes.io", True),  # a partial label glob
    ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", True),
    ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", True),
    ("*.kubernetes.io:1111/blah", "prefix.kubernetes.io:1111/blah", True),
    ("prefix.*.io:1111/foo", "prefix.kubernetes.io:1111/foo/bar", True),
    ("*.kubernetes.io", "kubernetes.io", False),  # label counts differ
    ("*.*.kubernetes.io", "prefix.kubernetes.io", False),
    ("*.*.kubernetes.io", "kubernetes.io", False),
    ("kubernetes.io", "kubernetes.com", False),
    ("k*.io", "quay.io", False),
    ("*.kubernetes.io:1234/blah", "prefix.kubernetes.io:1111/blah", False),  # ports differ
    ("prefix.*.io/foo", "prefix.kubernetes.io:1111/foo/bar", False),  # a port on one side only
    ("quay.io/core", "quay.io/coreos/etcd", True),  # the path is a string prefix, not per component
    ("quay.io/coreos", "quay.io/other/etcd", False),
    ("*.io", "a.k8s.io", False),  # a glob never spans a dot
    ("registry[0-9].corp", "registry7.corp", True),
    ("registry[^0-9].corp", "registry7.corp", False),
    ("registry[.corp", "registry[.corp", False),  # a malformed glob matches nothing
    ("Quay.io", "quay.io/x", False),  # case-sensitive, as kubelet's filepath.Match
]


@pytest.mark.parametrize(("key", "image", "expected"), MATCH_CASES)
def test_matches(key: str, image: str, expected: bool) -> None:
    assert matches(key, image) is expected


# (auths key as stored, image repository that must find it)
HIT_CASES = [
    ("https://hello.kubernetes.io", "hello.kubernetes.io"),
    ("https://*.docker.io", "prefix.docker.io"),
    ("https://prefix.*.io", "prefix.docker.io"),
    ("https://prefix.docker.*", "prefix.docker.io"),
    ("https://*.docker.io/path", "prefix.docker.io/path"),
    ("https://prefix.*.io/path", "prefix.docker.io/path/subpath"),
    ("https://*.docker.io:8888", "prefix.docker.io:8888"),
    ("https://*.docker.io/path:1111", "prefix.docker.io/path:1111"),
    ("https://*.docker.io/v1/", "prefix.docker.io/path:1111"),  # /v1/ and /v2/ are ignored
    ("https://*.docker.io/v2/", "prefix.docker.io/path:1111"),
    ("prefix.docker.io:1111", "prefix.docker.io:1111/path"),  # no scheme: https assumed
    ("*.docker.io:1111", "prefix.docker.io:1111/path"),
    ("http://nvcr.io", "nvcr.io"),  # the scheme is ignored
]


@pytest.mark.parametrize(("key", "target"), HIT_CASES)
def test_lookup_finds(key: str, target: str) -> None:
    assert lookup([key], target + "/foo/bar") == [key]


MISS_CASES = [
    ("https://hello.kubernetes.io", "world.mesos.org"),
    ("https://*.docker.com", "prefix.docker.io"),
    ("https://suffix.*.io", "prefix.docker.io"),
    ("https://prefix.docker.c*", "prefix.docker.io"),
    ("https://prefix.*.io/path:1111", "prefix.docker.io/path/subpath:1111"),
    ("suffix.*.io", "prefix.docker.io"),
    ("ftp://nvcr.io", "nvcr.io"),  # not a registry URL kubelet reads
    ("nvcr.io:port", "nvcr.io"),  # an invalid port: the entry is ignored
]


@pytest.mark.parametrize(("key", "target"), MISS_CASES)
def test_lookup_misses(key: str, target: str) -> None:
    assert lookup([key], target + "/foo/bar") == []


@pytest.mark.parametrize(("image", "hit"), [
    ("docker.io/google/docker-registry", True), ("docker.io/library/jenkins", True),
    ("index.docker.io/google/docker-registry", True), ("world.mesos.org/foo/bar", False),
    ("registry.tld/foo/bar", False), ("registry:5000/foo/bar", False),
    ("myhostdocker.io/foo/bar", False),
])
def test_docker_hub_entry_is_the_fallback_for_hub_images_only(image: str, hit: bool) -> None:
    assert lookup(["https://index.docker.io/v1/"], image) == (["https://index.docker.io/v1/"] if hit else [])


def test_more_specific_keys_come_first_and_every_match_is_returned() -> None:
    keys = ["quay.io", "quay.io/coreos", "*.quay.io", "https://quay.io/coreos/etcd", "other.io"]
    assert lookup(keys, "quay.io/coreos/etcd") == ["https://quay.io/coreos/etcd", "quay.io/coreos",
                                                   "quay.io"]
    assert lookup(keys, "eu.quay.io/team/app") == ["*.quay.io"]


def test_keys_that_index_the_same_are_tried_together() -> None:
    assert index_key("https://nvcr.io/v2/") == index_key("nvcr.io") == "nvcr.io"
    assert lookup(["nvcr.io", "https://nvcr.io/v1/"], "nvcr.io/nvidia/pytorch") == [
        "https://nvcr.io/v1/", "nvcr.io"]


@pytest.mark.parametrize(("image", "repository"), [
    ("ubuntu", "docker.io/library/ubuntu"),
    ("ubuntu:22.04", "docker.io/library/ubuntu"),
    ("bitnami/redis", "docker.io/bitnami/redis"),
    ("index.docker.io/library/ubuntu", "docker.io/library/ubuntu"),
    ("nvcr.io/nvidia/pytorch:24.01-py3", "nvcr.io/nvidia/pytorch"),
    ("localhost:5000/team/app@sha256:" + "a" * 64, "localhost:5000/team/app"),
    ("localhost/app", "localhost/app"),
])
def test_repository_of_normalises_like_kubelet(image: str, repository: str) -> None:
    assert repository_of(image) == repository


@pytest.mark.parametrize("image", ["", "UPPER/case", "nvcr.io/", "a/b:bad tag", "a@sha256:12"])
def test_repository_of_refuses_what_is_not_a_reference(image: str) -> None:
    with pytest.raises(ValueError):
        repository_of(image)


def test_lookup_sources_merges_secrets_into_one_keyring() -> None:
    """Kubelet's secretsToTrackedDockerConfigs: one keyring over every pull secret, in order."""
    sources = [("a", ["quay.io", "index.docker.io"]), ("b", ["quay.io/team", "https://quay.io/v2/"]),
               ("c", ["quay.io"])]
    assert lookup_sources(sources, "quay.io/team/app") == [
        ("b", "quay.io/team"), ("a", "quay.io"), ("b", "https://quay.io/v2/"), ("c", "quay.io")]
    assert lookup_sources(sources, "docker.io/library/ubuntu") == [("a", "index.docker.io")]
    assert lookup_sources(sources, "nvcr.io/nvidia/pytorch") == []
