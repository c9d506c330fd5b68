"""Services → OVN load balancers: first full sync, endpoint change → VIP latency, write cost.

    sudo .venv/bin/python bench/services.py [--services 2000] [--endpoints 5] [--rate 200]

Same set-up as bench/watcher.py (lab OVN central, API emulator in its own process, the
watcher as a daemon). The services and their EndpointSlices exist before the watcher
starts; the first full sync is from its start until NB holds every VIP with all its
backends. Then endpoint changes are offered at a fixed rate (one endpoint address of a
random service replaced); each change's latency is from just before the API write to
the new backend list being visible in NB (a separate IDL connection, polled). NB's
database file is append-only here, so its growth per change is the bytes written.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from kubernetes import client

from ovn_k8s import ovsdb, topology, translate

sys.path.insert(0, str(Path(__file__).parent))
from watcher import Bench, percentile  # bench/watcher.py

LB = topology.cluster_lb_name("tcp")


def endpoint_ip(svc: int, ep: int, generation: int = 0) -> str:
    n = svc * 8 + ep + generation * 40000
    return f"10.{128 + n // 65536 % 4}.{n // 256 % 256}.{n % 256}"


def slice_body(i: int, ips: list[str]) -> dict:
    return {
        "metadata": {"name": f"svc-{i}-x", "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True}} for ip in ips],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def backends(ips: list[str]) -> str:
    return ",".join(sorted(translate.vip(ip, 8080) for ip in ips))


class NbView:
    """Polls our own replica of NB for expected VIP values; records when each appears."""

    def __init__(self, remote: str) -> None:
        self.nb = ovsdb.NbDb(remote, tables=["Load_Balancer"], timeout=30)
        self.pending: dict[str, tuple[str, float]] = {}  # vip -> (value, t0)
        self.latencies: list[float] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def vips(self, keys: list[str]) -> dict[str, str]:
        """NB's values of `keys` (reading the whole 2000-VIP map would cost ~45 ms of
        the CPU the watcher and NB share, and add as much to every latency)."""
        for lb in self.nb.rows("Load_Balancer"):
            if lb.name == LB:
                return self.nb.map_get(lb, "vips", keys)
        return {}

    def expect(self, vip: str, value: str, t0: float) -> None:
        with self.lock:
            self.pending[vip] = (value, t0)

    def _run(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                waiting = dict(self.pending)
            if waiting:
                current = self.vips(list(waiting))
                now = time.monotonic()
                with self.lock:
                    for vip, (value, t0) in waiting.items():
                        if current.get(vip) == value and self.pending.get(vip) == (value, t0):
                            self.latencies.append((now - t0) * 1000)
                            del self.pending[vip]
            time.sleep(0.001)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.nb.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--services", type=int, default=2000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--rate", type=float, default=200.0)
    ap.add_argument("--changes", type=int, default=1000)
    args = ap.parse_args()
    rng = random.Random(1)
    with tempfile.TemporaryDirectory(prefix="ovn-k8s-bench-") as d, Bench(Path(d)) as b:
        v1 = b.v1
        dv1 = client.DiscoveryV1Api(b.api)
        ips: dict[int, list[str]] = {}
        cluster_ips: dict[int, str] = {}

        def create(chunk: range) -> None:
            for i in chunk:
                svc = v1.create_namespaced_service("default", {
                    "metadata": {"name": f"svc-{i}"},
                    "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
                cluster_ips[i] = svc.spec.cluster_ip
                ips[i] = [endpoint_ip(i, e) for e in range(args.endpoints)]
                dv1.create_namespaced_endpoint_slice("default", slice_body(i, ips[i]))

        threads = [threading.Thread(target=create, args=(range(k, args.services, 8),))
                   for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        view = NbView(b.lab.nb_remote)
        t0 = b.start_watcher()
        want = {translate.vip(cluster_ips[i], 80): backends(ips[i]) for i in cluster_ips}
        while True:
            current = view.vips(list(want))
            if all(current.get(k) == v for k, v in want.items()):
                break
            if time.monotonic() - t0 > 300:
                raise TimeoutError("first sync did not finish in 300 s")
            time.sleep(0.01)
        first_sync = time.monotonic() - t0

        status = _status(b)
        txn0 = status["services"]["transactions"]
        cpu0 = _cpu(b)
        db = b.lab.dir / "central" / "nb.db"
        size0 = db.stat().st_size
        start = time.monotonic()
        for n in range(args.changes):
            time.sleep(max(0.0, start + n / args.rate - time.monotonic()))
            i = rng.randrange(args.services)
            ips[i][rng.randrange(args.endpoints)] = endpoint_ip(i, rng.randrange(8), n + 1)
            t = time.monotonic()
            view.expect(translate.vip(cluster_ips[i], 80), backends(ips[i]), t)
            dv1.replace_namespaced_endpoint_slice(f"svc-{i}-x", "default",
                                                  slice_body(i, ips[i]))
        offered = args.changes / (time.monotonic() - start)
        deadline = time.monotonic() + 60
        while view.pending and time.monotonic() < deadline:
            time.sleep(0.01)
        lost = len(view.pending)
        cpu = {name: (t - cpu0[name]) * 1000 / max(1, args.changes)
               for name, t in _cpu(b).items()}
        status = _status(b)
        txns = status["services"]["transactions"] - txn0
        grown = db.stat().st_size - size0
        lat = view.latencies or [0.0]
        view.close()
        rss = _rss(b)
        restart = _restart(b)
        startup = _startup_cpu(b)
    print(f"services: {args.services} x {args.endpoints} endpoints, first full sync "
          f"{first_sync:.2f} s (watcher start included)")
    print(f"endpoint change -> VIP in NB at {offered:.0f} changes/s: p50 "
          f"{percentile(lat, 50):.1f} ms, p99 {percentile(lat, 99):.1f} ms, max {max(lat):.1f} ms"
          f" ({len(lat)} measured, {lost} never seen; target p99 <= 50 ms)")
    print("watcher:", json.dumps(status["services"]), file=sys.stderr)
    changes = max(1, args.changes)
    print(f"NB writes: {txns / changes:.2f} transactions and "
          f"{grown / changes:,.0f} bytes of NB log per change; watcher RSS {rss:.0f} MB")
    print("CPU per change (ms): " + ", ".join(f"{n} {v:.2f}" for n, v in cpu.items()))
    print("restart with NB already right: {wall:.2f} s to idle, watcher CPU {cpu:.2f} s "
          "(imports included), {desired} desired-state computations for {services} "
          "services, {transactions} NB transactions".format(**restart))
    print("start-up computation in process (ServiceHandler.startup() + first handling of "
          "every key, NB already right, best of 3 CPU): desired state once {once:.2f} s, "
          "twice as before (forget_startup) {twice:.2f} s".format(**startup))
    return 0


def _startup_cpu(b: Bench, rounds: int = 3) -> dict[str, float]:
    """The start-up work alone, same data, same run: the handler as the watcher builds it,
    with what start-up computed kept for the first handling, and forgotten (the old way).
    """
    from ovn_k8s.handlers.services import ServiceHandler  # noqa: PLC0415
    from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415

    nb = ovsdb.NbDb(b.lab.nb_remote, timeout=30)
    services = reflector_for(b.api, "services")
    handler = ServiceHandler(nb, services, None)
    slices = reflector_for(b.api, "endpointslices", handler=lambda etype, key, obj:
                           handler.slice_event(key, None if etype == "DELETED" else obj))
    handler.slices = slices
    best = {"once": float("inf"), "twice": float("inf")}
    try:
        for r in (services, slices):
            r.start()
            r.wait_synced(60)
        keys = services.keys()
        for _ in range(rounds):
            for mode in ("once", "twice"):
                t = time.process_time()
                handler.startup()
                if mode == "twice":
                    handler.forget_startup()
                for k in range(0, len(keys), 500):
                    handler.handle_batch(keys[k:k + 500])
                best[mode] = min(best[mode], time.process_time() - t)
        assert handler.counters["transactions"] == 0, "NB was right: nothing to write"
    finally:
        services.stop()
        slices.stop()
        nb.close()
    return best


def _cpu(b: Bench) -> dict[str, float]:
    """CPU seconds so far of the watcher and the OVN daemons sharing the machine."""
    from watcher import proc_cpu  # noqa: PLC0415

    pids = {"watcher": b.watcher_pid}
    for name, daemon in (("NB ovsdb-server", b.lab.central.get("nb")),
                         ("ovn-northd", b.lab.central.get("northd")),
                         ("ovn-controller", b.lab.nodes[0].daemons.get("ovn-controller"))):
        if daemon is not None:
            pids[name] = daemon.read_pid()
    return {name: proc_cpu(pid) for name, pid in pids.items() if pid}


def _restart(b: Bench) -> dict:
    """Stop the watcher, start it again with nothing changed; the start-up alone."""
    from watcher import proc_cpu  # noqa: PLC0415

    b.stop_watcher()
    time.sleep(1.0)
    t0 = b.start_watcher()  # returns once the daemon detached: start-up is done
    while True:
        status = _status(b)
        if all(q["depth"] == 0 and q.get("processing", 0) == 0
               for q in status["queues"].values()):
            break
        time.sleep(0.005)
    wall = time.monotonic() - t0
    svc = status["services"]
    return {"wall": wall, "cpu": proc_cpu(b.watcher_pid), "desired": svc.get("desired", "?"),
            "services": status["startup"]["services"], "transactions": svc["transactions"]}


def _status(b: Bench) -> dict:
    return json.loads(subprocess.run(
        ["ovs-appctl", "-t", str(b.base / "w.ctl"), "status"], capture_output=True, text=True,
        check=True).stdout)


def _rss(b: Bench) -> float:
    from watcher import proc_rss_mb  # noqa: PLC0415

    return proc_rss_mb(b.watcher_pid) if b.watcher_pid else 0.0


if __name__ == "__main__":
    sys.exit(main())
