"""ovn-k8s-watcher: pods wired per second, created → annotated latency, CPU and memory.

    sudo .venv/bin/python bench/watcher.py [--pods 2000] [--rate 100] [--rate-pods 500]

Everything real but the API server (the in-repo emulator, in its own process):
OVN central from the lab, the watcher as a daemon (`ovn-k8s-watcher --detach`).

- full speed: N pods exist before the watcher starts (16 nodes), so pod creation
  speed is not measured; sustained is from the first annotation seen to the last,
  and the rate from the watcher's exec (imports, lists, start-up) is shown beside it;
- offered load: pods created at a fixed rate with the watcher running; each pod's
  latency is from just before its create call to its annotation arriving on a watch;
- the watcher's CPU (utime+stime of its process) per pod wired and its RSS, and how
  busy all the CPUs were (every process: OVN, the emulator, this bench) while pods flowed;
- baselines in the same run: the lineage's way (one `ovn-nbctl --wait=sb` process
  per pod, dynamic addresses) and raw batched ovsdbapp LSP inserts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client, config

from ovn_k8s import annotations, ovsdb
from ovn_k8s.kube.reflector import reflector_for
from ovn_k8s.sandbox.lab import Lab

sys.path.insert(0, str(Path(__file__).parent))
from apiserver import print_table  # bench/apiserver.py
from lab_startstop import machine

CLUSTER = "10.128.0.0/14"
NODES = [f"node{i}" for i in range(1, 17)]  # 2000 pods: 125 a node, well inside a /24
TICKS = os.sysconf("SC_CLK_TCK")


def pod_body(name: str, node: str) -> dict:
    return {"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}}


class Annotated:
    """Records when each pod's `ovn` annotation is first seen on a watch."""

    def __init__(self, api: client.ApiClient) -> None:
        self.seen: dict[str, float] = {}
        self.cond = threading.Condition()
        self.reflector = reflector_for(api, "pods", handler=self._event)

    def _event(self, _etype: str, key: str, obj: dict) -> None:
        if annotations.POD_NETWORK in (obj["metadata"].get("annotations") or {}):
            with self.cond:
                if key not in self.seen:
                    self.seen[key] = time.monotonic()
                    self.cond.notify_all()

    def wait(self, keys: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(k in self.seen for k in keys):
                if not self.cond.wait(max(0.0, deadline - time.monotonic())):
                    missing = sum(1 for k in keys if k not in self.seen)
                    raise TimeoutError(f"{missing} pods never annotated")


def create_parallel(v1: client.CoreV1Api, names: list[str], threads: int = 8) -> None:
    placed = [(n, NODES[i % len(NODES)]) for i, n in enumerate(names)]
    chunks = [placed[i::threads] for i in range(threads)]

    def run(chunk: list[tuple[str, str]]) -> None:
        for n, node in chunk:
            v1.create_namespaced_pod("default", pod_body(n, node))

    ts = [threading.Thread(target=run, args=(c,)) for c in chunks]
    for t in ts:
        t.start()
    for t in ts:
        t.join()


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class MachineBusy:
    """Samples /proc/stat every 20 ms: how busy all CPUs were between two moments."""

    def __init__(self) -> None:
        self.samples: list[tuple[float, int, int]] = []  # (time, total, idle+iowait ticks)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            self.samples.append((time.monotonic(), sum(ticks), ticks[3] + ticks[4]))
            self._stop.wait(0.02)

    def __enter__(self) -> MachineBusy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def between(self, t0: float, t1: float) -> float:
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        if len(inside) < 2 or inside[-1][1] == inside[0][1]:
            return float("nan")
        return 1 - (inside[-1][2] - inside[0][2]) / (inside[-1][1] - inside[0][1])


def percentile(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(p / 100 * (len(values) - 1)))]


class Bench:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.lab = Lab(base / "lab", nodes=1)
        self.apiserver: subprocess.Popen | None = None
        self.watcher_pid: int | None = None

    def __enter__(self) -> Bench:
        self.lab.up()
        kubeconfig = self.base / "kubeconfig"
        self.apiserver = subprocess.Popen(
            [sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--port", "0",
             "--kubeconfig", str(kubeconfig), "--watch-window", "200000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not kubeconfig.exists():
            time.sleep(0.05)
        self.kubeconfig = kubeconfig
        self.api = config.new_client_from_config(str(kubeconfig))
        self.api.configuration.connection_pool_maxsize = 16
        self.v1 = client.CoreV1Api(self.api)
        for node in NODES:
            self.v1.create_node({"metadata": {"name": node}})
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_watcher()
        if self.apiserver is not None:
            self.apiserver.terminate()
            self.apiserver.wait(10)
        self.lab.down()

    def start_watcher(self) -> float:
        t0 = time.monotonic()
        subprocess.run(
            [str(Path(sys.executable).parent / "ovn-k8s-watcher"), "--overlay",
             f"--cluster-ip-subnet={CLUSTER}", f"--nb={self.lab.nb_remote}",
             f"--kubeconfig={self.kubeconfig}", f"--pidfile={self.base / 'w.pid'}",
             "--detach", f"--unixctl={self.base / 'w.ctl'}", f"--log-file={self.base / 'w.log'}",
             "-vconsole:emer", "-vfile:warn"],
            check=True, capture_output=True, env=dict(os.environ, OVS_RUNDIR=str(self.base)))
        self.watcher_pid = int((self.base / "w.pid").read_text())
        return t0

    def stop_watcher(self) -> None:
        if self.watcher_pid is not None:
            subprocess.run(["ovs-appctl", "-t", str(self.base / "w.ctl"), "exit"],
                           capture_output=True, check=False, timeout=30)
            self.watcher_pid = None

    def full_speed(self, n: int) -> dict[str, float]:
        names = [f"fast-{i}" for i in range(n)]
        create_parallel(self.v1, names)
        watch = Annotated(self.api)
        watch.reflector.start()
        watch.reflector.wait_synced(60)
        with MachineBusy() as busy:
            t0 = self.start_watcher()
            cpu0 = proc_cpu(self.watcher_pid)
            watch.wait([f"default/{n_}" for n_ in names], 300)
        elapsed = max(watch.seen.values()) - t0
        # Sustained: once pods flow, without the daemon's start (imports, lists).
        flowing = max(watch.seen.values()) - min(watch.seen.values())
        cpu = proc_cpu(self.watcher_pid) - cpu0
        watch.reflector.stop()
        status = json.loads(subprocess.run(
            ["ovs-appctl", "-t", str(self.base / "w.ctl"), "status"], capture_output=True,
            text=True, check=True).stdout)
        print("watcher after full speed:", json.dumps(status["pods"]), file=sys.stderr)
        return {"pods": n, "seconds": elapsed, "pods_per_s": n / elapsed,
                "sustained_pods_per_s": (n - 1) / flowing,
                # Everything shares the CPUs: how much of them was left while pods flowed.
                "machine_busy": busy.between(min(watch.seen.values()), max(watch.seen.values())),
                "cpu_ms_per_pod": cpu * 1000 / n, "rss_mb": proc_rss_mb(self.watcher_pid)}

    def offered(self, n: int, rate: float) -> dict[str, float]:
        watch = Annotated(self.api)
        watch.reflector.start()
        watch.reflector.wait_synced(60)
        created: dict[str, float] = {}
        start = time.monotonic()
        for i in range(n):
            due = start + i / rate
            time.sleep(max(0.0, due - time.monotonic()))
            name = f"rate-{i}"
            created[f"default/{name}"] = time.monotonic()
            self.v1.create_namespaced_pod("default", pod_body(name, NODES[i % len(NODES)]))
        watch.wait(list(created), 120)
        watch.reflector.stop()
        lat = [(watch.seen[k] - t) * 1000 for k, t in created.items()]
        return {"pods": n, "rate": rate, "p50_ms": percentile(lat, 50),
                "p99_ms": percentile(lat, 99), "max_ms": max(lat),
                "rss_mb": proc_rss_mb(self.watcher_pid)}

    def lineage_baseline(self, n: int) -> float:
        """One ovn-nbctl process per pod, dynamic addresses, --wait=sb (the 2017 watcher)."""
        self.lab.nbctl("--may-exist", "ls-add", "baseline",
                       "--", "set", "Logical_Switch", "baseline",
                       "other_config:subnet=10.200.0.0/16")
        t0 = time.monotonic()
        for i in range(n):
            self.lab.nbctl("--wait=sb", "--", "--may-exist", "lsp-add", "baseline", f"old-{i}",
                           "--", "lsp-set-addresses", f"old-{i}", "dynamic", timeout=30)
        return n / (time.monotonic() - t0)

    def raw_inserts(self, n: int, batch: int = 500) -> float:
        nb = ovsdb.NbDb(self.lab.nb_remote, timeout=30)
        try:
            nb.execute(nb.api.ls_add("raw", may_exist=True))
            t0 = time.monotonic()
            for start in range(0, n, batch):
                with nb.transaction() as txn:
                    for i in range(start, min(n, start + batch)):
                        ip = f"10.201.{i // 250}.{i % 250 + 2}"
                        txn.add(nb.api.lsp_add("raw", f"raw-{i}",
                                               addresses=[f"0a:58:0a:c9:00:01 {ip}"]))
            return n / (time.monotonic() - t0)
        finally:
            nb.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=2000)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--rate-pods", type=int, default=500)
    ap.add_argument("--baseline-pods", type=int, default=200)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovn-k8s-bench-") as d, Bench(Path(d)) as b:
        full = b.full_speed(args.pods)
        offered = b.offered(args.rate_pods, args.rate)
        raw = b.raw_inserts(args.pods)
        lineage = b.lineage_baseline(args.baseline_pods)
    result = {"machine": machine(), "full_speed": full, "offered": offered,
              "raw_ovsdbapp_lsps_per_s": raw, "lineage_pods_per_s": lineage}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    m = result["machine"]
    print(f"ovn-k8s-watcher — {m['cpus']} CPUs, {m['cpu model']}, kernel {m['kernel']}, "
          f"python {m['python']}; {m['ovn']}")
    sustained = full["sustained_pods_per_s"]
    rows = [
        ("pods wired/s, sustained", f"{full['pods']} pods, first to last",
         f"{sustained:,.0f}", ">= 1000"),
        ("pods wired/s, from the watcher's exec", "start-up included",
         f"{full['pods_per_s']:,.0f}", ""),
        ("  all CPUs busy meanwhile (every process)", "/proc/stat",
         f"{full['machine_busy']:.0%}", ""),
        ("  sustained vs raw batched ovsdbapp LSP inserts", "same run",
         f"{sustained / raw:.0%} of {raw:,.0f}/s", ">= 50%"),
        ("  sustained vs lineage (ovn-nbctl --wait=sb per pod)", f"{args.baseline_pods} pods",
         f"{sustained / lineage:,.0f}x ({lineage:,.1f}/s)", ""),
        ("watcher CPU per pod wired", "own process", f"{full['cpu_ms_per_pod']:.2f} ms",
         "<= 2 ms"),
        ("created -> annotated p50", f"{offered['rate']:.0f} pods/s offered",
         f"{offered['p50_ms']:.1f} ms", "<= 20 ms"),
        ("created -> annotated p99", f"{offered['pods']} pods",
         f"{offered['p99_ms']:.1f} ms", "<= 100 ms"),
        ("watcher RSS", f"after {full['pods'] + offered['pods']} pods",
         f"{offered['rss_mb']:.0f} MB", ""),
    ]
    print_table(("what", "how", "result", "target"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
