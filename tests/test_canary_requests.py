"""What the canary pull checks cost, counted exactly on real registries, and the registries that
need no auth at all (an internal mirror): real ``docker-registry`` servers, images pushed by
skopeo (``canary_images``, ``open_registry``)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from syncer.canary import PullChecker, PullOutcome
from syncer.challenge import Challenge
from syncer.config import ProbeSettings
from syncer.credential import Credential
from syncer.imageref import parse_image
from syncer.metrics import Metrics
from syncer.probe import Outcome, Prober
from syncer.transport import make_session
from tests.support.images import Layout
from tests.support.operator import run_cmd
from tests.support.registry import FakeServer, Incoming, Registry, Reply
from tests.support.registry_fixtures import TokenRegistry
from tests.support.scale import long_lived_app
from tests.support.world import World, sentinel

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture

NS = "domino-compute"


def _robot(world: World, host: str, images: list[str]) -> tuple[dict[str, Any], str]:
    password = sentinel("robot")
    world.secrets.add(password)
    world.vault_put("robot", password=password)
    return {"host": host, "path": "robot", "username": "robot$ci", "verify_images": images}, password


def _token_requests(tokens: Any) -> list[tuple[bool, str]]:
    """(with credentials, scope) of every token request so far."""
    return [(r.authorized, " ".join(r.query.get("scope", []))) for r in tokens.requests]


# ------------------------------------------------------------------ cost on a token registry


def test_exact_requests_per_image_on_the_token_registry(world: World, token_registry: TokenRegistry,
                                                        canary_images: Layout) -> None:
    """The documented cost (docs/operator-guide.md, canary images), counted on the real
    registry's access log and the token server's log over three targets and two cycles."""
    tokens, registry = token_registry.token_server, token_registry.registry
    tokens.grant("robot$ci", "team/*", "pull")
    spec, password = _robot(world, token_registry.host, ["team/app:v1", "other/secret:v1"])
    tokens.users["robot$ci"] = password
    for name in ("a", "b", "c"):
        world.put_dockerconfig(NS, name, {"auths": {}})
    config = world.config([spec], [{"namespace": NS, "name": n} for n in "abc"], probe={"interval": "1h"})
    app = long_lived_app(config)
    v2, heads = registry.v2_requests(), {r: registry.manifest_heads(r) for r in ("team/app", "other/secret")}
    tokens.clear()
    for _cycle in range(2):
        assert app.syncer.run_once().ok
    assert registry.v2_requests() - v2 == 2, "the login probe: anonymous GET /v2/ and one with the token"
    assert registry.manifest_heads("team/app") - heads["team/app"] == 1, "one HEAD for the pullable canary"
    assert registry.manifest_heads("other/secret") - heads["other/secret"] == 0, \
        "the pull token's access claim already says no pull: no HEAD"
    assert _token_requests(tokens) == [
        (True, ""),                                 # the login (no scope)
        (True, "repository:team/app:pull"),         # pull token with the credentials
        (False, "repository:team/app:pull"),        # anonymous token: is it public? (its claim says)
        (True, "repository:other/secret:pull"),     # pull token: grants nothing -> pull_denied
    ]


# ------------------------------------------------------------------ a registry without auth


def test_open_registry_canaries_unverified_or_stale_without_credentials(
        open_registry: Registry, probe_settings: ProbeSettings) -> None:
    """No auth at all: the login is unverified (/v2/ answers 200, no challenge), and each canary is
    one anonymous HEAD: 200 is ``unverified`` (credentials prove nothing), 404 ``not_found``."""
    prober = Prober(make_session(probe_settings), probe_settings)
    credential = Credential("robot$ci", sentinel("open"))
    login = prober.probe(open_registry.host, credential)
    assert login.outcome is Outcome.UNVERIFIED and login.challenge is None
    before = open_registry.manifest_heads("team/app")
    refs = [parse_image(i, open_registry.host) for i in ("team/app:v1", "team/app:v9")]
    results = PullChecker(prober).check(open_registry.host, credential, refs, challenge=login.challenge)
    assert [r.outcome for r in results] == [PullOutcome.UNVERIFIED, PullOutcome.NOT_FOUND], [
        r.detail for r in results]
    assert "without any credential" in results[0].detail
    assert open_registry.manifest_heads("team/app") - before == 2, "one anonymous HEAD per image"


def test_open_registry_sync_summary_metrics_and_check_agree(world: World, open_registry: Registry) -> None:
    """The sync writes (nothing refuted), says unverified for the login and each canary; the
    metrics say the same (no pull proven, nothing denied, so the canary alert stays quiet); and
    ``syncer check`` warns on both lines."""
    spec, _password = _robot(world, open_registry.host, ["team/app:v1", "team/gone:v1"])
    world.put_dockerconfig(NS, "mirror", {"auths": {}})
    config = world.config([spec], [{"namespace": NS, "name": "mirror"}])
    app = long_lived_app(config)
    registry = CollectorRegistry()
    metrics = Metrics(registry, app.settings)
    summary = app.syncer.run_once()
    metrics.observe(summary)
    [report] = summary.registries
    assert summary.ok and report.outcome.value == "unverified", report.detail
    assert "canary team/app:v1: public repository, pull access unverified" in report.detail
    assert "canary team/gone:v1: WARNING not found" in report.detail
    assert world.secret_doc(NS, "mirror")["auths"][open_registry.host]["username"] == "robot$ci"

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"registry": open_registry.host, **labels})

    assert value("syncer_image_pull_checks_total", image="team/app:v1", result="unverified") == 1
    assert value("syncer_image_pull_checks_total", image="team/gone:v1", result="not_found") == 1
    assert value("syncer_image_pull_checks_total", image="team/app:v1", result="pull_denied") == 0
    assert value("syncer_image_pull_check_success", image="team/app:v1") == 0
    assert value("syncer_registry_probe_success") == 0
    assert value("syncer_registry_probe_failures_total", reason="unverified") == 1
    result = run_cmd(world, "check", config)
    out = result.out.splitlines()
    assert [line.split()[0] for line in out if "registry.login" in line] == ["WARN"], result.out
    assert [line.split()[0] for line in out if "registry.pull" in line] == ["WARN", "WARN"], result.out
    world.assert_no_leak("\n".join(world.outputs), "CLI output")


# ------------------------------------------------------------------ opaque tokens


@pytest.mark.parametrize(("anonymous_pulls", "expected"), [(True, PullOutcome.UNVERIFIED),
                                                           (False, PullOutcome.OK)])
def test_opaque_tokens_cost_one_more_head(registry_fake_server: Any, probe_settings: ProbeSettings,
                                          anonymous_pulls: bool, expected: PullOutcome) -> None:
    """Opaque (non-JWT) tokens, as some registries issue: the anonymous token's grant can only be
    read by trying it, so a public-repository check costs one more HEAD.

    Why a scripted server and not the real one: distribution's token auth
    (registry/auth/token) accepts only JWTs signed by a certificate in ``rootcertbundle`` and
    refuses anything else before looking at the repository, so no real ``docker-registry`` can be
    made to accept an opaque token; the test token server therefore always issues JWTs."""
    robot, anonymous = "opaque-robot-" + sentinel("t"), "opaque-anon-" + sentinel("t")
    heads: list[str] = []

    def respond(req: Incoming) -> Reply:
        if req.path == "/token":
            return Reply.json(200, {"token": robot if req.basic else anonymous})
        heads.append("robot" if req.bearer == robot else "anonymous" if req.bearer == anonymous else "")
        allowed = req.bearer == robot or (anonymous_pulls and req.bearer == anonymous)
        return Reply(200 if allowed else 401)

    server: FakeServer = registry_fake_server(respond)
    challenge = Challenge("bearer", {"realm": f"{server.url}/token", "service": "reg"})
    prober = Prober(make_session(probe_settings), probe_settings)
    [result] = PullChecker(prober).check(server.host, Credential("robot$ci", sentinel("pw")),
                                         [parse_image("team/app:v1", server.host)], challenge=challenge)
    assert result.outcome is expected, result.detail
    assert heads == ["robot", "anonymous"], "one HEAD with the pull token, one with the anonymous one"
    assert robot not in result.detail and anonymous not in result.detail
