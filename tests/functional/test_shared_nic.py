"""A NIC shared by the host and OVN: nics-to-bridge / bridge-to-nics, bridge-mode
gateway-init and ovn-k8s-gateway-helper, on the lab with real packets."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator

import pytest
from conftest import new_lab_dir
from overlay_cli import overlay, run
from pyroute2 import NetNS

from ovn_k8s.sandbox.lab import Lab, LabPod

pytestmark = pytest.mark.lab

CLUSTER = "10.136.0.0/16"
SUBNETS = {"node1": "10.136.1.0/24", "node2": "10.136.2.0/24"}
NIC = "eth7"
NODE_IP = "10.40.0.10"
EXTERNAL_HOST = "10.40.0.1"
BEYOND = "198.51.100.9"  # on the external host's lo; the node routes to it via the host
BEYOND_NET = "198.51.100.0/24"


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

    assert util(lab, "nics-to-bridge", NIC).stdout.strip() == f"{NIC} -> {bridge}"
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
