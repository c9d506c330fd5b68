"""Running ovn-k8s-watcher against the lab's OVN and the API emulator, for the e2e tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from ovn_k8s import annotations, ovsdb, translate
from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.lab import Lab
from ovn_k8s.sandbox.lab import pid_running as running
from ovn_k8s.sandbox.lab import wait_until as wait_for

BIN = Path(sys.executable).parent
CLUSTER = "10.144.0.0/16"
NAME = "ovn-k8s-watcher"




class WatcherProcess:
    """Start/stop the daemon with OVS-style flags in a private run directory."""

    def __init__(self, rundir: Path, nb_remote: str, kubeconfig: Path) -> None:
        self.rundir = rundir
        self.nb_remote = nb_remote
        self.kubeconfig = kubeconfig
        self.pid: int | None = None

    @property
    def ctl(self) -> str:
        return str(self.rundir / f"{NAME}.ctl")

    def start(self, *extra: str) -> None:
        proc = subprocess.run(
            [str(BIN / NAME), "--overlay", f"--cluster-ip-subnet={CLUSTER}",
             f"--nb={self.nb_remote}", f"--kubeconfig={self.kubeconfig}",
             f"--pidfile={self.rundir / (NAME + '.pid')}", "--detach",
             f"--unixctl={self.ctl}", f"--log-file={self.rundir / (NAME + '.log')}",
             "-vconsole:emer", "-vfile:info", "--timeout=20", *extra],
            capture_output=True, text=True, timeout=60, check=False,
            env=dict(os.environ, OVS_RUNDIR=str(self.rundir)))
        assert proc.returncode == 0, proc.stderr + self.log()
        self.pid = int((self.rundir / f"{NAME}.pid").read_text())

    def appctl(self, *args: str) -> str:
        proc = subprocess.run(["ovs-appctl", "-t", self.ctl, *args], capture_output=True,
                              text=True, timeout=20, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def status(self) -> dict:
        return json.loads(self.appctl("status"))

    def idle(self) -> bool:
        queues = self.status()["queues"]
        return all(q["depth"] == 0 and q.get("processing", 0) == 0 for q in queues.values())

    def stop(self) -> None:
        if self.pid is not None and running(self.pid):
            subprocess.run(["ovs-appctl", "-t", self.ctl, "exit"], capture_output=True,
                           timeout=20, check=False)
            wait_for(lambda: not running(self.pid), 10, "the watcher to exit")
        self.pid = None

    def kill(self) -> None:
        assert self.pid is not None
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not running(self.pid), 10, "the watcher to die")
        self.pid = None

    def log(self) -> str:
        path = self.rundir / f"{NAME}.log"
        return path.read_text() if path.exists() else ""




def watcher_env(
    nodes: int = 1, api_options: dict | None = None,
) -> Iterator[tuple[Lab, ApiServer, client.CoreV1Api, WatcherProcess, ovsdb.NbDb]]:
    """A lab (OVN central, ``nodes`` nodes), the API emulator (``ApiServer(**api_options)``)
    and a running watcher."""
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    base = Path(tempfile.mkdtemp(prefix="ovn-k8s-e2e-watcher-"))
    lab = Lab(base / "lab", nodes=nodes)
    srv = ApiServer(**(api_options or {}))
    watcher = None
    nb = None
    try:
        lab.up()
        srv.start()
        kubeconfig = Path(srv.write_kubeconfig(base / "kubeconfig"))
        watcher = WatcherProcess(base, lab.nb_remote, kubeconfig)
        watcher.start()
        nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
        yield lab, srv, client.CoreV1Api(srv.api_client()), watcher, nb
    finally:
        if watcher is not None:
            watcher.stop()
            # Shown by pytest when a test of the module failed.
            print("watcher log, warnings and errors:")
            print("\n".join(line for line in watcher.log().splitlines()
                            if "|WARN|" in line or "|ERR|" in line
                            or " WARN " in line or " ERR " in line)[-5000:])
        if nb is not None:
            nb.close()
        srv.stop()
        lab.down()
        if os.environ.get("OVN_K8S_E2E_KEEP"):
            print(f"kept {base} (OVN_K8S_E2E_KEEP)")
        else:
            shutil.rmtree(base, ignore_errors=True)


def make_node(v1: client.CoreV1Api, name: str) -> None:
    v1.create_node({"metadata": {"name": name}})


def make_pod(v1: client.CoreV1Api, name: str, node: str | None, *, namespace: str = "default",
             host_network: bool = False, annotations_: dict | None = None) -> None:
    spec: dict = {"containers": [{"name": "c", "image": "pause"}]}
    if node:
        spec["nodeName"] = node
    if host_network:
        spec["hostNetwork"] = True
    meta: dict = {"name": name}
    if annotations_:
        meta["annotations"] = annotations_
    v1.create_namespaced_pod(namespace, {"metadata": meta, "spec": spec})


def wire_pod(env, name: str, node: str):
    """What kubelet and the CNI plugin do, with the watcher's annotation."""
    lab, _, v1, _, _ = env
    make_pod(v1, name, node)
    wait_for(lambda: pod_network(v1, name) is not None, what=f"{name}'s annotation")
    net = pod_network(v1, name)
    uid = v1.read_namespaced_pod(name, "default").metadata.uid
    pod = lab.add_pod(node, name, str(net.ip), net.mac, gateway=str(net.gateway),
                      iface_id=translate.lsp_name("default", name), iface_id_ver=uid)
    lab.wait_port_up(translate.lsp_name("default", name))
    return pod


def lb_vips(nb: ovsdb.NbDb, lb: str) -> dict[str, str]:
    """The VIPs of a load balancer as NB holds them now ({} when it does not exist)."""
    nb.execute(nb.api.ls_list())  # a round trip: our replica has caught up
    row = next((r for r in nb.rows("Load_Balancer") if r.name == lb), None)
    return dict(row.vips) if row is not None else {}


def pod_network(v1: client.CoreV1Api, name: str, namespace: str = "default"):
    pod = v1.read_namespaced_pod(name, namespace)
    return annotations.pod_network(pod.metadata.annotations)


def lsp(nb: ovsdb.NbDb, name: str, namespace: str = "default"):
    """The port as this test's replica holds it now (it may trail NB by a moment)."""
    port = translate.lsp_name(namespace, name)
    return translate.lookup(nb, [port])[0].get(port)


def switch_ports(nb: ovsdb.NbDb, node: str) -> set[str]:
    sw = next((s for s in nb.rows("Logical_Switch") if s.name == node), None)
    return {p.name for p in sw.ports} if sw is not None else set()


def node_subnet(v1: client.CoreV1Api, node: str):
    return annotations.node_subnet(v1.read_node(node).metadata.annotations)


def settle(nb: ovsdb.NbDb, quiet: float = 1.0) -> int:
    """Wait until NB stops changing; returns the replica's change counter."""
    seqno = nb.api.idl.change_seqno
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        time.sleep(quiet)
        nb.execute(nb.api.ls_list())
        if nb.api.idl.change_seqno == seqno:
            return seqno
        seqno = nb.api.idl.change_seqno
    raise AssertionError("NB never settled")


def convergence_problems(v1: client.CoreV1Api, nb: ovsdb.NbDb) -> list[str]:
    """What keeps NB and the cluster from being in step (empty when they are).

    Every scheduled, non-hostNetwork, non-terminal pod has exactly one port, for its
    UID, whose address is the one in its annotation; no address is used twice; no
    port is left for a pod that is gone.
    """
    nb.execute(nb.api.ls_list())
    problems = []
    ports = translate.owned_pod_ports(nb)
    wired = {}
    for pod in v1.list_pod_for_all_namespaces().items:
        if pod.spec.node_name and not pod.spec.host_network and pod.status.phase not in (
                "Succeeded", "Failed"):
            wired[f"{pod.metadata.namespace}/{pod.metadata.name}"] = pod
    for key in sorted(set(ports) - set(wired)):
        problems.append(f"stale port for {key}")
    seen: dict[str, str] = {}
    for key, pod in sorted(wired.items()):
        row = ports.get(key)
        if row is None:
            problems.append(f"no port for {key}")
            continue
        if row.external_ids.get(translate.UID) != pod.metadata.uid:
            problems.append(f"port of {key} belongs to another UID")
        try:
            net = annotations.pod_network(pod.metadata.annotations)
        except annotations.AnnotationError as e:
            problems.append(f"{key}: {e}")
            continue
        if net is None:
            problems.append(f"no annotation on {key}")
            continue
        if row.addresses != [f"{net.mac} {net.ip.ip}"]:
            problems.append(f"{key}: port {row.addresses} != annotation {net.ip}")
        other = seen.setdefault(str(net.ip.ip), key)
        if other != key:
            problems.append(f"{key} and {other} share {net.ip.ip}")
    return problems


def wait_converged(v1: client.CoreV1Api, nb: ovsdb.NbDb, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while problems := convergence_problems(v1, nb):
        if time.monotonic() > deadline:
            raise AssertionError(f"{len(problems)} problems, e.g. {problems[:5]}")
        time.sleep(0.2)


def restart_writes_nothing(watcher: WatcherProcess, nb: ovsdb.NbDb) -> bool:
    """Stop the watcher, let NB settle, start it again: True if it wrote nothing.

    Compared by the replica's change counter: once northd has settled, every change
    NB sends us is the watcher's.
    """
    watcher.stop()
    seqno = settle(nb)
    watcher.start()
    wait_for(watcher.idle, what="the restarted watcher to settle")
    time.sleep(0.5)  # a write would reach our replica within this
    nb.execute(nb.api.ls_list())
    return nb.api.idl.change_seqno == seqno
