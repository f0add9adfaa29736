"""syncer.targets: selector expansion, the store per target, and the stores' shared write rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from syncer import targets
from syncer.config import TargetSettings
from syncer.filetarget import FileStore, sidecar
from syncer.kube import FanOut, SecretStore
from syncer.kube_api import Api
from syncer.target_errors import TargetError, TargetErrorKind
from syncer.targets import LAST_WRITE, ROLLED_BACK, TargetStores
from tests.support.kube_fixtures import ADMIN_TOKEN, kube_client
from tests.support.kubeapi import KubeAPIServer


def admin_api(kube: KubeAPIServer, tmp_path: Path) -> Api:
    return Api(kube_client(kube.write_kubeconfig(tmp_path / "kc-admin", ADMIN_TOKEN)), timeout=5)


def test_resolve_serves_each_secret_once_fixed_first_then_the_first_selector(
        kube: KubeAPIServer, tmp_path: Path) -> None:
    for ns, team in (("a", "ml"), ("b", "ml"), ("c", "data")):
        kube.add_namespace(ns, {"team": team})
    configured = [
        TargetSettings(namespace="", name="pull", namespace_selector="team=ml", registries=("one.io",)),
        TargetSettings(namespace="b", name="pull"),
        TargetSettings(namespace="", name="pull", namespace_selector="team in (ml,data)"),
        TargetSettings(namespace="", name="", file="/x/config.json"),
    ]
    kube.reset_requests()
    resolved, failed = targets.resolve(targets.expand(configured, FanOut(admin_api(kube, tmp_path))))
    assert failed == []
    assert [(t.namespace, t.name, t.registries, t.file) for t in resolved] == [
        ("a", "pull", ("one.io",), ""),  # the first selector wins over the later one for a
        ("b", "pull", (), ""),           # the fixed target wins over both selectors
        ("c", "pull", (), ""),
        ("", "", (), "/x/config.json"),
    ]
    assert kube.count(verb="list", resource="namespaces") == 2, "one LIST per distinct selector"


def test_a_failed_namespace_list_is_given_to_each_of_its_targets_and_listed_once(
        kube: KubeAPIServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    kube.add_fault(lambda r: r.resource == "namespaces", status=403, reason="Forbidden", times=None)
    configured = [TargetSettings(namespace="", name=n, namespace_selector="team=ml") for n in ("p", "q")]
    kube.reset_requests()
    resolved, failed = targets.resolve(targets.expand(configured, FanOut(admin_api(kube, tmp_path))))
    assert resolved == [] and [t.name for t, _ in failed] == ["p", "q"]
    assert all(exc.kind is TargetErrorKind.FORBIDDEN for _, exc in failed)
    assert kube.count(verb="list", resource="namespaces") == 1
    assert sum("namespace selector 'team=ml'" in r.getMessage() for r in caplog.records) == 1


def test_each_target_has_one_store(kube: KubeAPIServer, tmp_path: Path) -> None:
    secrets, files = SecretStore(admin_api(kube, tmp_path)), FileStore()
    stores = TargetStores(secrets, files)
    assert stores.of(TargetSettings(namespace="default", name="pull")) is secrets
    assert stores.of(TargetSettings(namespace="", name="", file="/x/config.json")) is files
    assert (secrets.what, files.what) == ("secret", "file")
    assert targets.document(None) == {"auths": {}}


def test_a_file_write_sets_the_syncer_keys_and_keeps_the_others(tmp_path: Path) -> None:
    """As a Secret's merge patch keeps other annotations, a file's sync state keeps other keys."""
    path = str(tmp_path / "config.json")
    store = FileStore()
    target = TargetSettings(namespace="", name="", file=path)
    store.create(target, b'{"auths": {}}\n', {ROLLED_BACK: "t0", LAST_WRITE: "t0"})
    snapshot = store.read_target(target)
    assert snapshot is not None
    store.update(snapshot, b'{"auths": {}}\n', {LAST_WRITE: "t1"})
    state = json.loads(Path(sidecar(path, "syncer-state")).read_text())
    assert state == {ROLLED_BACK: "t0", LAST_WRITE: "t1"}
    with pytest.raises(TargetError) as info:
        store.update(snapshot, b'{"auths": {}}\n', {})  # the token read before the last write
    assert info.value.kind is TargetErrorKind.CONFLICT
    assert str(info.value).startswith(f"file {path}: conflict")
