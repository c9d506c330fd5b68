"""The node's own Open_vSwitch database: settings in external_ids, br-int, ports."""

from __future__ import annotations

import os

from ovn_k8s.host.links import HostError, link_mac
from ovn_k8s.ovsdb import OvsDb

INTEGRATION_BRIDGE = "br-int"


def default_remote() -> str:
    """Where ovs-vsctl would look: ``$OVS_RUNDIR/db.sock``, as the OVS tools do."""
    rundir = os.environ.get("OVS_RUNDIR", "/var/run/openvswitch")
    return f"unix:{rundir}/db.sock"


def external_ids(ovs: OvsDb) -> dict[str, str]:
    """``Open_vSwitch . external_ids``: the lineage keeps node settings there."""
    for row in ovs.rows("Open_vSwitch"):
        return dict(row.external_ids)
    return {}


def ensure_integration_bridge(ovs: OvsDb) -> list:
    """br-int as ovn-controller expects it, using the datapath type OVN is told to use."""
    datapath = external_ids(ovs).get("ovn-bridge-datapath-type", "system")
    return [
        ovs.ensure(
            "Bridge", INTEGRATION_BRIDGE, parent=("Open_vSwitch", None, "bridges"),
            datapath_type=datapath, fail_mode=["secure"],
            other_config={"disable-in-band": "true"},
        ),
        *ensure_port(ovs, INTEGRATION_BRIDGE, INTEGRATION_BRIDGE, iface_type="internal"),
    ]


def ensure_port(
    ovs: OvsDb, bridge: str, name: str, *, iface_type: str = "", **iface_columns: object
) -> list:
    """A port with one interface of the same name on ``bridge``, converged."""
    iface = ovs.ensure("Interface", name, type=iface_type, **iface_columns)
    return [iface, ovs.ensure("Port", name, parent=("Bridge", bridge, "ports"), interfaces=[iface])]


def nic_bridge_name(nic: str) -> str:
    """The lineage's name for the OVS bridge that takes over a NIC: ``br<nic>``."""
    return f"br{nic}"


def nic_bridge(ovs: OvsDb, nic: str, mac: str) -> list:
    """An OVS bridge holding ``nic``, with the NIC's MAC pinned on the bridge.

    Pinning keeps the bridge's MAC (and so the address its neighbours cached)
    stable when ports come and go.
    """
    bridge = nic_bridge_name(nic)
    datapath = external_ids(ovs).get("ovn-bridge-datapath-type", "system")
    return [
        ovs.ensure(
            "Bridge", bridge, parent=("Open_vSwitch", None, "bridges"),
            datapath_type=datapath, other_config={"hwaddr": mac},
        ),
        *ensure_port(ovs, bridge, bridge, iface_type="internal"),
        *ensure_port(ovs, bridge, nic),
    ]


def bridge_mapping(ovs: OvsDb, physnet: str, bridge: str) -> list:
    """Map ``physnet`` to ``bridge`` in ovn-bridge-mappings, keeping other mappings.

    ovn-controller then creates the patch ports between br-int and the bridge.
    """
    current = external_ids(ovs).get("ovn-bridge-mappings", "")
    pairs = [m for m in current.split(",") if m and m.split(":", 1)[0] != physnet]
    pairs.append(f"{physnet}:{bridge}")
    return [
        ovs.api.db_set(
            "Open_vSwitch", ".", ("external_ids", {"ovn-bridge-mappings": ",".join(pairs)})
        )
    ]


def physical_mac(ovs: OvsDb, *, bridge: str | None, nic: str | None) -> str:
    """The MAC the gateway router's external port uses: the bridge's, else the NIC's.

    Bridge mode needs the bridge to exist already (made by nics-to-bridge);
    a missing one is reported before anything is written.
    """
    name = bridge or nic
    assert name is not None
    if bridge is not None and not any(b.name == bridge for b in ovs.rows("Bridge")):
        raise HostError(
            f"bridge {bridge!r} is not an OVS bridge here; create it first "
            f"(e.g. `ovn-k8s-util nics-to-bridge {bridge.removeprefix('br')}`)"
        )
    return link_mac(name)
