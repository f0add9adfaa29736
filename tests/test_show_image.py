"""``syncer show --image REF`` against the Kubernetes API test server: which entry kubelet
would use for the image in each target, whether the syncer manages it, and the fallbacks."""

from __future__ import annotations

import json
from typing import Any

from tests.support.operator import NAME, NS, domino_secret, ngc_login, run_cmd
from tests.support.world import World

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture


def _synced(world: World, registry: Any) -> tuple[str, Any]:
    """Domino's secret synced with the NGC login: (the registry host, the config)."""
    ngc = ngc_login(world, registry)
    domino_secret(world)
    config = world.config([{k: v for k, v in ngc.items() if not k.startswith("_")}],
                          [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    return ngc["host"], config


def test_show_image_names_the_entry_kubelet_uses(world: World, htpasswd_registry: Any) -> None:
    host, config = _synced(world, htpasswd_registry)
    # Someone adds a more specific entry for one repository path by hand: kubelet prefers it.
    doc = world.secret_doc(NS, NAME)
    doc["auths"][f"{host}/team"] = {"username": "hand-made", "password": "x", "auth": "aGFuZC1tYWRlOng="}
    annotations = world.kube.get_secret(NS, NAME)["metadata"]["annotations"]
    world.put_dockerconfig(NS, NAME, doc, annotations=annotations)

    result = run_cmd(world, "show", config, "--image", f"{host}/nvidia/pytorch:24.01-py3")
    assert result.code == 0, result.out + result.err
    assert f"kubelet looks up {host}/nvidia/pytorch" in result.out
    assert f"{NS}/{NAME}: uses {host} (username $oauthtoken; managed by the syncer)" in result.out

    result = run_cmd(world, "show", config, "--image", f"{host}/team/app@sha256:" + "a" * 64,
                     "--namespace", NS, "--name", NAME)
    assert (f"uses {host}/team (username hand-made; NOT managed by the syncer); then tries {host}"
            in result.out)

    data = json.loads(run_cmd(world, "show", config, "--image", "quay.io/org/app:1", "--output", "json").out)
    assert data["repository"] == "quay.io/org/app"
    assert data["targets"] == [{"target": f"{NS}/{NAME}", "status": "ok", "entry": "quay.io",
                                "username": "quay-robot", "managed": False, "fallbacks": []}]

    result = run_cmd(world, "show", config, "--image", "ubuntu:22.04")
    assert "no entry matches; kubelet pulls without credentials" in result.out
    assert "docker.io/library/ubuntu" in result.out


def test_show_image_refuses_a_bad_reference(world: World, htpasswd_registry: Any) -> None:
    ngc = ngc_login(world, htpasswd_registry)
    config = world.config([{k: v for k, v in ngc.items() if not k.startswith("_")}],
                          [{"namespace": NS, "name": NAME}])
    domino_secret(world)
    result = run_cmd(world, "show", config, "--image", "Not/A\x1b[31mRef")
    assert result.code == 2 and "--image" in result.err and "\x1b" not in result.err


def test_show_image_for_a_service_account_combines_its_pull_secrets(world: World,
                                                                   htpasswd_registry: Any) -> None:
    """Kubelet merges a pod's pull secrets (the ServiceAccount's, in order) into one keyring: the
    most specific key wins across secrets; for the same key the earlier secret is tried first;
    a listed secret that does not exist is skipped."""
    host, config = _synced(world, htpasswd_registry)
    hand = {"username": "hand-made", "password": "x", "auth": "aGFuZC1tYWRlOng="}
    world.put_dockerconfig(NS, "early", {"auths": {host: hand}})
    world.put_dockerconfig(NS, "specific", {"auths": {f"{host}/nvidia": hand}})
    world.kube.add_service_account(NS, "builder", ["early", "gone", NAME])
    world.kube.add_service_account(NS, "trainer", [NAME, "specific"])

    result = run_cmd(world, "show", config, "--image", f"{host}/team/app:1", "--service-account",
                     f"{NS}/builder")
    assert result.code == 1, "a listed secret is missing"
    assert f"pull secrets, in kubelet's order: early, {NAME}" in result.out
    assert "skipped by kubelet: gone: missing" in result.out
    assert (f"uses {host} from secret early (username hand-made; NOT managed by the syncer); "
            f"then tries {NAME}: {host}") in result.out

    result = run_cmd(world, "show", config, "--image", f"{host}/nvidia/pytorch:24.01-py3",
                     "--service-account", f"{NS}/trainer", "--output", "json")
    assert result.code == 0, result.out + result.err
    account = json.loads(result.out)["service_account"]
    assert (account["secret"], account["entry"], account["managed"]) == ("specific", f"{host}/nvidia", False)
    assert account["fallbacks"] == [f"{NAME}: {host}"] and account["skipped"] == []

    result = run_cmd(world, "show", config, "--image", "quay.io/org/app:1", "--service-account",
                     f"{NS}/trainer")
    assert f"uses quay.io from secret {NAME} (username quay-robot; NOT managed by the syncer)" in result.out


def test_show_image_service_account_usage_errors(world: World, htpasswd_registry: Any) -> None:
    ngc = ngc_login(world, htpasswd_registry)
    config = world.config([{k: v for k, v in ngc.items() if not k.startswith("_")}],
                          [{"namespace": NS, "name": NAME}])
    domino_secret(world)
    result = run_cmd(world, "show", config, "--image", "ubuntu", "--service-account", "no-slash")
    assert result.code == 2 and "--service-account" in result.err
    result = run_cmd(world, "show", config, "--service-account", f"{NS}/default")
    assert result.code == 2 and "--image" in result.err
    result = run_cmd(world, "show", config, "--image", "ubuntu", "--service-account", f"{NS}/nobody")
    assert result.code == 1 and f"serviceaccount {NS}/nobody does not exist" in result.err
