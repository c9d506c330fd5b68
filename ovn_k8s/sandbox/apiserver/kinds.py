"""Built-in resource types and their strategies (defaults, validation, allocation).

Each strategy mirrors the apiserver's registry strategy for that kind, limited to what a
client can observe and depend on: server-set defaults, which parts an update may change,
the status subresource split, ClusterIP/NodePort allocation, CRD establishment.
"""

from __future__ import annotations

import copy
import ipaddress
import re
from typing import Any

from . import errors, schema, validation
from .resources import Causes, ResourceType, Strategy
from .store import Store, now_rfc3339

_COMMON_KEYS: dict[tuple[str, ...], str] = {
    ("metadata", "finalizers"): "",
    ("metadata", "ownerReferences"): "uid",
}

# Lists with patchStrategy "merge" in the Go types (patchMergeKey given; "" = primitive set).
_CONTAINER_KEYS = {
    "ports": "containerPort", "env": "name", "volumeMounts": "mountPath",
    "volumeDevices": "devicePath", "resizePolicy": "resourceName",
}
_POD_KEYS: dict[tuple[str, ...], str] = {
    **_COMMON_KEYS,
    ("spec", "volumes"): "name",
    ("spec", "imagePullSecrets"): "name",
    ("spec", "hostAliases"): "ip",
    ("spec", "schedulingGates"): "name",
    ("spec", "resourceClaims"): "name",
    ("spec", "topologySpreadConstraints"): "topologyKey",
    ("status", "conditions"): "type",
    ("status", "podIPs"): "ip",
    ("status", "hostIPs"): "ip",
    ("status", "resourceClaimStatuses"): "name",
}
for _c in ("containers", "initContainers", "ephemeralContainers"):
    _POD_KEYS[("spec", _c)] = "name"
    for _f, _k in _CONTAINER_KEYS.items():
        _POD_KEYS[("spec", _c, _f)] = _k

_NODE_KEYS = {
    **_COMMON_KEYS,
    ("spec", "podCIDRs"): "",
    ("status", "conditions"): "type",
    ("status", "addresses"): "type",
}
_SERVICE_KEYS = {**_COMMON_KEYS, ("spec", "ports"): "port", ("status", "conditions"): "type"}
_NAMESPACE_KEYS = {**_COMMON_KEYS, ("status", "conditions"): "type"}
_CRD_KEYS = {**_COMMON_KEYS}

_NS_FIELDS = {"metadata.name": "metadata.name", "metadata.namespace": "metadata.namespace"}
_CLUSTER_FIELDS = {"metadata.name": "metadata.name"}


# ---- namespaces -----------------------------------------------------------------------------

class NamespaceStrategy(Strategy):
    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        fins = [f for f in spec.get("finalizers") or [] if isinstance(f, str)]
        if "kubernetes" not in fins:
            fins.append("kubernetes")
        obj["spec"] = dict(spec, finalizers=fins)
        obj["status"] = {"phase": "Active"}
        self._label(obj)

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        if subresource == "finalize":
            # Only spec.finalizers change through /finalize (the namespace controller's way).
            fins = (new.get("spec") or {}).get("finalizers")
            new.clear()
            new.update(old)
            new["metadata"] = dict(old["metadata"])
            new["spec"] = dict(old.get("spec") or {})
            if fins:
                new["spec"]["finalizers"] = fins
            else:
                new["spec"].pop("finalizers", None)
            return
        super().prepare_update(store, rt, new, old, subresource)
        # spec.finalizers only change through /finalize.
        if "spec" in old:
            new["spec"] = old["spec"]
        self._label(new)

    @staticmethod
    def _label(obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        name = meta.get("name")
        if name:
            meta["labels"] = dict(meta.get("labels") or {},
                                  **{"kubernetes.io/metadata.name": name})


# ---- nodes ----------------------------------------------------------------------------------

class NodeStrategy(Strategy):
    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        causes: Causes = []
        if old is not None:
            was = (old.get("spec") or {}).get("podCIDR")
            now = (obj.get("spec") or {}).get("podCIDR")
            if was and was != now:
                causes.append(errors.field_forbidden(
                    "spec.podCIDR", 'node updates may not change podCIDR except from "" to '
                                    "valid"))
        return causes


# ---- pods -----------------------------------------------------------------------------------

_POD_MUTABLE_MSG = (
    "pod updates may not change fields other than `spec.containers[*].image`,"
    "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
    "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
    "(allow it to be set to 1 if it was previously negative)")

_DEFAULT_TOLERATIONS = [
    {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute",
     "tolerationSeconds": 300},
    {"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
     "tolerationSeconds": 300},
]


def _qos(spec: dict[str, Any]) -> str:
    containers = (spec.get("containers") or []) + (spec.get("initContainers") or [])
    any_set = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            any_set = True
        for r in ("cpu", "memory"):
            if r not in lim or req.get(r, lim[r]) != lim[r]:
                guaranteed = False
    if not any_set:
        return "BestEffort"
    return "Guaranteed" if guaranteed else "Burstable"


class PodStrategy(Strategy):
    # prepare_update only swaps top-level fields, validate reads (and deep-copies before
    # comparing), commit_update and committed do nothing: see Strategy.edits_nested.
    edits_nested = False

    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("securityContext", {})
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        tols = spec.setdefault("tolerations", [])
        for t in _DEFAULT_TOLERATIONS:
            if not any(x.get("key") == t["key"] and x.get("effect") == t["effect"]
                       for x in tols if isinstance(x, dict)):
                tols.append(dict(t))
        for kind in ("containers", "initContainers"):
            for c in spec.get(kind) or []:
                if not isinstance(c, dict):
                    continue
                image = c.get("image") or ""
                tag = image.rsplit("/", 1)[-1]
                latest = "@" not in tag and (":" not in tag or tag.endswith(":latest"))
                c.setdefault("imagePullPolicy", "Always" if latest else "IfNotPresent")
                c.setdefault("terminationMessagePath", "/dev/termination-log")
                c.setdefault("terminationMessagePolicy", "File")
                c.setdefault("resources", {})
                for p in c.get("ports") or []:
                    if isinstance(p, dict):
                        p.setdefault("protocol", "TCP")
        obj["status"] = {"phase": "Pending", "qosClass": _qos(spec)}

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        if subresource == "binding":
            return
        super().prepare_update(store, rt, new, old, subresource)

    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        causes: Causes = []
        spec = obj.get("spec") or {}
        containers = spec.get("containers")
        if not containers:
            causes.append(errors.field_required("spec.containers"))
        names: set[str] = set()
        for kind in ("containers", "initContainers"):
            for i, c in enumerate(spec.get(kind) or []):
                p = f"spec.{kind}[{i}]"
                if not isinstance(c, dict):
                    causes.append(errors.field_invalid(p, c, "must be an object"))
                    continue
                name = c.get("name")
                if not name:
                    causes.append(errors.field_required(f"{p}.name"))
                elif why := validation.dns1123_label(name):
                    causes.append(errors.field_invalid(f"{p}.name", name, why))
                elif name in names:
                    causes.append(errors.field_duplicate(f"{p}.name", name))
                else:
                    names.add(name)
                if not c.get("image"):
                    causes.append(errors.field_required(f"{p}.image"))
        if old is not None and subresource != "binding":
            causes += _pod_immutable(obj, old)
        return causes

    def grace_seconds(self, rt: ResourceType, obj: dict[str, Any],
                      requested: int | None) -> int:
        spec = obj.get("spec") or {}
        phase = (obj.get("status") or {}).get("phase")
        if not spec.get("nodeName") or phase in ("Succeeded", "Failed"):
            return 0
        secs = requested if requested is not None else spec.get(
            "terminationGracePeriodSeconds", 30)
        if secs is None:
            secs = 30
        return 1 if secs < 0 else int(secs)


def _pod_immutable(new: dict[str, Any], old: dict[str, Any]) -> Causes:
    b = old.get("spec") or {}
    if new.get("spec") == b:
        return []  # the common case (metadata or status writes): nothing to check
    a = copy.deepcopy(new.get("spec") or {})
    for kind in ("containers", "initContainers"):
        for ca, cb in zip(a.get(kind) or [], b.get(kind) or [], strict=False):
            if isinstance(ca, dict) and isinstance(cb, dict):
                ca["image"] = cb.get("image")
    for f in ("activeDeadlineSeconds", "terminationGracePeriodSeconds"):
        if f in b:
            a[f] = b[f]
        else:
            a.pop(f, None)
    old_tols = b.get("tolerations") or []
    new_tols = a.get("tolerations") or []
    if all(t in new_tols for t in old_tols):
        if "tolerations" in b:
            a["tolerations"] = b["tolerations"]
        else:
            a.pop("tolerations", None)
    gates_new = a.get("schedulingGates") or []
    if all(g in (b.get("schedulingGates") or []) for g in gates_new):
        if "schedulingGates" in b:
            a["schedulingGates"] = b["schedulingGates"]
        else:
            a.pop("schedulingGates", None)
    if a != b:
        return [errors.field_forbidden("spec", _POD_MUTABLE_MSG)]
    return []


def bind_pod(pod: dict[str, Any], node: str, name: str) -> dict[str, Any]:
    """pods/binding: set spec.nodeName once, as the scheduler does."""
    spec = pod.get("spec") or {}
    if spec.get("nodeName"):
        raise errors.conflict("", "pods", name,
                              f"pod {name} is already assigned to node \"{spec['nodeName']}\"")
    new = dict(pod)
    new["spec"] = dict(spec, nodeName=node)
    status = dict(pod.get("status") or {})
    conds = [c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"]
    conds.append({"type": "PodScheduled", "status": "True", "lastProbeTime": None,
                  "lastTransitionTime": now_rfc3339()})
    status["conditions"] = conds
    new["status"] = status
    return new


# ---- services -------------------------------------------------------------------------------

class _IpPool:
    """ClusterIPs of one family from a CIDR, like the apiserver's bitmap allocator."""

    def __init__(self, cidr: str) -> None:
        self.net = ipaddress.ip_network(cidr.strip(), strict=False)
        self.size = self.net.num_addresses
        self.used: set[int] = set()
        self.next = 1

    def allocate(self, want: str | None, field: str) -> str:
        if want:
            addr = ipaddress.ip_address(want)
            if addr not in self.net or addr in (self.net.network_address,
                                                self.net.broadcast_address):
                raise _svc_invalid(field, want,
                                   "failed to allocate IP " + want + ": provided IP is not in "
                                   f"the valid range. The range of valid IPs is {self.net}")
            off = int(addr) - int(self.net.network_address)
            if off in self.used:
                raise _svc_invalid(field, want,
                                   f"failed to allocate IP {want}: provided IP is already "
                                   "allocated")
            self.used.add(off)
            return want
        last = self.size - 1 if self.net.version == 4 else self.size
        span = last - 1
        for i in range(span):
            off = (self.next - 1 + i) % span + 1
            if off not in self.used:
                self.used.add(off)
                self.next = off % span + 1
                return str(self.net.network_address + off)
        raise errors.internal("failed to allocate a serviceIP: range is full")


_FAMILIES = {4: "IPv4", 6: "IPv6"}


class ServiceAllocator:
    """ClusterIPs from one CIDR per family (``--service-cluster-ip-range``: the first is
    the primary family, a second of the other family makes the cluster dual-stack) and
    NodePorts from a range, like the apiserver's bitmaps."""

    def __init__(self, cidr: str, node_ports: tuple[int, int]) -> None:
        pools = [_IpPool(c) for c in cidr.split(",")]
        if len(pools) > 2 or len({p.net.version for p in pools}) != len(pools):
            raise ValueError(f"service CIDRs {cidr!r}: at most one per family")
        self.pools = {_FAMILIES[p.net.version]: p for p in pools}
        self.families = [_FAMILIES[p.net.version] for p in pools]  # primary first
        self.net = pools[0].net
        self.ports_lo, self.ports_hi = node_ports
        self.ports: set[int] = set()
        self.next_port = node_ports[0]

    def ip_allocate(self, want: str | None, family: str | None = None, index: int = 0) -> str:
        field = f"spec.clusterIPs[{index}]"
        if want:
            try:
                family = _FAMILIES[ipaddress.ip_address(want).version]
            except ValueError:
                raise _svc_invalid(field, want,
                                   "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)"
                                   ) from None
        pool = self.pools.get(family or self.families[0])
        if pool is None:
            raise _svc_invalid(f"spec.ipFamilies[{index}]", family,
                               "not configured on this cluster")
        return pool.allocate(want, field)

    def ip_release(self, ip: str | None) -> None:
        if not ip or ip == "None":
            return
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return
        pool = self.pools.get(_FAMILIES[addr.version])
        if pool is not None:
            pool.used.discard(int(addr) - int(pool.net.network_address))

    def families_for(self, spec: dict[str, Any]) -> list[str]:
        """The service's ipFamilies as the apiserver settles them from ipFamilyPolicy,
        ipFamilies and any clusterIPs asked for."""
        policy = spec.get("ipFamilyPolicy") or "SingleStack"
        ips = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]
               if ip and ip != "None"]
        try:
            wanted = [_FAMILIES[ipaddress.ip_address(ip).version] for ip in ips]
        except ValueError:
            wanted = []  # ip_allocate reports the bad address
        families = list(spec.get("ipFamilies") or wanted or self.families[:1])
        if wanted and families[:len(wanted)] != wanted:
            raise _svc_invalid("spec.ipFamilies", families,
                               "must match the families of spec.clusterIPs")
        if policy not in ("SingleStack", "PreferDualStack", "RequireDualStack"):
            raise _svc_invalid("spec.ipFamilyPolicy", policy, "unsupported value")
        if len(families) > 2 or len(set(families)) != len(families):
            raise _svc_invalid("spec.ipFamilies", families, "at most one of each family")
        if len(families) == 2 and policy == "SingleStack":
            raise _svc_invalid("spec.ipFamilyPolicy", policy,
                               "must be RequireDualStack or PreferDualStack when multiple "
                               "'ipFamilies' are specified")
        if policy != "SingleStack" and len(families) == 1 and len(self.families) == 2:
            families.append(next(f for f in self.families if f != families[0]))
        if policy == "RequireDualStack" and len(families) < 2:
            raise _svc_invalid("spec.ipFamilyPolicy", policy,
                               "this cluster is not configured for dual-stack services")
        for i, f in enumerate(families):
            if f not in self.pools:
                raise _svc_invalid(f"spec.ipFamilies[{i}]", f, "not configured on this cluster")
        return families

    def allocate_ips(self, spec: dict[str, Any]) -> None:
        """Settle the families and allocate a ClusterIP for each (all or none)."""
        families = self.families_for(spec)
        wanted = [ip for ip in spec.get("clusterIPs") or [spec.get("clusterIP")] if ip]
        got: list[str] = []
        try:
            for i, family in enumerate(families):
                got.append(self.ip_allocate(wanted[i] if i < len(wanted) else None,
                                            family, i))
        except _AllocError:
            for ip in got:
                self.ip_release(ip)
            raise
        spec["ipFamilies"] = families
        spec["clusterIPs"] = got
        spec["clusterIP"] = got[0]

    def port_allocate(self, want: int | None, taken: set[int], field: str) -> int:
        if want:
            if not self.ports_lo <= want <= self.ports_hi:
                raise _svc_invalid(field, want,
                                   f"provided port is not in the valid range. The range of "
                                   f"valid ports is {self.ports_lo}-{self.ports_hi}")
            if want in self.ports or want in taken:
                raise _svc_invalid(field, want,
                                   "provided port is already allocated")
            self.ports.add(want)
            return want
        span = self.ports_hi - self.ports_lo + 1
        for i in range(span):
            p = self.ports_lo + (self.next_port - self.ports_lo + i) % span
            if p not in self.ports and p not in taken:
                self.ports.add(p)
                self.next_port = p + 1
                return p
        raise errors.internal("failed to allocate a nodePort: range is full")


class _AllocError(Exception):
    """An allocation refused; ServiceStrategy turns it into a 422 naming the service."""

    def __init__(self, field: str, value: Any, why: str) -> None:
        super().__init__(why)
        self.cause = errors.field_invalid(field, value, why)


def _svc_invalid(field: str, value: Any, why: str) -> _AllocError:
    return _AllocError(field, value, why)


def _wants_ip(spec: dict[str, Any]) -> bool:
    return spec.get("type") != "ExternalName" and spec.get("clusterIP") != "None"


def _wants_node_ports(spec: dict[str, Any]) -> bool:
    return spec.get("type") in ("NodePort", "LoadBalancer")


class ServiceStrategy(Strategy):
    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            spec = obj["spec"] = {}
        self._defaults(spec)
        obj["status"] = {"loadBalancer": {}}

    @staticmethod
    def _defaults(spec: dict[str, Any]) -> None:
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec["type"] != "ExternalName":
            spec.setdefault("internalTrafficPolicy", "Cluster")
            spec.setdefault("ipFamilyPolicy", "SingleStack")
        if spec["type"] in ("NodePort", "LoadBalancer"):
            spec.setdefault("externalTrafficPolicy", "Cluster")
        if spec["type"] == "LoadBalancer":
            spec.setdefault("allocateLoadBalancerNodePorts", True)
        if not spec.get("clusterIP") and spec.get("clusterIPs"):
            spec["clusterIP"] = spec["clusterIPs"][0]
        for p in spec.get("ports") or []:
            if isinstance(p, dict):
                p.setdefault("protocol", "TCP")
                if "targetPort" not in p and "port" in p:
                    p["targetPort"] = p["port"]

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        super().prepare_update(store, rt, new, old, subresource)
        if subresource == "status":
            return
        spec = new.get("spec")
        if not isinstance(spec, dict):
            spec = new["spec"] = {}
        ospec = old.get("spec") or {}
        # Like the apiserver's patchAllocatedValues: an update that omits allocated values
        # keeps them instead of re-allocating.
        if _wants_ip(spec) and _wants_ip(ospec) and not spec.get("clusterIP"):
            for f in ("clusterIP", "clusterIPs"):
                if f in ospec:
                    spec[f] = ospec[f]
        if _wants_ip(spec) and _wants_ip(ospec) and not spec.get("ipFamilies"):
            spec["ipFamilies"] = ospec.get("ipFamilies")
        self._defaults(spec)
        if _wants_node_ports(spec) and _wants_node_ports(ospec):
            oldports = {(p.get("port"), p.get("protocol", "TCP")): p.get("nodePort")
                        for p in ospec.get("ports") or []}
            for p in spec.get("ports") or []:
                if isinstance(p, dict) and not p.get("nodePort"):
                    np = oldports.get((p.get("port"), p.get("protocol", "TCP")))
                    if np:
                        p["nodePort"] = np
        if not _wants_node_ports(spec):
            for p in spec.get("ports") or []:
                if isinstance(p, dict):
                    p.pop("nodePort", None)

    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        causes: Causes = []
        spec = obj.get("spec") or {}
        stype = spec.get("type")
        if stype not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
            causes.append(errors.field_unsupported(
                "spec.type", stype, ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"]))
        ports = spec.get("ports") or []
        if stype == "ExternalName":
            if not spec.get("externalName"):
                causes.append(errors.field_required("spec.externalName"))
        elif not ports and spec.get("clusterIP") != "None":
            causes.append(errors.field_required("spec.ports"))
        names: set[str] = set()
        for i, p in enumerate(ports):
            f = f"spec.ports[{i}]"
            if not isinstance(p, dict):
                causes.append(errors.field_invalid(f, p, "must be an object"))
                continue
            port = p.get("port")
            if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
                causes.append(errors.field_invalid(f"{f}.port", port,
                                                   "must be between 1 and 65535, inclusive"))
            if p.get("protocol") not in ("TCP", "UDP", "SCTP"):
                causes.append(errors.field_unsupported(f"{f}.protocol", p.get("protocol"),
                                                       ["SCTP", "TCP", "UDP"]))
            name = p.get("name") or ""
            if len(ports) > 1 and not name:
                causes.append(errors.field_required(f"{f}.name"))
            elif name and name in names:
                causes.append(errors.field_duplicate(f"{f}.name", name))
            names.add(name)
        if old is not None:
            ospec = old.get("spec") or {}
            if (_wants_ip(spec) and _wants_ip(ospec)
                    and spec.get("clusterIP") != ospec.get("clusterIP")):
                causes.append(errors.field_invalid(
                    "spec.clusterIPs[0]", spec.get("clusterIP"), "may not change once set"))
            if spec.get("clusterIP") == "None" and ospec.get("clusterIP") not in (None, "None") \
                    and stype != "ExternalName":
                causes.append(errors.field_invalid(
                    "spec.clusterIPs[0]", "None", "may not change once set"))
        return causes

    @staticmethod
    def _alloc(store: Store) -> ServiceAllocator:
        return store.state["services"]

    def commit_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        try:
            self._commit_create(store, obj)
        except _AllocError as e:
            raise errors.invalid("Service", "", obj["metadata"]["name"], [e.cause]) from None

    def commit_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                      old: dict[str, Any]) -> None:
        try:
            self._commit_update(store, new, old)
        except _AllocError as e:
            raise errors.invalid("Service", "", new["metadata"]["name"], [e.cause]) from None

    def _commit_create(self, store: Store, obj: dict[str, Any]) -> None:
        al = self._alloc(store)
        spec = obj["spec"]
        ip = None
        if _wants_ip(spec):
            al.allocate_ips(spec)
        elif spec.get("clusterIP") == "None":
            spec["clusterIPs"] = ["None"]
            spec["ipFamilies"] = al.families_for(spec)
        try:
            self._ports(al, spec, set())
        except _AllocError:
            for ip in spec.get("clusterIPs") or ():
                al.ip_release(ip)
            raise

    def _commit_update(self, store: Store, new: dict[str, Any], old: dict[str, Any]) -> None:
        al = self._alloc(store)
        spec, ospec = new["spec"], old.get("spec") or {}
        had = {p.get("nodePort") for p in ospec.get("ports") or [] if p.get("nodePort")}
        allocated: list[str] = []
        if _wants_ip(spec) and not _wants_ip(ospec):
            al.allocate_ips(spec)
            allocated = spec["clusterIPs"]
        try:
            for p in spec.get("ports") or []:
                if p.get("nodePort") in had:
                    # Keep the allocation this service already holds.
                    al.ports.discard(p["nodePort"])
            self._ports(al, spec, set())
        except _AllocError:
            for ip in allocated:
                al.ip_release(ip)
            for p in had:
                al.ports.add(p)
            raise
        now = {p.get("nodePort") for p in spec.get("ports") or [] if p.get("nodePort")}
        for p in had - now:
            al.ports.discard(p)
        if _wants_ip(ospec) and not _wants_ip(spec):
            for ip in ospec.get("clusterIPs") or [ospec.get("clusterIP")]:
                al.ip_release(ip)
            spec.pop("clusterIPs", None)

    @staticmethod
    def _ports(al: ServiceAllocator, spec: dict[str, Any], taken: set[int]) -> None:
        if not _wants_node_ports(spec):
            return
        got: list[int] = []
        try:
            for i, p in enumerate(spec.get("ports") or []):
                want = p.get("nodePort")
                # The same port number may serve TCP and UDP in one service.
                if want and want in got:
                    continue
                n = al.port_allocate(want, taken, f"spec.ports[{i}].nodePort")
                got.append(n)
                p["nodePort"] = n
        except _AllocError:
            for n in got:
                al.ports.discard(n)
            raise

    def release(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        al = self._alloc(store)
        spec = obj.get("spec") or {}
        for ip in spec.get("clusterIPs") or [spec.get("clusterIP")]:
            al.ip_release(ip)
        for p in spec.get("ports") or []:
            if p.get("nodePort"):
                al.ports.discard(p["nodePort"])


# ---- endpoint slices, leases ----------------------------------------------------------------

class EndpointSliceStrategy(Strategy):
    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        causes: Causes = []
        at = obj.get("addressType")
        if at not in ("IPv4", "IPv6", "FQDN"):
            causes.append(errors.field_unsupported("addressType", at, ["FQDN", "IPv4", "IPv6"]))
        if old is not None and old.get("addressType") != at:
            causes.append(errors.field_invalid("addressType", at, "field is immutable"))
        for i, ep in enumerate(obj.get("endpoints") or []):
            if not (ep or {}).get("addresses"):
                causes.append(errors.field_required(f"endpoints[{i}].addresses"))
        return causes


# ---- CRDs and custom resources --------------------------------------------------------------

_CRD_GROUP = "apiextensions.k8s.io"
_CLEANUP = "customresourcecleanup.apiextensions.k8s.io"


def _version_priority(v: str) -> tuple[int, int, int, str]:
    # Kube-like versions sort GA > beta > alpha, higher numbers first; others after.
    m = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", v)
    if not m:
        return (3, 0, 0, v)
    major = int(m.group(1))
    level = {"None": 0, "beta": 1, "alpha": 2}[str(m.group(2))]
    minor = int(m.group(3) or 0)
    return (level, -major, -minor, v)


def _storage_version(crd: dict[str, Any]) -> dict[str, Any]:
    for v in crd["spec"]["versions"]:
        if v.get("storage"):
            return v
    return crd["spec"]["versions"][0]


class CRDStrategy(Strategy):
    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        self._defaults(obj)
        meta = obj["metadata"]
        fins = list(meta.get("finalizers") or [])
        if _CLEANUP not in fins:
            fins.append(_CLEANUP)
        meta["finalizers"] = fins
        obj["status"] = {}
        self._status(obj, None)

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        super().prepare_update(store, rt, new, old, subresource)
        if subresource != "status":
            self._defaults(new)
            self._status(new, old)

    @staticmethod
    def _defaults(obj: dict[str, Any]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return
        names = spec.get("names")
        if isinstance(names, dict) and names.get("kind"):
            names.setdefault("singular", str(names["kind"]).lower())
            names.setdefault("listKind", names["kind"] + "List")
        for v in spec.get("versions") or []:
            if isinstance(v, dict):
                v.setdefault("served", True)
        spec.setdefault("conversion", {"strategy": "None"})

    @staticmethod
    def _status(obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        # The CRD controllers accept names and establish the CRD right away here.
        spec = obj.get("spec") or {}
        status = dict(obj.get("status") or {})
        now = now_rfc3339()
        conds = [
            {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
             "message": "no conflicts found", "lastTransitionTime": now},
            {"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
             "message": "the initial names have been accepted", "lastTransitionTime": now},
        ]
        if old is not None:
            prev = {c.get("type"): c for c in (old.get("status") or {}).get("conditions") or []}
            conds = [prev.get(c["type"], c) for c in conds]
        status["conditions"] = conds
        status["acceptedNames"] = spec.get("names") or {}
        stored = list(status.get("storedVersions") or [])
        try:
            sv = _storage_version(obj)["name"]
            if sv not in stored:
                stored.append(sv)
        except (KeyError, IndexError, TypeError):
            pass
        status["storedVersions"] = stored
        obj["status"] = status

    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        causes: Causes = []
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            return [errors.field_required("spec")]
        group = spec.get("group") or ""
        names = spec.get("names") or {}
        plural = names.get("plural") or ""
        if not group:
            causes.append(errors.field_required("spec.group"))
        elif "." not in group:
            causes.append(errors.field_invalid("spec.group", group,
                                               "should be a domain with at least one dot"))
        if not plural:
            causes.append(errors.field_required("spec.names.plural"))
        elif why := validation.dns1123_label(plural):
            causes.append(errors.field_invalid("spec.names.plural", plural, why))
        if not names.get("kind"):
            causes.append(errors.field_required("spec.names.kind"))
        if obj["metadata"].get("name") != f"{plural}.{group}":
            causes.append(errors.field_invalid(
                "metadata.name", obj["metadata"].get("name"),
                "must be spec.names.plural+\".\"+spec.group"))
        if spec.get("scope") not in ("Namespaced", "Cluster"):
            causes.append(errors.field_unsupported("spec.scope", spec.get("scope"),
                                                   ["Cluster", "Namespaced"]))
        versions = spec.get("versions") or []
        if not versions:
            causes.append(errors.field_required("spec.versions",
                                                "must have exactly one version marked as "
                                                "storage version"))
        seen: set[str] = set()
        storage = 0
        for i, v in enumerate(versions):
            f = f"spec.versions[{i}]"
            vname = (v or {}).get("name")
            if not vname:
                causes.append(errors.field_required(f"{f}.name"))
            elif vname in seen:
                causes.append(errors.field_duplicate(f"{f}.name", vname))
            seen.add(vname or "")
            storage += bool((v or {}).get("storage"))
            sch = ((v or {}).get("schema") or {}).get("openAPIV3Schema")
            if not isinstance(sch, dict):
                causes.append(errors.field_required(f"{f}.schema.openAPIV3Schema",
                                                    "schemas are required"))
            elif sch.get("type") != "object":
                causes.append(errors.field_invalid(f"{f}.schema.openAPIV3Schema.type",
                                                   sch.get("type"), "must be object at the root"))
        if versions and storage != 1:
            causes.append(errors.field_invalid("spec.versions", versions,
                                               "must have exactly one version marked as "
                                               "storage version"))
        if old is not None:
            ospec = old.get("spec") or {}
            if ospec.get("scope") != spec.get("scope"):
                causes.append(errors.field_invalid("spec.scope", spec.get("scope"),
                                                   "field is immutable"))
            if ospec.get("group") != group:
                causes.append(errors.field_invalid("spec.group", group, "field is immutable"))
        return causes

    def committed(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        prev = store.types.get(obj["metadata"]["name"])
        if prev is not None:
            for v in prev.versions:
                store.by_path.pop((prev.group, v, prev.plural), None)
        # Objects stay: add_type keeps the existing storage for the same key.
        store.add_type(custom_type(obj))

    def release(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        store.remove_type(obj["metadata"]["name"])


def custom_type(crd: dict[str, Any]) -> ResourceType:
    spec = crd["spec"]
    names = spec["names"]
    served = [v for v in spec["versions"] if v.get("served", True)]
    served.sort(key=lambda v: _version_priority(v["name"]))
    sv = _storage_version(crd)
    subres = (sv.get("subresources") or {})
    fields = {"metadata.name": "metadata.name"}
    if spec["scope"] == "Namespaced":
        fields["metadata.namespace"] = "metadata.namespace"
    for sf in sv.get("selectableFields") or []:
        path = str(sf.get("jsonPath", "")).lstrip(".")
        if path:
            fields[path] = path
    return ResourceType(
        group=spec["group"],
        versions=tuple(v["name"] for v in served),
        storage_version=sv["name"],
        plural=names["plural"],
        singular=names.get("singular") or names["kind"].lower(),
        kind=names["kind"],
        list_kind=names.get("listKind") or names["kind"] + "List",
        namespaced=spec["scope"] == "Namespaced",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        subresources=frozenset(k for k in subres if k == "status"),
        fields=fields,
        merge_keys=None,
        name_check=validation.dns1123_subdomain,
        return_deleted=True,
        unconditional_update=False,
        generation=True,
        strategy=CustomStrategy(sv),
        crd=crd,
    )


class CustomStrategy(Strategy):
    """A custom resource: pruned, defaulted and validated by its storage version's schema."""

    def __init__(self, version: dict[str, Any]) -> None:
        self.schema = ((version.get("schema") or {}).get("openAPIV3Schema")) or {
            "type": "object", "x-kubernetes-preserve-unknown-fields": True}
        self._causes: list[tuple[str, str, str]] = []

    def _prune(self, obj: dict[str, Any]) -> None:
        out, causes = schema.apply_schema(obj, self.schema)
        obj.clear()
        obj.update(out)
        self._causes = causes

    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        self._prune(obj)

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        super().prepare_update(store, rt, new, old, subresource)
        self._prune(new)

    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        # prepare_* ran just before under the same lock; hand over its findings.
        causes, self._causes = self._causes, []
        return causes


# ---- the table ------------------------------------------------------------------------------

def builtin_types() -> list[ResourceType]:
    ns_fields = dict(_NS_FIELDS)
    pod_fields = dict(_NS_FIELDS)
    for f in ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
              "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
              "status.nominatedNodeName"):
        pod_fields[f] = f
    event_fields = dict(_NS_FIELDS)
    for f in ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
              "involvedObject.uid", "involvedObject.apiVersion",
              "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
              "reportingComponent", "source", "type"):
        event_fields[f] = f
    event_fields["source"] = "source.component"
    svc_fields = dict(_NS_FIELDS, **{"spec.clusterIP": "spec.clusterIP",
                                     "spec.type": "spec.type"})
    return [
        ResourceType("", ("v1",), "v1", "namespaces", "namespace", "Namespace", False,
                     short_names=("ns",), subresources=frozenset({"status", "finalize"}),
                     fields=dict(_CLUSTER_FIELDS, **{"status.phase": "status.phase"}),
                     merge_keys=_NAMESPACE_KEYS, name_check=validation.dns1123_label,
                     return_deleted=True, strategy=NamespaceStrategy()),
        ResourceType("", ("v1",), "v1", "nodes", "node", "Node", False, short_names=("no",),
                     subresources=frozenset({"status"}),
                     fields=dict(_CLUSTER_FIELDS, **{"spec.unschedulable": "spec.unschedulable"}),
                     merge_keys=_NODE_KEYS, name_check=validation.dns1123_subdomain,
                     strategy=NodeStrategy()),
        ResourceType("", ("v1",), "v1", "pods", "pod", "Pod", True, short_names=("po",),
                     categories=("all",), subresources=frozenset({"status", "binding"}),
                     fields=pod_fields, merge_keys=_POD_KEYS,
                     name_check=validation.dns1123_subdomain, return_deleted=True,
                     generation=True, strategy=PodStrategy()),
        ResourceType("", ("v1",), "v1", "services", "service", "Service", True,
                     short_names=("svc",), categories=("all",),
                     subresources=frozenset({"status"}), fields=svc_fields,
                     merge_keys=_SERVICE_KEYS, name_check=validation.dns1035_label,
                     return_deleted=True, strategy=ServiceStrategy()),
        ResourceType("", ("v1",), "v1", "endpoints", "endpoints", "Endpoints", True,
                     short_names=("ep",), fields=ns_fields, merge_keys=_COMMON_KEYS,
                     name_check=validation.dns1123_subdomain, create_on_update=True),
        ResourceType("", ("v1",), "v1", "events", "event", "Event", True, short_names=("ev",),
                     fields=event_fields, merge_keys=_COMMON_KEYS,
                     name_check=validation.dns1123_subdomain),
        ResourceType("", ("v1",), "v1", "configmaps", "configmap", "ConfigMap", True,
                     short_names=("cm",), fields=ns_fields, merge_keys=_COMMON_KEYS,
                     name_check=validation.dns1123_subdomain),
        ResourceType("discovery.k8s.io", ("v1",), "v1", "endpointslices", "endpointslice",
                     "EndpointSlice", True, fields=ns_fields, merge_keys=_COMMON_KEYS,
                     name_check=validation.dns1123_subdomain, generation=True,
                     strategy=EndpointSliceStrategy()),
        ResourceType("networking.k8s.io", ("v1",), "v1", "networkpolicies", "networkpolicy",
                     "NetworkPolicy", True, short_names=("netpol",), fields=ns_fields,
                     merge_keys=_COMMON_KEYS, name_check=validation.dns1123_subdomain,
                     generation=True),
        ResourceType("coordination.k8s.io", ("v1",), "v1", "leases", "lease", "Lease", True,
                     fields=ns_fields, merge_keys=_COMMON_KEYS,
                     name_check=validation.dns1123_subdomain, create_on_update=True),
        ResourceType(_CRD_GROUP, ("v1",), "v1", "customresourcedefinitions",
                     "customresourcedefinition", "CustomResourceDefinition", False,
                     short_names=("crd", "crds"), categories=("api-extensions",),
                     subresources=frozenset({"status"}), fields=dict(_CLUSTER_FIELDS),
                     merge_keys=_CRD_KEYS, name_check=validation.dns1123_subdomain,
                     return_deleted=True, generation=True, strategy=CRDStrategy()),
    ]


def install(store: Store, *, service_cidr: str, node_ports: tuple[int, int],
            endpoint_slices: bool = True) -> None:
    """Register the built-in types and create what a fresh cluster has; without
    `endpoint_slices`, a cluster older than 1.21 (no discovery.k8s.io/v1)."""
    store.state["services"] = ServiceAllocator(service_cidr, node_ports)
    for rt in builtin_types():
        if endpoint_slices or rt.key != "endpointslices.discovery.k8s.io":
            store.add_type(rt)
    for ns in ("default", "kube-system", "kube-public", "kube-node-lease"):
        store.create(store.types["namespaces"], "", {"metadata": {"name": ns}})
    net = store.state["services"].net
    store.create(store.types["services"], "default", {
        "metadata": {"name": "kubernetes", "labels": {"component": "apiserver",
                                                      "provider": "kubernetes"}},
        "spec": {"clusterIP": str(net.network_address + 1),
                 "ports": [{"name": "https", "port": 443, "protocol": "TCP",
                            "targetPort": 6443}]},
    })
