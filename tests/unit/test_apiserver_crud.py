"""The API emulator through the official client: CRUD of every built-in resource, errors
with Status bodies, discovery, auth, kubeconfig and the command-line entry point."""

import http.client
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from kubernetes import client, config

from ovn_k8s.sandbox.apiserver import ApiServer


@pytest.fixture
def srv():
    with ApiServer() as s:
        yield s


@pytest.fixture
def api(srv):
    with srv.api_client() as c:
        yield c


def status_of(exc: client.ApiException) -> dict:
    return json.loads(exc.body)


def raw(srv, method, path, body=None, token=True):
    """A request the typed client would refuse to send (it validates bodies itself)."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {srv.token}"
    conn.request(method, path, json.dumps(body) if body is not None else None, headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, json.loads(data) if data.startswith(b"{") else data


def pod(name, **labels):
    return client.V1Pod(
        metadata=client.V1ObjectMeta(name=name, labels=labels or None),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx:1.25")]))


# ---- per resource -----------------------------------------------------------------------------

def test_namespace_crud(api):
    v1 = client.CoreV1Api(api)
    names = {n.metadata.name for n in v1.list_namespace().items}
    assert {"default", "kube-system", "kube-public", "kube-node-lease"} <= names
    ns = v1.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team-a")))
    assert ns.status.phase == "Active"
    assert ns.spec.finalizers == ["kubernetes"]
    assert ns.metadata.labels == {"kubernetes.io/metadata.name": "team-a"}
    got = v1.read_namespace("team-a")
    assert got.metadata.uid == ns.metadata.uid
    ns.metadata.labels["env"] = "prod"
    upd = v1.replace_namespace("team-a", ns)
    assert upd.metadata.labels["env"] == "prod"
    assert int(upd.metadata.resource_version) > int(ns.metadata.resource_version)
    v1.delete_namespace("team-a")
    with pytest.raises(client.ApiException) as e:
        v1.read_namespace("team-a")
    assert e.value.status == 404
    with pytest.raises(client.ApiException) as e:
        v1.delete_namespace("default")
    assert e.value.status == 403


def test_events(api):
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_event("default", client.CoreV1Event(
        metadata=client.V1ObjectMeta(name="p.1"), reason="Wired", type="Normal",
        involved_object=client.V1ObjectReference(kind="Pod", name="p", namespace="default"),
        message="port up"))
    got = v1.list_namespaced_event("default", field_selector="involvedObject.name=p")
    assert [e.reason for e in got.items] == ["Wired"]


def test_node_crud_and_status(api):
    v1 = client.CoreV1Api(api)
    node = client.V1Node(metadata=client.V1ObjectMeta(name="node-1", labels={"role": "w"}),
                         spec=client.V1NodeSpec(pod_cidr="10.128.1.0/24"))
    created = v1.create_node(node)
    assert created.metadata.name == "node-1"
    st = v1.patch_node_status("node-1", {"status": {"addresses": [
        {"type": "InternalIP", "address": "192.168.1.10"}]}})
    assert st.status.addresses[0].address == "192.168.1.10"
    # The main resource ignores status changes, as for any type with a status subresource.
    ignored = v1.patch_node("node-1", {"status": {"addresses": [
        {"type": "InternalIP", "address": "1.1.1.1"}]}})
    assert ignored.status.addresses[0].address == "192.168.1.10"
    assert ignored.metadata.resource_version == st.metadata.resource_version
    with pytest.raises(client.ApiException) as e:
        v1.patch_node("node-1", {"spec": {"podCIDR": "10.128.9.0/24"}})
    assert e.value.status == 422
    assert [n.metadata.name for n in v1.list_node().items] == ["node-1"]
    v1.delete_node("node-1")
    assert v1.list_node().items == []


def test_pod_crud_defaults_and_binding(api):
    v1 = client.CoreV1Api(api)
    p = v1.create_namespaced_pod("default", pod("web", app="web"))
    assert p.status.phase == "Pending"
    assert p.status.qos_class == "BestEffort"
    assert p.spec.restart_policy == "Always"
    assert p.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert p.metadata.generation == 1
    assert p.metadata.namespace == "default"
    # Spec is immutable apart from images and a few fields.
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("web", "default", {"spec": {"nodeName": "node-1"}})
    assert e.value.status == 422
    assert "pod updates may not change fields" in status_of(e.value)["message"]
    # A real apiserver answers a binding with a Status, which this client version cannot
    # deserialize into V1Binding (kubernetes-client/python#547): read it raw.
    resp = v1.create_namespaced_pod_binding("web", "default", client.V1Binding(
        metadata=client.V1ObjectMeta(name="web"),
        target=client.V1ObjectReference(kind="Node", name="node-1")), _preload_content=False)
    assert resp.status == 201
    assert json.loads(resp.data)["status"] == "Success"
    bound = v1.read_namespaced_pod("web", "default")
    assert bound.spec.node_name == "node-1"
    assert any(c.type == "PodScheduled" for c in bound.status.conditions)
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_binding("default", client.V1Binding(
            metadata=client.V1ObjectMeta(name="web"),
            target=client.V1ObjectReference(kind="Node", name="node-2")),
            _preload_content=False)
    assert e.value.status == 409
    img = v1.patch_namespaced_pod("web", "default", {"spec": {"containers": [
        {"name": "c", "image": "nginx:1.26"}]}})
    assert img.spec.containers[0].image == "nginx:1.26"
    assert img.metadata.generation == 2
    st = v1.patch_namespaced_pod_status("web", "default", {"status": {
        "phase": "Running", "podIP": "10.128.1.5"}})
    assert st.status.phase == "Running"
    assert st.metadata.generation == 2
    assert v1.read_namespaced_pod_status("web", "default").status.pod_ip == "10.128.1.5"
    assert len(v1.list_pod_for_all_namespaces().items) == 1
    v1.delete_namespaced_pod("web", "default")
    assert v1.list_namespaced_pod("default").items == []


def test_service_crud(api):
    v1 = client.CoreV1Api(api)
    kube = v1.read_namespaced_service("kubernetes", "default")
    assert kube.spec.cluster_ip == "10.96.0.1"
    svc = v1.create_namespaced_service("default", client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80)])))
    assert svc.spec.cluster_ip.startswith("10.96.")
    assert svc.spec.cluster_ips == [svc.spec.cluster_ip]
    assert svc.spec.type == "ClusterIP"
    assert svc.spec.ports[0].target_port == 80
    assert svc.spec.ports[0].protocol == "TCP"
    svc.spec.ports[0].port = 8080
    svc.spec.ports[0].target_port = 8080
    upd = v1.replace_namespaced_service("web", "default", svc)
    assert upd.spec.cluster_ip == svc.spec.cluster_ip
    v1.delete_namespaced_service("web", "default")
    with pytest.raises(client.ApiException) as e:
        v1.read_namespaced_service("web", "default")
    assert e.value.status == 404


def test_endpoints_configmap_lease_crud(api):
    v1 = client.CoreV1Api(api)
    ep = v1.create_namespaced_endpoints("default", client.V1Endpoints(
        metadata=client.V1ObjectMeta(name="web"),
        subsets=[client.V1EndpointSubset(
            addresses=[client.V1EndpointAddress(ip="10.128.1.5")],
            ports=[client.CoreV1EndpointPort(port=80, protocol="TCP")])]))
    assert ep.subsets[0].addresses[0].ip == "10.128.1.5"
    ep.subsets[0].addresses.append(client.V1EndpointAddress(ip="10.128.2.5"))
    assert len(v1.replace_namespaced_endpoints("web", "default", ep).subsets[0].addresses) == 2
    v1.delete_namespaced_endpoints("web", "default")

    cm = v1.create_namespaced_config_map("default", client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="cfg"), data={"a": "1"}))
    assert cm.data == {"a": "1"}
    assert cm.metadata.generation is None
    v1.patch_namespaced_config_map("cfg", "default", {"data": {"b": "2"}})
    assert v1.read_namespaced_config_map("cfg", "default").data == {"a": "1", "b": "2"}
    res = v1.delete_namespaced_config_map("cfg", "default")
    assert res["status"] == "Success"  # the client types this response as a plain dict

    co = client.CoordinationV1Api(api)
    lease = co.replace_namespaced_lease("ovn-k8s-master", "kube-system", client.V1Lease(
        metadata=client.V1ObjectMeta(name="ovn-k8s-master"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15)))
    assert lease.spec.holder_identity == "a"
    lease.spec.holder_identity = "b"
    assert co.replace_namespaced_lease("ovn-k8s-master", "kube-system",
                                       lease).spec.holder_identity == "b"
    assert len(co.list_namespaced_lease("kube-system").items) == 1
    co.delete_namespaced_lease("ovn-k8s-master", "kube-system")


def test_endpoint_put_creates(api):
    v1 = client.CoreV1Api(api)
    ep = v1.replace_namespaced_endpoints("web", "default", client.V1Endpoints(
        metadata=client.V1ObjectMeta(name="web")))
    assert ep.metadata.uid
    assert v1.read_namespaced_endpoints("web", "default").metadata.uid == ep.metadata.uid


def test_endpointslice_and_networkpolicy_crud(api):
    d = client.DiscoveryV1Api(api)
    es = d.create_namespaced_endpoint_slice("default", client.V1EndpointSlice(
        metadata=client.V1ObjectMeta(name="web-abc",
                                     labels={"kubernetes.io/service-name": "web"}),
        address_type="IPv4",
        endpoints=[client.V1Endpoint(addresses=["10.128.1.5"],
                                     conditions=client.V1EndpointConditions(ready=True))],
        ports=[client.DiscoveryV1EndpointPort(port=80, protocol="TCP", name="")]))
    assert es.metadata.generation == 1
    got = d.list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web")
    assert [x.metadata.name for x in got.items] == ["web-abc"]
    with pytest.raises(client.ApiException) as e:
        d.create_namespaced_endpoint_slice("default", {
            "metadata": {"name": "bad"}, "addressType": "IPv5", "endpoints": []})
    assert e.value.status == 422
    d.delete_namespaced_endpoint_slice("web-abc", "default")

    n = client.NetworkingV1Api(api)
    np = n.create_namespaced_network_policy("default", client.V1NetworkPolicy(
        metadata=client.V1ObjectMeta(name="deny"),
        spec=client.V1NetworkPolicySpec(pod_selector=client.V1LabelSelector(),
                                        policy_types=["Ingress"])))
    assert np.metadata.generation == 1
    np2 = n.patch_namespaced_network_policy("deny", "default",
                                            {"spec": {"policyTypes": ["Ingress", "Egress"]}})
    assert np2.metadata.generation == 2
    n2 = n.patch_namespaced_network_policy("deny", "default", {"metadata": {"labels": {"a": "b"}}})
    assert n2.metadata.generation == 2
    assert len(n.list_network_policy_for_all_namespaces().items) == 1
    n.delete_namespaced_network_policy("deny", "default")


# ---- errors -----------------------------------------------------------------------------------

def test_not_found_status_body(api):
    v1 = client.CoreV1Api(api)
    with pytest.raises(client.ApiException) as e:
        v1.read_namespaced_pod("nope", "default")
    st = status_of(e.value)
    assert e.value.status == 404
    assert st == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                  "message": 'pods "nope" not found', "reason": "NotFound",
                  "details": {"name": "nope", "kind": "pods"}, "code": 404}
    with pytest.raises(client.ApiException) as e:
        client.AppsV1Api(api).list_namespaced_deployment("default")
    assert e.value.status == 404
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_pod("missing-ns", pod("x"))
    assert e.value.status == 404
    assert status_of(e.value)["message"] == 'namespaces "missing-ns" not found'


def test_already_exists_and_invalid(api, srv):
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod("a"))
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_pod("default", pod("a"))
    assert e.value.status == 409
    assert status_of(e.value)["reason"] == "AlreadyExists"
    for bad in ("Upper", "under_score", "x" * 254):
        with pytest.raises(client.ApiException) as e:
            v1.create_namespaced_pod("default", pod(bad))
        assert e.value.status == 422
        st = status_of(e.value)
        assert st["reason"] == "Invalid"
        assert st["details"]["causes"][0]["field"] == "metadata.name"
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_pod("default", pod("ok", **{"bad key": "v"}))
    assert e.value.status == 422
    pods = "/api/v1/namespaces/default/pods"
    code, st = raw(srv, "POST", pods, {"metadata": {"name": "nocontainers"}, "spec": {}})
    assert code == 422
    assert "spec.containers: Required value" in st["message"]
    code, st = raw(srv, "POST", pods, {"metadata": {"name": "rv", "resourceVersion": "5"},
                                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert code == 500  # what the real apiserver answers, too
    assert "resourceVersion should not be set" in st["message"]
    code, st = raw(srv, "POST", pods, {"kind": "Service", "metadata": {"name": "x"}})
    assert code == 400
    code, st = raw(srv, "PUT", pods + "/a", {"metadata": {"name": "b"}})
    assert code == 400
    assert st["message"] == "the name of the object (b) does not match the name on the URL (a)"
    code, st = raw(srv, "POST", pods + "/a", {})
    assert code == 405
    code, _ = raw(srv, "GET", "/api/v1/pods/a")
    assert code == 404
    code, _ = raw(srv, "DELETE", "/api/v1/pods")  # deletecollection is per namespace
    assert code == 405
    code, st = raw(srv, "POST", pods, {"metadata": {"name": "x", "namespace": "other"},
                                       "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert code == 400 and "does not match the namespace" in st["message"]


def test_read_modify_replace_round_trip(api):
    v1 = client.CoreV1Api(api)
    v1.create_namespaced_pod("default", pod("rt", app="a"))
    cur = v1.read_namespaced_pod("rt", "default")
    cur.metadata.labels["app"] = "b"
    cur.metadata.annotations = {"ovn": "{}"}
    out = v1.replace_namespaced_pod("rt", "default", cur)
    assert out.metadata.labels == {"app": "b"} and out.metadata.annotations == {"ovn": "{}"}
    assert out.spec == cur.spec


def test_generate_name_and_dry_run(api):
    v1 = client.CoreV1Api(api)
    p = v1.create_namespaced_pod("default", {
        "metadata": {"generateName": "web-"},
        "spec": {"containers": [{"name": "c", "image": "i"}]}})
    assert p.metadata.name.startswith("web-") and len(p.metadata.name) == 9
    before = v1.list_namespaced_pod("default").metadata.resource_version
    dry = v1.create_namespaced_pod("default", pod("dry"), dry_run="All")
    assert dry.metadata.name == "dry" and dry.metadata.resource_version is None
    v1.delete_namespaced_pod(p.metadata.name, "default", dry_run="All")
    after = v1.list_namespaced_pod("default")
    assert after.metadata.resource_version == before
    assert [x.metadata.name for x in after.items] == [p.metadata.name]


def test_delete_collection(api):
    v1 = client.CoreV1Api(api)
    for i in range(5):
        v1.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name=f"cm{i}", labels={"even": str(i % 2 == 0)})))
    v1.delete_collection_namespaced_config_map("default", label_selector="even=True")
    assert sorted(c.metadata.name for c in v1.list_namespaced_config_map("default").items) == [
        "cm1", "cm3"]


# ---- discovery, auth, kubeconfig, CLI ---------------------------------------------------------

def test_discovery(api, srv):
    assert client.VersionApi(api).get_code().major == "1"
    core = client.CoreApi(api).get_api_versions()
    assert core.versions == ["v1"]
    res = {r.name: r for r in client.CoreV1Api(api).get_api_resources().resources}
    assert {"pods", "pods/status", "pods/binding", "services", "services/status", "nodes",
            "namespaces", "endpoints", "configmaps"} <= set(res)
    assert res["pods"].namespaced and not res["nodes"].namespaced
    assert "watch" in res["pods"].verbs and res["pods"].short_names == ["po"]
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert {"discovery.k8s.io", "networking.k8s.io", "coordination.k8s.io",
            "apiextensions.k8s.io"} <= set(groups)
    assert groups["discovery.k8s.io"].preferred_version.group_version == "discovery.k8s.io/v1"
    rl = client.DiscoveryV1Api(api).get_api_resources()
    assert [r.name for r in rl.resources] == ["endpointslices"]
    grp = client.DiscoveryApi(api).get_api_group()
    assert grp.name == "discovery.k8s.io"


def test_bearer_token_required(srv):
    anon = client.ApiClient(client.Configuration(host=srv.url))
    with pytest.raises(client.ApiException) as e:
        client.CoreV1Api(anon).list_namespace()
    assert e.value.status == 401
    assert status_of(e.value)["reason"] == "Unauthorized"
    cfg = client.Configuration(host=srv.url)
    cfg.api_key = {"authorization": "wrong"}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with pytest.raises(client.ApiException) as e:
        client.CoreV1Api(client.ApiClient(cfg)).list_namespace()
    assert e.value.status == 401


def test_kubeconfig(srv, tmp_path):
    path = srv.write_kubeconfig(tmp_path / "kubeconfig")
    assert os.stat(path).st_mode & 0o777 == 0o600
    api = config.new_client_from_config(config_file=path)
    assert client.CoreV1Api(api).read_namespace("default").metadata.name == "default"


def test_explicit_token_and_restart(tmp_path):
    with ApiServer(token="s3cret") as s:
        assert s.token == "s3cret"
        v1 = client.CoreV1Api(s.api_client())
        v1.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="keep")))
        port = s.port
        s.stop()
        s.start()
        assert s.port == port
        assert v1.read_namespaced_config_map("keep", "default").metadata.name == "keep"


def test_cli_serves_until_sigterm(tmp_path):
    kc = tmp_path / "kc"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--port", "0", "--kubeconfig",
         str(kc)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        url = proc.stdout.readline().decode().strip()
        assert url.startswith("http://127.0.0.1:")
        deadline = time.monotonic() + 10
        while not kc.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        api = config.new_client_from_config(config_file=str(kc))
        assert client.CoreV1Api(api).read_namespace("default").status.phase == "Active"
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
