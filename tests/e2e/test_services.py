"""Services through OVN load balancers: the watcher, the lab's real datapath, real packets.

The lab plays kubelet + CNI for the pods (a netns wired with the addresses the watcher
annotated) and the endpoints controller (the test writes the EndpointSlices).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
from watcher_env import (
    lb_vips,
    make_node,
    restart_writes_nothing,
    wait_for,
    watcher_env,
    wire_pod,
)

from ovn_k8s import ovsdb, topology, translate

BIN = Path(sys.executable).parent
PHYSICAL_IP = "10.33.80.138"
EXTERNAL_HOST = "10.33.80.1"
NODE_PORT = 30080
BACKENDS = (("web-a", "node1"), ("web-b", "node2"), ("web-c", "node2"))
SERVICE_CIDRS = "10.96.0.0/16,fd00:10:96::/112"


@pytest.fixture(scope="module")
def env():
    # Dual-stack service CIDRs; services stay IPv4 single-stack unless they ask.
    yield from watcher_env(nodes=2, api_options={"service_cidr": SERVICE_CIDRS})


@pytest.fixture(scope="module")
def cluster(env):
    """Nodes, a NIC-mode gateway on node2 with an external host, backends and a client."""
    lab, _, v1, _, _ = env
    for node in ("node1", "node2"):
        make_node(v1, node)
    host = lab.add_external_host("node2", "outside", f"{EXTERNAL_HOST}/24", nic="eth1")
    proc = lab.node("node2").exec(
        [str(BIN / "ovn-k8s-overlay"), "gateway-init", "--cluster-ip-subnet", "10.144.0.0/16",
         "--physical-interface", "eth1", "--physical-ip", f"{PHYSICAL_IP}/24",
         "--node-name", "node2", "--default-gw", EXTERNAL_HOST, "--nb", lab.nb_remote,
         "--timeout", "10"], timeout=60)
    assert proc.returncode == 0, proc.stderr
    pods = {}
    for name, node in (*BACKENDS, ("client", "node1")):
        pods[name] = wire_pod(env, name, node)
    for name, _ in BACKENDS:
        pods[name].serve_tcp(8080)
    return pods, host


def endpoint_slice(names: list[str], pods) -> dict:
    return {
        "metadata": {"name": "web-abc12",
                     "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [pods[n].address], "conditions": {"ready": True},
                       "nodeName": dict(BACKENDS)[n]} for n in names],
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"},
                  {"name": "udp", "port": 8080, "protocol": "UDP"}],
    }


@pytest.fixture(scope="module")
def service(env, cluster):
    _, _, v1, _, nb = env
    pods, _ = cluster
    dv1 = discovery(env)
    svc = v1.create_namespaced_service("default", {
        "metadata": {"name": "web"},
        "spec": {"type": "NodePort", "selector": {"app": "web"}, "ports": [
            {"name": "tcp", "port": 80, "targetPort": 8080, "protocol": "TCP",
             "nodePort": NODE_PORT},
            {"name": "udp", "port": 53, "targetPort": 8080, "protocol": "UDP"}]},
    })
    dv1.create_namespaced_endpoint_slice("default",
                                         endpoint_slice([n for n, _ in BACKENDS], pods))
    ip = svc.spec.cluster_ip
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{ip}:80") == 3, what="the VIP in NB")
    return ip


def discovery(env):
    from kubernetes import client  # noqa: PLC0415

    _, srv, _, _, _ = env
    return client.DiscoveryV1Api(srv.api_client())


def backends_in_nb(nb, protocol: str, vip: str) -> int:
    nb.execute(nb.api.ls_list())
    lb = next(lb for lb in nb.rows("Load_Balancer")
              if lb.name == topology.cluster_lb_name(protocol))
    value = lb.vips.get(vip)
    return -1 if value is None else len([b for b in value.split(",") if b])


def answers(query, tries: int = 24) -> list[str | None]:
    return [query() for _ in range(tries)]


def test_cluster_ip_spreads_over_backends_tcp_and_udp(cluster, service):
    pods, _ = cluster
    client = pods["client"]
    backends = {pods[n].address for n, _ in BACKENDS}
    tcp = answers(lambda: client.tcp_query(service, 80, "name?"))
    assert set(tcp) <= backends and None not in tcp
    assert len(set(tcp)) >= 2, f"all TCP connections went to {set(tcp)}"
    udp = answers(lambda: client.udp_query(service, 53, "name?"))
    assert set(udp) <= backends and None not in udp
    assert len(set(udp)) >= 2, f"all UDP datagrams went to {set(udp)}"


def test_node_port_from_the_external_host(cluster, service):
    pods, host = cluster
    backends = {pods[n].address for n, _ in BACKENDS}
    got = answers(lambda: host.tcp_query(PHYSICAL_IP, NODE_PORT, "name?"), 6)
    assert None not in got and set(got) <= backends


def test_external_traffic_policy_local(env, cluster, service):
    _, _, v1, _, nb = env
    pods, host = cluster
    gr_lb = topology.gateway_lb_name("node2", "tcp")
    node_port_vip = f"{PHYSICAL_IP}:{NODE_PORT}"

    def gateway_backends() -> int:
        nb.execute(nb.api.ls_list())
        lb = next(lb for lb in nb.rows("Load_Balancer") if lb.name == gr_lb)
        return len([b for b in lb.vips.get(node_port_vip, "").split(",") if b])

    v1.patch_namespaced_service("web", "default",
                                {"spec": {"externalTrafficPolicy": "Local"}})
    wait_for(lambda: gateway_backends() == 2, what="only node2's endpoints on GR_node2")
    local = {pods[n].address for n, node in BACKENDS if node == "node2"}
    wait_for(lambda: {host.tcp_query(PHYSICAL_IP, NODE_PORT, "name?") for _ in range(6)}
             <= local, what="NodePort traffic to stay on node2's pods")
    v1.patch_namespaced_service("web", "default",
                                {"spec": {"externalTrafficPolicy": "Cluster"}})
    wait_for(lambda: gateway_backends() == 3, what="all endpoints again")


def test_client_ip_affinity_holds_a_client(env, cluster, service):
    _, _, v1, _, nb = env
    pods, _ = cluster
    v1.patch_namespaced_service("web", "default", {"spec": {
        "sessionAffinity": "ClientIP",
        "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}})
    lb_name = translate.service_lb_name("default", "web", "tcp")
    wait_for(lambda: any(lb.name == lb_name for lb in nb.rows("Load_Balancer")),
             what="the service's own load balancer")
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{service}:80") == -1,
             what="the VIP to leave the shared load balancer")
    # NB is written; give ovn-controller the moment it needs to swap the flows.
    wait_for(lambda: pods["client"].tcp_query(service, 80, "name?") is not None,
             what="the service to answer through its own load balancer")
    got = answers(lambda: pods["client"].tcp_query(service, 80, "name?"), 12)
    assert None not in got and len(set(got)) == 1, f"affinity broken: {got}"
    v1.patch_namespaced_service("web", "default", {"spec": {"sessionAffinity": "None"}})
    wait_for(lambda: not any(lb.name == lb_name for lb in nb.rows("Load_Balancer")),
             what="the service's own load balancer to go")
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{service}:80") == 3, what="shared VIP back")


def test_scale_to_one_then_zero(env, cluster, service):
    lab, _, _, _, nb = env
    pods, _ = cluster
    dv1 = discovery(env)
    dv1.replace_namespaced_endpoint_slice("web-abc12", "default",
                                          endpoint_slice(["web-b"], pods))
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{service}:80") == 1, what="one backend")
    wait_for(lambda: {pods["client"].tcp_query(service, 80, "name?") for _ in range(6)}
             == {pods["web-b"].address}, what="the datapath to follow")
    got = answers(lambda: pods["client"].tcp_query(service, 80, "name?"), 10)
    assert set(got) == {pods["web-b"].address}

    dv1.replace_namespaced_endpoint_slice("web-abc12", "default", endpoint_slice([], pods))
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{service}:80") == 0, what="no backend")
    lab.sync()  # every chassis has the flows of what NB holds now
    start = time.monotonic()
    assert pods["client"].tcp_query(service, 80, "name?", timeout=3) is None
    assert time.monotonic() - start < 1.0, "no backend must fail fast (reject), not time out"

    dv1.replace_namespaced_endpoint_slice("web-abc12", "default",
                                          endpoint_slice([n for n, _ in BACKENDS], pods))
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{service}:80") == 3, what="three again")


def test_ipv6_and_dual_stack_vips_exact_and_taken_by_northd(env, cluster, service):
    """The lab's pods are IPv4 only: NB and the logical flows northd makes, no packets."""
    lab, _, v1, _, nb = env
    dv1 = discovery(env)
    ports = [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
    dual = v1.create_namespaced_service("default", {"metadata": {"name": "dual"}, "spec": {
        "ipFamilyPolicy": "RequireDualStack", "ports": ports}}).spec.cluster_ips
    only6 = v1.create_namespaced_service("default", {"metadata": {"name": "only6"}, "spec": {
        "ipFamilies": ["IPv6"], "ports": ports}}).spec.cluster_ips
    assert len(dual) == 2 and len(only6) == 1 and ":" in only6[0]
    for name, family, addresses in (("dual", "IPv4", ["10.144.9.5"]),
                                    ("dual", "IPv6", ["fd00:10:144::6", "fd00:10:144::5"]),
                                    ("only6", "IPv6", ["fd00:10:144::7"])):
        dv1.create_namespaced_endpoint_slice("default", {
            "metadata": {"name": f"{name}-{family.lower()}",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": family,
            "endpoints": [{"addresses": [a], "conditions": {"ready": True}}
                          for a in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]})
    want = {f"{dual[0]}:80": "10.144.9.5:8080",
            f"[{dual[1]}]:80": "[fd00:10:144::5]:8080,[fd00:10:144::6]:8080",
            f"[{only6[0]}]:80": "[fd00:10:144::7]:8080"}
    lb = topology.cluster_lb_name("tcp")
    wait_for(lambda: {k: v for k, v in lb_vips(nb, lb).items() if k in want} == want,
             what="one VIP per family, each with its own family's backends")
    mine = {dual[0], dual[1], only6[0]}
    assert not [k for k in lb_vips(nb, lb) if any(ip in k for ip in mine) and k not in want]

    # northd parsed them: the switches' load-balancing flows name each IPv6 VIP with
    # its backends (a VIP it refused would have no flow).
    sb = ovsdb.SbDb(lab.sb_remote, tables=["Logical_Flow"], timeout=10)
    try:
        def lb_flows() -> list[str]:
            return [f"{f.match} {f.actions}" for f in sb.rows("Logical_Flow")
                    if "ct_lb" in f.actions]

        for vip6, backends in ((dual[1], "[fd00:10:144::5]:8080,[fd00:10:144::6]:8080"),
                               (only6[0], "[fd00:10:144::7]:8080")):
            wait_for(lambda vip6=vip6, backends=backends: any(
                f"ip6.dst == {vip6}" in f and backends in f for f in lb_flows()),
                what=f"northd's flow for [{vip6}]:80")
    finally:
        sb.close()
    for name in ("dual", "only6"):
        v1.delete_namespaced_service(name, "default")
    wait_for(lambda: not set(want) & set(lb_vips(nb, lb)), what="the VIPs gone")


def test_malformed_service_is_skipped(env, cluster, service):
    _, _, v1, watcher, nb = env
    v1.create_namespaced_service("default", {
        "metadata": {"name": "broken"},
        "spec": {"ports": [{"port": 81, "protocol": "TCP"}], "externalIPs": ["not-an-ip"]},
    })
    ok = v1.create_namespaced_service("default", {
        "metadata": {"name": "fine"}, "spec": {"ports": [{"port": 82, "protocol": "TCP"}]}})
    wait_for(lambda: backends_in_nb(nb, "tcp", f"{ok.spec.cluster_ip}:82") == 0,
             what="the good service's VIP")
    wait_for(lambda: "service default/broken: skipped" in watcher.log(), what="the report")


def test_deleted_service_loses_its_vips(env, cluster, service):
    _, _, v1, _, nb = env
    svc = v1.create_namespaced_service("default", {
        "metadata": {"name": "gone"}, "spec": {"ports": [{"port": 83, "protocol": "UDP"}]}})
    vip = f"{svc.spec.cluster_ip}:83"
    wait_for(lambda: backends_in_nb(nb, "udp", vip) == 0, what="the VIP")
    v1.delete_namespaced_service("gone", "default")
    wait_for(lambda: backends_in_nb(nb, "udp", vip) == -1, what="the VIP gone")


def test_restart_writes_nothing_and_removes_stale_vips(env, cluster, service):
    _, _, v1, watcher, nb = env
    wait_for(watcher.idle, what="the watcher to settle")
    watcher.stop()
    # While it is down: a service goes away, and someone else's junk VIP appears in
    # our load balancer.
    v1.delete_namespaced_service("fine", "default")
    lb = topology.cluster_lb_name("tcp")
    nb.execute(nb.api.lb_add(lb, "10.96.99.99:99", ["10.144.0.99:99"], protocol="tcp",
                             may_exist=True))
    watcher.start()
    wait_for(watcher.idle, what="the restarted watcher to settle")
    wait_for(lambda: backends_in_nb(nb, "tcp", "10.96.99.99:99") == -1, what="stale VIP gone")
    assert backends_in_nb(nb, "tcp", f"{service}:80") == 3

    assert restart_writes_nothing(watcher, nb), "a restart with nothing changed wrote to NB"
    status = watcher.status()
    assert status["services"]["transactions"] == 0
    # Start-up works out each service's VIPs once, for the resync and the first handling.
    assert status["services"]["desired"] == status["startup"]["services"]
