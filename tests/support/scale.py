"""Helpers shared by the fan-out and cost-model tests and the benchmark (bench/run.py):
many real registries, one login each, and a Syncer that lives across cycles."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from syncer import config as config_mod
from syncer.cli import App, build_app
from tests.support.registry import Registry

USER = "bot"


@dataclass
class Login:
    """One registry and the password it currently accepts (also what Vault holds)."""

    registry: Registry
    path: str
    password: str

    @property
    def host(self) -> str:
        return self.registry.host

    def spec(self) -> dict[str, Any]:
        """The ``[[registries]]`` entry (World.config prefixes the path)."""
        return {"host": self.host, "path": self.path}


@contextmanager
def registries(ca: trustme.CA, workdir: Path, count: int) -> Iterator[list[Registry]]:
    """``count`` real TLS + htpasswd docker-registry processes, started in parallel."""
    started: list[Registry] = []
    dirs = [workdir / f"registry-{i}" for i in range(count)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)

    def start(d: Path) -> Registry:
        reg = Registry(d, auth="htpasswd", ca=ca, users={USER: "initial-" + uuid.uuid4().hex})
        started.append(reg)
        return reg.start()

    try:
        with ThreadPoolExecutor(8) as pool:
            regs = list(pool.map(start, dirs))
        yield regs
    finally:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda r: r.stop(), started))


def rotate(login: Login, password: str, vault_put: Any) -> None:
    """New password at the registry and in Vault (registry first, as an operator would)."""
    login.registry.set_password(USER, password)
    vault_put(login.path, username=USER, password=password)
    login.password = password


def probes(regs: list[Registry]) -> int:
    """Basic-auth probes so far, counted from the registries' access logs (2 GET /v2/ each)."""
    return sum(r.v2_requests() for r in regs) // 2


def label_namespaces(kube: Any, names: list[str], labels: dict[str, str]) -> None:
    for name in names:
        kube.add_namespace(name, labels)


def long_lived_app(config: Path) -> App:
    """The CLI's wiring, kept across cycles (a daemon's view: caches survive between runs)."""
    return build_app(config_mod.load(config, {}), {}, dry_run=False)
