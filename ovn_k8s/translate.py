"""Kubernetes objects to OVN NB rows: the one place that knows how a pod looks in NB.

Handlers decide *what* should exist; this module says *how* it is written, as
ovsdbapp commands that compose into one transaction (or, for new pod ports in bulk,
raw OVSDB operations), and reads back what NB holds (from the IDL's in-memory
replica, never a query per object).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import netaddr
from ovsdbapp.backend.ovs_idl import command as ovsdbapp_command
from ovsdbapp.backend.ovs_idl import idlutils

from ovn_k8s import annotations, ipam, topology
from ovn_k8s.ovsdb import NbDb

UID = "k8s.ovn.org/uid"
POD = "pod"


def pod_key(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def lsp_name(namespace: str, name: str) -> str:
    """The lineage's port name, also the OVS interface's iface-id."""
    return f"{namespace}_{name}"


@dataclass(frozen=True)
class PodPort:
    """What one pod's logical switch port must look like."""

    namespace: str
    name: str
    uid: str
    node: str
    network: annotations.PodNetwork

    @property
    def lsp(self) -> str:
        return lsp_name(self.namespace, self.name)

    def columns(self) -> dict[str, Any]:
        address = f"{self.network.mac} {self.network.ip.ip}"
        return {
            "addresses": [address],
            "port_security": [address],
            "options": {"requested-chassis": self.node, "iface-id-ver": self.uid},
            "external_ids": topology.owned(POD, pod_key(self.namespace, self.name), POD,
                                           **{UID: self.uid}),
        }


def pod_network_for(ip: netaddr.IPAddress, subnet: netaddr.IPNetwork) -> annotations.PodNetwork:
    return annotations.PodNetwork(
        ip=netaddr.IPNetwork(f"{ip}/{subnet.prefixlen}"),
        mac=ipam.mac_from_ip(ip),
        gateway=ipam.nth_host(subnet, 1),
    )


def lsp_row(api: Any, name: str) -> Any:
    return idlutils.row_by_value(api.idl, "Logical_Switch_Port", "name", name, None)


def switch_row(api: Any, name: str) -> Any:
    return idlutils.row_by_value(api.idl, "Logical_Switch", "name", name, None)


def lookup(nb: NbDb, ports: Iterable[str] = (), switches: Iterable[str] = ()
           ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Logical switch ports and switches by name, found in one look at the replica."""
    with nb.replica() as api:
        rows = ((n, lsp_row(api, n)) for n in ports)
        found_ports = {n: row for n, row in rows if row is not None}
        rows = ((n, switch_row(api, n)) for n in switches)
        return found_ports, {n: row for n, row in rows if row is not None}


def _row_matches(row: Any, columns: dict[str, Any]) -> bool:
    return all(getattr(row, col) == value for col, value in columns.items())


def port_is_current(port: PodPort, row: Any) -> bool:
    """True when ``row`` (from :func:`lookup`) is exactly this port: no write needed.

    We only ever put a pod's port on the switch its requested-chassis names, so
    matching columns mean the right switch too; checking membership in a switch's
    port list would cost O(ports) per pod.
    """
    return row is not None and _row_matches(row, port.columns())


def _datum(value: Any) -> Any:
    """A Python value in OVSDB's JSON notation (RFC 7047, 5.1)."""
    if isinstance(value, dict):
        return ["map", [[k, v] for k, v in value.items()]]
    if isinstance(value, list):
        return ["set", value]
    return value


def new_pod_ports_ops(ports: list[PodPort], switches: dict[str, Any]) -> list[dict[str, Any]]:
    """Raw operations (for ``NbDb.transact``) that create ``ports``, none of which
    exists yet, on their nodes' switches (``switches``: rows by name, from :func:`lookup`).

    A wait on each switch makes the transaction fail if the switch is gone, instead of
    OVSDB silently dropping ports that no switch references. Raises LookupError
    naming a node missing from ``switches``.

    ``up`` starts as false, the value ovn-northd would write for a port no chassis has
    claimed yet: left unset, northd writes it to every new port (a second NB
    transaction per batch, and another recompute of every flow).
    """
    ops: list[dict[str, Any]] = []
    by_switch: dict[str, list[str]] = {}
    for i, port in enumerate(ports):
        ops.append({"op": "insert", "table": "Logical_Switch_Port", "uuid-name": f"p{i}",
                    "row": {"name": port.lsp, "up": False,
                            **{c: _datum(v) for c, v in port.columns().items()}}})
        by_switch.setdefault(port.node, []).append(f"p{i}")
    for node, names in by_switch.items():
        switch = switches.get(node)
        if switch is None:
            raise LookupError(f"node {node} has no switch")
        where = [["_uuid", "==", ["uuid", str(switch.uuid)]]]
        ops.append({"op": "wait", "table": "Logical_Switch", "where": where, "timeout": 0,
                    "columns": ["name"], "until": "==", "rows": [{"name": node}]})
        ops.append({"op": "mutate", "table": "Logical_Switch", "where": where,
                    "mutations": [["ports", "insert",
                                   ["set", [["named-uuid", n] for n in names]]]]})
    return ops


class EnsurePodPort(ovsdbapp_command.BaseCommand):
    """Create the pod's LSP on its node's switch, or converge it.

    A port of the same name that belongs to another pod UID (a StatefulSet pod
    deleted and recreated) or sits on another node's switch is replaced: the new
    pod never inherits the old one's port.
    """

    def __init__(self, api: Any, port: PodPort) -> None:
        super().__init__(api)
        self.port = port

    def run_idl(self, txn: Any) -> None:
        port = self.port
        switch = self.api.lookup("Logical_Switch", port.node)
        row = lsp_row(self.api, port.lsp)
        if row is not None and (row.external_ids.get(UID) != port.uid
                                or row.options.get("requested-chassis") != port.node):
            _delete_port(self.api, row)
            row = None
        if row is None:
            row = txn.insert(self.api.tables["Logical_Switch_Port"])
            row.name = port.lsp
            switch.addvalue("ports", row)
        for col, value in port.columns().items():
            if getattr(row, col, None) != value:
                setattr(row, col, value)
        self.result = row


class DeletePodPort(ovsdbapp_command.BaseCommand):
    """Delete a pod's LSP if it exists (and, given ``uid``, only if it is that pod's)."""

    def __init__(self, api: Any, lsp: str, uid: str | None = None) -> None:
        super().__init__(api)
        self.lsp = lsp
        self.uid = uid

    def run_idl(self, txn: Any) -> None:
        row = lsp_row(self.api, self.lsp)
        if row is None or (self.uid is not None and row.external_ids.get(UID) != self.uid):
            return
        _delete_port(self.api, row)


def _delete_port(api: Any, row: Any) -> None:
    # The port's switch is its node's (requested-chassis); scanning every switch's
    # ports is the fallback for a row someone else edited.
    node = row.options.get("requested-chassis")
    switch = switch_row(api, node) if node else None
    if switch is None or row not in switch.ports:
        switch = next((s for s in api.tables["Logical_Switch"].rows.values() if row in s.ports),
                      None)
    if switch is not None:
        switch.delvalue("ports", row)
    row.delete()


def owned_pod_ports(nb: NbDb) -> dict[str, Any]:
    """Every LSP we made for a pod, by its pod key (``ns/name``)."""
    out = {}
    for row in nb.rows("Logical_Switch_Port"):
        ids = row.external_ids
        if ids.get(topology.OWNER_TYPE) == POD and topology.OWNER in ids:
            out[ids[topology.OWNER]] = row
    return out


def port_address(row: Any) -> netaddr.IPAddress | None:
    """The IPv4 address in an LSP's ``addresses`` ("MAC IP")."""
    for entry in row.addresses:
        parts = entry.split()
        if len(parts) >= 2:
            try:
                return netaddr.IPAddress(parts[1])
            except (netaddr.AddrFormatError, ValueError):
                return None
    return None


# ---- services -------------------------------------------------------------------------

SERVICE = "service"


def vip(ip: str, port: int) -> str:
    """An OVN load-balancer VIP or backend: ``ip:port``, ``[ip]:port`` for IPv6."""
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def service_lb_name(namespace: str, name: str, protocol: str) -> str:
    """A service's own load balancer (when it needs per-LB options such as affinity)."""
    return f"k8s-svc-{namespace}_{name}-{protocol}"


class SetVips(ovsdbapp_command.BaseCommand):
    """Change some VIPs of one load balancer in place.

    ``setkey``/``delkey`` become OVSDB ``mutate`` operations on the ``vips`` map, so
    one service's change does not rewrite the other services' VIPs sharing the row.
    A missing load balancer is skipped (its gateway went away meanwhile). ``set_``
    and ``remove`` must be the differences from what NB holds (the caller diffs).
    """

    def __init__(self, api: Any, lb: str, set_: dict[str, str], remove: list[str]) -> None:
        super().__init__(api)
        self.lb = lb
        self.set_ = set_
        self.remove = remove

    def run_idl(self, txn: Any) -> None:
        row = idlutils.row_by_value(self.api.idl, "Load_Balancer", "name", self.lb, None)
        if row is None:
            return
        # No read of row.vips: the pure-Python IDL converts the whole map for it (~5 ms
        # at 2000 VIPs). Callers pass only real changes, and deleting an absent key is
        # a no-op mutation in OVSDB.
        for key in self.remove:
            row.delkey("vips", key)
        for key, value in self.set_.items():
            row.setkey("vips", key, value)
