"""`make demo`: one credential rotation end to end, on this machine, in about ten seconds.

Starts an OpenBao dev server, a TLS distribution registry with htpasswd auth and
the project's Kubernetes API test server, creates Domino's `domino-quay-repos` secret with a
`quay.io` entry, and runs the real `syncer --once` CLI four times:

1. first merge: the NGC-style entry is added, quay.io and unknown keys are kept;
2. steady state: nothing changed, nothing written;
3. a rotation to a password the registry does not accept yet: rejected, not written;
4. the registry accepts the new password: the rotation is applied.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import trustme

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.kubeapi import KubeAPIServer  # noqa: E402
from tests.support.registry import Registry  # noqa: E402
from tests.support.vault import BaoServer  # noqa: E402

NS, NAME, USER = "domino-compute", "domino-quay-repos", "$oauthtoken"


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def masked(doc: dict[str, Any]) -> str:
    """The decoded secret with every password and auth value masked (it is a demo, not a leak)."""
    shown = json.loads(json.dumps(doc))
    for entry in shown.get("auths", {}).values():
        for key in ("password", "auth"):
            if key in entry:
                entry[key] = "••••"
    return json.dumps(shown, indent=2, ensure_ascii=False)


def syncer(config: Path) -> int:
    cmd = [sys.executable, "-m", "syncer", "--config", str(config), "--once"]
    print("$ syncer --config", config.name, "--once", flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=False, env={"PATH": os.environ.get("PATH", "")}).returncode


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="syncer-demo-"))
    ca = trustme.CA()
    ca_file = work / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    old_key, new_key = secrets.token_urlsafe(16), secrets.token_urlsafe(16)

    step("starting OpenBao, a TLS registry and the Kubernetes API test server")
    bao = BaoServer(log_dir=work)
    registry = Registry(work, auth="htpasswd", ca=ca, users={USER: old_key}).start()
    kube = KubeAPIServer(ca)
    kube.add_token("demo-token", user="system:serviceaccount:syncer:syncer")
    kube.add_namespace(NS)
    kube.start()
    try:
        kubeconfig = kube.write_kubeconfig(str(work / "kubeconfig"), "demo-token")
        kube.put_secret(NS, NAME, type="kubernetes.io/dockerconfigjson", data={
            ".dockerconfigjson": json.dumps({"auths": {"quay.io": {
                "username": "myorg+builder", "password": "quay-robot-token", "email": "."}}}).encode()})
        bao.kv_put("registries/ngc", {"password": old_key})
        (work / "vault-token").write_text(bao.root_token)
        config = work / "config.toml"
        config.write_text(f"""
[vault]
address = "{bao.address}"
[vault.auth]
method = "token"
token_file = "{work / 'vault-token'}"
[kubernetes]
kubeconfig = "{kubeconfig}"
[probe]
ca_cert = "{ca_file}"
retries = 0
[[registries]]
host = "{registry.host}"
path = "registries/ngc"
username = "{USER}"
[[targets]]
namespace = "{NS}"
name = "{NAME}"
""")
        print(f"registry {registry.host} (stands in for nvcr.io), Vault {bao.address}, config {config}")

        def show() -> None:
            raw = kube.get_secret(NS, NAME)["data"][".dockerconfigjson"]
            print(f"secret {NS}/{NAME} now holds:\n{masked(json.loads(base64.b64decode(raw)))}")

        step("1. first merge: add the registry, keep quay.io")
        syncer(config)
        show()
        step("2. steady state: nothing changed, so nothing is written")
        kube.reset_requests()
        syncer(config)
        print(f"writes to the API server: {kube.writes()}")
        step("3. Vault gets a new key the registry does not accept yet: rejected, old entry kept")
        bao.kv_put("registries/ngc", {"password": new_key})
        code = syncer(config)
        print(f"exit code {code}; writes: {kube.writes()}")
        step("4. the registry accepts the new key: the rotation is applied")
        registry.set_password(USER, new_key)
        code = syncer(config)
        print(f"exit code {code}; writes: {kube.writes()}")
        show()
        return 0
    finally:
        kube.stop()
        registry.stop()
        bao.stop()


if __name__ == "__main__":
    sys.exit(main())
