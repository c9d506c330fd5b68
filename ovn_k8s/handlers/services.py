"""Services and EndpointSlices → VIPs on OVN load balancers (no kube-proxy).

Where each VIP goes:
- ClusterIPs (and externalIPs, load-balancer ingress IPs, so pods reach those too):
  the cluster load balancers ``k8s-cluster-lb-<proto>`` that every node switch carries
  through the load-balancer group. A service with ``sessionAffinity: ClientIP`` gets a
  load balancer of its own in the group instead, because OVN's ``affinity_timeout`` is
  an option of the whole row.
- NodePorts (``<node physical IP>:<nodePort>``), externalIPs and ingress IPs: the
  load balancers of every gateway router ``GR_<node>``; with
  ``externalTrafficPolicy: Local`` only the endpoints on that node.

Backends are the ready endpoints of the service's slices; when none is ready, the
serving-and-terminating ones, as kube-proxy falls back. A VIP with no backend stays,
empty: our load balancers carry ``reject=true`` (as ovn-kubernetes does), so clients
get a reset at once instead of waiting for a timeout. On a cluster that serves no
EndpointSlices the watcher reads core/v1 Endpoints instead; `slices_from_endpoints`
turns each into the slices it stands for, so the rest does not know the difference.

IPv6 VIPs and backends are written ``[ip]:port``. A dual-stack service (``clusterIPs``
of both families) gets a VIP per address, each with the backends of its own family
only: OVN cannot translate between families. An endpoint address that is not an IP is
reported once and left out; the service's other endpoints still count.

Changes are written as map mutations of single VIPs (translate.SetVips), batched into
one transaction per queue batch. What a service owns is remembered, so a changed port
or a deleted service removes exactly its VIPs.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import netaddr

from ovn_k8s import topology, translate
from ovn_k8s.ovsdb import NbDb

LOG = logging.getLogger(__name__)

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
PROTOCOLS = {"TCP": "tcp", "UDP": "udp", "SCTP": "sctp"}
DEFAULT_AFFINITY_SECONDS = 10800  # Kubernetes' default ClientIP timeout


class ServiceError(ValueError):
    """A service that cannot be translated (the API server would not have taken it)."""


@dataclass(frozen=True)
class Gateway:
    node: str
    ip: str


@dataclass
class Desired:
    """What one service wants: VIP → backends per shared load balancer, and its own LBs."""

    vips: dict[tuple[str, str], str] = field(default_factory=dict)  # (lb, vip) -> backends
    own_lbs: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> columns
    problems: list[str] = field(default_factory=list)  # input left out, for the log


def _ip(text: Any, what: str) -> str:
    try:
        return str(netaddr.IPAddress(str(text)))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        raise ServiceError(f"{what} {text!r} is not an IP address") from None


def _port(value: Any, what: str) -> int:
    if not isinstance(value, int) or not 1 <= value <= 65535:
        raise ServiceError(f"{what} {value!r} is not a port number")
    return value


def slices_from_endpoints(ep: dict[str, Any]) -> list[dict[str, Any]]:
    """A core/v1 Endpoints object as the EndpointSlices it stands for: one per subset
    and address family, ``addresses`` ready, ``notReadyAddresses`` not ready (Endpoints
    has no serving/terminating conditions), ``nodeName`` and ``targetRef`` kept."""
    out = []
    for subset in ep.get("subsets") or ():
        by_family: dict[str, list[dict[str, Any]]] = {}
        for ready, field_name in ((True, "addresses"), (False, "notReadyAddresses")):
            for a in subset.get(field_name) or ():
                ip = str(a.get("ip"))
                item: dict[str, Any] = {"addresses": [ip], "conditions": {"ready": ready}}
                for k in ("nodeName", "targetRef"):
                    if a.get(k):
                        item[k] = a[k]
                by_family.setdefault("IPv6" if ":" in ip else "IPv4", []).append(item)
        for family, endpoints in sorted(by_family.items()):
            out.append({"addressType": family, "endpoints": endpoints,
                        "ports": subset.get("ports") or []})
    return out


def endpoints_for(slices: Iterable[dict[str, Any]], port_name: str, protocol: str,
                  problems: list[str] | None = None) -> list[tuple[str, int, str | None]]:
    """(ip, port, node) of the usable endpoints for one service port, as kube-proxy picks
    them: the ready ones, else (per family) the serving and terminating ones. Addresses
    that are not
    IPs are left out and described in `problems`."""
    ready: set[tuple[str, int, str | None]] = set()
    fallback: set[tuple[str, int, str | None]] = set()
    for sl in slices:
        if sl.get("addressType", "IPv4") not in ("IPv4", "IPv6"):
            continue  # FQDN slices have no addresses OVN can use
        number = next((p.get("port") for p in sl.get("ports") or ()
                       if (p.get("name") or "") == port_name
                       and (p.get("protocol") or "TCP") == protocol), None)
        if not isinstance(number, int) or not 1 <= number <= 65535:
            continue
        for ep in sl.get("endpoints") or ():
            cond = ep.get("conditions") or {}
            node = ep.get("nodeName")
            for addr in ep.get("addresses") or ():
                try:
                    item = (_ip(addr, "endpoint address"), number, node)
                except ServiceError as e:
                    if problems is not None:
                        problems.append(str(e))
                    continue
                # ready unset means "unknown": consumers treat it as ready.
                if cond.get("ready", True):
                    ready.add(item)
                elif cond.get("serving") and cond.get("terminating"):
                    fallback.add(item)
    # Per family: a dual-stack service falls back only where a family has no ready one.
    families = {":" in ip for ip, _, _ in ready}
    return sorted(ready | {e for e in fallback if (":" in e[0]) not in families})


def _backends(eps: list[tuple[str, int, str | None]], vip_ip: str,
              node: str | None = None) -> str:
    """The backends of a VIP on `vip_ip`: its address family only (and `node`'s only)."""
    v6 = ":" in vip_ip
    return ",".join(translate.vip(ip, num) for ip, num, on in eps
                    if (":" in ip) == v6 and (node is None or on == node))


def desired_for(svc: dict[str, Any], slices: list[dict[str, Any]],
                gateways: list[Gateway]) -> Desired:
    meta, spec = svc["metadata"], svc.get("spec") or {}
    namespace, name = meta["namespace"], meta["name"]
    out = Desired()
    cluster_ips = [ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")])
                   if ip and ip != "None"]
    cluster_ips = [_ip(ip, "clusterIP") for ip in cluster_ips]
    external = [_ip(ip, "externalIP") for ip in spec.get("externalIPs") or ()]
    external += [_ip(i["ip"], "load-balancer ingress IP")
                 for i in ((svc.get("status") or {}).get("loadBalancer") or {}).get(
                     "ingress") or () if i.get("ip")]
    affinity = spec.get("sessionAffinity") == "ClientIP"
    timeout = (((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
               .get("timeoutSeconds") or DEFAULT_AFFINITY_SECONDS)
    local = spec.get("externalTrafficPolicy") == "Local"
    node_ports = spec.get("type") in ("NodePort", "LoadBalancer")
    for p in spec.get("ports") or ():
        protocol = PROTOCOLS.get(p.get("protocol") or "TCP")
        if protocol is None:
            raise ServiceError(f"protocol {p.get('protocol')!r} is not TCP, UDP or SCTP")
        port = _port(p.get("port"), "port")
        eps = endpoints_for(slices, p.get("name") or "", p.get("protocol") or "TCP",
                            out.problems)
        if cluster_ips or external:
            if affinity:
                lb = translate.service_lb_name(namespace, name, protocol)
                row = out.own_lbs.setdefault(lb, {
                    "protocol": protocol, "vips": {},
                    "options": {"affinity_timeout": str(timeout), "reject": "true"},
                    "external_ids": topology.owned(translate.SERVICE,
                                                   translate.pod_key(namespace, name),
                                                   "service-lb"),
                })
                for ip in cluster_ips + external:
                    row["vips"][translate.vip(ip, port)] = _backends(eps, ip)
            else:
                for ip in cluster_ips + external:
                    out.vips[(topology.cluster_lb_name(protocol), translate.vip(ip, port))] = (
                        _backends(eps, ip))
        for gw in gateways:
            lb = topology.gateway_lb_name(gw.node, protocol)
            node = gw.node if local else None
            for ip in external:
                out.vips[(lb, translate.vip(ip, port))] = _backends(eps, ip, node)
            if node_ports and p.get("nodePort"):
                out.vips[(lb, translate.vip(gw.ip, _port(p["nodePort"], "nodePort")))] = (
                    _backends(eps, gw.ip, node))
    return out


class ServiceHandler:
    """Services → VIPs. `slices` is the reflector of the endpoint source: EndpointSlices,
    or with ``endpoints=True`` core/v1 Endpoints (named after their service)."""

    def __init__(self, nb: NbDb, services: Any, slices: Any, *, endpoints: bool = False
                 ) -> None:
        self.nb = nb
        self.services = services
        self.slices = slices
        self.endpoints = endpoints
        self._by_service: dict[str, set[str]] = {}  # service key -> slice keys
        self._slice_owner: dict[str, str] = {}
        self._owned: dict[str, Desired] = {}
        # key -> (service, gateways, source objects, Desired) computed at start-up
        self._memo: dict[str, tuple[Any, list[Gateway], list[Any], Desired]] = {}
        self._lock = threading.Lock()
        self._reported: set[tuple[str, str]] = set()
        self.counters = {"transactions": 0, "transaction_ms": 0, "batches": 0,
                         "batched_keys": 0, "vips_set": 0, "vips_removed": 0, "desired": 0}
        # Event → NB committed, per key, for `status`: says whether a slow change was
        # slow in here or before the event reached us.
        self._since: dict[str, float] = {}
        self._latency_ms: collections.deque[float] = collections.deque(maxlen=1000)

    def note_event(self, key: str) -> None:
        """A change of `key` arrived (the first one counts until it is handled)."""
        self._since.setdefault(key, time.monotonic())

    # ---- the slice index ---------------------------------------------------------------

    def slice_event(self, key: str, obj: dict[str, Any] | None) -> str | None:
        """Track which service a slice belongs to; returns the service key to handle."""
        if self.endpoints:
            return key  # an Endpoints object has its service's namespace and name
        with self._lock:
            old = self._slice_owner.pop(key, None)
            if old is not None:
                self._by_service.get(old, set()).discard(key)
            if obj is None:
                return old
            svc = ((obj.get("metadata") or {}).get("labels") or {}).get(SERVICE_NAME_LABEL)
            if not svc:
                return old
            owner = translate.pod_key(obj["metadata"]["namespace"], svc)
            self._slice_owner[key] = owner
            self._by_service.setdefault(owner, set()).add(key)
            return owner

    def _sources(self, key: str) -> list[dict[str, Any]]:
        """The objects a service's endpoints come from: its slices, or its Endpoints."""
        if self.endpoints:
            keys = [key]
        else:
            with self._lock:
                keys = sorted(self._by_service.get(key, ()))
        return [s for s in (self.slices.get(k) for k in keys) if s is not None]

    # ---- NB ----------------------------------------------------------------------------

    def gateways(self) -> list[Gateway]:
        """Every gateway router gateway-init made, with the node's physical IP."""
        out = []
        ports = {p.name: p for p in self.nb.rows("Logical_Router_Port")}
        for r in self.nb.rows("Logical_Router"):
            if not r.name.startswith("GR_") or r.external_ids.get(topology.ROLE) != "gateway":
                continue
            lrp = ports.get(f"rtoe-{r.name}")
            if lrp is not None and lrp.networks:
                out.append(Gateway(r.name[3:], str(netaddr.IPNetwork(lrp.networks[0]).ip)))
        return sorted(out, key=lambda g: g.node)

    def _report_once(self, key: str, message: str) -> None:
        if (key, message) not in self._reported:
            self._reported.add((key, message))
            LOG.error("service %s: %s", key, message)

    def _desired(self, key: str, gateways: list[Gateway], remember: bool = False) -> Desired:
        """What `key` wants now. With `remember` (start-up), the result is kept for the
        key's first handling, which then need not compute it again."""
        svc = self.services.get(key)
        memo = self._memo.pop(key, None)
        if svc is None:
            return Desired()
        sources = self._sources(key)
        # What start-up computed still holds if the inputs are the very same objects (a
        # change replaces an object in the reflector's cache, never edits it).
        if (memo is not None and memo[0] is svc and memo[1] == gateways
                and len(memo[2]) == len(sources)
                and all(a is b for a, b in zip(memo[2], sources, strict=True))):
            return memo[3]
        self.counters["desired"] += 1
        try:
            slices = ([s for ep in sources for s in slices_from_endpoints(ep)]
                      if self.endpoints else sources)
            desired = desired_for(svc, slices, gateways)
        except (ServiceError, KeyError, TypeError, AttributeError) as e:
            # A shape the API server would not have stored (e.g. a subset that is not an
            # object): this key is skipped, the batch goes on.
            self._report_once(key, f"skipped: {e!r}" if not isinstance(e, ServiceError)
                              else f"skipped: {e}")
            desired = Desired()
        for problem in desired.problems:
            self._report_once(key, f"endpoint left out: {problem}")
        if remember:
            self._memo[key] = (svc, gateways, sources, desired)
        return desired

    # ---- start-up ----------------------------------------------------------------------

    def startup(self) -> list[Any]:
        """Commands removing what we own that no service wants (none when all is right)."""
        gateways = self.gateways()
        wanted: dict[str, set[str]] = {}
        wanted_lbs: set[str] = set()
        self._memo = {}
        for key, _ in self.services.items():
            d = self._desired(key, gateways, remember=True)
            for lb, v in d.vips:
                wanted.setdefault(lb, set()).add(v)
            wanted_lbs.update(d.own_lbs)
        cmds: list[Any] = []
        for lb in self.nb.rows("Load_Balancer"):
            owner_type = lb.external_ids.get(topology.OWNER_TYPE)
            if owner_type == translate.SERVICE:
                if lb.name not in wanted_lbs:
                    cmds.append(self.nb.api.lb_del(lb.name, if_exists=True))
            elif owner_type in ("cluster", "node"):
                stale = [v for v in lb.vips if v not in wanted.get(lb.name, ())]
                if stale:
                    cmds.append(translate.SetVips(self.nb.api, lb.name, {}, stale))
        # Nothing is owned yet: the first pass over every key then writes exactly the
        # differences from NB (with the desired state computed here).
        self._owned = {}
        return cmds

    def forget_startup(self) -> None:
        """Drop what start-up computed (when its keys will not be handled next)."""
        self._memo = {}

    # ---- events ------------------------------------------------------------------------

    def handle_batch(self, keys: list[str]) -> list[str]:
        since = [t for t in (self._since.pop(k, None) for k in keys) if t is not None]
        gateways = self.gateways()
        lbs = {lb.name: lb for lb in self.nb.rows("Load_Balancer")}
        planned = {key: self._desired(key, gateways) for key in keys}
        olds = {key: self._owned.get(key, Desired()) for key in keys}
        # What NB holds for just the VIPs this batch touches (a shared LB holds every
        # service's; converting the whole map per batch was most of a change's cost).
        touched: dict[str, set[str]] = {}
        for key in keys:
            for lb, v in (*planned[key].vips, *olds[key].vips):
                touched.setdefault(lb, set()).add(v)
        have = {lb: self.nb.map_get(lbs[lb], "vips", vs) for lb, vs in touched.items()
                if lb in lbs}
        sets: dict[str, dict[str, str]] = {}
        removes: dict[str, list[str]] = {}
        cmds: list[Any] = []
        for key in keys:
            new, old = planned[key], olds[key]
            for (lb, v), backends in new.vips.items():
                if lb in have and have[lb].get(v) != backends:
                    sets.setdefault(lb, {})[v] = backends
            for lb, v in set(old.vips) - set(new.vips):
                if v in have.get(lb, ()):
                    removes.setdefault(lb, []).append(v)
            cmds += self._own_lb_commands(key, old, new, lbs)
        for lb in sorted(set(sets) | set(removes)):
            cmds.append(translate.SetVips(self.nb.api, lb, sets.get(lb, {}),
                                          removes.get(lb, [])))
            self.counters["vips_set"] += len(sets.get(lb, {}))
            self.counters["vips_removed"] += len(removes.get(lb, []))
        self.counters["batches"] += 1
        self.counters["batched_keys"] += len(keys)
        if cmds:
            t0 = time.monotonic()
            self.nb.execute(*cmds)
            self.counters["transaction_ms"] += round((time.monotonic() - t0) * 1000)
            self.counters["transactions"] += 1
        done = time.monotonic()
        self._latency_ms.extend((done - t) * 1000 for t in since)
        # Remember what NB now holds for each key: what was planned from the cache as it
        # was then. (A delete landing meanwhile re-queues the key; forgetting here would
        # leave the VIPs just written behind.)
        for key, desired in planned.items():
            if desired.vips or desired.own_lbs:
                self._owned[key] = desired
            else:
                self._owned.pop(key, None)
        return []

    def _own_lb_commands(self, key: str, old: Desired, new: Desired,
                         lbs: dict[str, Any]) -> list[Any]:
        cmds: list[Any] = []
        group = topology.CLUSTER_LB_GROUP
        for name, columns in new.own_lbs.items():
            row = lbs.get(name)
            if row is not None and all(getattr(row, c) == v for c, v in columns.items()
                                       if c != "protocol"):
                continue
            lb = self.nb.ensure("Load_Balancer", name, **columns)
            cmds += [lb, self.nb.api.db_add("Load_Balancer_Group", group, "load_balancer", lb)]
        gone = set(old.own_lbs) - set(new.own_lbs)
        if key not in self.services:
            # Deleted while we were down or since: whatever it owned goes.
            gone |= {n for n, r in lbs.items()
                     if r.external_ids.get(topology.OWNER_TYPE) == translate.SERVICE
                     and r.external_ids.get(topology.OWNER) == key}
        for name in sorted(gone):
            if name in lbs:
                cmds.append(self.nb.api.lb_del(name, if_exists=True))
        return cmds

    def status(self) -> dict[str, Any]:
        lat = sorted(self._latency_ms)
        pct = {f"p{p}": round(lat[min(len(lat) - 1, p * len(lat) // 100)], 1)
               for p in (50, 99)} if lat else {}
        return {"services": len(self._owned), **self.counters,
                "event_to_nb_ms": dict(pct, count=len(lat))}
