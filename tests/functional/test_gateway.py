"""ovn-k8s-overlay gateway-init on the lab: pods reach an external host through GR_<node>."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
from conftest import new_lab_dir
from overlay_cli import overlay, snapshot

from ovn_k8s import ipam, ovsdb, topology
from ovn_k8s.sandbox.lab import Lab, LabPod

pytestmark = pytest.mark.lab

CLUSTER = "10.132.0.0/16"
SUBNETS = {"node1": "10.132.1.0/24", "node2": "10.132.2.0/24"}
PHYSICAL_ADDR = "10.33.74.138"
PHYSICAL_IP = f"{PHYSICAL_ADDR}/24"
EXTERNAL_HOST = "10.33.74.1"
BEYOND = "198.51.100.7"  # on the external host's lo: reachable only via --default-gw
GATEWAY_ARGS = ("gateway-init", "--cluster-ip-subnet", CLUSTER, "--physical-interface", "eth1",
                "--physical-ip", PHYSICAL_IP, "--node-name", "node2",
                "--default-gw", EXTERNAL_HOST)


@pytest.fixture(scope="module")
def gw_lab(tmp_path_factory) -> Iterator[tuple[Lab, ovsdb.NbDb, LabPod]]:
    """Master on node1, minion + NIC-mode gateway on node2, a host on node2's eth1."""
    d = new_lab_dir("gateway")
    d.rmdir()
    lab = Lab(d, nodes=2)
    cni = tmp_path_factory.mktemp("cni")
    try:
        lab.up()
        overlay(lab, "node1", "master-init", "--cluster-ip-subnet", CLUSTER,
                "--master-switch-subnet", SUBNETS["node1"], "--node-name", "node1")
        overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER,
                "--minion-switch-subnet", SUBNETS["node2"], "--node-name", "node2",
                "--cni-conf-dir", str(cni / "net.d"), "--cni-bin-dir", str(cni / "bin"))
        host = lab.add_external_host("node2", "outside", f"{EXTERNAL_HOST}/24",
                                     nic="eth1", extra_ips=(f"{BEYOND}/32",))
        host.serve_tcp(8080)
        overlay(lab, "node2", *GATEWAY_ARGS)
        nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
        yield lab, nb, host
        nb.close()
    finally:
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def pod_on(lab: Lab, nb: ovsdb.NbDb, node: str, name: str, host: int) -> LabPod:
    subnet = ipam.parse_network(SUBNETS[node], "subnet")
    ip = ipam.nth_host(subnet, host)
    mac = ipam.mac_from_ip(ip)
    nb.execute(nb.ensure(
        "Logical_Switch_Port", f"default_{name}", parent=("Logical_Switch", node, "ports"),
        addresses=[f"{mac} {ip}"], port_security=[f"{mac} {ip}"],
    ))
    pod = lab.add_pod(node, name, f"{ip}/{subnet.prefixlen}", mac,
                      gateway=str(ipam.nth_host(subnet, 1)), iface_id=f"default_{name}")
    lab.wait_port_up(f"default_{name}")
    return pod


def test_gateway_router_in_nb(gw_lab):
    _, nb, _ = gw_lab
    routers = {r.name: r for r in nb.rows("Logical_Router")}
    gr = routers["GR_node2"]
    assert gr.options["chassis"] == "node2"
    assert gr.external_ids[topology.OWNER] == "node2"
    assert sorted(lb.protocol[0] for lb in gr.load_balancer) == ["sctp", "tcp", "udp"]
    snat = [(n.type, n.logical_ip, n.external_ip) for n in gr.nat]
    assert snat == [("snat", CLUSTER, PHYSICAL_ADDR)]
    routes = {(r.ip_prefix, r.nexthop) for r in gr.static_routes}
    assert ("0.0.0.0/0", EXTERNAL_HOST) in routes
    cluster_routes = {r.ip_prefix for r in routers[topology.CLUSTER_ROUTER].static_routes}
    assert "0.0.0.0/0" in cluster_routes
    ext = next(s for s in nb.rows("Logical_Switch") if s.name == "ext_node2")
    localnet = [p for p in ext.ports if p.type == "localnet"]
    assert [p.options["network_name"] for p in localnet] == [topology.PHYSNET]


def test_pods_reach_external_host_with_snat(gw_lab):
    lab, nb, _ = gw_lab
    for node, name in (("node1", "gw-a"), ("node2", "gw-b")):
        pod = pod_on(lab, nb, node, name, 10)
        try:
            assert pod.ping(EXTERNAL_HOST, count=3), f"pod on {node} cannot reach the host"
            # The host has no route back to pod addresses: an answer proves SNAT, and
            # the server names the source it saw.
            assert pod.tcp_peer(EXTERNAL_HOST, 8080) == PHYSICAL_ADDR
            assert pod.ping(BEYOND, count=2), f"pod on {node}: default gateway route broken"
        finally:
            lab.del_pod(pod)


def test_second_gateway_init_changes_nothing(gw_lab):
    lab, nb, _ = gw_lab
    before = snapshot(nb)
    overlay(lab, "node2", *GATEWAY_ARGS)
    assert snapshot(nb) == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("--default-gw", "10.9.9.9"), "not on the physical network"),
        (("--physical-ip", PHYSICAL_ADDR), "--physical-ip"),
        (("--physical-interface", "nosuchnic0"), "nosuchnic0"),
        (("--node-name", "Bad_Name"), "not a valid Kubernetes node name"),
        (("--rampout-ip-subnets", "10.99.0.0/24"), "not inside the cluster subnet"),
    ],
)
def test_bad_gateway_input_changes_nothing(gw_lab, change, message):
    lab, nb, _ = gw_lab
    args = list(GATEWAY_ARGS)
    flag, value = change
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    before = snapshot(nb)
    proc = overlay(lab, "node2", *args, check=False)
    assert proc.returncode == 1, proc.stderr
    assert message in proc.stderr
    assert snapshot(nb) == before


def test_rampout_subnets_leave_through_their_own_gateway(gw_lab):
    """node1 becomes a second gateway for node1's pods only (--rampout-ip-subnets);
    node2 stays the cluster's default exit."""
    lab, nb, _ = gw_lab
    other = lab.add_external_host("node1", "outside1", "10.33.75.1/24", nic="eth1")
    other.serve_tcp(8080)
    overlay(lab, "node1", "gateway-init", "--cluster-ip-subnet", CLUSTER,
            "--physical-interface", "eth1", "--physical-ip", "10.33.75.138/24",
            "--node-name", "node1", "--default-gw", "10.33.75.1",
            "--rampout-ip-subnets", SUBNETS["node1"])
    nb.execute(nb.api.ls_list())
    cluster_router = next(r for r in nb.rows("Logical_Router")
                          if r.name == topology.CLUSTER_ROUTER)
    routes = {(r.ip_prefix, r.policy[0] if r.policy else "dst-ip", r.nexthop)
              for r in cluster_router.static_routes}
    gr1_join = next(p for p in nb.rows("Logical_Router_Port") if p.name == "rtoj-GR_node1")
    assert (SUBNETS["node1"], "src-ip", gr1_join.networks[0].split("/")[0]) in routes
    a = pod_on(lab, nb, "node1", "ramp-a", 30)
    b = pod_on(lab, nb, "node2", "ramp-b", 30)
    try:
        assert a.tcp_peer("10.33.75.1", 8080) == "10.33.75.138", "node1's pods exit via node1"
        assert b.tcp_peer(EXTERNAL_HOST, 8080) == PHYSICAL_ADDR, "node2's pods still via node2"
        assert a.ping(b.address), "cluster traffic must not follow the rampout route"
    finally:
        lab.del_pod(a)
        lab.del_pod(b)

    # Run again without rampout subnets: node1 becomes the default exit, and its
    # source route goes (last gateway-init wins the default route, as in the lineage).
    overlay(lab, "node1", "gateway-init", "--cluster-ip-subnet", CLUSTER,
            "--physical-interface", "eth1", "--physical-ip", "10.33.75.138/24",
            "--node-name", "node1", "--default-gw", "10.33.75.1")
    nb.execute(nb.api.ls_list())
    routes = {(r.ip_prefix, r.policy[0] if r.policy else "dst-ip", r.nexthop)
              for r in cluster_router.static_routes}
    gr1 = gr1_join.networks[0].split("/")[0]
    assert (SUBNETS["node1"], "src-ip", gr1) not in routes
    assert ("0.0.0.0/0", "dst-ip", gr1) in routes
