"""The CNI plugin's front: input checking, error codes, result shapes, the annotation."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ovn_k8s.cmd import cni as cni_cmd
from ovn_k8s.cni import spec
from ovn_k8s.cni.links import host_veth_name
from ovn_k8s.cni.podnet import AnnotationError, network_from_pod, parse_annotation

ROOT = Path(__file__).resolve().parents[2]
NETNS = "/proc/self/ns/net"  # a real network namespace any user may open
CONF = {"cniVersion": "1.0.0", "name": "ovn-kubernetes", "type": "ovn-k8s-cni-overlay"}
ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "0123456789abcdef",
    "CNI_NETNS": NETNS,
    "CNI_IFNAME": "eth0",
    "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;"
                "K8S_POD_UID=5d7e0f0a-1111-2222-3333-444455556666",
    "CNI_PATH": "/opt/cni/bin",
}


def env(**changes: str | None) -> dict[str, str]:
    out = dict(ENV)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def conf(**changes: object) -> bytes:
    out: dict[str, object] = dict(CONF)
    for k, v in changes.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = v
    return json.dumps(out).encode()


def test_a_good_add_parses():
    req = spec.parse_request(ENV, conf(mtu=1300, dns={"nameservers": ["10.96.0.10"]}))
    assert req.command == "ADD" and req.ifname == "eth0" and req.netns == NETNS
    assert req.pod == spec.PodRef("default", "web-0", "5d7e0f0a-1111-2222-3333-444455556666")
    assert req.pod.iface_id == "default_web-0"
    assert req.conf.mtu == 1300 and req.conf.dns.nameservers == ("10.96.0.10",)
    assert req.path == ("/opt/cni/bin",)
    assert req.wants_default_route


def test_default_route_only_on_the_primary_interface_unless_asked():
    assert not spec.parse_request(env(CNI_IFNAME="net1"), conf()).wants_default_route
    assert spec.parse_request(env(CNI_IFNAME="net1"), conf(defaultRoute=True)).wants_default_route
    assert not spec.parse_request(ENV, conf(defaultRoute=False)).wants_default_route


def test_del_needs_no_netns_nor_pod():
    req = spec.parse_request(env(CNI_COMMAND="DEL", CNI_NETNS=None, CNI_ARGS=None), conf())
    assert req.netns is None and req.pod is None


BAD = [
    # (why, env changes, config bytes, code, words in msg)
    ("no command", {"CNI_COMMAND": None}, conf(), 4, "CNI_COMMAND is not set"),
    ("unknown command", {"CNI_COMMAND": "GC"}, conf(), 4, "'GC' is not one of"),
    ("no container id", {"CNI_CONTAINERID": None}, conf(), 4, "CNI_CONTAINERID is empty"),
    ("bad container id", {"CNI_CONTAINERID": "-x"}, conf(), 4, "must start with"),
    ("no ifname", {"CNI_IFNAME": None}, conf(), 4, "CNI_IFNAME is empty"),
    ("ifname too long", {"CNI_IFNAME": "a" * 16}, conf(), 4, "longer than 15"),
    ("ifname with slash", {"CNI_IFNAME": "eth/0"}, conf(), 4, "not a valid interface name"),
    ("ifname with colon", {"CNI_IFNAME": "eth0:1"}, conf(), 4, "not a valid interface name"),
    ("ifname with space", {"CNI_IFNAME": "eth 0"}, conf(), 4, "not a valid interface name"),
    ("ifname dot-dot", {"CNI_IFNAME": ".."}, conf(), 4, "not a valid interface name"),
    ("no netns on ADD", {"CNI_NETNS": None}, conf(), 4, "CNI_NETNS is required for ADD"),
    ("relative netns", {"CNI_NETNS": "ns1"}, conf(), 4, "not an absolute path"),
    ("missing netns", {"CNI_NETNS": "/var/run/netns/cni-nope-x"}, conf(), 4, "does not exist"),
    ("netns is a file", {"CNI_NETNS": "/etc/hostname"}, conf(), 4, "not a network namespace"),
    ("netns is a dir", {"CNI_NETNS": "/tmp"}, conf(), 4, "not a network namespace"),
    ("netns is a mount ns", {"CNI_NETNS": "/proc/self/ns/mnt"}, conf(), 4,
     "not a network namespace"),
    ("bad CNI_ARGS", {"CNI_ARGS": "K8S_POD_NAME"}, conf(), 4, "is not KEY=VALUE"),
    ("no pod name", {"CNI_ARGS": "K8S_POD_NAMESPACE=default"}, conf(), 4, "no K8S_POD_NAME"),
    ("bad pod name", {"CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=Web_0"}, conf(), 4,
     "not a valid name"),
    ("not JSON", {}, b"{cniVersion: 1", 6, "not valid JSON"),
    ("not UTF-8", {}, b"\xff\xfe", 6, "not valid JSON"),
    ("JSON list", {}, b"[]", 7, "must be a JSON object"),
    ("no version", {}, conf(cniVersion=None), 7, "no 'cniVersion'"),
    ("version a number", {}, conf(cniVersion=1), 7, "must be a string"),
    ("unknown version", {}, conf(cniVersion="2.0.0"), 1, "2.0.0 is not supported"),
    ("old version", {}, conf(cniVersion="0.2.0"), 1, "0.2.0 is not supported"),
    ("no name", {}, conf(name=None), 7, "'name' is missing"),
    ("no type", {}, conf(type=None), 7, "no 'type'"),
    ("prevResult a string", {}, conf(prevResult="x"), 7, "'prevResult' must be an object"),
    ("mtu a string", {}, conf(mtu="1400"), 7, "'mtu' must be an integer"),
    ("mtu a bool", {}, conf(mtu=True), 7, "'mtu' must be an integer"),
    ("mtu too small", {}, conf(mtu=100), 7, "not in 576..65535"),
    ("timeout negative", {}, conf(annotationTimeout=-1), 7, "'annotationTimeout' must be in"),
    ("bad ovsRemote", {}, conf(ovsRemote="/run/db.sock"), 7, "not unix:, tcp: or ssl:"),
    ("bad dns", {}, conf(dns={"nameservers": ["dns.example"]}), 7, "not an IP address"),
    ("bad bool", {}, conf(waitOvnInstalled="yes"), 7, "must be true or false"),
    ("CHECK without prevResult", {"CNI_COMMAND": "CHECK"}, conf(), 7, "needs 'prevResult'"),
    ("CHECK on 0.3.1", {"CNI_COMMAND": "CHECK"}, conf(cniVersion="0.3.1", prevResult={}), 1,
     "does not allow CHECK"),
]


@pytest.mark.parametrize(("why", "changes", "stdin", "code", "words"), BAD,
                         ids=[b[0] for b in BAD])
def test_bad_input_is_refused_with_the_spec_code(why, changes, stdin, code, words):
    with pytest.raises(spec.CniError) as info:
        spec.parse_request(env(**changes), stdin)
    assert info.value.code == code, why
    assert words in info.value.msg


@pytest.mark.parametrize(("why", "changes", "stdin", "code", "words"), BAD[:3] + BAD[19:26],
                         ids=[b[0] for b in BAD[:3] + BAD[19:26]])
def test_run_reports_errors_as_cni_json(why, changes, stdin, code, words):
    status, doc = cni_cmd.run(env(**changes), stdin)
    assert status != 0
    assert doc["code"] == code and words in doc["msg"]
    assert doc["cniVersion"] in spec.SUPPORTED_VERSIONS


def test_error_reply_speaks_the_callers_version():
    status, doc = cni_cmd.run(env(CNI_IFNAME="x" * 20), conf(cniVersion="0.4.0"))
    assert (status, doc["cniVersion"], doc["code"]) == (1, "0.4.0", 4)


def test_version_answers_without_config():
    assert cni_cmd.run({"CNI_COMMAND": "VERSION"}, b"") == (0, spec.version_info())
    assert set(spec.version_info()["supportedVersions"]) >= {"0.3.1", "0.4.0", "1.0.0"}


def test_installed_plugin_version_and_error_through_the_launcher():
    plugin = ROOT / "bin" / "ovn-k8s-cni-overlay"
    base = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
    proc = subprocess.run([sys.executable, str(plugin)], input=b'{"cniVersion":"1.0.0"}',
                          env={**base, "CNI_COMMAND": "VERSION"}, capture_output=True,
                          timeout=60, check=False)
    assert proc.returncode == 0 and json.loads(proc.stdout) == spec.version_info()
    proc = subprocess.run([sys.executable, str(plugin)], input=b"not json",
                          env={**base, **ENV}, capture_output=True, timeout=60, check=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["code"] == 6  # stdout holds exactly one JSON document


def test_host_veth_name_is_short_stable_and_per_interface():
    a = host_veth_name("0123456789abcdef" * 4, "eth0")
    assert len(a) <= 15 and a == host_veth_name("0123456789abcdef" * 4, "eth0")
    assert a != host_veth_name("0123456789abcdef" * 4, "net1")
    assert a != host_veth_name("0123456789abcdef" * 3, "eth0")


def _result(version: str, prev: dict | None = None) -> dict:
    return spec.build_result(
        version,
        [spec.Interface("vethabc", "aa:bb:cc:dd:ee:ff"),
         spec.Interface("eth0", "0a:58:0a:80:01:05", "/var/run/netns/p")],
        [spec.IpConfig(ipaddress.ip_interface("10.128.1.5/24"),
                       ipaddress.ip_address("10.128.1.1"), 1)],
        [spec.Route(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_address("10.128.1.1"))],
        spec.Dns(nameservers=("10.96.0.10",), search=("svc.cluster.local",)),
        prev,
    )


def test_result_1_0_0_shape():
    r = _result("1.0.0")
    assert r == {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "vethabc", "mac": "aa:bb:cc:dd:ee:ff"},
                       {"name": "eth0", "mac": "0a:58:0a:80:01:05",
                        "sandbox": "/var/run/netns/p"}],
        "ips": [{"address": "10.128.1.5/24", "gateway": "10.128.1.1", "interface": 1}],
        "routes": [{"dst": "0.0.0.0/0", "gw": "10.128.1.1"}],
        "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
    }


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_result_before_1_0_carries_ip_version(version):
    r = _result(version)
    assert r["cniVersion"] == version
    assert r["ips"] == [{"version": "4", "address": "10.128.1.5/24", "gateway": "10.128.1.1",
                         "interface": 1}]


def test_result_extends_a_previous_plugins_result():
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "dummy0"}],
            "ips": [{"address": "192.0.2.1/32", "interface": 0}]}
    r = _result("1.0.0", prev)
    assert [i["name"] for i in r["interfaces"]] == ["dummy0", "vethabc", "eth0"]
    assert r["ips"][0]["address"] == "192.0.2.1/32"
    assert r["ips"][1]["interface"] == 2  # still points at eth0


ANNOTATION = {"ip_address": "10.128.1.5/24", "mac_address": "0A:58:0A:80:01:05",
              "gateway_ip": "10.128.1.1",
              "routes": [{"dest": "10.96.0.0/16", "nextHop": "10.128.1.1"},
                         {"dst": "100.64.0.0/16"}]}


def test_annotation_lineage_fields():
    net = parse_annotation(json.dumps(ANNOTATION))
    assert net.mac == "0a:58:0a:80:01:05"
    assert net.ips == (ipaddress.ip_interface("10.128.1.5/24"),)
    assert net.gateway_for(net.ips[0]) == ipaddress.ip_address("10.128.1.1")
    assert [(str(r.dst), r.gw and str(r.gw)) for r in net.routes] == [
        ("10.96.0.0/16", "10.128.1.1"), ("100.64.0.0/16", None)]


def test_annotation_dual_stack_lists_win():
    net = parse_annotation(json.dumps({
        **ANNOTATION, "ip_addresses": ["10.128.1.5/24", "fd00:10:128:1::5/64"],
        "gateway_ips": ["10.128.1.1", "fd00:10:128:1::1"]}))
    assert [ip.version for ip in net.ips] == [4, 6]
    assert str(net.gateway_for(net.ips[1])) == "fd00:10:128:1::1"


@pytest.mark.parametrize(("change", "words"), [
    ({"mac_address": "0a:58:0a:80:01"}, "not a MAC address"),
    ({"ip_address": "10.128.1.5"}, "no prefix length"),
    ({"ip_address": "10.128.1.500/24"}, "not an address"),
    ({"ip_address": None}, "neither ip_address nor ip_addresses"),
    ({"gateway_ip": "10.129.0.1"}, "on none of the pod's subnets"),
    ({"routes": [{"dest": "x"}]}, "not a network"),
    ({"routes": {"dest": "10.0.0.0/8"}}, "routes is not a list"),
])
def test_bad_annotation(change, words):
    with pytest.raises(AnnotationError, match=words):
        parse_annotation(json.dumps({**ANNOTATION, **change}))


def test_annotation_not_json():
    with pytest.raises(AnnotationError, match="not JSON"):
        parse_annotation("10.128.1.5/24")


def test_network_from_pod_waits_for_annotation_and_uid():
    pod = spec.PodRef("default", "web-0", "uid-2")
    assert network_from_pod(pod, {"uid": "uid-2"})[0] is None
    net, why = network_from_pod(pod, {"uid": "uid-1",
                                      "annotations": {"ovn": json.dumps(ANNOTATION)}})
    assert net is None and "uid-1, not uid-2" in why
    net, _ = network_from_pod(pod, {"uid": "uid-2", "annotations": {"ovn": json.dumps(ANNOTATION)}})
    assert net is not None and net.uid == "uid-2"
    with pytest.raises(spec.CniError) as info:
        network_from_pod(pod, {"uid": "uid-2", "annotations": {"ovn": "{}"}})
    assert info.value.code == spec.INVALID_CONFIG and "default/web-0" in info.value.msg


def test_pod_routes_default_only_when_asked_and_next_hop_defaults_to_gateway():
    from ovn_k8s.cni.links import pod_routes  # noqa: PLC0415

    net = parse_annotation(json.dumps(ANNOTATION))
    got = [(str(r.dst), str(r.gw)) for r in pod_routes(net, default_route=True)]
    assert got == [("0.0.0.0/0", "10.128.1.1"), ("10.96.0.0/16", "10.128.1.1"),
                   ("100.64.0.0/16", "10.128.1.1")]
    got = [str(r.dst) for r in pod_routes(net, default_route=False)]
    assert got == ["10.96.0.0/16", "100.64.0.0/16"]


def test_pod_routes_dual_stack_default_per_family():
    from ovn_k8s.cni.links import pod_routes  # noqa: PLC0415

    net = parse_annotation(json.dumps({
        **ANNOTATION, "routes": [], "ip_addresses": ["10.128.1.5/24", "fd00::5/64"],
        "gateway_ips": ["10.128.1.1", "fd00::1"]}))
    assert [(str(r.dst), str(r.gw)) for r in pod_routes(net, True)] == [
        ("0.0.0.0/0", "10.128.1.1"), ("::/0", "fd00::1")]


def test_reads_what_the_watcher_writes():
    """Contract: the watcher's annotation writer and the plugin's reader agree."""
    import netaddr  # noqa: PLC0415

    from ovn_k8s import annotations  # noqa: PLC0415

    written = annotations.PodNetwork(
        ip=netaddr.IPNetwork("10.128.1.5/24"), mac="0a:58:0a:80:01:05",
        gateway=netaddr.IPAddress("10.128.1.1"),
        routes=({"dest": "10.96.0.0/16", "nextHop": "10.128.1.1"},)).to_json()
    net = parse_annotation(written)
    assert net.mac == "0a:58:0a:80:01:05"
    assert net.ips == (ipaddress.ip_interface("10.128.1.5/24"),)
    assert net.gateways == (ipaddress.ip_address("10.128.1.1"),)
    assert [(str(r.dst), str(r.gw)) for r in net.routes] == [("10.96.0.0/16", "10.128.1.1")]
