"""Hostile text (issue 16 item 4): what a tenant, Vault or a registry writes is data, never control.

Real OpenBao, a real TLS registry and the Kubernetes API test server; tenants edit their secret
through the API with their own token, the way `kubectl edit` would. Each test runs the real CLI
(`syncer --once`, `check`, `show`) and asserts that stdout, stderr (the logs) and the Events
hold no raw control character and no forged log line, that the escaped form is shown, that
lengths are capped, and that the sync still did its job.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import pytest
import requests

from syncer.config import TargetSettings
from syncer.report import (
    DETAIL_LIMIT,
    RegistryOutcome,
    RegistryReport,
    TargetOutcome,
    TargetReport,
)
from syncer.targets import MANAGED_HOSTS
from tests.support.operator import run_cmd
from tests.support.registry import Reply
from tests.support.world import World, sentinel

NS = "tenant-a"
NAME = "registry-pull"
TENANT_TOKEN = "tenant-a-token"  # noqa: S105 - kube bearer token of the tenant in tests
USER = "robot$ci"
# A log line as the text formatter writes it: "2026-01-01 12:00:00,123 LEVEL ..."
RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")
FORGED = "evil\nERROR   syncer.sync: fake line"
# A username with ':' is refused at read time (docker would split it), so this one has none.
FORGED_USER = "bot\nERROR   syncer.sync fake line"
ANSI = "\x1b[2J\x1b[31mred\x1b]0;pwned\x07\u202eevil\u200b\x9b"


@pytest.fixture
def world(tmp_path: Path, bao: Any, kube: Any, ca_file: str) -> World:
    kube.add_namespace(NS, {"team": "a"})
    kube.add_token(TENANT_TOKEN, user="tenant-a", rules=[
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "patch"], "namespaces": [NS]}])
    return World(tmp_path, bao, kube, ca_file)


@pytest.fixture
def good(world: World, htpasswd_registry: Any) -> dict[str, Any]:
    """A registry whose login is fine: its entry must be written whatever the hostile one does."""
    password = sentinel("good")
    htpasswd_registry.set_password(USER, password)
    world.vault_put("good", username=USER, password=password)
    return {"host": htpasswd_registry.host, "path": "good"}


def tenant_patch(world: World, patch: dict[str, Any]) -> None:
    """The tenant edits the secret through the API server (merge patch, their own token)."""
    resp = requests.patch(f"{world.kube.url}/api/v1/namespaces/{NS}/secrets/{NAME}",
                          data=json.dumps(patch), verify=world.ca_file, timeout=5,
                          headers={"Authorization": f"Bearer {TENANT_TOKEN}",
                                   "Content-Type": "application/merge-patch+json"})
    assert resp.status_code == 200, resp.text


def tenant_auths(world: World, auths: dict[str, Any]) -> None:
    doc = world.secret_doc(NS, NAME)
    doc["auths"].update(auths)
    raw = base64.b64encode(json.dumps(doc).encode()).decode()
    tenant_patch(world, {"data": {".dockerconfigjson": raw}})


def assert_inert(text: str, where: str) -> None:
    """No raw control/format character but the line breaks between lines; every stderr line is
    a record of its own or a visible continuation of one."""
    raw = sorted({f"U+{ord(c):04X}" for c in text if not c.isprintable() and c != "\n"})
    assert not raw, f"raw control characters in {where}: {raw}"
    forged = re.search(r"(^|\n)(2026-01-01 00:00:00,000 )?ERROR   syncer\.sync:? fake", text)
    assert forged is None, f"a forged log line starts a line of {where}"


def assert_log_lines(err: str) -> None:
    for line in err.splitlines():
        assert RECORD.match(line) or line.startswith("  | "), f"line not part of a record: {line[:80]!r}"


def assert_events_inert(world: World) -> list[dict[str, Any]]:
    events = world.kube.events(NS)
    for event in events:
        message = event.get("message") or event.get("note") or ""
        assert_inert(message, f"Event {event.get('reason')}")
        assert len(message) <= 1024
    return events


def fanout(world: World, registries: list[dict[str, Any]], **target: Any) -> Path:
    spec = {"namespace_selector": "team=a", "name": NAME, "create": True, **target}
    return world.config(registries, [spec])



def assert_failed_inert(results: dict[str, Any], flood: str) -> None:
    """Each run failed (exit 1), printed nothing raw, forged no log line, and capped ``flood``."""
    for name, res in results.items():
        assert res.code == 1
        assert_inert(res.out + res.err, name)
        assert_log_lines(res.err)
        assert flood not in res.out + res.err

def test_auths_keys_with_escape_sequences_are_shown_escaped_and_kept(world: World,
                                                                    good: dict[str, Any]) -> None:
    """Attack: a tenant adds auths keys holding ANSI/OSC sequences, a forged log line and 5,000
    characters to a fan-out secret. Safe: `--once`, `show` and `check` print them escaped and
    capped; the good registry's entry is written and the tenant's entries survive untouched."""
    config = fanout(world, [good])
    assert world.run(config).code == 0
    long_key = "x" * 5000
    hostile = {ANSI: {"auth": "dGVuYW50OnB3"}, FORGED: {"auth": "dGVuYW50OnB3"}, long_key: {}}
    tenant_auths(world, hostile)

    once = world.run(config, "--dry-run")
    show = run_cmd(world, "show", config, "--namespace", NS, "--name", NAME)
    check = run_cmd(world, "check", config)
    for name, result in (("--once", once), ("show", show), ("check", check)):
        assert_inert(result.out + result.err, name)
        assert_log_lines(result.err)
    assert "\\x1b[2J\\x1b[31mred\\x1b]0;pwned\\x07\\u202eevil\\u200b\\x9b" in show.out
    assert "evil\\nERROR   syncer.sync: fake line" in show.out
    assert "…(+4920 chars)" in show.out and long_key not in show.out
    assert "\\x1b[2J" in check.out and long_key not in check.out and "…(+4800 chars)" in check.out
    assert show.code == 0 and check.code == 0
    auths = world.secret_doc(NS, NAME)["auths"]
    assert {ANSI, FORGED, long_key, good["host"]} <= set(auths)
    assert auths[ANSI] == {"auth": "dGVuYW50OnB3"}


def test_malformed_entry_key_is_escaped_in_report_log_and_event(world: World,
                                                                good: dict[str, Any]) -> None:
    """Attack: a tenant turns the secret malformed with a non-object entry under a key that forges
    a log line and carries escapes. Safe: the malformed report, the log and the MalformedSecret
    Event name the key escaped; the secret is not overwritten; other targets are still written."""
    world.kube.add_namespace("tenant-b", {"team": "a"})
    config = fanout(world, [good])
    assert world.run(config).code == 0
    tenant_auths(world, {FORGED + ANSI: "not an object"})
    before = world.kube.get_secret(NS, NAME)

    result = world.run(config)
    assert result.code == 1
    assert_inert(result.out + result.err, "--once")
    assert_log_lines(result.err)
    assert f"target {NS}/{NAME}: malformed" in result.out
    assert "evil\\nERROR   syncer.sync: fake line\\x1b[2J" in result.out
    assert world.kube.get_secret(NS, NAME) == before
    assert good["host"] in world.secret_doc("tenant-b", NAME)["auths"]
    events = assert_events_inert(world)
    malformed = [e for e in events if e["reason"] == "MalformedSecret"]
    assert malformed and "evil\\nERROR" in malformed[0]["message"]


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_forged_managed_hosts_annotation_is_ignored_with_one_bounded_warning(
        world: World, good: dict[str, Any], log_format: str) -> None:
    """Attack: a tenant sets the managed-hosts annotation to a forged log line, escapes, 300 junk
    items and a 10,000-character item (with prune on, hoping to steer what is removed). Safe: only
    valid host names are taken; one warning per target names the count, escaped and capped; the
    annotation is rewritten with valid hosts only; the tenant's entries and the good one stay."""
    config = fanout(world, [good], prune=True)
    assert world.run(config).code == 0
    tenant_auths(world, {"tenant.example.com": {"auth": "dGVuYW50OnB3"}})
    junk = [FORGED, ANSI, "a b", "-bad-", "x" * 10_000] + [f"junk {i}!" for i in range(300)]
    tenant_patch(world, {"metadata": {"annotations": {
        MANAGED_HOSTS: ",".join([good["host"], *junk, "quay.io"])}}})

    result = world.run(config, "--log-format", log_format)
    assert result.code == 0, result.out
    assert_inert(result.out + result.err, "--once")
    lines = result.err.splitlines()
    if log_format == "json":
        records = [json.loads(line) for line in lines]  # one JSON object per line, nothing else
        warnings = [r["message"] for r in records if "managed-hosts" in r["message"]]
    else:
        assert_log_lines(result.err)
        warnings = [line for line in lines if "managed-hosts" in line]
    assert len(warnings) == 1, warnings
    assert "ignored 305 invalid item(s)" in warnings[0] and len(warnings[0]) < 400
    assert "evil\\nERROR" in warnings[0]
    secret = world.kube.get_secret(NS, NAME)
    assert secret["metadata"]["annotations"][MANAGED_HOSTS] == good["host"]  # quay.io: valid, pruned
    assert {"tenant.example.com", good["host"]} <= set(world.secret_doc(NS, NAME)["auths"])


def test_vault_username_with_newline_and_ansi_is_escaped_everywhere(world: World, good: dict[str, Any],
                                                                     htpasswd_registry: Any) -> None:
    """Attack: whoever writes Vault stores a username with a forged log line and ANSI escapes.
    Safe: with the probe off it is written verbatim into the secret (it is data) but the summary,
    the log and the CredentialsRotated Event show it escaped; with the probe on, `check`'s
    rejection hint quotes it escaped; the good registry's target is written either way."""
    password = sentinel("hostile-user")
    world.vault_put("hostile", username=FORGED_USER + ANSI, password=password)
    hostile = {"host": "registry.hostile.example", "path": "hostile"}
    targets = [{"namespace": NS, "name": NAME, "create": True}]

    off = world.config([good, hostile], targets, probe={"enabled": False})
    result = world.run(off)
    assert result.code == 0, result.out
    assert_inert(result.out + result.err, "--once")
    assert_log_lines(result.err)
    assert "as bot\\nERROR   syncer.sync fake line\\x1b[2J" in result.out
    auths = world.secret_doc(NS, NAME)["auths"]
    assert auths["registry.hostile.example"]["username"] == FORGED_USER + ANSI
    assert good["host"] in auths
    rotated = [e for e in assert_events_inert(world) if e["reason"] == "CredentialsRotated"]
    assert rotated and "bot\\nERROR   syncer.sync fake line\\x1b[2J" in rotated[0]["message"]

    world.vault_put("hostile", username=FORGED_USER + ANSI, password=password)
    probed = world.config([{**hostile, "host": htpasswd_registry.host}], targets)
    check = run_cmd(world, "check", probed)
    assert check.code == 1
    assert_inert(check.out + check.err, "check")
    assert 'username "bot\\nERROR   syncer.sync fake line\\x1b[2J' in check.out


def test_vault_key_names_with_escapes_are_escaped_in_the_failure(world: World,
                                                                 good: dict[str, Any]) -> None:
    """Attack: a Vault secret lacks the password key but holds key names with escapes, a forged
    line and 3,000 characters; Vault's error lists them. Safe: `--once` and `check` show the
    failure escaped and capped; the other registry's entry is still written."""
    world.vault_put("keys", **{"user\x1b[31m" + FORGED: "x", "z" * 3000: "y"})
    broken = {"host": "registry.keys.example", "path": "keys", "username": "bot"}
    config = world.config([good, broken], [{"namespace": NS, "name": NAME, "create": True}])

    result = world.run(config)
    check = run_cmd(world, "check", config)
    assert_failed_inert({"--once": result, "check": check}, "z" * 3000)
    line = next(x for x in result.out.splitlines() if x.startswith("registry registry.keys.example"))
    assert "user\\x1b[31mevil\\nERROR" in line and "…(+" in line and len(line) < 700
    assert "user\\x1b[31mevil\\nERROR" in check.out
    assert good["host"] in world.secret_doc(NS, NAME)["auths"]


def test_hostile_redirect_from_a_registry_leaves_output_inert(world: World, good: dict[str, Any],
                                                              registry_fake_server: Any) -> None:
    """Attack: a registry redirects /v2/ to a host name carrying terminal escapes and C1 controls.
    Safe: the probe refuses it (today without quoting it) and nothing raw reaches `--once`,
    `check` or the log, whatever the probe's wording; the good registry's entry is written."""
    # latin-1 only (a header's charset): ESC c resets the terminal, BEL rings, CSI (U+009B).
    location = "https://evil\x1bc\x07\x9b2j\x7f" + "r" * 2_000 + ".example/v2/"
    server = registry_fake_server(lambda _req: Reply(307, [("Location", location)]))
    world.vault_put("evil", username=USER, password=sentinel("evil"))
    config = world.config([good, {"host": server.host, "path": "evil"}],
                          [{"namespace": NS, "name": NAME, "create": True}])

    result = world.run(config)
    check = run_cmd(world, "check", config)
    assert_failed_inert({"--once": result, "check": check}, "r" * 1500)
    assert f"registry {server.host}: failed" in result.out
    assert good["host"] in world.secret_doc(NS, NAME)["auths"]


def test_report_lines_escape_and_cap_quoted_error_text() -> None:
    """Attack: error text from a registry, Vault or the API server (quoted by the probe, the Vault
    source or the kube client) holds a forged line, escapes and 20,000 characters. Safe: the
    `--once` registry and target lines, which the summary and the log print, show it escaped and
    capped at DETAIL_LIMIT."""
    hostile = FORGED + ANSI + "r" * 20_000
    registry = RegistryReport("quay.io", RegistryOutcome.FAILED, detail=f"probe failed: {hostile}")
    target = TargetReport(TargetSettings(namespace=NS, name=NAME), TargetOutcome.FAILED,
                          detail=f"cannot read: {hostile}")
    for line in (registry.line(), target.line()):
        assert_inert(line, "report line")
        assert "evil\\nERROR   syncer.sync: fake line\\x1b[2J" in line
        assert len(line) < DETAIL_LIMIT + 100 and "…(+" in line
