"""Canary pull checks (issue 13) against real registries: a token registry whose token server
grants pull per repository from an ACL (robot$ci may pull ``team/*``, not ``other/*``; anonymous
users get nothing unless a repository is public), and an htpasswd registry. The images exist:
``canary_images`` pushed them with skopeo."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer import config as config_mod
from syncer.canary import MANIFEST_ACCEPT, PullChecker, PullOutcome
from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.imageref import parse_image
from syncer.metrics import Metrics
from syncer.probe import Prober
from syncer.transport import make_session
from tests.support.images import Layout
from tests.support.operator import run_cmd
from tests.support.registry import FakeServer, Incoming, Registry, Reply
from tests.support.registry_fixtures import DEFAULT_USERS, TokenRegistry
from tests.support.scale import long_lived_app
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture

NS = "domino-compute"
NAME = "domino-quay-repos"
OLD = {"username": "robot$ci", "password": "old-known-good", "auth": "cm9ib3QkY2k6b2xkLWtub3duLWdvb2Q="}


def checker(settings: ProbeSettings) -> PullChecker:
    return PullChecker(Prober(make_session(settings), settings))


def check(settings: ProbeSettings, host: str, user: str, password: str, *images: str) -> list[Any]:
    """The pull checks as the sync runs them: after the login probe, with its challenge."""
    prober = Prober(make_session(settings), settings)
    credential = Credential(user, password)
    login = prober.probe(host, credential)
    refs = [parse_image(i, host) for i in images]
    return list(PullChecker(prober).check(host, credential, refs, challenge=login.challenge))


@pytest.fixture
def acl_registry(token_registry: TokenRegistry, canary_images: Layout) -> TokenRegistry:
    """The token registry with robot$ci allowed to pull team/* only, and public/* public."""
    token_registry.token_server.grant("robot$ci", "team/*", "pull")
    token_registry.token_server.grant("", "public/*", "pull")
    return token_registry


ROBOT = ("robot$ci", DEFAULT_USERS["robot$ci"])


# ------------------------------------------------------------------ the check itself


def test_token_registry_outcomes_per_repository(acl_registry: TokenRegistry, probe_settings: ProbeSettings,
                                                canary_images: Layout) -> None:
    results = check(probe_settings, acl_registry.host, *ROBOT,
                    "team/app:v1", "other/secret:v1", "team/missing:v1", "public/base:v1",
                    f"team/app@{canary_images.digest}", "team/app@sha256:" + "0" * 64)
    assert [r.outcome for r in results] == [
        PullOutcome.OK, PullOutcome.PULL_DENIED, PullOutcome.NOT_FOUND, PullOutcome.UNVERIFIED,
        PullOutcome.OK, PullOutcome.NOT_FOUND], [r.detail for r in results]
    assert "no pull access" in results[1].detail and "other/secret:v1" in results[1].detail
    # The pull token was asked for with the credentials and the repository's pull scope.
    scoped = [r for r in acl_registry.token_server.requests if r.query.get("scope")]
    assert {tuple(r.query["scope"]) for r in scoped} >= {("repository:team/app:pull",),
                                                          ("repository:other/secret:pull",)}
    # Each is either with the credentials, or fully anonymous (the public-repository check).
    assert all(r.username == "robot$ci" if r.authorized else "account" not in r.query for r in scoped)
    assert any(not r.authorized for r in scoped)


def test_token_endpoint_401_is_pull_denied(acl_registry: TokenRegistry,
                                           probe_settings: ProbeSettings) -> None:
    password = sentinel("wrong")
    [result] = check(probe_settings, acl_registry.host, "robot$ci", password, "team/app:v1")
    assert result.outcome is PullOutcome.PULL_DENIED and result.reason == "pull_denied"
    assert "HTTP 401" in result.detail and password not in result.detail


def test_no_grant_means_denied_even_for_the_manifest(token_registry: TokenRegistry, canary_images: Layout,
                                                     probe_settings: ProbeSettings) -> None:
    """Without any ACL entry the token carries no access: denied without trusting the claim
    alone, since the registry itself refuses the token too."""
    [result] = check(probe_settings, token_registry.host, *ROBOT, "team/app:v1")
    assert result.outcome is PullOutcome.PULL_DENIED, result.detail


def test_htpasswd_registry_basic_pull(htpasswd_registry: Registry, canary_images: Layout,
                                      probe_settings: ProbeSettings) -> None:
    before = htpasswd_registry.manifest_heads("team/app")
    results = check(probe_settings, htpasswd_registry.host, *ROBOT, "team/app:v1", "team/app:v9")
    assert [r.outcome for r in results] == [PullOutcome.OK, PullOutcome.NOT_FOUND], [
        r.detail for r in results]
    # The login's challenge is reused: one Basic HEAD per image, and one anonymous HEAD more
    # only after a 200 (is it public?).
    assert htpasswd_registry.manifest_heads("team/app") - before == 3


def test_cross_host_redirect_gets_no_authorization(registry_fake_server: Any,
                                                   probe_settings: ProbeSettings) -> None:
    seen: list[Incoming] = []
    elsewhere: FakeServer = registry_fake_server(lambda _req: Reply(200))

    def registry(req: Incoming) -> Reply:
        seen.append(req)
        if not req.authorization:
            return Reply(401, [("WWW-Authenticate", 'Basic realm="r"')])
        return Reply(307, [("Location", f"{elsewhere.url_for('localhost')}/v2/team/app/manifests/v1")])

    fake: FakeServer = registry_fake_server(registry)
    password = sentinel("redirect")
    # Without the login's challenge (as for an open /v2/): the manifest's own 401 gives it.
    [result] = checker(probe_settings).check(fake.host, Credential("robot$ci", password),
                                             [parse_image("team/app:v1", fake.host)])
    assert result.outcome is PullOutcome.ERROR and result.reason == "redirect", result.detail
    assert elsewhere.requests == [], "nothing, let alone the Authorization header, went to the other host"
    assert [r.method for r in seen] == ["HEAD", "HEAD"]
    assert seen[0].headers["accept"] == MANIFEST_ACCEPT
    assert password not in result.detail


# ------------------------------------------------------------------ the sync cycle


def _harbor(world: World, host: str, *images: str) -> dict[str, Any]:
    password = sentinel("harbor")
    world.secrets.add(password)
    return {"host": host, "path": "harbor", "username": "robot$ci", "verify_images": list(images),
            "_password": password}


def _spec(spec: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in spec.items() if not k.startswith("_")}


def _rotate(world: World, registry: TokenRegistry, spec: dict[str, Any]) -> None:
    registry.token_server.users["robot$ci"] = spec["_password"]
    world.vault_put("harbor", password=spec["_password"])
    world.put_dockerconfig(NS, NAME, {"auths": {registry.host: OLD}})


def _leak_check(world: World, registry: TokenRegistry) -> None:
    world.secrets.update(t.token for t in registry.token_server.issued)
    world.assert_no_leak("\n".join(world.outputs), "CLI output (passwords and registry tokens)")


def _sync_rotated(world: World, registry: TokenRegistry, spec: dict[str, Any]) -> Any:
    """Rotate the robot's password, then one ``--once`` run for the one target."""
    _rotate(world, registry, spec)
    return world.run(world.config([_spec(spec)], [{"namespace": NS, "name": NAME}]))


def test_sync_ok_canary_writes(world: World, acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "team/app:v1")
    result = _sync_rotated(world, acl_registry, spec)
    assert result.code == 0, result.out
    assert "canary team/app:v1: pull verified" in result.out
    assert world.secret_doc(NS, NAME)["auths"][acl_registry.host]["password"] == spec["_password"]
    _leak_check(world, acl_registry)


def test_sync_all_canaries_denied_is_rejected(world: World, acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "other/secret:v1")
    result = _sync_rotated(world, acl_registry, spec)
    assert result.code == 1, result.out
    line = next(x for x in result.out.splitlines() if x.startswith(f"registry {acl_registry.host}"))
    assert "rejected" in line and "other/secret:v1" in line and "no pull access" in line
    assert world.secret_doc(NS, NAME)["auths"][acl_registry.host] == OLD, "old entry kept"
    assert "PullAccessDenied" in {e["reason"] for e in world.kube.events(NS)}
    _leak_check(world, acl_registry)


def test_sync_stale_canary_writes_with_warning(world: World, acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "team/gone:v1")
    result = _sync_rotated(world, acl_registry, spec)
    assert result.code == 0, result.out
    assert "canary team/gone:v1: WARNING not found" in result.out
    assert world.secret_doc(NS, NAME)["auths"][acl_registry.host]["password"] == spec["_password"]
    _leak_check(world, acl_registry)


def test_canaries_cached_across_cycles_and_never_per_target(world: World,
                                                            acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "team/app:v1")
    _rotate(world, acl_registry, spec)
    for name in ("second", "third"):
        world.put_dockerconfig(NS, name, {"auths": {}})
    targets = [{"namespace": NS, "name": n} for n in (NAME, "second", "third")]
    app = long_lived_app(world.config([_spec(spec)], targets, probe={"interval": "1h"}))
    heads = acl_registry.registry.manifest_heads
    before = heads("team/app")
    assert app.syncer.run_once().ok
    assert heads("team/app") - before == 1, "one authenticated HEAD for three targets"
    assert app.syncer.run_once().ok
    assert heads("team/app") - before == 1, "within probe.interval the canary result is reused"
    rotated = sentinel("harbor-rotated")
    world.secrets.add(rotated)
    acl_registry.token_server.users["robot$ci"] = rotated
    world.vault_put("harbor", password=rotated)
    summary = app.syncer.run_once()
    assert summary.ok and heads("team/app") - before == 2, "a changed credential is checked again"


def test_config_rejects_canary_on_another_host(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vault]\naddress = "https://vault:8200"\n[vault.auth]\nmethod = "token"\n'
                    'token_file = "/t"\n[[registries]]\nhost = "nvcr.io"\npath = "ngc"\n'
                    'verify_images = ["nvidia/pytorch:24.01-py3", "quay.io/team/app:v1", "Bad"]\n'
                    '[[targets]]\nnamespace = "a"\nname = "b"\n')
    with pytest.raises(config_mod.ConfigError) as err:
        config_mod.load(path, {})
    problems = err.value.problems
    assert [p.split(":")[0] for p in problems] == ["registries[0].verify_images[1]",
                                                  "registries[0].verify_images[2]"], problems


def test_check_prints_one_line_per_canary(world: World, acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "team/app:v1", "other/secret:v1", "team/gone:v1",
                   "public/base:v1")
    _rotate(world, acl_registry, spec)
    result = run_cmd(world, "check", world.config([_spec(spec)], [{"namespace": NS, "name": NAME}]))
    lines = [line for line in result.out.splitlines() if "registry.pull" in line]
    assert [line.split()[0] for line in lines] == ["OK", "FAIL", "WARN", "WARN"], result.out
    assert [line.split()[3] for line in lines] == [f"{image}:" for image in spec["verify_images"]]
    assert result.code == 1  # a denied canary fails the preflight
    _leak_check(world, acl_registry)


def test_metrics_per_image_precreated_and_counted(world: World, acl_registry: TokenRegistry) -> None:
    spec = _harbor(world, acl_registry.host, "other/secret:v1", "team/gone:v1")
    _rotate(world, acl_registry, spec)
    app = long_lived_app(world.config([_spec(spec)], [{"namespace": NS, "name": NAME}]))
    registry = CollectorRegistry()
    metrics = Metrics(registry, app.settings)
    host = acl_registry.host

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"registry": host, **labels})

    for image in spec["verify_images"]:
        assert value("syncer_image_pull_check_success", image=image) == 0
        for result in ("ok", "pull_denied", "not_found", "unverified", "error"):
            assert value("syncer_image_pull_checks_total", image=image, result=result) == 0
    summary = app.syncer.run_once()
    metrics.observe(summary)
    assert summary.ok, "one canary denied, one stale: written with warnings"
    assert value("syncer_image_pull_checks_total", image="other/secret:v1", result="pull_denied") == 1
    assert value("syncer_image_pull_checks_total", image="team/gone:v1", result="not_found") == 1
    assert value("syncer_image_pull_check_success", image="other/secret:v1") == 0
    assert value("syncer_registry_probe_success") == 1, "the login itself was proven"
    reasons = {e["reason"] for e in world.kube.events(NS)}
    assert "CanaryImageWarning" not in reasons  # Events are sent by the CLI (app.publish)
    app.publish(summary)
    assert "CanaryImageWarning" in {e["reason"] for e in world.kube.events(NS)}
