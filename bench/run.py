#!/usr/bin/env python3
"""Benchmark: one syncer against real OpenBao, real registries and a slow Kubernetes API.

    python bench/run.py --out results/bench.json [--registries 50] [--targets 500] [--profile]

Servers: OpenBao dev server behind a counting HTTP proxy (Vault requests), R real
``docker-registry`` processes over TLS with htpasswd (probes counted from their access logs),
and the project's Kubernetes API test server with ``--latency`` seconds added to every request
(requests and writes counted by the server). The syncer runs as a child process
(``python -m syncer --once``) so its peak RSS and CPU seconds are its own (``os.wait4``).

Scenarios: the first fill (creates), steady state and a full rotation (every registry), each at
concurrency 1 and 16, then the daemon idle after a cycle, then the daemon reacting to Vault
writes (``--react-only`` runs just that one), then the watch scenarios of bench/watch.py
(``--watch-only``: repairs within 2 s, the steady state on an accelerated clock, RSS with the
secrets cached). Prints Markdown, writes JSON, checks
bench/budgets.json and exits 1 if a budget fails. See docs/scaling.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import trustme  # noqa: E402

from bench.watch import WatchBench, watch_budgets, watch_markdown  # noqa: E402
from tests.support.httpcount import CountingProxy  # noqa: E402
from tests.support.kubeproc import KubeAPIProcess  # noqa: E402
from tests.support.net import free_port  # noqa: E402
from tests.support.scale import Login, label_namespaces, probes, registries, rotate  # noqa: E402
from tests.support.vault import BaoServer  # noqa: E402
from tests.support.world import World, metric_value, sentinel  # noqa: E402

SELECTOR = "bench=yes"
NAME = "registry-pull"
PROFILE_CATEGORIES = (  # first match from the leaf frame upwards wins
    ("TLS", ("ssl.py", "_ssl.", "do_handshake")),
    ("JSON / model (de)serialisation", ("json/", "sanitize_for_serialization", "deserialize",
                                        "dockerconfig.py", "base64")),
    ("HTTP client (urllib3/requests/http.client)", ("urllib3/", "requests/", "http/client.py",
                                                    "socket.py", "hvac/")),
    ("thread hand-off and locks", ("threading.py", "queue.py", "concurrent/futures")),
    ("imports and start-up", ("<frozen importlib", "_find_and_load", "<module>")),
    ("logging", ("logging/",)),
)


def syncer_cmd(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "syncer", "--config", str(config), *extra]


def run_once(config: Path, profile: Path | None = None) -> dict[str, Any]:
    """One ``syncer --once`` child: exit code, cycle time, process wall, CPU and peak RSS."""
    cmd = syncer_cmd(config, "--once", "--log-level", "warning")
    if profile is not None:
        # --gil: sample only the thread holding the GIL, i.e. where Python CPU goes;
        # --nonblocking: do not pause 16+ threads 250 times a second (that distorted timings).
        cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "--rate", "250",
               "--gil", "--nonblocking", "--subprocesses", "--output", str(profile), "--", *cmd]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    match = re.search(r"sync finished: ok=(\w+).* duration=([\d.]+)s", out)
    if not match:
        raise RuntimeError(f"syncer did not finish a cycle:\n{out[-3000:]}")
    return {"exit_code": proc.returncode, "ok": match.group(1) == "true",
            "cycle_seconds": float(match.group(2)), "process_seconds": round(wall, 3),
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "summary": out.splitlines()[-1]}


def categorise(profile: Path) -> dict[str, float]:
    """Share of on-CPU samples per category, from py-spy's raw (collapsed stack) output."""
    totals: Counter[str] = Counter()
    for line in profile.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frames = stack.split(";")
        category = "other (syncer logic, interpreter)"
        for frame in reversed(frames):
            hit = next((name for name, keys in PROFILE_CATEGORIES if any(k in frame for k in keys)), None)
            if hit:
                category = hit
                break
        totals[category] += int(count)
    whole = sum(totals.values()) or 1
    return {k: round(v / whole, 3) for k, v in totals.most_common()}


class Bench:
    def __init__(self, work: Path, n_registries: int, n_targets: int, latency: float) -> None:
        self.work = work
        self.R, self.T, self.latency = n_registries, n_targets, latency
        self.ca = trustme.CA()
        ca_file = work / "ca.pem"
        self.ca.cert_pem.write_to_path(str(ca_file))
        self.bao = BaoServer(log_dir=work)
        self.vault = CountingProxy(self.bao.address).start()
        self.kube = KubeAPIProcess(self.ca, latency=latency)
        self.world = World(work, self.bao, self.kube, str(ca_file))
        self.namespaces = [f"team-{i:04d}" for i in range(n_targets)]
        label_namespaces(self.kube, self.namespaces, {"bench": "yes"})
        self.kube.add_namespace("not-selected", {"bench": "no"})
        self.logins: list[Login] = []

    def start_registries(self, stack: Any) -> None:
        regs = stack.enter_context(registries(self.ca, self.work / "registries", self.R))
        self.regs = regs
        for i, reg in enumerate(regs):
            login = Login(reg, f"reg{i:02d}", "")
            rotate(login, sentinel(f"r{i}"), self.world.vault_put)
            self.logins.append(login)

    def config(self, concurrency: int, events: bool = False, list_secrets: bool = False,
               kube_extra: dict[str, Any] | None = None, **extra: dict[str, Any]) -> Path:
        return self.world.config(
            [login.spec() for login in self.logins],
            [{"namespace_selector": SELECTOR, "name": NAME, "create": True}],
            vault={"address": self.vault.url, **extra.pop("vault", {})},
            kubernetes={"events": events, "timeout": "30s", "list_secrets": list_secrets,
                        **(kube_extra or {})},
            probe={"timeout": "30s"}, sync={"concurrency": concurrency}, **extra)

    def measure(self, label: str, concurrency: int, profile: Path | None = None,
                events: bool = False, list_secrets: bool = False) -> dict[str, Any]:
        self.kube.reset_requests()
        self.vault.reset()
        probed = probes(self.regs)
        result = run_once(self.config(concurrency, events, list_secrets), profile)
        kube_requests = self.kube.count()
        row = {
            "scenario": label, "concurrency": concurrency, **result,
            "vault_requests": len(self.vault.requests),
            "vault_kv_reads": self.vault.count("GET", f"/v1/secret/data/{self.world.prefix}/"),
            "kube_requests": kube_requests,
            "kube_namespace_lists": self.kube.count(verb="list", resource="namespaces"),
            "kube_secret_reads": self.kube.count(verb="get", resource="secrets"),
            "writes": self.kube.writes("secrets"),
            "event_creates": self.kube.count(verb="create", resource="events"),
            "registry_probes": probes(self.regs) - probed,
        }
        row["registry_requests"] = row["registry_probes"] * 2
        ideal = kube_requests * self.latency / concurrency
        row["ideal_seconds"] = round(ideal, 3)
        row["ratio_to_ideal"] = round(result["cycle_seconds"] / ideal, 2) if ideal else None
        return row

    def rotate_all(self) -> None:
        for login in self.logins:
            rotate(login, sentinel("rot"), self.world.vault_put)

    def daemon_idle(self, env: dict[str, str] | None = None) -> dict[str, Any]:
        """Start the daemon, wait for its first cycle, then read its RSS while idle."""
        port = free_port()
        config = self.config(16, schedule={"interval": "1h", "jitter": "0s"},
                             metrics={"listen": f"127.0.0.1:{port}"})
        proc = subprocess.Popen(syncer_cmd(config, "--log-level", "warning"), cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(env or {})})
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
                    if (metric_value(text, "syncer_last_run_timestamp_seconds") or 0) > 0:
                        break
                except requests.RequestException:
                    pass
                time.sleep(0.2)
            time.sleep(2)  # let the cycle's garbage go
            status = Path(f"/proc/{proc.pid}/status").read_text()
            field = {k: int(v.split()[0]) / 1024 for k, v in
                     (line.split(":", 1) for line in status.splitlines() if line.startswith("Vm"))}
            return {"idle_rss_mb": round(field["VmRSS"], 1), "daemon_peak_rss_mb": round(field["VmHWM"], 1)}
        finally:
            proc.terminate()
            proc.wait(30)

    def react(self, rotations: int, poll: float, idle: float = 10.0) -> dict[str, Any]:
        """The daemon with a 1 h cycle and ``poll`` s Vault polls: one registry's new version ->
        every affected secret (all T) written, timed from the Vault write; then ``idle`` s of
        steady state (rounded up to whole polls), counting requests."""
        port = free_port()
        # The shipped defaults: list_secrets on (one LIST per scoped sync instead of T GETs).
        config = self.config(16, list_secrets=True, schedule={"interval": "1h", "jitter": "0s"},
                             metrics={"listen": f"127.0.0.1:{port}"}, vault={"poll_interval": poll})
        log_path = self.work / "react-daemon.log"
        with log_path.open("wb") as log_file:
            proc = subprocess.Popen(syncer_cmd(config, "--log-level", "warning"), cwd=ROOT,
                                    stdout=log_file, stderr=subprocess.STDOUT,
                                    env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
        idle = poll * max(1, math.ceil(idle / poll))  # whole poll intervals: exactly that many polls
        try:
            scrape = self._wait_first_cycle(port, proc, log_path)
            time.sleep(poll + 0.5)  # the poll's baseline
            latencies = [self._one_rotation(self.logins[i % self.R], poll) for i in range(rotations)]
            self.vault.reset()
            self.kube.reset_requests()
            time.sleep(idle)
            steady = {"vault_requests": len(self.vault.requests), "kube_requests": self.kube.count(),
                      "writes": self.kube.writes("secrets"), "polls": round(idle / poll, 1)}
            text = scrape()
        finally:
            proc.terminate()
            proc.wait(30)
        ordered = sorted(latencies)
        count = metric_value(text, "syncer_propagation_seconds_count") or 0
        return {"poll_seconds": poll, "rotations": rotations, "latencies": [round(x, 3) for x in latencies],
                "p50_seconds": round(ordered[len(ordered) // 2], 3),
                "p95_seconds": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))], 3),
                "max_seconds": round(ordered[-1], 3),
                "propagation_mean_seconds": round((metric_value(text, "syncer_propagation_seconds_sum") or 0)
                                                  / count, 3) if count else None,
                "propagation_count": count, "idle_seconds": idle, "steady": steady}

    def _wait_first_cycle(self, port: int, proc: subprocess.Popen[bytes], log_path: Path) -> Any:
        def scrape() -> str:
            return requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the daemon exited ({proc.returncode}):\n{log_path.read_text()[-3000:]}")
            try:
                if (metric_value(scrape(), "syncer_last_run_timestamp_seconds") or 0) > 0:
                    return scrape
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError("the daemon finished no cycle in 300 s")

    def _one_rotation(self, login: Login, poll: float) -> float:
        """Seconds from the Vault write to the T-th secret write; then a random part of a poll
        interval, so that the next write lands at another phase of the poll."""
        before = self.kube.writes("secrets")
        login.registry.set_password("bot", password := sentinel("react"))
        started = time.monotonic()
        self.world.vault_put(login.path, username="bot", password=password)
        login.password = password
        deadline = started + 120
        while self.kube.writes("secrets") < before + self.T:
            if time.monotonic() > deadline:
                raise RuntimeError("a rotation did not reach every secret in 120 s")
            time.sleep(0.02)
        elapsed = time.monotonic() - started
        time.sleep(random.uniform(0, poll))  # noqa: S311 - spreading samples, not security
        return elapsed

    def close(self) -> None:
        self.kube.stop()
        self.vault.stop()
        self.bao.stop()


def budgets(rows: dict[str, dict[str, Any]], idle: dict[str, Any], limits: dict[str, Any],
            R: int, T: int) -> list[tuple[str, str, bool]]:
    checks = []
    for c in (1, 16):
        steady = rows[f"steady c={c}"]
        lists = steady["kube_namespace_lists"]
        reads = steady["vault_kv_reads"] + steady["kube_secret_reads"] + lists
        checks.append((f"steady c={c}: writes = {limits['steady_writes']}", str(steady["writes"]),
                       steady["writes"] == limits["steady_writes"]))
        checks.append((f"steady c={c}: Vault KV + kube requests <= R + T + lists = {R + T + lists}",
                       str(reads), reads <= R + T + lists
                       and steady["kube_requests"] == steady["kube_secret_reads"] + lists))
        checks.append((f"steady c={c}: probes <= R = {R}", str(steady["registry_probes"]),
                       steady["registry_probes"] <= R))
        rot = rows[f"rotation c={c}"]
        checks.append((f"rotation c={c}: writes = T = {T}", str(rot["writes"]), rot["writes"] == T))
        checks.append((f"rotation c={c}: probes = R = {R}", str(rot["registry_probes"]),
                       rot["registry_probes"] == R))
    for scenario in ("steady", "rotation"):
        speedup = rows[f"{scenario} c=1"]["cycle_seconds"] / rows[f"{scenario} c=16"]["cycle_seconds"]
        checks.append((f"{scenario}: c=16 vs c=1 >= {limits['min_speedup_c16_vs_c1']}x faster",
                       f"{speedup:.1f}x", speedup >= limits["min_speedup_c16_vs_c1"]))
    peak = max(r["peak_rss_mb"] for r in rows.values())
    checks.append((f"idle RSS <= {limits['max_rss_idle_mb']} MB", f"{idle['idle_rss_mb']} MB",
                   idle["idle_rss_mb"] <= limits["max_rss_idle_mb"]))
    checks.append((f"peak RSS at T = {T} <= {limits['max_rss_peak_mb']} MB", f"{peak} MB",
                   peak <= limits["max_rss_peak_mb"]))
    return checks


COLUMNS = ("scenario", "kube_requests", "vault_requests", "vault_kv_reads", "registry_requests",
           "registry_probes", "writes", "event_creates", "cycle_seconds", "ideal_seconds", "ratio_to_ideal",
           "process_seconds", "cpu_seconds", "peak_rss_mb")


def react_budgets(react: dict[str, Any], limits: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """Vault write -> every affected secret written, p95 <= poll + slack; R requests per poll."""
    slack = limits["react_p95_slack_seconds"]
    steady = react["steady"]
    per_poll = steady["vault_requests"] / steady["polls"] if steady["polls"] else 0
    r, limit = limits["registries"], react["poll_seconds"] + slack
    return [
        (f"react: Vault write -> all secrets written, p95 <= poll + {slack} s = {limit} s",
         f"{react['p95_seconds']} s", react["p95_seconds"] <= limit),
        (f"react steady: Vault requests per poll ~ R = {r}", f"{per_poll:.1f}",
         abs(per_poll - r) <= 0.2 * r),
        ("react steady: writes = 0, Kubernetes requests = 0",
         f"{steady['writes']}, {steady['kube_requests']}",
         steady["writes"] == 0 and steady["kube_requests"] == 0),
    ]


def react_markdown(react: dict[str, Any]) -> str:
    steady = react["steady"]
    return "\n".join([
        "", f"### Reacting to Vault writes (daemon, poll_interval = {react['poll_seconds']} s, "
        f"{react['rotations']} writes, each of one registry managed by all T targets)", "",
        "| p50 | p95 | max | syncer_propagation_seconds mean (poll saw it -> last write) |",
        "|---|---|---|---|",
        f"| {react['p50_seconds']} s | {react['p95_seconds']} s | {react['max_seconds']} s | "
        f"{react['propagation_mean_seconds']} s |", "",
        f"Then {react['idle_seconds']} s idle ({steady['polls']} polls): {steady['vault_requests']} Vault "
        f"requests, {steady['kube_requests']} Kubernetes requests, {steady['writes']} writes."])


def react_only(bench: Bench, args: argparse.Namespace, limits: dict[str, Any]) -> int:
    report: dict[str, Any] = {"parameters": {"registries": args.registries, "targets": args.targets,
                             "kube_latency_seconds": args.latency, "cpus": os.cpu_count()},
              "react": bench.react(args.rotations, args.poll)}
    checks = react_budgets(report["react"], {**limits, "registries": args.registries})
    report["budgets"] = checks
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(react_markdown(report["react"]))
    for name, measured, ok in checks:
        print(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")
    return 0 if all(ok for _, _, ok in checks) else 1


def run_watch(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """The watch scenarios (bench/watch.py): reactions first, then the accelerated steady state."""
    wb = WatchBench(bench, NAME, syncer_cmd, ROOT)
    reactions = wb.reactions(args.deletions, args.deletions, args.new_namespaces, args.rotations,
                             args.poll)
    return {"reactions": reactions, "steady": wb.steady(args.steady_seconds)}


def watch_only(bench: Bench, args: argparse.Namespace, limits: dict[str, Any]) -> int:
    report: dict[str, Any] = {"parameters": {"registries": args.registries, "targets": args.targets,
                                             "kube_latency_seconds": args.latency, "cpus": os.cpu_count()},
                              "watch": run_watch(bench, args)}
    report["budgets"] = watch_budgets(report["watch"], {**limits, "targets": args.targets}, args.registries)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(watch_markdown(report["watch"]))
    for name, measured, ok in report["budgets"]:
        print(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")
    return 0 if all(ok for _, _, ok in report["budgets"]) else 1


def markdown(report: dict[str, Any]) -> str:
    p = report["parameters"]
    lines = [f"## Benchmark: R = {p['registries']}, T = {p['targets']}, Kubernetes latency "
             f"{p['kube_latency_seconds'] * 1000:.0f} ms, {p['cpus']} CPUs", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in report["scenarios"].values():
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in COLUMNS) + " |")
    idle = report["daemon"]
    lines += ["", f"Daemon after one T = {p['targets']} cycle: idle RSS {idle['idle_rss_mb']} MB, "
              f"peak RSS {idle['daemon_peak_rss_mb']} MB; with MALLOC_ARENA_MAX=2: idle RSS "
              f"{report['daemon_malloc_arena_max_2']['idle_rss_mb']} MB.", "",
              "### Budgets (bench/budgets.json)", "",
              "| budget | measured | result |", "|---|---|---|"]
    for name, measured, ok in report["budgets"]:
        lines.append(f"| {name} | {measured} | {'PASS' if ok else 'FAIL'} |")
    if report.get("react"):
        lines.append(react_markdown(report["react"]))
    if report.get("watch"):
        lines.append(watch_markdown(report["watch"]))
    if report.get("profile"):
        lines += ["", f"### Where c=16 rotation CPU goes (py-spy, {report['profile_scenario']})", "",
                  "| category | share of on-CPU samples |", "|---|---|"]
        lines += [f"| {k} | {v:.0%} |" for k, v in report["profile"].items()]
    return "\n".join(lines)


COMPARED = ("cycle_seconds", "cpu_seconds", "peak_rss_mb", "kube_requests", "writes")


def compare(before: dict[str, Any], after: dict[str, Any], name: str) -> str:
    """A Markdown table of what changed against an earlier result (same scenarios only)."""
    lines = ["", f"### Against {name}", "", "| scenario | " + " | ".join(COMPARED) + " |",
             "|" + "---|" * (len(COMPARED) + 1)]
    for key, row in after["scenarios"].items():
        old = before.get("scenarios", {}).get(key)
        if old is None:
            continue
        cells = [f"{old.get(m)} → {row.get(m)}" for m in COMPARED]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    idle = (before.get("daemon") or {}).get("idle_rss_mb"), after["daemon"]["idle_rss_mb"]
    lines.append(f"\nIdle RSS: {idle[0]} → {idle[1]} MB.")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="JSON results file (e.g. bench/results/bench.json)")
    parser.add_argument("--registries", type=int, default=50)
    parser.add_argument("--targets", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.02, help="seconds added to each kube request")
    parser.add_argument("--profile", action="store_true", help="py-spy an extra c=16 rotation")
    parser.add_argument("--react-only", action="store_true",
                        help="only the daemon reacting to Vault writes (the scenario's own budget)")
    parser.add_argument("--rotations", type=int, default=20, help="Vault writes timed by the react scenario")
    parser.add_argument("--poll", type=float, default=2.0, help="vault.poll_interval of the react scenario")
    parser.add_argument("--watch-only", action="store_true",
                        help="only the watch scenarios (bench/watch.py) and their budgets")
    parser.add_argument("--deletions", type=int, default=10,
                        help="secrets deleted (and entries edited) by someone else, each timed")
    parser.add_argument("--new-namespaces", type=int, default=10, help="namespaces that start to match")
    parser.add_argument("--steady-seconds", type=float, default=60.0,
                        help="the steady window; x10 accelerated timers, so 60 s stand for 10 minutes")
    parser.add_argument("--baseline", default=str(ROOT / "bench" / "baseline.json"),
                        help="an earlier JSON result to compare with (default: the run of record)")
    args = parser.parse_args()
    limits = json.loads((ROOT / "bench" / "budgets.json").read_text())
    from contextlib import ExitStack

    with tempfile.TemporaryDirectory(prefix="syncer-bench-") as tmp, ExitStack() as stack:
        bench = Bench(Path(tmp), args.registries, args.targets, args.latency)
        stack.callback(bench.close)
        bench.start_registries(stack)
        if args.react_only:
            return react_only(bench, args, limits)
        if args.watch_only:
            return watch_only(bench, args, limits)
        rows: dict[str, dict[str, Any]] = {}
        rows["first fill c=16"] = bench.measure("first fill", 16)
        for c in (1, 16):
            rows[f"steady c={c}"] = bench.measure("steady", c)
        # Not a budget row: kubernetes.list_secrets (the default; the budget rows measure the GET
        # path with it off) reads the 500 secrets with one LIST: 2 requests per steady cycle.
        rows["steady c=16, list_secrets"] = bench.measure("steady, list_secrets", 16, list_secrets=True)
        for c in (1, 16):
            bench.rotate_all()
            rows[f"rotation c={c}"] = bench.measure("full rotation", c)
        # Not a budget row: what Events add to a rotation (sent on the same bounded pool).
        bench.rotate_all()
        rows["rotation c=16, events on"] = bench.measure("full rotation, events", 16, events=True)
        for key, row in rows.items():
            row["scenario"] = key
        report: dict[str, Any] = {
            "parameters": {"registries": args.registries, "targets": args.targets,
                           "kube_latency_seconds": args.latency, "cpus": os.cpu_count(),
                           "python": sys.version.split()[0]},
            "scenarios": rows,
        }
        report["daemon"] = bench.daemon_idle()
        # glibc keeps one malloc arena per busy thread; capping them is a deployment knob.
        report["daemon_malloc_arena_max_2"] = bench.daemon_idle({"MALLOC_ARENA_MAX": "2"})
        if args.profile:
            bench.rotate_all()
            prof = Path(tmp) / "profile.txt"
            rows_prof = bench.measure("profiled rotation", 16, prof)
            report["profile_scenario"] = (f"rotation c=16 under py-spy, cycle {rows_prof['cycle_seconds']}s, "
                                          f"CPU {rows_prof['cpu_seconds']}s")
            report["profile"] = categorise(prof)
        report["react"] = bench.react(args.rotations, args.poll)
        report["watch"] = run_watch(bench, args)  # last: it adds matching namespaces
        report["budgets"] = budgets(rows, report["daemon"], limits, args.registries, args.targets)
        report["budgets"] += react_budgets(report["react"], limits)
        report["budgets"] += watch_budgets(report["watch"], {**limits, "targets": args.targets},
                                           args.registries)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(markdown(report))
    if Path(args.baseline).is_file():
        print(compare(json.loads(Path(args.baseline).read_text()), report, args.baseline))
    return 0 if all(ok for _, _, ok in report["budgets"]) else 1


if __name__ == "__main__":
    sys.exit(main())
