"""Services to VIPs (handlers/services.py), and finding out which endpoint source a
cluster serves: no NB, no daemons (the e2e tests check the same against real OVN)."""

from __future__ import annotations

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from ovn_k8s import topology, translate
from ovn_k8s.handlers.services import (
    Gateway,
    ServiceHandler,
    desired_for,
    endpoints_for,
    slices_from_endpoints,
)
from ovn_k8s.kube.client import serves
from ovn_k8s.sandbox.apiserver import ApiServer

TCP = topology.cluster_lb_name("tcp")
GW = Gateway("node2", "172.31.0.2")


def service(name: str = "web", **spec) -> dict:
    spec.setdefault("ports", [{"name": "http", "port": 80, "protocol": "TCP"}])
    return {"metadata": {"namespace": "default", "name": name}, "spec": spec}


def slice_(family: str, *addresses: str, ready: bool = True, node: str = "node1") -> dict:
    return {"addressType": family,
            "endpoints": [{"addresses": [a], "conditions": {"ready": ready}, "nodeName": node}
                          for a in addresses],
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}


def test_vip_brackets_ipv6_only():
    assert translate.vip("10.0.0.1", 80) == "10.0.0.1:80"
    assert translate.vip("fd00::1", 80) == "[fd00::1]:80"


def test_ipv6_service_vip_and_backends():
    svc = service(clusterIP="fd00:10:96::a", clusterIPs=["fd00:10:96::a"])
    d = desired_for(svc, [slice_("IPv6", "fd00:10:128::5", "FD00:10:128::4")], [])
    # Addresses are written in canonical form, whatever the API object held.
    assert d.vips == {(TCP, "[fd00:10:96::a]:80"):
                      "[fd00:10:128::4]:8080,[fd00:10:128::5]:8080"}


def test_dual_stack_vip_per_family_with_backends_of_that_family():
    svc = service(type="NodePort", clusterIP="10.96.0.10",
                  clusterIPs=["10.96.0.10", "fd00:10:96::a"], ipFamilies=["IPv4", "IPv6"],
                  ipFamilyPolicy="RequireDualStack",
                  ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}])
    slices = [slice_("IPv4", "10.128.1.5"), slice_("IPv6", "fd00:10:128::5")]
    d = desired_for(svc, slices, [GW])
    assert d.vips == {
        (TCP, "10.96.0.10:80"): "10.128.1.5:8080",
        (TCP, "[fd00:10:96::a]:80"): "[fd00:10:128::5]:8080",
        # The gateway's physical IP is IPv4: its NodePort VIP takes IPv4 backends only.
        (topology.gateway_lb_name("node2", "tcp"), "172.31.0.2:30080"): "10.128.1.5:8080",
    }


def test_fallback_to_terminating_is_per_family():
    terminating = slice_("IPv6", "fd00::5", ready=False)
    terminating["endpoints"][0]["conditions"] = {"ready": False, "serving": True,
                                                 "terminating": True}
    eps = endpoints_for([slice_("IPv4", "10.0.0.5"), terminating], "http", "TCP")
    assert eps == [("10.0.0.5", 8080, "node1"), ("fd00::5", 8080, "node1")]


def test_bad_endpoint_address_is_left_out_and_described():
    problems: list[str] = []
    eps = endpoints_for([slice_("IPv4", "10.0.0.5", "10.0.0.300")], "http", "TCP", problems)
    assert eps == [("10.0.0.5", 8080, "node1")]
    assert problems == ["endpoint address '10.0.0.300' is not an IP address"]


def test_endpoints_become_slices():
    ep = {"metadata": {"namespace": "default", "name": "web"}, "subsets": [
        {"addresses": [{"ip": "10.0.0.5", "nodeName": "node1",
                        "targetRef": {"kind": "Pod", "name": "a"}},
                       {"ip": "fd00::5"}],
         "notReadyAddresses": [{"ip": "10.0.0.6", "nodeName": "node2"}],
         "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]},
        {"addresses": [{"ip": "10.0.0.7"}], "ports": [{"port": 9090}]}]}
    assert slices_from_endpoints(ep) == [
        {"addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": True},
                        "nodeName": "node1", "targetRef": {"kind": "Pod", "name": "a"}},
                       {"addresses": ["10.0.0.6"], "conditions": {"ready": False},
                        "nodeName": "node2"}]},
        {"addressType": "IPv6", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
         "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": True}}]},
        {"addressType": "IPv4", "ports": [{"port": 9090}],
         "endpoints": [{"addresses": ["10.0.0.7"], "conditions": {"ready": True}}]},
    ]
    assert slices_from_endpoints({"metadata": {}}) == []


def test_endpoints_and_slices_give_the_same_vips():
    """externalTrafficPolicy Local needs nodeName from Endpoints as from slices."""
    svc = service(type="NodePort", externalTrafficPolicy="Local",
                  ports=[{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 30080}],
                  clusterIP="10.96.0.10")
    ep = {"subsets": [{"addresses": [{"ip": "10.0.0.5", "nodeName": "node1"},
                                     {"ip": "10.0.0.6", "nodeName": "node2"}],
                       "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]}]}
    via_slices = [slice_("IPv4", "10.0.0.5"), slice_("IPv4", "10.0.0.6", node="node2")]
    from_endpoints = desired_for(svc, slices_from_endpoints(ep), [GW])
    assert from_endpoints == desired_for(svc, via_slices, [GW])
    assert from_endpoints.vips[(topology.gateway_lb_name("node2", "tcp"),
                                "172.31.0.2:30080")] == "10.0.0.6:8080"


@pytest.mark.parametrize("slices", [True, False])
def test_discovery_tells_whether_endpoint_slices_are_served(slices):
    with ApiServer(endpoint_slices=slices) as srv:
        api = srv.api_client()
        assert serves(api, "discovery.k8s.io/v1", "endpointslices") is slices
        assert serves(api, "v1", "endpoints")
        assert not serves(api, "v1", "endpointslices")
        groups = {g.name for g in client.ApisApi(api).get_api_versions().groups}
        assert ("discovery.k8s.io" in groups) is slices
        if not slices:  # an old cluster: the paths are not there at all
            with pytest.raises(ApiException) as e:
                client.DiscoveryV1Api(api).list_endpoint_slice_for_all_namespaces()
            assert e.value.status == 404


def test_malformed_endpoints_skip_their_service_only(caplog):
    """The handler reads its caches by key; plain dicts stand in for the reflectors."""
    services = {"default/bad": service("bad", clusterIP="10.96.0.1"),
                "default/good": service("good", clusterIP="10.96.0.2")}
    endpoints = {
        "default/bad": {"subsets": ["not an object"]},
        "default/good": {"subsets": [{"addresses": [{"ip": "10.0.0.5"}],
                                      "ports": [{"name": "http", "port": 8080}]}]},
    }
    handler = ServiceHandler(None, services, endpoints, endpoints=True)
    assert handler._desired("default/bad", []).vips == {}
    assert handler._desired("default/good", []).vips == {(TCP, "10.96.0.2:80"): "10.0.0.5:8080"}
    handler._desired("default/bad", [])
    reports = [r.getMessage() for r in caplog.records if "default/bad" in r.getMessage()]
    assert len(reports) == 1 and "skipped: AttributeError" in reports[0]
