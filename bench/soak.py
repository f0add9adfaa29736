#!/usr/bin/env python3
"""Soak: the daemon for >= 1,000 cycles at a short interval with random faults in ~10 % of requests.

    python bench/soak.py [--cycles 1000] [--interval 50ms] [--fault-rate 0.10] [--max-seconds 300]
                         [--out results/soak.json]
    python bench/soak.py --watch [...]    # the watch soak instead: bench/soak_watch.py

Servers: a real OpenBao dev server and a real TLS + htpasswd ``docker-registry``, each behind a
``FaultProxy`` that gives each new connection a random fault (refuse, RST, response cut
mid-way, and for Vault an HTTP 503) with probability ``--fault-rate``. The probe opens one
registry connection per probe (and never keeps it), so each probe meets the dice. Vault's single
keep-alive connection is cut whenever idle so its requests meet the dice too (a cut that races
with reuse is one more injected reset; ``--drop-idle`` does the same to the registry).
The Kubernetes API test server answers ~``--fault-rate`` of secret requests with 500, 409 (on
PATCH) or a reset. The syncer runs as a child process (``python -m syncer``, AppRole login),
with a rotation every 100 cycles.

Reported: cycles, successes, failures; RSS, open fds and threads of the daemon after warm-up
and at the end (/proc/PID); Vault token accessors (root view) after warm-up and at the end, and
the daemon's own login count. Targets: no crash, RSS growth < 5 % after warm-up, flat fds and
threads, flat tokens (no login per cycle). Exits 1 when a target is missed. See docs/soak.md.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import trustme  # noqa: E402

from syncer.config_parse import parse_duration  # noqa: E402
from tests.support.kubeapi import KubeAPIServer  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.proxy import FaultProxy  # noqa: E402
from tests.support.registry import Registry  # noqa: E402
from tests.support.vault import BaoServer  # noqa: E402
from tests.support.world import metric_value, toml_table  # noqa: E402

NS = "soak"
SA = "soak-syncer-token"
WARMUP = 100


def proc_stats(pid: int) -> dict[str, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(list(Path(f"/proc/{pid}/fd").iterdir()))}


def runs(port: int) -> tuple[int, int]:
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    except requests.RequestException:
        return -1, -1
    ok = metric_value(text, "syncer_sync_runs_total", result="success") or 0
    bad = metric_value(text, "syncer_sync_runs_total", result="failure") or 0
    return int(ok), int(bad)


def chooser(rate: float, modes: list[str]) -> Any:
    def choose() -> str:
        return random.choice(modes) if random.random() < rate else "pass"  # noqa: S311

    return choose


def finish(result: dict[str, Any], checks: dict[str, bool], out: str | None) -> int:
    """Print the result with its checks (and write it to ``out``); 0 when every check holds."""
    result["checks"] = checks
    print(json.dumps(result, indent=2))
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2))
    return 0 if all(checks.values()) else 1


def main() -> int:
    if "--watch" in sys.argv[1:]:
        from bench.soak_watch import main as watch_main

        return watch_main()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=1000)
    parser.add_argument("--interval", default="50ms")
    parser.add_argument("--fault-rate", type=float, default=0.10)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--out", default="")
    parser.add_argument("--drop-idle", action="store_true",
                        help="also cut the registry's idle keep-alive connections (Vault's always are)")
    args = parser.parse_args()
    random.seed(20240601)
    tmp = Path(tempfile.mkdtemp(prefix="soak-"))
    ca = trustme.CA()
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    bao = BaoServer(log_dir=tmp)
    registry = Registry(tmp / "registry", auth="htpasswd", ca=ca, users={"$oauthtoken": "key-0"})
    (tmp / "registry").mkdir()
    registry.start()
    kube = KubeAPIServer(ca)
    kube.add_namespace(NS)
    kube.add_token(SA, user="system:serviceaccount:soak:syncer")
    kube.start()
    vault_proxy = FaultProxy("127.0.0.1", bao.port).start()
    reg_proxy = FaultProxy("127.0.0.1", registry.port).start()
    proc: subprocess.Popen[bytes] | None = None
    stop_dropper = threading.Event()
    try:
        # Vault: AppRole reading one path; the soak counts tokens from the root view.
        bao.kv_put("soak/ngc", {"password": "key-0"})
        bao.write_policy("soak-read", 'path "secret/data/soak/*" { capabilities = ["read"] }')
        role_id, secret_id = bao.enable_approle(mount="soak-approle", policies=["soak-read"],
                                                token_ttl="1h")
        (tmp / "secret-id").write_text(secret_id)
        for name in ("pull-a", "pull-b"):
            kube.put_secret(NS, name, type="kubernetes.io/dockerconfigjson",
                            data={".dockerconfigjson": json.dumps({"auths": {"quay.io": {
                                "username": "q", "password": "keep"}}}).encode()})
        port = free_port()
        interval = args.interval
        text = toml_table("[vault]", {"address": vault_proxy.url, "timeout": "2s"})
        text += toml_table("[vault.auth]", {"method": "approle", "mount": "soak-approle",
                                            "role_id": role_id, "secret_id_file": str(tmp / "secret-id")})
        text += toml_table("[kubernetes]", {"kubeconfig": kube.write_kubeconfig(tmp / "kubeconfig", SA),
                                            "timeout": "2s"})
        text += toml_table("[probe]", {"ca_cert": str(ca_file), "timeout": "2s", "retries": 0})
        text += toml_table("[schedule]", {"interval": interval, "jitter": "0s", "retry_min": interval,
                                          "retry_max": interval})
        text += toml_table("[metrics]", {"listen": f"127.0.0.1:{port}"})
        text += toml_table("[[registries]]", {"host": f"127.0.0.1:{reg_proxy.port}", "path": "soak/ngc",
                                              "username": "$oauthtoken"})
        for name in ("pull-a", "pull-b"):
            text += toml_table("[[targets]]", {"namespace": NS, "name": name})
        config = tmp / "config.toml"
        config.write_text(text)

        # Faults: proxies pick per connection; connections are dropped often; kube per request.
        vault_proxy.chooser = chooser(args.fault_rate, ["refuse", "reset", "cut", "status"])
        reg_proxy.chooser = chooser(args.fault_rate, ["refuse", "reset", "cut"])  # TLS: no plain status
        rnd = random.Random(7)  # noqa: S311 - fault dice, not crypto
        third = args.fault_rate / 3
        kube.add_fault(lambda r: r.resource == "secrets" and rnd.random() < third, status=500, times=None)
        kube.add_fault(lambda r: r.verb == "patch" and rnd.random() < third * 3, status=409,
                       reason="Conflict", times=None)
        kube.add_fault(lambda r: r.resource == "secrets" and rnd.random() < third, reset=True, times=None)
        period = parse_duration(interval) / 2

        def dropper() -> None:
            # Idle keep-alive connections are cut between requests, so most requests open a new
            # connection and meet the dice; a request in flight is never cut by this.
            while not stop_dropper.wait(period):
                vault_proxy.drop_idle(period)
                if args.drop_idle:
                    reg_proxy.drop_idle(period)

        threading.Thread(target=dropper, daemon=True).start()

        log = (tmp / "daemon.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "syncer", "--config", str(config),
                                 "--log-level", "warning"], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, cwd=ROOT)
        started = time.monotonic()
        warm: dict[str, Any] = {}
        rotations = 0
        total = 0
        while time.monotonic() - started < args.max_seconds:
            if proc.poll() is not None:
                break
            ok, bad = runs(port)
            total = ok + bad
            if not warm and total >= WARMUP:
                warm = {**proc_stats(proc.pid), "tokens": bao.count_tokens(), "cycle": total,
                        "t": time.monotonic() - started}
            if total // 100 > rotations:  # rotate the key every 100 cycles: writes keep happening
                rotations = total // 100
                key = f"key-{rotations}"
                registry.set_password("$oauthtoken", key)
                bao.kv_put("soak/ngc", {"password": key})
            if warm and total >= warm["cycle"] + args.cycles:
                break
            time.sleep(0.2)
        elapsed = time.monotonic() - started
        crashed = proc.poll() is not None
        end = {**proc_stats(proc.pid), "tokens": bao.count_tokens()} if not crashed else {}
        ok, bad = runs(port)
        logins = metric_value(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text,
                              "syncer_vault_logins_total") if not crashed else None
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        stop_dropper.set()
        log.close()
        result = {
            "cycles": ok + bad, "successes": ok, "failures": bad, "seconds": round(elapsed, 1),
            "interval": interval, "fault_rate": args.fault_rate,
            "faults_injected": {"vault_connections": vault_proxy.faults,
                                "registry_connections": reg_proxy.faults,
                                "kube_requests": sum(1 for r in kube.requests if r.status in (0, 409, 500)
                                                     and r.resource == "secrets")},
            "requests": {"vault_connections": vault_proxy.connections,
                         "registry_connections": reg_proxy.connections,
                         "kube": len(kube.requests)},
            "warm": warm, "end": end, "exit_code": code, "crashed": crashed, "rotations": rotations,
            "rotations_applied": json.loads(kube.secret_data(NS, "pull-a")[".dockerconfigjson"])[
                "auths"][f"127.0.0.1:{reg_proxy.port}"]["password"] == f"key-{rotations}",
            "vault_logins": logins,
        }
        growth = (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"] if end and warm else None
        result["rss_growth"] = round(growth, 4) if growth is not None else None
        checks = {
            "no crash": not crashed and code == 0,
            f">= {args.cycles} cycles after warm-up": bool(warm) and ok + bad - warm["cycle"] >= args.cycles,
            "RSS growth < 5 %": growth is not None and growth < 0.05,
            "fds flat": bool(end) and end["fds"] <= warm["fds"] + 2,
            "threads flat": bool(end) and end["threads"] <= warm["threads"] + 1,
            "tokens flat": bool(end) and end["tokens"] <= warm["tokens"],
            "one Vault login": logins == 1,
        }
        return finish(result, checks, args.out)
    finally:
        stop_dropper.set()
        if proc is not None and proc.poll() is None:
            proc.kill()
        vault_proxy.stop()
        reg_proxy.stop()
        kube.stop()
        registry.stop()
        bao.stop()


if __name__ == "__main__":
    sys.exit(main())
