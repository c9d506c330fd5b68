"""ovn-k8s-overlay master-init / minion-init on the lab, run as an operator runs them."""

from __future__ import annotations

import json
import os
import socket

import pytest
from overlay_cli import BIN, overlay, snapshot
from pyroute2 import NetNS

from ovn_k8s import ipam, ovsdb, topology

pytestmark = pytest.mark.lab

CLUSTER = "10.128.0.0/14"
SUBNETS = {"node1": "10.128.0.0/24", "node2": "10.128.1.0/24"}


@pytest.fixture(scope="module")
def cluster(lab, tmp_path_factory):
    cni = tmp_path_factory.mktemp("cni")
    overlay(lab, "node1", "master-init", "--cluster-ip-subnet", CLUSTER,
            "--master-switch-subnet", SUBNETS["node1"], "--node-name", "node1")
    overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER,
            "--minion-switch-subnet", SUBNETS["node2"], "--node-name", "node2",
            "--cni-conf-dir", str(cni / "net.d"), "--cni-bin-dir", str(cni / "bin"))
    nb = ovsdb.connect_nb(lab.nb_remote)
    yield nb, cni
    nb.close()


def add_pod_port(nb, lab, make_pod, node, name, host):
    subnet = ipam.parse_network(SUBNETS[node], "subnet")
    ip = ipam.nth_host(subnet, host)
    mac = ipam.mac_from_ip(ip)
    lsp = f"default_{name}"
    nb.execute(nb.ensure(
        "Logical_Switch_Port", lsp, parent=("Logical_Switch", node, "ports"),
        addresses=[f"{mac} {ip}"], port_security=[f"{mac} {ip}"],
    ))
    pod = make_pod(node, name, f"{ip}/{subnet.prefixlen}", mac,
                   gateway=str(ipam.nth_host(subnet, 1)), iface_id=lsp)
    pod.wait_up()
    return pod


def test_topology_in_nb(cluster):
    nb, _ = cluster
    routers = {r.name: r for r in nb.rows("Logical_Router")}
    ports = {p.name for p in routers[topology.CLUSTER_ROUTER].ports}
    assert {"rtoj-ovn_cluster_router", "rtos-node1", "rtos-node2"} <= ports
    switches = {s.name: s for s in nb.rows("Logical_Switch")}
    for node, subnet in SUBNETS.items():
        sw = switches[node]
        assert sw.other_config["subnet"] == subnet
        assert sw.external_ids[topology.OWNER_TYPE] == "node"
        assert sw.external_ids[topology.OWNER] == node
        assert [g.name for g in sw.load_balancer_group] == [topology.CLUSTER_LB_GROUP]
        mgmt = next(p for p in sw.ports if p.name == f"k8s-{node}")
        ip = ipam.nth_host(ipam.parse_network(subnet, "s"), 2)
        assert mgmt.addresses == [f"{ipam.mac_from_ip(ip)} {ip}"]
    group = next(g for g in nb.rows("Load_Balancer_Group") if g.name == topology.CLUSTER_LB_GROUP)
    assert sorted(lb.protocol[0] for lb in group.load_balancer) == ["sctp", "tcp", "udp"]


def test_pods_on_two_nodes_talk_through_cluster_router(lab, cluster, make_pod):
    nb, _ = cluster
    a = add_pod_port(nb, lab, make_pod, "node1", "ov-a", 10)
    b = add_pod_port(nb, lab, make_pod, "node2", "ov-b", 10)
    assert a.ping(b.address, count=3), "pod on node1 cannot ping pod on node2"
    b.serve_tcp(7000)
    assert a.tcp_check(b.address, 7000)


def test_management_port_reaches_pod(lab, cluster, make_pod):
    nb, _ = cluster
    pod = add_pod_port(nb, lab, make_pod, "node2", "ov-c", 11)
    for node in ("node1", "node2"):
        proc = lab.node(node).exec(["ping", "-n", "-c", "2", "-i", "0.1", "-W", "2", pod.address])
        assert proc.returncode == 0, f"{node}'s management port cannot reach {pod.address}"
    with NetNS(lab.node("node2").netns) as ns:
        index = ns.link_lookup(ifname="ovn-k8s-mp0")[0]
        link = ns.get_links(index)[0]
        addrs = {(a.get_attr("IFA_ADDRESS"), a["prefixlen"])
                 for a in ns.get_addr(index=index, family=socket.AF_INET)}
        routes = {(r.get_attr("RTA_DST"), r["dst_len"], r.get_attr("RTA_GATEWAY"))
                  for r in ns.get_routes(family=socket.AF_INET, oif=index)}
    assert link.get_attr("IFLA_ADDRESS") == ipam.mac_from_ip("10.128.1.2")
    assert link.get_attr("IFLA_MTU") == 1400
    assert addrs == {("10.128.1.2", 24)}
    assert ("10.128.0.0", 14, "10.128.1.1") in routes


def test_cni_config_and_plugin_installed(cluster):
    _, cni = cluster
    conf = json.loads((cni / "net.d" / "10-ovn-k8s.conflist").read_text())
    assert conf["plugins"][0]["type"] == "ovn-k8s-cni-overlay"
    assert conf["cniVersion"] == "1.0.0"
    plugin = cni / "bin" / "ovn-k8s-cni-overlay"
    assert plugin.is_file() and os.access(plugin, os.X_OK)
    assert plugin.read_bytes().startswith(b"\x7fELF")  # the compiled front: cc is here


def test_second_run_changes_nothing(lab, cluster):
    nb, cni = cluster
    before = snapshot(nb)
    overlay(lab, "node1", "master-init", "--cluster-ip-subnet", CLUSTER,
            "--master-switch-subnet", SUBNETS["node1"], "--node-name", "node1")
    overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER,
            "--minion-switch-subnet", SUBNETS["node2"], "--node-name", "node2",
            "--cni-conf-dir", str(cni / "net.d"), "--cni-bin-dir", str(cni / "bin"))
    assert snapshot(nb) == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--minion-switch-subnet", "10.128.0.0/25", "--node-name", "node3"], "overlaps"),
        (["--minion-switch-subnet", "10.200.0.0/24", "--node-name", "node3"],
         "not inside the cluster subnet"),
        (["--minion-switch-subnet", "10.128.9.1/24", "--node-name", "node3"], "host bits set"),
        (["--minion-switch-subnet", "10.128.9.0/24", "--node-name", "Node_3"],
         "not a valid Kubernetes node name"),
        (["--minion-switch-subnet", "10.128.9.0/24", "--node-name", "node3", "--mtu", "9"],
         "--mtu"),
        (["--minion-switch-subnet", "10.128.9.0/24", "--node-name", "node3",
          "--cni-front", "go"], "--cni-front must be one of auto, c, python"),
    ],
)
def test_bad_input_is_refused_and_changes_nothing(lab, cluster, args, message):
    nb, cni = cluster
    before = snapshot(nb)
    proc = overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER, *args,
                   "--cni-conf-dir", str(cni / "x"), "--cni-bin-dir", str(cni / "y"),
                   check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert proc.stderr.startswith("ovn-k8s-overlay minion-init: error:")
    assert snapshot(nb) == before
    assert not (cni / "x").exists()


def test_unreachable_nb_is_a_clear_error(lab, cluster, tmp_path):
    proc = lab.node("node2").exec(
        [str(BIN / "ovn-k8s-overlay"), "minion-init", "--cluster-ip-subnet", CLUSTER,
         "--minion-switch-subnet", SUBNETS["node2"], "--node-name", "node2",
         "--nb", f"unix:{tmp_path}/nope.sock", "--timeout", "1"],
        timeout=30,
    )
    assert proc.returncode == 1
    assert f"cannot connect to OVN_Northbound at unix:{tmp_path}/nope.sock" in proc.stderr
