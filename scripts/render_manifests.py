"""Render the Helm chart into deploy/'s kustomize files (one source of truth), or check them.

    python scripts/render_manifests.py                   # `make manifests`: rewrite deploy/'s files
    python scripts/render_manifests.py --check           # exit 1 with a diff if one drifted
    python scripts/render_manifests.py --values V --out DIR [--check]   # your values, one file per object

The kustomize base, the CronJob component, the ServiceMonitor and the Domino and fan-out overlays'
config and RBAC are all ``helm template`` output (LAYOUT says which object goes where), so the
chart is the only hand-kept copy of the manifests. kustomization.yaml files, the Namespace and
the monitoring overlay's alerts (which the chart reads through a symlink) stay hand-written.
"""

from __future__ import annotations

import argparse
import difflib
import functools
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "deploy" / "chart" / "registry-credential-syncer"
VALUES = ROOT / "deploy" / "chart" / "base-values.yaml"
RELEASE, NAMESPACE = "registry-credential-syncer", "registry-syncer"
#: Labels that only make sense on a Helm release: kustomize output is not managed by Helm.
HELM_ONLY_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")
#: The chart rolls pods by this annotation; kustomize's configMapGenerator hash does it instead
#: (and an overlay that replaces config.toml would leave the annotation stale).
CHECKSUM = "checksum/config"
CONFIG = ("ConfigMap", f"{RELEASE}-config")  # written as its config.toml, for configMapGenerator


@dataclass(frozen=True)
class Rendering:
    """One ``helm template`` of the chart: values files (relative to the repo) and --set pairs."""

    values: tuple[str, ...]
    sets: tuple[str, ...] = ()

    def describe(self) -> str:
        return " ".join([*(f"-f {v}" for v in self.values), *(f"--set {s}" for s in self.sets)])


BASE = Rendering(("deploy/chart/base-values.yaml",))
DOMINO = Rendering(("deploy/chart/registry-credential-syncer/examples/domino.yaml",))
FANOUT = Rendering(("deploy/chart/registry-credential-syncer/examples/fanout.yaml",))


def bound(kind: str, suffix: str) -> tuple[tuple[str, str], tuple[str, str]]:
    """A Role (or ClusterRole) and its binding, named <release>-<suffix>."""
    return (kind, f"{RELEASE}-{suffix}"), (f"{kind}Binding", f"{RELEASE}-{suffix}")


#: deploy/ file -> (the rendering, the objects in it, as (kind, name); CONFIG = its config.toml).
LAYOUT: dict[str, tuple[Rendering, tuple[tuple[str, str], ...]]] = {
    "deploy/base/config.toml": (BASE, (CONFIG,)),
    "deploy/base/serviceaccount.yaml": (BASE, (("ServiceAccount", RELEASE),)),
    "deploy/base/rbac-leader-election.yaml": (BASE, bound("Role", "leader-election")),
    "deploy/base/rbac-target.yaml": (BASE, bound("Role", "target")),
    "deploy/base/deployment.yaml": (BASE, (("Deployment", RELEASE),)),
    "deploy/base/pdb.yaml": (BASE, (("PodDisruptionBudget", RELEASE),)),
    "deploy/base/service.yaml": (BASE, (("Service", RELEASE),)),
    "deploy/base/networkpolicy.yaml": (BASE, (("NetworkPolicy", RELEASE),)),
    "deploy/components/cronjob/cronjob.yaml": (
        Rendering(BASE.values, ("mode=cronjob",)), (("CronJob", RELEASE),)),
    "deploy/overlays/monitoring/servicemonitor.yaml": (
        Rendering(BASE.values, ("metrics.serviceMonitor.enabled=true",)), (("ServiceMonitor", RELEASE),)),
    "deploy/overlays/domino/config.toml": (DOMINO, (CONFIG,)),
    "deploy/overlays/domino/rbac-target.yaml": (DOMINO, bound("Role", "target")),
    "deploy/overlays/fanout/config.toml": (FANOUT, (CONFIG,)),
    "deploy/overlays/fanout/rbac-fanout.yaml": (FANOUT, bound("ClusterRole", "fanout")),
}


def helm_binary() -> str:
    found = shutil.which("helm", path=str(Path(sys.executable).parent)) or shutil.which("helm")
    if not found:
        raise SystemExit("helm not found: run `make helm`")
    return found


@functools.cache
def _helm_template(values: tuple[str, ...], sets: tuple[str, ...]) -> str:
    argv = [helm_binary(), "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    for v in values:
        argv += ["-f", str(ROOT / v)]
    for s in sets:
        argv += ["--set", s]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    if out.returncode != 0:
        raise SystemExit(f"helm template failed:\n{out.stderr}")
    return out.stdout


def render(rendering: Rendering = BASE) -> list[dict[str, Any]]:
    """The chart's objects, as helm renders them for a release (a fresh copy)."""
    text = _helm_template(rendering.values, rendering.sets)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def for_kustomize(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without Helm's release bookkeeping: its labels and the config checksum."""

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            meta = node.get("metadata")
            if isinstance(meta, dict):
                for key in HELM_ONLY_LABELS:
                    meta.get("labels", {}).pop(key, None)
                annotations = meta.get("annotations") or {}
                annotations.pop(CHECKSUM, None)
                if "annotations" in meta and not annotations:
                    del meta["annotations"]
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    visit(obj)
    return obj


def header(rendering: Rendering, comment: str = "#") -> str:
    return (f"{comment} Generated by `make manifests` (scripts/render_manifests.py) from deploy/chart:\n"
            f"{comment}   helm template {RELEASE} deploy/chart/registry-credential-syncer -n {NAMESPACE} "
            f"{rendering.describe()}\n"
            f"{comment} Do not edit: change the chart or those values, then run `make manifests`.\n"
            f"{comment} Why each field is what it is: the comments in the chart's templates/.\n")


def pick(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    if len(found) != 1:
        raise SystemExit(f"the chart rendered {len(found)} {kind} {name}, LAYOUT expects one")
    return found[0]


def layout_files() -> dict[Path, str]:
    """Every file LAYOUT names, with its text as the chart renders it now."""
    files: dict[Path, str] = {}
    for dest, (rendering, wanted) in LAYOUT.items():
        objects = render(rendering)
        if wanted == (CONFIG,):
            toml = pick(objects, *CONFIG)["data"]["config.toml"]
            files[ROOT / dest] = header(rendering) + toml
        else:
            docs = [for_kustomize(pick(objects, kind, name)) for kind, name in wanted]
            files[ROOT / dest] = header(rendering) + "---\n".join(
                yaml.safe_dump(d, sort_keys=False, width=100) for d in docs)
    unplaced = {(o["kind"], o["metadata"]["name"]) for o in render(BASE)} - {
        obj for rendering, wanted in LAYOUT.values() if rendering == BASE for obj in wanted}
    if unplaced:  # a new template must get a file (or a decision) before the base can lose it
        raise SystemExit(f"objects of the base rendering that LAYOUT places nowhere: {sorted(unplaced)}")
    return files


def flat_files(out: Path, values: Path) -> dict[Path, str]:
    """One file per object of a rendering with your values (for review or plain kubectl apply)."""
    rendering = Rendering((str(values.resolve()),))
    files = {}
    for obj in render(rendering):
        meta = obj["metadata"]
        name = f"{obj['kind'].lower()}-{meta.get('namespace', 'cluster')}-{meta['name']}.yaml"
        files[out / name] = header(rendering) + yaml.safe_dump(obj, sort_keys=False, width=100)
    return files


def drift(files: dict[Path, str], stale: list[Path]) -> list[str]:
    """Unified diffs between the files on disk and a fresh rendering (empty when they agree)."""
    diffs = []
    for path in sorted({*files, *stale}):
        have = path.read_text() if path.is_file() else ""
        want = files.get(path, "")
        if have != want:
            rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
            diffs.append("".join(difflib.unified_diff(have.splitlines(True), want.splitlines(True),
                                                      f"{rel} (on disk)", f"{rel} (chart)")))
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the files differ from the chart")
    parser.add_argument("--out", type=Path, help="write one file per object here instead of deploy/")
    parser.add_argument("--values", type=Path, default=VALUES, help="values file for --out")
    args = parser.parse_args(argv)
    if args.out is None:
        files, stale = layout_files(), []
    else:
        files = flat_files(args.out, args.values)
        stale = sorted(args.out.glob("*.yaml")) if args.out.is_dir() else []
    if args.check:
        diffs = drift(files, stale)
        if diffs:
            print("".join(diffs), "drifted from the chart: run `make manifests`", sep="\n", file=sys.stderr)
            return 1
        return 0
    for path in stale:
        path.unlink()
    for path, text in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    print(f"{len(files)} files written from the chart")
    return 0


if __name__ == "__main__":
    sys.exit(main())
