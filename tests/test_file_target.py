"""File targets: a docker config.json kept in sync atomically, with real OpenBao and a real registry."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from syncer.filetarget import FileStore, sidecar
from syncer.target_errors import TargetError, TargetErrorKind
from tests.support.operator import run_cmd
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the ngc fixture (with this module's world)
ROOT = Path(__file__).parent.parent
RUNNER = {"auths": {"quay.io": {"auth": "cXVheTpzZWNyZXQ="}}, "credHelpers": {"gcr.io": "gcloud"},
          "credsStore": "desktop", "psFormat": "table {{.ID}}", "unknownKey": {"nested": [1, 2]}}


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    world = World(tmp_path, bao, kube, ca_file)
    world.secrets.add("cXVheTpzZWNyZXQ=")
    return world


def test_merge_keeps_helpers_and_unknown_keys_mode_and_owner(world: World, ngc: dict[str, Any],
                                                             tmp_path: Path) -> None:
    path = tmp_path / "docker" / "config.json"
    path.parent.mkdir()
    path.write_text(json.dumps(RUNNER))
    os.chmod(path, 0o644)
    os.chown(path, 65534, 65534)  # the runner's user, not ours: must be kept
    config = world.config([ngc], [{"file": str(path)}])
    result = world.run(config)
    assert result.code == 0, result.out
    assert f"target {path}: updated - {ngc['host']}: added" in result.out
    doc = json.loads(path.read_text())
    assert {k: v for k, v in doc.items() if k != "auths"} == {k: v for k, v in RUNNER.items() if k != "auths"}
    assert doc["auths"]["quay.io"] == RUNNER["auths"]["quay.io"]
    assert doc["auths"][ngc["host"]]["username"] == "$oauthtoken"
    st = path.stat()
    assert (st.st_mode & 0o777, st.st_uid, st.st_gid) == (0o600, 65534, 65534)
    for kind in ("syncer-state", "previous"):
        side = Path(sidecar(str(path), kind)).stat()
        assert (side.st_mode & 0o777, side.st_uid) == (0o600, 65534)
    assert json.loads(Path(sidecar(str(path), "previous")).read_text()) == RUNNER
    state = json.loads(Path(sidecar(str(path), "syncer-state")).read_text())
    assert state["registry-syncer.io/managed-hosts"] == ngc["host"]
    world.assert_no_leak(json.dumps(state), "file target state")
    before = (st.st_ino, st.st_mtime_ns)
    result = world.run(config)
    assert f"target {path}: unchanged" in result.out
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == before, "no write when nothing changed"
    assert not [p for p in path.parent.iterdir() if "syncer-tmp" in p.name]


def test_missing_file_created_only_with_create(world: World, ngc: dict[str, Any], tmp_path: Path) -> None:
    absent, created = tmp_path / "a" / "config.json", tmp_path / "new" / ".docker" / "config.json"
    result = world.run(world.config([ngc], [{"file": str(absent)}, {"file": str(created), "create": True}]))
    assert result.code == 1
    assert f"target {absent}: failed - file does not exist (set create = true" in result.out
    assert not absent.exists() and not absent.parent.exists()
    assert f"target {created}: created" in result.out
    assert created.stat().st_mode & 0o777 == 0o600
    assert created.parent.stat().st_mode & 0o777 == 0o700
    assert list(json.loads(created.read_text())["auths"]) == [ngc["host"]]


def test_malformed_file_left_untouched(world: World, ngc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"auths": ')
    result = world.run(world.config([ngc], [{"file": str(path)}]))
    assert result.code == 1 and "malformed" in result.out
    assert path.read_text() == '{"auths": '


def test_concurrent_edit_is_a_conflict_and_is_kept(world: World, ngc: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"auths": {}}))
    store = FileStore()
    snapshot = store.read(str(path))
    path.write_text(json.dumps({"auths": {"theirs.io": {"auth": "eDp5"}}}))
    with pytest.raises(TargetError) as info:
        store.write(str(path), snapshot, b'{"auths": {}}\n', {})
    assert info.value.kind is TargetErrorKind.CONFLICT
    assert "theirs.io" in path.read_text()
    # through the syncer: their entry survives, ours is merged after a re-read
    result = world.run(world.config([ngc], [{"file": str(path)}]))
    assert result.code == 0, result.out
    assert set(json.loads(path.read_text())["auths"]) == {"theirs.io", ngc["host"]}


def test_rollback_of_a_file_target(world: World, ngc: dict[str, Any], htpasswd_registry: Any,
                                   tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(RUNNER))
    config = world.config([ngc], [{"file": str(path)}])
    assert world.run(config).code == 0
    first = path.read_bytes()
    key = sentinel("rotated")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    assert world.run(config).code == 0
    result = run_cmd(world, "rollback", config, "--file", str(path))
    assert result.code == 0, result.out + result.err
    assert path.read_bytes() == first and path.stat().st_mode & 0o777 == 0o600
    shown = run_cmd(world, "show", config, "--file", str(path), "--output", "json")
    entry = {e["host"]: e for e in json.loads(shown.out)["targets"][0]["entries"]}[ngc["host"]]
    assert entry["matches_vault"] == "no" and entry["managed"] is True


WRITER = """
import sys
import os
from syncer import safefs
path, a, b = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read()
dir_fd = safefs.open_dir(os.path.dirname(path))
print("ready", flush=True)
i = 0
while True:
    safefs.replace(dir_fd, os.path.basename(path), (a, b)[i % 2])
    i += 1
"""


def test_file_is_old_or_new_even_when_the_writer_is_killed(tmp_path: Path) -> None:
    """SIGKILL at random points of a write loop: the file always parses as one complete version."""
    versions = []
    for name in ("a", "b"):
        doc = {"auths": {f"{name}.io": {"auth": "eDp5"}}, "padding": name * 3_000_000}
        blob = json.dumps(doc).encode()
        (tmp_path / name).write_bytes(blob)
        versions.append(blob)
    path = tmp_path / "config.json"
    path.write_bytes(versions[0])
    rng = random.Random(1234)
    leftovers = 0
    for _ in range(10):
        proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(tmp_path / "a"),
                                 str(tmp_path / "b")], stdout=subprocess.PIPE, cwd=ROOT)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        assert path.read_bytes() in versions, "partial or corrupt file after SIGKILL"
        temps = [p for p in tmp_path.iterdir() if "syncer-tmp" in p.name]
        leftovers += bool(temps)
        for temp in temps:
            temp.unlink()
    assert leftovers, "no kill landed inside a write: the test proved nothing"


def test_config_validation_names_key_paths() -> None:
    from syncer.config import ConfigError, from_mapping

    data = {"vault": {"address": "http://v:8200", "auth": {"method": "token", "token_file": "/t"}},
            "registries": [{"host": "nvcr.io", "path": "ngc"}],
            "targets": [{"file": "relative/config.json"},
                        {"file": "/home/ci/.docker/config.json", "namespace": "a", "name": "b"},
                        {"namespace": "a", "name": "b", "drift": "fix", "prune": "yes"},
                        {"file": "/x/config.json", "drift": "report", "prune": True, "create": True}]}
    with pytest.raises(ConfigError) as info:
        from_mapping(data, {})
    assert info.value.problems == [
        "targets[0].file: must be an absolute path (got 'relative/config.json')",
        "targets[1].namespace: must not be set together with file (a file target is not a Secret)",
        "targets[1].name: must not be set together with file (a file target is not a Secret)",
        "targets[2].prune: must be true or false",
        "targets[2].drift: must be one of repair, report (got 'fix')",
    ]
    data["targets"] = data["targets"][3:]
    target = from_mapping(data, {}).targets[0]
    assert (target.file, target.drift, target.prune, target.ref) == ("/x/config.json", "report", True,
                                                                    "/x/config.json")


@pytest.mark.parametrize("before", [b'{"credsStore": "desktop"}\n', b""], ids=["no-auths", "empty"])
def test_rollback_restores_a_file_that_had_no_logins(tmp_path: Path, before: bytes) -> None:
    """An empty config.json or one without "auths" is a valid file target, so it is a valid rollback."""
    from syncer.history import rollback_file

    path = tmp_path / "config.json"
    path.write_bytes(before)
    store = FileStore()
    ours = b'{\n\t"auths": {"a.io": {"auth": "eDp5"}}\n}\n'
    store.write(str(path), store.read(str(path)), ours, {}, before)
    result = rollback_file(store, str(path), lambda: 0.0)
    assert result.ok, result.message
    assert path.read_bytes() == before
    assert result.changed[0] == "a.io: removed"
    assert Path(sidecar(str(path), "previous")).read_bytes() == ours
