"""ADD, DEL and CHECK: the pod's veth, its OVS port on br-int, the result.

The input has been checked by :mod:`ovn_k8s.cni.spec` before anything here runs.
Heavy modules (pyroute2, ovsdbapp, the Kubernetes client) are imported by the
functions that need them, so VERSION and bad-input errors answer fast.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

from ovn_k8s.cni import spec
from ovn_k8s.cni.podnet import AnnotationSource, PodNetwork
from ovn_k8s.cni.spec import CniError, Request

LOG = logging.getLogger(__name__)

BRIDGE = "br-int"
POLL = 0.005


def connect_ovs(req: Request) -> Any:
    """The Open_vSwitch database the config names (the process's shared connection to
    it), or CniError 11 if it is down."""
    from ovn_k8s import ovsdb  # noqa: PLC0415
    from ovn_k8s.host import ovs as host_ovs  # noqa: PLC0415

    assert req.conf is not None
    remote = req.conf.ovs_remote or host_ovs.default_remote()
    try:
        ovsdb.validate_remote(remote)
    except ValueError as e:
        raise CniError(spec.INVALID_CONFIG, f"network config: ovsRemote: {e}") from None
    try:
        return ovsdb.connect_ovs(remote, timeout=10.0, connect_timeout=3.0)
    except ovsdb.OvsdbConnectError as e:
        raise CniError(spec.TRY_AGAIN_LATER, "the node's Open_vSwitch database is unreachable",
                       details=str(e)) from None


def default_source(req: Request, ovs: Any) -> AnnotationSource:
    from ovn_k8s.cni.podnet import KubeAnnotationSource  # noqa: PLC0415
    from ovn_k8s.host import ovs as host_ovs  # noqa: PLC0415

    assert req.conf is not None
    return KubeAnnotationSource(req.conf.kubeconfig, host_ovs.external_ids(ovs))


def _interface(ovs: Any, name: str) -> Any:
    return next((i for i in ovs.rows("Interface") if i.name == name), None)


def _port_on_bridge(ovs: Any, name: str) -> bool:
    bridge = next((b for b in ovs.rows("Bridge") if b.name == BRIDGE), None)
    return bridge is not None and any(p.name == name for p in bridge.ports)


def _wait(what: str, cond: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise CniError(spec.TRY_AGAIN_LATER, f"{what} did not happen within {timeout:g}s")
        time.sleep(POLL)


def _external_ids(req: Request, net: PodNetwork) -> dict[str, str]:
    pod = req.pod
    assert pod is not None and req.netns is not None
    ids = {
        "iface-id": pod.iface_id,
        "attached_mac": net.mac,
        "ip_address": ",".join(str(ip) for ip in net.ips),
        "sandbox": req.container_id,
    }
    uid = pod.uid or net.uid
    if uid:
        ids["iface-id-ver"] = uid
    return ids


def add(req: Request, source: Callable[[Request, Any], AnnotationSource] = default_source,
        ovs: Any = None) -> dict[str, Any]:
    """Wire the pod; on any failure undo what this call made, then raise.

    ``ovs``: an open Open_vSwitch connection (the node daemon's); None connects here."""
    from ovn_k8s.cni import links  # noqa: PLC0415

    conf, pod = req.conf, req.pod
    assert conf is not None and pod is not None and req.netns is not None
    marks = [("start", time.monotonic())]
    ovs = ovs if ovs is not None else connect_ovs(req)
    marks.append(("ovsdb", time.monotonic()))
    if not any(b.name == BRIDGE for b in ovs.rows("Bridge")):
        raise CniError(spec.TRY_AGAIN_LATER, f"{BRIDGE} does not exist yet on this node",
                       details="ovn-k8s-overlay minion-init creates it")
    net = source(req, ovs).wait(pod, conf.annotation_timeout)
    marks.append(("annotation", time.monotonic()))
    host = links.host_veth_name(req.container_id, req.ifname)
    _settle(host)
    routes = links.pod_routes(net, req.wants_default_route)
    made_port = False
    pod_setup: Callable[[], dict[str, float]] | None = None
    try:
        veth = links.create_veth(host, req.ifname, req.netns, net.mac, conf.mtu)
        marks.append(("veth", time.monotonic()))
        # The pod end is configured by a thread inside the netns while the port is
        # added here: neither waits for the other (vswitchd opens the host end, which
        # exists and is up), and the OVSDB round trips overlap the netlink work.
        pod_setup = links.configure_pod(req.netns, req.ifname, net, routes, veth.pod_index)
        made_port = True
        # Not waiting for ovs-vswitchd to apply it (20-70 ms here): that wait checks
        # nothing (ovsdbapp only logs a port vswitchd could not open) and the pod's
        # traffic waits for ovn-controller's flows anyway; waitOvnInstalled waits for
        # those, which implies vswitchd has the port.
        ovs.execute_no_wait(ovs.api.add_port(BRIDGE, host, may_exist=True),
                            ovs.api.db_set("Interface", host,
                                           ("external_ids", _external_ids(req, net))))
        marks.append(("port", time.monotonic()))
        in_pod = pod_setup()
        pod_setup = None
        marks.append(("netns-rest", time.monotonic()))
        if conf.wait_ovn_installed:
            _wait(f"ovn-controller marking {host} ({pod.iface_id}) ovn-installed",
                  lambda: (_interface(ovs, host) is not None and
                           _interface(ovs, host).external_ids.get("ovn-installed") == "true"),
                  conf.ovn_installed_timeout)
            marks.append(("ovn-installed", time.monotonic()))
    except BaseException as e:
        LOG.warning("ADD %s failed (%s), removing what it made", pod, e)
        try:
            if pod_setup is not None:
                # Let the netns thread finish before its interface is removed.
                with contextlib.suppress(BaseException):
                    pod_setup()
            if made_port:
                _remove_port(ovs, host)
            # Only the host end: the pod end goes with it, and an interface of that
            # name we did not make (the reason veth creation failed) stays.
            links.delete(host, None, req.ifname)
        except Exception as cleanup:
            LOG.error("cleanup after failed ADD of %s: %s", pod, cleanup)
        if isinstance(e, links.LinkError):
            raise CniError(spec.INTERNAL, str(e)) from None
        from ovn_k8s import ovsdb  # noqa: PLC0415

        if isinstance(e, ovsdb.OvsdbError):
            raise CniError(spec.TRY_AGAIN_LATER, f"attaching {host} to {BRIDGE} failed",
                           details=str(e)) from None
        raise
    LOG.info("ADD %s: %s in %s, host end %s on %s (ms: %s; in the netns, alongside: %s)",
             pod, req.ifname, req.netns, host, BRIDGE, _steps(marks),
             ", ".join(f"{k} {v:.0f}" for k, v in in_pod.items()))
    return _result(req, net, host, veth.host_mac, routes)


def _result(req: Request, net: PodNetwork, host: str, host_mac: str,
            routes: list[spec.Route]) -> dict[str, Any]:
    assert req.conf is not None
    interfaces = [spec.Interface(host, host_mac), spec.Interface(req.ifname, net.mac, req.netns)]
    ips = [spec.IpConfig(ip, net.gateway_for(ip), 1) for ip in net.ips]
    return spec.build_result(req.conf.cni_version, interfaces, ips, routes, req.conf.dns,
                             req.conf.prev_result)


def _remove_port(ovs: Any, host: str, wait: bool = True) -> None:
    port = next((p for p in ovs.rows("Port") if p.name == host), None)
    if port is None:
        return
    # One raw mutation, ~1 ms against ~6 for ovsdbapp's del_port (its transaction
    # objects and connection-thread hand-off): Port and Interface are not root tables,
    # so OVSDB removes both once no bridge refers to the port. Not waiting for
    # ovs-vswitchd, as ADD does not.
    uuid = ["uuid", str(port.uuid)]
    ovs.transact([{"op": "mutate", "table": "Bridge", "where": [["ports", "includes", uuid]],
                   "mutations": [["ports", "delete", uuid]]}])
    if wait:
        _port_gone(ovs, host)


def _port_gone(ovs: Any, host: str) -> None:
    """Wait for our replica to show the port removed: an ADD of the same name
    (add_port, may_exist) reads it next."""
    if not ovs.wait_replica(lambda: _interface(ovs, host) is None):
        from ovn_k8s import ovsdb  # noqa: PLC0415

        raise ovsdb.OvsdbTransactionError(f"{host} is still in our replica after its removal")


def _remove(req: Request, ovs: Any, host: str, marks: list[tuple[str, float]],
            background: bool) -> None:
    from ovn_k8s.cni import links  # noqa: PLC0415

    netns = req.netns
    if netns is not None:
        try:
            spec.check_netns(netns)
        except CniError:
            netns = None  # gone (or never one): nothing of ours can be in it
    if background:
        # Done once OVSDB has committed the removal: the pair and our replica's
        # catching up are deferred until the answer is out (links.defer says why),
        # and any later call about this name waits for them.
        _remove_port(ovs, host, wait=False)
        marks.append(("port", time.monotonic()))

        def rest(ipr: Any) -> None:
            try:
                links.delete_with(ipr, host, netns, req.ifname)
            finally:
                _port_gone(ovs, host)

        links.defer(host, rest)
        return
    # A process of its own waits for the kernel (~15 ms): on a thread, while the
    # port goes here. vswitchd copes with either order; a runtime that removed the
    # netns before DEL has already taken the veth away under it anyway.
    veth_gone = links.start(lambda: links.delete(host, netns, req.ifname))
    try:
        _remove_port(ovs, host, wait=False)
        marks.append(("port", time.monotonic()))
    finally:
        veth_gone()
    marks.append(("veth-rest", time.monotonic()))


def _settle(host: str) -> None:
    """Wait for this name's deferred deletion (an earlier DEL's, in the daemon)."""
    from ovn_k8s.cni import links  # noqa: PLC0415

    try:
        links.settle(host)
    except links.LinkError as e:
        raise CniError(spec.TRY_AGAIN_LATER, str(e)) from None


def _steps(marks: list[tuple[str, float]]) -> str:
    """Where the time went, per step: the figures the speed target is judged by."""
    return ", ".join(f"{name} {1000 * (t - marks[i][1]):.0f}"
                     for i, (name, t) in enumerate(marks[1:]))


def delete(req: Request, ovs: Any = None, background: bool = False) -> None:
    """Remove the port and the veth; whatever is already gone is not an error.

    ``background`` (the node daemon): done once OVSDB has removed the port; the
    veth's deletion is deferred (links.defer) until the call has been answered."""
    from ovn_k8s import ovsdb  # noqa: PLC0415
    from ovn_k8s.cni import links  # noqa: PLC0415

    marks = [("start", time.monotonic())]
    ovs = ovs if ovs is not None else connect_ovs(req)
    marks.append(("ovsdb", time.monotonic()))
    host = links.host_veth_name(req.container_id, req.ifname)
    _settle(host)
    try:
        _remove(req, ovs, host, marks, background)
    except links.LinkError as e:
        raise CniError(spec.INTERNAL, str(e)) from None
    except ovsdb.OvsdbError as e:
        raise CniError(spec.TRY_AGAIN_LATER, f"removing {host} from {BRIDGE} failed",
                       details=str(e)) from None
    LOG.info("DEL %s %s: removed %s (ms: %s)%s", req.pod or req.container_id, req.ifname,
             host, _steps(marks), "; veth deletion deferred" if background else "")


def check(req: Request, source: Callable[[Request, Any], AnnotationSource] = default_source,
          ovs: Any = None) -> None:
    """Compare the pod's interface, addresses, routes and OVS port with the annotation."""
    from ovn_k8s.cni import links  # noqa: PLC0415

    conf, pod = req.conf, req.pod
    assert conf is not None and pod is not None and req.netns is not None
    ovs = ovs if ovs is not None else connect_ovs(req)
    net = source(req, ovs).wait(pod, conf.annotation_timeout)
    host = links.host_veth_name(req.container_id, req.ifname)
    _settle(host)
    diffs: list[str] = []
    have = links.inspect_pod(req.netns, req.ifname)
    if have is None:
        diffs.append(f"no interface {req.ifname} in {req.netns}")
    else:
        if have.mac.lower() != net.mac:
            diffs.append(f"{req.ifname} MAC is {have.mac}, annotation says {net.mac}")
        if have.mtu != conf.mtu:
            diffs.append(f"{req.ifname} MTU is {have.mtu}, config says {conf.mtu}")
        if not have.up:
            diffs.append(f"{req.ifname} is down")
        want = {str(ip) for ip in net.ips}
        if missing := sorted(want - have.addresses):
            diffs.append(f"{req.ifname} lacks address(es) {', '.join(missing)}")
        if extra := sorted(have.addresses - want):
            diffs.append(f"{req.ifname} has unexpected address(es) {', '.join(extra)}")
        for r in links.pod_routes(net, req.wants_default_route):
            key = (str(r.dst), str(r.gw) if r.gw else None)
            if key not in have.routes:
                diffs.append(f"no route to {r.dst} via {r.gw} on {req.ifname}")
    iface = _interface(ovs, host)
    if iface is None or not _port_on_bridge(ovs, host):
        diffs.append(f"no OVS port {host} on {BRIDGE}")
    else:
        for key, value in _external_ids(req, net).items():
            if key == "iface-id-ver" and not pod.uid:
                continue
            if iface.external_ids.get(key) != value:
                diffs.append(f"OVS interface {host} external_ids:{key} is "
                             f"{iface.external_ids.get(key)!r}, expected {value!r}")
    prev_ips = {ip.get("address") for ip in (conf.prev_result or {}).get("ips") or []}
    if missing := sorted({str(ip) for ip in net.ips} - prev_ips):
        diffs.append(f"prevResult lacks address(es) {', '.join(missing)}")
    if diffs:
        raise CniError(spec.CHECK_FAILED, f"CHECK {pod} {req.ifname}: " + "; ".join(diffs))
