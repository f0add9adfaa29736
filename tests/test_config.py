"""Config validation: every problem named with its key path, exit 2, no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from syncer import config, config_parse
from syncer.cli import main

GOOD = """
[vault]
address = "https://vault.example.com:8200"
[vault.auth]
method = "approle"
role_id = "r"
secret_id_file = "/run/secret-id"
[[registries]]
host = "nvcr.io"
path = "registries/ngc"
username = "$oauthtoken"
[[targets]]
namespace = "domino-compute"
name = "domino-quay-repos"
"""


def problems_of(text: str, env: dict[str, str] | None = None) -> list[str]:
    import tomllib

    with pytest.raises(config.ConfigError) as info:
        config.from_mapping(tomllib.loads(text), env or {})
    return info.value.problems


def test_good_config_loads_with_defaults() -> None:
    import tomllib

    settings = config.from_mapping(tomllib.loads(GOOD), {})
    assert settings.vault.kv_version == 2
    assert settings.vault.auth.mount_path == "approle"
    assert settings.probe.timeout == 10.0
    assert settings.schedule.interval == 300.0
    assert settings.hosts_for(settings.targets[0]) == ("nvcr.io",)


def test_example_config_is_valid() -> None:
    settings = config.load(Path(__file__).parent.parent / "config.example.toml", {})
    assert [r.host for r in settings.registries] == ["nvcr.io", "quay.io"]


def test_every_bad_key_is_named_with_its_path() -> None:
    text = """
bogus = 1
[vault]
kv_version = 3
timeout = "ten"
[vault.auth]
method = "ldap"
[probe]
enabled = "yes"
[metrics]
listen = "nowhere"
[[registries]]
host = "nvcr.io"
path = "registries/ngc"
[[registries]]
host = "http://insecure.example.com"
path = "x"
[[registries]]
host = "quay.io"
[[registries]]
host = "nvcr.io"
path = "again"
[[targets]]
namespace = "Bad_NS"
name = "ok"
registries = ["ghcr.io"]
[[targets]]
name = "x"
unknown = true
"""
    problems = problems_of(text)
    joined = "\n".join(problems)
    for path in ("bogus:", "vault.address:", "vault.kv_version:", "vault.timeout:",
                 "vault.auth.method:", "probe.enabled:", "metrics.listen:", "registries[1].host:",
                 "registries[2].path:", "registries[3]: duplicate host", "targets[0].namespace:",
                 "targets[0].registries:", "targets[1].namespace:", "targets[1].unknown:"):
        assert path in joined, f"{path} missing from:\n{joined}"


@pytest.mark.parametrize(("method", "keys"), [
    ("approle", ["vault.auth.role_id", "vault.auth.secret_id_file"]),
    ("kubernetes", ["vault.auth.role"]),
    ("token", ["vault.auth.token_file"]),
])
def test_auth_method_requirements(method: str, keys: list[str]) -> None:
    text = f'[vault]\naddress="https://v"\n[vault.auth]\nmethod="{method}"\n' \
           '[[registries]]\nhost="a.io"\npath="p"\n[[targets]]\nnamespace="n"\nname="s"\n'
    joined = "\n".join(problems_of(text))
    for key in keys:
        assert key in joined


def test_env_fallbacks() -> None:
    import tomllib

    text = GOOD.replace('address = "https://vault.example.com:8200"', "").replace(
        'method = "approle"', 'method = "token"')
    env = {"VAULT_ADDR": "http://127.0.0.1:8200", "VAULT_TOKEN": "s.sentinel",
           "VAULT_NAMESPACE": "team", "VAULT_CACERT": "/ca.pem"}
    settings = config.from_mapping(tomllib.loads(text), env)
    assert settings.vault.address == "http://127.0.0.1:8200"
    assert settings.vault.namespace == "team"
    assert settings.vault.ca_cert == "/ca.pem"
    assert settings.vault.auth.token == "s.sentinel"
    assert "s.sentinel" not in repr(settings)


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), (42, 42), ("2h", 7200)])
def test_durations(text: object, seconds: float) -> None:
    assert config_parse.parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["", "5", "m", "1d", "-3s", True, -1, "5 m"])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        config_parse.parse_duration(bad)


def test_cli_exit_2_without_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[vault]\nkv_version = "two"\n[[registries]]\nhost = ""\n')
    assert main(["--config", str(path), "--once"], env={}) == 2
    err = capsys.readouterr().err
    assert "vault.kv_version" in err and "registries[0].host" in err and "registries[0].path" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [[], ["--config"], ["--bogus"], ["--log-level", "loud"]])
def test_cli_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv, env={}) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_config_path_from_env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("not = [valid")
    assert main(["--once"], env={"SYNCER_CONFIG": str(path)}) == 2
    assert "invalid TOML" in capsys.readouterr().err


def test_unreadable_and_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(tmp_path / "nope.toml")], env={}) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[vault]\n")
    proc = subprocess.run([sys.executable, "-m", "syncer", "--config", str(path), "--once"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "vault.address" in proc.stderr and "Traceback" not in proc.stderr


def test_empty_registries_or_targets_arrays_are_refused() -> None:
    """``registries = []`` must not make --once a silent no-op that exits 0."""
    import tomllib

    data = {**tomllib.loads(GOOD), "registries": [], "targets": []}
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping(data, {})
    assert info.value.problems == ["registries: at least one [[registries]] entry is required",
                                   "targets: at least one [[targets]] entry is required"]
    with pytest.raises(config.ConfigError) as info:
        config.from_mapping({**data, "registries": "x", "targets": 5}, {})
    assert info.value.problems == ['registries: must be an array of tables ([[registries]])',
                                   'targets: must be an array of tables ([[targets]])']


def test_registry_hosts_kubelet_treats_as_one_key_are_duplicates() -> None:
    text = GOOD + '[[registries]]\nhost = "https://NVCR.io/v1/"\npath = "registries/other"\n'
    joined = "\n".join(problems_of(text))
    assert "registries[1]: duplicate host (same as registries[0])" in joined


# ------------------------------------------------------------------ Kubernetes names and Lease bounds


@pytest.mark.parametrize("key, value", [
    ("name", "a..b"), ("name", "-pull"), ("name", "pull-"), ("name", "Pull"), ("name", "a_b"),
    ("name", "a." + "b" * 252), ("name", ".a"), ("namespace", "a.b"), ("namespace", "n" * 64),
    ("namespace", "a..b"), ("namespace", "Team"),
])
def test_target_names_must_be_dns_1123(key: str, value: str) -> None:
    """Secret names are DNS-1123 subdomains, namespaces DNS-1123 labels (else the API answers 422)."""
    text = GOOD.replace(f'{key} = "domino-{"compute" if key == "namespace" else "quay-repos"}"',
                        f'{key} = "{value}"')
    assert f'{key} = "{value}"' in text
    problems = problems_of(text)
    assert len(problems) == 1 and problems[0].startswith(f"targets[0].{key}: is not a valid "), problems
    assert repr(value) in problems[0]


@pytest.mark.parametrize("value", ["a.b-c.d", "x" * 253, "0pull", "p"])
def test_valid_dns_1123_secret_names_pass(value: str) -> None:
    import tomllib

    settings = config.from_mapping(tomllib.loads(GOOD.replace('"domino-quay-repos"', f'"{value}"')), {})
    assert settings.targets[0].name == value


def test_fanout_target_and_service_account_names_are_dns_1123() -> None:
    text = GOOD.replace('namespace = "domino-compute"\nname = "domino-quay-repos"',
                        'namespace_selector = "team=ml"\nname = "pull..x"\n'
                        'service_accounts = ["default", "a..b"]')
    problems = problems_of(text)
    assert [p.split(":")[0] for p in problems] == ["targets[0].name", "targets[0].service_accounts"]
    assert "'a..b'" in problems[1] and "ServiceAccount name" in problems[1]


@pytest.mark.parametrize("duration, ok", [("500ms", False), ("999ms", False), ("1s", True), ("15s", True)])
def test_lease_duration_under_one_second_is_a_config_error(duration: str, ok: bool) -> None:
    """leaseDurationSeconds is whole seconds: 0.5s would become 0 and every Lease write 422."""
    import tomllib

    text = GOOD + f'[leader_election]\nenabled = true\nnamespace = "ns"\nidentity = "me"\n' \
                  f'lease_duration = "{duration}"\nrenew_period = "100ms"\n'
    if ok:
        assert config.from_mapping(tomllib.loads(text), {}).leader_election.enabled
        return
    assert problems_of(text) == [f"leader_election.lease_duration: must be at least 1s (the Lease holds "
                                 f"whole seconds; got {config_parse.parse_duration(duration):g}s)"]


def test_lease_names_are_dns_1123() -> None:
    text = GOOD + '[leader_election]\nenabled = true\nnamespace = "a.b"\nidentity = "me"\nname = "x..y"\n'
    assert [p.split(":")[0] for p in problems_of(text)] == ["leader_election.namespace",
                                                           "leader_election.name"]


@pytest.mark.parametrize("host", ["nvcr.io\n", "nvcr.io/team\x1b[31m", "nvcr.io/a b"])
def test_registry_host_with_control_characters_or_a_trailing_newline_is_refused(host: str) -> None:
    import json

    text = GOOD.replace('host = "nvcr.io"', f"host = {json.dumps(host)}")
    assert any(p.startswith("registries[0].host") for p in problems_of(text))
