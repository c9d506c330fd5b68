"""Reading the node's network devices (pyroute2)."""

from __future__ import annotations

from pyroute2 import IPRoute


class HostError(RuntimeError):
    """The node's network could not be brought to the state asked for."""


def link_mac(name: str) -> str:
    """The MAC address of device ``name``; a clear error if there is no such device."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if not found:
            raise HostError(f"no network interface {name!r} on this host")
        return ipr.get_links(found[0])[0].get_attr("IFLA_ADDRESS")
