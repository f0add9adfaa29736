"""The watch client (syncer.kube_watch) and the informer caches (syncer.informer) against the
project's Kubernetes API test server."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer.config import TargetSettings
from syncer.informer import Informer, TargetWatches, slim_secret
from syncer.kube_watch import Backoff, WatchMode
from tests.support.kubeapi import KubeAPIServer
from tests.support.watch_fixtures import PULL, Seen, api_for, eventually, is_watch


def test_list_then_watch_keeps_the_cache_and_reports_each_change(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull", data={"k": "1"})
    kube.put_secret("a", "other", data={"k": "secret-not-watched"})
    informer = start()
    assert informer.keys() == [("a", "pull")]
    assert seen.changes[0][:2] == ("ADDED", "pull")
    kube.put_secret("a", "pull", data={"k": "2"})
    eventually(lambda: len(seen.changes) == 2)
    assert seen.changes[1][0] == "MODIFIED"
    assert informer.get("a", "pull")["data"] == {"k": "Mg=="}  # type: ignore[index]
    kube.delete_secret("a", "pull")
    eventually(lambda: len(seen.changes) == 3)
    assert seen.changes[2][:2] == ("DELETED", "pull") and informer.get("a", "pull") is None
    assert kube.count("list", "secrets") == 1 and kube.count("watch", "secrets") == 1
    watch = next(r for r in kube.requests if r.verb == "watch")
    assert watch.query["fieldSelector"] == "metadata.name=pull"
    assert watch.query["allowWatchBookmarks"] == "true"
    assert 300 <= int(watch.query["timeoutSeconds"]) <= 600


def test_the_cache_keeps_only_what_a_sync_needs(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]]
) -> None:
    obj = kube.put_secret("a", "pull", data={"k": "1"}, annotations={"x": "y"})
    stored = kube.store.lookup(kube.store.resolve("secrets"), "a", "pull")
    assert stored is not None
    stored["metadata"]["managedFields"] = [{"manager": "kubectl", "fieldsV1": {"f:data": {}}}]
    informer = start()
    cached = informer.get("a", "pull")
    assert cached == {"metadata": {k: obj["metadata"][k] for k in
                                   ("name", "namespace", "uid", "resourceVersion", "annotations")},
                      "type": "Opaque", "data": {"k": "MQ=="}}


def test_a_dropped_stream_resumes_from_the_last_version_without_missing_or_repeating(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull", data={"k": "0"})
    informer = start()
    last = informer.resource_version("a", "pull")

    def while_disconnected() -> None:  # runs right before the re-watch is served
        kube.put_secret("a", "pull", data={"k": "1"})
        kube.put_secret("a", "pull", data={"k": "2"})

    kube.before(lambda r: is_watch(r) and r.query.get("resourceVersion") == last, while_disconnected)
    assert kube.watches.drop() == 1
    eventually(lambda: len(seen.changes) == 3)
    kube.put_secret("a", "pull", data={"k": "3"})
    eventually(lambda: len(seen.changes) == 4)
    time.sleep(0.1)
    rvs = [rv for _, _, rv in seen.changes]
    assert [k for k, _, _ in seen.changes] == ["ADDED", "MODIFIED", "MODIFIED", "MODIFIED"]
    assert len(set(rvs)) == 4 and rvs == sorted(rvs, key=int)
    assert kube.count("list", "secrets") == 1, "a resumed watch needs no relist"
    assert seen.restarts["dropped"] == 1


def test_a_compacted_version_relists_and_reports_what_changed_meanwhile(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull", data={"k": "0"})
    informer = start()
    last = informer.resource_version("a", "pull")

    def delete_and_compact() -> None:
        kube.delete_secret("a", "pull")
        kube.compact()

    kube.before(lambda r: is_watch(r) and r.query.get("resourceVersion") == last, delete_and_compact)
    kube.watches.drop()
    eventually(lambda: len(seen.changes) == 2)
    assert seen.changes[1][:2] == ("DELETED", "pull")
    assert seen.restarts["expired"] == 1 and seen.events["ERROR"] == 1
    assert kube.count("list", "secrets") == 2
    kube.put_secret("a", "pull", data={"k": "new"})
    eventually(lambda: informer.get("a", "pull") is not None)
    assert informer.synced


def test_a_410_answer_to_the_watch_itself_relists(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull")
    kube.add_fault(is_watch, status=410)
    start()
    assert seen.restarts["expired"] == 1 and kube.count("list") == 2
    assert [k for k, _, _ in seen.changes] == ["ADDED"], "the relist found nothing new"


def test_bookmarks_advance_the_resource_version(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull")
    informer = start()
    for i in range(3):
        kube.put_secret("b", f"noise{i}")  # not in view: only a bookmark tells the client
    assert kube.watches.bookmark() == 1
    eventually(lambda: informer.reflector.resource_version == str(kube.store.rv))
    assert seen.events["BOOKMARK"] == 1
    kube.watches.drop()
    eventually(lambda: kube.count("watch") == 2)
    assert [r.query.get("resourceVersion") for r in kube.requests if is_watch(r)][1] == str(kube.store.rv)
    assert seen.changes == [seen.changes[0]], "a bookmark changes nothing in the cache"


def test_a_server_side_timeout_reconnects_at_once(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    sleeps: list[float] = []
    kube.put_secret("a", "pull")
    start(timeout_seconds=1, rand=lambda: 0.0, healthy_seconds=0.5, sleep=sleeps.append)
    eventually(lambda: kube.count("watch") >= 3)
    assert seen.restarts["closed"] >= 2 and sleeps == [], "a normal end reconnects without backoff"
    assert kube.count("list") == 1
    assert all(r.query["timeoutSeconds"] == "1" for r in kube.requests if is_watch(r))


def test_a_server_that_closes_at_once_is_backed_off(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    sleeps: list[float] = []

    def record(delay: float) -> None:
        sleeps.append(delay)
        if len(sleeps) >= 5:
            kube.clear_faults()

    kube.put_secret("a", "pull")
    kube.add_fault(is_watch, status=503, times=None)
    start(sleep=record, backoff=Backoff(base=1, cap=4, rand=lambda: 1.0))
    assert sleeps[:5] == [1, 2, 4, 4, 4], "capped exponential backoff"
    assert seen.restarts["open_failed"] == 5
    assert Backoff(base=1, cap=4, rand=lambda: 0.0).next() == 0.5, "jitter: between half and all"


def test_a_forbidden_watch_falls_back_to_polling_once_and_recovers(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen, caplog: pytest.LogCaptureFixture
) -> None:
    rule = {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pull"], "verbs": ["list"]}
    kube.add_token("list-only", user="syncer", rules=[rule])
    kube.put_secret("a", "pull")
    caplog.set_level(logging.INFO, "syncer.kube_watch")
    informer = start(token="list-only", sync=False, polling_retry=0.01)
    eventually(lambda: seen.restarts["forbidden"] >= 3)
    assert informer.mode is WatchMode.POLLING and not informer.synced
    assert seen.modes == [(WatchMode.POLLING, "forbidden")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "falling back to polling" in warnings[0].getMessage()
    assert 'cannot watch resource "secrets"' in warnings[0].getMessage()
    kube.set_rules("list-only", [{**rule, "verbs": ["list", "watch"]}])
    eventually(lambda: informer.synced)
    assert seen.modes[-1] == (WatchMode.WATCHING, "")


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_watch_falls_back_to_polling(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen, status: int
) -> None:
    kube.add_fault(is_watch, status=status, times=None)
    informer = start(sync=False, polling_retry=None)
    assert informer.reflector.join(5), "polling_retry=None: the reflector gives up"
    assert seen.modes == [(WatchMode.POLLING, "unsupported"), (WatchMode.STOPPED, "")]


def test_a_forbidden_list_falls_back_too(kube: KubeAPIServer, start: Callable[..., Informer[Any]],
                                         seen: Seen) -> None:
    kube.add_token("nothing", rules=[])
    start(token="nothing", sync=False, polling_retry=None).reflector.join(5)
    assert seen.modes[0] == (WatchMode.POLLING, "forbidden") and kube.count("watch") == 0


def test_stop_closes_an_open_stream_at_once(kube: KubeAPIServer, start: Callable[..., Informer[Any]]) -> None:
    informer = start()
    eventually(lambda: kube.watches.open_count() == 1)
    time.sleep(0.05)  # the reflector is blocked reading
    began = time.monotonic()
    informer.stop()
    assert informer.reflector.join(1)
    took = time.monotonic() - began
    assert took < 0.1, f"stop took {took:.3f}s"
    assert informer.mode is WatchMode.STOPPED
    eventually(lambda: kube.watches.open_count() == 0)


def test_an_event_over_the_line_cap_restarts_with_a_reason_and_relists(
    kube: KubeAPIServer, start: Callable[..., Informer[Any]], seen: Seen
) -> None:
    kube.put_secret("a", "pull", data={"k": "small"})
    informer = start(max_line=4096)
    kube.put_secret("a", "pull", data={"k": "x" * 8192})
    eventually(lambda: seen.restarts["too_large"] == 1)
    eventually(lambda: len(informer.get("a", "pull")["data"]["k"]) > 8192)  # type: ignore[index]
    assert kube.count("list") == 2, "the object the stream could not carry came with a LIST"


def test_name_bound_cluster_role_serves_fixed_and_fan_out_watches(
    kube: KubeAPIServer, tmp_path: Path
) -> None:
    rules = [
        {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["pull", "fixed"],
         "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ]
    kube.add_token("syncer", user="system:serviceaccount:s:syncer", rules=rules)
    kube.add_namespace("team-a", labels={"pull": "yes"})
    kube.add_namespace("team-b")
    kube.put_secret("team-a", "pull")
    kube.put_secret("team-a", "private")
    kube.put_secret("c", "fixed")
    changes: list[tuple[str, str, str]] = []
    namespaces: list[tuple[str, str, str]] = []
    targets = [TargetSettings(namespace="c", name="fixed"),
               TargetSettings(namespace="", name="pull", namespace_selector="pull=yes"),
               TargetSettings(namespace="", name="", file="/tmp/config.json")]
    watches = TargetWatches(
        api_for(kube, tmp_path, "syncer"), targets,
        on_secret=lambda k, o, n: changes.append((k, *key(n or o))),
        on_namespace=lambda k, o, n, sel: namespaces.append((k, (n or o or {})["metadata"]["name"], sel)))
    watches.start()
    try:
        assert watches.wait_synced(5), watches.modes()
        assert watches.namespaces("pull=yes") == ["team-a"]
        fixed, fan = watches.secret_informer("c", "fixed"), watches.secret_informer("team-b", "pull")
        assert fixed is not None and fan is not None and watches.secret_informer("c", "private") is None
        assert fixed.keys() == [("c", "fixed")] and fan.keys() == [("team-a", "pull")]
        kube.add_namespace("team-b", labels={"pull": "yes"})
        eventually(lambda: ("ADDED", "team-b", "pull=yes") in namespaces)
        kube.put_secret("team-b", "pull")
        eventually(lambda: ("ADDED", "team-b", "pull") in changes)
        assert watches.namespaces("pull=yes") == ["team-a", "team-b"]
        assert set(watches.modes().values()) == {WatchMode.WATCHING}
    finally:
        began = time.monotonic()
        watches.stop()
        assert time.monotonic() - began < 1
    assert not [r for r in kube.requests if r.status == 403]
    assert kube.count("get") == 0, "no secret GETs: everything came from lists and watches"


def key(obj: dict[str, Any] | None) -> tuple[str, str]:
    assert obj is not None
    return obj["metadata"]["namespace"], obj["metadata"]["name"]


def test_a_relist_reports_only_real_changes(kube: KubeAPIServer, tmp_path: Path, seen: Seen) -> None:
    informer: Informer[Any] = Informer(api_for(kube, tmp_path), PULL, slim_secret, on_change=seen.on_change)
    informer.replace([{"metadata": {"namespace": "a", "name": "pull", "resourceVersion": "5"}},
                      {"metadata": {"namespace": "a", "name": "ignored", "resourceVersion": "6"}},
                      {"metadata": "garbage"}], "6")
    informer.replace([{"metadata": {"namespace": "a", "name": "pull", "resourceVersion": "5"}}], "7")
    informer.apply("ADDED", {"metadata": {"namespace": "a", "name": "pull", "resourceVersion": "5"}})
    informer.replace([], "8")
    assert seen.changes == [("ADDED", "pull", "5"), ("DELETED", "pull", "5")]


def test_metrics_count_watch_events_and_restarts(kube: KubeAPIServer, tmp_path: Path) -> None:
    from syncer.config import from_mapping
    from syncer.metrics import Metrics

    settings = from_mapping({
        "vault": {"address": "https://vault.example.com", "auth": {"method": "token", "token_file": "/t"}},
        "registries": [{"host": "nvcr.io", "path": "p"}],
        "targets": [{"namespace": "a", "name": "pull"}]}, {})
    registry = CollectorRegistry()
    metrics = Metrics(registry, settings)
    assert registry.get_sample_value("syncer_watch_restarts_total",
                                     {"resource": "namespaces", "reason": "expired"}) == 0
    kube.put_secret("a", "pull")
    informer: Informer[Any] = Informer(api_for(kube, tmp_path), PULL, slim_secret, observer=metrics)
    informer.start()
    try:
        assert informer.wait_synced(5)
        kube.put_secret("a", "pull", data={"k": "1"})
        eventually(lambda: registry.get_sample_value(
            "syncer_watch_events_total", {"resource": "secrets", "type": "MODIFIED"}) == 1)
        kube.watches.drop()
        eventually(lambda: registry.get_sample_value(
            "syncer_watch_restarts_total", {"resource": "secrets", "reason": "dropped"}) == 1)
    finally:
        informer.stop()
