"""A whole test world: OpenBao + a TLS registry + the Kubernetes API test server, wired to the CLI.

``World.run()`` runs ``syncer`` in-process exactly as a user would (argv, env),
captures stdout/stderr, and checks every captured byte for secret material
before returning it, so every end-to-end test is also a leak test.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import logging
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from syncer.cli import main

SYNCER_TOKEN = "syncer-sa-token"  # noqa: S105 - kube bearer token for the syncer in tests
DOCKERCONFIG = "kubernetes.io/dockerconfigjson"


def sentinel(label: str = "pw") -> str:
    """A password that is easy to search for and never collides."""
    return f"SENTINEL-{label}-{uuid.uuid4().hex[:12]}:x$+"


def toml_value(value: Any) -> str:
    """Enough TOML for our configs (strings, bools, numbers, lists)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return str(value)


def toml_table(header: str, values: dict[str, Any]) -> str:
    lines = [header] + [f"{k} = {toml_value(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


@dataclass
class Result:
    """What one CLI run produced."""

    code: int
    out: str
    err: str


@dataclass
class World:
    """Servers plus the files that point the syncer at them."""

    tmp: Path
    bao: Any
    kube: Any
    ca_file: str
    prefix: str = field(default_factory=lambda: f"t{uuid.uuid4().hex[:8]}")
    secrets: set[str] = field(default_factory=set)
    outputs: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.token_file = self.tmp / "vault-token"
        self.token_file.write_text(self.bao.root_token)
        self.token_file.chmod(0o600)  # as an operator keeps it: `syncer check` warns otherwise
        self.kubeconfig = self.kube.write_kubeconfig(str(self.tmp / "kubeconfig"), SYNCER_TOKEN)
        self.kube.add_token(SYNCER_TOKEN, user="system:serviceaccount:syncer:syncer")
        self.secrets.add(self.bao.root_token)

    # -------------------------------------------------------------- vault + kube helpers

    def path(self, name: str) -> str:
        """A KV path unique to this test."""
        return f"{self.prefix}/{name}"

    def vault_put(self, name: str, **data: Any) -> None:
        for value in data.values():
            if isinstance(value, str) and "SENTINEL" in value:
                self.secrets.add(value)
        self.bao.kv_put(self.path(name), data)

    def secret_doc(self, namespace: str, name: str) -> dict[str, Any]:
        obj = self.kube.get_secret(namespace, name)
        assert obj is not None, f"secret {namespace}/{name} missing"
        return json.loads(base64.b64decode(obj["data"][".dockerconfigjson"]))

    def put_dockerconfig(self, namespace: str, name: str, doc: Any, **kw: Any) -> dict[str, Any]:
        raw = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        return self.kube.put_secret(namespace, name, type=kw.pop("type", DOCKERCONFIG),
                                    data={".dockerconfigjson": raw}, **kw)

    # -------------------------------------------------------------- config + run

    def config(self, registries: list[dict[str, Any]], targets: list[dict[str, Any]],
               **sections: dict[str, Any]) -> Path:
        vault = {"address": self.bao.address, "kv_mount": "secret", "kv_version": 2, "timeout": "5s"}
        vault.update(sections.pop("vault", {}))
        auth = {"method": "token", "token_file": str(self.token_file)}
        auth.update(sections.pop("auth", {}))
        probe = {"ca_cert": self.ca_file, "timeout": "5s", "retries": 0}
        probe.update(sections.pop("probe", {}))
        kubernetes = {"kubeconfig": self.kubeconfig, "timeout": "5s"}
        kubernetes.update(sections.pop("kubernetes", {}))
        text = toml_table("[vault]", vault) + toml_table("[vault.auth]", auth)
        text += toml_table("[kubernetes]", kubernetes) + toml_table("[probe]", probe)
        for name, values in sections.items():
            text += toml_table(f"[{name}]", values)
        for reg in registries:
            reg = {**reg, "path": self.path(reg["path"])} if "path" in reg else reg
            text += toml_table("[[registries]]", reg)
        for target in targets:
            text += toml_table("[[targets]]", target)
        path = self.tmp / f"config-{uuid.uuid4().hex[:6]}.toml"
        path.write_text(text)
        return path

    def run(self, config: Path, *args: str, env: dict[str, str] | None = None) -> Result:
        return self.run_argv(["--config", str(config), "--once", *args], env=env)

    def run_argv(self, argv: list[str], env: dict[str, str] | None = None) -> Result:
        """``syncer ARGV`` in-process, e.g. a rendered container's args."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(argv, env=env or {})
        logging.getLogger().handlers.clear()
        result = Result(code, out.getvalue(), err.getvalue())
        self.outputs += [result.out, result.err]
        self.assert_no_leak(result.out + result.err, "CLI output")
        return result

    # -------------------------------------------------------------- hygiene

    def forbidden_strings(self) -> set[str]:
        """Sentinel passwords, their base64 ``user:pass`` forms, and tokens."""
        found = set(self.secrets)
        for secret in self.secrets:
            for user in ("$oauthtoken", "robot$ci", "ns+bot", "syncer", "user"):
                found.add(base64.b64encode(f"{user}:{secret}".encode()).decode())
        return {s for s in found if len(s) >= 6}

    def assert_no_leak(self, text: str, where: str) -> None:
        for secret in self.forbidden_strings():
            # Never print the secret itself in the failure message.
            assert secret not in text, f"secret material leaked into {where} (len {len(secret)})"


class DaemonProcess:
    """``python -m syncer`` as a real child process, with its output kept for leak checks."""

    def __init__(self, world: World, config: Path, port: int, *args: str) -> None:
        import subprocess
        import sys

        self.world = world
        self.port = port
        self.log_path = world.tmp / f"daemon-{port}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "syncer", "--config", str(config), *args],
                                     stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"},
                                     cwd=Path(__file__).parent.parent.parent)

    def get(self, path: str) -> tuple[int, str]:
        import requests

        try:
            resp = requests.get(f"http://127.0.0.1:{self.port}{path}", timeout=2)
        except requests.ConnectionError:
            return 0, ""
        return resp.status_code, resp.text

    def wait_for(self, predicate: Any, timeout: float = 15.0, what: str = "condition") -> None:
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode}:\n{self.output()}")
            if predicate():
                return
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; daemon output:\n{self.output()[-3000:]}")

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 10.0) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        self._log.close()
        self.world.assert_no_leak(self.output(), "daemon output")
        return self.proc.returncode


def metric_value(text: str, metric: str, /, **labels: str) -> float | None:
    """The value of one sample in a Prometheus text exposition, or None if absent."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == metric and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None
