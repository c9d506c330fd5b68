"""The management port: the node's own leg on its OVN switch (``ovn-k8s-mp0``).

The host talks to pods (health checks, NodePort replies) through it, with the
node subnet's .2 address and routes to the cluster subnets via the .1 router.
"""

from __future__ import annotations

from collections.abc import Sequence

import netaddr
from pyroute2 import IPRoute

from ovn_k8s import ipam, topology
from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.host.links import wait_for_link
from ovn_k8s.ovsdb import OvsDb

MGMT_PORT = "ovn-k8s-mp0"


def ensure_management_port(
    ovs: OvsDb,
    *,
    node: str,
    subnet: netaddr.IPNetwork,
    cluster_subnets: Sequence[netaddr.IPNetwork],
    mtu: int,
    link_timeout: float = 10.0,
) -> None:
    """Create or converge ovn-k8s-mp0: OVS internal port, address, MTU, routes."""
    mgmt_ip = ipam.nth_host(subnet, 2)
    gateway = ipam.nth_host(subnet, 1)
    mac = ipam.mac_from_ip(mgmt_ip)
    ovs.execute(
        *host_ovs.ensure_integration_bridge(ovs),
        *host_ovs.ensure_port(
            ovs, host_ovs.INTEGRATION_BRIDGE, MGMT_PORT, iface_type="internal",
            mac=[mac], mtu_request=[mtu],
            external_ids={"iface-id": topology.mgmt_port(node)},
        ),
    )
    index = wait_for_link(MGMT_PORT, link_timeout)
    with IPRoute() as ipr:
        ipr.link("set", index=index, address=mac, mtu=mtu, state="up")
        wanted = (str(mgmt_ip), subnet.prefixlen)
        for addr in ipr.get_addr(index=index, family=2):
            have = (addr.get_attr("IFA_ADDRESS"), addr["prefixlen"])
            if have != wanted:
                ipr.addr("del", index=index, address=have[0], prefixlen=have[1])
        ipr.addr("replace", index=index, address=wanted[0], prefixlen=wanted[1])
        for net in cluster_subnets:
            ipr.route("replace", dst=str(net), gateway=str(gateway), oif=index)

