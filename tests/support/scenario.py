"""Small building blocks shared by the reliability, hygiene and least-privilege tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.world import World, sentinel


def make_world(tmp_path: Path, bao: Any, kube: Any, ca_file: str, *namespaces: str) -> World:
    """A World with the given namespaces already present on the Kubernetes API test server."""
    for namespace in namespaces:
        kube.add_namespace(namespace)
    return World(tmp_path, bao, kube, ca_file)


def ngc_login(world: World, registry: Any) -> dict[str, Any]:
    """nvcr.io stand-in: a fresh sentinel key set in the registry and in Vault at ``ngc``.

    Keys starting with ``_`` are for the test (``_key``, ``_registry``); ``registry_spec``
    strips them for the config.
    """
    key = sentinel("ngc")
    registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    return {"host": registry.host, "path": "ngc", "username": "$oauthtoken", "_key": key,
            "_registry": registry}


def registry_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A ``[[registries]]`` entry without the test-only ``_`` keys."""
    return {k: v for k, v in spec.items() if not k.startswith("_")}
