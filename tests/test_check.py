"""`syncer check`: a read-only preflight against real OpenBao, a real registry and the kube test server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.support.operator import NAME, NS, domino_secret, run_cmd, vault_state
from tests.support.world import SYNCER_TOKEN, World, sentinel

SECRET_RULES = [
    {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch", "create", "list", "watch"],
     "namespaces": [NS]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"], "namespaces": [NS]},
]

pytest_plugins = ["tests.support.operator_fixtures"]  # the world and ngc fixtures


def checked(world: World, config: Path, *args: str) -> tuple[Any, dict[str, dict[str, str]]]:
    """Run check twice (text and JSON), assert no writes anywhere; return (text result, by name)."""
    before = vault_state(world, ["ngc"])
    secrets_before = {s["metadata"]["name"]: s for s in world.kube.list_objects("secrets", NS)}
    world.kube.reset_requests()
    text = run_cmd(world, "check", config, *args)
    as_json = run_cmd(world, "check", config, "--output", "json", *args)
    assert as_json.code == text.code
    for resource in ("secrets", "events", "leases", "serviceaccounts"):
        assert world.kube.writes(resource) == 0, f"check wrote {resource}"
    assert {s["metadata"]["name"]: s for s in world.kube.list_objects("secrets", NS)} == secrets_before
    assert vault_state(world, ["ngc"]) == before, "check wrote to Vault or leaked a token"
    data = json.loads(as_json.out)
    assert data["ok"] is (text.code == 0)
    return text, {c["name"]: c for c in data["checks"]}


def failed(checks: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {n: c for n, c in checks.items() if c["status"] == "FAIL"}


def test_healthy_setup_passes_every_check(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.kube.set_rules(SYNCER_TOKEN, SECRET_RULES)
    config = world.config([ngc], [{"namespace": NS, "name": NAME},
                                  {"namespace": NS, "name": "to-create", "create": True}])
    result, checks = checked(world, config)
    assert result.code == 0, result.out
    assert not failed(checks)
    path = f"secret/data/{world.path('ngc')}"
    assert checks[f"vault.policy {path}"]["status"] == "OK"
    assert checks[f"vault.keys {path}"]["reason"].startswith("keys password present")
    assert checks[f"registry.login {ngc['host']}"]["status"] == "OK"
    assert checks[f"rbac {NS}/{NAME}"]["reason"] == ("allowed: get secrets, patch secrets, create events, "
                                                     "patch events")
    assert "create secrets" in checks[f"rbac {NS}/to-create"]["reason"]
    assert checks[f"target {NS}/{NAME}"]["reason"] == "well formed, 1 entries (quay.io)"
    assert "will be created" in checks[f"target {NS}/to-create"]["reason"]
    lines = result.out.strip().splitlines()
    assert all(line.startswith("OK ") for line in lines[:-1]), result.out
    assert lines[-1].startswith("check: all checks passed")
    # 2 targets x (2 or 3 secret verbs + 2 event verbs) reviews, one read per target, no writes at all
    # + list and watch per target for target.watch (2 targets, both runs)
    assert world.kube.count(verb="create", resource="selfsubjectaccessreviews") == 2 * 9 + 2 * 2 * 2
    assert world.kube.count(verb="get", resource="secrets") == 4


def test_vault_policy_without_read(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    policy = world.bao.read_policy([world.path("other")], name=f"{world.prefix}-noread")
    token = world.bao.create_token([policy], token_id=sentinel("vault-token"))
    world.secrets.add(token)
    world.token_file.write_text(token)
    result, checks = checked(world, world.config([ngc], [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    path = f"secret/data/{world.path('ngc')}"
    bad = failed(checks)
    assert list(bad) == [f"vault.policy {path}"], result.out
    assert f'path "{path}" {{ capabilities = ["read"] }}' in bad[f"vault.policy {path}"]["hint"]
    assert checks[f"registry.login {ngc['host']}"]["status"] == "SKIP"


def test_rbac_without_patch(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.kube.set_rules(SYNCER_TOKEN, [{"apiGroups": [""], "resources": ["secrets", "events"],
                                         "verbs": ["get", "create"], "namespaces": [NS]}])
    result, checks = checked(world, world.config([ngc], [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    bad = failed(checks)
    assert list(bad) == [f"rbac {NS}/{NAME}"], result.out
    assert bad[f"rbac {NS}/{NAME}"]["reason"] == f"denied: patch secrets/{NAME}, patch events"
    assert f'verbs ["patch"] on secrets resourceNames [{NAME}]' in bad[f"rbac {NS}/{NAME}"]["hint"]


def test_missing_vault_path(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    result, checks = checked(world, world.config([ngc, {"host": "ghcr.io", "path": "nope"}],
                                                 [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    name = f"vault.keys secret/data/{world.path('nope')}"
    assert list(failed(checks)) == [name], result.out
    assert failed(checks)[name]["hint"] == (f"store it: vault kv put secret/{world.path('nope')} "
                                            "username=... password=...")
    assert checks["registry.login ghcr.io"]["status"] == "SKIP"
    assert checks[f"registry.login {ngc['host']}"]["status"] == "OK"


def test_missing_key_lists_key_names_only(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.vault_put("nokey", user="someone", token=sentinel("wrong-key"))
    result, checks = checked(world, world.config([{"host": "ghcr.io", "path": "nokey"}],
                                                 [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    check = checks[f"vault.keys secret/data/{world.path('nokey')}"]
    assert check["status"] == "FAIL" and "keys present: token, user" in check["reason"]


def test_rejected_password(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.vault_put("ngc", password=sentinel("typo"))  # the registry still has the old key
    result, checks = checked(world, world.config([ngc], [{"namespace": NS, "name": NAME}]))
    assert result.code == 1
    name = f"registry.login {ngc['host']}"
    assert list(failed(checks)) == [name], result.out
    assert "rejects the login from Vault" in checks[name]["hint"]
    assert world.path("ngc") in checks[name]["hint"]


@pytest.mark.parametrize("payload", [b'{"auths": ["x"]}', b"not json"])
def test_malformed_and_missing_targets(world: World, ngc: dict[str, Any], payload: bytes) -> None:
    world.put_dockerconfig(NS, NAME, payload)
    result, checks = checked(world, world.config([ngc], [{"namespace": NS, "name": NAME},
                                                         {"namespace": NS, "name": "absent"}]))
    assert result.code == 1
    bad = failed(checks)
    assert set(bad) == {f"target {NS}/{NAME}", f"target {NS}/absent"}, result.out
    assert bad[f"target {NS}/{NAME}"]["reason"].startswith("malformed:")
    assert "never overwrites it" in bad[f"target {NS}/{NAME}"]["hint"]
    assert "create = true" in bad[f"target {NS}/absent"]["hint"]


def test_invalid_config_is_reported_as_failed_checks(world: World, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[vault]\naddress = "x"\n[[targets]]\nnamespace = "a"\nname = "b"\n'
                      'drift = "sometimes"\n')
    result = run_cmd(world, "check", config, "--output", "json")
    assert result.code == 1
    problems = [c["reason"] for c in json.loads(result.out)["checks"]]
    assert "targets[0].drift: must be one of repair, report (got 'sometimes')" in problems
    assert "registries: at least one [[registries]] entry is required" in problems


def test_list_secrets_needs_a_named_cluster_wide_grant(world: World, ngc: dict[str, Any]) -> None:
    domino_secret(world)
    world.kube.add_namespace(NS, {"fanout": "yes"})
    rules = [*SECRET_RULES, {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]}]
    world.kube.set_rules(SYNCER_TOKEN, rules)
    config = world.config([ngc], [{"namespace_selector": "fanout=yes", "name": NAME}],
                          kubernetes={"list_secrets": True})
    result, checks = checked(world, config)
    name = f"rbac list secrets named {NAME} (kubernetes.list_secrets)"
    # A warning, not a failure: without the grant each cycle falls back to GETs.
    assert result.code == 0 and not failed(checks) and checks[name]["status"] == "WARN", result.out
    assert checks[name]["hint"] == ("grant the syncer's ServiceAccount a ClusterRole with "
                                    f'verbs ["list"] on secrets resourceNames [{NAME}] '
                                    '(apiGroups [""]) cluster-wide, and bind it; until then each '
                                    "cycle falls back to one GET per namespace")
    world.kube.set_rules(SYNCER_TOKEN, [*rules, {"apiGroups": [""], "resources": ["secrets"],
                                                 "verbs": ["list"], "resourceNames": [NAME]}])
    result, checks = checked(world, config)
    assert result.code == 0 and checks[name]["status"] == "OK", result.out


def test_watch_mode_per_target_from_access_reviews(world: World, ngc: dict[str, Any]) -> None:
    """``target.watch NS/NAME``: "watch" when list and watch are granted with the name, else
    "poll (denied: ...)" as a warning (the daemon falls back to polling that target)."""
    domino_secret(world)
    world.kube.add_namespace("ml-a", {"fanout": "yes"})
    targets = [{"namespace": NS, "name": NAME},
               {"namespace_selector": "fanout=yes", "name": "fan", "create": True}]
    named = {"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"],
             "resourceNames": [NAME], "namespaces": [NS]}
    rules = [*SECRET_RULES, named,
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"],
              "resourceNames": ["fan"]},
             {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]},
             {"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]
    world.kube.set_rules(SYNCER_TOKEN, rules)
    config = world.config([ngc], targets, kubernetes={"list_secrets": False})
    result, checks = checked(world, config)
    assert result.code == 0, result.out
    assert checks[f"target.watch {NS}/{NAME}"]["status"] == "OK"
    assert checks[f"target.watch {NS}/{NAME}"]["reason"] == "watch"
    fan = checks["target.watch */fan"]
    assert fan["status"] == "WARN"
    assert fan["reason"] == "poll (denied: list secrets/fan, watch secrets/fan, watch namespaces)"
    assert "WARN  target.watch */fan: poll (denied:" in result.out
    off = world.config([ngc], targets, kubernetes={"list_secrets": False, "watch": False})
    _, checks = checked(world, off)
    assert checks[f"target.watch {NS}/{NAME}"]["reason"] == "poll (kubernetes.watch = false)"
