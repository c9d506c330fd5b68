"""A NIC shared by the host and OVN: nics-to-bridge / bridge-to-nics, bridge-mode
gateway-init and ovn-k8s-gateway-helper, on the lab with real packets."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import new_lab_dir
from kubernetes import client
from overlay_cli import overlay, run
from pyroute2 import NetNS

from ovn_k8s import ipam, ovsdb, topology
from ovn_k8s.host.gateway_flows import CT_ZONE
from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.lab import Lab, LabPod
from ovn_k8s.sandbox.lab import pid_running as running
from ovn_k8s.sandbox.lab import wait_until as wait_for

pytestmark = pytest.mark.lab

CLUSTER = "10.136.0.0/16"
SUBNETS = {"node1": "10.136.1.0/24", "node2": "10.136.2.0/24"}
NIC = "eth7"
NODE_IP = "10.40.0.10"
EXTERNAL_HOST = "10.40.0.1"
BEYOND = "198.51.100.9"  # on the external host's lo; the node routes to it via the host
BEYOND_NET = "198.51.100.0/24"
HELPER = "ovn-k8s-gateway-helper"


@pytest.fixture(scope="module")
def nic_lab() -> Iterator[tuple[Lab, LabPod]]:
    """Two nodes, cluster set up; node2 has NIC with the host's address on it, cabled to
    an external host, and a route beyond that host through the NIC."""
    d = new_lab_dir("sharednic")
    d.rmdir()
    lab = Lab(d, nodes=2)
    try:
        lab.up()
        overlay(lab, "node1", "master-init", "--cluster-ip-subnet", CLUSTER,
                "--master-switch-subnet", SUBNETS["node1"], "--node-name", "node1")
        host = lab.add_external_host("node2", "outside", f"{EXTERNAL_HOST}/24", nic=NIC,
                                     node_ip=f"{NODE_IP}/24", extra_ips=(f"{BEYOND}/32",))
        with NetNS(lab.node("node2").netns) as ns:
            (idx,) = ns.link_lookup(ifname=NIC)
            ns.route("add", dst=BEYOND_NET, gateway=EXTERNAL_HOST, oif=idx)
        # The external host answers the node's address only on its own network.
        with NetNS(host.netns) as ns:
            ns.route("add", dst="0.0.0.0/0", gateway=NODE_IP)
        host.serve_tcp(8080)
        yield lab, host
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def ip_config(lab: Lab, dev: str) -> tuple[set, set, str | None]:
    """(IPv4 addresses, non-connected IPv4 routes, MAC) of ``dev`` on node2."""
    with NetNS(lab.node("node2").netns) as ns:
        found = ns.link_lookup(ifname=dev)
        if not found:
            return set(), set(), None
        idx = found[0]
        mac = ns.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        addrs = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                 for a in ns.get_addr(index=idx, family=socket.AF_INET)}
        routes = {(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"))
                  for r in ns.get_routes(family=socket.AF_INET, oif=idx)
                  if r.get_attr("RTA_GATEWAY")}
    return addrs, routes, mac


def nic_conf(lab: Lab) -> tuple[str, str]:
    """(rp_filter, arp_ignore) of the NIC on node2."""
    return tuple(
        lab.node("node2").exec(["cat", f"/proc/sys/net/ipv4/conf/{NIC}/{key}"]).stdout.strip()
        for key in ("rp_filter", "arp_ignore")
    )


def node_reaches(lab: Lab, ip: str) -> bool:
    proc = lab.node("node2").exec(["ping", "-n", "-c", "2", "-i", "0.1", "-W", "2", ip])
    return proc.returncode == 0


def util(lab: Lab, *args: str, check: bool = True):
    return run(lab, "node2", "ovn-k8s-util", *args, check=check)


def test_nics_to_bridge_and_back(nic_lab):
    lab, _ = nic_lab
    bridge = f"br{NIC}"
    addrs, routes, mac = ip_config(lab, NIC)
    assert addrs == {(NODE_IP, 24)} and routes == {("198.51.100.0", 24, EXTERNAL_HOST)}
    assert node_reaches(lab, EXTERNAL_HOST) and node_reaches(lab, BEYOND)

    original_conf = nic_conf(lab)
    assert util(lab, "nics-to-bridge", NIC).stdout.strip() == f"{NIC} -> {bridge}"
    # The userspace datapath reads the NIC beside the host stack: keep the host off it.
    assert nic_conf(lab) == ("1", "8")
    assert ip_config(lab, bridge) == (addrs, routes, mac), "bridge must take address, route, MAC"
    assert ip_config(lab, NIC)[:2] == (set(), set())
    assert node_reaches(lab, EXTERNAL_HOST) and node_reaches(lab, BEYOND)

    # Again: nothing to do, same state.
    util(lab, "nics-to-bridge", NIC)
    assert ip_config(lab, bridge) == (addrs, routes, mac)

    # After a "reboot" the address sits on the NIC again while the bridge exists:
    # a rerun finishes the move.
    with NetNS(lab.node("node2").netns) as ns:
        (b,) = ns.link_lookup(ifname=bridge)
        (n,) = ns.link_lookup(ifname=NIC)
        ns.addr("del", index=b, address=NODE_IP, prefixlen=24)
        ns.addr("add", index=n, address=NODE_IP, prefixlen=24)
        ns.route("replace", dst=BEYOND_NET, gateway=EXTERNAL_HOST, oif=n)
    util(lab, "nics-to-bridge", NIC)
    assert ip_config(lab, bridge) == (addrs, routes, mac)
    assert ip_config(lab, NIC)[:2] == (set(), set())
    assert node_reaches(lab, BEYOND)

    assert util(lab, "bridge-to-nics", bridge).stdout.strip() == f"{bridge} -> {NIC}"
    assert ip_config(lab, NIC) == (addrs, routes, mac)
    assert ip_config(lab, bridge)[2] is None, "bridge device left behind"
    assert node_reaches(lab, EXTERNAL_HOST) and node_reaches(lab, BEYOND)
    assert nic_conf(lab) == original_conf
    util(lab, "bridge-to-nics", NIC)  # already undone: fine
    assert ip_config(lab, NIC) == (addrs, routes, mac)


def test_util_bad_input(nic_lab):
    lab, _ = nic_lab
    before = ip_config(lab, NIC)
    proc = util(lab, "nics-to-bridge", "nosuchnic0", check=False)
    assert proc.returncode == 1
    assert "ovn-k8s-util nics-to-bridge: error:" in proc.stderr and "nosuchnic0" in proc.stderr
    assert ip_config(lab, NIC) == before
    assert "brnosuchnic0" not in lab.node("node2").vsctl("list-br").split()


def helper_flows(lab: Lab, bridge: str) -> str:
    return lab.node("node2").exec(["ovs-ofctl", "--no-stats", "dump-flows", bridge]).stdout




def pod_on_node1(lab: Lab, name: str, host: int) -> LabPod:
    subnet = ipam.parse_network(SUBNETS["node1"], "subnet")
    ip = ipam.nth_host(subnet, host)
    mac = ipam.mac_from_ip(ip)
    nb = ovsdb.connect_nb(lab.nb_remote)
    try:
        nb.execute(nb.ensure(
            "Logical_Switch_Port", f"default_{name}", parent=("Logical_Switch", "node1", "ports"),
            addresses=[f"{mac} {ip}"], port_security=[f"{mac} {ip}"],
        ))
    finally:
        nb.close()
    pod = lab.add_pod("node1", name, f"{ip}/{subnet.prefixlen}", mac,
                      gateway=str(ipam.nth_host(subnet, 1)), iface_id=f"default_{name}")
    lab.wait_port_up(f"default_{name}")
    return pod


@pytest.fixture(scope="module")
def bridge_gateway(nic_lab, tmp_path_factory):
    """node2 as a bridge-mode gateway: minion-init, nics-to-bridge, gateway-init."""
    lab, host = nic_lab
    cni = tmp_path_factory.mktemp("cni")
    overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER,
            "--minion-switch-subnet", SUBNETS["node2"], "--node-name", "node2",
            "--cni-conf-dir", str(cni / "net.d"), "--cni-bin-dir", str(cni / "bin"))
    util(lab, "nics-to-bridge", NIC)
    overlay(lab, "node2", "gateway-init", "--cluster-ip-subnet", CLUSTER,
            "--bridge-interface", f"br{NIC}", "--physical-ip", f"{NODE_IP}/24",
            "--node-name", "node2", "--default-gw", EXTERNAL_HOST)
    return lab, host


@contextlib.contextmanager
def gateway_helper(lab: Lab, log: Path, *extra: str) -> Iterator[int]:
    """The helper as an operator runs it: default pidfile and control socket in
    $OVS_RUNDIR, reached with `ovs-appctl -t ovn-k8s-gateway-helper`; stopped after."""
    run(lab, "node2", HELPER, f"--physical-bridge=br{NIC}", f"--physical-interface={NIC}",
        "--pidfile", "--detach", f"--log-file={log}", "-vconsole:emer", "-vfile:info",
        "--resync-interval=1", *extra)
    pid = int((lab.node("node2").rundir / f"{HELPER}.pid").read_text())
    try:
        yield pid
    finally:
        lab.node("node2").exec(["ovs-appctl", "-t", HELPER, "exit"])
        wait_for(lambda: not running(pid), 10)


def test_bridge_mode_gateway_shares_the_nic(bridge_gateway, tmp_path):
    lab, _ = bridge_gateway
    bridge = f"br{NIC}"
    with gateway_helper(lab, tmp_path / "helper.log"):
        pod = pod_on_node1(lab, "snic-a", 20)
        # OVN's traffic and the host's share the NIC: both reach the external host,
        # OVN's SNATed to the shared address.
        assert pod.ping(EXTERNAL_HOST, count=3), "pod cannot reach the external host"
        assert pod.tcp_peer(EXTERNAL_HOST, 8080) == NODE_IP
        assert node_reaches(lab, EXTERNAL_HOST), "host lost the NIC to OVN"
        assert node_reaches(lab, BEYOND)
        assert pod.ping(EXTERNAL_HOST, count=2)
        assert f"ct(commit,zone={CT_ZONE})" in helper_flows(lab, bridge)

        # Flows wiped by hand come back by the next resync.
        lab.node("node2").exec(["ovs-ofctl", "del-flows", bridge])
        wait_for(lambda: f"ct(commit,zone={CT_ZONE})" in helper_flows(lab, bridge), 10)
        assert pod.tcp_peer(EXTERNAL_HOST, 8080) == NODE_IP

        status = lab.node("node2").exec(["ovs-appctl", "-t", HELPER, "status"])
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["errors"] == 0
        lab.del_pod(pod)


def test_nodeports_follow_services(bridge_gateway, tmp_path):
    lab, host = bridge_gateway
    bridge = f"br{NIC}"
    with ApiServer(host=lab.connect_host()) as srv:
        lab.node("node2").vsctl(
            "set", "Open_vSwitch", ".",
            f"external_ids:k8s-api-server={srv.url.removeprefix('http://')}",
            f"external_ids:k8s-api-token={srv.token}")
        v1 = client.CoreV1Api(srv.api_client())
        backend = pod_on_node1(lab, "snic-np", 21)
        backend.serve_tcp(8080)
        # What the service handler (issue 7) will write: the NodePort VIP on the GR.
        nb = ovsdb.connect_nb(lab.nb_remote)
        lb = topology.gateway_lb_name("node2", "tcp")
        nb.execute(nb.api.lb_add(lb, f"{NODE_IP}:30080", [f"{backend.address}:8080"],
                                 protocol="tcp", may_exist=True))
        try:
            with gateway_helper(lab, tmp_path / "helper.log"):
                assert "tp_dst=30080" not in helper_flows(lab, bridge)
                v1.create_namespaced_service("default", {
                    "metadata": {"name": "web"},
                    "spec": {"type": "NodePort", "selector": {"app": "web"},
                             "ports": [{"port": 80, "targetPort": 8080, "nodePort": 30080}]},
                })
                wait_for(lambda: "tp_dst=30080" in helper_flows(lab, bridge), 10)
                # From outside, the NodePort reaches the pod through OVN; the host's
                # own traffic on the NIC still works.
                assert host.tcp_check(NODE_IP, 30080), "NodePort did not reach the pod"
                assert node_reaches(lab, EXTERNAL_HOST)

                # After a broken watch and a compacted history (410 on re-watch) the
                # helper relists and still follows the services.
                srv.drop_watches()
                srv.compact()
                v1.create_namespaced_service("default", {
                    "metadata": {"name": "dns"},
                    "spec": {"type": "LoadBalancer", "selector": {"app": "dns"},
                             "ports": [{"port": 53, "protocol": "UDP", "nodePort": 30053}]},
                })
                wait_for(lambda: any("udp" in f and "tp_dst=30053" in f
                                     for f in helper_flows(lab, bridge).splitlines()), 15)

                v1.delete_namespaced_service("web", "default")
                wait_for(lambda: "tp_dst=30080" not in helper_flows(lab, bridge), 10)
                assert "tp_dst=30053" in helper_flows(lab, bridge)
                assert not host.tcp_check(NODE_IP, 30080, timeout=1)
        finally:
            nb.execute(nb.api.lb_del(lb, f"{NODE_IP}:30080", if_exists=True))
            nb.close()
            lab.del_pod(backend)
            lab.node("node2").vsctl("remove", "Open_vSwitch", ".", "external_ids",
                                    "k8s-api-server", "k8s-api-token")


def test_gateway_helper_bad_input(nic_lab):
    lab, _ = nic_lab
    proc = run(lab, "node2", "ovn-k8s-gateway-helper", "--physical-bridge=brnope0",
               f"--physical-interface={NIC}", check=False)
    assert proc.returncode == 1
    assert "ovn-k8s-gateway-helper: error: no network interface 'brnope0'" in proc.stderr

