"""ovn-k8s-watcher cold start at scale: 10k pods and 2k services, NB already right.

    sudo .venv/bin/python bench/coldstart.py [--pods 10000] [--services 2000] [--endpoints 5]

Same set-up as bench/watcher.py. The pods (200 a node) and services (with one
EndpointSlice each) exist first; a watcher wires them all (first sync), then stops
(`ovs-appctl exit`). The figure is the restart: from the watcher's exec until its
status shows every queue empty, with NB's database file size before and after (it is
append-only, so zero bytes grown means zero NB writes), and its RSS at the end.
The baseline in the same run is the first sync, which wrote everything.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client

from ovn_k8s.sandbox.lab import read_db_log

sys.path.insert(0, str(Path(__file__).parent))
from apiserver import print_table  # bench/apiserver.py
from services import endpoint_ip, slice_body  # bench/services.py
from watcher import Annotated, Bench, pod_body, proc_cpu, proc_rss_mb  # bench/watcher.py

PODS_PER_NODE = 200


def create_all(b: Bench, pods: int, services: int, endpoints: int) -> None:
    nodes = [f"cs-node{i}" for i in range(-(-pods // PODS_PER_NODE))]
    for node in nodes:
        b.v1.create_node({"metadata": {"name": node}})
    dv1 = client.DiscoveryV1Api(b.api)

    def run(k: int) -> None:
        for i in range(k, pods, 8):
            b.v1.create_namespaced_pod("default", pod_body(f"cs-{i}", nodes[i // PODS_PER_NODE]))
        for i in range(k, services, 8):
            b.v1.create_namespaced_service("default", {
                "metadata": {"name": f"svc-{i}"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
            dv1.create_namespaced_endpoint_slice(
                "default", slice_body(i, [endpoint_ip(i, e) for e in range(endpoints)]))

    threads = [threading.Thread(target=run, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def status(b: Bench) -> dict:
    out = subprocess.run(["ovs-appctl", "-t", str(b.base / "w.ctl"), "status"],
                         capture_output=True, text=True, check=True, timeout=30).stdout
    return json.loads(out)


def wait_idle(b: Bench, timeout: float) -> dict:
    """Poll the watcher's status until it has started and every queue is empty."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            st = status(b)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            st = None  # still starting: no control socket yet
        if st and st.get("startup") and all(
                q["depth"] == 0 and q["processing"] == 0 for q in st["queues"].values()):
            return st
        time.sleep(0.05)
    raise TimeoutError("the watcher never became idle")


def settle(db: Path, quiet: float = 3.0) -> int:
    """NB's file size once nothing has been appended for ``quiet`` seconds: ovn-northd
    writes every new port's ``up`` column, seconds after a big batch."""
    size = -1
    while db.stat().st_size != size:
        size = db.stat().st_size
        time.sleep(quiet)
    return size


def writes_since(db: Path, offset: int) -> tuple[int, int, list[str]]:
    """NB transactions appended after ``offset``: (count, bytes, what each touched)."""
    records = read_db_log(db, offset)
    touched = []
    for record in records:
        for table, rows in record.items():
            if not table.startswith("_"):
                cols = sorted({c for row in rows.values() if row for c in row})
                touched.append(f"{table}({','.join(cols)})")
    return len(records), db.stat().st_size - offset, touched


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pods", type=int, default=10000)
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--endpoints", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovn-k8s-bench-") as d, Bench(Path(d)) as b:
        t0 = time.monotonic()
        create_all(b, args.pods, args.services, args.endpoints)
        print(f"created {args.pods} pods and {args.services} services in "
              f"{time.monotonic() - t0:.1f}s", file=sys.stderr)
        watch = Annotated(b.api)
        watch.reflector.start()
        watch.reflector.wait_synced(120)
        t0 = b.start_watcher()
        watch.wait([f"default/cs-{i}" for i in range(args.pods)], 900)
        first = wait_idle(b, 900)
        first_s = time.monotonic() - t0
        first_rss = proc_rss_mb(b.watcher_pid)
        watch.reflector.stop()
        b.stop_watcher()
        db = b.lab.central_dir / "nb.db"
        size0 = settle(db)
        t0 = b.start_watcher()
        cpu0 = proc_cpu(b.watcher_pid)
        second = wait_idle(b, 300)
        restart_s = time.monotonic() - t0
        cpu = proc_cpu(b.watcher_pid) - cpu0
        settle(db)
        txns, grown, touched = writes_since(db, size0)
        rss = proc_rss_mb(b.watcher_pid)
    if touched:
        print("NB written during the restart:", "; ".join(sorted(set(touched))), file=sys.stderr)
    print(f"ovn-k8s-watcher cold start: {args.pods} pods, {args.services} services x "
          f"{args.endpoints} endpoints")
    rows = [
        ("first sync (writes everything; baseline)", f"{first_s:.1f} s",
         f"{first['pods']['transactions']} pod txns"),
        ("restart, NB already right: exec -> idle", f"{restart_s:.1f} s", "target <= 10 s"),
        ("  its CPU after exec (daemon start excluded)", f"{cpu:.1f} s", ""),
        ("  NB transactions / bytes written", f"{txns} / {grown:,}", "target 0"),
        ("  pod / service transactions",
         f"{second['pods']['transactions']} / {second['services'].get('transactions', 0)}", ""),
        ("watcher RSS after first sync / restart", f"{first_rss:.0f} / {rss:.0f} MB",
         "target <= 200 MB"),
    ]
    print_table(("what", "result", "target"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
