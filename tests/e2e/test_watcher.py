"""ovn-k8s-watcher as an operator runs it: a daemon against the lab's OVN and the API emulator."""

from __future__ import annotations

import time

import netaddr
import pytest
from watcher_env import (
    lsp,
    make_node,
    make_pod,
    node_subnet,
    pod_network,
    restart_writes_nothing,
    switch_ports,
    wait_for,
    watcher_env,
)

from ovn_k8s import annotations, topology, translate


@pytest.fixture(scope="module")
def env():
    yield from watcher_env()


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
    wait_for(lambda: lsp(nb, "db-0") is not None, what="db-0's port in our replica")
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
    assert restart_writes_nothing(watcher, nb), "the restarted watcher wrote to NB"
    after = {p.name: (p.addresses, dict(p.external_ids)) for p in nb.rows("Logical_Switch_Port")}
    assert after == ports
    assert watcher.status()["pods"]["transactions"] == 0


def test_node_deleted_removes_its_switch(env):
    _, _, v1, _, nb = env
    make_node(v1, "node3")
    wait_for(lambda: any(s.name == "node3" for s in nb.rows("Logical_Switch")), what="node3")
    v1.delete_node("node3")
    wait_for(lambda: not any(s.name == "node3" for s in nb.rows("Logical_Switch")),
             what="node3's switch gone")
    assert not any(p.name == "rtos-node3" for p in nb.rows("Logical_Router_Port"))


def test_sync_mode_log_reports_drift_and_repair_fixes_it(env):
    _, _, _, watcher, nb = env
    watcher.stop()
    # Drift made while it was down: a port for a pod that does not exist.
    nb.execute(translate.EnsurePodPort(nb.api, translate.PodPort(
        "default", "ghost", "uid-ghost", "node1",
        translate.pod_network_for(netaddr.IPAddress("10.144.0.250"),
                                  netaddr.IPNetwork("10.144.0.0/24")))))
    watcher.start("--sync-mode=log")
    wait_for(watcher.idle, what="the watcher to settle")
    assert watcher.status()["startup"]["stale_pod_ports"] == 1
    assert "sync mode log: 1 stale pod ports" in watcher.log()
    assert lsp(nb, "ghost") is not None, "log mode must not repair"
    watcher.stop()
    watcher.start()
    wait_for(lambda: lsp(nb, "ghost") is None, what="repair mode to remove the stale port")


def test_node_keeps_a_subnet_given_to_minion_init_and_conflicts_are_resolved(env):
    _, _, v1, _, nb = env
    given = netaddr.IPNetwork("10.144.200.0/24")
    # What `minion-init --minion-switch-subnet` leaves in NB before the Node exists.
    nb.execute(*topology.node_commands(nb, "node5", given))
    make_node(v1, "node5")
    wait_for(lambda: node_subnet(v1, "node5") is not None, what="node5's annotation")
    assert node_subnet(v1, "node5") == given
    # Someone annotates another node with the same subnet: it gets one of its own.
    v1.create_node({"metadata": {"name": "node6", "annotations": {
        annotations.NODE_SUBNETS: annotations.format_node_subnet(given)}}})
    wait_for(lambda: node_subnet(v1, "node6") != given, what="node6 to get its own subnet")
    assert node_subnet(v1, "node6").prefixlen == 24
