"""Netlink work for a pod: the veth pair, its configuration inside the pod netns.

pyroute2 only. Work inside the pod netns runs in a short-lived thread that has
joined it: setns() changes only the calling thread, and the thread ends with it,
so the rest of the process (and the OVSDB connection thread) stays on the node.
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import Ethtool, IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from ovn_k8s.cni.podnet import PodNetwork
from ovn_k8s.cni.spec import Route

T = TypeVar("T")


class LinkError(RuntimeError):
    """The pod's interface could not be made, read or removed."""


def host_veth_name(container_id: str, ifname: str) -> str:
    """15 characters, the same for every call about this (container, ifname).

    Hashing both lets a Multus pod have one host end per interface; a prefix of the
    id alone would collide for ids sharing their first characters.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"veth{digest[:11]}"


def in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread inside the network namespace at ``netns_path``."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                netns.setns(fd, flags=0)
            finally:
                os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, name="cni-netns", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result["value"]


def _link_index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def create_veth(host_name: str, ifname: str, netns_path: str, mac: str, mtu: int) -> str:
    """The veth pair, pod end ``ifname`` made directly inside the netns (~3x faster than
    creating it here and moving it, DESIGN.md); returns the host end's MAC.

    A host end of the same name is a leftover of an earlier, interrupted ADD for this
    very container and interface (the name is derived from both): it is replaced.
    """
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    with IPRoute() as ipr:
        try:
            stale = _link_index(ipr, host_name)
            if stale is not None:
                ipr.link("del", index=stale)
            try:
                ipr.link("add", ifname=host_name, kind="veth", mtu=mtu,
                         peer={"ifname": ifname, "net_ns_fd": fd, "address": mac, "mtu": mtu})
            except NetlinkError as e:
                if e.code == errno.EEXIST:
                    raise LinkError(
                        f"interface {ifname} already exists in {netns_path}") from None
                raise LinkError(f"cannot create veth {host_name}/{ifname}: {e}") from None
            idx = _link_index(ipr, host_name)
            if idx is None:
                raise LinkError(f"veth {host_name} vanished right after creation")
            ipr.link("set", index=idx, state="up")
            return ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
        finally:
            os.close(fd)


def tx_checksum_off(ifname: str) -> None:
    """``ethtool -K IFNAME tx off``: the userspace datapath does not fill in checksums
    the pod's stack left to the NIC, so TCP through it breaks without this."""
    with Ethtool() as eth:
        feats = eth.get_features(ifname)
        changed = False
        for name, feat in feats.features.items():
            if name.startswith("tx-checksum") and feat.enable and feat.available:
                feat.enable = False
                changed = True
        if changed:
            eth.set_features(ifname, feats)


def pod_routes(net: PodNetwork, default_route: bool) -> list[Route]:
    """The routes the pod gets: default via the gateway (primary interface) + the extra ones."""
    import ipaddress  # noqa: PLC0415

    routes = []
    if default_route:
        for gw in net.gateways:
            routes.append(Route(ipaddress.ip_network("0.0.0.0/0" if gw.version == 4 else "::/0"),
                                gw))
    for r in net.routes:
        gw = r.gw or next((g for g in net.gateways if g.version == r.dst.version), None)
        routes.append(Route(r.dst, gw))
    return routes


def configure_pod(netns_path: str, ifname: str, net: PodNetwork, routes: Iterable[Route],
                  mtu: int) -> None:
    """Inside the netns: addresses, up, routes, tx checksum offload off, lo up."""
    routes = list(routes)

    def work() -> None:
        with IPRoute() as ipr:
            idx = _link_index(ipr, ifname)
            if idx is None:
                raise LinkError(f"{ifname} is not in {netns_path} after creating it")
            ipr.link("set", index=1, state="up")
            for ip in net.ips:
                # IPv6 DAD would hold the address "tentative" for a second or more.
                extra = {"flags": 0x02} if ip.version == 6 else {}  # IFA_F_NODAD
                ipr.addr("add", index=idx, address=str(ip.ip), prefixlen=ip.network.prefixlen,
                         **extra)
            ipr.link("set", index=idx, state="up", mtu=mtu)
            for r in routes:
                kw: dict[str, Any] = {"dst": str(r.dst), "oif": idx}
                if r.gw is not None:
                    kw["gateway"] = str(r.gw)
                if r.dst.version == 6:
                    kw["family"] = socket.AF_INET6
                ipr.route("replace", **kw)
        tx_checksum_off(ifname)

    try:
        in_netns(netns_path, work)
    except NetlinkError as e:
        raise LinkError(f"configuring {ifname} in {netns_path}: {e}") from None


def delete(host_name: str, netns_path: str | None, ifname: str) -> None:
    """Remove the pair, whichever ends are left; nothing left is fine (DEL is idempotent)."""
    with IPRoute() as ipr:
        idx = _link_index(ipr, host_name)
        if idx is not None:
            try:
                ipr.link("del", index=idx)  # takes the pod end with it
                return
            except NetlinkError as e:
                if e.code != errno.ENODEV:
                    raise LinkError(f"cannot delete {host_name}: {e}") from None
    if netns_path is None or not os.path.exists(netns_path):
        return

    def work() -> None:
        with IPRoute() as ipr:
            idx = _link_index(ipr, ifname)
            if idx is None:
                return
            kind = ipr.get_links(idx)[0].get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
            if kind == "veth":  # only what we would have made
                ipr.link("del", index=idx)

    in_netns(netns_path, work)


@dataclass(frozen=True)
class PodIface:
    """What the pod's interface looks like now (for CHECK)."""

    mac: str
    mtu: int
    up: bool
    addresses: frozenset[str]  # "ip/prefixlen", scope global
    routes: frozenset[tuple[str, str | None]]  # (dst, gateway)


def inspect_pod(netns_path: str, ifname: str) -> PodIface | None:
    def work() -> PodIface | None:
        with IPRoute() as ipr:
            idx = _link_index(ipr, ifname)
            if idx is None:
                return None
            link = ipr.get_links(idx)[0]
            addrs = frozenset(
                f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
                for a in ipr.get_addr(index=idx) if a["scope"] == 0
            )
            routes = set()
            for fam in (socket.AF_INET, socket.AF_INET6):
                for r in ipr.get_routes(family=fam, table=254):
                    if r.get_attr("RTA_OIF") != idx:
                        continue
                    dst = r.get_attr("RTA_DST")
                    default = "0.0.0.0" if fam == socket.AF_INET else "::"
                    routes.add((f"{dst or default}/{r['dst_len']}", r.get_attr("RTA_GATEWAY")))
            return PodIface(
                mac=link.get_attr("IFLA_ADDRESS"), mtu=link.get_attr("IFLA_MTU"),
                up=bool(link["flags"] & 1), addresses=addrs, routes=frozenset(routes))

    return in_netns(netns_path, work)
