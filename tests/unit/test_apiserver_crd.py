"""CustomResourceDefinitions and their custom resources on the API emulator."""

import json
import time

import pytest
from kubernetes import client, watch

from ovn_k8s.sandbox.apiserver import ApiServer

GROUP = "k8s.ovn.org"


def route_crd(scope="Namespaced", versions=None):
    schema = {"openAPIV3Schema": {
        "type": "object",
        "properties": {
            "spec": {"type": "object", "required": ["prefix"], "properties": {
                "prefix": {"type": "string", "pattern": r"^[0-9./]+$"},
                "nextHop": {"type": "string"},
                "metric": {"type": "integer", "minimum": 0, "default": 100},
                "mode": {"type": "string", "enum": ["static", "ecmp"]},
                "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
            }},
            "status": {"type": "object", "properties": {
                "applied": {"type": "boolean"}}},
        }}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"routes.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": scope,
            "names": {"plural": "routes", "singular": "route", "kind": "Route",
                      "shortNames": ["rt"]},
            "versions": versions or [{
                "name": "v1", "served": True, "storage": True, "schema": schema,
                "subresources": {"status": {}},
                "selectableFields": [{"jsonPath": ".spec.nextHop"}]}],
        }}


@pytest.fixture
def srv():
    with ApiServer() as s:
        yield s


@pytest.fixture
def api(srv):
    with srv.api_client() as c:
        yield c


@pytest.fixture
def crd(api):
    ext = client.ApiextensionsV1Api(api)
    return ext.create_custom_resource_definition(route_crd())


def route(name, prefix="10.0.0.0/8", **spec):
    return {"apiVersion": f"{GROUP}/v1", "kind": "Route", "metadata": {"name": name},
            "spec": {"prefix": prefix, **spec}}


def test_crd_is_established_and_discoverable(api, crd):
    assert crd.metadata.name == f"routes.{GROUP}"
    conds = {c.type: c.status for c in crd.status.conditions}
    assert conds == {"NamesAccepted": "True", "Established": "True"}
    assert crd.status.accepted_names.kind == "Route"
    assert crd.status.stored_versions == ["v1"]
    assert crd.metadata.finalizers == ["customresourcecleanup.apiextensions.k8s.io"]
    assert crd.spec.names.list_kind == "RouteList"
    groups = {g.name: g for g in client.ApisApi(api).get_api_versions().groups}
    assert groups[GROUP].preferred_version.version == "v1"
    res = client.CustomObjectsApi(api).get_api_resources(GROUP, "v1")
    assert {r.name for r in res.resources} == {"routes", "routes/status"}
    assert res.resources[0].kind == "Route" and res.resources[0].short_names == ["rt"]


def test_custom_resource_crud(api, crd):
    co = client.CustomObjectsApi(api)
    r = co.create_namespaced_custom_object(GROUP, "v1", "default", "routes",
                                           route("r1", nextHop="10.1.0.1"))
    assert r["metadata"]["generation"] == 1 and r["metadata"]["uid"]
    assert r["spec"]["metric"] == 100  # schema default
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("r1"))
    assert e.value.status == 409
    got = co.get_namespaced_custom_object(GROUP, "v1", "default", "routes", "r1")
    assert got == r
    got["spec"]["nextHop"] = "10.1.0.2"
    upd = co.replace_namespaced_custom_object(GROUP, "v1", "default", "routes", "r1", got)
    assert upd["metadata"]["generation"] == 2
    # Custom resources need a resourceVersion on update (no unconditional update).
    del upd["metadata"]["resourceVersion"]
    with pytest.raises(client.ApiException) as e:
        co.replace_namespaced_custom_object(GROUP, "v1", "default", "routes", "r1", upd)
    assert e.value.status == 422
    lst = co.list_namespaced_custom_object(GROUP, "v1", "default", "routes")
    assert lst["kind"] == "RouteList" and [i["metadata"]["name"] for i in lst["items"]] == ["r1"]
    allns = co.list_custom_object_for_all_namespaces(GROUP, "v1", "routes")
    assert len(allns["items"]) == 1
    sel = co.list_namespaced_custom_object(GROUP, "v1", "default", "routes",
                                           field_selector="spec.nextHop=10.1.0.2")
    assert len(sel["items"]) == 1
    deleted = co.delete_namespaced_custom_object(GROUP, "v1", "default", "routes", "r1")
    assert deleted["metadata"]["name"] == "r1"
    with pytest.raises(client.ApiException) as e:
        co.get_namespaced_custom_object(GROUP, "v1", "default", "routes", "r1")
    assert e.value.status == 404
    assert json.loads(e.value.body)["message"] == f'routes.{GROUP} "r1" not found'


def test_schema_prunes_defaults_and_validates(api, crd):
    co = client.CustomObjectsApi(api)
    r = co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route(
        "r", unknown="dropped", extra={"anything": {"goes": 1}}))
    assert "unknown" not in r["spec"]
    assert r["spec"]["extra"] == {"anything": {"goes": 1}}
    for bad, field in ((route("b1", metric=-1), "spec.metric"),
                       (route("b2", metric="x"), "spec.metric"),
                       (route("b3", mode="bgp"), "spec.mode"),
                       (route("b4", prefix="not-an-ip"), "spec.prefix"),
                       ({"metadata": {"name": "b5"}, "spec": {}}, "spec.prefix")):
        with pytest.raises(client.ApiException) as e:
            co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", bad)
        assert e.value.status == 422, bad
        st = json.loads(e.value.body)
        assert st["details"]["causes"][0]["field"] == field
        assert st["message"].startswith(f'Route.{GROUP} "b')


def test_status_subresource_and_patches(api, crd):
    co = client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("r"))
    # The main resource ignores status; /status ignores everything else.
    r = co.patch_namespaced_custom_object(GROUP, "v1", "default", "routes", "r",
                                          {"status": {"applied": True}})
    assert "status" not in r
    r = co.patch_namespaced_custom_object_status(GROUP, "v1", "default", "routes", "r", {
        "status": {"applied": True}, "spec": {"nextHop": "ignored"}})
    assert r["status"] == {"applied": True} and "nextHop" not in r["spec"]
    assert r["metadata"]["generation"] == 1
    r = co.patch_namespaced_custom_object(GROUP, "v1", "default", "routes", "r",
                                          {"metadata": {"labels": {"a": "b"}}})
    assert r["metadata"]["labels"] == {"a": "b"} and r["metadata"]["generation"] == 1
    r = co.patch_namespaced_custom_object(GROUP, "v1", "default", "routes", "r",
                                          [{"op": "replace", "path": "/spec/metric",
                                            "value": 5}],
                                          _content_type="application/json-patch+json")
    assert r["spec"]["metric"] == 5 and r["metadata"]["generation"] == 2
    assert co.get_namespaced_custom_object_status(
        GROUP, "v1", "default", "routes", "r")["status"] == {"applied": True}
    # Strategic merge patch does not exist for custom resources.
    with pytest.raises(client.ApiException) as e:
        co.patch_namespaced_custom_object(
            GROUP, "v1", "default", "routes", "r", {"spec": {"metric": 1}},
            _content_type="application/strategic-merge-patch+json")
    assert e.value.status == 415


def test_cluster_scoped_crd_and_watch(api):
    client.ApiextensionsV1Api(api).create_custom_resource_definition(
        route_crd(scope="Cluster"))
    co = client.CustomObjectsApi(api)
    rv = co.list_cluster_custom_object(GROUP, "v1", "routes")["metadata"]["resourceVersion"]
    co.create_cluster_custom_object(GROUP, "v1", "routes", route("c1"))
    co.patch_cluster_custom_object(GROUP, "v1", "routes", "c1", {"spec": {"metric": 7}})
    co.delete_cluster_custom_object(GROUP, "v1", "routes", "c1")
    w = watch.Watch()
    events = []
    for ev in w.stream(co.list_cluster_custom_object, GROUP, "v1", "routes",
                       resource_version=rv, timeout_seconds=5):
        events.append((ev["type"], ev["object"]["metadata"]["name"]))
        if len(events) == 3:
            w.stop()
    assert events == [("ADDED", "c1"), ("MODIFIED", "c1"), ("DELETED", "c1")]
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("x"))
    assert e.value.status == 404


def test_multiple_versions_are_served(api):
    sch = route_crd()["spec"]["versions"][0]["schema"]
    client.ApiextensionsV1Api(api).create_custom_resource_definition(route_crd(versions=[
        {"name": "v1alpha1", "served": True, "storage": False, "schema": sch},
        {"name": "v1", "served": True, "storage": True, "schema": sch}]))
    co = client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(GROUP, "v1alpha1", "default", "routes",
                                       dict(route("r"), apiVersion=f"{GROUP}/v1alpha1"))
    assert co.get_namespaced_custom_object(GROUP, "v1", "default", "routes",
                                           "r")["apiVersion"] == f"{GROUP}/v1"
    assert co.get_namespaced_custom_object(GROUP, "v1alpha1", "default", "routes",
                                           "r")["apiVersion"] == f"{GROUP}/v1alpha1"
    grp = next(g for g in client.ApisApi(api).get_api_versions().groups if g.name == GROUP)
    assert [v.version for v in grp.versions] == ["v1", "v1alpha1"]


def test_deleting_crd_removes_its_objects(api, crd):
    co = client.CustomObjectsApi(api)
    ext = client.ApiextensionsV1Api(api)
    co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("a"))
    held = route("b")
    held["metadata"]["finalizers"] = ["example.com/hold"]
    co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", held)
    ext.delete_custom_resource_definition(f"routes.{GROUP}")
    # Terminating: the held object keeps the CRD; new objects are refused.
    assert ext.read_custom_resource_definition(f"routes.{GROUP}").metadata.deletion_timestamp
    names = [i["metadata"]["name"] for i in
             co.list_namespaced_custom_object(GROUP, "v1", "default", "routes")["items"]]
    assert names == ["b"]
    with pytest.raises(client.ApiException) as e:
        co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("c"))
    assert e.value.status == 405
    co.patch_namespaced_custom_object(GROUP, "v1", "default", "routes", "b",
                                      {"metadata": {"finalizers": None}})
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        try:
            ext.read_custom_resource_definition(f"routes.{GROUP}")
        except client.ApiException as e:
            assert e.status == 404
            break
    with pytest.raises(client.ApiException) as e:
        co.list_namespaced_custom_object(GROUP, "v1", "default", "routes")
    assert e.value.status == 404
    # And the resource can be defined again from scratch.
    ext.create_custom_resource_definition(route_crd())
    assert co.list_namespaced_custom_object(GROUP, "v1", "default", "routes")["items"] == []


def test_invalid_crds(api):
    ext = client.ApiextensionsV1Api(api)
    bad = route_crd()
    bad["metadata"]["name"] = "wrong.k8s.ovn.org"
    with pytest.raises(client.ApiException) as e:
        ext.create_custom_resource_definition(bad)
    assert e.value.status == 422
    bad = route_crd()
    bad["spec"]["versions"][0]["storage"] = False
    with pytest.raises(client.ApiException) as e:
        ext.create_custom_resource_definition(bad)
    assert e.value.status == 422
    crd = ext.create_custom_resource_definition(route_crd())
    with pytest.raises(client.ApiException) as e:
        ext.patch_custom_resource_definition(crd.metadata.name, {"spec": {"scope": "Cluster"}})
    assert e.value.status == 422


def test_crd_update_changes_schema(api, crd):
    ext = client.ApiextensionsV1Api(api)
    co = client.CustomObjectsApi(api)
    co.create_namespaced_custom_object(GROUP, "v1", "default", "routes", route("r"))
    cur = ext.read_custom_resource_definition(crd.metadata.name)
    body = client.ApiClient().sanitize_for_serialization(cur)
    body["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"]["weight"] = {"type": "integer"}
    upd = ext.replace_custom_resource_definition(crd.metadata.name, body)
    assert upd.metadata.generation == 2
    r = co.create_namespaced_custom_object(GROUP, "v1", "default", "routes",
                                           route("w", weight=3))
    assert r["spec"]["weight"] == 3
    assert len(co.list_namespaced_custom_object(GROUP, "v1", "default", "routes")["items"]) == 2
