"""OpenFlow on a physical bridge that the host and OVN's gateway router share.

In bridge mode (``nics-to-bridge`` then ``gateway-init --bridge-interface``) the
host's address sits on the bridge's LOCAL port, and ``GR_<node>`` reaches the same
wire through ovn-controller's patch port, with the same IP and MAC. Plain NORMAL
switching cannot tell whose a reply is, so these flows decide by connection:

- everything OVN sends out is committed to conntrack zone ``CT_ZONE``; ``ct_clear``
  first, because in the userspace datapath the packet still carries the state of
  OVN's own zones from br-int, and the commit would otherwise not take;
- IP from the NIC is looked up in that zone: replies to OVN's connections, and
  new connections to a NodePort, go to OVN; everything else goes to the host;
- ARP from the NIC goes to both (both answer for the shared address with the
  shared MAC, so either answer is right), host traffic goes straight out.

The flow table is replaced as a whole with ``ovs-ofctl replace-flows``, which only
changes what differs, so applying the same table again costs no flow churn.
``ovs-ofctl`` is the one subprocess we allow for OpenFlow (no Python OpenFlow
library is in our dependency set).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from ovn_k8s.host.links import HostError
from ovn_k8s.ovsdb import OvsDb

# The lineage's zone; far above the zones ovn-controller hands out on br-int.
CT_ZONE = 64000
NODEPORT_PROTOCOLS = ("tcp", "udp", "sctp")
# Multi-table flow mods need table_id support; OpenFlow 1.3 has it on any bridge.
OPENFLOW = "OpenFlow13"


@dataclass(frozen=True)
class BridgePorts:
    """OpenFlow port numbers on the physical bridge."""

    nic: int
    patch: int | None  # None until ovn-controller has made the patch port


@dataclass(frozen=True, order=True)
class NodePort:
    protocol: str
    port: int

    def __post_init__(self) -> None:
        if self.protocol not in NODEPORT_PROTOCOLS:
            raise ValueError(f"unknown NodePort protocol {self.protocol!r}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"NodePort {self.port} out of range")


def bridge_ports(ovs: OvsDb, bridge: str, nic: str) -> BridgePorts:
    """The NIC's and the OVN patch port's OpenFlow numbers on ``bridge``."""
    row = next((b for b in ovs.rows("Bridge") if b.name == bridge), None)
    if row is None:
        raise HostError(f"{bridge} is not an OVS bridge here (run nics-to-bridge first)")
    nic_port = patch_port = None
    for port in row.ports:
        for iface in port.interfaces:
            ofport = iface.ofport[0] if iface.ofport else -1
            if ofport is None or ofport < 1:
                continue
            if iface.name == nic:
                nic_port = ofport
            elif iface.type == "patch":
                patch_port = ofport
    if nic_port is None:
        raise HostError(f"{nic} is not a port of {bridge} (or has no OpenFlow port yet)")
    return BridgePorts(nic=nic_port, patch=patch_port)


def flow_table(ports: BridgePorts, nodeports: Iterable[NodePort] = ()) -> list[str]:
    """The whole desired table, sorted; without a patch port, host traffic only."""
    nic = ports.nic
    flows = [
        "table=0,priority=0,actions=NORMAL",
        f"table=0,priority=30,in_port=LOCAL,actions=output:{nic}",
    ]
    if ports.patch is not None:
        patch = ports.patch
        flows += [
            f"table=0,priority=100,ip,in_port={patch},"
            f"actions=ct_clear,ct(commit,zone={CT_ZONE}),output:{nic}",
            f"table=0,priority=90,in_port={patch},actions=output:{nic}",
            f"table=0,priority=50,ip,in_port={nic},actions=ct(table=1,zone={CT_ZONE})",
            f"table=0,priority=40,arp,in_port={nic},actions=output:LOCAL,output:{patch}",
            f"table=1,priority=100,ct_state=+trk+est,ip,actions=ct_clear,output:{patch}",
            f"table=1,priority=100,ct_state=+trk+rel,ip,actions=ct_clear,output:{patch}",
            "table=1,priority=0,actions=LOCAL",
        ]
        flows += [
            f"table=0,priority=100,{np.protocol},in_port={nic},tp_dst={np.port},"
            f"actions=output:{patch}"
            for np in sorted(set(nodeports))
        ]
    return sorted(flows)


def _ofctl(timeout: float, *args: str) -> list[str]:
    path = shutil.which("ovs-ofctl")
    if path is None:
        raise HostError("ovs-ofctl not found (Debian package openvswitch-switch)")
    return [path, "-O", OPENFLOW, f"--timeout={max(1, round(timeout))}", *args]


def replace_flows(bridge: str, flows: list[str], timeout: float = 10.0) -> None:
    """Make ``bridge``'s flow table exactly ``flows`` (only differences are written)."""
    try:
        proc = subprocess.run(
            _ofctl(timeout, "replace-flows", bridge, "-"),
            input="\n".join(flows) + "\n", capture_output=True, text=True,
            timeout=timeout + 2, check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise HostError(f"ovs-ofctl replace-flows {bridge}: no answer in {timeout:g}s") from e
    if proc.returncode != 0:
        raise HostError(f"ovs-ofctl replace-flows {bridge}: {proc.stderr.strip()}")


def dump_flows(bridge: str, timeout: float = 10.0) -> list[str]:
    """The bridge's flows as ``ovs-ofctl dump-flows --no-stats`` prints them."""
    proc = subprocess.run(
        _ofctl(timeout, "--no-stats", "dump-flows", bridge),
        capture_output=True, text=True, timeout=timeout + 2, check=False,
    )
    if proc.returncode != 0:
        raise HostError(f"ovs-ofctl dump-flows {bridge}: {proc.stderr.strip()}")
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]
