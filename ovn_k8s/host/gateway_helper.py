"""The loop of ``ovn-k8s-gateway-helper``: keep the shared-NIC flows right.

The desired table depends on two things that change on their own: the OpenFlow
numbers of the NIC and of ovn-controller's patch port (the patch port appears
after ``gateway-init``; numbers change when vswitchd restarts), and the NodePorts
of the cluster's services. The loop recomputes the table when either changes, and
re-applies it at a fixed interval anyway, which repairs flows someone deleted or a
vswitchd restart dropped (replace-flows writes nothing when nothing differs).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ovn_k8s.host import gateway_flows
from ovn_k8s.host.gateway_flows import NodePort
from ovn_k8s.host.links import HostError
from ovn_k8s.ovsdb import OvsDb, OvsdbError

LOG = logging.getLogger(__name__)

# How often the OVSDB replica is checked for port changes; it is in memory, so cheap.
POLL_INTERVAL = 0.5


def service_nodeports(services: Iterable[Mapping[str, Any]]) -> set[NodePort]:
    """The NodePorts of every NodePort and LoadBalancer service (raw API dicts)."""
    found = set()
    for svc in services:
        spec = svc.get("spec") or {}
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            continue
        for port in spec.get("ports") or ():
            number = port.get("nodePort")
            protocol = str(port.get("protocol") or "TCP").lower()
            if not number:
                continue
            try:
                found.add(NodePort(protocol, int(number)))
            except (ValueError, TypeError):
                # The API server validates these; one odd object must not stop the rest.
                LOG.warning("service %s/%s: ignoring nodePort %r/%s",
                            (svc.get("metadata") or {}).get("namespace"),
                            (svc.get("metadata") or {}).get("name"), number, protocol)
    return found


class GatewayHelper:
    def __init__(
        self,
        ovs: OvsDb,
        bridge: str,
        nic: str,
        nodeports: Callable[[], Iterable[NodePort]] = tuple,
        resync_interval: float = 30.0,
    ) -> None:
        self.ovs = ovs
        self.bridge = bridge
        self.nic = nic
        self.nodeports = nodeports
        self.resync_interval = resync_interval
        self.applied: list[str] | None = None
        self.applied_at = 0.0
        self.syncs = 0
        self.errors = 0
        self.last_error: str | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()

    def desired(self) -> list[str]:
        ports = gateway_flows.bridge_ports(self.ovs, self.bridge, self.nic)
        return gateway_flows.flow_table(ports, self.nodeports())

    def sync(self, force: bool = False) -> bool:
        """Apply the desired table if it changed (or ``force``); True if applied."""
        flows = self.desired()
        if not force and flows == self.applied:
            return False
        gateway_flows.replace_flows(self.bridge, flows)
        if self.applied is not None and flows != self.applied:
            LOG.info("%s: flow table updated (%d flows)", self.bridge, len(flows))
        self.applied = flows
        self.applied_at = time.monotonic()
        self.syncs += 1
        return True

    def trigger(self) -> None:
        """Recompute soon (called when services change)."""
        self._wake.set()

    def resync(self) -> None:
        """Re-apply the whole table soon, even if nothing seems changed."""
        self.applied_at = 0.0
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def run(self) -> None:
        """Until ``stop``: sync on changes and every ``resync_interval`` seconds."""
        failing = False
        while not self._stop.is_set():
            due = time.monotonic() - self.applied_at >= self.resync_interval
            try:
                self.sync(force=due)
                if failing:
                    LOG.info("%s: flows in place again", self.bridge)
                failing = False
            except (HostError, OvsdbError, OSError) as e:
                self.errors += 1
                self.last_error = str(e)
                # Once per outage: a missing bridge stays missing for many polls.
                if not failing:
                    LOG.error("%s: cannot set flows (will keep trying): %s", self.bridge, e)
                failing = True
                self.applied = None
            self._wake.wait(POLL_INTERVAL)
            self._wake.clear()

    def status(self) -> dict[str, object]:
        return {
            "bridge": self.bridge,
            "nic": self.nic,
            "flows": len(self.applied or ()),
            "syncs": self.syncs,
            "errors": self.errors,
            "last_error": self.last_error,
        }
