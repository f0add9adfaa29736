"""The test API server's watches, driven with a plain HTTP client (requests, streaming)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from tests.support.kube_fixtures import ADMIN_TOKEN
from tests.support.kubeapi import KubeAPIServer

SECRETS = "/api/v1/secrets"


class Stream:
    """One open watch response, read line by line on demand."""

    def __init__(self, resp: requests.Response) -> None:
        self.resp = resp
        self.lines = resp.iter_lines(chunk_size=1)

    def next(self) -> dict[str, Any]:
        """The next event (blocks; the read timeout is 5 s)."""
        for line in self.lines:
            if line:
                event: dict[str, Any] = json.loads(line)
                return event
        raise EOFError("stream ended")

    def take(self, n: int) -> list[tuple[str, str]]:
        """The next n events as (type, name)."""
        out = []
        for _ in range(n):
            event = self.next()
            out.append((event["type"], event["object"]["metadata"].get("name", "")))
        return out

    def rest(self) -> list[dict[str, Any]]:
        """Every event until the stream ends."""
        return [json.loads(line) for line in self.lines if line]


@contextmanager
def watch(kube: KubeAPIServer, ca_file: str, path: str, token: str = ADMIN_TOKEN,
          **query: str) -> Iterator[Stream]:
    resp = open_watch(kube, ca_file, path, token, **query)
    assert resp.status_code == 200, resp.text
    try:
        yield Stream(resp)
    finally:
        resp.close()


def open_watch(kube: KubeAPIServer, ca_file: str, path: str, token: str = ADMIN_TOKEN,
               **query: str) -> requests.Response:
    params = {"watch": "1", **query}
    return requests.get(kube.url + path, params=params, headers={"Authorization": f"Bearer {token}"},
                        verify=ca_file, stream=True, timeout=(5, 5))


def wait_open(kube: KubeAPIServer, n: int = 1) -> None:
    deadline = time.monotonic() + 5
    while kube.watches.open_count() < n:
        assert time.monotonic() < deadline, "the watch never opened"
        time.sleep(0.01)


def wait_closed(kube: KubeAPIServer) -> None:
    """The server thread unregisters a stream just after the client sees it break."""
    deadline = time.monotonic() + 5
    while kube.watches.open_count():
        assert time.monotonic() < deadline, "the dropped watch stayed registered"
        time.sleep(0.01)


def test_no_resource_version_sends_the_current_state_as_added_then_changes(
    kube: KubeAPIServer, ca_file: str
) -> None:
    kube.put_secret("a", "s1")
    kube.put_secret("b", "s2")
    with watch(kube, ca_file, SECRETS) as w:
        assert w.resp.headers["Transfer-Encoding"] == "chunked"
        assert w.take(2) == [("ADDED", "s1"), ("ADDED", "s2")]
        kube.put_secret("a", "s1", data={"k": "v"})
        kube.delete_secret("b", "s2")
        kube.put_secret("a", "s3")
        events = [w.next() for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("MODIFIED", "s1"), ("DELETED", "s2"), ("ADDED", "s3")]
    assert events[0]["object"]["kind"] == "Secret" and events[0]["object"]["apiVersion"] == "v1"
    rvs = [int(e["object"]["metadata"]["resourceVersion"]) for e in events]
    assert rvs == sorted(rvs) and len(set(rvs)) == 3, "a deletion has its own resourceVersion"


def test_resource_version_zero_also_starts_with_the_state(kube: KubeAPIServer, ca_file: str) -> None:
    kube.put_secret("a", "s1")
    with watch(kube, ca_file, SECRETS, resourceVersion="0") as w:
        assert w.take(1) == [("ADDED", "s1")]


def test_events_after_a_resource_version_only(kube: KubeAPIServer, ca_file: str) -> None:
    first = kube.put_secret("a", "s1")
    kube.put_secret("a", "s2")
    kube.put_secret("a", "s1", data={"x": "1"})
    with watch(kube, ca_file, SECRETS, resourceVersion=first["metadata"]["resourceVersion"]) as w:
        assert w.take(2) == [("ADDED", "s2"), ("MODIFIED", "s1")]


def test_a_compacted_resource_version_is_an_error_event_with_410(kube: KubeAPIServer, ca_file: str) -> None:
    old = kube.put_secret("a", "s1")["metadata"]["resourceVersion"]
    kube.put_secret("a", "s2")
    kube.compact()
    with watch(kube, ca_file, SECRETS, resourceVersion=old) as w:
        events = w.rest()
    assert len(events) == 1 and events[0]["type"] == "ERROR"
    status = events[0]["object"]
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")


def test_bookmarks_only_when_allowed_and_carry_the_current_version(kube: KubeAPIServer, ca_file: str) -> None:
    kube.put_secret("a", "s1")
    with watch(kube, ca_file, SECRETS, allowWatchBookmarks="true", resourceVersion="1") as w, \
            watch(kube, ca_file, "/api/v1/namespaces/a/secrets", resourceVersion="1") as plain:
        wait_open(kube, 2)
        kube.put_secret("other", "x")  # not in plain's namespace
        assert w.take(2) == [("ADDED", "s1"), ("ADDED", "x")]
        assert kube.watches.bookmark() == 2
        mark = w.next()
        kube.put_secret("a", "s9")
        assert plain.take(2) == [("ADDED", "s1"), ("ADDED", "s9")], "no bookmark without allowWatchBookmarks"
    assert mark["type"] == "BOOKMARK"
    assert mark["object"]["metadata"]["resourceVersion"] == str(kube.get_secret("other", "x")["metadata"][
        "resourceVersion"])
    assert mark["object"]["kind"] == "Secret"


def test_periodic_bookmarks(kube: KubeAPIServer, ca_file: str) -> None:
    kube.watches.bookmark_interval = 0.05
    with watch(kube, ca_file, SECRETS, allowWatchBookmarks="true") as w:
        assert w.next()["type"] == "BOOKMARK"


def test_timeout_seconds_ends_the_stream_cleanly(kube: KubeAPIServer, ca_file: str) -> None:
    start = time.monotonic()
    with watch(kube, ca_file, SECRETS, timeoutSeconds="1") as w:
        assert w.rest() == []
    assert 0.9 <= time.monotonic() - start < 3


def test_a_dropped_stream_breaks_mid_response(kube: KubeAPIServer, ca_file: str) -> None:
    with watch(kube, ca_file, SECRETS) as w:
        wait_open(kube)
        assert kube.watches.drop() == 1
        with pytest.raises(requests.exceptions.ChunkedEncodingError):
            w.rest()
    wait_closed(kube)


def test_field_selector_on_name_namespace_and_type(kube: KubeAPIServer, ca_file: str) -> None:
    kube.put_secret("a", "pull", type="kubernetes.io/dockerconfigjson", data={".dockerconfigjson": "{}"})
    kube.put_secret("b", "pull")
    kube.put_secret("a", "other")
    with watch(kube, ca_file, SECRETS, fieldSelector="metadata.name=pull,metadata.namespace=a") as w:
        assert w.take(1) == [("ADDED", "pull")]
        kube.put_secret("a", "other", data={"x": "1"})
        kube.put_secret("b", "pull", data={"x": "1"})
        kube.put_secret("a", "pull", type="kubernetes.io/dockerconfigjson", data={".dockerconfigjson": "[]"})
        assert w.take(1) == [("MODIFIED", "pull")]
    with watch(kube, ca_file, SECRETS, fieldSelector="type=kubernetes.io/dockerconfigjson") as w:
        assert w.take(1) == [("ADDED", "pull")]


def test_an_unsupported_field_is_400(kube: KubeAPIServer, ca_file: str) -> None:
    resp = open_watch(kube, ca_file, SECRETS, fieldSelector="data.x=1")
    assert resp.status_code == 400
    assert resp.json()["message"] == "field label not supported: data.x"


def test_label_selected_namespaces_arrive_when_they_start_and_leave_when_they_stop_matching(
    kube: KubeAPIServer, ca_file: str
) -> None:
    kube.add_namespace("team-a", labels={"pull": "yes"})
    kube.add_namespace("team-b")
    with watch(kube, ca_file, "/api/v1/namespaces", labelSelector="pull=yes") as w:
        assert w.take(1) == [("ADDED", "team-a")]
        kube.add_namespace("team-b", labels={"pull": "yes"})
        assert w.take(1) == [("ADDED", "team-b")], "starts matching: ADDED"
        kube.add_namespace("team-a")
        gone = w.next()
        kube.remove_namespace("team-b")
        assert w.take(1) == [("DELETED", "team-b")]
    assert gone["type"] == "DELETED", "stops matching: DELETED with the previous content"
    assert gone["object"]["metadata"]["labels"]["pull"] == "yes"


def test_legacy_watch_path_and_watch_true(kube: KubeAPIServer, ca_file: str) -> None:
    kube.put_secret("a", "s1")
    kube.put_secret("a", "s2")
    resp = requests.get(kube.url + "/api/v1/watch/namespaces/a/secrets/s2", params={"watch": "true"},
                        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, verify=ca_file, stream=True,
                        timeout=5)
    with resp:
        assert Stream(resp).take(1) == [("ADDED", "s2")]


def test_watch_rbac_is_bound_to_names_only_through_a_name_selector(kube: KubeAPIServer, ca_file: str) -> None:
    rules = [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pull"],
              "verbs": ["list", "watch"]}]
    kube.add_token("named", user="syncer", rules=rules)
    kube.put_secret("a", "pull")
    kube.put_secret("a", "private")
    denied = open_watch(kube, ca_file, SECRETS, token="named")
    assert denied.status_code == 403 and denied.json()["reason"] == "Forbidden"
    other = open_watch(kube, ca_file, SECRETS, token="named", fieldSelector="metadata.name=private")
    assert other.status_code == 403
    with watch(kube, ca_file, SECRETS, token="named", fieldSelector="metadata.name=pull") as w:
        assert w.take(1) == [("ADDED", "pull")]
    with watch(kube, ca_file, "/api/v1/namespaces/a/secrets", token="named",
               fieldSelector="metadata.name=pull") as w:
        assert w.take(1) == [("ADDED", "pull")]
    kube.add_token("list-only", rules=[{**rules[0], "verbs": ["list"]}])
    assert open_watch(kube, ca_file, SECRETS, token="list-only", fieldSelector="metadata.name=pull"
                      ).status_code == 403


def test_bad_parameters_are_400(kube: KubeAPIServer, ca_file: str) -> None:
    assert open_watch(kube, ca_file, SECRETS, resourceVersion="abc").status_code == 400
    assert open_watch(kube, ca_file, SECRETS, timeoutSeconds="soon").status_code == 400


def test_server_stop_ends_open_watches(kube: KubeAPIServer, ca_file: str) -> None:
    errors: list[BaseException] = []
    resp = open_watch(kube, ca_file, SECRETS)

    def read() -> None:
        try:
            Stream(resp).rest()
        except requests.exceptions.RequestException as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    wait_open(kube)
    kube.stop()
    reader.join(timeout=5)
    assert not reader.is_alive()
    resp.close()
