"""ovn-k8s-cni-overlay on the lab, run as kubelet runs it: the bin/ launcher, inside a
node's netns, CNI variables in the environment and the network config on stdin.

Pods live in the Kubernetes API emulator with their ``ovn`` annotation; their logical
ports are made here, on a switch of this module's own (everything is named ``cni-*``
and on 10.244.77.0/24, so other tests sharing the session lab are not disturbed).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from kubernetes import client
from pyroute2 import IPRoute, netns

from ovn_k8s import ovsdb
from ovn_k8s.cni import install as cni_install
from ovn_k8s.cni.links import host_veth_name
from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.lab import Lab

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]
PLUGIN = str(REPO / "bin" / "ovn-k8s-cni-overlay")
SUBNET = ipaddress.ip_network("10.244.77.0/24")
GATEWAY = "10.244.77.1"
SERVICE_NET = "10.96.0.0/16"
MTU = 1400


@dataclass
class Cluster:
    lab: Lab
    srv: ApiServer
    v1: client.CoreV1Api
    nb: ovsdb.NbDb
    kubeconfig: str
    log_file: str
    namespace: str
    switch: str
    next_ip: int = 10
    netns: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def cluster(lab: Lab, tmp_path_factory) -> Iterator[Cluster]:
    tag = secrets.token_hex(3)
    d = tmp_path_factory.mktemp("cni")
    srv = ApiServer(host=lab.connect_host())
    srv.start()
    nb = ovsdb.connect_nb(lab.nb_remote, timeout=10.0)
    c = Cluster(lab, srv, client.CoreV1Api(srv.api_client()), nb,
                srv.write_kubeconfig(d / "kubeconfig"), str(d / "cni.log"),
                f"cni-{tag}", f"cni-sw-{tag}")
    try:
        c.v1.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                               "metadata": {"name": c.namespace}})
        nb.execute(nb.api.ls_add(c.switch))
        yield c
    finally:
        for name in c.netns:
            if name in netns.listnetns():
                netns.remove(name)
        nb.execute(nb.api.ls_del(c.switch, if_exists=True))
        nb.close()
        srv.stop()


@dataclass
class Pod:
    name: str
    node: str
    netns: str
    ip: str
    mac: str
    uid: str
    container_id: str
    ifname: str = "eth0"

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def host_end(self) -> str:
        return host_veth_name(self.container_id, self.ifname)

    @property
    def address(self) -> str:
        return self.ip.split("/")[0]


def annotation(ip: str, mac: str) -> str:
    return json.dumps({"ip_address": ip, "mac_address": mac, "gateway_ip": GATEWAY,
                       "routes": [{"dest": SERVICE_NET, "nextHop": GATEWAY}]})


def new_pod(c: Cluster, node: str, *, annotate: bool = True, lsp: bool = True) -> Pod:
    """A pod object (annotated or not), its LSP, and an empty netns as the runtime makes it."""
    c.next_ip += 1
    ip = SUBNET.network_address + c.next_ip
    mac = "0a:58:" + ":".join(f"{b:02x}" for b in ip.packed)
    name = f"pod-{c.next_ip}"
    meta: dict = {"name": name, "namespace": c.namespace}
    if annotate:
        meta["annotations"] = {"ovn": annotation(f"{ip}/24", mac)}
    created = c.v1.create_namespaced_pod(c.namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]}})
    # The lab's prefix: a lab torn down after a crash takes these netns with it.
    pod = Pod(name, node, f"{c.lab.prefix}-cni-{secrets.token_hex(4)}", f"{ip}/24", mac,
              created.metadata.uid, secrets.token_hex(32))
    c.netns.append(pod.netns)
    netns.create(pod.netns)
    if lsp:
        c.nb.execute(c.nb.api.lsp_add(c.switch, f"{c.namespace}_{name}",
                                      addresses=[f"{mac} {ip}"]))
    return pod


def config(c: Cluster, version: str = "1.0.0", **extra: object) -> dict:
    return {"cniVersion": version, "name": "ovn-kubernetes", "type": "ovn-k8s-cni-overlay",
            "mtu": MTU, "kubeconfig": c.kubeconfig, "logFile": c.log_file,
            "annotationTimeout": 10, **extra}


def cni(c: Cluster, pod: Pod, command: str, conf: dict | None = None,
        env: dict[str, str | None] | None = None, stdin: str | None = None,
        plugin: str | None = None) -> tuple[int, dict | None, str]:
    """Run the plugin (default: PLUGIN, as it is when called) on the pod's node:
    (exit status, JSON on stdout or None, stderr)."""
    variables: dict[str, str | None] = {
        "CNI_COMMAND": command, "CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.path,
        "CNI_IFNAME": pod.ifname, "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={c.namespace};K8S_POD_NAME={pod.name};"
                    f"K8S_POD_INFRA_CONTAINER_ID={pod.container_id};K8S_POD_UID={pod.uid}",
        **(env or {}),
    }
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("CNI_")}
    try:
        proc = c.lab.node(pod.node).exec(
            [plugin or PLUGIN], timeout=60,
            env={k: v for k, v in variables.items() if v is not None},
            input=stdin if stdin is not None else json.dumps(conf or config(c)))
    finally:
        os.environ.update(saved)
    out = proc.stdout.strip()
    return proc.returncode, json.loads(out) if out else None, proc.stderr


def add(c: Cluster, pod: Pod, **extra: object) -> dict:
    status, result, err = cni(c, pod, "ADD", config(c, **extra))
    assert status == 0, (result, err)
    assert result is not None
    return result


def delete(c: Cluster, pod: Pod) -> None:
    status, out, err = cni(c, pod, "DEL")
    assert (status, out) == (0, None), err


def node_links(c: Cluster, node: str) -> set[str]:
    with IPRoute(netns=c.lab.node(node).netns) as ipr:
        return {link.get("ifname") for link in ipr.link("dump")}


def pod_links(pod: Pod) -> set[str]:
    with IPRoute(netns=pod.netns) as ipr:
        return {link.get("ifname") for link in ipr.link("dump")}


def ovs_ports(c: Cluster, node: str) -> set[str]:
    return set(c.lab.node(node).vsctl("list-ports", "br-int").split())


def iface_ids(c: Cluster, node: str, iface: str) -> dict[str, str]:
    out = c.lab.node(node).vsctl("--format=json", "--columns=external_ids", "list",
                                 "Interface", iface)
    return dict(json.loads(out)["data"][0][0][1])


def assert_pod_wired(c: Cluster, pod: Pod, result: dict, version: str = "1.0.0") -> None:
    """The result says what the annotation says, and the netns and OVS agree."""
    gw = {"gateway": GATEWAY}
    ip_entry = {**({"version": "4"} if version != "1.0.0" else {}), "address": pod.ip, **gw,
                "interface": 1}
    assert result["cniVersion"] == version
    assert result["interfaces"][1] == {"name": "eth0", "mac": pod.mac, "sandbox": pod.path}
    assert result["interfaces"][0]["name"] == pod.host_end
    assert result["ips"] == [ip_entry]
    assert result["routes"] == [{"dst": "0.0.0.0/0", "gw": GATEWAY},
                                {"dst": SERVICE_NET, "gw": GATEWAY}]
    with IPRoute(netns=pod.netns) as ipr:
        (idx,) = ipr.link_lookup(ifname="eth0")
        link = ipr.get_links(idx)[0]
        assert link.get_attr("IFLA_ADDRESS") == pod.mac
        assert link.get_attr("IFLA_MTU") == MTU
        assert link.get_attr("IFLA_OPERSTATE") in ("UP", "UNKNOWN", "LOWERLAYERDOWN")
        addrs = {f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                 for a in ipr.get_addr(index=idx, family=socket.AF_INET)}
        assert addrs == {pod.ip}
        routes = {(r.get_attr("RTA_DST") or "default", r.get_attr("RTA_GATEWAY"))
                  for r in ipr.get_routes(family=socket.AF_INET, table=254)}
        assert ("default", GATEWAY) in routes
        assert ("10.96.0.0", GATEWAY) in routes
        lo = ipr.get_links(ipr.link_lookup(ifname="lo")[0])[0]
        assert lo["flags"] & 1, "lo is up"
    ids = iface_ids(c, pod.node, pod.host_end)
    assert ids["iface-id"] == f"{c.namespace}_{pod.name}"
    assert ids["iface-id-ver"] == pod.uid
    assert ids["attached_mac"] == pod.mac
    assert ids["ip_address"] == pod.ip
    assert ids["sandbox"] == pod.container_id
    assert pod.host_end in ovs_ports(c, pod.node)


def assert_gone(c: Cluster, pod: Pod, veth_within: float = 2.0) -> None:
    """The OVS port is gone when DEL has answered; the veth pair at once, or (the node
    daemon answers before the kernel's ~15 ms deletion is over) within ``veth_within``."""
    assert pod.host_end not in ovs_ports(c, pod.node)
    deadline = time.monotonic() + veth_within
    while pod.host_end in node_links(c, pod.node) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pod.host_end not in node_links(c, pod.node)
    if pod.netns in netns.listnetns():
        assert pod_links(pod) <= {"lo"}


# ----------------------------------------------------------- packets from Python


def icmp_ping(ns: str, dst: str, timeout: float = 2.0) -> bool:
    """One ICMP echo from netns ``ns``; True if ``dst`` answered."""
    sock = netns.create_socket(ns, socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident, seq = os.getpid() & 0xFFFF, secrets.randbelow(0xFFFF)
    body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"ovn-k8s-cni"
    csum = _checksum(body)
    packet = body[:2] + struct.pack("!H", csum) + body[4:]
    deadline = time.monotonic() + timeout
    try:
        sock.sendto(packet, (dst, 0))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
            if src == dst and kind == 0 and (rid, rseq) == (ident, seq):
                return True
        return False
    finally:
        sock.close()


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def wait_ping(ns: str, dst: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not icmp_ping(ns, dst, 1.0):
        assert time.monotonic() < deadline, f"{dst} does not answer pings from {ns}"


@contextlib.contextmanager
def echo_server(ns: str, port: int, family: int = socket.AF_INET) -> Iterator[list[str]]:
    """A TCP echo server in ``ns``; yields the list of peers it accepted."""
    srv = netns.create_socket(ns, family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    srv.listen(4)
    srv.settimeout(0.2)
    peers: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, peer = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            peers.append(peer[0])
            conn.settimeout(5)
            with conn:
                while data := conn.recv(4096):
                    conn.sendall(data)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield peers
    finally:
        stop.set()
        t.join(10)
        srv.close()


# --------------------------------------------------------------------- tests


def test_add_on_two_nodes_then_ping_tcp_and_delete_twice(cluster):
    c = cluster
    a = new_pod(c, "node1")
    b = new_pod(c, "node2")
    # The plugin itself waits for ovn-controller on a; b is waited for from outside.
    ra = add(c, a, waitOvnInstalled=True, ovnInstalledTimeout=20)
    assert iface_ids(c, "node1", a.host_end).get("ovn-installed") == "true"
    rb = add(c, b)
    assert_pod_wired(c, a, ra)
    assert_pod_wired(c, b, rb)
    c.lab.node("node2").vsctl("wait-until", "Interface", b.host_end,
                              "external_ids:ovn-installed=true", timeout=20)
    c.lab.sync(timeout=20)
    for name, node in (("a", "node1"), ("b", "node2")):
        pod = a if name == "a" else b
        up = c.lab.nbctl("get", "Logical_Switch_Port", f"{c.namespace}_{pod.name}", "up")
        assert up.strip() == "true", name
        chassis = c.lab.sbctl("--bare", "--columns=chassis", "find", "Port_Binding",
                              f"logical_port={c.namespace}_{pod.name}").strip()
        assert c.lab.sbctl("get", "Chassis", chassis, "name").strip().strip('"') == node

    wait_ping(a.netns, b.address)
    assert icmp_ping(b.netns, a.address)
    assert not icmp_ping(a.netns, str(SUBNET.network_address + 250), 0.5)  # nobody there

    with echo_server(b.netns, 8080) as peers:
        conn = netns.create_socket(a.netns, socket.AF_INET, socket.SOCK_STREAM)
        conn.settimeout(5)
        with conn:
            conn.connect((b.address, 8080))
            # Held open across several exchanges, with larger segments than one MTU.
            for i in range(5):
                payload = f"{i}:".encode() + os.urandom(3000).hex().encode()
                conn.sendall(payload)
                got = b""
                while len(got) < len(payload):
                    chunk = conn.recv(65536)
                    assert chunk, "connection closed early"
                    got += chunk
                assert got == payload
        assert peers == [a.address]

    delete(c, a)
    assert_gone(c, a)
    delete(c, a)  # again: nothing left to remove is still success
    # The runtime may remove the netns before calling DEL: the port must still go.
    netns.remove(b.netns)
    delete(c, b)
    assert_gone(c, b)
    delete(c, b)


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_result_per_spec_version(cluster, version):
    c = cluster
    pod = new_pod(c, "node1")
    status, result, err = cni(c, pod, "ADD", config(c, version))
    assert status == 0, err
    assert_pod_wired(c, pod, result, version)
    assert set(result) == {"cniVersion", "interfaces", "ips", "routes"}
    delete(c, pod)
    assert_gone(c, pod)


def test_check_passes_then_names_what_changed(cluster):
    c = cluster
    pod = new_pod(c, "node2")
    result = add(c, pod)
    status, out, err = cni(c, pod, "CHECK", config(c, prevResult=result))
    assert (status, out) == (0, None), err

    with IPRoute(netns=pod.netns) as ipr:
        (idx,) = ipr.link_lookup(ifname="eth0")
        ipr.addr("del", index=idx, address=pod.address, prefixlen=24)
        ipr.addr("add", index=idx, address="10.244.77.250", prefixlen=24)
    status, out, _ = cni(c, pod, "CHECK", config(c, prevResult=result))
    assert status == 1 and out["code"] == 100
    assert f"eth0 lacks address(es) {pod.ip}" in out["msg"]
    assert "unexpected address(es) 10.244.77.250/24" in out["msg"]

    c.lab.node("node2").vsctl("remove", "Interface", pod.host_end, "external_ids", "iface-id")
    status, out, _ = cni(c, pod, "CHECK", config(c, prevResult=result))
    assert status == 1 and "external_ids:iface-id is None" in out["msg"]
    delete(c, pod)
    assert_gone(c, pod)


def test_annotation_arriving_late(cluster):
    c = cluster
    pod = new_pod(c, "node1", annotate=False)
    done: dict = {}
    runner = threading.Thread(target=lambda: done.setdefault("r", cni(c, pod, "ADD")))
    runner.start()
    try:
        # Let the plugin start and find no annotation; it must still be waiting.
        time.sleep(1.5)
        assert runner.is_alive(), done.get("r")
        c.v1.patch_namespaced_pod(pod.name, c.namespace, {"metadata": {"annotations": {
            "ovn": annotation(pod.ip, pod.mac)}}})
    finally:
        runner.join(60)
    status, result, err = done["r"]
    assert status == 0, (result, err)
    assert_pod_wired(c, pod, result)
    delete(c, pod)


def test_no_annotation_times_out_and_leaves_nothing(cluster):
    c = cluster
    pod = new_pod(c, "node2", annotate=False)
    links_before, ports_before = node_links(c, "node2"), ovs_ports(c, "node2")
    start = time.monotonic()
    status, out, _ = cni(c, pod, "ADD", config(c, annotationTimeout=1))
    assert time.monotonic() - start < 15
    assert status == 1 and out["code"] == 11
    assert f"pod {c.namespace}/{pod.name}: no 'ovn' annotation after 1s" in out["msg"]
    assert "has no 'ovn' annotation yet" in out["msg"]
    assert node_links(c, "node2") == links_before
    assert ovs_ports(c, "node2") == ports_before
    assert pod_links(pod) == {"lo"}
    token = c.srv.token
    assert token not in Path(c.log_file).read_text()


def test_failed_add_cleans_up(cluster):
    """The interface name is taken in the pod: the veth fails, nothing stays behind."""
    c = cluster
    pod = new_pod(c, "node1")
    with IPRoute(netns=pod.netns) as ipr:
        ipr.link("add", ifname="eth0", kind="veth", peer={"ifname": "eth0p"})
    links_before, ports_before = node_links(c, "node1"), ovs_ports(c, "node1")
    status, out, _ = cni(c, pod, "ADD")
    assert status == 1 and "eth0 already exists" in out["msg"]
    assert node_links(c, "node1") == links_before
    assert ovs_ports(c, "node1") == ports_before
    assert pod_links(pod) == {"lo", "eth0", "eth0p"}  # theirs, untouched


def test_add_again_takes_over_its_own_leftovers(cluster):
    """An ADD interrupted after the port was made, then retried for the same container
    and interface: the retry replaces the veth, keeps the one OVS port (its interface
    gets our keys again; keys others set stay, as with ovs-vsctl set) and wires the pod."""
    c = cluster
    pod = new_pod(c, "node1")
    add(c, pod)
    node = c.lab.node("node1")
    node.vsctl("set", "Interface", pod.host_end, "external_ids:iface-id=stale",
               "external_ids:other=kept")
    assert_pod_wired(c, pod, add(c, pod))
    assert len(node.vsctl("--bare", "--columns=_uuid", "find", "Port",
                          f"name={pod.host_end}").split()) == 1
    assert iface_ids(c, "node1", pod.host_end)["other"] == "kept"
    delete(c, pod)
    assert_gone(c, pod)


def _snapshot(c: Cluster, pod: Pod) -> tuple:
    lsps = c.lab.nbctl("--bare", "--columns=name", "list", "Logical_Switch_Port").split()
    ifaces = c.lab.node(pod.node).vsctl("--bare", "--columns=name,external_ids", "list",
                                        "Interface")
    return node_links(c, pod.node), pod_links(pod), sorted(lsps), ifaces


def test_bad_inputs_change_nothing(cluster, tmp_path):
    c = cluster
    pod = new_pod(c, "node1")
    not_netns = tmp_path / "notns"
    not_netns.write_text("")
    cases = [
        ("no CNI_COMMAND", {"CNI_COMMAND": None}, None, 4),
        ("no CNI_CONTAINERID", {"CNI_CONTAINERID": None}, None, 4),
        ("no CNI_NETNS", {"CNI_NETNS": None}, None, 4),
        ("no CNI_ARGS", {"CNI_ARGS": None}, None, 4),
        ("bad JSON", {}, '{"cniVersion": "1.0.0", ', 6),
        ("bad ifname", {"CNI_IFNAME": "eth0:bad"}, None, 4),
        ("long ifname", {"CNI_IFNAME": "e" * 16}, None, 4),
        ("netns is a plain file", {"CNI_NETNS": str(not_netns)}, None, 4),
        ("netns is a pid ns", {"CNI_NETNS": "/proc/self/ns/pid"}, None, 4),
        ("unknown version", {}, json.dumps(config(c, "0.9.9")), 1),
        ("config not an object", {}, "[1, 2]", 7),
        ("bad mtu", {}, json.dumps(config(c, mtu="big")), 7),
    ]
    before = _snapshot(c, pod)
    for why, env, stdin, code in cases:
        status, out, err = cni(c, pod, "ADD", env=env, stdin=stdin)
        assert status != 0, why
        assert out is not None and out["code"] == code, (why, out, err)
        assert out["msg"], why
    assert _snapshot(c, pod) == before


def test_secondary_interface_gets_no_default_route(cluster):
    """As a Multus secondary network (net1): the annotation's routes, not a default one."""
    c = cluster
    pod = new_pod(c, "node1")
    pod.ifname = "net1"
    result = add(c, pod)
    assert result["interfaces"][1]["name"] == "net1"
    assert result["routes"] == [{"dst": SERVICE_NET, "gw": GATEWAY}]
    with IPRoute(netns=pod.netns) as ipr:
        dsts = {r.get_attr("RTA_DST") for r in ipr.get_routes(family=socket.AF_INET, table=254)}
    assert None not in dsts and "10.96.0.0" in dsts
    status, out, err = cni(c, pod, "CHECK", config(c, prevResult=result))
    assert (status, out) == (0, None), err
    delete(c, pod)
    assert_gone(c, pod)


def test_parallel_adds_on_one_node(cluster):
    """Kubelet starts several pods at once: separate processes, one OVS database."""
    c = cluster
    pods = [new_pod(c, "node2") for _ in range(4)]
    results: dict[str, tuple] = {}
    threads = [threading.Thread(target=lambda p=p: results.setdefault(p.name, cni(c, p, "ADD")))
               for p in pods]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    for pod in pods:
        status, result, err = results[pod.name]
        assert status == 0, err
        assert_pod_wired(c, pod, result)
    for pod in pods:
        delete(c, pod)
        assert_gone(c, pod)


@pytest.mark.parametrize("front", ["c", "python"])
def test_installed_plugin_with_the_installed_conflist(cluster, tmp_path, front):
    """As minion-init installs it (ovn_k8s.cni.install), with the conflist's entry as a
    runtime hands it over; no kubeconfig there, so the lineage's external_ids are used.
    No daemon here: either front has the Python plugin do the work in-process."""
    c = cluster
    pod = new_pod(c, "node1")
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    cni_install.install(conf_dir, bin_dir, MTU, front=front)
    conflist = json.loads((conf_dir / cni_install.CONFLIST).read_text())
    # libcni gives each entry the list's cniVersion and name.
    entry = {**conflist["plugins"][0], "cniVersion": conflist["cniVersion"],
             "name": conflist["name"]}
    node = c.lab.node("node1")
    node.vsctl("set", "Open_vSwitch", ".",
               f"external_ids:k8s-api-server={c.srv.url.removeprefix('http://')}",
               f"external_ids:k8s-api-token={c.srv.token}")
    try:
        status, result, err = cni(c, pod, "ADD", entry,
                                  plugin=str(bin_dir / cni_install.PLUGIN))
    finally:
        node.vsctl("remove", "Open_vSwitch", ".", "external_ids", "k8s-api-server",
                   "k8s-api-token")
    assert status == 0, err
    assert_pod_wired(c, pod, result)
    delete(c, pod)


def test_refused_token_fails_fast_and_is_never_shown(cluster, tmp_path):
    c = cluster
    pod = new_pod(c, "node1")
    wrong = "wrong-" + secrets.token_hex(8)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(c.srv.kubeconfig().replace(c.srv.token, wrong))
    ports_before = ovs_ports(c, "node1")
    start = time.monotonic()
    status, out, err = cni(c, pod, "ADD", config(c, kubeconfig=str(kubeconfig)))
    assert time.monotonic() - start < 8  # not the 10 s annotation timeout
    assert status == 1 and out["code"] == 11
    assert "refused us (401" in out["msg"]
    assert wrong not in json.dumps(out) + err + Path(c.log_file).read_text()
    assert ovs_ports(c, "node1") == ports_before
    assert pod_links(pod) == {"lo"}


def test_del_with_ovs_unreachable_asks_to_try_again(cluster, tmp_path):
    c = cluster
    pod = new_pod(c, "node1", lsp=False)
    status, out, _ = cni(c, pod, "DEL", config(c, ovsRemote=f"unix:{tmp_path}/none.sock"))
    assert status == 1 and out["code"] == 11
    assert "Open_vSwitch database is unreachable" in out["msg"]
    assert f"{tmp_path}/none.sock" in out["details"]


def test_dual_stack_pods_talk_tcp_over_ipv6(cluster):
    c = cluster
    pods = []
    for node in ("node1", "node2"):
        pod = new_pod(c, node, lsp=False)
        v6 = f"fd00:10:244:77::{c.next_ip:x}"
        c.v1.patch_namespaced_pod(pod.name, c.namespace, {"metadata": {"annotations": {
            "ovn": json.dumps({
                "ip_address": pod.ip, "mac_address": pod.mac, "gateway_ip": GATEWAY,
                "ip_addresses": [pod.ip, f"{v6}/64"],
                "gateway_ips": [GATEWAY, "fd00:10:244:77::1"]})}}})
        c.nb.execute(c.nb.api.lsp_add(c.switch, f"{c.namespace}_{pod.name}",
                                      addresses=[f"{pod.mac} {pod.address} {v6}"]))
        result = add(c, pod, waitOvnInstalled=True)
        assert [ip["address"] for ip in result["ips"]] == [pod.ip, f"{v6}/64"]
        assert {"dst": "::/0", "gw": "fd00:10:244:77::1"} in result["routes"]
        status, out, err = cni(c, pod, "CHECK", config(c, prevResult=result))
        assert (status, out) == (0, None), err
        with IPRoute(netns=pod.netns) as ipr:
            (idx,) = ipr.link_lookup(ifname="eth0")
            v6addrs = [a for a in ipr.get_addr(index=idx, family=socket.AF_INET6)
                       if a.get_attr("IFA_ADDRESS") == v6]
            assert v6addrs and not v6addrs[0]["flags"] & 0x40, "not tentative (no DAD)"
        pods.append((pod, v6))
    c.lab.sync(timeout=20)
    (a, _), (b, b6) = pods
    with echo_server(b.netns, 8086, socket.AF_INET6):
        deadline = time.monotonic() + 10
        while True:
            conn = netns.create_socket(a.netns, socket.AF_INET6, socket.SOCK_STREAM)
            conn.settimeout(2)
            try:
                with conn:
                    conn.connect((b6, 8086))
                    payload = os.urandom(4000).hex().encode()
                    conn.sendall(payload)
                    got = b""
                    while len(got) < len(payload) and (chunk := conn.recv(65536)):
                        got += chunk
                    assert got == payload
                break
            except OSError:
                # The first neighbour solicitation may race the flows on the far node.
                assert time.monotonic() < deadline, "no TCP over IPv6 between the pods"
    for pod, _ in pods:
        delete(c, pod)
        assert_gone(c, pod)


def test_ovn_installed_timeout_removes_port_and_veth(cluster):
    """No LSP, so ovn-controller never claims the port: ADD gives up and undoes it all."""
    c = cluster
    pod = new_pod(c, "node2", lsp=False)
    links_before, ports_before = node_links(c, "node2"), ovs_ports(c, "node2")
    status, out, _ = cni(c, pod, "ADD", config(c, waitOvnInstalled=True, ovnInstalledTimeout=1))
    assert status == 1 and out["code"] == 11
    assert f"ovn-controller marking {pod.host_end} ({c.namespace}_{pod.name}) ovn-installed " \
           "did not happen within 1s" in out["msg"]
    assert node_links(c, "node2") == links_before
    assert ovs_ports(c, "node2") == ports_before
    assert pod_links(pod) == {"lo"}
    interfaces = c.lab.node("node2").vsctl("--bare", "--columns=name", "list", "Interface")
    assert pod.host_end not in interfaces.split()
