"""``nics-to-bridge`` and ``bridge-to-nics``: share a NIC between the host and OVN.

The NIC goes into an OVS bridge ``br<NIC>`` and the host's addresses and routes
move from the NIC to the bridge's internal port, so the host keeps its
connectivity and OVN (through a localnet port) can use the same wire.

Both directions are written as "move whatever is still on the source": after a
reboot that put the address back on the NIC, or after a crash halfway, a rerun
finishes the job instead of failing.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from socket import AF_INET, AF_INET6

from pyroute2 import IPRoute

from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.host.links import HostError, ip_conf, link_mac, set_ip_conf, wait_for_link
from ovn_k8s.ovsdb import OvsDb

LOG = logging.getLogger(__name__)

# Remembers which NIC a bridge was made from, so bridge-to-nics can undo it.
NIC_KEY = "k8s.ovn.org/nic"
# The NIC's own settings before nics-to-bridge changed them ("key=value,...").
SAVED_CONF_KEY = "k8s.ovn.org/nic-ipv4-conf"
DETACHED_CONF = {"rp_filter": "1", "arp_ignore": "8"}
RT_SCOPE_LINK = 253
RTPROT_KERNEL = 2
MAIN_TABLE = 254


@dataclass(frozen=True)
class Address:
    address: str
    prefixlen: int
    family: int


@dataclass(frozen=True)
class Route:
    family: int
    dst: str | None
    dst_len: int
    gateway: str | None
    priority: int | None
    scope: int
    proto: int


def _index(ipr: IPRoute, name: str) -> int:
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise HostError(f"no network interface {name!r} on this host")
    return found[0]


def _addresses(ipr: IPRoute, index: int) -> list[Address]:
    out = []
    for family in (AF_INET, AF_INET6):
        for a in ipr.get_addr(index=index, family=family):
            # Link-local IPv6 addresses belong to the device, not to the host's config.
            if family == AF_INET6 and a["scope"] == RT_SCOPE_LINK:
                continue
            out.append(Address(a.get_attr("IFA_ADDRESS"), a["prefixlen"], family))
    return out


def _routes(ipr: IPRoute, index: int) -> list[Route]:
    out = []
    for family in (AF_INET, AF_INET6):
        for r in ipr.get_routes(family=family, table=MAIN_TABLE, oif=index):
            # Connected routes come back by themselves with the address.
            if r["proto"] == RTPROT_KERNEL or r.get_attr("RTA_OIF") != index:
                continue
            if family == AF_INET6 and r.get_attr("RTA_DST", "").startswith("fe80"):
                continue
            out.append(Route(
                family=family, dst=r.get_attr("RTA_DST"), dst_len=r["dst_len"],
                gateway=r.get_attr("RTA_GATEWAY"), priority=r.get_attr("RTA_PRIORITY"),
                scope=r["scope"], proto=r["proto"],
            ))
    return out


def move_ip_config(src: str, dst: str) -> tuple[list[Address], list[Route]]:
    """Move every address and route from device ``src`` to device ``dst``.

    Routes are read before the addresses move, because removing an address
    makes the kernel drop the routes whose gateway it made reachable.
    """
    with IPRoute() as ipr:
        src_i, dst_i = _index(ipr, src), _index(ipr, dst)
        addrs, routes = _addresses(ipr, src_i), _routes(ipr, src_i)
        ipr.link("set", index=dst_i, state="up")
        for a in addrs:
            ipr.addr("replace", index=dst_i, address=a.address, prefixlen=a.prefixlen,
                     family=a.family)
        for a in addrs:
            ipr.addr("del", index=src_i, address=a.address, prefixlen=a.prefixlen,
                     family=a.family)
        for r in routes:
            spec = {"family": r.family, "dst_len": r.dst_len, "oif": dst_i, "scope": r.scope,
                    "proto": r.proto, "table": MAIN_TABLE}
            if r.dst:
                spec["dst"] = r.dst
            if r.gateway:
                spec["gateway"] = r.gateway
            if r.priority is not None:
                spec["priority"] = r.priority
            ipr.route("replace", **spec)
        # Whatever the kernel kept on the source (e.g. a route it could still
        # resolve) would now compete with the moved one.
        for r in _routes(ipr, src_i):
            spec = {"family": r.family, "dst_len": r.dst_len, "oif": src_i, "table": MAIN_TABLE}
            if r.dst:
                spec["dst"] = r.dst
            ipr.route("del", **spec)
        ipr.link("set", index=src_i, state="up")
    LOG.info("moved %d addresses and %d routes from %s to %s", len(addrs), len(routes), src, dst)
    return addrs, routes


def nics_to_bridge(ovs: OvsDb, nic: str) -> str:
    """Put ``nic`` into ``br<nic>`` and move its IP config there; returns the bridge."""
    bridge = host_ovs.nic_bridge_name(nic)
    if any(b.name == nic for b in ovs.rows("Bridge")):
        raise HostError(f"{nic} is itself an OVS bridge; give the NIC's name")
    mac = link_mac(nic)
    ids = {NIC_KEY: nic}
    existing = next((b for b in ovs.rows("Bridge") if b.name == bridge), None)
    if existing is None or SAVED_CONF_KEY not in existing.external_ids:
        # Saved once, before the first change, so bridge-to-nics restores the original.
        ids[SAVED_CONF_KEY] = ",".join(f"{k}={ip_conf(nic, k)}" for k in DETACHED_CONF)
    cmds = host_ovs.nic_bridge(ovs, nic, mac)
    cmds.append(ovs.api.db_set("Bridge", bridge, ("external_ids", ids)))
    ovs.execute(*cmds)
    wait_for_link(bridge)
    detach_from_host_stack(ovs, nic)
    move_ip_config(nic, bridge)
    return bridge


def detach_from_host_stack(ovs: OvsDb, nic: str) -> None:
    """Keep the host's IP stack off a NIC that the userspace datapath reads.

    The kernel datapath takes a port's packets away from the host; the userspace
    one reads them through a packet socket and the kernel still sees them. A reply
    that belongs to OVN's gateway router then also reaches the host (weak host
    model: the shared address is the host's too, on the bridge), which answers with
    a RST. Strict reverse-path filtering drops IPv4 arriving on the NIC (the host
    routes to the sender via the bridge), and arp_ignore=8 stops ARP replies from it.
    """
    if host_ovs.external_ids(ovs).get("ovn-bridge-datapath-type") != "netdev":
        return
    for key, value in DETACHED_CONF.items():
        set_ip_conf(nic, key, value)


def bridge_to_nics(ovs: OvsDb, name: str) -> str:
    """Undo :func:`nics_to_bridge` for a NIC or its bridge; returns the NIC."""
    bridges = {b.name: b for b in ovs.rows("Bridge")}
    bridge = name if name in bridges else host_ovs.nic_bridge_name(name)
    row = bridges.get(bridge)
    if row is None:
        # Already undone (or never done): nothing to move back.
        with IPRoute() as ipr:
            _index(ipr, name)
        return name
    nic = row.external_ids.get(NIC_KEY)
    if not nic:
        raise HostError(f"bridge {bridge} was not made by nics-to-bridge; leaving it alone")
    move_ip_config(bridge, nic)
    for item in row.external_ids.get(SAVED_CONF_KEY, "").split(","):
        key, _, value = item.partition("=")
        if key in DETACHED_CONF and value:
            set_ip_conf(nic, key, value)
    ovs.execute(ovs.api.del_br(bridge, if_exists=True))
    return nic

