"""Netlink work for a pod: the veth pair, its configuration inside the pod netns.

pyroute2 only. Work inside the pod netns runs in a short-lived thread that has
joined it: setns() changes only the calling thread, and the thread ends with it,
so the rest of the process (and the OVSDB connection thread) stays on the node.
The caller may do other work (the OVSDB transaction) while that thread runs.

pyroute2 0.9 costs ~1 ms of CPU per request and per socket opened (an asyncio core
under the sync API), so each step here uses as few requests as the kernel allows,
and a long-lived process (the node daemon) keeps one socket for the node's netns.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pyroute2 import IPRoute, netns
from pyroute2.ethtool.ioctl import IoctlEthtool
from pyroute2.netlink.exceptions import NetlinkError

from ovn_k8s.cni.podnet import PodNetwork
from ovn_k8s.cni.spec import Route

T = TypeVar("T")
LOG = logging.getLogger(__name__)


class LinkError(RuntimeError):
    """The pod's interface could not be made, read or removed."""


def host_veth_name(container_id: str, ifname: str) -> str:
    """15 characters, the same for every call about this (container, ifname).

    Hashing both lets a Multus pod have one host end per interface; a prefix of the
    id alone would collide for ids sharing their first characters.
    """
    digest = hashlib.sha256(f"{container_id}/{ifname}".encode()).hexdigest()
    return f"veth{digest[:11]}"


def start(fn: Callable[[], T], netns_path: str | None = None) -> Callable[[], T]:
    """Run ``fn()`` on a thread (inside the network namespace at ``netns_path``, if
    given) and return a function that waits for it and returns its result or raises
    its exception in the caller's thread."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            if netns_path is not None:
                fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    netns.setns(fd, flags=0)
                finally:
                    os.close(fd)
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    t = threading.Thread(target=target, name="cni-netns" if netns_path else "cni-work",
                         daemon=True)
    t.start()

    def join() -> T:
        t.join()
        if "error" in result:
            raise result["error"]
        return result["value"]

    return join


def in_netns(netns_path: str, fn: Callable[[], T]) -> T:
    """``fn()`` run by a thread inside the network namespace at ``netns_path``."""
    return start(fn, netns_path)()


_host_socket: IPRoute | None = None
_host_lock = threading.Lock()


def keep_host_socket() -> None:
    """Reuse one netlink socket for the node's netns from now on (for a long-lived
    process; the kernel serialises link changes under one lock anyway)."""
    global _host_socket
    with _host_lock:
        if _host_socket is None:
            _host_socket = IPRoute()


@contextlib.contextmanager
def _host() -> Iterator[IPRoute]:
    if _host_socket is None:
        with IPRoute() as ipr:
            yield ipr
        return
    with _host_lock:
        yield _host_socket


def _get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link called ``name``: one RTM_GETLINK (link_lookup dumps every link)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None
        raise


@dataclass(frozen=True)
class Veth:
    host_mac: str
    pod_index: int  # the pod end's ifindex inside the pod netns


def create_veth(host_name: str, ifname: str, netns_path: str, mac: str, mtu: int) -> Veth:
    """The veth pair, pod end ``ifname`` made directly inside the netns (~3x faster than
    creating it here and moving it, DESIGN.md), host end up.

    A host end of the same name is a leftover of an earlier, interrupted ADD for this
    very container and interface (the name is derived from both): it is replaced.
    """
    fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        with _host() as ipr:
            for attempt in (1, 2):
                try:
                    ipr.link("add", ifname=host_name, kind="veth", mtu=mtu, state="up",
                             peer={"ifname": ifname, "net_ns_fd": fd, "address": mac,
                                   "mtu": mtu})
                    break
                except NetlinkError as e:
                    if e.code != errno.EEXIST:
                        raise LinkError(f"cannot create veth {host_name}/{ifname}: {e}") \
                            from None
                    # Which name is taken? Only a host end of ours may be replaced.
                    stale = _get_link(ipr, host_name) if attempt == 1 else None
                    if stale is None:
                        raise LinkError(
                            f"interface {ifname} already exists in {netns_path}") from None
                    ipr.link("del", index=stale["index"])
            link = _get_link(ipr, host_name)
            if link is None:
                raise LinkError(f"veth {host_name} vanished right after creation")
            # A veth's IFLA_LINK is its peer's ifindex, in the peer's netns.
            return Veth(link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_LINK"))
    finally:
        os.close(fd)


def tx_checksum_off(ifname: str) -> None:
    """``ethtool -K IFNAME tx off``: the userspace datapath does not fill in checksums
    the pod's stack left to the NIC, so TCP through it breaks without this.

    The ethtool ioctl (a few syscalls) rather than pyroute2's Ethtool, which also
    opens and resolves a generic netlink family: ~5 ms of CPU per pod."""
    eth = IoctlEthtool(ifname)
    try:
        feats = eth.get_features()
        off = [name for name in feats.keys()
               if name.startswith("tx-checksum") and feats.is_available(name)
               and feats.is_active(name)]
        for name in off:
            feats.set_value(name, False)
        if off:
            eth.set_features(feats)
    finally:
        eth.close()


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
                  pod_index: int | None = None) -> Callable[[], dict[str, float]]:
    """Start configuring the pod end inside the netns: addresses, up, routes, tx
    checksum offload off, lo up (MTU and MAC came with the veth). Returns the function
    that waits for it to finish (raising LinkError on failure) and returns the ms
    each step took."""
    routes = list(routes)

    def work() -> dict[str, float]:
        start = time.monotonic()
        try:
            with IPRoute() as ipr:
                idx = pod_index
                if idx is None:
                    found = _get_link(ipr, ifname)
                    idx = None if found is None else found["index"]
                if idx is None:
                    raise LinkError(f"{ifname} is not in {netns_path} after creating it")
                ipr.link("set", index=1, state="up")
                for ip in net.ips:
                    # IPv6 DAD would hold the address "tentative" for a second or more.
                    extra = {"flags": 0x02} if ip.version == 6 else {}  # IFA_F_NODAD
                    ipr.addr("add", index=idx, address=str(ip.ip),
                             prefixlen=ip.network.prefixlen, **extra)
                ipr.link("set", index=idx, state="up")
                for r in routes:
                    kw: dict[str, Any] = {"dst": str(r.dst), "oif": idx}
                    if r.gw is not None:
                        kw["gateway"] = str(r.gw)
                    if r.dst.version == 6:
                        kw["family"] = socket.AF_INET6
                    ipr.route("replace", **kw)
            configured = time.monotonic()
            tx_checksum_off(ifname)
        except NetlinkError as e:
            raise LinkError(f"configuring {ifname} in {netns_path}: {e}") from None
        return {"addresses+routes": 1000 * (configured - start),
                "ethtool": 1000 * (time.monotonic() - configured)}

    return start(work, netns_path)


def delete(host_name: str, netns_path: str | None, ifname: str) -> None:
    """Remove the pair, whichever ends are left; nothing left is fine (DEL is idempotent)."""
    with _host() as ipr:
        delete_with(ipr, host_name, netns_path, ifname)


def delete_with(ipr: IPRoute, host_name: str, netns_path: str | None, ifname: str) -> None:
    """:func:`delete` on the netlink socket ``ipr`` (deferred work's, say)."""
    try:
        ipr.link("del", ifname=host_name)  # takes the pod end with it
        return
    except NetlinkError as e:
        if e.code != errno.ENODEV:
            raise LinkError(f"cannot delete {host_name}: {e}") from None
    if netns_path is None or not os.path.exists(netns_path):
        return

    def work() -> None:
        with IPRoute() as inside:
            link = _get_link(inside, ifname)
            if link is None:
                return
            if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "veth":
                inside.link("del", index=link["index"])  # only what we would have made

    in_netns(netns_path, work)


# Deleting a veth holds the caller ~15 ms in the kernel (it waits for RCU grace
# periods under the rtnl lock; measured here, whatever the pair's netns or IPv6
# state). The node daemon answers DEL once the OVS port is gone and deletes the pair
# after the answer is sent, on the call's own thread (see deferring): run any
# earlier, the deletion's Python half competes for the interpreter lock with the
# answer. It uses a netlink socket of its own, so ADDs on the shared one are not
# held up behind it. A later call about the same name waits for it first (settle).
# If the daemon dies before it is done, the runtime's removal of the pod's netns
# takes the pair away (a veth dies with either end's netns), and an ADD replaces a
# leftover of its own name.
_pending: dict[str, threading.Event] = {}
_pending_lock = threading.Lock()
_held = threading.local()
_later_socket: IPRoute | None = None
_later_lock = threading.Lock()


@contextlib.contextmanager
def deferring() -> Iterator[None]:
    """Inside the block, work given to :func:`defer` by this thread waits; it runs
    when the block ends (the daemon: once the call's answer has been sent)."""
    _held.work = []
    try:
        yield
    finally:
        work, _held.work = _held.work, None
        for name, fn, done in work:
            _run_deferred(name, fn, done)


def defer(name: str, work: Callable[[IPRoute], None]) -> None:
    """``work(ipr)`` for interface ``name`` (``ipr``: a netlink socket of its own),
    at the end of this thread's :func:`deferring` block, or now outside one."""
    done = threading.Event()
    with _pending_lock:
        _pending[name] = done
    held = getattr(_held, "work", None)
    if held is None:
        _run_deferred(name, work, done)
    else:
        held.append((name, work, done))


def _run_deferred(name: str, fn: Callable[[IPRoute], None], done: threading.Event) -> None:
    global _later_socket
    try:
        with _later_lock:
            if _later_socket is None:
                _later_socket = IPRoute()
            fn(_later_socket)
    except Exception as e:  # the call has answered: the log is all that is left
        LOG.error("deferred work on %s: %s", name, e)
    finally:
        with _pending_lock:
            if _pending.get(name) is done:
                del _pending[name]
        done.set()


def settle(name: str, timeout: float = 10.0) -> None:
    """Wait until the work deferred for ``name`` is done (before making it again,
    reading it, or deleting it)."""
    with _pending_lock:
        done = _pending.get(name)
    if done is not None and not done.wait(timeout):
        raise LinkError(f"{name} is still being deleted after {timeout:g}s")


def settle_all(timeout: float) -> bool:
    """Wait for all deferred work (a daemon's clean exit); False on timeout."""
    deadline = time.monotonic() + timeout
    with _pending_lock:
        waits = list(_pending.values())
    return all(done.wait(max(0.0, deadline - time.monotonic())) for done in waits)


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
            link = _get_link(ipr, ifname)
            if link is None:
                return None
            idx = link["index"]
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
