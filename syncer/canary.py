"""Prove a credential can *pull*, not only log in: a manifest HEAD per canary image (issue 13).

The login probe proves the password; a robot account with the wrong repository permissions
passes it and every pod pull then fails with "unauthorized". So, after the login is proven, for
each configured image on the host (the flow a container runtime follows on a pull):

1. The challenge is the login probe's (``GET /v2/``): docker's challenge manager pings ``/v2/``
   once and reuses that challenge for every repository of the host, so no anonymous HEAD is
   sent per image. Only when ``/v2/`` answered without auth (an open mirror: no challenge) does
   an anonymous ``HEAD /v2/NAME/manifests/REF`` come first: 200 means anyone may pull
   (UNVERIFIED), 404 NOT_FOUND, 401 carries the manifest's own challenge.
2. ``Bearer``: a token for ``repository:NAME:pull`` requested *with* the credentials (a 401/403
   from the token endpoint, or a JWT whose ``access`` claim holds no pull, is PULL_DENIED), then
   the HEAD with it. ``Basic``: the HEAD with Basic auth.
3. 200 OK; 401/403 PULL_DENIED; 404 NOT_FOUND (NAME_UNKNOWN / MANIFEST_UNKNOWN); else ERROR.
4. OK, but could anyone pull it? ``Bearer``: token registries answer every anonymous request
   with 401, even for public repositories, so an anonymous token for the scope tells (its JWT
   ``access`` claim; one more HEAD only for an opaque token). ``Basic``: one anonymous HEAD
   (skipped when step 1 already saw its 401). A pull anyone may make is UNVERIFIED.

Per image, on a token registry with JWTs: two token requests and one HEAD. On the login probe's
transport: same TLS, proxy, timeout, retry and redirect rules (a redirect to another host is not
followed, so the Authorization header never leaves the registry). No token, password or body
reaches a detail or a log.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from syncer.challenge import Challenge
from syncer.credential import Credential
from syncer.imageref import ImageRef
from syncer.probe import Outcome, Prober, ProbeStop, basic_header, registry_url
from syncer.proxies import netloc
from syncer.transport import Deadline, TransportError, deadline_scope

log = logging.getLogger(__name__)

MANIFEST_ACCEPT = ", ".join((
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
))
"""What containerd sends when it resolves a reference: indexes and manifests, OCI and Docker."""


class PullOutcome(enum.StrEnum):
    """What the pull check of one canary image proved (the ``result`` metric label)."""

    OK = "ok"
    """The credential may pull the image."""
    PULL_DENIED = "pull_denied"
    """The registry refused the credential pull access (401/403, or a token without pull)."""
    NOT_FOUND = "not_found"
    """The image does not exist (404): the canary is stale, the credential may be fine."""
    UNVERIFIED = "unverified"
    """The image can be pulled without any credential: a public repository proves nothing."""
    ERROR = "error"
    """The check could not finish (network, TLS, protocol, server); says nothing either way."""


@dataclass(frozen=True)
class PullCheck:
    """The verdict for one canary image. ``detail`` is safe to log and show."""

    image: str
    """The image as configured (the ``image`` metric label)."""
    outcome: PullOutcome
    reason: str
    """``""``, the outcome's value, or a probe reason (``tls``, ``timeout``, ``http_502`` ...)."""
    detail: str
    duration: float = 0.0


class _Done(Exception):
    def __init__(self, outcome: PullOutcome, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome, self.reason, self.detail = outcome, reason, detail


def _by_status(status: int, what: str, how: str) -> _Done:
    if status == 200:
        return _Done(PullOutcome.OK, "", f"{what}: pull allowed ({how})")
    if status in (401, 403):
        return _Done(PullOutcome.PULL_DENIED, "pull_denied",
                     f"{what}: no pull access (HTTP {status} to the manifest with {how})")
    if status == 404:
        return _Done(PullOutcome.NOT_FOUND, "not_found",
                     f"{what}: not found (HTTP 404 with {how}); is the canary stale?")
    return _Done(PullOutcome.ERROR, f"http_{status}", f"{what}: HTTP {status} to the manifest with {how}")


def _unverified(image: ImageRef, how: str) -> _Done:
    return _Done(PullOutcome.UNVERIFIED, "unverified",
                 f"{image.text}: {how} (public repository), so pull access of the credential cannot "
                 "be verified")


def grants_pull(token: str, repository: str) -> bool | None:
    """Whether a JWT's ``access`` claim grants pull on ``repository``; None when the token is
    opaque or carries no such claim (then only the HEAD can tell). The signature is not checked:
    the claim is only ever used to *refuse*, never to accept."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError):
        return None
    access = claims.get("access") if isinstance(claims, dict) else None
    if not isinstance(access, list):
        return None
    return any(isinstance(a, dict) and a.get("type") == "repository" and a.get("name") == repository
               and isinstance(a.get("actions"), list) and ("pull" in a["actions"] or "*" in a["actions"])
               for a in access)


class PullChecker:
    """Runs the pull checks of one host over the login probe's transport and rules."""

    def __init__(self, prober: Prober, clock: Callable[[], float] = time.monotonic) -> None:
        self._prober = prober
        self._clock = clock

    def check(self, host: str, credential: Credential, images: Sequence[ImageRef],
              cancelled: Callable[[], bool] = lambda: False,
              challenge: Challenge | None = None) -> tuple[PullCheck, ...]:
        """One check per image, in order; each within its own ``probe.deadline``. ``challenge`` is
        the login probe's (``ProbeResult.challenge``); None when ``/v2/`` sent none."""
        return tuple(self._one(host, credential, image, cancelled, challenge) for image in images)

    def _one(self, host: str, credential: Credential, image: ImageRef,
             cancelled: Callable[[], bool], challenge: Challenge | None) -> PullCheck:
        start = self._clock()
        try:
            with deadline_scope(self._prober.settings.deadline, cancelled) as deadline:
                self._flow(host, credential, image, deadline, challenge)
        except _Done as done:
            result = PullCheck(image.text, done.outcome, done.reason, done.detail, self._clock() - start)
        except ProbeStop as stop:
            outcome = PullOutcome.PULL_DENIED if stop.outcome is Outcome.REJECTED else PullOutcome.ERROR
            reason = "pull_denied" if outcome is PullOutcome.PULL_DENIED else stop.reason
            result = PullCheck(image.text, outcome, reason, f"{image.text}: {stop.detail}",
                               self._clock() - start)
        else:  # pragma: no cover - _flow always ends with a verdict
            raise AssertionError("pull check ended without a verdict")
        log.debug("pull check %s %s: %s (%s)", host, image.text, result.outcome, result.reason)
        return result

    def _head(self, url: str, authorization: str | None, what: str, deadline: Deadline) -> int:
        try:
            with self._prober.transport.get(url, authorization, what, deadline,
                                            method="HEAD", accept=MANIFEST_ACCEPT) as resp:
                return resp.status_code
        except TransportError as exc:
            raise _Done(PullOutcome.ERROR, exc.reason, exc.message) from None

    def _anonymous_challenge(self, name: str, url: str, image: ImageRef, deadline: Deadline) -> Challenge:
        """The anonymous HEAD of a registry whose ``/v2/`` is open: a verdict, or the manifest's
        own challenge (its 401)."""
        try:
            anonymous = self._prober.transport.get(url, None, f"{name} manifest {image.text}", deadline,
                                                   method="HEAD", accept=MANIFEST_ACCEPT)
        except TransportError as exc:
            raise _Done(PullOutcome.ERROR, exc.reason, exc.message) from None
        with anonymous:
            status = anonymous.status_code
            if status == 200:
                raise _unverified(image, "pulls without any credential")
            if status != 401:
                raise _by_status(status, image.text, "no credentials")
            return self._prober.challenge_of(name, anonymous)

    def _flow(self, host: str, credential: Credential, image: ImageRef, deadline: Deadline,
              challenge: Challenge | None) -> None:
        try:
            base = registry_url(host)
        except ValueError:
            raise _Done(PullOutcome.ERROR, "invalid_host", f"{host!r} is not a registry host") from None
        name = netloc(base)
        what = f"{name} manifest {image.text}"
        url = f"{base}/v2/{quote(image.repository, safe='/')}/manifests/{quote(image.reference, safe=':')}"
        refused_anonymous = challenge is None  # the anonymous HEAD below answered 401
        if challenge is None:
            challenge = self._anonymous_challenge(name, url, image, deadline)
        if challenge.scheme == "basic":
            done = _by_status(self._head(url, basic_header(credential), what, deadline), image.text,
                              "Basic auth")
            if (done.outcome is PullOutcome.OK and not refused_anonymous
                    and self._head(url, None, what, deadline) == 200):
                raise _unverified(image, "anonymous users may pull it too")
            raise done
        scope = f"repository:{image.repository}:pull"
        token = self._prober.scoped_token(name, challenge, credential, scope, deadline)
        if grants_pull(token, image.repository) is False:
            raise _Done(PullOutcome.PULL_DENIED, "pull_denied",
                        f"{image.text}: no pull access (the token issued for {scope} grants no pull)")
        done = _by_status(self._head(url, "Bearer " + token, what, deadline), image.text, "a pull token")
        if done.outcome is PullOutcome.OK and self._public(name, challenge, scope, image, url, deadline):
            raise _unverified(image, "anonymous users may pull it too")
        raise done

    def _public(self, name: str, challenge: Challenge, scope: str, image: ImageRef, url: str,
                deadline: Deadline) -> bool:
        """Whether an anonymous token pulls the image (Docker Hub, Harbor and Quay hand those out
        for public repositories); a JWT's access claim answers without another HEAD."""
        token = self._prober.anonymous_token(name, challenge, scope, deadline)
        if not token:
            return False
        granted = grants_pull(token, image.repository)
        if granted is not None:
            return granted
        return self._head(url, "Bearer " + token, f"{name} manifest {image.text}", deadline) == 200


def verdict(checks: Sequence[PullCheck]) -> str:
    """"denied" when every check is PULL_DENIED (the credential is rejected), "warn" when any is
    denied or not found, else ""."""
    if checks and all(c.outcome is PullOutcome.PULL_DENIED for c in checks):
        return "denied"
    if any(c.outcome in (PullOutcome.PULL_DENIED, PullOutcome.NOT_FOUND) for c in checks):
        return "warn"
    return ""


_PREFLIGHT = {
    PullOutcome.OK: ("OK", ""),
    PullOutcome.PULL_DENIED: ("FAIL", "grant the registry account pull on this repository, or pick a "
                              "canary the workloads pull; if every canary is denied the credential "
                              "is not written"),
    PullOutcome.NOT_FOUND: ("WARN", "the canary is stale: update verify_images (a digest does not move)"),
    PullOutcome.UNVERIFIED: ("WARN", "anyone may pull it (a public repository, or a registry without "
                             "auth): pick a canary from a private repository"),
    PullOutcome.ERROR: ("FAIL", "see the reason; retry later if transient"),
}


def preflight(host: str, checks: Sequence[PullCheck]) -> list[tuple[str, str, str, str]]:
    """``syncer check`` lines for the canaries: (status, name, reason, hint), one per image."""
    return [(status, f"registry.pull {host} {c.image}", c.detail, hint)
            for c in checks for status, hint in [_PREFLIGHT[c.outcome]]]
