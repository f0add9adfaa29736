"""The Helm chart (deploy/chart/registry-credential-syncer) against the same standards as deploy/:

* ``helm lint --strict`` for the default values and every example values file;
* ``helm template`` for every mode validates against the Kubernetes schemas, and its ConfigMap
  passes the syncer's own config validation and agrees with the pod (mounts, token, ports);
* the RBAC is exactly what the rendered config needs, and replayed on the Kubernetes API test
  server it is enough for a real ``syncer --once`` (and one rule fewer fails cleanly), for the
  Deployment's config and for the CronJob's own container args and config;
* the Vault credential values (token, approle, cert, vaultCA) mount Secrets that log in to a
  real OpenBao;
* deploy/'s kustomize files are the chart's rendering (``render_manifests.py --check``);
* the schema refuses misspelled and mistyped values, naming the key;
* the selector labels do not move with values (``helm upgrade`` cannot hit the immutable
  selector), and the PrometheusRule and dashboard are the files deploy/ ships.

helm comes from ``make helm`` (scripts/install_helm.py) into the venv's bin directory.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from syncer import config as config_mod
from tests.support.scenario import make_world, ngc_login, registry_spec
from tests.support.vault_fixtures import reg
from tests.support.world import SYNCER_TOKEN, Result, World
from tests.test_deploy import (
    DEPLOY,
    assert_hardened,
    config_text,
    container,
    env_of,
    one,
    pod_spec,
    project_version,
    render,
    settings_of,
    validate_objects,
    workload_of,
    write_config,
)

CHART = DEPLOY / "chart" / "registry-credential-syncer"
EXAMPLES = CHART / "examples"
RELEASE, NAMESPACE = "registry-credential-syncer", "registry-syncer"
MODES: dict[str, tuple[str, ...]] = {
    "default": (),
    "fanout": (str(EXAMPLES / "fanout.yaml"),),
    "cronjob": (str(EXAMPLES / "cronjob.yaml"),),
    "monitoring": (str(EXAMPLES / "monitoring.yaml"),),
    "domino": (str(EXAMPLES / "domino.yaml"),),
}
SELECTOR = {"app.kubernetes.io/name": "registry-credential-syncer", "app.kubernetes.io/instance": RELEASE}


@functools.cache
def helm_binary() -> str:
    found = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    assert found, "helm not found: run `make helm` (scripts/install_helm.py)"
    return found


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm_binary(), *args], capture_output=True, text=True, timeout=120, check=False)


@functools.cache
def _template(files: tuple[str, ...], sets: tuple[str, ...]) -> str:
    argv = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for f in files:
        argv += ["-f", f]
    for s in sets:
        argv += ["--set", s]
    out = helm(*argv)
    assert out.returncode == 0, f"helm template failed:\n{out.stderr}"
    return json.dumps([doc for doc in yaml.safe_load_all(out.stdout) if doc])


def template(mode: str = "default", *sets: str, files: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """The rendered objects (a fresh copy; rendering is cached)."""
    objects: list[dict[str, Any]] = json.loads(_template(MODES[mode] + files, sets))
    return objects


def chart_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every Role/ClusterRole rule bound to the ServiceAccount, as the test server's rules
    (a ``namespaces`` list for a Role; none, i.e. cluster-wide, for a ClusterRole)."""
    sa = one(objects, "ServiceAccount")["metadata"]
    subject = {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
    rules: list[dict[str, Any]] = []
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    roles = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert len(bindings) == len(roles), "a Role is bound to nobody (or a binding to no Role)"
    for binding in bindings:
        assert binding["subjects"] == [subject], binding["metadata"]
        ns = binding["metadata"].get("namespace")
        role = one([o for o in roles if o["metadata"].get("namespace") == ns], binding["roleRef"]["kind"],
                   binding["roleRef"]["name"])
        rules += [{**rule, "namespaces": [ns]} if ns else dict(rule) for rule in role["rules"]]
    return rules


def needed_rules(settings: config_mod.Settings, kind: str) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    """What the code needs: (namespace or "*", group, resource, verb, resourceNames)."""
    names: dict[tuple[str, str, str, str], set[str]] = {}
    unbound: set[tuple[str, str, str, str]] = set()

    def bind(ns: str, resource: str, verbs: tuple[str, ...], name: str, group: str = "") -> None:
        for verb in verbs:
            names.setdefault((ns, group, resource, verb), set()).add(name)

    watch = settings.kubernetes.watch and kind == "Deployment"  # a CronJob runs --once: no watches
    for t in settings.targets:
        if t.file:
            continue
        ns = t.namespace or "*"
        bind(ns, "secrets", ("get", "patch") + (("list",) if ns == "*" and settings.kubernetes.list_secrets
                                                else ()), t.name)
        if watch:  # list-then-watch, name-bound by the fieldSelector
            bind(ns, "secrets", ("list", "watch"), t.name)
            if ns == "*":
                unbound.add(("*", "", "namespaces", "watch"))
        for account in t.service_accounts:
            bind(ns, "serviceaccounts", ("get", "patch"), account)
        if t.create:
            unbound.add((ns, "", "secrets", "create"))
        if settings.kubernetes.events:
            unbound |= {(ns, "", "events", "create"), (ns, "", "events", "patch")}
        if ns == "*":
            unbound.add(("*", "", "namespaces", "list"))
    le = settings.leader_election
    if le.enabled and kind == "Deployment":
        bind(le.namespace, "leases", ("get", "patch"), le.name, "coordination.k8s.io")
        unbound.add((le.namespace, "coordination.k8s.io", "leases", "create"))
    return ({(*k, tuple(sorted(v))) for k, v in names.items()} | {(*k, ()) for k in unbound})


def granted_rules(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str, tuple[str, ...]]]:
    return {(ns, group, resource, verb, tuple(sorted(r.get("resourceNames", []))))
            for r in rules for ns in r.get("namespaces", ["*"]) for group in r["apiGroups"]
            for resource in r["resources"] for verb in r["verbs"]}


# ------------------------------------------------------------------------------ chart metadata


def test_app_version_is_the_package_version() -> None:
    import syncer

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == project_version() == syncer.__version__


@pytest.mark.parametrize("mode", sorted(MODES))
def test_helm_lint_strict(mode: str) -> None:
    argv = ["lint", "--strict", str(CHART)]
    for f in MODES[mode]:
        argv += ["-f", f]
    out = helm(*argv)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


def test_readme_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    leaves: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict) and value:
            for key, sub in value.items():
                walk(sub, f"{path}.{key}" if path else key)
        else:
            leaves.append(path)

    walk(values, "")
    assert len(leaves) > 50
    missing = [leaf for leaf in leaves if f"`{leaf}`" not in readme]
    assert missing == [], f"values not in {CHART / 'README.md'}: {missing}"


# ------------------------------------------------------------------------------ rendering


@pytest.mark.parametrize("mode", sorted(MODES))
def test_template_validates_and_config_passes_the_syncers_validation(mode: str) -> None:
    objects = template(mode)
    validate_objects(objects)
    workload = workload_of(objects)
    assert workload["kind"] == ("CronJob" if mode == "cronjob" else "Deployment")
    settings = settings_of(objects)  # raises ConfigError naming every bad key
    pod, c = pod_spec(workload), container(workload)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert env_of(workload)["SYNCER_CONFIG"] == f"{mounts['config']['mountPath']}/config.toml"
    config_map = one(objects, "ConfigMap", f"{RELEASE}-config")
    assert volumes["config"]["configMap"]["name"] == config_map["metadata"]["name"]
    jwt_dir, jwt_name = settings.vault.auth.jwt_file.rsplit("/", 1)
    assert mounts["vault-token"]["mountPath"] == jwt_dir
    (source,) = volumes["vault-token"]["projected"]["sources"]
    assert source["serviceAccountToken"] == {"audience": "vault", "expirationSeconds": 600, "path": jwt_name}
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    if workload["kind"] == "Deployment":
        assert settings.leader_election.enabled and settings.leader_election.namespace == NAMESPACE
        assert settings.leader_election.identity == env_of(workload)["POD_NAME"]
        port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
        assert settings.metrics.port == port == one(objects, "Service")["spec"]["ports"][0]["port"]
    else:
        assert "--once" in c["args"] and not [o for o in objects if o["kind"] in ("Service", "Lease")]
        assert not settings.leader_election.enabled


def test_domino_example_mirrors_the_domino_overlay() -> None:
    from tests.test_deploy import render

    chart = settings_of(template("domino"))
    kustomize = settings_of(render("domino"))
    assert chart.targets == kustomize.targets
    assert chart.registries == kustomize.registries
    assert [(t.namespace, t.name, t.create) for t in chart.targets] == [
        ("domino-compute", "domino-quay-repos", False)]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_rbac_grants_exactly_what_the_config_needs(mode: str) -> None:
    objects = template(mode)
    settings = settings_of(objects)
    rules = chart_rules(objects)
    assert granted_rules(rules) == needed_rules(settings, workload_of(objects)["kind"])
    cluster = [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert bool(cluster) == any(t.namespace_selector for t in settings.targets)
    # Nothing but create, events and namespaces is ever unbound by name.
    for rule in rules:
        if "resourceNames" not in rule:
            assert set(rule["resources"]) <= {"secrets", "events", "namespaces", "leases"}, rule
            if rule["resources"] in (["secrets"], ["leases"]):
                assert rule["verbs"] == ["create"], rule


def test_rbac_follows_the_targets_create_and_events() -> None:
    """No create without create = true, no Events rule with events = false."""
    objects = template("domino", "config.kubernetes.events=false")
    rules = chart_rules(objects)
    assert not [r for r in rules if "events" in r["resources"]]
    assert not [r for r in rules if "create" in r["verbs"] and r["resources"] == ["secrets"]]
    created = chart_rules(template("domino", "config.targets[0].create=true"))
    assert ("domino-compute", "", "secrets", "create", ()) in granted_rules(created)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_pod_is_hardened(mode: str) -> None:
    workload = workload_of(template(mode))
    pod, c = pod_spec(workload), container(workload)
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert_hardened(pod, c)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert all(m.get("readOnly") for name, m in mounts.items() if name != "tmp")
    if workload["kind"] == "CronJob":
        assert workload["spec"]["concurrencyPolicy"] == "Forbid"
        deployment = workload_of(template("default"))
        assert pod["volumes"] == pod_spec(deployment)["volumes"]
        same = ("image", "env", "volumeMounts", "securityContext", "resources")
        assert {k: c[k] for k in same} == {k: container(deployment)[k] for k in same}


def test_image_digest_wins_over_the_tag() -> None:
    digest = "sha256:" + "a" * 64
    c = container(workload_of(template("default", f"image.digest={digest}", "image.tag=9.9.9")))
    assert c["image"] == f"registry.example.com/platform/registry-credential-syncer@{digest}"


# ------------------------------------------------------------------------------ values


@pytest.mark.parametrize(("setting", "key"), [
    ("config.probe.retires=2", "retires"),            # misspelled syncer config key
    ("replicas=two", "replicas"),                      # mistyped
    ("vaultAuth.methd=jwt", "methd"),                 # misspelled chart value
    ("image.pullPolicy=Sometimes", "pullPolicy"),     # not one of the allowed values
    ("networkPolicy.monitoringNamespce=x", "monitoringNamespce"),
])
def test_schema_refuses_misspelled_and_mistyped_values(setting: str, key: str) -> None:
    out = helm("template", RELEASE, str(CHART), "--set", setting)
    assert out.returncode != 0, f"{setting} was accepted"
    assert key in out.stderr and "schema" in out.stderr, out.stderr


def test_selector_labels_do_not_change_with_values() -> None:
    """helm upgrade cannot change a Deployment's selector: no value may move it."""
    base = template("default")
    changed = template("default", "image.tag=9.9.9", "config.probe.retries=5", "replicas=3",
                       "podLabels.team=ml", "leaderElection.leaseDuration=20s", "fullnameOverride=syncer",
                       "vaultAuth.method=jwt", "networkPolicy.enabled=true", "metrics.port=9200")
    for objects in (base, changed):
        deployment = one(objects, "Deployment")
        assert deployment["spec"]["selector"]["matchLabels"] == SELECTOR
        assert one(objects, "Service")["spec"]["selector"] == SELECTOR
        assert one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == SELECTOR
        assert one(objects, "NetworkPolicy")["spec"]["podSelector"]["matchLabels"] == SELECTOR
        assert SELECTOR.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    # ...while a config change still rolls the pods.
    annotation = "checksum/config"
    old, new = (one(o, "Deployment")["spec"]["template"]["metadata"]["annotations"][annotation]
                for o in (base, changed))
    assert old != new


def test_only_name_override_moves_the_selector_and_the_docs_say_so() -> None:
    """nameOverride is the one value in the selector (app.kubernetes.io/name): install-time only."""
    moved = one(template("default", "nameOverride=rcs"), "Deployment")["spec"]["selector"]["matchLabels"]
    assert moved == {**SELECTOR, "app.kubernetes.io/name": "rcs"}
    readme = (CHART / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `nameOverride`"))
    assert "selector" in row and "install" in row, row


@pytest.mark.parametrize("mode", ["default", "cronjob"])
def test_scheduling_and_account_values_reach_the_pod(mode: str, tmp_path: Path) -> None:
    toleration = {"key": "dedicated", "operator": "Equal", "value": "infra", "effect": "NoSchedule"}
    values = {"nodeSelector": {"kubernetes.io/os": "linux"}, "tolerations": [toleration],
              "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                  "nodeSelectorTerms": [{"matchExpressions": [
                      {"key": "node-role", "operator": "In", "values": ["infra"]}]}]}}},
              "priorityClassName": "system-cluster-critical", "imagePullSecrets": [{"name": "own-pull"}],
              "serviceAccount": {"create": False, "name": "existing-sa"}}
    (tmp_path / "values.yaml").write_text(yaml.safe_dump(values))
    objects = template(mode, files=(str(tmp_path / "values.yaml"),))
    validate_objects(objects)
    pod = pod_spec(workload_of(objects))
    for key in ("nodeSelector", "tolerations", "affinity", "priorityClassName", "imagePullSecrets"):
        assert pod[key] == values[key], key
    assert pod["serviceAccountName"] == "existing-sa"
    assert not [o for o in objects if o["kind"] == "ServiceAccount"]
    subjects = [s for o in objects if o["kind"].endswith("Binding") for s in o["subjects"]]
    assert subjects and {s["name"] for s in subjects} == {"existing-sa"}
    assert not [o for o in template(mode, "rbac.create=false") if "Role" in o["kind"]]


def test_pdb_only_with_more_than_one_replica() -> None:
    assert one(template("default"), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert not [o for o in template("default", "replicas=1") if o["kind"] == "PodDisruptionBudget"]
    assert not [o for o in template("cronjob") if o["kind"] == "PodDisruptionBudget"]


def test_network_policy_admits_metrics_only_from_the_monitoring_namespace() -> None:
    policy = one(template("default"), "NetworkPolicy")["spec"]
    (rule,) = policy["ingress"]
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert rule["from"] == [monitoring]
    assert rule["ports"] == [{"port": 9102, "protocol": "TCP"}]
    egress = sorted((p["protocol"], p["port"]) for r in policy["egress"] for p in r["ports"])
    assert egress == [("TCP", 53), ("TCP", 443), ("TCP", 443), ("TCP", 6443), ("TCP", 8200), ("UDP", 53)]
    custom = one(template("default", "networkPolicy.monitoringNamespace=prom",
                          "networkPolicy.monitoringCIDRs={10.1.0.0/16}", "networkPolicy.vault.namespace=",
                          "networkPolicy.vault.cidrs={192.0.2.10/32}"), "NetworkPolicy")["spec"]
    assert custom["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}},
        {"ipBlock": {"cidr": "10.1.0.0/16"}}]
    vault_rule = next(r for r in custom["egress"] if r["ports"] == [{"port": 8200, "protocol": "TCP"}])
    assert vault_rule["to"] == [{"ipBlock": {"cidr": "192.0.2.10/32"}}]
    # A CronJob has no port to admit.
    assert one(template("cronjob"), "NetworkPolicy")["spec"]["ingress"] == []


def test_vault_auth_jwt_and_token_from_an_existing_secret() -> None:
    objects = template("default", "vaultAuth.method=jwt", "vaultAuth.audience=https://vault.example.com")
    settings = settings_of(objects)
    assert (settings.vault.auth.method, settings.vault.auth.role) == ("jwt", "registry-syncer")
    volume = next(v for v in pod_spec(workload_of(objects))["volumes"] if v["name"] == "vault-token")
    assert volume["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "https://vault.example.com"
    validate_objects(objects)

    objects = template("default", "vaultAuth.method=token", "vaultAuth.existingSecret.name=vault-token")
    settings = settings_of(objects)
    assert settings.vault.auth.method == "token"
    assert settings.vault.auth.token_file == "/var/run/secrets/vault/token"
    volume = next(v for v in pod_spec(workload_of(objects))["volumes"] if v["name"] == "vault-token")
    assert volume["secret"] == {"secretName": "vault-token", "defaultMode": 0o400,
                                "items": [{"key": "token", "path": "token"}]}
    assert "VAULT_TOKEN" not in env_of(workload_of(objects))
    missing = helm("template", RELEASE, str(CHART), "--set", "vaultAuth.method=token")
    assert missing.returncode != 0 and "existingSecret.name" in missing.stderr


def test_extra_env_reaches_the_container() -> None:
    env = env_of(workload_of(template("domino", "extraEnv[0].name=HTTPS_PROXY",
                                      "extraEnv[0].value=http://proxy.corp:3128",
                                      "extraEnv[1].name=NO_PROXY", "extraEnv[1].value=.svc")))
    assert env["HTTPS_PROXY"] == "http://proxy.corp:3128" and env["NO_PROXY"] == ".svc"


def test_toml_renderer_round_trips_awkward_strings(tmp_path: Path) -> None:
    """Quotes, backslashes, newlines, '#', non-ASCII and HTML characters survive the template's
    TOML writer exactly; integers stay integers (helm's toToml would write 2.0)."""
    awkward = 'a "quoted" \\ back\nslash # not a comment <&> ü \t end'
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"config": {
        "registries": [{"host": "nvcr.io", "path": "registries/ngc", "username": awkward}],
        "probe": {"retries": 3}}}))
    data = tomllib.loads(config_text(template("default", files=(str(values),))))
    assert data["registries"][0]["username"] == awkward
    assert data["probe"]["retries"] == 3 and isinstance(data["probe"]["retries"], int)
    assert data["vault"]["kv_version"] == 2


def test_raw_config_toml_is_used_verbatim_and_drives_the_rbac(tmp_path: Path) -> None:
    raw = (DEPLOY / "overlays" / "domino" / "config.toml").read_text()
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump({"configToml": raw}))
    objects = template("default", files=(str(values),))
    assert config_text(objects).strip() == raw.strip()
    settings = settings_of(objects)
    assert granted_rules(chart_rules(objects)) == needed_rules(settings, "Deployment")


def test_monitoring_objects_are_the_files_deploy_ships() -> None:
    objects = template("monitoring")
    validate_objects(objects)
    for link in ("prometheusrule.yaml", "dashboard.json", "runbook-base.yaml"):
        assert (CHART / "files" / link).is_symlink(), f"files/{link} must stay a symlink (one copy)"
    shipped = one(render("monitoring"), "PrometheusRule")  # kustomize's, runbook base filled in
    rule = one(objects, "PrometheusRule")
    assert rule["spec"] == shipped["spec"]
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    dashboard = one(objects, "ConfigMap", f"{RELEASE}-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["registry-credential-syncer.json"]) == json.loads(
        (DEPLOY / "grafana" / "registry-credential-syncer.json").read_text())
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"] == SELECTOR
    # The alerts select job="<Service name>", which is what the ServiceMonitor's job label becomes.
    assert one(objects, "Service")["metadata"]["name"] in json.dumps(rule["spec"])
    assert not [o for o in template("default") if o["apiVersion"].startswith("monitoring.coreos.com")]


def test_runbook_base_value_reaches_every_alert() -> None:
    rule = one(template("monitoring", "metrics.prometheusRule.runbookBase=https://docs.internal.test/g"),
               "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert len(urls) >= 5
    assert all(u.startswith("https://docs.internal.test/g#") for u in urls), urls


def test_notes_tell_how_to_see_the_first_sync(tmp_path: Path) -> None:
    # `helm install --dry-run` needs a cluster; render NOTES.txt as a template of a chart copy.
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes_txt = chart / "templates" / "NOTES.txt"
    (chart / "templates" / "notes.yaml").write_text(
        '{{- define "test.notes" -}}\n' + notes_txt.read_text() + '\n{{- end -}}\n'
        'notes: {{ include "test.notes" . | toJson }}\n')
    notes_txt.unlink()

    def notes_of(mode: str) -> str:
        out = helm("template", RELEASE, str(chart), "--namespace", NAMESPACE, "-f", MODES[mode][0],
                   "--show-only", "templates/notes.yaml")
        assert out.returncode == 0, out.stderr
        text: str = yaml.safe_load(out.stdout)["notes"]
        return text

    cron = notes_of("cronjob")
    assert f"create job --from=cronjob/{RELEASE} {RELEASE}-first" in cron
    assert f"logs job/{RELEASE}-first" in cron and "syncer check --config config.toml" in cron
    assert "kubectl -n apps get secret registry-pull" in cron and "port-forward" not in cron
    notes = notes_of("domino")
    assert f"kubectl -n {NAMESPACE} logs deploy/{RELEASE}" in notes
    assert f"exec deploy/{RELEASE} -- syncer check --config /etc/syncer/config.toml" in notes
    assert "/metrics" in notes and "9102" in notes
    assert "kubectl -n domino-compute get secret domino-quay-repos" in notes


# ------------------------------------------------------------------------------ RBAC replay


def replay_config(world: World, objects: list[dict[str, Any]], login: dict[str, Any]) -> Path:
    """The chart's config with the test servers standing in: its targets and events setting,
    the htpasswd registry for nvcr.io, Vault and the API server of the test."""
    data = tomllib.loads(config_text(objects))
    targets = [{**t, "registries": [login["host"]]} if "registries" in t else t for t in data["targets"]]
    return world.config([registry_spec(login)], targets,
                        kubernetes={"events": data["kubernetes"].get("events", True)})


@pytest.fixture
def chart_world(tmp_path: Path, bao: Any, kube: Any, ca_file: str, htpasswd_registry: Any) -> dict[str, Any]:
    world = make_world(tmp_path, bao, kube, ca_file, "domino-compute", "team-a", "team-b")
    kube.add_namespace("team-a", labels={"registry-pull": "enabled"})
    kube.add_namespace("team-b", labels={"registry-pull": "enabled"})
    kube.add_namespace("other")
    for ns in ("team-a", "team-b"):
        kube.add_service_account(ns, "default")
    world.put_dockerconfig("domino-compute", "domino-quay-repos",
                           {"auths": {"quay.io": {"username": "domino+builder", "password": "domino-owned"}}})
    return {"world": world, "login": ngc_login(world, htpasswd_registry)}


def denied(world: World) -> list[tuple[str, str, str | None]]:
    return [(r.verb, r.resource, r.name) for r in world.kube.requests
            if r.user == "system:serviceaccount:syncer:syncer" and r.status == 403]


@pytest.mark.parametrize("mode", ["domino", "fanout"])
def test_rendered_rbac_is_enough_for_a_real_sync(chart_world: dict[str, Any], mode: str) -> None:
    world, login = chart_world["world"], chart_world["login"]
    objects = template(mode)
    world.kube.set_rules(SYNCER_TOKEN, chart_rules(objects))
    world.kube.reset_requests()
    result = world.run(replay_config(world, objects, login))
    assert result.code == 0, result.out + result.err
    assert denied(world) == []
    if mode == "domino":
        doc = world.secret_doc("domino-compute", "domino-quay-repos")
        assert doc["auths"]["quay.io"]["password"] == "domino-owned", "Domino's own entry must survive"
        assert doc["auths"][login["host"]]["password"] == login["_key"]
    else:
        for ns in ("team-a", "team-b"):
            assert world.secret_doc(ns, "registry-pull")["auths"][login["host"]]["password"] == login["_key"]
            sa = world.kube.get_object("serviceaccounts", ns, "default")
            assert {"name": "registry-pull"} in sa["imagePullSecrets"]
        assert world.kube.get_secret("other", "registry-pull") is None


@pytest.mark.parametrize(("mode", "resource", "verb", "secret"), [
    ("domino", "secrets", "patch", "domino-compute/domino-quay-repos"),
    ("domino", "secrets", "get", "domino-compute/domino-quay-repos"),
    ("fanout", "secrets", "create", "team-a/registry-pull"),
])
def test_without_a_rendered_rule_the_sync_fails_cleanly(
        chart_world: dict[str, Any], mode: str, resource: str, verb: str, secret: str) -> None:
    world, login = chart_world["world"], chart_world["login"]
    objects = template(mode)
    rules = []
    for rule in chart_rules(objects):
        if rule["resources"] == [resource] and verb in rule["verbs"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        rules.append(rule)
    assert granted_rules(rules) < granted_rules(chart_rules(objects))
    world.kube.set_rules(SYNCER_TOKEN, rules)
    before = world.kube.get_secret("domino-compute", "domino-quay-repos")
    result = world.run(replay_config(world, objects, login))
    assert result.code == 1, result.out + result.err
    assert f"target {secret}: failed" in result.out, result.out
    assert "forbidden" in result.out
    assert "Traceback" not in result.out + result.err
    assert world.kube.get_secret("domino-compute", "domino-quay-repos") == before


# ------------------------------------------------------------------------------ CronJob replay


def cronjob_config(world: World, objects: list[dict[str, Any]], login: dict[str, Any]) -> Path:
    """The CronJob's config.toml as the chart renders it, every section and target kept, with the
    test's servers standing in: Vault (token auth for the projected token), the API server (a
    kubeconfig with the syncer's token), the registries' CA, and the htpasswd registry for nvcr.io."""
    data = tomllib.loads(config_text(objects))
    assert "leader_election" not in data and "metrics" not in data, "a --once run has neither"
    (ngc,) = data["registries"]
    assert ngc["host"] == "nvcr.io"
    ngc.update(host=login["host"], path=world.path(login["path"]))
    data["vault"].update(address=world.bao.address, timeout="5s")
    data["vault"]["auth"] = {"method": "token", "token_file": str(world.token_file)}
    data["kubernetes"].update(kubeconfig=world.kubeconfig, timeout="5s")
    data["probe"].update(ca_cert=world.ca_file, timeout="5s", retries=0)
    return write_config(world, data)


def run_cronjob(world: World, objects: list[dict[str, Any]], config: Path) -> Result:
    """The CronJob's container as the kubelet starts it: the image's entrypoint (`syncer`) with
    the rendered args and environment, the mounted config file standing at ``config``."""
    workload = one(objects, "CronJob")
    c, env = container(workload), env_of(workload)
    assert "command" not in c, "the image's ENTRYPOINT (syncer) runs"
    mounted = env["SYNCER_CONFIG"]
    argv = [str(config) if arg == mounted else arg for arg in c["args"]]
    assert argv != c["args"] and "--once" in argv
    return world.run_argv(argv, env={**env, "SYNCER_CONFIG": str(config)})


def test_cronjob_rbac_is_enough_for_its_real_run(chart_world: dict[str, Any]) -> None:
    """The CronJob mode's RBAC alone (no Lease rules) lets its container's command create and fill
    the example target; every request is allowed."""
    world, login = chart_world["world"], chart_world["login"]
    world.kube.add_namespace("apps")
    objects = template("cronjob")
    rules = chart_rules(objects)
    assert not [r for r in rules if "leases" in r["resources"]]
    world.kube.set_rules(SYNCER_TOKEN, rules)
    world.kube.reset_requests()
    result = run_cronjob(world, objects, cronjob_config(world, objects, login))
    assert result.code == 0, result.out + result.err
    assert denied(world) == []
    assert world.secret_doc("apps", "registry-pull")["auths"][login["host"]]["password"] == login["_key"]


@pytest.mark.parametrize(("resource", "verb"), [
    ("secrets", "create"), ("secrets", "get"), ("events", "create"), (None, None)])
def test_cronjob_without_its_rules_fails_cleanly(chart_world: dict[str, Any], resource: str | None,
                                                 verb: str | None) -> None:
    """One rendered verb fewer (or no RBAC at all): exit 1 naming the target or the Events, no
    traceback, and no secret written."""
    world, login = chart_world["world"], chart_world["login"]
    world.kube.add_namespace("apps")
    objects = template("cronjob")
    rules = [] if resource is None else [
        {**r, "verbs": [v for v in r["verbs"] if v != verb]} if r["resources"] == [resource] else r
        for r in chart_rules(objects)]
    assert granted_rules(rules) < granted_rules(chart_rules(objects))
    world.kube.set_rules(SYNCER_TOKEN, rules)
    result = run_cronjob(world, objects, cronjob_config(world, objects, login))
    assert "Traceback" not in result.out + result.err
    if resource == "events":  # Events are best effort: the sync succeeds and says the Event failed
        output = result.out + result.err
        assert result.code == 0 and "forbidden" in output.lower(), output
        assert world.secret_doc("apps", "registry-pull")["auths"][login["host"]]["password"] == login["_key"]
        return
    assert result.code == 1, result.out + result.err
    assert "target apps/registry-pull: failed" in result.out and "forbidden" in result.out, result.out
    assert world.kube.get_secret("apps", "registry-pull") is None


# ------------------------------------------------------------------ Vault credentials from Secrets


def kubelet_files(objects: list[dict[str, Any]], secrets: dict[str, dict[str, str]], root: Path) -> None:
    """Write what the kubelet mounts for the pod's Secret volumes below ``root`` (keys -> paths,
    defaultMode), failing on a volume whose Secret or key does not exist, as the kubelet does."""
    workload = workload_of(objects)
    mounts = {m["name"]: m for m in container(workload)["volumeMounts"]}
    for volume in pod_spec(workload)["volumes"]:
        if "secret" not in volume:
            continue
        source = volume["secret"]
        data = secrets[source["secretName"]]
        assert mounts[volume["name"]].get("readOnly") is True, volume["name"]
        directory = root / mounts[volume["name"]]["mountPath"].lstrip("/")
        directory.mkdir(parents=True, exist_ok=True)
        for item in source["items"]:
            path = directory / item["path"]
            path.write_text(data[item["key"]])
            path.chmod(item.get("mode", source.get("defaultMode", 0o644)))


def rooted_settings(objects: list[dict[str, Any]], root: Path) -> config_mod.Settings:
    """The chart's settings with every mounted path below ``root``."""
    text = config_text(objects).replace('"/var/run/secrets/', f'"{root}/var/run/secrets/')
    return config_mod.from_mapping(tomllib.loads(text), env_of(workload_of(objects)))


def test_vault_cert_auth_from_an_existing_tls_secret(bao_tls: Any, bao_paths: Any, ca: Any, ca_file: str,
                                                     tmp_path: Path, sources: Any) -> None:
    """method cert: the client cert and key of a kubernetes.io/tls Secret and Vault's CA from
    another Secret, mounted read-only (0400), log in to a real OpenBao's TLS cert auth."""
    client_ca = trustme.CA()
    issued = client_ca.issue_cert("registry-syncer.example.com", common_name="registry-syncer")
    path, mount = bao_paths.kv(), bao_paths.name("cert")
    bao_tls.kv_put(path, {"username": "u", "password": "PASSWORD-SENTINEL-chartcert"})
    bao_tls.enable_cert_auth(mount, client_ca.cert_pem.bytes().decode(), role="syncer",
                             policies=[bao_tls.read_policy([path])])
    objects = template("default", "vaultAuth.method=cert", f"vaultAuth.mount={mount}",
                       "vaultAuth.role=syncer", "vaultAuth.existingSecret.name=vault-client",
                       "vaultCA.secretName=vault-ca", f"config.vault.address={bao_tls.tls_address}")
    validate_objects(objects)
    volumes = {v["name"]: v for v in pod_spec(workload_of(objects))["volumes"]}
    assert "projected" not in volumes["vault-token"], "no ServiceAccount token for Vault"
    assert "VAULT" not in json.dumps(container(workload_of(objects))["env"])
    kubelet_files(objects, {
        "vault-client": {"tls.crt": issued.cert_chain_pems[0].bytes().decode(),
                         "tls.key": issued.private_key_pem.bytes().decode()},
        "vault-ca": {"ca.crt": Path(ca_file).read_text()}}, tmp_path)
    key = tmp_path / "var/run/secrets/vault/client.key"
    assert key.stat().st_mode & 0o777 == 0o400
    settings = rooted_settings(objects, tmp_path)
    assert (settings.vault.auth.method, settings.vault.auth.role) == ("cert", "syncer")
    assert settings.vault.ca_cert == f"{tmp_path}/var/run/secrets/vault-ca/ca.crt"
    assert sources(settings.vault).read(reg(path)).credential.password == "PASSWORD-SENTINEL-chartcert"


def test_vault_approle_secret_id_from_an_existing_secret(bao: Any, bao_paths: Any, tmp_path: Path,
                                                         sources: Any) -> None:
    """method approle: roleId as a value, the secret ID from a Secret file, a real AppRole login."""
    path = bao_paths.kv()
    bao.kv_put(path, {"username": "u", "password": "PASSWORD-SENTINEL-chartapprole"})
    mount = bao_paths.name("approle")
    role_id, secret_id = bao.enable_approle(mount, policies=[bao.read_policy([path])])
    objects = template("default", "vaultAuth.method=approle", f"vaultAuth.mount={mount}",
                       f"vaultAuth.roleId={role_id}", "vaultAuth.existingSecret.name=vault-approle",
                       "vaultAuth.existingSecret.key=secret-id", f"config.vault.address={bao.address}")
    validate_objects(objects)
    assert secret_id not in json.dumps(objects), "the secret ID is never in a rendered object"
    kubelet_files(objects, {"vault-approle": {"secret-id": secret_id}}, tmp_path)
    settings = rooted_settings(objects, tmp_path)
    assert settings.vault.auth.role_id == role_id
    assert sources(settings.vault).read(reg(path)).credential.password == "PASSWORD-SENTINEL-chartapprole"


@pytest.mark.parametrize(("sets", "problem"), [
    (("vaultAuth.method=cert",), "vaultAuth.existingSecret.name is required for method cert"),
    (("vaultAuth.method=approle", "vaultAuth.existingSecret.name=s"), "vaultAuth.roleId is required"),
    (("vaultCA.secretName=a", "vaultCA.configMapName=b"), "set secretName or configMapName, not both"),
    (("vaultAuth.method=ldap",), "vaultAuth.method"),
])
def test_incomplete_vault_auth_values_are_refused(sets: tuple[str, ...], problem: str) -> None:
    argv = ["template", RELEASE, str(CHART)]
    for item in sets:
        argv += ["--set", item]
    out = helm(*argv)
    assert out.returncode != 0 and problem in out.stderr, out.stderr


def test_chart_names_are_dns_labels() -> None:
    for obj in template("fanout"):
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", obj["metadata"]["name"]), obj["metadata"]


# ------------------------------------------------------------------------------ manifests


@functools.cache
def render_manifests() -> Any:
    """scripts/render_manifests.py as a module (scripts/ is not a package)."""
    sys.path.insert(0, str(DEPLOY.parent / "scripts"))
    try:
        import render_manifests as rm
    finally:
        sys.path.pop(0)
    return rm


def test_kustomize_files_are_the_charts_rendering() -> None:
    """One source of truth: deploy/'s generated kustomize files are what the chart renders now
    (a chart change without `make manifests` fails here)."""
    script = [sys.executable, str(DEPLOY.parent / "scripts" / "render_manifests.py"), "--check"]
    out = subprocess.run(script, capture_output=True, text=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-4000:]
    rm = render_manifests()
    for dest in rm.LAYOUT:
        assert (DEPLOY.parent / dest).read_text().startswith("# Generated by `make manifests`"), dest


def test_check_names_the_drifted_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A hand edit of a generated file (one more verb) and a deleted one are both reported."""
    rm = render_manifests()
    shutil.copytree(DEPLOY, tmp_path / "deploy", symlinks=True)
    monkeypatch.setattr(rm, "ROOT", tmp_path)
    assert rm.main(["--check"]) == 0
    rbac = tmp_path / "deploy" / "base" / "rbac-target.yaml"
    rbac.write_text(rbac.read_text().replace("- patch\n", "- patch\n  - update\n", 1))
    (tmp_path / "deploy" / "overlays" / "domino" / "config.toml").unlink()
    assert rm.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "+  - update" not in err and "-  - update" in err, err
    assert "deploy/base/rbac-target.yaml (on disk)" in err
    assert "deploy/overlays/domino/config.toml (chart)" in err and "make manifests" in err
    assert rm.main([]) == 0 and rm.main(["--check"]) == 0  # `make manifests` repairs both


def test_every_base_object_has_a_file() -> None:
    """A new template (say a ServiceMonitor turned on by default) cannot silently miss the base."""
    rm = render_manifests()
    placed = {obj for rendering, wanted in rm.LAYOUT.values() if rendering == rm.BASE for obj in wanted}
    assert {(o["kind"], o["metadata"]["name"]) for o in rm.render(rm.BASE)} == placed


@pytest.mark.parametrize("name", ["base", "domino", "fanout", "cronjob"])
def test_kustomize_builds_the_charts_objects_and_selector(name: str) -> None:
    """kustomize of the generated base renders the chart's objects: same spec, the chart's
    selector labels (name + instance), no Helm release labels, no config checksum."""
    rm = render_manifests()
    chart = {(o["kind"], o["metadata"]["name"]): rm.for_kustomize(o) for o in template(
        "cronjob" if name == "cronjob" else "default", files=(str(rm.VALUES),))}
    built = render(name)
    pods = [o for o in built if o["kind"] in ("Deployment", "CronJob")]
    for obj in built:
        labels = obj["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels and "app.kubernetes.io/managed-by" not in labels, obj["metadata"]
    for workload in pods:
        template_meta = (workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob"
                         else workload["spec"])["template"]["metadata"]
        assert SELECTOR.items() <= template_meta["labels"].items()
        assert "checksum/config" not in template_meta.get("annotations", {})
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"):
        for obj in (o for o in built if o["kind"] == kind):
            spec = obj["spec"]
            selector = spec.get("selector", spec.get("podSelector"))
            assert selector in (SELECTOR, {"matchLabels": SELECTOR}), (kind, selector)
    if name == "base":
        for obj in built:
            if obj["kind"] in ("Namespace", "ConfigMap"):  # kustomize's own; generator-hashed
                continue
            want = chart[(obj["kind"], obj["metadata"]["name"])]
            if obj["kind"] == "Deployment":
                volumes = obj["spec"]["template"]["spec"]["volumes"]
                config = next(v for v in volumes if v["name"] == "config")["configMap"]
                assert config["name"].startswith(f"{RELEASE}-config-")  # the generator's hash
                config["name"] = f"{RELEASE}-config"
            assert obj == want, obj["kind"]


def test_monitoring_overlay_selects_the_base_service() -> None:
    monitor = one(render("monitoring"), "ServiceMonitor")["spec"]["selector"]["matchLabels"]
    service = one(render("base"), "Service")
    assert monitor == SELECTOR and monitor.items() <= service["metadata"]["labels"].items()


def test_render_manifests_out_writes_your_values_and_checks_them(tmp_path: Path) -> None:
    script = [sys.executable, str(DEPLOY.parent / "scripts" / "render_manifests.py"),
              "--values", MODES["domino"][0]]
    out = tmp_path / "rendered"
    subprocess.run([*script, "--out", str(out)], check=True, capture_output=True, timeout=120)
    assert len(list(out.glob("*.yaml"))) >= 10
    assert (out / "role-domino-compute-registry-credential-syncer-target.yaml").is_file()
    ok = subprocess.run([*script, "--out", str(out), "--check"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    deployment = next(out.glob("deployment-*.yaml"))
    deployment.write_text(deployment.read_text().replace("replicas: 2", "replicas: 5"))
    drifted = subprocess.run([*script, "--out", str(out), "--check"], capture_output=True, text=True,
                             timeout=120)
    assert drifted.returncode == 1 and "replicas: 5" in drifted.stderr and "make manifests" in drifted.stderr


@pytest.mark.parametrize("mode", ["default", "fanout"])
def test_watch_false_drops_the_watch_verbs(mode: str) -> None:
    """``kubernetes.watch: false``: polling only, so no list/watch beyond what list_secrets needs."""
    objects = template(mode, "config.kubernetes.watch=false")
    settings = settings_of(objects)
    assert not settings.kubernetes.watch
    granted = granted_rules(chart_rules(objects))
    assert granted == needed_rules(settings, workload_of(objects)["kind"])
    assert not [g for g in granted if g[3] == "watch"]
