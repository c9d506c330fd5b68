"""The acceptance suite: the sandbox as a user drives it, `tools/sandbox [--dir D] up|status|down`.

One sandbox (lab, API emulator, watcher, stand-in kubelets calling the CNI plugin, the
demo) serves the checks in order; the last ones break and stop it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client, config
from pyroute2 import IPRoute, netns

from ovn_k8s import ovsdb, translate
from ovn_k8s.sandbox.lab import Lab, lab_prefix, pid_running
from ovn_k8s.sandbox.lab import wait_until as wait_for
from ovn_k8s.sandbox.system import (
    DEMO_NAMESPACE,
    EXTERNAL_NET,
    GATEWAY_BRIDGE,
    NODE_PORT,
    Sandbox,
)

sys.path.insert(0, str(Path(__file__).parent))
from watcher_env import convergence_problems

TOP = Path(__file__).resolve().parents[2]
SANDBOX = TOP / "tools" / "sandbox"


def sandbox(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SANDBOX), "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids




@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (network namespaces and OVS daemons)")
    base = Path(tempfile.mkdtemp(prefix="ovn-k8s-e2e-"))
    yield base
    # Whatever the tests did, leave nothing running.
    for d in base.iterdir():
        Sandbox.load(d, out=lambda _: None).down()
        for pid in processes_naming(str(d)):
            os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def up(base: Path) -> tuple[Path, str]:
    directory = base / "sandbox"
    proc = sandbox(directory, "up", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return directory, proc.stdout


@pytest.fixture(scope="module")
def kube(up):
    api = config.new_client_from_config(str(up[0] / "kubeconfig"))
    yield client.CoreV1Api(api)
    api.close()


def pod_netns(directory: Path, v1, name: str) -> str:
    uid = v1.read_namespaced_pod(name, DEMO_NAMESPACE).metadata.uid
    return Sandbox.load(directory, out=lambda _: None).client_netns(uid)


def pod_ip(v1, name: str) -> str:
    return v1.read_namespaced_pod(name, DEMO_NAMESPACE).status.pod_ip


def ping(ns: str, ip: str, count: int = 2) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i",
                           "0.2", "-W", "2", ip], capture_output=True, check=False,
                          timeout=30).returncode == 0


def http_get(ns: str, ip: str, port: int = 80, timeout: float = 3.0) -> str | None:
    sock = netns.create_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect((ip, port))
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data.decode().split("\r\n\r\n", 1)[-1].strip()
    except OSError:
        return None
    finally:
        sock.close()




def test_up_prints_steps_and_the_table(up, kube, check) -> None:
    directory, out = up
    with check("up: every step reported with its time, the demo table printed"):
        for step in ("lab: OVN central and 2 nodes", "Kubernetes API emulator",
                     "ovn-k8s-watcher", "master-init and minion-init",
                     "nics-to-bridge eth1", f"gateway-init on node2 (bridge {GATEWAY_BRIDGE})",
                     "ovn-k8s-gateway-helper on node2",
                     "stand-in kubelets", "demo:"):
            assert step in out, f"step {step!r} not reported"
        assert "service web: ClusterIP" in out and "curl -s http://" in out
        assert (directory / "kubeconfig").stat().st_mode & 0o077 == 0, "token readable"
        pods = kube.list_namespaced_pod(DEMO_NAMESPACE).items
        assert {p.spec.node_name for p in pods} == {"node1", "node2"}
        assert all(p.status.phase == "Running" and p.status.pod_ip for p in pods)
        # The kubelets' CNI calls went through each node's CNI daemon.
        for node in ("node1", "node2"):
            status = subprocess.run(
                ["ovs-appctl", "-t", str(directory / f"cni-daemon-{node}.ctl"), "status"],
                capture_output=True, text=True, timeout=20, check=False)
            assert status.returncode == 0 and "ADD" in status.stdout, status.stdout


def test_pods_on_both_nodes_ping_each_other(up, kube, check) -> None:
    client_ns = pod_netns(up[0], kube, "client")
    with check("a pod on node1 pings pods on node1 and node2"):
        assert ping(client_ns, pod_ip(kube, "web-1")), "node1 -> node2 failed"
        assert ping(client_ns, pod_ip(kube, "web-0")), "node1 -> node1 failed"


def test_client_reaches_the_service_and_spreads(up, kube, check) -> None:
    client_ns = pod_netns(up[0], kube, "client")
    vip = kube.read_namespaced_service("web", DEMO_NAMESPACE).spec.cluster_ip
    with check("the client reaches the service VIP; connections spread over backends"):
        got = [http_get(client_ns, vip) for _ in range(15)]
        assert None not in got, got
        assert len({g.split(" at ")[0] for g in got}) >= 2, got


def test_node_port_from_the_external_host(up, check) -> None:
    lab = Lab.load(up[0])
    with check("the NodePort answers the external host through the gateway"):
        body = http_get(lab.pods["outside"].netns, EXTERNAL_NET[1], NODE_PORT)
        assert body is not None and body.startswith("hello from web-")


def test_pod_reaches_the_external_host(up, kube, check) -> None:
    client_ns = pod_netns(up[0], kube, "client")
    with check("a pod reaches the external host (which has no route to pods: SNAT)"):
        assert ping(client_ns, EXTERNAL_NET[0])


def test_gateway_node_shares_its_nic_through_the_helper(up, check) -> None:
    directory = up[0]
    lab = Lab.load(directory)
    gw = lab.node("node2")
    with check("the gateway node's host still uses its NIC; the helper keeps its flows"):
        # The address moved to the bridge and the host still reaches its network.
        assert EXTERNAL_NET[1] in gw.exec(["ip", "-4", "addr", "show", GATEWAY_BRIDGE]).stdout
        proc = gw.exec(["ping", "-n", "-c", "2", "-i", "0.2", "-W", "2", EXTERNAL_NET[0]])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        ctl = str(directory / "gateway-helper.ctl")
        status = subprocess.run(["ovs-appctl", "-t", ctl, "status"], capture_output=True,
                                text=True, timeout=20, check=False)
        assert status.returncode == 0, status.stderr
        got = json.loads(status.stdout)
        assert got["bridge"] == GATEWAY_BRIDGE and got["errors"] == 0 and got["flows"] > 0
        flows = subprocess.run(["ovs-appctl", "-t", ctl, "gateway/flows"], capture_output=True,
                               text=True, timeout=20, check=False).stdout
        assert f"tp_dst={NODE_PORT}" in flows, "the demo's NodePort has no helper flow"


def test_deleting_a_pod_removes_everything(up, kube, check) -> None:
    lab = Lab.load(up[0])
    name = "web-2"
    ns = pod_netns(up[0], kube, name)
    node = kube.read_namespaced_pod(name, DEMO_NAMESPACE).spec.node_name
    lsp = translate.lsp_name(DEMO_NAMESPACE, name)
    with check("deleting a pod removes its netns, OVS port, LSP and VIP backend"):
        kube.delete_namespaced_pod(name, DEMO_NAMESPACE, grace_period_seconds=0)
        wait_for(lambda: ns not in netns.listnetns(), what="the pod netns to go")
        wait_for(lambda: f"iface-id={lsp}" not in lab.node(node).vsctl(
            "--columns=external_ids", "list", "Interface"), what="the OVS port to go")
        sandbox_obj = Sandbox.load(up[0], out=lambda _: None)
        wait_for(lambda: len(sandbox_obj.service_backends()) == 2, what="2 backends")
        nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
        try:
            wait_for(lambda: translate.lsp_row(nb.api, lsp) is None, what="the LSP to go")
        finally:
            nb.close()


def test_watcher_and_nb_restart_in_a_pod_storm(up, kube, check) -> None:
    directory = up[0]
    sb = Sandbox.load(directory, out=lambda _: None)
    with check("watcher and NB restarted in a pod storm: all pods up, nothing stale"):
        for i in range(16):
            Sandbox.create_pod(kube, f"storm-{i}", ("node1", "node2")[i % 2])
            if i == 5:
                subprocess.run(["ovs-appctl", "-t", str(directory / "watcher.ctl"), "exit"],
                               capture_output=True, timeout=20, check=False)
                sb._start_watcher()
            if i == 10:
                sb.lab.restart_nb(down_for=0.5)
        wait_for(lambda: all(p.status.phase == "Running" for p in kube.list_namespaced_pod(
            DEMO_NAMESPACE).items), 120, "every pod running")
        nb = ovsdb.NbDb(sb.lab.nb_remote, timeout=10)
        try:
            wait_for(lambda: not convergence_problems(kube, nb), 60, "NB in step")
        finally:
            nb.close()
        client_ns = pod_netns(directory, kube, "client")
        for i in range(16):
            assert ping(client_ns, pod_ip(kube, f"storm-{i}"), 1), f"storm-{i} unreachable"


def test_status_then_down_leaves_nothing(up, check) -> None:
    directory = up[0]
    prefix = lab_prefix(directory)
    with check("status names a dead daemon; down leaves no process, netns or file"):
        status = sandbox(directory, "status")
        assert status.returncode == 0 and "all daemons running" in status.stdout
        lab = Lab.load(directory)
        os.kill(lab.node("node1").daemons["ovn-controller"].read_pid(), signal.SIGKILL)
        status = sandbox(directory, "status")
        assert status.returncode == 1 and "node1/ovn-controller" in status.stdout
        helper = int((directory / "gateway-helper.pid").read_text())
        assert pid_running(helper)
        down = sandbox(directory, "down")
        assert down.returncode == 0, down.stderr
        assert not pid_running(helper), "gateway helper left running"
        assert not directory.exists()
        assert processes_naming(str(directory)) == []
        assert [ns for ns in netns.listnetns() if ns.startswith(prefix)] == []
        again = sandbox(directory, "down")
        assert again.returncode == 0 and "nothing to stop" in again.stdout
        gone = sandbox(directory, "status")
        assert gone.returncode == 1 and "no sandbox" in gone.stdout


def test_bad_flags_change_nothing(base: Path) -> None:
    directory = base / "bad"
    bad = sandbox(directory, "up", "--nodes", "0")
    assert bad.returncode == 2
    assert "--nodes must be between 1 and 16" in bad.stderr
    assert not directory.exists()


# ---- a given cluster (`up --kubeconfig`) ----------------------------------------------


def this_machine_address() -> str:
    """An address of this machine outside any lab, where a cluster's API server listens."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for a in ipr.get_addr(family=socket.AF_INET):
            name = names.get(a["index"], "")
            if name != "lo" and not name.startswith("ok8s"):
                return a.get_attr("IFA_ADDRESS")
    raise AssertionError("this machine has no address besides loopback and labs")


@pytest.fixture(scope="module")
def cluster(base: Path) -> Iterator[tuple[subprocess.Popen, Path]]:
    """The API emulator in a process of its own, standing in for a real cluster."""
    home = Path(tempfile.mkdtemp(prefix="ovn-k8s-e2e-cluster-"))
    kubeconfig = home / "kubeconfig"
    with open(home / "apiserver.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--host",
             this_machine_address(), "--port", "0", "--kubeconfig", str(kubeconfig)],
            stdout=log, stderr=log, start_new_session=True)
    try:
        wait_for(kubeconfig.exists, 30, "the cluster's kubeconfig")
        yield proc, kubeconfig
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(home, ignore_errors=True)


def assert_nothing_left(directory: Path) -> None:
    assert not directory.exists()
    assert processes_naming(str(directory)) == []
    prefix = lab_prefix(directory)
    assert [ns for ns in netns.listnetns() if ns.startswith(prefix)] == []


def test_up_on_a_given_cluster_then_down_leaves_the_cluster(cluster, base, check) -> None:
    proc, kubeconfig = cluster
    api = config.new_client_from_config(str(kubeconfig))
    v1 = client.CoreV1Api(api)
    # What the cluster holds already: down must leave all of it, node1 included.
    v1.create_namespace({"metadata": {"name": "unrelated"}})
    v1.create_namespaced_config_map("unrelated", {"metadata": {"name": "keep"},
                                                  "data": {"a": "b"}})
    v1.create_node({"metadata": {"name": "node1", "labels": {"owner": "someone-else"}}})
    directory = base / "given"
    try:
        with check("up --kubeconfig: the demo runs on the given cluster, no emulator"):
            up = sandbox(directory, "up", "--kubeconfig", str(kubeconfig), timeout=300)
            assert up.returncode == 0, up.stdout + up.stderr
            assert "Kubernetes API emulator" not in up.stdout
            assert f"kubeconfig {kubeconfig}" in up.stdout
            assert not (directory / "kubeconfig").exists()
            assert not (directory / "apiserver.pid").exists()
            client_ns = pod_netns(directory, v1, "client")
            vip = v1.read_namespaced_service("web", DEMO_NAMESPACE).spec.cluster_ip
            body = http_get(client_ns, vip)
            assert body is not None and body.startswith("hello from web-"), body
            status = sandbox(directory, "status")
            assert status.returncode == 0 and "all daemons running" in status.stdout
        with check("down removes the sandbox's namespace and nodes there, nothing else"):
            down = sandbox(directory, "down")
            assert down.returncode == 0 and "warning" not in down.stdout, down.stdout
            assert proc.poll() is None, "down stopped the given API server"
            assert v1.read_namespaced_config_map("keep", "unrelated").data == {"a": "b"}
            nodes = v1.list_node().items
            assert [n.metadata.name for n in nodes] == ["node1"]
            assert nodes[0].metadata.labels["owner"] == "someone-else"
            assert DEMO_NAMESPACE not in {n.metadata.name for n in v1.list_namespace().items}
            assert_nothing_left(directory)
    finally:
        api.close()


def test_a_bad_kubeconfig_fails_first_and_leaves_nothing(cluster, base, tmp_path,
                                                          check) -> None:
    proc, kubeconfig = cluster
    good = yaml.safe_load(kubeconfig.read_text())
    server = good["clusters"][0]["cluster"]["server"]
    host = server.split("//")[1].rsplit(":", 1)[0]
    with socket.socket() as s:  # a port nothing listens on
        s.bind((host, 0))
        closed = s.getsockname()[1]
    secret = "not-a-token-0123456789abcdef"

    def variant(name: str, server_url: str, token: str) -> Path:
        conf = yaml.safe_load(kubeconfig.read_text())
        conf["clusters"][0]["cluster"]["server"] = server_url
        conf["users"][0]["user"]["token"] = token
        path = tmp_path / f"{name}.kubeconfig"
        path.write_text(yaml.safe_dump(conf))
        return path

    cases = {
        "no such file": Path("/nonexistent/kubeconfig"),
        "cannot reach the API server": variant("closed", f"http://{host}:{closed}", secret),
        "refused the kubeconfig's credentials (HTTP 401)": variant("token", server, secret),
    }
    with check("up --kubeconfig with a bad kubeconfig fails at its first step, leaves nothing"):
        for reason, path in cases.items():
            directory = base / "badkube"
            start = time.monotonic()
            bad = sandbox(directory, "up", "--kubeconfig", str(path), timeout=60)
            assert time.monotonic() - start < 20, f"{reason}: took too long"
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert f"ovn-k8s-sandbox: Kubernetes API: kubeconfig {path}: " in bad.stderr
            assert reason in bad.stderr, bad.stderr
            assert "lab:" not in bad.stdout, "went on past the check"
            assert secret not in bad.stdout + bad.stderr, "the token was printed"
            assert_nothing_left(directory)
        assert proc.poll() is None
