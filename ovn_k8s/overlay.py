"""The set-up operations behind ``ovn-k8s-overlay``: master, minion and gateway init.

Each one checks every input before its first write, then makes its NB changes
in one transaction and converges the node's side; running it again changes
nothing. The command module only turns flags into the specs used here.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netaddr
import urllib3

from ovn_k8s import annotations, ipam, topology
from ovn_k8s.cni import install as cni_install
from ovn_k8s.host import bridge as host_bridge
from ovn_k8s.host import management
from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.ovsdb import NbDb, OvsDb

LOG = logging.getLogger(__name__)


class SetupError(RuntimeError):
    """The cluster is not in a state this operation can build on."""


@dataclass(frozen=True)
class NodeSpec:
    node: str
    subnet: netaddr.IPNetwork
    mtu: int

    def __post_init__(self) -> None:
        topology.check_node_name(self.node)
        if self.subnet.size < 8:
            raise ipam.AddressError(f"node subnet {self.subnet} is too small (need /29 or larger)")


def _check_node_subnet(cluster: topology.ClusterSpec, spec: NodeSpec) -> None:
    if not any(spec.subnet in net for net in cluster.cluster_subnets):
        raise ipam.AddressError(
            f"node subnet {spec.subnet} is not inside the cluster subnet "
            f"{', '.join(map(str, cluster.cluster_subnets))}"
        )


def _check_subnet_free(nb: NbDb, spec: NodeSpec) -> None:
    """Two nodes with overlapping subnets would black-hole each other's pods."""
    for sw in nb.rows("Logical_Switch"):
        other = sw.other_config.get("subnet")
        if sw.name == spec.node or not other or sw.name == topology.JOIN_SWITCH:
            continue
        net = netaddr.IPNetwork(other)
        if spec.subnet in net or net in spec.subnet:
            raise ipam.AddressError(f"node subnet {spec.subnet} overlaps {other} of node {sw.name}")


def master_init(nb: NbDb, ovs: OvsDb, cluster: topology.ClusterSpec, spec: NodeSpec) -> None:
    """The cluster core plus the master's own node switch and management port."""
    _check_node_subnet(cluster, spec)
    _check_subnet_free(nb, spec)
    nb.execute(
        *topology.cluster_commands(nb, cluster),
        *topology.node_commands(nb, spec.node, spec.subnet),
    )
    management.ensure_management_port(
        ovs, node=spec.node, subnet=spec.subnet, cluster_subnets=cluster.cluster_subnets,
        mtu=spec.mtu,
    )


def minion_init(
    nb: NbDb,
    ovs: OvsDb,
    cluster: topology.ClusterSpec,
    spec: NodeSpec,
    *,
    cni_conf_dir: Path,
    cni_bin_dir: Path,
    cni_front: str = "auto",
) -> None:
    """A node's switch and management port, and the CNI config and plugin (``cni_front``:
    see ovn_k8s.cni.install.FRONTS)."""
    _check_node_subnet(cluster, spec)
    _require_cluster_router(nb)
    _check_subnet_free(nb, spec)
    nb.execute(*topology.node_commands(nb, spec.node, spec.subnet))
    management.ensure_management_port(
        ovs, node=spec.node, subnet=spec.subnet, cluster_subnets=cluster.cluster_subnets,
        mtu=spec.mtu,
    )
    for path in cni_install.install(cni_conf_dir, cni_bin_dir, spec.mtu, front=cni_front):
        LOG.info("wrote %s", path)


def wait_node_subnet(api: Any, node: str, timeout: float) -> netaddr.IPNetwork:
    """The subnet the watcher allocated to ``node``, waiting for its annotation.

    Watches the one Node from the list's resourceVersion, so an annotation written
    between the list and the watch is not missed; API outages are retried until
    the deadline, a malformed annotation fails at once.
    """
    from kubernetes import client, watch  # noqa: PLC0415 - only this path needs the client
    from kubernetes.client.rest import ApiException  # noqa: PLC0415

    v1 = client.CoreV1Api(api)
    selector = f"metadata.name={node}"
    deadline = time.monotonic() + timeout
    last_error = "the node is not registered yet"
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            listed = v1.list_node(field_selector=selector, _request_timeout=remaining)
            for item in listed.items:
                if (subnet := annotations.node_subnet(item.metadata.annotations)) is not None:
                    return subnet
                last_error = f"node {node} has no {annotations.NODE_SUBNETS} annotation yet"
            stream = watch.Watch().stream(
                v1.list_node, field_selector=selector,
                resource_version=listed.metadata.resource_version,
                timeout_seconds=max(1, int(remaining)), _request_timeout=remaining + 5,
            )
            for event in stream:
                obj = event["object"]
                if event["type"] in ("ADDED", "MODIFIED"):
                    subnet = annotations.node_subnet(obj.metadata.annotations)
                    if subnet is not None:
                        return subnet
        except annotations.AnnotationError as e:
            raise SetupError(f"node {node}: {e}") from e
        except ApiException as e:
            if e.status in (401, 403):
                raise SetupError(f"the Kubernetes API refused us ({e.status} {e.reason})") from e
            last_error = f"Kubernetes API error {e.status} {e.reason}"
        except (OSError, urllib3.exceptions.HTTPError) as e:
            last_error = f"Kubernetes API unreachable: {e}"
        time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
    raise SetupError(
        f"no subnet for node {node} after {timeout:g}s ({last_error}); is ovn-k8s-watcher "
        f"running? Or give --minion-switch-subnet"
    )


def _require_cluster_router(nb: NbDb) -> None:
    if not any(r.name == topology.CLUSTER_ROUTER for r in nb.rows("Logical_Router")):
        raise SetupError(
            f"{topology.CLUSTER_ROUTER} does not exist in the NB database; "
            "run `ovn-k8s-overlay master-init` first"
        )


@dataclass(frozen=True)
class GatewayHostSpec:
    """What gateway-init is told about the node's physical side."""

    node: str
    physical_ip: netaddr.IPNetwork
    default_gw: netaddr.IPAddress
    bridge: str | None = None  # bridge mode: an existing bridge, e.g. breth0
    nic: str | None = None  # NIC mode: a NIC given to OVN whole
    rampout_subnets: tuple[netaddr.IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if (self.bridge is None) == (self.nic is None):
            raise ValueError("give exactly one of --physical-interface and --bridge-interface")


def gateway_init(
    nb: NbDb, ovs: OvsDb, cluster: topology.ClusterSpec, spec: GatewayHostSpec
) -> None:
    """``GR_<node>`` and ``ext_<node>`` in NB; the physical bridge mapping on the node."""
    _require_cluster_router(nb)
    chassis = host_ovs.external_ids(ovs).get("system-id")
    if not chassis:
        raise SetupError(
            "Open_vSwitch external_ids:system-id is not set; ovn-controller needs it, "
            "and the gateway router is bound to it"
        )
    bridge = spec.bridge or host_ovs.nic_bridge_name(spec.nic)
    mac = host_ovs.physical_mac(ovs, bridge=spec.bridge, nic=spec.nic)
    gw = topology.GatewaySpec(
        node=spec.node, chassis=chassis, physical_ip=spec.physical_ip, physical_mac=mac,
        default_gw=spec.default_gw, join_ip=topology.join_address(nb, spec.node, cluster),
        rampout_subnets=spec.rampout_subnets,
    )
    for net in spec.rampout_subnets:
        if not any(net in c for c in cluster.cluster_subnets):
            raise ipam.AddressError(f"rampout subnet {net} is not inside the cluster subnet")
    if spec.nic is not None:
        ovs.execute(*host_ovs.nic_bridge(ovs, spec.nic, mac))
        host_bridge.detach_from_host_stack(ovs, spec.nic)
    ovs.execute(*host_ovs.bridge_mapping(ovs, topology.PHYSNET, bridge))
    nb.execute(*topology.gateway_commands(nb, cluster, gw))
