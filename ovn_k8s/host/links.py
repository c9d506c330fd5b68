"""Reading the node's network devices (pyroute2)."""

from __future__ import annotations

import time
from pathlib import Path

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


def wait_for_link(name: str, timeout: float = 10.0) -> int:
    """The index of device ``name``, waiting for it to appear.

    ovs-vswitchd creates an internal port's device shortly after the commit.
    """
    deadline = time.monotonic() + timeout
    with IPRoute() as ipr:
        while True:
            found = ipr.link_lookup(ifname=name)
            if found:
                return found[0]
            if time.monotonic() > deadline:
                raise HostError(
                    f"{name} did not appear within {timeout:g}s; is ovs-vswitchd running "
                    "in this network namespace?"
                )
            time.sleep(0.02)


def _ip_conf_path(dev: str, key: str) -> Path:
    # /proc/sys/net follows the reader's network namespace, as `sysctl` does.
    return Path("/proc/sys/net/ipv4/conf") / dev / key


def ip_conf(dev: str, key: str) -> str:
    """``net.ipv4.conf.<dev>.<key>``."""
    try:
        return _ip_conf_path(dev, key).read_text().strip()
    except FileNotFoundError as e:
        raise HostError(f"no network interface {dev!r} on this host") from e


def set_ip_conf(dev: str, key: str, value: str) -> None:
    try:
        _ip_conf_path(dev, key).write_text(f"{value}\n")
    except OSError as e:
        raise HostError(f"cannot set net.ipv4.conf.{dev}.{key}={value}: {e}") from e
