#!/usr/bin/env python3
"""Watch soak (issue #14): the daemon with ``[kubernetes] watch = true`` while the API server
drops, ends and compacts its watches at random and "others" delete and edit its secrets.

    python bench/soak_watch.py [--rounds 60] [--max-seconds 300] [--out results/soak-watch.json]
    python bench/soak.py --watch ...            # the same

Servers: a real OpenBao dev server, ``--registries`` real TLS + htpasswd ``docker-registry``
processes, and the Kubernetes API test server (in this process, so its watch hooks take
predicates). The daemon (``python -m syncer``, a child process) has a 1 h cycle: after its first
cycle only the watches and the Vault poll (1 s) act, so whatever it repairs, the watches saw.

Each round picks a few distinct targets and, in random order and between random watch faults
(``drop`` mid-stream, ``end`` as at timeoutSeconds, ``compact`` then ``drop`` so the resume meets
410 Expired and relists, ``bookmark``), either deletes a secret, rewrites a managed entry, or adds
an unmanaged entry (which needs no write). Every fifth round instead rotates one registry's
password in the registry and in Vault. Then it waits until every target is right and the writes
have stopped, and counts the round's writes. Checked:

* nothing lost: every managed entry holds Vault's login, and every unmanaged entry that was
  added (and not deleted with its secret) is still there;
* no duplicate writes: per round, secret writes = targets that needed one (a deleted or edited
  target: 1; an unmanaged edit: 0; a rotation: every target);
* flat: RSS within 5 % from the end of warm-up (round 5) to the end, fds and threads flat.
Exits 1 when a check fails. See docs/soak.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import trustme  # noqa: E402

from bench.soak import finish  # noqa: E402
from tests.support.kubeapi import KubeAPIServer  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.scale import USER, Login, registries, rotate  # noqa: E402
from tests.support.vault import BaoServer  # noqa: E402
from tests.support.world import World, metric_value, sentinel  # noqa: E402

FIXED_NS, FIXED = "soak", ("pull-a", "pull-b")
FANOUT, SELECTOR = "registry-pull", "soak=yes"
WARMUP = 5
UNMANAGED = "quay.io"
"""The entry someone else keeps in the fixed secrets from the start."""


def proc_stats(pid: int) -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                  if ":" in line)
    return {"rss_kib": int(fields["VmRSS"].split()[0]), "threads": int(fields["Threads"]),
            "fds": len(os.listdir(f"/proc/{pid}/fd"))}


def decode(secret: dict[str, Any] | None) -> dict[str, Any] | None:
    if secret is None:
        return None
    return json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))  # type: ignore[no-any-return]


class Soak:
    def __init__(self, tmp: Path, kube: KubeAPIServer, world: World, logins: list[Login],
                 namespaces: list[str], seed: int) -> None:
        self.tmp, self.kube, self.world, self.logins = tmp, kube, world, logins
        self.targets = [(FIXED_NS, n) for n in FIXED] + [(ns, FANOUT) for ns in namespaces]
        #: unmanaged entries each target must still hold (someone else's)
        self.unmanaged: dict[tuple[str, str], set[str]] = {t: set() for t in self.targets}
        for t in self.targets[:len(FIXED)]:
            self.unmanaged[t].add(UNMANAGED)
        self.rnd = random.Random(seed)  # noqa: S311 - chaos dice, not crypto
        self.faults: dict[str, int] = {"drop": 0, "end": 0, "compact": 0, "bookmark": 0}
        self.actions: dict[str, int] = {"delete": 0, "edit_managed": 0, "edit_unmanaged": 0, "rotate": 0}

    # ---- what "right" means -------------------------------------------------------------------

    def wrong(self) -> list[str]:
        """Targets that are not right yet (missing, a managed entry off, an unmanaged one gone)."""
        bad = []
        for ns, name in self.targets:
            doc = decode(self.kube.get_secret(ns, name))
            if doc is None:
                bad.append(f"{ns}/{name}: missing")
                continue
            auths = doc.get("auths", {})
            for login in self.logins:
                entry = auths.get(login.host) or {}
                if (entry.get("username"), entry.get("password")) != (USER, login.password):
                    bad.append(f"{ns}/{name}: {login.host} not Vault's")
            bad += [f"{ns}/{name}: unmanaged {h} lost" for h in self.unmanaged[(ns, name)] if h not in auths]
        return bad

    def settle(self, limit: float = 60.0) -> tuple[float, list[str]]:
        """Wait until every target is right and no write came for 1.5 s."""
        started = time.monotonic()
        while time.monotonic() - started < limit:
            if not self.wrong():
                writes = self.kube.writes("secrets")
                time.sleep(1.5)
                if self.kube.writes("secrets") == writes and not self.wrong():
                    return time.monotonic() - started, []
            time.sleep(0.1)
        return time.monotonic() - started, self.wrong()

    # ---- chaos --------------------------------------------------------------------------------

    def fault(self) -> None:
        kind = self.rnd.choice(list(self.faults))
        coin = self.rnd.random

        def some(_: Any) -> bool:
            return coin() < 0.6

        if kind == "drop":
            self.kube.watches.drop(some)
        elif kind == "end":
            self.kube.watches.end(some)
        elif kind == "compact":
            self.kube.compact()
            self.kube.watches.drop(some)
        else:
            self.kube.watches.bookmark()
        self.faults[kind] += 1

    def mutate(self, target: tuple[str, str]) -> int:
        """One change by someone else; returns the writes it needs (1 or 0)."""
        ns, name = target
        secret = self.kube.get_secret(ns, name)
        action = self.rnd.choice(["delete", "edit_managed", "edit_unmanaged"])
        self.actions[action] += 1
        if action == "delete" or secret is None:
            self.kube.delete_secret(ns, name)
            self.unmanaged[target] = set()
            return 1
        doc = decode(secret) or {}
        if action == "edit_managed":
            host = self.rnd.choice(self.logins).host
            doc["auths"][host] = {"username": USER, "password": "changed-by-someone-else"}
        else:
            host = f"other-{self.rnd.randrange(1000)}.example"
            doc["auths"][host] = {"username": "someone", "password": "theirs"}
            self.unmanaged[target].add(host)
        secret["data"][".dockerconfigjson"] = base64.b64encode(json.dumps(doc).encode()).decode()
        self.kube.put_object("secrets", ns, secret)  # keeps the syncer's annotations
        return 1 if action == "edit_managed" else 0

    def round(self, number: int) -> dict[str, Any]:
        before = self.kube.writes("secrets")
        if number % 5 == 4:
            login = self.rnd.choice(self.logins)
            self.fault()
            rotate(login, sentinel("soak"), self.world.vault_put)
            self.actions["rotate"] += 1
            needed = len(self.targets)
        else:
            needed = 0
            for target in self.rnd.sample(self.targets, self.rnd.randint(2, 5)):
                if self.rnd.random() < 0.7:
                    self.fault()
                needed += self.mutate(target)
                time.sleep(self.rnd.uniform(0.0, 0.4))
        seconds, wrong = self.settle()
        return {"round": number, "needed": needed, "writes": self.kube.writes("secrets") - before,
                "seconds": round(seconds, 2), "wrong": wrong}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--max-seconds", type=float, default=300)
    parser.add_argument("--registries", type=int, default=3)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", default="")
    args = parser.parse_args([a for a in sys.argv[1:] if a != "--watch"])
    with tempfile.TemporaryDirectory(prefix="soak-watch-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        ca = trustme.CA()
        ca.cert_pem.write_to_path(str(tmp / "ca.pem"))
        bao = BaoServer(log_dir=tmp)
        stack.callback(bao.stop)
        kube = KubeAPIServer(ca)
        kube.start()
        stack.callback(kube.stop)
        world = World(tmp, bao, kube, str(tmp / "ca.pem"))
        regs = stack.enter_context(registries(ca, tmp / "registries", args.registries))
        logins = [Login(reg, f"soak{i}", "") for i, reg in enumerate(regs)]
        for login in logins:
            rotate(login, sentinel("start"), world.vault_put)
        kube.add_namespace(FIXED_NS)
        for name in FIXED:
            world.put_dockerconfig(FIXED_NS, name, {"auths": {UNMANAGED: {"username": "q", "password": "k"}}})
        namespaces = [f"app-{i:02d}" for i in range(args.namespaces)]
        for ns in namespaces:
            kube.add_namespace(ns, {"soak": "yes"})
        port = free_port()
        config = world.config(
            [login.spec() for login in logins],
            [*({"namespace": FIXED_NS, "name": n, "create": True} for n in FIXED),
             {"namespace_selector": SELECTOR, "name": FANOUT, "create": True}],
            kubernetes={"watch": True}, vault={"poll_interval": "1s"},
            schedule={"interval": "1h", "jitter": "0s"}, metrics={"listen": f"127.0.0.1:{port}"})
        soak = Soak(tmp, kube, world, logins, namespaces, args.seed)
        return run(soak, config, port, args)


def run(soak: Soak, config: Path, port: int, args: argparse.Namespace) -> int:
    log_path = soak.tmp / "daemon.log"
    with log_path.open("wb") as log:
        cmd = [sys.executable, "-m", "syncer", "--config", str(config), "--log-level", "info"]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    try:
        deadline = time.monotonic() + 120
        while "watches ready" not in log_path.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"the daemon never got its watches:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.2)
        first, wrong = soak.settle()
        if wrong:
            raise RuntimeError(f"the first cycle left targets wrong: {wrong[:5]}")
        started = time.monotonic()
        rounds, warm = [], {}
        for number in range(args.rounds):
            if time.monotonic() - started > args.max_seconds or proc.poll() is not None:
                break
            rounds.append(soak.round(number))
            if number == WARMUP - 1:
                warm = proc_stats(proc.pid)
        crashed = proc.poll() is not None
        end = {} if crashed else proc_stats(proc.pid)
        text = "" if crashed else requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
    return report(soak, rounds, warm, end, text, code, crashed, time.monotonic() - started, args)


def report(soak: Soak, rounds: list[dict[str, Any]], warm: dict[str, int], end: dict[str, int], text: str,
           code: int, crashed: bool, seconds: float, args: argparse.Namespace) -> int:
    growth = (end["rss_kib"] - warm["rss_kib"]) / warm["rss_kib"] if warm and end else None
    restarts = {f"{res}/{why}": metric_value(text, "syncer_watch_restarts_total", resource=res, reason=why)
                for res in ("secrets", "namespaces") for why in ("closed", "dropped", "expired", "error")}
    result = {
        "rounds": len(rounds), "seconds": round(seconds, 1), "faults": soak.faults, "actions": soak.actions,
        "writes": sum(r["writes"] for r in rounds), "needed": sum(r["needed"] for r in rounds),
        "settle_seconds_max": max((r["seconds"] for r in rounds), default=None),
        "warm": warm, "end": end, "rss_growth": round(growth, 4) if growth is not None else None,
        "watch_restarts": restarts, "exit_code": code, "server_errors": len(soak.kube.internal_errors),
        "off_rounds": [r for r in rounds if r["writes"] != r["needed"] or r["wrong"]],
    }
    checks = {
        "no crash": not crashed and code == 0,
        "test server healthy (no internal errors)": not soak.kube.internal_errors,
        f">= {args.rounds} rounds": len(rounds) >= args.rounds,
        "nothing lost (every round settled right)": all(not r["wrong"] for r in rounds),
        "no duplicate writes (writes = needed, per round)": all(r["writes"] == r["needed"] for r in rounds),
        "RSS growth < 5 %": growth is not None and growth < 0.05,
        "fds flat": bool(end) and end["fds"] <= warm["fds"] + 2,
        "threads flat": bool(end) and end["threads"] <= warm["threads"] + 1,
    }
    return finish(result, checks, args.out)


if __name__ == "__main__":
    sys.exit(main())
