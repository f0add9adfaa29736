"""Hostile values and configs against the Helm chart: a crafted target cannot change the RBAC.

The chart writes target namespaces and names into Roles; ``configToml`` skips the values schema,
so the templates check the names themselves. One test per row; each says the attack and the
safe outcome.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.test_chart import CHART, RELEASE, helm

ESCALATION = ("apps\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\n"
              "metadata: {name: pwned}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, "
              "name: cluster-admin}\nsubjects: [{kind: Group, name: 'system:authenticated'}]")


def _template(tmp_path: Path, values: dict[str, Any]) -> Any:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return helm("template", RELEASE, str(CHART), "-f", str(path))


def _raw(target: str) -> dict[str, str]:
    return {"configToml": '[vault]\naddress = "https://vault.example:8200"\n[[registries]]\n'
                          f'host = "nvcr.io"\npath = "ngc"\n[[targets]]\n{target}\n'}


def _refused(out: Any, *needles: str) -> None:
    assert out.returncode != 0, "rendered"
    assert "cluster-admin" not in out.stdout and "kind: ClusterRoleBinding" not in out.stdout
    for needle in needles:
        assert needle in out.stderr, out.stderr


def test_values_target_namespace_carrying_a_document(tmp_path: Path) -> None:
    """Attack: a values target namespace that closes the Role and adds a ClusterRoleBinding to
    cluster-admin. Safe: the schema refuses the namespace by its path; nothing is rendered."""
    out = _template(tmp_path, {"config": {"targets": [{"namespace": ESCALATION, "name": "pull"}]}})
    _refused(out, "config.targets.0.namespace", "schema")


def test_raw_toml_target_namespace_carrying_a_document(tmp_path: Path) -> None:
    """Attack: the same namespace in configToml, which the values schema cannot see. Safe: the
    RBAC template refuses it (naming targets[0].namespace, escaped); nothing is rendered."""
    out = _template(tmp_path, _raw(f'namespace = {json.dumps(ESCALATION)}\nname = "pull"'))
    _refused(out, "targets[0].namespace: not a Kubernetes namespace name", "\\n---\\n")


def test_raw_toml_namespace_adding_metadata_keys(tmp_path: Path) -> None:
    """Attack: a configToml namespace that adds an `annotations` key to the Role's metadata.
    Safe: refused before any YAML is written."""
    out = _template(tmp_path, _raw('namespace = "apps\\n  annotations: {a: b}"\nname = "pull"'))
    _refused(out, "targets[0].namespace")


def test_raw_toml_service_account_name_adding_a_rule(tmp_path: Path) -> None:
    """Attack: a service_accounts entry crafted to break out of resourceNames. Safe: refused as
    not a Kubernetes object name (resourceNames is JSON-quoted anyway)."""
    out = _template(tmp_path, _raw('namespace = "apps"\nname = "pull"\n'
                                   'service_accounts = ["default\\"]\\n  - apiGroups: [\\"*\\"]"]'))
    _refused(out, "targets[0]: not a Kubernetes object name")


def test_values_secret_name_with_a_newline(tmp_path: Path) -> None:
    """Attack: a values target name with a newline and a second rule. Safe: the schema refuses it."""
    out = _template(tmp_path, {"config": {"targets": [
        {"namespace": "apps", "name": "pull\n- apiGroups: ['*']"}]}})
    _refused(out, "config.targets.0.name")


def test_raw_toml_that_does_not_parse(tmp_path: Path) -> None:
    """Attack: a configToml the chart cannot parse (helm's fromToml then yields no targets, so no
    RBAC would be rendered and the syncer would fail later). Safe: refused at render time."""
    out = _template(tmp_path, {"configToml": '[[targets]\nnamespace = "apps"\n'})
    _refused(out, "configToml: not valid TOML")
