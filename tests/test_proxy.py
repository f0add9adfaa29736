"""Probes through an egress proxy (issue 11 item 2): a real tinyproxy in front of the real TLS
registries, NO_PROXY forms, ``probe.proxy`` validation and ``syncer check``'s proxy line."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from syncer.config import ConfigError, ProbeSettings, load
from syncer.credential import Credential
from syncer.probe import Outcome, Prober
from syncer.proxies import ProxyEnv, choose_proxy, no_proxy_match, proxy_problem
from syncer.transport import make_session
from tests.support.registry import Registry
from tests.support.registry_fixtures import DEFAULT_USERS, TokenRegistry
from tests.support.tinyproxy import TinyProxy
from tests.support.world import World, sentinel

ROBOT = Credential("robot$ci", DEFAULT_USERS["robot$ci"])
PROXY_PASSWORD = "proxy-SENTINEL-pw"

pytest_plugins = ["tests.support.operator_fixtures"]  # the world fixture


def port_of(host: str) -> int:
    return int(host.rsplit(":", 1)[1])


@pytest.fixture
def tinyproxy(tmp_path: Path) -> Iterator[Callable[..., TinyProxy]]:
    proxies: list[TinyProxy] = []

    def make(*connect_ports: int, auth: tuple[str, str] | None = None) -> TinyProxy:
        workdir = tmp_path / f"proxy{len(proxies)}"
        workdir.mkdir()
        proxy = TinyProxy(workdir, list(connect_ports), auth).start()
        proxies.append(proxy)
        return proxy

    yield make
    for proxy in proxies:
        proxy.stop()


def prober_with(settings: ProbeSettings, env: dict[str, str], **changes: Any) -> Prober:
    settings = dataclasses.replace(settings, retries=0, **changes)
    return Prober(make_session(settings), settings, proxy_env=ProxyEnv.from_environ(env))


# --------------------------------------------------------------------------- through a real proxy


def test_basic_login_through_proxy_sends_only_connect(
    tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry, probe_settings: ProbeSettings
) -> None:
    proxy = tinyproxy(port_of(htpasswd_registry.host))
    prober = prober_with(probe_settings, {"HTTPS_PROXY": proxy.url})
    result = prober.probe(htpasswd_registry.host, ROBOT)
    assert result.outcome is Outcome.OK, result
    lines = proxy.requests()
    assert lines, proxy.log_text()
    assert all(line.startswith(f"CONNECT {htpasswd_registry.host} HTTP/") for line in lines), lines
    assert "Authorization" not in proxy.log_text()


def test_token_login_through_proxy_tunnels_registry_and_realm(
    tinyproxy: Callable[..., TinyProxy], token_registry: TokenRegistry,
    probe_settings: ProbeSettings,
) -> None:
    realm_host = token_registry.token_server.host
    proxy = tinyproxy(port_of(token_registry.host), port_of(realm_host))
    prober = prober_with(probe_settings, {"https_proxy": proxy.url})
    result = prober.probe(token_registry.host, ROBOT)
    assert result.outcome is Outcome.OK, result
    lines = proxy.requests()
    assert {line.split()[0] for line in lines} == {"CONNECT"}, lines
    assert {line.split()[1] for line in lines} == {token_registry.host, realm_host}, lines


def test_no_proxy_bypasses_the_proxy(
    tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry, probe_settings: ProbeSettings
) -> None:
    proxy = tinyproxy(port_of(htpasswd_registry.host))
    env = {"HTTPS_PROXY": proxy.url, "NO_PROXY": "localhost,127.0.0.0/8"}
    result = prober_with(probe_settings, env).probe(htpasswd_registry.host, ROBOT)
    assert result.outcome is Outcome.OK, result
    assert proxy.requests() == []


def test_probe_proxy_overrides_the_environment(
    tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry, probe_settings: ProbeSettings
) -> None:
    used = tinyproxy(port_of(htpasswd_registry.host))
    ignored = tinyproxy(port_of(htpasswd_registry.host))
    prober = prober_with(probe_settings, {"HTTPS_PROXY": ignored.url}, proxy=used.url)
    assert prober.probe(htpasswd_registry.host, ROBOT).outcome is Outcome.OK
    assert len(used.requests()) >= 1
    assert ignored.requests() == []


def test_proxy_credentials_are_sent_to_the_proxy_never_shown(
    tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry, probe_settings: ProbeSettings
) -> None:
    proxy = tinyproxy(port_of(htpasswd_registry.host), auth=("egress", PROXY_PASSWORD))
    good = f"http://egress:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    assert prober_with(probe_settings, {}, proxy=good).probe(
        htpasswd_registry.host, ROBOT).outcome is Outcome.OK
    bad = f"http://egress:wrong-{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    result = prober_with(probe_settings, {}, proxy=bad).probe(htpasswd_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "proxy"), result
    assert "refused the tunnel (401 Unauthorized)" in result.detail  # tinyproxy's answer
    assert PROXY_PASSWORD not in result.detail and "egress" not in result.detail


def test_proxy_refusing_connect_gives_reason_proxy(
    tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry, probe_settings: ProbeSettings
) -> None:
    proxy = tinyproxy(1)  # CONNECT allowed to port 1 only: tinyproxy answers 403 to ours
    url = f"http://user:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"
    result = prober_with(probe_settings, {"HTTPS_PROXY": url}).probe(htpasswd_registry.host, ROBOT)
    assert (result.outcome, result.reason) == (Outcome.ERROR, "proxy"), result
    assert f"proxy http://127.0.0.1:{proxy.port} (HTTPS_PROXY) refused the tunnel (403" in result.detail
    assert PROXY_PASSWORD not in result.detail and "user" not in result.detail


# --------------------------------------------------------------------------- NO_PROXY forms


@pytest.mark.parametrize(("no_proxy", "host", "port", "matched"), [
    ("registry.example.com", "registry.example.com", 443, True),
    ("example.com", "registry.example.com", 443, True),
    (".example.com", "registry.example.com", 443, True),
    (".example.com", "example.com", 443, True),
    ("example.com", "notexample.com", 443, False),
    ("*", "anything.io", 443, True),
    ("10.0.0.7", "10.0.0.7", 5000, True),
    ("10.0.0.0/8", "10.20.30.40", 443, True),
    ("10.0.0.0/8", "11.0.0.1", 443, False),
    ("10.0.0.0/8", "ten.example", 443, False),
    ("registry.local:5000", "registry.local", 5000, True),
    ("registry.local:5000", "registry.local", 443, False),
    ("::1", "::1", 443, True),
    ("[::1]:5000", "::1", 5000, True),
    ("fd00::/8", "fd12::1", 443, True),
    (" a.io , b.io ", "b.io", 443, True),
    ("", "a.io", 443, False),
])
def test_no_proxy_forms(no_proxy: str, host: str, port: int, matched: bool) -> None:
    assert bool(no_proxy_match(no_proxy, host, port)) is matched


def test_proxy_choice_precedence() -> None:
    env = ProxyEnv.from_environ({"HTTPS_PROXY": "http://upper:1", "https_proxy": "lower:2",
                                 "HTTP_PROXY": "http://plain:3", "ALL_PROXY": "http://all:4"})
    assert choose_proxy("https://r.io/v2/", env).url == "http://lower:2"
    assert choose_proxy("http://r.io/v2/", env).url == "http://plain:3"
    fallback = ProxyEnv.from_environ({"ALL_PROXY": "http://all:4"})
    assert choose_proxy("https://r.io/v2/", fallback) == choose_proxy("https://r.io/v2/", fallback)
    assert choose_proxy("https://r.io/v2/", fallback).why == "ALL_PROXY"
    assert choose_proxy("https://r.io/v2/", ProxyEnv()).describe() == "direct (no proxy configured)"
    secret = choose_proxy("https://r.io/", ProxyEnv(), "http://u:pw@proxy:3128")
    assert secret.describe() == "via http://proxy:3128 (probe.proxy)"


@pytest.mark.parametrize(("url", "problem"), [
    ("socks5://proxy:1080", "must start with http:// or https://"),
    ("http://", "must name a host"),
    ("http://proxy:3128/path", "must not have a path"),
    ("http://proxy:99999", "not a valid URL"),
    ("http://u:p@proxy:3128", ""),
    ("https://proxy", ""),
])
def test_proxy_url_validation(url: str, problem: str) -> None:
    assert (problem in proxy_problem(url)) if problem else proxy_problem(url) == ""


def test_bad_probe_proxy_is_a_config_error_naming_the_key(world: World) -> None:
    config = world.config([], [], probe={"proxy": f"socks5://user:{PROXY_PASSWORD}@proxy:1080/x"})
    with pytest.raises(ConfigError) as info:
        load(str(config), {})
    problems = "\n".join(info.value.problems)
    assert "probe.proxy: must start with http:// or https://" in problems
    assert PROXY_PASSWORD not in problems
    result = world.run(config)
    assert result.code == 2 and "probe.proxy" in result.err
    assert PROXY_PASSWORD not in result.out + result.err


def test_bad_proxy_variable_is_a_config_error(world: World, ngc: dict[str, Any]) -> None:
    config = world.config([{k: v for k, v in ngc.items() if not k.startswith("_")}],
                          [{"namespace": "domino-compute", "name": "x", "create": True}])
    result = world.run(config, env={"HTTPS_PROXY": f"socks5://u:{PROXY_PASSWORD}@p:1"})
    assert result.code == 2, result.out + result.err
    assert "environment HTTPS_PROXY: must start with http:// or https://" in result.err
    assert PROXY_PASSWORD not in result.err


# --------------------------------------------------------------------------- the CLI end to end


def test_once_and_check_use_and_name_the_proxy_from_the_environment(
    world: World, tinyproxy: Callable[..., TinyProxy], htpasswd_registry: Registry,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from syncer.cli import main

    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    world.vault_put("ngc", password=key)
    proxy = tinyproxy(port_of(htpasswd_registry.host))
    config = world.config(
        [{"host": htpasswd_registry.host, "path": "ngc", "username": "$oauthtoken"}],
        [{"namespace": "domino-compute", "name": "via-proxy", "create": True}])
    env = {"HTTPS_PROXY": f"http://ops:{PROXY_PASSWORD}@127.0.0.1:{proxy.port}"}
    result = world.run(config, env=env)
    assert result.code == 0, result.out + result.err
    assert [line.rsplit(" ", 1)[0] for line in proxy.requests()] == [
        f"CONNECT {htpasswd_registry.host}"]

    assert main(["check", "--config", str(config)], env=env) in (0, 1)
    out = capsys.readouterr().out
    assert f"via http://127.0.0.1:{proxy.port} (HTTPS_PROXY)" in out, out
    assert PROXY_PASSWORD not in out and "ops:" not in out
    env["NO_PROXY"] = "127.0.0.1"
    main(["check", "--config", str(config)], env=env)
    assert "direct (NO_PROXY entry 127.0.0.1)" in capsys.readouterr().out


def test_deadline_holds_through_the_tunnel(
    tinyproxy: Callable[..., TinyProxy], ca: Any, probe_settings: ProbeSettings
) -> None:
    """The deadline's watchdog also closes sockets opened to a proxy (the CONNECT tunnel)."""
    import time

    from tests.support.hostile import SlowServer

    server = SlowServer(ca, "headers", interval=0.05)
    try:
        proxy = tinyproxy(server.port)
        prober = prober_with(probe_settings, {"HTTPS_PROXY": proxy.url}, timeout=5.0, deadline=1.0)
        start = time.monotonic()
        result = prober.probe(server.host, ROBOT)
        assert (result.outcome, result.reason) == (Outcome.ERROR, "timeout"), result
        assert time.monotonic() - start < 3.0
        assert [line.split()[0] for line in proxy.requests()] == ["CONNECT"]
    finally:
        server.stop()
