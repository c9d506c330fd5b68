"""etc/: the manifests load, and the watcher's ClusterRole is exactly what it uses.

The watcher runs against the API emulator with auditing on, through nodes, pods,
services and EndpointSlices coming and going, then restarted against a cluster that
serves no EndpointSlices (it reads Endpoints); every request it made, as an RBAC
(group, resource, verb), must be granted by etc/kubernetes/ovn-k8s-watcher.yaml, and
every grant there must have been used.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from watcher_env import make_node, make_pod, pod_network, wait_for, watcher_env

from ovn_k8s.cni import install

ETC = Path(__file__).resolve().parents[2] / "etc"


def manifests(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((ETC / "kubernetes" / name).read_text()) if d]


def rbac_request(method: str, path: str, watch: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of one request; None for discovery."""
    parts = [p for p in path.split("/") if p]
    if parts[:2] == ["api", "v1"]:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]  # a namespaced resource (not the namespaces resource itself)
    if not rest:
        return None
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method)
    if verb is None:
        verb = "watch" if watch in ("true", "1") else ("get" if named else "list")
    return group, resource, verb


def granted(role: dict) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in role["rules"] for g in rule["apiGroups"]
            for r in rule["resources"] for v in rule["verbs"]}


@pytest.fixture(scope="module")
def env():
    yield from watcher_env(nodes=1)


def test_every_manifest_loads_and_is_well_formed():
    kinds = {}
    for path in sorted((ETC / "kubernetes").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{path.name}: {doc}"
            kinds.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    assert "ovn-k8s-watcher" in kinds["Deployment"]
    assert "ovn-k8s-node" in kinds["DaemonSet"]
    assert {"ovn-k8s-watcher", "ovn-k8s-node"} <= set(kinds["ClusterRole"])


def test_example_cni_config_is_what_minion_init_writes():
    example = json.loads((ETC / "cni" / "10-ovn-k8s.conflist").read_text())
    assert example == install.conflist(1400)


def test_watcher_cluster_role_is_least_privilege(env):
    _, srv, _, watcher, _ = env
    watcher.stop()
    srv.audit = []
    watcher.start()
    # The test acts as the rest of the cluster; its requests are told apart by agent.
    api = srv.api_client()
    api.user_agent = "ovn-k8s-test"
    v1, dv1 = client.CoreV1Api(api), client.DiscoveryV1Api(api)
    make_node(v1, "node1")
    make_pod(v1, "a", "node1")
    wait_for(lambda: pod_network(v1, "a") is not None, what="a's annotation")
    svc = v1.create_namespaced_service("default", {"metadata": {"name": "s"}, "spec": {
        "type": "NodePort", "ports": [{"port": 80, "targetPort": 8080}]}})
    dv1.create_namespaced_endpoint_slice("default", {
        "metadata": {"name": "s-1", "labels": {"kubernetes.io/service-name": "s"}},
        "addressType": "IPv4", "ports": [{"name": "", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [str(pod_network(v1, "a").ip.ip)]}]})
    v1.delete_namespaced_pod("a", "default", grace_period_seconds=0)
    v1.delete_namespaced_service("s", "default")
    v1.delete_node("node1")
    wait_for(watcher.idle, what="the watcher to settle")
    assert svc.spec.cluster_ip
    # A cluster that serves no EndpointSlices: the watcher reads Endpoints instead.
    watcher.stop()
    with srv.store.lock:
        srv.store.remove_type("endpointslices.discovery.k8s.io")
    watcher.start()
    assert watcher.status()["endpoint_source"] == "endpoints"
    v1.create_namespaced_endpoints("default", {"metadata": {"name": "s"}, "subsets": []})
    wait_for(watcher.idle, what="the watcher to settle")
    used = {r for r in (rbac_request(*a[:3]) for a in srv.audit if a[3] != "ovn-k8s-test")
            if r is not None}
    role = next(d for d in manifests("ovn-k8s-watcher.yaml") if d["kind"] == "ClusterRole")
    grants = granted(role)
    assert used - grants == set(), f"used but not granted: {sorted(used - grants)}"
    assert grants - used == set(), f"granted but never used: {sorted(grants - used)}"
