"""Addresses: validation of the CIDRs operators give us and what we derive from them."""

from __future__ import annotations

import heapq
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


class ExhaustedError(AddressError):
    """No free address or subnet is left."""


class SubnetAllocator:
    """Node subnets of ``host_prefix`` carved from the cluster subnets, lowest first.

    Rebuilt at start by reserving every subnet already in node annotations and NB, so
    a restart never hands out a subnet twice. Not thread-safe: one handler owns it.
    """

    def __init__(self, cluster_subnets: Iterable[netaddr.IPNetwork], host_prefix: int) -> None:
        self.cluster_subnets = tuple(cluster_subnets)
        for net in self.cluster_subnets:
            if not net.prefixlen <= host_prefix <= 30:
                raise AddressError(
                    f"host prefix /{host_prefix} does not fit cluster subnet {net} "
                    f"(must be between /{net.prefixlen} and /30)")
        self.host_prefix = host_prefix
        self._used: set[netaddr.IPNetwork] = set()

    def _blocks(self, subnet: netaddr.IPNetwork) -> list[netaddr.IPNetwork]:
        if subnet.prefixlen >= self.host_prefix:
            return [netaddr.IPNetwork(f"{subnet.network}/{self.host_prefix}").cidr]
        return list(subnet.subnet(self.host_prefix))

    def reserve(self, subnet: netaddr.IPNetwork) -> bool:
        """Mark ``subnet`` (any size) as taken; False (and nothing marked) if any of it
        already is. Outside the cluster subnets is an error."""
        if not any(subnet in net for net in self.cluster_subnets):
            raise AddressError(f"node subnet {subnet} is not inside the cluster subnet")
        blocks = self._blocks(subnet)
        if any(b in self._used for b in blocks):
            return False
        self._used.update(blocks)
        return True

    def release(self, subnet: netaddr.IPNetwork) -> None:
        self._used.difference_update(self._blocks(subnet))

    def allocate(self) -> netaddr.IPNetwork:
        for net in self.cluster_subnets:
            for block in net.subnet(self.host_prefix):
                if block not in self._used:
                    self._used.add(block)
                    return block
        raise ExhaustedError(
            f"no free /{self.host_prefix} left in {', '.join(map(str, self.cluster_subnets))}")

    def __len__(self) -> int:
        return len(self._used)


class AddressPool:
    """Pod addresses of one node subnet, lowest free first.

    The network and broadcast addresses, the gateway (.1) and the management port
    (.2) are never handed out.
    """

    FIRST_POD_OFFSET = 3

    def __init__(self, subnet: netaddr.IPNetwork) -> None:
        self.subnet = subnet
        self._base = int(subnet.network)
        last = subnet.size - 2  # the broadcast address is not a pod's
        self._free = list(range(self.FIRST_POD_OFFSET, last + 1))  # a heap (sorted already)
        self._taken: set[int] = set()

    def _offset(self, ip: netaddr.IPAddress) -> int:
        if ip not in self.subnet:
            raise AddressError(f"{ip} is not in node subnet {self.subnet}")
        return int(ip) - self._base

    def reserve(self, ip: netaddr.IPAddress) -> bool:
        """Mark ``ip`` as taken; False if it already was (a duplicate to resolve)."""
        offset = self._offset(ip)
        if offset in self._taken:
            return False
        self._taken.add(offset)
        return True

    def release(self, ip: netaddr.IPAddress) -> None:
        offset = self._offset(ip)
        if offset in self._taken:
            self._taken.discard(offset)
            if self.FIRST_POD_OFFSET <= offset <= self.subnet.size - 2:
                heapq.heappush(self._free, offset)

    def allocate(self) -> netaddr.IPAddress:
        # Lazily skip offsets reserved since they were pushed (reserve does not pop).
        while self._free:
            offset = heapq.heappop(self._free)
            if offset not in self._taken:
                self._taken.add(offset)
                return netaddr.IPAddress(self._base + offset)
        raise ExhaustedError(f"node subnet {self.subnet} has no free address left")

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, netaddr.IPAddress) and ip in self.subnet and (
            int(ip) - self._base) in self._taken

    def __len__(self) -> int:
        return len(self._taken)
