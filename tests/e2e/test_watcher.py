"""ovn-k8s-watcher as an operator runs it: a daemon against the lab's OVN and the API emulator."""

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

from ovn_k8s import annotations, ovsdb, topology, translate
from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.lab import Lab

BIN = Path(sys.executable).parent
CLUSTER = "10.144.0.0/16"
NAME = "ovn-k8s-watcher"


def wait_for(condition, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


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


def running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture(scope="module")
def env() -> Iterator[tuple[Lab, ApiServer, client.CoreV1Api, WatcherProcess, ovsdb.NbDb]]:
    if os.geteuid() != 0:
        pytest.skip("the lab needs root")
    base = Path(tempfile.mkdtemp(prefix="ovn-k8s-e2e-watcher-"))
    lab = Lab(base / "lab", nodes=1)
    srv = ApiServer()
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
        if nb is not None:
            nb.close()
        srv.stop()
        lab.down()
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


def pod_network(v1: client.CoreV1Api, name: str, namespace: str = "default"):
    pod = v1.read_namespaced_pod(name, namespace)
    return annotations.pod_network(pod.metadata.annotations)


def lsp(nb: ovsdb.NbDb, name: str, namespace: str = "default"):
    nb.execute(nb.api.ls_list())  # a round trip: our replica has caught up
    return translate.lsp_row(nb.api, translate.lsp_name(namespace, name))


def switch_ports(nb: ovsdb.NbDb, node: str) -> set[str]:
    sw = next((s for s in nb.rows("Logical_Switch") if s.name == node), None)
    return {p.name for p in sw.ports} if sw is not None else set()


def node_subnet(v1: client.CoreV1Api, node: str):
    return annotations.node_subnet(v1.read_node(node).metadata.annotations)


def test_nodes_get_subnets_and_switches(env):
    _, _, v1, _, nb = env
    for node in ("node1", "node2"):
        make_node(v1, node)
    wait_for(lambda: all(node_subnet(v1, n) for n in ("node1", "node2")), what="subnets")
    subnets = {n: node_subnet(v1, n) for n in ("node1", "node2")}
    assert subnets["node1"] != subnets["node2"]
    for node, subnet in subnets.items():
        assert str(subnet).startswith("10.144.") and subnet.prefixlen == 24
        wait_for(lambda n=node: any(s.name == n for s in nb.rows("Logical_Switch")),
                 what=f"switch {node}")
        sw = next(s for s in nb.rows("Logical_Switch") if s.name == node)
        assert sw.other_config["subnet"] == str(subnet)
        assert sw.external_ids[topology.OWNER] == node


def test_pods_get_ports_and_annotations(env):
    _, _, v1, watcher, nb = env
    names = [f"web-{i}" for i in range(50)]
    for i, name in enumerate(names):
        make_pod(v1, name, "node1" if i % 2 else "node2")
    make_pod(v1, "host-agent", "node1", host_network=True)
    make_pod(v1, "pending", None)
    wait_for(lambda: all(lsp(nb, n) is not None for n in names), 30, "50 ports")
    wait_for(lambda: all(pod_network(v1, n) is not None for n in names), 30, "50 annotations")
    ips = set()
    for i, name in enumerate(names):
        node = "node1" if i % 2 else "node2"
        net = pod_network(v1, name)
        row = lsp(nb, name)
        assert net.ip.ip in node_subnet(v1, node)
        assert row.addresses == [f"{net.mac} {net.ip.ip}"] == row.port_security
        assert row.options["requested-chassis"] == node
        assert row.external_ids[translate.UID] == v1.read_namespaced_pod(name, "default") \
            .metadata.uid
        assert f"default_{name}" in switch_ports(nb, node)
        assert net.gateway == node_subnet(v1, node).network + 1
        ips.add(net.ip.ip)
    assert len(ips) == 50, "duplicate pod IPs"
    assert lsp(nb, "host-agent") is None and pod_network(v1, "host-agent") is None
    assert lsp(nb, "pending") is None
    assert watcher.status()["pods"]["transactions"] >= 1


def test_deleted_pods_lose_ports_and_ips_are_reused(env):
    _, _, v1, _, nb = env
    freed = {pod_network(v1, f"web-{i}").ip.ip for i in range(0, 10)}
    for i in range(0, 10):
        v1.delete_namespaced_pod(f"web-{i}", "default", grace_period_seconds=0)
    wait_for(lambda: all(lsp(nb, f"web-{i}") is None for i in range(10)), what="ports gone")
    for i in range(10):
        make_pod(v1, f"new-{i}", "node1" if i % 2 else "node2")
    wait_for(lambda: all(pod_network(v1, f"new-{i}") for i in range(10)), what="annotations")
    reused = {pod_network(v1, f"new-{i}").ip.ip for i in range(10)}
    assert reused == freed


def test_recreated_pod_gets_a_port_of_its_own(env):
    _, _, v1, _, nb = env
    make_pod(v1, "db-0", "node1")
    wait_for(lambda: pod_network(v1, "db-0") is not None, what="db-0")
    old_uid = lsp(nb, "db-0").external_ids[translate.UID]
    v1.delete_namespaced_pod("db-0", "default", grace_period_seconds=0)
    make_pod(v1, "db-0", "node2")
    new_uid = v1.read_namespaced_pod("db-0", "default").metadata.uid
    wait_for(lambda: (lsp(nb, "db-0") is not None
                      and lsp(nb, "db-0").external_ids[translate.UID] == new_uid), what="db-0")
    assert new_uid != old_uid
    assert lsp(nb, "db-0").options["requested-chassis"] == "node2"
    assert "default_db-0" not in switch_ports(nb, "node1")
    wait_for(lambda: pod_network(v1, "db-0") is not None
             and pod_network(v1, "db-0").ip.ip in node_subnet(v1, "node2"), what="new address")


def test_bad_data_is_reported_and_does_not_block(env):
    _, _, v1, watcher, nb = env
    make_pod(v1, "garbled", "node1", annotations_={annotations.POD_NETWORK: "{not json"})
    make_pod(v1, "lost", "no-such-node")
    make_pod(v1, "fine", "node2")
    wait_for(lambda: pod_network(v1, "fine") is not None, what="the good pod")
    # A malformed annotation written by someone else is replaced by a good one.
    wait_for(lambda: lsp(nb, "garbled") is not None, what="garbled's port")
    assert pod_network(v1, "garbled").ip.ip in node_subnet(v1, "node1")
    assert lsp(nb, "lost") is None
    wait_for(lambda: "pod default/lost: node no-such-node has no subnet" in watcher.log(),
             what="the unknown node reported")
    time.sleep(0.5)
    assert watcher.log().count("pod default/lost: node no-such-node has no subnet") == 1


def test_restart_with_nothing_changed_writes_nothing(env):
    _, _, _, watcher, nb = env
    wait_for(watcher.idle, what="the watcher to settle")
    ports = {p.name: (p.addresses, dict(p.external_ids)) for p in nb.rows("Logical_Switch_Port")}
    watcher.stop()
    # NB is quiet now (northd settled): every change from here on is the watcher's.
    seqno = settle(nb)
    watcher.start()
    wait_for(watcher.idle, what="the restarted watcher to settle")
    time.sleep(0.5)
    nb.execute(nb.api.ls_list())
    assert nb.api.idl.change_seqno == seqno, "the restarted watcher wrote to NB"
    after = {p.name: (p.addresses, dict(p.external_ids)) for p in nb.rows("Logical_Switch_Port")}
    assert after == ports
    assert watcher.status()["pods"]["transactions"] == 0


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


def test_node_deleted_removes_its_switch(env):
    _, _, v1, _, nb = env
    make_node(v1, "node3")
    wait_for(lambda: any(s.name == "node3" for s in nb.rows("Logical_Switch")), what="node3")
    v1.delete_node("node3")
    wait_for(lambda: not any(s.name == "node3" for s in nb.rows("Logical_Switch")),
             what="node3's switch gone")
    assert not any(p.name == "rtos-node3" for p in nb.rows("Logical_Router_Port"))
