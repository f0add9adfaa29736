"""A real Prometheus server (Debian's ``prometheus`` 2.42) scraping test targets.

Started on a free port with its own TSDB directory and a fast scrape interval; queried through
its HTTP API (``/api/v1/query``) like Grafana and the rule evaluator do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from tests.support.net import free_port

BINARY = "/usr/bin/prometheus"


def prometheus_binary() -> str:
    """The binary; missing fails under CI (CI=true) and skips elsewhere, with the fix named."""
    path = BINARY if os.access(BINARY, os.X_OK) else shutil.which("prometheus")
    if path:
        return path
    why = (f"{BINARY} not found: `make system-deps` installs Debian's prometheus package "
           "(apt-get install --no-install-recommends prometheus)")
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)


class PrometheusServer:
    """One Prometheus process; ``scrape_configs`` and ``rule_files`` as in prometheus.yml."""

    def __init__(self, workdir: Path, scrape_configs: list[dict[str, Any]],
                 rule_files: tuple[str, ...] = (), interval: str = "1s") -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {"global": {"scrape_interval": interval, "evaluation_interval": interval},
                  "scrape_configs": scrape_configs, "rule_files": list(rule_files)}
        self.config = workdir / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.log = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> PrometheusServer:
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                [prometheus_binary(), f"--config.file={self.config}",
                 f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"prometheus exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if requests.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"prometheus not ready after {timeout}s:\n{self.log_text()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def api(self, path: str, **params: str) -> Any:
        """``GET /api/v1/<path>``: the ``data`` of a success, else an AssertionError with the error."""
        resp = requests.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = resp.json()
        error = f"{body.get('errorType')}: {body.get('error')}"
        assert body.get("status") == "success", f"{path} {params}: {error}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query; the result as a list of ``{"metric": {...}, "value": [t, v]}``."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", f"{expr}: {data['resultType']} is not a vector"
        result: list[dict[str, Any]] = data["result"]
        return result

    def wait_for(self, expr: str, timeout: float = 20.0, what: str = "") -> list[dict[str, Any]]:
        """Poll an instant query until it returns at least one series."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = self.query(expr)
            if result:
                return result
            time.sleep(0.2)
        log = self.log_text()[-2000:]
        raise AssertionError(f"timed out waiting for {what or expr}; prometheus log:\n{log}")

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
