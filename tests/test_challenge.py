"""The ``WWW-Authenticate`` parser (RFC 9110 section 11.6.1): schemes and keys case-insensitive,
several challenges per header line and several lines, quoted strings and token68 forms; anything
it cannot read is a ``ChallengeError``, never a guess."""

from __future__ import annotations

import pytest

from syncer.challenge import Challenge, ChallengeError, parse_challenges


@pytest.mark.parametrize(("lines", "expected"), [
    (['Basic realm="Registry Realm"'], [Challenge("basic", {"realm": "Registry Realm"})]),
    (['Bearer realm="https://auth.docker.io/token",service="registry.docker.io"'],
     [Challenge("bearer", {"realm": "https://auth.docker.io/token",
                           "service": "registry.docker.io"})]),
    (["BEARER Realm=https://a/t , SERVICE = svc"],
     [Challenge("bearer", {"realm": "https://a/t", "service": "svc"})]),
    (['Negotiate, Basic realm="x"'], [Challenge("negotiate"), Challenge("basic", {"realm": "x"})]),
    (["Negotiate", 'bAsIc realm="x"'], [Challenge("negotiate"), Challenge("basic", {"realm": "x"})]),
    (['Basic realm="a \\"quoted\\" \\\\ realm, with comma"'],
     [Challenge("basic", {"realm": 'a "quoted" \\ realm, with comma'})]),
    (["Negotiate abc123+/==, NTLM"], [Challenge("negotiate"), Challenge("ntlm")]),
    ([', , Basic realm="x",, '], [Challenge("basic", {"realm": "x"})]),
    (['Bearer realm="https://r",error="invalid_token", Basic realm="b", Digest nonce="n"'],
     [Challenge("bearer", {"realm": "https://r", "error": "invalid_token"}),
      Challenge("basic", {"realm": "b"}), Challenge("digest", {"nonce": "n"})]),
    (['Basic realm="", charset=UTF-8'], [Challenge("basic", {"realm": "", "charset": "UTF-8"})]),
    (['Basic realm="first", realm="second"'], [Challenge("basic", {"realm": "first"})]),
    ([""], []),
    (["Basic realm"], [Challenge("basic")]),  # valid token68 form, no params
    (["Bearer realm="], [Challenge("bearer")]),  # ditto: "realm=" is a token68
])
def test_parse_challenges(lines: list[str], expected: list[Challenge]) -> None:
    assert parse_challenges(lines) == expected


@pytest.mark.parametrize("line", [
    'Bearer realm="https://unterminated',
    'Basic realm="x" junk',
    'Basic realm="x", ="y"',
    '"Basic"',
    'Basic"realm"',
    "Bearer realm=a b=c",
])
def test_parse_challenges_malformed(line: str) -> None:
    with pytest.raises(ChallengeError):
        parse_challenges([line])
