"""The annotations we read and write on Kubernetes objects (contracts in DESIGN.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import netaddr

from ovn_k8s import ipam

# {"default": "10.128.1.0/24"}, written by the watcher when it allocates a node subnet.
NODE_SUBNETS = "k8s.ovn.org/node-subnets"


class AnnotationError(ValueError):
    """An annotation is present but not what the contract says."""


def _json_object(annotations: dict[str, str] | None, key: str) -> tuple[dict | None, str]:
    """(the annotation ``key`` decoded, its text); (None, "") when it is absent."""
    raw = (annotations or {}).get(key)
    if raw is None:
        return None, ""
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise AnnotationError(f"{key} is not JSON: {raw[:200]!r}") from e
    if not isinstance(value, dict):
        raise AnnotationError(f"{key} is not a JSON object: {raw[:200]!r}")
    return value, raw


def node_subnet(annotations: dict[str, str] | None) -> netaddr.IPNetwork | None:
    """The node's default-network subnet, or None when not annotated yet."""
    value, raw = _json_object(annotations, NODE_SUBNETS)
    if value is None:
        return None
    if not isinstance(value.get("default"), str):
        raise AnnotationError(f'{NODE_SUBNETS} must be {{"default": "CIDR"}}, got {raw!r}')
    try:
        return ipam.parse_network(value["default"], NODE_SUBNETS)
    except ipam.AddressError as e:
        raise AnnotationError(str(e)) from e


def format_node_subnet(subnet: netaddr.IPNetwork) -> str:
    return json.dumps({"default": str(subnet)})


# The pod's network, written by the watcher and read by the CNI plugin:
# {"ip_address": "10.128.1.5/24", "mac_address": "0a:58:0a:80:01:05",
#  "gateway_ip": "10.128.1.1", "ip_addresses": [...], "gateway_ips": [...], "routes": [...]}
# The singular fields are the lineage's contract; the lists make room for dual stack.
POD_NETWORK = "ovn"


@dataclass(frozen=True)
class PodNetwork:
    ip: netaddr.IPNetwork  # address with the node subnet's prefix length
    mac: str
    gateway: netaddr.IPAddress
    routes: tuple[dict[str, str], ...] = ()

    def to_json(self) -> str:
        return json.dumps({
            "ip_address": str(self.ip),
            "mac_address": self.mac,
            "gateway_ip": str(self.gateway),
            "ip_addresses": [str(self.ip)],
            "gateway_ips": [str(self.gateway)],
            "routes": list(self.routes),
        }, separators=(",", ":"))


_MAC = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")


def pod_network(annotations: dict[str, str] | None) -> PodNetwork | None:
    """The pod's ``ovn`` annotation, or None when it has none yet."""
    value, _ = _json_object(annotations, POD_NETWORK)
    if value is None:
        return None
    try:
        ip = ipam.parse_interface_address(str(value["ip_address"]), "ip_address")
        gateway = ipam.parse_address(str(value["gateway_ip"]), "gateway_ip")
        mac = str(value["mac_address"]).lower()
    except KeyError as e:
        raise AnnotationError(f"{POD_NETWORK} annotation has no {e.args[0]}") from None
    except ipam.AddressError as e:
        raise AnnotationError(f"{POD_NETWORK} annotation: {e}") from None
    if not _MAC.match(mac):
        raise AnnotationError(f"{POD_NETWORK} annotation: mac_address {mac!r} is not a MAC")
    routes = value.get("routes") or []
    if not isinstance(routes, list) or not all(isinstance(r, dict) for r in routes):
        raise AnnotationError(f"{POD_NETWORK} annotation: routes must be a list of objects")
    return PodNetwork(ip=ip, mac=mac, gateway=gateway, routes=tuple(routes))
