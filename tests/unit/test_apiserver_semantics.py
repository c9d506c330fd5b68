"""Object semantics of the API emulator, driven with the official client: optimistic
concurrency, finalizers and deletion, namespaces, service allocation, selectors,
pagination and the resourceVersion rules of list."""

import json
import threading
import time

import pytest
from kubernetes import client

from ovn_k8s.sandbox.apiserver import ApiServer


@pytest.fixture
def srv():
    with ApiServer() as s:
        yield s


@pytest.fixture
def v1(srv):
    with srv.api_client() as c:
        yield client.CoreV1Api(c)


def cm(name, ns="default", **labels):
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name, namespace=ns,
                                                           labels=labels or None),
                              data={"n": "0"})


def mkpod(v1, name, ns="default", node=None, labels=None, finalizers=None):
    return v1.create_namespaced_pod(ns, {
        "metadata": {"name": name, "labels": labels or {}, "finalizers": finalizers or []},
        "spec": {"containers": [{"name": "c", "image": "i:1"}],
                 **({"nodeName": node} if node else {})}})


def code(fn, *a, **kw):
    with pytest.raises(client.ApiException) as e:
        fn(*a, **kw)
    return e.value.status, json.loads(e.value.body)


# ---- concurrency ------------------------------------------------------------------------------

def test_update_conflict_on_stale_resource_version(v1):
    first = v1.create_namespaced_config_map("default", cm("x"))
    first.data = {"n": "1"}
    second = v1.replace_namespaced_config_map("x", "default", first)
    assert int(second.metadata.resource_version) > int(first.metadata.resource_version)
    first.data = {"n": "2"}
    status, st = code(v1.replace_namespaced_config_map, "x", "default", first)
    assert status == 409
    assert st["reason"] == "Conflict"
    assert st["message"] == ('Operation cannot be fulfilled on configmaps "x": the object has '
                             "been modified; please apply your changes to the latest version "
                             "and try again")
    # No resourceVersion: an unconditional update, allowed for built-in types.
    first.metadata.resource_version = None
    assert v1.replace_namespaced_config_map("x", "default", first).data == {"n": "2"}


def test_uid_and_server_fields_are_kept(v1):
    c = v1.create_namespaced_config_map("default", cm("x"))
    c.metadata.uid = "00000000-0000-0000-0000-000000000000"
    status, _ = code(v1.replace_namespaced_config_map, "x", "default", c)
    assert status == 409
    c = v1.read_namespaced_config_map("x", "default")
    created = c.metadata.creation_timestamp
    c.metadata.creation_timestamp = None
    c.data = {"n": "5"}
    assert v1.replace_namespaced_config_map("x", "default",
                                            c).metadata.creation_timestamp == created


def test_concurrent_writers_lose_no_update(srv):
    with srv.api_client() as c:
        client.CoreV1Api(c).create_namespaced_config_map("default", cm("counter"))
    conflicts = []

    def bump(times):
        with srv.api_client() as c:
            api = client.CoreV1Api(c)
            for _ in range(times):
                while True:
                    cur = api.read_namespaced_config_map("counter", "default")
                    cur.data["n"] = str(int(cur.data["n"]) + 1)
                    try:
                        api.replace_namespaced_config_map("counter", "default", cur)
                        break
                    except client.ApiException as e:
                        assert e.status == 409
                        conflicts.append(1)

    threads = [threading.Thread(target=bump, args=(25,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    with srv.api_client() as c:
        final = client.CoreV1Api(c).read_namespaced_config_map("counter", "default")
    assert final.data["n"] == "200"
    assert conflicts, "8 writers should have collided at least once"


# ---- deletion ---------------------------------------------------------------------------------

def test_finalizers_hold_deletion(v1):
    mkpod(v1, "f", finalizers=["example.com/block"])
    out = v1.delete_namespaced_pod("f", "default")
    assert out.metadata.deletion_timestamp is not None
    p = v1.read_namespaced_pod("f", "default")
    assert p.metadata.deletion_timestamp is not None
    assert p.metadata.deletion_grace_period_seconds == 0
    assert p.metadata.generation == 2
    # Deleting again changes nothing; adding finalizers is now forbidden.
    again = v1.delete_namespaced_pod("f", "default")
    assert again.metadata.resource_version == p.metadata.resource_version
    status, st = code(v1.patch_namespaced_pod, "f", "default",
                      {"metadata": {"finalizers": ["example.com/block", "example.com/more"]}})
    assert status == 422 and "no new finalizers" in st["message"]
    v1.patch_namespaced_pod("f", "default", {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json")
    status, _ = code(v1.read_namespaced_pod, "f", "default")
    assert status == 404


def test_delete_preconditions(v1):
    c = v1.create_namespaced_config_map("default", cm("x"))
    status, _ = code(v1.delete_namespaced_config_map, "x", "default",
                      body=client.V1DeleteOptions(preconditions=client.V1Preconditions(
                          resource_version="1")))
    assert status == 409
    v1.delete_namespaced_config_map("x", "default", body=client.V1DeleteOptions(
        preconditions=client.V1Preconditions(uid=c.metadata.uid)))


def test_graceful_pod_deletion_without_kubelet():
    with ApiServer(kubelet_delay=None) as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        mkpod(v1, "bound", node="node-1")
        mkpod(v1, "pending")
        v1.delete_namespaced_pod("pending", "default")
        assert code(v1.read_namespaced_pod, "pending", "default")[0] == 404
        v1.delete_namespaced_pod("bound", "default")
        p = v1.read_namespaced_pod("bound", "default")
        assert p.metadata.deletion_grace_period_seconds == 30
        assert p.metadata.deletion_timestamp is not None
        v1.delete_namespaced_pod("bound", "default", grace_period_seconds=0)
        assert code(v1.read_namespaced_pod, "bound", "default")[0] == 404


def test_graceful_pod_deletion_with_kubelet_delay():
    with ApiServer(kubelet_delay=0.2) as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        mkpod(v1, "bound", node="node-1")
        v1.delete_namespaced_pod("bound", "default")
        assert v1.read_namespaced_pod("bound", "default").metadata.deletion_timestamp
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                v1.read_namespaced_pod("bound", "default")
            except client.ApiException as e:
                assert e.status == 404
                break
            time.sleep(0.05)
        else:
            pytest.fail("the emulated kubelet never finished the deletion")


def test_namespace_deletion_cascades_and_waits_for_finalizers(v1):
    v1.create_namespace({"metadata": {"name": "team"}})
    mkpod(v1, "a", ns="team")
    mkpod(v1, "b", ns="team", finalizers=["example.com/hold"])
    v1.create_namespaced_config_map("team", cm("c", ns="team"))
    v1.delete_namespace("team")
    ns = v1.read_namespace("team")
    assert ns.status.phase == "Terminating"
    assert [p.metadata.name for p in v1.list_namespaced_pod("team").items] == ["b"]
    assert v1.list_namespaced_config_map("team").items == []
    status, st = code(v1.create_namespaced_config_map, "team", cm("late", ns="team"))
    assert status == 403 and "being terminated" in st["message"]
    v1.patch_namespaced_pod("b", "team", {"metadata": {"finalizers": None}},
                            _content_type="application/merge-patch+json")
    assert code(v1.read_namespace, "team")[0] == 404


def test_namespace_spec_finalizers_and_finalize(v1):
    ns = v1.create_namespace({"metadata": {"name": "held"},
                              "spec": {"finalizers": ["example.com/net"]}})
    assert ns.spec.finalizers == ["example.com/net", "kubernetes"]
    mkpod(v1, "a", ns="held")
    v1.delete_namespace("held")
    ns = v1.read_namespace("held")
    # Content is gone and the namespace controller dropped its own finalizer only.
    assert v1.list_namespaced_pod("held").items == []
    assert ns.status.phase == "Terminating" and ns.spec.finalizers == ["example.com/net"]
    ns.spec.finalizers = []
    v1.replace_namespace_finalize("held", ns)
    assert code(v1.read_namespace, "held")[0] == 404


# ---- services ---------------------------------------------------------------------------------

def svc(name, **spec):
    spec.setdefault("ports", [{"port": 80}])
    return {"metadata": {"name": name}, "spec": spec}


def test_cluster_ip_allocation_and_release():
    with ApiServer(service_cidr="10.100.0.0/29") as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        # .1 is the kubernetes service; .2-.6 remain in a /29.
        ips = [v1.create_namespaced_service("default", svc(f"s{i}")).spec.cluster_ip
               for i in range(5)]
        assert sorted(ips) == [f"10.100.0.{i}" for i in range(2, 7)]
        status, st = code(v1.create_namespaced_service, "default", svc("full"))
        assert status == 500 and "range is full" in st["message"]
        v1.delete_namespaced_service("s0", "default")
        again = v1.create_namespaced_service("default", svc("again"))
        assert again.spec.cluster_ip == ips[0]


def test_explicit_headless_and_invalid_cluster_ips(v1):
    s = v1.create_namespaced_service("default", svc("fixed", clusterIP="10.96.5.5"))
    assert s.spec.cluster_ip == "10.96.5.5"
    status, st = code(v1.create_namespaced_service, "default", svc("dup", clusterIP="10.96.5.5"))
    assert status == 422 and "already allocated" in st["message"]
    status, st = code(v1.create_namespaced_service, "default", svc("out", clusterIP="10.1.1.1"))
    assert status == 422 and "not in the valid range" in st["message"]
    h = v1.create_namespaced_service("default", svc("headless", clusterIP="None", ports=[]))
    assert h.spec.cluster_ip == "None" and h.spec.cluster_ips == ["None"]
    status, st = code(v1.patch_namespaced_service, "fixed", "default",
                      {"spec": {"clusterIP": "10.96.6.6"}})
    assert status == 422
    status, _ = code(v1.create_namespaced_service, "default", svc("noports", ports=[]))
    assert status == 422
    status, _ = code(v1.create_namespaced_service, "default", svc("Bad_Name"))
    assert status == 422


def test_dual_stack_cluster_ips():
    """As with --service-cluster-ip-range=<v4>,<v6>: the first family is primary."""
    with ApiServer(service_cidr="10.100.0.0/24,fd00:10:96::/112") as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        single = v1.create_namespaced_service("default", svc("single")).spec
        assert single.ip_families == ["IPv4"] and single.ip_family_policy == "SingleStack"
        assert single.cluster_ips == [single.cluster_ip] and "." in single.cluster_ip
        dual = v1.create_namespaced_service("default", svc(
            "dual", ipFamilyPolicy="RequireDualStack")).spec
        assert dual.ip_families == ["IPv4", "IPv6"] and dual.cluster_ip == dual.cluster_ips[0]
        assert dual.cluster_ips[1].startswith("fd00:10:96::")
        v6 = v1.create_namespaced_service("default", svc(
            "v6", ipFamilyPolicy="PreferDualStack", ipFamilies=["IPv6"])).spec
        assert v6.ip_families == ["IPv6", "IPv4"] and ":" in v6.cluster_ip
        fixed = v1.create_namespaced_service("default", svc(
            "fixed", clusterIPs=["fd00:10:96::a"])).spec
        assert fixed.cluster_ip == "fd00:10:96::a" and fixed.ip_families == ["IPv6"]
        status, st = code(v1.create_namespaced_service, "default", svc(
            "two", ipFamilies=["IPv4", "IPv6"]))
        assert status == 422 and "RequireDualStack or PreferDualStack" in st["message"]
        # A replace without the allocated values keeps them, families too.
        v1.replace_namespaced_service("dual", "default", svc(
            "dual", ipFamilyPolicy="RequireDualStack", ports=[{"port": 81}]))
        again = v1.read_namespaced_service("dual", "default").spec
        assert again.cluster_ips == dual.cluster_ips and again.ip_families == dual.ip_families
        # Deleting releases both addresses.
        v1.delete_namespaced_service("dual", "default")
        back = v1.create_namespaced_service("default", svc(
            "back", ipFamilyPolicy="RequireDualStack", clusterIPs=dual.cluster_ips)).spec
        assert back.cluster_ips == dual.cluster_ips
    with ApiServer() as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        status, st = code(v1.create_namespaced_service, "default", svc(
            "dual", ipFamilyPolicy="RequireDualStack"))
        assert status == 422 and "not configured for dual-stack" in st["message"]
        prefer = v1.create_namespaced_service("default", svc(
            "prefer", ipFamilyPolicy="PreferDualStack")).spec
        assert prefer.ip_families == ["IPv4"] and len(prefer.cluster_ips) == 1
        status, _ = code(v1.create_namespaced_service, "default", svc(
            "v6", clusterIP="fd00::1"))
        assert status == 422


def test_node_ports(v1):
    s = v1.create_namespaced_service("default", svc("np", type="NodePort", ports=[
        {"name": "a", "port": 80}, {"name": "b", "port": 81, "nodePort": 30080}]))
    ports = {p.name: p.node_port for p in s.spec.ports}
    assert ports["b"] == 30080 and 30000 <= ports["a"] <= 32767
    assert s.spec.external_traffic_policy == "Cluster"
    status, st = code(v1.create_namespaced_service, "default", svc(
        "clash", type="NodePort", ports=[{"port": 80, "nodePort": 30080}]))
    assert status == 422 and "already allocated" in st["message"]
    # Back to ClusterIP: node ports are released.
    s = v1.patch_namespaced_service("np", "default", {"spec": {"type": "ClusterIP"}})
    assert all(p.node_port is None for p in s.spec.ports)
    v1.create_namespaced_service("default", svc("reuse", type="NodePort", ports=[
        {"port": 80, "nodePort": 30080}]))


# ---- selectors --------------------------------------------------------------------------------

def test_label_selectors(v1):
    mkpod(v1, "a", labels={"app": "web", "tier": "fe"})
    mkpod(v1, "b", labels={"app": "web", "tier": "be"})
    mkpod(v1, "c", labels={"app": "db"})

    def names(sel):
        return sorted(p.metadata.name for p in
                      v1.list_namespaced_pod("default", label_selector=sel).items)

    assert names("app=web") == ["a", "b"]
    assert names("app==web,tier!=fe") == ["b"]
    assert names("tier") == ["a", "b"]
    assert names("!tier") == ["c"]
    assert names("tier in (fe, be),app") == ["a", "b"]
    assert names("tier notin (fe)") == ["b", "c"]
    status, _ = code(v1.list_namespaced_pod, "default", label_selector="app in (")
    assert status == 400


def test_field_selectors(v1):
    mkpod(v1, "a", node="n1")
    mkpod(v1, "b", node="n2")
    v1.create_namespace({"metadata": {"name": "other"}})
    mkpod(v1, "a", ns="other", node="n1")

    def names(sel, ns=None):
        items = (v1.list_namespaced_pod(ns, field_selector=sel) if ns
                 else v1.list_pod_for_all_namespaces(field_selector=sel)).items
        return sorted(f"{p.metadata.namespace}/{p.metadata.name}" for p in items)

    assert names("spec.nodeName=n1") == ["default/a", "other/a"]
    assert names("spec.nodeName=n1", ns="default") == ["default/a"]
    assert names("metadata.name=b") == ["default/b"]
    assert names("metadata.namespace!=default") == ["other/a"]
    assert names("spec.nodeName=n1,metadata.namespace=other") == ["other/a"]
    assert names("status.phase=Pending") == ["default/a", "default/b", "other/a"]
    status, st = code(v1.list_namespaced_pod, "default", field_selector="spec.bogus=1")
    assert status == 400 and st["message"] == "field label not supported: spec.bogus"
    nodes = v1.list_node(field_selector="metadata.name=n1")
    assert nodes.items == []


# ---- lists: pagination and resourceVersion ----------------------------------------------------

def test_pagination_is_a_consistent_snapshot(v1):
    for i in range(10):
        v1.create_namespaced_config_map("default", cm(f"cm{i:02d}"))
    page = v1.list_namespaced_config_map("default", limit=4)
    assert [c.metadata.name for c in page.items] == ["cm00", "cm01", "cm02", "cm03"]
    assert page.metadata.remaining_item_count == 6
    rv = page.metadata.resource_version
    # Writes between pages do not show up in the paginated list.
    v1.delete_namespaced_config_map("cm05", "default")
    v1.create_namespaced_config_map("default", cm("cm04a"))
    seen = [c.metadata.name for c in page.items]
    token = page.metadata._continue
    while token:
        page = v1.list_namespaced_config_map("default", limit=4, _continue=token)
        assert page.metadata.resource_version == rv
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    assert seen == [f"cm{i:02d}" for i in range(10)]
    fresh = [c.metadata.name for c in v1.list_namespaced_config_map("default").items]
    assert "cm04a" in fresh and "cm05" not in fresh


def test_pagination_across_namespaces_and_with_selector(v1):
    v1.create_namespace({"metadata": {"name": "a"}})
    for ns in ("a", "default"):
        for i in range(3):
            v1.create_namespaced_config_map(ns, cm(f"x{i}", ns=ns, odd=str(i % 2)))
    items, token = [], None
    while True:
        page = v1.list_config_map_for_all_namespaces(limit=2, _continue=token,
                                                     label_selector="odd=0")
        items += [f"{c.metadata.namespace}/{c.metadata.name}" for c in page.items]
        assert page.metadata.remaining_item_count is None  # never with a selector
        token = page.metadata._continue
        if not token:
            break
    assert items == ["a/x0", "a/x2", "default/x0", "default/x2"]


def test_expired_continue_token(srv, v1):
    for i in range(4):
        v1.create_namespaced_config_map("default", cm(f"c{i}"))
    page = v1.list_namespaced_config_map("default", limit=2)
    v1.create_namespaced_config_map("default", cm("c9"))
    srv.compact()
    status, st = code(v1.list_namespaced_config_map, "default", limit=2,
                      _continue=page.metadata._continue)
    assert status == 410 and st["reason"] == "Expired"
    # The Status hands out an inconsistent token for the rest of the list.
    rest = v1.list_namespaced_config_map("default", limit=10,
                                         _continue=st["metadata"]["continue"])
    assert [c.metadata.name for c in rest.items] == ["c2", "c3", "c9"]


def test_list_resource_version_semantics(srv, v1):
    c = v1.create_namespaced_config_map("default", cm("a"))
    rv_a = c.metadata.resource_version
    v1.create_namespaced_config_map("default", cm("b"))
    latest = v1.list_namespaced_config_map("default")
    assert int(latest.metadata.resource_version) >= int(rv_a) + 1
    # resourceVersion=0: any state; here the newest.
    assert len(v1.list_namespaced_config_map("default", resource_version="0").items) == 2
    # NotOlderThan an old version: the newest state.
    nt = v1.list_namespaced_config_map("default", resource_version=rv_a,
                                       resource_version_match="NotOlderThan")
    assert len(nt.items) == 2
    # Exact: the state at that version, from history.
    ex = v1.list_namespaced_config_map("default", resource_version=rv_a,
                                       resource_version_match="Exact")
    assert ex.metadata.resource_version == rv_a
    assert [x.metadata.name for x in ex.items] == ["a"]
    # A non-zero version with a limit and no match is Exact too.
    lim = v1.list_namespaced_config_map("default", resource_version=rv_a, limit=5)
    assert [x.metadata.name for x in lim.items] == ["a"]
    status, _ = code(v1.list_namespaced_config_map, "default",
                     resource_version_match="Exact")
    assert status == 422
    status, _ = code(v1.list_namespaced_config_map, "default", resource_version="0",
                     resource_version_match="Exact")
    assert status == 422
    srv.compact()
    status, st = code(v1.list_namespaced_config_map, "default", resource_version=rv_a,
                      resource_version_match="Exact")
    assert status == 410 and st["reason"] == "Expired"
    # A version from the future: the apiserver waits for it, then gives up with 504.
    future = str(int(latest.metadata.resource_version) + 100)
    t = time.monotonic()
    status, st = code(v1.list_namespaced_config_map, "default", resource_version=future,
                      resource_version_match="NotOlderThan")
    assert status == 504 and time.monotonic() - t >= 2.5
    assert st["details"]["causes"][0]["reason"] == "ResourceVersionTooLarge"


def test_resource_version_is_cluster_wide_and_monotonic(v1):
    rvs = []
    for i in range(3):
        rvs.append(int(v1.create_namespaced_config_map("default", cm(f"m{i}")
                                                       ).metadata.resource_version))
        rvs.append(int(mkpod(v1, f"p{i}").metadata.resource_version))
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)
    assert rvs[-1] - rvs[0] == len(rvs) - 1
