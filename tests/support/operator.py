"""Run the operator subcommands (``syncer check|show|rollback``) in-process, leak-checked."""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path
from typing import Any

from syncer.cli import main
from tests.support.world import Result, World


def run_cmd(world: World, command: str, config: Path, *args: str) -> Result:
    """``syncer COMMAND --config CONFIG ARGS...``; every captured byte is checked for secrets."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([command, "--config", str(config), *args], env={})
    logging.getLogger().handlers.clear()
    result = Result(code, out.getvalue(), err.getvalue())
    world.outputs += [result.out, result.err]
    world.assert_no_leak(result.out + result.err, f"`syncer {command}` output")
    return result


def vault_state(world: World, paths: list[str]) -> dict[str, Any]:
    """KV metadata (versions and update times) of ``paths`` plus the live token count: equal
    before and after a command means it wrote nothing to Vault and leaked no login."""
    client = world.bao.client()
    state: dict[str, Any] = {"tokens": world.bao.count_tokens()}
    for path in paths:
        try:
            meta = client.secrets.kv.v2.read_secret_metadata(path=world.path(path), mount_point="secret")
            state[path] = (meta["data"]["current_version"], meta["data"]["updated_time"])
        except Exception:  # noqa: BLE001 - a missing path is part of the state
            state[path] = None
    return state


NS = "domino-compute"
NAME = "domino-quay-repos"
QUAY = {"username": "quay-robot", "password": "existing-quay-secret", "email": "."}


def ngc_login(world: World, registry: Any, label: str = "ngc") -> dict[str, Any]:
    """A fresh API key set in the registry and in Vault; returns the [[registries]] entry."""
    from tests.support.world import sentinel

    key = sentinel(label)
    registry.set_password("$oauthtoken", key)
    world.vault_put(label, password=key)
    return {"host": registry.host, "path": label, "username": "$oauthtoken"}


def domino_secret(world: World, **extra: Any) -> dict[str, Any]:
    """The customer's secret: an unmanaged quay.io entry and an unknown top-level key."""
    world.secrets.add(QUAY["password"])
    doc = {"auths": {"quay.io": QUAY}, "HttpHeaders": {"X-Team": "platform"}, **extra}
    return world.put_dockerconfig(NS, NAME, doc, annotations={"owner": "platform"})

