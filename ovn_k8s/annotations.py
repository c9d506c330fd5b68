"""The annotations we read and write on Kubernetes objects (contracts in DESIGN.md)."""

from __future__ import annotations

import json

import netaddr

from ovn_k8s import ipam

# {"default": "10.128.1.0/24"}, written by the watcher when it allocates a node subnet.
NODE_SUBNETS = "k8s.ovn.org/node-subnets"


class AnnotationError(ValueError):
    """An annotation is present but not what the contract says."""


def node_subnet(annotations: dict[str, str] | None) -> netaddr.IPNetwork | None:
    """The node's default-network subnet, or None when not annotated yet."""
    raw = (annotations or {}).get(NODE_SUBNETS)
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except ValueError as e:
        raise AnnotationError(f"{NODE_SUBNETS} is not JSON: {raw!r}") from e
    if not isinstance(value, dict) or not isinstance(value.get("default"), str):
        raise AnnotationError(f'{NODE_SUBNETS} must be {{"default": "CIDR"}}, got {raw!r}')
    try:
        return ipam.parse_network(value["default"], NODE_SUBNETS)
    except ipam.AddressError as e:
        raise AnnotationError(str(e)) from e


def format_node_subnet(subnet: netaddr.IPNetwork) -> str:
    return json.dumps({"default": str(subnet)})
