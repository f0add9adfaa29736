"""The command line's exit codes for configuration problems found while building clients."""

from __future__ import annotations

from pathlib import Path

import pytest

from syncer.cli import main

CONFIG = """
[vault]
address = "https://127.0.0.1:1"
ca_cert = "{missing}/vault-ca.pem"
[vault.auth]
method = "token"
token_file = "{missing}/token"
[probe]
ca_cert = "{missing}/registry-ca.pem"
[[registries]]
host = "nvcr.io"
path = "ngc"
[[targets]]
namespace = "ns"
name = "pull"
"""


@pytest.mark.parametrize("command", [[], ["show"], ["rollback", "--namespace", "ns", "--name", "pull"]])
def test_unloadable_ca_files_exit_2_naming_each_key(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    command: list[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text('{"apiVersion": "v1", "kind": "Config", "clusters": [{"name": "c", "cluster": '
                          '{"server": "https://127.0.0.1:1"}}], "users": [{"name": "u", "user": {}}], '
                          '"contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}], '
                          '"current-context": "x"}')
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(missing=tmp_path / "nope")
                      + f'[kubernetes]\nkubeconfig = "{kubeconfig}"\n')
    argv = [*command, "--config", str(config)] + ([] if command else ["--once"])
    assert main(argv, env={}) == 2
    err = capsys.readouterr().err
    assert "invalid configuration" in err and "Traceback" not in err
    assert "vault.ca_cert" in err and "probe.ca_cert" in err


def test_check_reports_unloadable_ca_files_as_failed_checks(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "c.toml"
    config.write_text(CONFIG.format(missing=tmp_path / "nope"))
    assert main(["check", "--config", str(config)], env={"KUBECONFIG": str(tmp_path / "none")}) == 1
    out = capsys.readouterr().out
    assert "FAIL  config: vault.ca_cert" in out and "FAIL  config: probe.ca_cert" in out


def test_kubeconfig_that_is_not_yaml_exits_2_without_quoting_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text("users:\n- name: u\n  user: {token: SENTINEL-kube-token\n")
    config = tmp_path / "c.toml"
    config.write_text('[vault]\naddress = "https://127.0.0.1:1"\n[vault.auth]\nmethod = "token"\n'
                      f'token_file = "{tmp_path}/t"\n[kubernetes]\nkubeconfig = "{kubeconfig}"\n'
                      '[[registries]]\nhost = "nvcr.io"\npath = "ngc"\n'
                      '[[targets]]\nnamespace = "ns"\nname = "pull"\n')
    assert main(["--config", str(config), "--once"], env={}) == 2
    err = capsys.readouterr().err
    assert "kubernetes.kubeconfig" in err and "not valid YAML" in err
    assert "Traceback" not in err and "SENTINEL" not in err
