"""`syncer show` and `syncer rollback` against real OpenBao, a real registry and the kube test server."""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import pytest

from syncer.kube import PREVIOUS
from tests.support.operator import NAME, NS, QUAY, domino_secret, ngc_login, run_cmd
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world and ngc fixtures


@pytest.fixture
def registry(htpasswd_registry: Any) -> Any:
    return htpasswd_registry


def raw(world: World, key: str = ".dockerconfigjson") -> bytes | None:
    data = world.kube.secret_data(NS, NAME)
    return None if data is None else data.get(key)


def rotate(world: World, registry: Any) -> str:
    key = sentinel("ngc-rotated")
    registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    return key


def test_show_lists_entries_without_secrets(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    result = run_cmd(world, "show", config)
    assert result.code == 0, result.out + result.err
    key = world.secret_doc(NS, NAME)["auths"][ngc["host"]]["password"]
    fp = hashlib.sha256(key.encode()).hexdigest()[:8]
    lines = result.out.splitlines()
    assert lines[0].startswith(f"secret {NS}/{NAME} (last sync 20") and "rollback available" in lines[0]
    assert "other keys: HttpHeaders" in lines[0]
    assert lines[1].split() == ["HOST", "USERNAME", "PASSWORD", "MANAGED", "MATCHES", "VAULT", "LAST", "SYNC"]
    ngc_row = next(line for line in lines if line.strip().startswith(ngc["host"]))
    assert ngc_row.split()[1:6] == ["$oauthtoken", "••••", f"(sha256:{fp})", "yes", "yes"]
    assert ngc_row.split()[6].startswith("20")
    quay_row = next(line for line in lines if line.strip().startswith("quay.io"))
    assert quay_row.split()[1:] == ["quay-robot", "••••", quay_row.split()[3], "no", "not", "configured", "-"]
    as_json = json.loads(run_cmd(world, "show", config, "--output", "json", "--no-fingerprint").out)
    entries = {e["host"]: e for e in as_json["targets"][0]["entries"]}
    assert entries[ngc["host"]]["password"] == "set"
    assert entries[ngc["host"]]["managed"] is True and entries[ngc["host"]]["matches_vault"] == "yes"
    assert entries["quay.io"]["managed"] is False
    assert world.kube.writes() == 1, "show writes nothing"


def test_show_flags_an_entry_that_no_longer_matches_vault(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    world.vault_put("ngc", password=sentinel("not-yet-synced"))
    result = run_cmd(world, "show", config, "--namespace", NS, "--name", NAME, "--output", "json")
    entry = {e["host"]: e for e in json.loads(result.out)["targets"][0]["entries"]}[ngc["host"]]
    assert entry["matches_vault"] == "no"
    missing = run_cmd(world, "show", config, "--namespace", NS, "--name", "absent")
    assert missing.code == 1 and f"secret {NS}/absent: missing" in missing.out


def test_rollback_after_rotation_restores_exact_previous_content(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    domino_secret(world)
    original = raw(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0
    assert raw(world, PREVIOUS) == original
    first = raw(world)
    rotate(world, registry)
    assert world.run(config).code == 0
    rotated = raw(world)
    assert raw(world, PREVIOUS) == first, "one copy only: the content the last write replaced"
    annotations = json.dumps(world.kube.get_secret(NS, NAME)["metadata"])
    world.assert_no_leak(annotations, "metadata")

    world.kube.reset_requests()
    dry = run_cmd(world, "rollback", config, "--namespace", NS, "--name", NAME, "--dry-run")
    assert dry.code == 0 and "dry-run" in dry.out and f"{ngc['host']}: changed" in dry.out
    assert world.kube.writes() == 0 and raw(world) == rotated

    done = run_cmd(world, "rollback", config, "--namespace", NS, "--name", NAME)
    assert done.code == 0, done.out + done.err
    assert done.out.splitlines()[1:] == [f"  {ngc['host']}: changed"]
    assert raw(world) == first, "byte-exact previous content"
    assert raw(world, PREVIOUS) == rotated, "the replaced content is kept: rollback is undoable"
    assert world.kube.writes() == 1
    again = run_cmd(world, "rollback", config, "--namespace", NS, "--name", NAME)
    assert again.code == 0 and raw(world) == rotated


def test_rollback_with_nothing_to_roll_back(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    result = run_cmd(world, "rollback", config, "--namespace", NS, "--name", NAME)
    assert result.code == 1 and "nothing to roll back" in result.out
    absent = run_cmd(world, "rollback", config, "--namespace", NS, "--name", "absent")
    assert absent.code == 1 and "does not exist" in absent.out
    usage = run_cmd(world, "rollback", config, "--namespace", NS)
    assert usage.code == 2
    assert world.kube.writes() == 0


def test_rollback_loses_the_race_against_a_concurrent_write(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    domino_secret(world)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    assert world.run(config).code == 0

    def concurrent_edit() -> None:
        doc = world.secret_doc(NS, NAME)
        doc["auths"]["ghcr.io"] = {"username": "someone", "password": "else"}
        world.put_dockerconfig(NS, NAME, doc)

    world.kube.before(lambda r: r.verb == "patch" and r.resource == "secrets", concurrent_edit)
    result = run_cmd(world, "rollback", config, "--namespace", NS, "--name", NAME)
    assert result.code == 1 and "conflict" in result.out
    assert world.secret_doc(NS, NAME)["auths"]["ghcr.io"] == {"username": "someone", "password": "else"}


def test_previous_copy_never_nests_and_respects_the_size_limit(world: World, registry: Any) -> None:
    ngc = ngc_login(world, registry)
    big = {"auths": {"quay.io": QUAY}, "padding": "x" * 600_000}
    world.put_dockerconfig(NS, NAME, big)
    config = world.config([ngc], [{"namespace": NS, "name": NAME}])
    result = world.run(config)
    assert result.code == 0, result.out
    data = world.kube.secret_data(NS, NAME)
    assert set(data) == {".dockerconfigjson"}, "no room for a copy under 1 MiB: none kept"
    assert world.secret_doc(NS, NAME)["padding"] == big["padding"]
    stored = base64.b64decode(world.kube.get_secret(NS, NAME)["data"][".dockerconfigjson"])
    assert len(stored) < 700_000
