"""The fault-injection matrix: one test per row, real servers with faults in front of them.

Every row runs the whole syncer in-process through one long-lived App (the same Vault, Kubernetes
and probe clients across cycles, as in the daemon) and asserts:

* the outcome: exit code, a metric, and a log line naming the component;
* that nothing was lost: the secret is unchanged, or correctly updated;
* that the next healthy cycle recovers without a restart.

The scenario is always a rotation: the registry and Vault move to a new key, a fault hits, the
secret must keep the old key (or get the new one), and once the fault is gone the new key lands.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import json
import logging
import os
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from prometheus_client import CollectorRegistry, generate_latest

from syncer import config as config_mod
from syncer.cli import App, build_app
from syncer.metrics import Metrics
from syncer.report import Summary
from tests.support.net import free_port
from tests.support.proxy import FaultProxy
from tests.support.registry import FakeServer, Incoming, Reply
from tests.support.scenario import make_world, ngc_login, registry_spec
from tests.support.world import SYNCER_TOKEN, DaemonProcess, World, metric_value, sentinel

NS = "domino-compute"
NAME = "domino-quay-repos"
QUAY = {"username": "quay-robot", "password": "existing-quay-secret"}
TARGET = {"namespace": NS, "name": NAME}


# --------------------------------------------------------------------------- harness


class Harness:
    """One App for the whole test: cycles run like daemon runs, with metrics and captured logs."""

    def __init__(self, world: World, config: Path) -> None:
        self.world = world
        self.settings = config_mod.load(config, {})
        self.app: App = build_app(self.settings, {}, dry_run=False)
        self.registry = CollectorRegistry()
        self.metrics = Metrics(self.registry, self.settings)
        self.stream = io.StringIO()
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        root = logging.getLogger()
        self._level = root.level
        root.addHandler(self.handler)
        root.setLevel(logging.DEBUG)
        self.last: Summary | None = None

    def cycle(self) -> Summary:
        self.stream.seek(0)
        self.stream.truncate()
        summary = self.app.syncer.run_once()
        self.metrics.observe(summary)
        self.app.publish(summary)
        self.last = summary
        self.world.assert_no_leak(summary.render() + self.logs(), "cycle output")
        return summary

    def logs(self) -> str:
        return self.stream.getvalue()

    def text(self) -> str:
        return summary_text(self.last) + "\n" + self.logs()

    def metric(self, metric: str, /, **labels: str) -> float | None:
        text = generate_latest(self.registry).decode()
        self.world.assert_no_leak(text, "/metrics")
        return metric_value(text, metric, **labels)

    def close(self) -> None:
        self.app.syncer.vault.close()
        self.app.api.close()
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._level)


def summary_text(summary: Summary | None) -> str:
    return summary.render() if summary else ""


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    return make_world(tmp_path, bao, kube, ca_file, NS)


@pytest.fixture
def harness(world: World) -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(config: Path) -> Harness:
        h = Harness(world, config)
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


@pytest.fixture
def ngc(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    return ngc_login(world, htpasswd_registry)


reg = registry_spec


def seed(world: World, name: str = NAME) -> None:
    world.put_dockerconfig(NS, name, {"auths": {"quay.io": QUAY}, "HttpHeaders": {"X-Team": "p"}})


def rotate(world: World, ngc: dict[str, Any]) -> str:
    """Rotate the NGC key in the registry and in Vault; returns the new key."""
    new = sentinel("rotated")
    ngc["_registry"].set_password("$oauthtoken", new)
    world.vault_put("ngc", password=new)
    return new


def password(world: World, host: str, name: str = NAME) -> str | None:
    entry = world.secret_doc(NS, name)["auths"].get(host)
    return entry["password"] if entry else None


def assert_kept(world: World, before: dict[str, Any], name: str = NAME) -> None:
    """Nothing lost and nothing written: the very same object (resourceVersion and data)."""
    assert world.kube.get_secret(NS, name) == before


def assert_recovered(h: Harness, world: World, host: str, key: str, name: str = NAME) -> None:
    """The next healthy cycle, same process: exit 0, the new key in place, others untouched."""
    summary = h.cycle()
    assert summary.exit_code == 0, h.text()
    assert password(world, host, name) == key
    doc = world.secret_doc(NS, name)
    assert doc["auths"]["quay.io"] == QUAY and doc["HttpHeaders"] == {"X-Team": "p"}
    assert h.metric("syncer_secret_sync_success", secret_namespace=NS, secret_name=name) == 1


def started(h: Harness, world: World, ngc: dict[str, Any]) -> None:
    """First healthy cycle: the current key is in the secret."""
    assert h.cycle().exit_code == 0, h.text()
    assert password(world, ngc["host"]) == ngc["_key"]


def rotate_under_fault(h: Harness, world: World, ngc: dict[str, Any],
                       fault: Callable[[], None]) -> tuple[Summary, str, dict[str, Any]]:
    """Healthy start, rotation, fault, one failing cycle: (its summary, new key, secret before)."""
    started(h, world, ngc)
    new = rotate(world, ngc)
    before = world.kube.get_secret(NS, NAME)
    fault()
    summary = h.cycle()
    assert summary.exit_code == 1
    return summary, new, before


@pytest.fixture
def vault_proxy(world: World) -> Iterator[FaultProxy]:
    proxy = FaultProxy("127.0.0.1", int(world.bao.address.rsplit(":", 1)[1])).start()
    yield proxy
    proxy.stop()


# =========================================================================== Vault


def vault_row(world: World, ngc: dict[str, Any], harness: Callable[..., Harness], proxy: FaultProxy,
              fault: Callable[[], None], reason: str, words: tuple[str, ...],
              timeout: str = "2s") -> None:
    """Common shape of the Vault rows that go through the proxy."""
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET], vault={"address": proxy.url, "timeout": timeout}))
    summary, new, before = rotate_under_fault(h, world, ngc, fault)
    report = summary.registries[0]
    assert (report.stage, report.reason) == ("vault", reason), h.text()
    for word in words:
        assert word in h.text(), (word, h.text())
    assert "ERROR syncer.sync: registry" in h.logs() and "vault read failed" in h.logs()
    assert h.metric("syncer_errors_total", stage="vault") == 1
    assert h.metric("syncer_registry_sync_success", registry=ngc["host"]) == 0
    assert_kept(world, before)
    proxy.delay = 0
    proxy.set_mode("pass")
    assert_recovered(h, world, ngc["host"], new)


def test_vault_unreachable(world: World, ngc: dict[str, Any], harness: Any, vault_proxy: FaultProxy) -> None:
    vault_row(world, ngc, harness, vault_proxy, lambda: vault_proxy.set_mode("refuse"),
              "vault_unreachable", ("cannot reach Vault", world.path("ngc")))


def test_vault_connection_reset_mid_response(
        world: World, ngc: dict[str, Any], harness: Any, vault_proxy: FaultProxy) -> None:
    def fault() -> None:
        vault_proxy.cut_after = 40  # inside the response headers
        vault_proxy.set_mode("cut")

    vault_row(world, ngc, harness, vault_proxy, fault, "vault_unreachable", ("cannot reach Vault",))
    assert vault_proxy.faults >= 1


def test_vault_slower_than_timeout(
        world: World, ngc: dict[str, Any], harness: Any, vault_proxy: FaultProxy) -> None:
    def fault() -> None:
        vault_proxy.delay = 1.5
        vault_proxy.drop_connections()  # the delay applies to new connections

    t0 = time.monotonic()
    vault_row(world, ngc, harness, vault_proxy, fault, "vault_unreachable",
              ("did not answer within 0.3s",), timeout="300ms")
    vault_proxy.delay = 0
    assert time.monotonic() - t0 < 15


@pytest.mark.parametrize(("status", "body", "headers", "reason", "word"), [
    (503, b'{"errors":["Vault is sealed"]}', [], "vault_sealed", "sealed"),
    (429, b'{"errors":["request rate limited"]}', [("Retry-After", "2")], "vault_rate_limited",
     "rate limit"),
    (500, b'{"errors":["internal error"]}', [], "vault_server", "server error"),
], ids=["sealed-503", "429-retry-after", "500"])
def test_vault_http_status(world: World, ngc: dict[str, Any], harness: Any, vault_proxy: FaultProxy,
                           status: int, body: bytes, headers: list[tuple[str, str]], reason: str,
                           word: str) -> None:
    vault_row(world, ngc, harness, vault_proxy, lambda: vault_proxy.answer(status, body, headers),
              reason, (word,))


def test_vault_403_on_one_path(world: World, ngc: dict[str, Any], harness: Any,
                               htpasswd_registry: Any) -> None:
    """A token whose policy covers only NGC's path: the other registry fails alone, NGC still syncs."""
    alias = ngc["host"].replace("127.0.0.1", "localhost")
    world.vault_put("other", username="robot$ci", password=htpasswd_registry.users["robot$ci"])
    policy = world.prefix + "-ngc-only"
    world.bao.write_policy(policy, f'path "secret/data/{world.path("ngc")}" {{ capabilities = ["read"] }}')
    token = world.bao.create_token([policy])
    world.secrets.add(token)
    world.token_file.write_text(token)
    seed(world)
    other = {"host": alias, "path": "other"}
    h = harness(world.config([reg(ngc), other], [TARGET]))
    summary = h.cycle()
    assert summary.exit_code == 1
    by_host = {r.host: r for r in summary.registries}
    assert (by_host[alias].reason, by_host[ngc["host"]].reason) == ("vault_forbidden", "")
    assert f"Vault denied access to secret/{world.path('other')}" in h.text()
    assert h.metric("syncer_registry_sync_success", registry=alias) == 0
    assert h.metric("syncer_registry_sync_success", registry=ngc["host"]) == 1
    assert password(world, ngc["host"]) == ngc["_key"]
    assert alias not in world.secret_doc(NS, NAME)["auths"]
    # Policy fixed in Vault: the same token now reads both paths, no restart, no new token.
    world.bao.write_policy(policy, f'path "secret/data/{world.prefix}/*" {{ capabilities = ["read"] }}')
    assert_recovered(h, world, alias, htpasswd_registry.users["robot$ci"])
    assert h.app.syncer.vault.logins == 1


def test_vault_token_revoked_token_method(world: World, ngc: dict[str, Any], harness: Any) -> None:
    """Every request answers 403 once the supplied token is revoked; a new token file heals it."""
    policy = world.bao.read_policy([f"{world.prefix}/*"])
    token = world.bao.create_token([policy])
    world.secrets.add(token)
    world.token_file.write_text(token)
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET]))
    started(h, world, ngc)
    new = rotate(world, ngc)
    before = world.kube.get_secret(NS, NAME)
    world.bao.revoke_token(token)
    summary = h.cycle()
    assert summary.exit_code == 1
    assert summary.registries[0].reason == "vault_auth"
    assert "supplied Vault token is revoked or expired" in h.text()
    assert h.metric("syncer_errors_total", stage="vault") == 1
    assert_kept(world, before)
    fresh = world.bao.create_token([policy])
    world.secrets.add(fresh)
    world.token_file.write_text(fresh)
    assert_recovered(h, world, ngc["host"], new)
    assert h.app.syncer.vault.logins == 2


def approle(world: World, ttl: str = "1h", max_ttl: str = "") -> dict[str, str]:
    policy = world.bao.read_policy([f"{world.prefix}/*"])
    mount = world.prefix + "-approle"
    role_id, secret_id = world.bao.enable_approle(mount=mount, policies=[policy], token_ttl=ttl,
                                                  token_max_ttl=max_ttl)
    secret_file = world.tmp / "secret-id"
    secret_file.write_text(secret_id)
    world.secrets.add(secret_id)
    return {"method": "approle", "mount": mount, "role_id": role_id,
            "secret_id_file": str(secret_file), "token_file": ""}


def test_vault_token_revoked_approle_relogs_in_same_cycle(
        world: World, ngc: dict[str, Any], harness: Any) -> None:
    """A revoked login token gives 403 on every request: one fresh login, and the cycle succeeds."""
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET], auth=approle(world)))
    started(h, world, ngc)
    vault = h.app.syncer.vault
    world.secrets.add(vault._token)
    world.bao.revoke_token(vault._token)
    new = rotate(world, ngc)
    summary = h.cycle()
    assert summary.exit_code == 0, h.text()
    assert password(world, ngc["host"]) == new
    assert vault.logins == 2
    assert "Vault token was rejected (revoked or expired); logging in again" in h.logs()
    assert_recovered(h, world, ngc["host"], new)
    assert vault.logins == 2, "no login per cycle"


def test_vault_token_expires_between_cycles(world: World, ngc: dict[str, Any], harness: Any) -> None:
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET], auth=approle(world, ttl="1s", max_ttl="1s")))
    started(h, world, ngc)
    vault = h.app.syncer.vault
    world.secrets.add(vault._token)
    expired = vault._token
    new = rotate(world, ngc)
    time.sleep(1.3)
    assert not world.bao.token_valid(expired)
    assert_recovered(h, world, ngc["host"], new)
    assert vault.logins == 2
    assert h.metric("syncer_errors_total", stage="vault") == 0


@pytest.mark.parametrize("how", ["deleted", "destroyed"])
def test_kv2_latest_version_deleted_or_destroyed(
        world: World, ngc: dict[str, Any], harness: Any, how: str) -> None:
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET]))
    started(h, world, ngc)
    rotate(world, ngc)
    before = world.kube.get_secret(NS, NAME)
    path = world.path("ngc")
    (world.bao.kv_delete_latest if how == "deleted" else world.bao.kv_destroy_latest)(path)
    summary = h.cycle()
    assert summary.exit_code == 1
    assert summary.registries[0].reason == "vault_missing"
    assert f"the latest version (2) of Vault secret secret/{path} is {how}" in h.text()
    assert_kept(world, before), "never falls back to an older version or drops the entry"
    newest = rotate(world, ngc)
    assert_recovered(h, world, ngc["host"], newest)
    assert h.metric("syncer_credential_version", registry=ngc["host"]) == 3


@pytest.mark.parametrize(("value", "what"), [
    (12345, "must be a string, not a number"),
    ({"nested": "map"}, "must be a string, not a map"),
    ("", "is empty"),
], ids=["number", "nested-map", "empty-string"])
def test_kv_value_of_wrong_type(world: World, ngc: dict[str, Any], harness: Any, value: Any,
                                what: str) -> None:
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET]))
    started(h, world, ngc)
    before = world.kube.get_secret(NS, NAME)
    world.vault_put("ngc", password=value)
    summary = h.cycle()
    assert summary.exit_code == 1
    assert summary.registries[0].reason == "vault_invalid"
    assert f"key 'password' of Vault secret secret/{world.path('ngc')} {what}" in h.text()
    assert_kept(world, before)
    new = rotate(world, ngc)
    assert_recovered(h, world, ngc["host"], new)


# =========================================================================== Kubernetes


def kube_row(world: World, ngc: dict[str, Any], harness: Callable[..., Harness],
             fault: Callable[[], None], heal: Callable[[], None], reason: str,
             **sections: dict[str, Any]) -> Harness:
    """Common shape of the Kubernetes rows: target fails alone, secret kept, recovery."""
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET], **sections))
    summary, new, before = rotate_under_fault(h, world, ngc, fault)
    assert summary.registries[0].reason == "", "the registry itself is fine"
    target = summary.targets[0]
    assert (target.outcome.value, target.reason) == ("failed", reason), h.text()
    assert f"ERROR syncer.sync: target {NS}/{NAME}: " in h.logs() and reason in h.logs()
    assert h.metric("syncer_secret_sync_success", secret_namespace=NS, secret_name=NAME) == 0
    assert h.metric("syncer_errors_total", stage="kubernetes") == 1
    after = world.kube.get_secret(NS, NAME)
    if after != before:  # only a write that landed before the client gave up may differ
        assert password(world, ngc["host"]) == new
    heal()
    assert_recovered(h, world, ngc["host"], new)
    return h


def secrets_verb(verb: str) -> Callable[[Any], bool]:
    return lambda r: r.resource == "secrets" and r.verb == verb


def test_kube_unreachable(world: World, ngc: dict[str, Any], harness: Any) -> None:
    proxy = FaultProxy("127.0.0.1", world.kube.port).start()
    try:
        kubeconfig = json.loads(Path(world.kubeconfig).read_text())
        kubeconfig["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{proxy.port}"
        path = world.tmp / "kubeconfig-proxy"
        path.write_text(json.dumps(kubeconfig))
        world.kube.reset_requests()
        kube_row(world, ngc, harness, lambda: proxy.set_mode("refuse"), lambda: proxy.set_mode("pass"),
                 "unreachable", kubernetes={"kubeconfig": str(path)})
    finally:
        proxy.stop()


def kubeconfig_with_token_file(world: World, token_file: Path) -> Path:
    kubeconfig = json.loads(Path(world.kubeconfig).read_text())
    kubeconfig["users"][0]["user"] = {"tokenFile": token_file.name}  # relative to the kubeconfig
    path = world.tmp / "kubeconfig-tokenfile"
    path.write_text(json.dumps(kubeconfig))
    return path


def test_kube_401_expired_token_then_rotated_file(world: World, ngc: dict[str, Any], harness: Any) -> None:
    """The projected token expired (401): the target fails; once kubelet rotates the file, the
    same client picks up the new token with no restart."""
    token_file = world.tmp / "sa-token"
    token_file.write_text("projected-token-1\n")
    world.kube.add_token("projected-token-1", user="system:serviceaccount:syncer:syncer")
    config = kubeconfig_with_token_file(world, token_file)

    def expire() -> None:
        world.kube.remove_token("projected-token-1")

    def rotate_file() -> None:
        world.kube.add_token("projected-token-2", user="system:serviceaccount:syncer:syncer")
        tmp = token_file.with_suffix(".new")
        tmp.write_text("projected-token-2\n")
        tmp.replace(token_file)  # atomic swap, as kubelet does

    kube_row(world, ngc, harness, expire, rotate_file, "unauthorized",
             kubernetes={"kubeconfig": str(config)})


@pytest.mark.parametrize("target", [TARGET, {"namespace_selector": "fanout=yes", "name": NAME}],
                         ids=["fixed", "selector"])
def test_kube_401_triggers_token_file_reload(world: World, ngc: dict[str, Any], harness: Any,
                                             target: dict[str, str]) -> None:
    """A 401 makes the client re-read the token file even when the file looks unchanged (same size
    and mtime), and the request is retried once with the new token inside the same cycle. For a
    selector target the first request to meet the 401 is the namespace LIST."""
    token_file = world.tmp / "sa-token"
    token_file.write_text("tok-AAAA")
    world.kube.add_token("tok-AAAA", user="syncer")
    world.kube.add_namespace(NS, {"fanout": "yes"})
    seed(world)
    h = harness(world.config([reg(ngc)], [target],
                             kubernetes={"kubeconfig": str(kubeconfig_with_token_file(world, token_file))}))
    started(h, world, ngc)
    new = rotate(world, ngc)
    stat = token_file.stat()
    world.kube.remove_token("tok-AAAA")
    world.kube.add_token("tok-BBBB", user="syncer")
    with token_file.open("r+") as f:  # rewrite in place: same inode, same size
        f.write("tok-BBBB")
    os.utime(token_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    world.kube.reset_requests()
    summary = h.cycle()
    assert summary.exit_code == 0, h.text()
    assert password(world, ngc["host"]) == new
    unauthorized = [r for r in world.kube.requests if r.status == 401]
    assert len(unauthorized) == 1, "exactly one 401, then the re-read token"
    assert unauthorized[0].resource == ("namespaces" if "namespace_selector" in target else "secrets")
    assert "re-read the rotated token file" in h.logs()


def test_kube_403_on_one_target(world: World, ngc: dict[str, Any], harness: Any) -> None:
    seed(world)
    seed(world, "locked")
    h = harness(world.config([reg(ngc)], [TARGET, {"namespace": NS, "name": "locked"}]))
    started(h, world, ngc)
    new = rotate(world, ngc)
    before = world.kube.get_secret(NS, "locked")
    world.kube.set_rules(SYNCER_TOKEN, [
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"],
         "resourceNames": [NAME], "namespaces": [NS]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}])
    summary = h.cycle()
    assert summary.exit_code == 1
    outcomes = {t.target.name: (t.outcome.value, t.reason) for t in summary.targets}
    assert outcomes == {NAME: ("updated", ""), "locked": ("failed", "forbidden")}
    assert f"target {NS}/locked: secret {NS}/locked: forbidden" in h.logs()
    assert h.metric("syncer_secret_sync_success", secret_namespace=NS, secret_name="locked") == 0
    assert h.metric("syncer_secret_sync_success", secret_namespace=NS, secret_name=NAME) == 1
    assert_kept(world, before, "locked")
    world.kube.set_rules(SYNCER_TOKEN, None)
    assert_recovered(h, world, ngc["host"], new, "locked")


def test_kube_404_namespace(world: World, ngc: dict[str, Any], harness: Any) -> None:
    h = harness(world.config([reg(ngc)], [{"namespace": "not-yet", "name": NAME, "create": True}]))
    summary = h.cycle()
    assert summary.exit_code == 1
    target = summary.targets[0]
    assert (target.outcome.value, target.reason) == ("failed", "not_found")
    assert "namespaces \"not-yet\" not found" in target.detail
    assert h.metric("syncer_secret_sync_success", secret_namespace="not-yet", secret_name=NAME) == 0
    world.kube.add_namespace("not-yet")
    summary = h.cycle()
    assert summary.exit_code == 0, h.text()
    assert summary.targets[0].outcome.value == "created"
    doc = json.loads(base64.b64decode(world.kube.get_secret("not-yet", NAME)["data"][".dockerconfigjson"]))
    assert doc["auths"][ngc["host"]]["password"] == ngc["_key"]


def test_kube_409_on_every_attempt_is_bounded(world: World, ngc: dict[str, Any], harness: Any) -> None:
    world.kube.reset_requests()
    h = kube_row(world, ngc, harness,
                 lambda: (world.kube.reset_requests(),
                          world.kube.add_fault(secrets_verb("patch"), status=409, reason="Conflict",
                                               times=None)),
                 lambda: (world.kube.clear_faults(), world.kube.reset_requests()),
                 "conflict", sync={"conflict_retries": 2})
    assert world.kube.count(verb="patch", resource="secrets") == 1, "recovery: one write"
    assert h.metric("syncer_secret_conflicts_total", secret_namespace=NS, secret_name=NAME) == 3


def test_kube_409_attempts_counted_exactly(world: World, ngc: dict[str, Any], harness: Any) -> None:
    seed(world)
    h = harness(world.config([reg(ngc)], [TARGET], sync={"conflict_retries": 3}))
    started(h, world, ngc)
    rotate(world, ngc)
    world.kube.reset_requests()
    world.kube.add_fault(secrets_verb("patch"), status=409, reason="Conflict", times=None)
    summary = h.cycle()
    assert "still conflicting after 4 attempts" in summary.targets[0].detail
    assert world.kube.count(verb="patch", resource="secrets") == 4
    assert world.kube.count(verb="get", resource="secrets") == 4, "re-read before every retry"
    assert world.kube.writes() == 0


@pytest.mark.parametrize(("status", "reason", "kind"), [
    (422, "Invalid", "invalid"),
    (429, "TooManyRequests", "rate_limited"),
    (500, "InternalError", "server_error"),
])
def test_kube_status_on_write(world: World, ngc: dict[str, Any], harness: Any, status: int,
                              reason: str, kind: str) -> None:
    kube_row(world, ngc, harness,
             lambda: world.kube.add_fault(secrets_verb("patch"), status=status, reason=reason),
             world.kube.clear_faults, kind)


@pytest.mark.parametrize(("status", "kind"), [(429, "rate_limited"), (500, "server_error")])
def test_kube_status_on_read(world: World, ngc: dict[str, Any], harness: Any, status: int,
                             kind: str) -> None:
    kube_row(world, ngc, harness,
             lambda: world.kube.add_fault(secrets_verb("get"), status=status, times=None),
             world.kube.clear_faults, kind)


@pytest.mark.parametrize("verb", ["get", "patch"])
def test_kube_slower_than_timeout(world: World, ngc: dict[str, Any], harness: Any, verb: str) -> None:
    """A slow read fails the target; a slow write may still land server-side (kube applies it after
    the client gave up), and the next cycle then finds the secret already up to date."""
    kube_row(world, ngc, harness,
             lambda: world.kube.add_fault(secrets_verb(verb), delay=0.8, times=None),
             world.kube.clear_faults, "timeout", kubernetes={"timeout": "300ms"})


def test_kube_secret_deleted_between_read_and_write(world: World, ngc: dict[str, Any], harness: Any) -> None:
    """A deliberate delete is respected (no resurrection without create = true), and with
    create = true the secret is re-created in the same cycle with the full merge."""
    seed(world)
    seed(world, "recreate")
    targets = [TARGET, {"namespace": NS, "name": "recreate", "create": True}]
    h = harness(world.config([reg(ngc)], targets))
    started(h, world, ngc)
    new = rotate(world, ngc)
    world.kube.before(secrets_verb("patch"), lambda: world.kube.delete_secret(NS, NAME))
    world.kube.before(lambda r: r.verb == "patch" and r.name == "recreate",
                      lambda: world.kube.delete_secret(NS, "recreate"))
    summary = h.cycle()
    outcomes = {t.target.name: (t.outcome.value, t.reason) for t in summary.targets}
    assert outcomes == {NAME: ("failed", "not_found"), "recreate": ("created", "")}, h.text()
    assert summary.exit_code == 1
    assert world.kube.get_secret(NS, NAME) is None, "not resurrected"
    assert password(world, ngc["host"], "recreate") == new
    seed(world)
    assert_recovered(h, world, ngc["host"], new)


# =========================================================================== registry


def registry_row(world: World, harness: Callable[..., Harness], host: str, *, written: bool,
                 reason: str, exit_code: int = 1, **probe: Any) -> Harness:
    """A registry at ``host`` (fake or proxied): run once, check outcome, write policy and leaks."""
    key = sentinel("fake")
    world.vault_put("fake", username="robot$ci", password=key)
    seed(world)
    before = world.kube.get_secret(NS, NAME)
    h = harness(world.config([{"host": host, "path": "fake"}], [TARGET], probe=probe or {}))
    summary = h.cycle()
    assert summary.exit_code == exit_code, h.text()
    report = summary.registries[0]
    probe_reason = report.probe.reason if report.probe else None
    assert probe_reason == reason, h.text()
    if reason:
        assert f"ERROR syncer.sync: registry {host}" in h.logs()
        assert h.metric("syncer_registry_probe_success", registry=host) == 0
        assert h.metric("syncer_errors_total", stage="probe") == 1
    if written:
        assert password(world, host) == key
    else:
        assert_kept(world, before)
    return h


def fake_registry(users: dict[str, str], *challenges: str,
                  before: Callable[[Incoming], Reply | None] | None = None) -> Callable[[Incoming], Reply]:
    lines = challenges or ('Basic realm="fake"',)

    def respond(req: Incoming) -> Reply:
        if before is not None and (early := before(req)) is not None:
            return early
        if req.path != "/v2/":
            return Reply(404)
        if req.basic and users.get(req.basic[0]) == req.basic[1]:
            return Reply.json(200, {})
        return Reply(401, [("WWW-Authenticate", line) for line in lines])

    return respond


def users_of(world: World) -> Callable[[], dict[str, str]]:
    """The fake's user table follows whatever Vault holds (so every login is valid)."""
    def users() -> dict[str, str]:
        data = world.bao.client().secrets.kv.v2.read_secret_version(
            path=world.path("fake"), mount_point="secret", raise_on_deleted_version=True)["data"]["data"]
        return {data["username"]: data["password"]}
    return users


class LiveUsers(dict[str, str]):
    def __init__(self, source: Callable[[], dict[str, str]]) -> None:
        super().__init__()
        self.source = source

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self.source().get(key, default)


def test_registry_tls_handshake_failure(world: World, harness: Any, htpasswd_registry: Any) -> None:
    """The handshake is cut: probe error (tls/connection), no credentials sent, the login is
    still written (the failure says nothing about it), and the next cycle verifies it."""
    port = int(htpasswd_registry.host.rsplit(":", 1)[1])
    proxy = FaultProxy("127.0.0.1", port).start()
    try:
        proxy.cut_after = 10
        proxy.set_mode("cut")
        host = f"127.0.0.1:{proxy.port}"
        htpasswd_registry.set_password("robot$ci", "will-be-replaced")
        key = sentinel("fake")
        htpasswd_registry.set_password("robot$ci", key)
        world.vault_put("fake", username="robot$ci", password=key)
        seed(world)
        h = harness(world.config([{"host": host, "path": "fake"}], [TARGET]))
        summary = h.cycle()
        assert summary.exit_code == 1
        assert summary.registries[0].probe.reason in ("tls", "connection"), h.text()
        assert f"ERROR syncer.sync: registry {host}: probe error" in h.logs()
        assert password(world, host) == key
        proxy.set_mode("pass")
        assert_recovered(h, world, host, key)
        assert h.metric("syncer_registry_probe_success", registry=host) == 1
    finally:
        proxy.stop()


def _cert_server(ca: trustme.CA, *, hostnames: tuple[str, ...] = ("127.0.0.1",),
                 expired: bool = False) -> FakeServer:
    """A FakeServer whose certificate is for other hosts, or expired, signed by the test CA."""
    server = FakeServer(ca, fake_registry({}))
    if expired:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder().subject_name(x509.Name([]))
                .issuer_name(ca_cert.subject).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress")
                                                                            .ip_address("127.0.0.1"))]),
                               critical=True)
                .sign(ca_key, hashes.SHA256()))  # type: ignore[arg-type]
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        keyfile = Path(f"/tmp/expired-{server.port}.pem")
        keyfile.write_bytes(cert_pem + key_pem)
        context.load_cert_chain(str(keyfile))
        keyfile.unlink()
    else:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ca.issue_cert(*hostnames).configure_cert(context)
    server._server.context = context
    return server


@pytest.mark.parametrize("problem", ["wrong-host", "expired"])
def test_registry_bad_certificate(world: World, harness: Any, ca: trustme.CA, problem: str) -> None:
    server = _cert_server(ca, hostnames=("registry.other.example",), expired=problem == "expired")
    try:
        h = registry_row(world, harness, server.host, written=True, reason="tls")
        assert server.requests == [], "no request (so no credential) crossed a bad TLS session"
        assert "TLS verification of" in h.text()
        assert ("expired" if problem == "expired" else "match") in h.text().lower()
    finally:
        server.stop()


def test_registry_timeout_then_recovery(world: World, harness: Any, registry_fake_server: Any) -> None:
    slow = {"on": True}
    server = registry_fake_server(fake_registry(
        LiveUsers(users_of(world)), before=lambda r: Reply(200, delay=1.0) if slow["on"] else None))
    h = registry_row(world, harness, server.host, written=True, reason="timeout", timeout="300ms")
    slow["on"] = False
    assert h.cycle().exit_code == 0, h.text()
    assert h.metric("syncer_registry_probe_failures_total", registry=server.host, reason="timeout") == 1


def test_registry_500_then_recovery(world: World, harness: Any, registry_fake_server: Any) -> None:
    failing = {"on": True}
    server = registry_fake_server(fake_registry(
        LiveUsers(users_of(world)), before=lambda r: Reply(500) if failing["on"] else None))
    h = registry_row(world, harness, server.host, written=True, reason="http_500")
    assert h.metric("syncer_registry_probe_failures_total", registry=server.host, reason="http_5xx") == 1
    failing["on"] = False
    assert h.cycle().exit_code == 0, h.text()
    assert h.metric("syncer_registry_probe_success", registry=server.host) == 1


def test_registry_500_once_is_retried_within_the_cycle(
        world: World, harness: Any, registry_fake_server: Any) -> None:
    calls = {"n": 0}

    def first_fails(req: Incoming) -> Reply | None:
        calls["n"] += 1
        return Reply(500) if calls["n"] == 1 else None

    server = registry_fake_server(fake_registry(LiveUsers(users_of(world)), before=first_fails))
    registry_row(world, harness, server.host, written=True, reason="", exit_code=0, retries=1)
    assert calls["n"] == 3, "500, retried anonymous ping, then the Basic login"


def test_registry_429_retry_after(world: World, harness: Any, registry_fake_server: Any) -> None:
    calls = {"n": 0}

    def limited(req: Incoming) -> Reply | None:
        calls["n"] += 1
        return Reply(429, [("Retry-After", "0")]) if calls["n"] == 1 else None

    server = registry_fake_server(fake_registry(LiveUsers(users_of(world)), before=limited))
    registry_row(world, harness, server.host, written=True, reason="", exit_code=0, retries=1)
    assert calls["n"] == 3


def test_registry_429_persistent(world: World, harness: Any, registry_fake_server: Any) -> None:
    server = registry_fake_server(fake_registry(
        {}, before=lambda r: Reply(429, [("Retry-After", "0")])))
    h = registry_row(world, harness, server.host, written=True, reason="http_429", retries=1)
    assert "after 2 attempts" in h.text()


def test_registry_cross_host_redirect_keeps_authorization(
        world: World, harness: Any, registry_fake_server: Any) -> None:
    elsewhere = registry_fake_server(lambda r: Reply.json(200, {}))

    def redirect(req: Incoming) -> Reply | None:
        if req.authorization:
            return Reply(307, [("Location", elsewhere.url_for("localhost") + "/v2/")])
        return None

    server = registry_fake_server(fake_registry({}, before=redirect))
    registry_row(world, harness, server.host, written=True, reason="redirect")
    assert elsewhere.requests == [], "nothing, and certainly no Authorization, followed the redirect"
    assert any(r.authorized for r in server.requests)


def test_registry_http_realm_refused(world: World, harness: Any, registry_fake_server: Any) -> None:
    server = registry_fake_server(fake_registry(
        {}, 'Bearer realm="http://127.0.0.1:1/token",service="x"'))
    registry_row(world, harness, server.host, written=False, reason="insecure")
    assert not any(r.authorized for r in server.requests), "credentials never sent"


def test_registry_malformed_www_authenticate(world: World, harness: Any, registry_fake_server: Any) -> None:
    server = registry_fake_server(fake_registry({}, 'Bearer realm="https://unterminated'))
    registry_row(world, harness, server.host, written=True, reason="protocol")
    assert not any(r.authorized for r in server.requests)


def test_registry_negotiate_and_basic(world: World, harness: Any, registry_fake_server: Any) -> None:
    server = registry_fake_server(fake_registry(LiveUsers(users_of(world)), "Negotiate",
                                                'Basic realm="fake"'))
    h = registry_row(world, harness, server.host, written=True, reason="", exit_code=0)
    assert h.metric("syncer_registry_probe_success", registry=server.host) == 1


@pytest.mark.parametrize("shape", ["none", "not_json"])
def test_token_endpoint_without_token(world: World, harness: Any, token_registry: Any, shape: str) -> None:
    good = sentinel("bearer")
    token_registry.token_server.users["robot$ci"] = good
    world.vault_put("harbor", username="robot$ci", password=good)
    seed(world)
    h = harness(world.config([{"host": token_registry.host, "path": "harbor"}], [TARGET]))
    token_registry.token_server.shape = shape
    summary = h.cycle()
    assert summary.exit_code == 1
    assert summary.registries[0].probe.reason == "protocol"
    assert "answered without a token" in h.text() or "did not answer with a JSON object" in h.text()
    assert password(world, token_registry.host) == good, "indeterminate: written, reported"
    token_registry.token_server.shape = "token"
    assert_recovered(h, world, token_registry.host, good)
    world.secrets.update(t.token for t in token_registry.token_server.issued)
    world.assert_no_leak(h.logs(), "logs (registry tokens)")


def test_anonymous_token_is_not_a_login(world: World, harness: Any, token_registry: Any) -> None:
    """The token server hands anonymous tokens to anyone without credentials; a wrong password
    must still be a rejection, never "ok" through an anonymous token."""
    good = sentinel("bearer")
    token_registry.token_server.users["robot$ci"] = good
    world.vault_put("harbor", username="robot$ci", password=good)
    seed(world)
    h = harness(world.config([{"host": token_registry.host, "path": "harbor"}], [TARGET]))
    started_ok = h.cycle()
    assert started_ok.exit_code == 0, h.text()
    before = world.kube.get_secret(NS, NAME)
    world.vault_put("harbor", username="robot$ci", password=sentinel("wrong"))
    token_registry.token_server.issued.clear()
    summary = h.cycle()
    assert summary.exit_code == 1
    assert summary.registries[0].outcome.value == "rejected"
    assert not [t for t in token_registry.token_server.issued if t.subject == ""], "no anonymous token"
    assert_kept(world, before)
    assert h.metric("syncer_registry_probe_failures_total", registry=token_registry.host,
                    reason="rejected") == 1
    world.vault_put("harbor", username="robot$ci", password=good)
    assert_recovered(h, world, token_registry.host, good)


# =========================================================================== process


def test_sigterm_during_write_completes_or_never_happens(world: World, ngc: dict[str, Any]) -> None:
    """SIGTERM while the PATCH is in flight: the daemon finishes that write and exits 0. The
    secret is the complete new document, never a half state, and exactly one write landed."""
    seed(world)
    port = free_port()
    config = world.config([reg(ngc)], [TARGET],
                          schedule={"interval": "60s", "jitter": "0s"},
                          metrics={"listen": f"127.0.0.1:{port}"}, kubernetes={"timeout": "10s"})
    world.kube.add_fault(secrets_verb("patch"), delay=1.0)
    world.kube.reset_requests()
    daemon = DaemonProcess(world, config, port)
    # The request is recorded on arrival, then sleeps in the fault: it is in flight right now.
    daemon.wait_for(lambda: world.kube.count(verb="patch", resource="secrets") == 1,
                    what="the PATCH in flight")
    daemon.proc.send_signal(signal.SIGTERM)
    daemon.proc.wait(timeout=10)  # one signal only: a second one means "exit at once"
    code = daemon.stop()
    assert code == 0, daemon.output()
    assert world.kube.writes() == 1
    assert world.kube.count(verb="patch", resource="secrets") == 1
    assert password(world, ngc["host"]) == ngc["_key"]
    doc = world.secret_doc(NS, NAME)
    assert doc["auths"]["quay.io"] == QUAY and doc["HttpHeaders"] == {"X-Team": "p"}
    assert "shut down cleanly" in daemon.output()


# =========================================================================== hostile values

HOSTILE_USERS = [
    "robot$ünïcødé+ns",                       # Harbor/Quay punctuation plus non-ASCII
    "$oauthtoken",
    "us'er\"quoted",
    "u" * 2000,                               # very long
]
HOSTILE_PASSWORDS = [
    "pä:ss:wörd$+'\"\\ 🔑",
    ":" * 10 + "$" * 10 + "+" * 10,
    "p" * 3000,                               # very long (a Basic header has to fit in 8 KiB)
    " leading and trailing spaces ",
]


@pytest.mark.parametrize(("user", "secret"), list(zip(HOSTILE_USERS, HOSTILE_PASSWORDS, strict=True)),
                         ids=["unicode", "ngc", "quotes", "long"])
def test_hostile_values_round_trip_exactly(world: World, harness: Any, registry_fake_server: Any,
                                           user: str, secret: str) -> None:
    """Vault -> probe -> secret: the registry receives exactly the bytes in Vault, and the secret
    holds exactly them (username, password and the base64 auth of their UTF-8 form)."""
    seen: list[tuple[str, str]] = []

    def record(req: Incoming) -> Reply | None:
        if req.basic:
            seen.append(req.basic)
        return None

    server = registry_fake_server(fake_registry({user: secret}, before=record))
    world.secrets.add(secret)
    world.vault_put("hostile", username=user, password=secret)
    key = f"{server.host}/ünï/$+:'q"  # an auths key with a path: kept verbatim
    seed(world)
    h = harness(world.config([{"host": key, "path": "hostile"}], [TARGET]))
    summary = h.cycle()
    assert summary.exit_code == 0, h.text()
    assert seen == [(user, secret)]
    entry = world.secret_doc(NS, NAME)["auths"][key]
    assert (entry["username"], entry["password"]) == (user, secret)
    assert base64.b64decode(entry["auth"]).decode() == f"{user}:{secret}"
    assert h.cycle().targets[0].outcome.value == "unchanged", "idempotent on hostile values"


def test_hostile_password_against_real_registry(world: World, harness: Any, htpasswd_registry: Any) -> None:
    """The real distribution registry (bcrypt: at most 72 bytes) with ':', '$', '+', quotes, unicode."""
    secret = "SENTINEL-ü:$+'\"-" + "x" * 20
    htpasswd_registry.set_password("ns+bot", secret)
    world.secrets.add(secret)
    world.vault_put("quay", username="ns+bot", password=secret)
    seed(world)
    h = harness(world.config([{"host": htpasswd_registry.host, "path": "quay"}], [TARGET]))
    assert h.cycle().exit_code == 0, h.text()
    assert password(world, htpasswd_registry.host) == secret


@pytest.mark.parametrize(("size", "refused"), [(1024 * 1024 - 4096, False), (1024 * 1024 + 4096, True)],
                         ids=["just-under-1MiB", "over-1MiB"])
def test_oversized_secret_refused_before_sending(world: World, harness: Any, size: int,
                                                 refused: bool) -> None:
    """Kubernetes refuses Secrets over 1 MiB; the syncer refuses first, naming target and size."""
    seed(world)
    current = len(json.dumps({"auths": {"quay.io": QUAY}, "HttpHeaders": {"X-Team": "p"}}))
    # The password appears twice: as itself and inside the base64 auth (4/3): 7/3 in all.
    big = "B" * ((size - current - 200) * 3 // 7)
    world.vault_put("big", username="u", password=big)
    before = world.kube.get_secret(NS, NAME)
    h = harness(world.config([{"host": "big.example.com", "path": "big"}], [TARGET],
                             probe={"enabled": False}))
    world.kube.reset_requests()
    summary = h.cycle()
    target = summary.targets[0]
    if refused:
        assert summary.exit_code == 1
        assert (target.outcome.value, target.reason) == ("failed", "too_large")
        assert "over the 1048576-byte (1 MiB) Kubernetes Secret limit; not written" in target.detail
        assert f"target {NS}/{NAME}" in h.logs() and "too_large" in h.logs()
        assert world.kube.count(verb="patch", resource="secrets") == 0, "refused before sending"
        assert_kept(world, before)
    else:
        assert summary.exit_code == 0, summary.render()
        assert world.kube.writes() == 1
        assert len(base64.b64decode(world.kube.get_secret(NS, NAME)["data"][".dockerconfigjson"])) > 1_000_000
