"""End-to-end: `syncer --once` against real OpenBao, real registries and the Kubernetes API test server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from syncer.targets import MANAGED_HOSTS
from tests.support.world import DOCKERCONFIG, World, sentinel

NS = "domino-compute"
NAME = "domino-quay-repos"
QUAY = {"username": "quay-robot", "password": "existing-quay-secret", "email": "."}

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture (this module's ngc wins)


@pytest.fixture
def ngc(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    """A TLS+htpasswd registry standing in for nvcr.io, with a fresh API key in Vault and registry."""
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    return {"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken",
            "_key": key, "_registry": htpasswd_registry}


def reg(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def domino_secret(world: World, **extra: Any) -> dict[str, Any]:
    doc = {"auths": {"quay.io": QUAY}, "HttpHeaders": {"X-Team": "platform"}, **extra}
    return world.put_dockerconfig(NS, NAME, doc, annotations={"owner": "platform"})


def test_first_merge_keeps_quay_and_unknown_keys(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])
    result = world.run(config)
    assert result.code == 0, result.out + result.err
    doc = world.secret_doc(NS, NAME)
    assert doc["auths"]["quay.io"] == QUAY
    assert doc["HttpHeaders"] == {"X-Team": "platform"}
    entry = doc["auths"][ngc["host"]]
    assert (entry["username"], entry["password"]) == ("$oauthtoken", ngc["_key"])
    obj = world.kube.get_secret(NS, NAME)
    assert obj["metadata"]["annotations"][MANAGED_HOSTS] == ngc["host"]
    assert obj["metadata"]["annotations"]["owner"] == "platform"
    assert f"target {NS}/{NAME}: updated" in result.out
    assert f"registry {ngc['host']}: ok" in result.out
    world.assert_no_leak(json.dumps(obj["metadata"]), "annotations/labels")


def test_steady_state_makes_no_writes(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    world.kube.reset_requests()
    for _ in range(3):
        result = world.run(config)
        assert result.code == 0
        assert "unchanged" in result.out
    assert world.kube.writes() == 0
    assert world.kube.count(verb="get", resource="secrets") == 3, "one read per target per cycle"
    assert world.kube.count(resource="secrets") == 3


def test_rotation_is_applied_then_steady(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    new_key = sentinel("ngc-rotated")
    ngc["_registry"].set_password("$oauthtoken", new_key)
    world.vault_put("ngc", password=new_key)
    world.kube.reset_requests()
    result = world.run(config)
    assert result.code == 0, result.out
    assert "password changed" in result.out
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == new_key
    assert world.kube.writes() == 1
    assert world.run(config).code == 0
    assert world.kube.writes() == 1


def test_rejected_rotation_is_not_written(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    before = world.kube.get_secret(NS, NAME)
    world.vault_put("ngc", password=sentinel("typo"))  # the registry still has the old key
    result = world.run(config)
    assert result.code == 1
    assert f"registry {ngc['host']}: rejected" in result.out
    assert f"kept old entry for {ngc['host']}" in result.out
    after = world.kube.get_secret(NS, NAME)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"] == ngc["_key"]


def test_bearer_registry_good_and_bad(world: World, token_registry: Any) -> None:
    good = sentinel("bearer")
    token_registry.token_server.users["robot$ci"] = good
    world.vault_put("harbor", username="robot$ci", password=good)
    domino_secret(world)
    spec = {"host": token_registry.host, "path": "harbor"}
    config = world.config([spec], [{"namespace": NS, "name": NAME}])
    result = world.run(config)
    assert result.code == 0, result.out
    assert world.secret_doc(NS, NAME)["auths"][token_registry.host]["password"] == good
    world.vault_put("harbor", username="robot$ci", password=sentinel("bearer-bad"))
    result = world.run(config)
    assert result.code == 1 and "rejected" in result.out
    assert world.secret_doc(NS, NAME)["auths"][token_registry.host]["password"] == good
    world.secrets.update(t.token for t in token_registry.token_server.issued)
    world.assert_no_leak("\n".join(world.outputs), "CLI output (issued registry tokens)")


def test_conflict_on_first_write_is_retried_and_concurrent_edit_kept(
        world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}])

    def concurrent_edit() -> None:
        doc = world.secret_doc(NS, NAME)
        doc["auths"]["ghcr.io"] = {"username": "someone", "password": "else"}
        world.put_dockerconfig(NS, NAME, doc)

    world.kube.before(lambda r: r.verb == "patch" and r.resource == "secrets", concurrent_edit)
    result = world.run(config)
    assert result.code == 0, result.out
    doc = world.secret_doc(NS, NAME)
    assert doc["auths"]["ghcr.io"] == {"username": "someone", "password": "else"}
    assert doc["auths"][ngc["host"]]["password"] == ngc["_key"]
    assert doc["auths"]["quay.io"] == QUAY
    assert world.kube.count(verb="patch", resource="secrets") == 2
    assert world.kube.writes() == 1


def test_conflict_forever_fails_that_target_after_bounded_retries(
        world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          sync={"conflict_retries": 2})
    world.kube.add_fault(lambda r: r.verb == "patch", status=409, reason="Conflict", times=None)
    result = world.run(config)
    assert result.code == 1
    assert "conflict" in result.out
    assert world.kube.count(verb="patch", resource="secrets") == 3


def test_missing_vault_path_is_isolated(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    missing = {"host": "ghcr.io", "path": "does-not-exist"}
    config = world.config([reg(ngc), missing], [{"namespace": NS, "name": NAME}])
    result = world.run(config)
    assert result.code == 1
    assert "registry ghcr.io: failed" in result.out
    assert world.path("does-not-exist") in result.out
    doc = world.secret_doc(NS, NAME)
    assert doc["auths"][ngc["host"]]["password"] == ngc["_key"]
    assert "ghcr.io" not in doc["auths"]


@pytest.mark.parametrize("payload", [b'{"notauths": {}}', b'{"auths": ["x"]}'])
def test_malformed_target_left_untouched(world: World, ngc: dict[str, Any], payload: bytes) -> None:
    world.put_dockerconfig(NS, NAME, payload)
    world.put_dockerconfig(NS, "healthy", {"auths": {}})
    before = world.kube.get_secret(NS, NAME)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME},
                                       {"namespace": NS, "name": "healthy"}])
    result = world.run(config)
    assert result.code == 1
    assert f"target {NS}/{NAME}: malformed" in result.out
    assert world.kube.get_secret(NS, NAME) == before
    assert ngc["host"] in world.secret_doc(NS, "healthy")["auths"]


def test_wrong_secret_type_left_untouched(world: World, ngc: dict[str, Any]) -> None:
    world.kube.put_secret(NS, NAME, type="Opaque", data={"x": b"y"})
    before = world.kube.get_secret(NS, NAME)
    result = world.run(world.config([reg(ngc)], [{"namespace": NS, "name": NAME}]))
    assert result.code == 1 and "malformed" in result.out and "Opaque" in result.out
    assert world.kube.get_secret(NS, NAME) == before


def test_create_true_creates_and_create_false_fails(world: World, ngc: dict[str, Any]) -> None:
    config = world.config([reg(ngc)], [{"namespace": NS, "name": "new-pull", "create": True},
                                       {"namespace": NS, "name": "absent"}])
    result = world.run(config)
    assert result.code == 1
    assert f"target {NS}/new-pull: created" in result.out
    assert f"target {NS}/absent: failed" in result.out and "create = true" in result.out
    obj = world.kube.get_secret(NS, "new-pull")
    assert obj["type"] == DOCKERCONFIG
    assert world.secret_doc(NS, "new-pull")["auths"][ngc["host"]]["password"] == ngc["_key"]
    assert world.kube.get_secret(NS, "absent") is None


def test_forbidden_target_is_isolated(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.put_dockerconfig(NS, "locked", {"auths": {}})
    world.kube.set_rules("syncer-sa-token", [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "update", "patch"],
         "resourceNames": [NAME], "namespaces": [NS]}])
    config = world.config([reg(ngc)], [{"namespace": NS, "name": "locked"},
                                       {"namespace": NS, "name": NAME}])
    result = world.run(config)
    assert result.code == 1
    assert f"target {NS}/locked: failed" in result.out and "forbidden" in result.out
    assert f"target {NS}/{NAME}: updated" in result.out
    assert world.secret_doc(NS, "locked") == {"auths": {}}


def test_dry_run_writes_nothing_and_prints_redacted_plan(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME},
                                       {"namespace": NS, "name": "fresh", "create": True}])
    world.kube.reset_requests()
    result = world.run(config, "--dry-run")
    assert result.code == 0, result.out
    assert world.kube.writes() == 0
    assert world.kube.get_secret(NS, "fresh") is None
    assert f"target {NS}/{NAME}: would be updated (dry-run)" in result.out
    assert f"{ngc['host']}: added" in result.out
    assert f"target {NS}/fresh: would be created (dry-run)" in result.out


def test_plain_http_registry_is_refused(world: World, plain_registry: Any) -> None:
    world.vault_put("plain", username="user", password=sentinel("plain"))
    domino_secret(world)
    before = world.kube.get_secret(NS, NAME)
    result = world.run(world.config([{"host": plain_registry.host, "path": "plain"}],
                                    [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    assert f"registry {plain_registry.host}: failed" in result.out
    assert world.kube.get_secret(NS, NAME) == before, "no credentials for a non-HTTPS registry"


def test_vault_unreachable_touches_nothing(world: World, ngc: dict[str, Any]) -> None:
    from tests.support.net import free_port

    domino_secret(world)
    before = world.kube.get_secret(NS, NAME)
    config = world.config([reg(ngc)], [{"namespace": NS, "name": NAME}],
                          vault={"address": f"http://127.0.0.1:{free_port()}", "timeout": "1s"})
    world.kube.reset_requests()
    result = world.run(config)
    assert result.code == 1
    assert "Vault" in result.out and "unreachable" in result.out
    assert world.kube.get_secret(NS, NAME) == before
    assert world.kube.writes() == 0


def test_json_logs_are_one_object_per_line_and_leak_nothing(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    result = world.run(world.config([reg(ngc)], [{"namespace": NS, "name": NAME}]),
                       "--log-format", "json", "--log-level", "debug")
    assert result.code == 0
    records = [json.loads(line) for line in result.err.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert any(r["message"].startswith("sync finished") for r in records)
