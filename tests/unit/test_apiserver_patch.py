"""Patches through the official client (strategic merge is its default for dicts, JSON patch
for lists, merge patch on request) and the patch algorithms on their own."""

import json

import pytest
from kubernetes import client

from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.apiserver import patch as P


@pytest.fixture
def v1():
    with ApiServer() as s, s.api_client() as c:
        yield client.CoreV1Api(c)


MERGE = "application/merge-patch+json"
JSONPATCH = "application/json-patch+json"


def make_pod(v1, name="p", **extra):
    body = {"metadata": {"name": name, "labels": {"app": "web", "tier": "fe"},
                         "annotations": {"a": "1"}},
            "spec": {"containers": [
                {"name": "c1", "image": "img:1", "env": [{"name": "A", "value": "1"}]},
                {"name": "c2", "image": "img:2"}]}}
    body["metadata"].update(extra)
    return v1.create_namespaced_pod("default", body)


def test_strategic_labels_annotations(v1):
    make_pod(v1)
    p = v1.patch_namespaced_pod("p", "default", {"metadata": {
        "labels": {"tier": None, "new": "x"}, "annotations": {"ovn": '{"ip_address":"x"}'}}})
    assert p.metadata.labels == {"app": "web", "new": "x"}
    assert p.metadata.annotations == {"a": "1", "ovn": '{"ip_address":"x"}'}


def test_strategic_merges_lists_by_key(v1):
    make_pod(v1)
    p = v1.patch_namespaced_pod("p", "default", {"spec": {"containers": [
        {"name": "c2", "image": "img:3"}]}})
    assert [(c.name, c.image) for c in p.spec.containers] == [("c1", "img:1"), ("c2", "img:3")]
    assert p.spec.containers[0].env[0].name == "A"
    # A merge patch replaces the list instead; the apiserver then refuses the spec change.
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("p", "default", {"spec": {"containers": [
            {"name": "c2", "image": "img:4"}]}}, _content_type=MERGE)
    assert e.value.status == 422


def test_strategic_finalizers_union_and_delete_directive(v1):
    make_pod(v1, finalizers=["example.com/a"])
    p = v1.patch_namespaced_pod("p", "default",
                                {"metadata": {"finalizers": ["example.com/b"]}})
    assert p.metadata.finalizers == ["example.com/a", "example.com/b"]
    p = v1.patch_namespaced_pod("p", "default", {"metadata": {
        "$deleteFromPrimitiveList/finalizers": ["example.com/a"]}})
    assert p.metadata.finalizers == ["example.com/b"]
    p = v1.patch_namespaced_pod("p", "default", {"metadata": {"finalizers": None}})
    assert p.metadata.finalizers is None


def test_status_conditions_merge_by_type(v1):
    make_pod(v1)
    v1.patch_namespaced_pod_status("p", "default", {"status": {"conditions": [
        {"type": "Ready", "status": "False"}, {"type": "PodScheduled", "status": "True"}]}})
    p = v1.patch_namespaced_pod_status("p", "default", {"status": {"conditions": [
        {"type": "Ready", "status": "True"}]}})
    assert {c.type: c.status for c in p.status.conditions} == {"Ready": "True",
                                                               "PodScheduled": "True"}
    p = v1.patch_namespaced_pod_status("p", "default", {"status": {"conditions": [
        {"type": "Ready", "$patch": "delete"}]}})
    assert [c.type for c in p.status.conditions] == ["PodScheduled"]
    # Status writes cannot touch labels (ResetObjectMetaForStatus).
    p = v1.patch_namespaced_pod_status("p", "default", {"metadata": {"labels": {"x": "y"}}})
    assert "x" not in p.metadata.labels


def test_merge_patch_on_status_and_metadata(v1):
    make_pod(v1)
    p = v1.patch_namespaced_pod_status("p", "default",
                                       {"status": {"phase": "Running", "podIP": "10.0.0.5"}},
                                       _content_type=MERGE)
    assert (p.status.phase, p.status.pod_ip) == ("Running", "10.0.0.5")
    p = v1.patch_namespaced_pod("p", "default", {"metadata": {"annotations": None}},
                                _content_type=MERGE)
    assert p.metadata.annotations is None


def test_json_patch(v1):
    make_pod(v1)
    p = v1.patch_namespaced_pod("p", "default", [
        {"op": "add", "path": "/metadata/labels/k8s.ovn.org~1x", "value": "1"},
        {"op": "remove", "path": "/metadata/labels/tier"},
        {"op": "replace", "path": "/spec/containers/1/image", "value": "img:9"},
        {"op": "test", "path": "/metadata/name", "value": "p"},
    ])
    assert p.metadata.labels == {"app": "web", "k8s.ovn.org/x": "1"}
    assert p.spec.containers[1].image == "img:9"
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("p", "default", [
            {"op": "test", "path": "/metadata/labels/app", "value": "db"}])
    assert e.value.status == 422
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("p", "default", [{"op": "remove", "path": "/nope/x"}])
    assert e.value.status == 422


def test_patch_with_resource_version_is_a_precondition(v1):
    p = make_pod(v1)
    rv = p.metadata.resource_version
    v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "1"}}})
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("p", "default", {"metadata": {"resourceVersion": rv,
                                                              "labels": {"x": "2"}}})
    assert e.value.status == 409
    assert "the object has been modified" in e.value.body


def test_noop_patch_keeps_resource_version(v1):
    p = make_pod(v1)
    q = v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    assert q.metadata.resource_version == p.metadata.resource_version


def test_patch_missing_object_and_unsupported_type(v1):
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("nope", "default", {"metadata": {"labels": {"a": "b"}}})
    assert e.value.status == 404
    make_pod(v1)
    with pytest.raises(client.ApiException) as e:
        v1.patch_namespaced_pod("p", "default", {"metadata": {}},
                                _content_type="application/apply-patch+yaml")
    assert e.value.status == 415


def test_service_ports_merge_by_port(v1):
    v1.create_namespaced_service("default", {"metadata": {"name": "s"}, "spec": {"ports": [
        {"name": "http", "port": 80}, {"name": "https", "port": 443}]}})
    s = v1.patch_namespaced_service("s", "default", {"spec": {"ports": [
        {"port": 443, "targetPort": 8443}]}})
    assert [(p.port, p.target_port) for p in s.spec.ports] == [(80, 80), (443, 8443)]


# ---- the algorithms -----------------------------------------------------------------------------

def test_merge_patch_rfc7386():
    target = {"a": "b", "c": {"d": "e", "f": "g"}}
    assert P.merge_patch(target, {"a": "z", "c": {"f": None}}) == {"a": "z", "c": {"d": "e"}}
    assert target == {"a": "b", "c": {"d": "e", "f": "g"}}  # inputs stay untouched
    assert P.merge_patch({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}
    assert P.merge_patch({"a": 1}, {"b": {"c": None}}) == {"a": 1, "b": {}}


def test_json_patch_rfc6902():
    doc = {"foo": ["bar", "baz"], "x": {"y": 1}}
    out = P.json_patch(doc, [
        {"op": "add", "path": "/foo/1", "value": "qux"},
        {"op": "add", "path": "/foo/-", "value": "end"},
        {"op": "move", "from": "/x/y", "path": "/z"},
        {"op": "copy", "from": "/foo/0", "path": "/w"},
    ])
    assert out == {"foo": ["bar", "qux", "baz", "end"], "x": {}, "z": 1, "w": "bar"}
    assert doc == {"foo": ["bar", "baz"], "x": {"y": 1}}


def test_strategic_directives():
    keys = {("items",): "name", ("tags",): ""}
    orig = {"items": [{"name": "a", "v": 1}, {"name": "b", "v": 2}], "tags": ["x"],
            "m": {"k": 1, "j": 2}}
    out = P.strategic_merge_patch(orig, {
        "items": [{"name": "b", "$patch": "delete"}, {"name": "c", "v": 3}],
        "tags": ["y"], "m": {"$patch": "replace", "only": 1}}, keys)
    assert out == {"items": [{"name": "a", "v": 1}, {"name": "c", "v": 3}],
                   "tags": ["x", "y"], "m": {"only": 1}}
    out = P.strategic_merge_patch(orig, {"items": [{"$patch": "replace"}, {"name": "z"}]},
                                  keys)
    assert out["items"] == [{"name": "z"}]
    out = P.strategic_merge_patch(orig, {"$setElementOrder/items": [{"name": "b"},
                                                                     {"name": "a"}]}, keys)
    assert [i["name"] for i in out["items"]] == ["b", "a"]
    out = P.strategic_merge_patch({"m": {"a": 1, "b": 2}}, {"m": {"$retainKeys": ["a"],
                                                                 "a": 5}}, keys)
    assert out == {"m": {"a": 5}}


def test_merge_patches_leave_earlier_versions_intact():
    # Pod merge patches share untouched parts with the stored object instead of copying
    # it: every version in the history must still read exactly as it was written, and no
    # later write (merge, strategic, status, PUT) may change what an earlier one returned.
    with ApiServer() as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        make_pod(v1)
        start = s.store.rv
        v1.patch_namespaced_pod("p", "default", {"metadata": {"annotations": {"ovn": "1"}}},
                                _content_type=MERGE)
        v1.patch_namespaced_pod_status("p", "default", {"status": {"phase": "Running"}},
                                       _content_type=MERGE)
        v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": None}},
                                                 "spec": {"activeDeadlineSeconds": 5}},
                                _content_type=MERGE)
        seen = [json.loads(e.new.raw) for e in s.store.events_after(start)]
        v1.patch_namespaced_pod("p", "default", {"metadata": {"annotations": {"ovn": "2"}}})
        v1.patch_namespaced_pod("p", "default", {"spec": {"containers": [
            {"name": "c1", "image": "img:9"}]}})
        cur = v1.read_namespaced_pod("p", "default")
        cur.metadata.labels = {"put": "1"}
        v1.replace_namespaced_pod("p", "default", cur)
        events = s.store.events_after(start)
        assert [e.new.obj for e in events[:3]] == seen
        assert [json.loads(e.new.raw) for e in events[:3]] == seen
        assert [e["metadata"]["annotations"].get("ovn") for e in seen] == ["1", "1", "1"]
        assert [e["status"]["phase"] for e in seen] == ["Pending", "Running", "Running"]
        assert [e["metadata"]["labels"].get("app") for e in seen] == ["web", "web", None]
        assert [e["spec"].get("activeDeadlineSeconds") for e in seen] == [None, None, 5]
        assert [c["image"] for c in seen[2]["spec"]["containers"]] == ["img:1", "img:2"]
        final = v1.read_namespaced_pod("p", "default")
        assert final.metadata.annotations == {"a": "1", "ovn": "2"}
        assert final.metadata.labels == {"put": "1"}
        assert final.spec.containers[0].image == "img:9"
        assert final.spec.active_deadline_seconds == 5
