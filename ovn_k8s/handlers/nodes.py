"""Nodes: a subnet per node (the node annotation), the node's switch and router port.

The subnet is decided once and then read back from, in order: the node's
``k8s.ovn.org/node-subnets`` annotation, the subnet on the node's switch in NB (a
subnet given to ``minion-init``, or ours from before a crash that came between the
NB write and the annotation), else the lowest free block of the cluster subnets.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import netaddr

from ovn_k8s import annotations, ipam, topology
from ovn_k8s.ovsdb import NbDb

LOG = logging.getLogger(__name__)


class NodeHandler:
    def __init__(
        self,
        nb: NbDb,
        cache: Any,
        patch_node: Callable[[str, dict[str, Any]], Any],
        allocator: ipam.SubnetAllocator,
        *,
        on_subnet: Callable[[str, netaddr.IPNetwork], None] = lambda node, subnet: None,
    ) -> None:
        self.nb = nb
        self.cache = cache
        self.patch_node = patch_node
        self.allocator = allocator
        self.on_subnet = on_subnet
        self._subnets: dict[str, netaddr.IPNetwork] = {}
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()

    # ---- shared state ------------------------------------------------------------------

    def subnet(self, node: str) -> netaddr.IPNetwork | None:
        with self._lock:
            return self._subnets.get(node)

    def _report_once(self, node: str, message: str) -> None:
        if (node, message) not in self._reported:
            self._reported.add((node, message))
            LOG.error("node %s: %s", node, message)

    # ---- start-up ----------------------------------------------------------------------

    def startup(self) -> None:
        """Reserve every subnet already handed out, before any new one is allocated."""
        switches = {sw.name: sw for sw in self.nb.rows("Logical_Switch")
                    if "subnet" in sw.other_config and sw.name != topology.JOIN_SWITCH}
        for name, obj in self.cache.items():
            subnet = self._existing_subnet(name, obj)
            if subnet is not None:
                with self._lock:
                    self._subnets[name] = subnet
        for name, sw in switches.items():
            # A node gone while we were down still holds its subnet until its
            # deletion is handled (its key is queued by stale()).
            if name not in self._subnets and sw.external_ids.get(topology.OWNER_TYPE) == "node":
                self._reserve(name, netaddr.IPNetwork(sw.other_config["subnet"]))

    def stale(self) -> list[str]:
        """Nodes that have our switch in NB but no Node object any more."""
        return sorted(
            sw.name for sw in self.nb.rows("Logical_Switch")
            if sw.external_ids.get(topology.OWNER_TYPE) == "node"
            and sw.external_ids.get(topology.ROLE) == "node"
            and sw.name not in self.cache
        )

    def _reserve(self, node: str, subnet: netaddr.IPNetwork) -> bool:
        try:
            if self.allocator.reserve(subnet):
                return True
            self._report_once(node, f"subnet {subnet} is already another node's; "
                                    "allocating another")
        except ipam.AddressError as e:
            self._report_once(node, str(e))
        return False

    # ---- events ------------------------------------------------------------------------

    def handle(self, node: str) -> None:
        obj = self.cache.get(node)
        if obj is None:
            self._delete(node)
            return
        subnet = self.subnet(node)
        new = subnet is None
        if subnet is None:
            subnet = self._existing_subnet(node, obj)
            if subnet is None:
                subnet = self.allocator.allocate()
                LOG.info("node %s: allocated subnet %s", node, subnet)
            with self._lock:
                self._subnets[node] = subnet
        try:
            # Switch first: after a crash here the subnet is found on the switch again.
            self.nb.execute(*topology.node_commands(self.nb, node, subnet))
            current = obj["metadata"].get("annotations") or {}
            if current.get(annotations.NODE_SUBNETS) != annotations.format_node_subnet(subnet):
                self.patch_node(node, {"metadata": {"annotations": {
                    annotations.NODE_SUBNETS: annotations.format_node_subnet(subnet)}}})
        except Exception:
            if new:
                # Nothing points at it yet: give it back, the retry allocates again.
                with self._lock:
                    self._subnets.pop(node, None)
                self.allocator.release(subnet)
            raise
        if new:
            self.on_subnet(node, subnet)

    def _existing_subnet(self, node: str, obj: dict[str, Any]) -> netaddr.IPNetwork | None:
        """A subnet this node already has (its annotation, or minion-init's switch), reserved."""
        try:
            subnet = annotations.node_subnet(obj["metadata"].get("annotations"))
        except annotations.AnnotationError as e:
            self._report_once(node, f"{e}; allocating another")
            subnet = None
        if subnet is None:
            sw = next((s for s in self.nb.rows("Logical_Switch") if s.name == node), None)
            if sw is not None and "subnet" in sw.other_config:
                subnet = netaddr.IPNetwork(sw.other_config["subnet"])
        if subnet is not None and self._reserve(node, subnet):
            return subnet
        return None

    def _delete(self, node: str) -> None:
        """Remove the node's switch and its router port, then free its subnet."""
        switch = next((s for s in self.nb.rows("Logical_Switch") if s.name == node), None)
        if switch is not None and switch.external_ids.get(topology.OWNER_TYPE) != "node":
            return  # not ours
        # Both with if_exists, decided in the transaction rather than from an earlier
        # look at the replica: a transaction with nothing to delete writes nothing.
        self.nb.execute(self.nb.api.ls_del(node, if_exists=True),
                        self.nb.api.lrp_del(f"rtos-{node}", if_exists=True))
        if switch is not None:
            LOG.info("node %s deleted: removed its switch and router port", node)
        with self._lock:
            subnet = self._subnets.pop(node, None)
        if subnet is None and switch is not None:
            subnet = netaddr.IPNetwork(switch.other_config.get("subnet", "0.0.0.0/32"))
        if subnet is not None and subnet.prefixlen < 32:
            self.allocator.release(subnet)
