"""Addresses: validation of the CIDRs operators give us and what we derive from them."""

from __future__ import annotations

from collections.abc import Iterable

import netaddr


class AddressError(ValueError):
    """An address or CIDR given to us is malformed or does not fit."""


def parse_network(text: str, what: str, *, version: int | None = 4) -> netaddr.IPNetwork:
    """Parse ``text`` as a network in CIDR form; ``what`` names it in the error.

    Host bits must be zero (``10.1.2.3/16`` is refused): a typo there usually
    means the operator meant something else, and silently masking it hides that.
    """
    try:
        net = netaddr.IPNetwork(text.strip(), expand_partial=False)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise AddressError(f"{what}: {text!r} is not a CIDR ({e})") from None
    if "/" not in text:
        raise AddressError(f"{what}: {text!r} has no prefix length (e.g. 10.128.0.0/14)")
    if version is not None and net.version != version:
        raise AddressError(f"{what}: {text!r} is not IPv{version}")
    if net.ip != net.network:
        raise AddressError(f"{what}: {text!r} has host bits set; did you mean {net.cidr}?")
    return net


def parse_interface_address(text: str, what: str) -> netaddr.IPNetwork:
    """Parse an address with its prefix length, like ``10.33.74.138/24``."""
    try:
        net = netaddr.IPNetwork(text.strip(), expand_partial=False)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise AddressError(f"{what}: {text!r} is not an address/prefix ({e})") from None
    if "/" not in text or net.version != 4:
        raise AddressError(f"{what}: {text!r} must be an IPv4 address with prefix, a.b.c.d/n")
    if net.size > 2 and net.ip in (net.network, net.broadcast):
        raise AddressError(f"{what}: {text!r} is the network or broadcast address")
    return net


def parse_address(text: str, what: str) -> netaddr.IPAddress:
    try:
        addr = netaddr.IPAddress(text.strip())
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise AddressError(f"{what}: {text!r} is not an IP address ({e})") from None
    if addr.version != 4:
        raise AddressError(f"{what}: {text!r} is not IPv4")
    return addr


def check_disjoint(named: Iterable[tuple[str, netaddr.IPNetwork]]) -> None:
    """Refuse overlapping networks that must not overlap (cluster, join, service...)."""
    items = list(named)
    for i, (name_a, net_a) in enumerate(items):
        for name_b, net_b in items[i + 1:]:
            if net_a in net_b or net_b in net_a:
                raise AddressError(f"{name_a} {net_a} overlaps {name_b} {net_b}")


def check_within(inner: netaddr.IPNetwork, outer: netaddr.IPNetwork, what: str) -> None:
    if inner not in outer:
        raise AddressError(f"{what} {inner} is not inside the cluster subnet {outer}")


def mac_from_ip(ip: netaddr.IPAddress | str) -> str:
    """The MAC that goes with an IPv4 address: ``0a:58:`` then its four bytes.

    Deriving it makes the MAC of a pod or router port a pure function of its IP,
    so a restart or a second run computes the same one without reading it back.
    """
    addr = netaddr.IPAddress(ip)
    if addr.version != 4:
        raise AddressError(f"no derived MAC for non-IPv4 address {addr}")
    return "0a:58:" + ":".join(f"{b:02x}" for b in addr.packed)


def nth_host(net: netaddr.IPNetwork, n: int) -> netaddr.IPAddress:
    """The n-th address of ``net`` (1 = gateway, 2 = management port, ...)."""
    if not 0 < n < net.size - 1:
        raise AddressError(f"{net} has no host number {n}")
    return netaddr.IPAddress(net.first + n, net.version)
