"""Services from core/v1 Endpoints, on a cluster that serves no EndpointSlices.

The emulator plays a cluster older than 1.21 (no discovery.k8s.io/v1); the watcher
must find that out by discovery, read Endpoints, and give the same VIPs and the same
datapath as from slices. The test plays the endpoints controller.
"""

from __future__ import annotations

import pytest
from watcher_env import lb_vips, make_node, restart_writes_nothing, wait_for, watcher_env, wire_pod

from ovn_k8s import topology

TCP_LB = topology.cluster_lb_name("tcp")
BACKENDS = ("web-a", "web-b", "web-c")


@pytest.fixture(scope="module")
def env():
    yield from watcher_env(nodes=1, api_options={"endpoint_slices": False})


@pytest.fixture(scope="module")
def pods(env):
    _, _, v1, _, _ = env
    make_node(v1, "node1")
    out = {name: wire_pod(env, name, "node1") for name in (*BACKENDS, "client")}
    for name in BACKENDS:
        out[name].serve_tcp(8080)
    return out


def endpoints(ready: list, not_ready: list = ()) -> dict:
    def address(pod) -> dict:
        return {"ip": pod.address, "nodeName": "node1",
                "targetRef": {"kind": "Pod", "namespace": "default", "name": pod.name}}

    return {"metadata": {"name": "web"}, "subsets": [{
        "addresses": [address(p) for p in ready],
        "notReadyAddresses": [address(p) for p in not_ready],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}


def backends(*pods) -> str:
    return ",".join(sorted(f"{p.address}:8080" for p in pods))


def test_watcher_reads_endpoints_when_slices_are_not_served(env, pods):
    _, _, v1, watcher, nb = env
    assert watcher.status()["endpoint_source"] == "endpoints"
    assert "core/v1 Endpoints (the cluster serves no EndpointSlices)" in watcher.log()
    a, b, c = (pods[n] for n in BACKENDS)
    svc = v1.create_namespaced_service("default", {"metadata": {"name": "web"}, "spec": {
        "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}})
    vip = f"{svc.spec.cluster_ip}:80"
    v1.create_namespaced_endpoints("default", endpoints([a, b], [c]))
    wait_for(lambda: lb_vips(nb, TCP_LB).get(vip) == backends(a, b),
             what="the ready addresses as backends")
    # The datapath follows: only the ready pods answer.
    got = {pods["client"].tcp_query(svc.spec.cluster_ip, 80, "name?") for _ in range(12)}
    assert got <= {a.address, b.address} and len(got) == 2, got

    v1.replace_namespaced_endpoints("web", "default", endpoints([b, c], [a]))
    wait_for(lambda: lb_vips(nb, TCP_LB).get(vip) == backends(b, c), what="the VIP to follow")
    assert restart_writes_nothing(watcher, nb), "a restart with nothing changed wrote to NB"

    v1.delete_namespaced_endpoints("web", "default")
    wait_for(lambda: lb_vips(nb, TCP_LB).get(vip) == "", what="no backend (reject)")
    v1.delete_namespaced_service("web", "default")
    wait_for(lambda: vip not in lb_vips(nb, TCP_LB), what="the VIP gone")
