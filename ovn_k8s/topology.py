"""The OVN logical topology of a cluster, as lists of NB commands.

Each builder returns the commands for one piece (the cluster core, one node, one
gateway); callers put what one operation needs into a single transaction, so a
crash leaves either all of it or none. Every command converges (create or
update), so running a builder again changes nothing when nothing differs.

    ovn_cluster_router --rtoj/jtor-- join --jtor/rtoj-- GR_<node> --rtoe/etor-- ext_<node>
           | rtos-<node>/stor-<node>                                              | localnet
        <node> switch: k8s-<node> management port, pods                       physnet
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import netaddr

from ovn_k8s import ipam
from ovn_k8s.ovsdb import NbDb

CLUSTER_ROUTER = "ovn_cluster_router"
JOIN_SWITCH = "join"
DEFAULT_JOIN_SUBNET = netaddr.IPNetwork("100.64.0.0/16")
CLUSTER_LB_GROUP = "k8s-cluster-lbs"
PROTOCOLS = ("tcp", "udp", "sctp")
PHYSNET = "physnet"

# A VIP without backends answers with a reset (TCP) or port unreachable instead of
# silently dropping: a client of a service scaled to zero fails at once.
LB_OPTIONS = {"reject": "true"}

OWNER_TYPE = "k8s.ovn.org/owner-type"
OWNER = "k8s.ovn.org/owner"
# Marks which of our rows is which, so later code finds them without parsing names.
ROLE = "k8s.ovn.org/role"

# RFC 1123 subdomain, what Kubernetes accepts as a node name.
_NODE_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_node_name(name: str) -> str:
    if not name or len(name) > 253 or not _NODE_NAME.match(name):
        raise ValueError(
            f"node name {name!r} is not a valid Kubernetes node name "
            "(lower-case letters, digits, '-' and '.', at most 253 characters)"
        )
    return name


def owned(owner_type: str, owner: str, role: str, **extra: str) -> dict[str, str]:
    """Ownership external_ids: resync deletes only rows that carry them."""
    return {OWNER_TYPE: owner_type, OWNER: owner, ROLE: role, **extra}


def cluster_lb_name(protocol: str) -> str:
    return f"k8s-cluster-lb-{protocol}"


def gateway_router(node: str) -> str:
    return f"GR_{node}"


def gateway_lb_name(node: str, protocol: str) -> str:
    return f"{gateway_router(node)}-lb-{protocol}"


def mgmt_port(node: str) -> str:
    return f"k8s-{node}"


def _router_link(
    nb: NbDb,
    *,
    router: str,
    switch: str,
    lrp: str,
    lsp: str,
    address: netaddr.IPNetwork,
    mac: str | None = None,
    ids: dict[str, str],
) -> list:
    """A router port and its peer switch port of type router."""
    return [
        nb.ensure(
            "Logical_Router_Port", lrp, parent=("Logical_Router", router, "ports"),
            mac=mac or ipam.mac_from_ip(address.ip), networks=[str(address)], external_ids=ids,
        ),
        nb.ensure(
            "Logical_Switch_Port", lsp, parent=("Logical_Switch", switch, "ports"),
            type="router", addresses=["router"], options={"router-port": lrp},
            external_ids=ids,
        ),
    ]


@dataclass(frozen=True)
class ClusterSpec:
    cluster_subnets: tuple[netaddr.IPNetwork, ...]
    join_subnet: netaddr.IPNetwork = field(default=DEFAULT_JOIN_SUBNET)

    def __post_init__(self) -> None:
        if not self.cluster_subnets:
            raise ipam.AddressError("at least one cluster subnet is needed")
        ipam.check_disjoint(
            [("cluster subnet", n) for n in self.cluster_subnets]
            + [("join subnet", self.join_subnet)]
        )

    @property
    def router_join_address(self) -> netaddr.IPNetwork:
        ip = ipam.nth_host(self.join_subnet, 1)
        return netaddr.IPNetwork(f"{ip}/{self.join_subnet.prefixlen}")


def cluster_commands(nb: NbDb, spec: ClusterSpec) -> list:
    """The cluster router, the join switch and the load balancers every node switch carries."""
    ids = owned("cluster", "cluster", "core")
    cmds = [
        nb.ensure("Logical_Router", CLUSTER_ROUTER, external_ids=ids),
        nb.ensure(
            "Logical_Switch", JOIN_SWITCH, external_ids=ids,
            other_config={"subnet": str(spec.join_subnet)},
        ),
        *_router_link(
            nb, router=CLUSTER_ROUTER, switch=JOIN_SWITCH, lrp=f"rtoj-{CLUSTER_ROUTER}",
            lsp=f"jtor-{CLUSTER_ROUTER}", address=spec.router_join_address, ids=ids,
        ),
    ]
    lbs = [
        nb.ensure("Load_Balancer", cluster_lb_name(p), protocol=p, options=LB_OPTIONS,
                  external_ids=owned("cluster", "cluster", f"cluster-lb-{p}"))
        for p in PROTOCOLS
    ]
    # A group, so a node switch references one row and a later protocol or LB
    # joins every switch at once.
    cmds += [*lbs, nb.ensure("Load_Balancer_Group", CLUSTER_LB_GROUP, load_balancer=lbs)]
    return cmds


def node_commands(nb: NbDb, node: str, subnet: netaddr.IPNetwork) -> list:
    """A node's switch, its link to the cluster router and its management port."""
    check_node_name(node)
    ids = owned("node", node, "node")
    gw = netaddr.IPNetwork(f"{ipam.nth_host(subnet, 1)}/{subnet.prefixlen}")
    mgmt_ip = ipam.nth_host(subnet, 2)
    group = nb.ensure("Load_Balancer_Group", CLUSTER_LB_GROUP)
    return [
        group,
        nb.ensure(
            "Logical_Switch", node, external_ids=ids, load_balancer_group=[group],
            other_config={"subnet": str(subnet), "exclude_ips": str(mgmt_ip)},
        ),
        *_router_link(
            nb, router=CLUSTER_ROUTER, switch=node, lrp=f"rtos-{node}", lsp=f"stor-{node}",
            address=gw, ids=ids,
        ),
        nb.ensure(
            "Logical_Switch_Port", mgmt_port(node), parent=("Logical_Switch", node, "ports"),
            addresses=[f"{ipam.mac_from_ip(mgmt_ip)} {mgmt_ip}"],
            external_ids=owned("node", node, "management-port"),
        ),
    ]


def node_subnet(nb: NbDb, node: str) -> netaddr.IPNetwork | None:
    """The subnet recorded on a node's switch, if the switch exists."""
    for sw in nb.rows("Logical_Switch"):
        if sw.name == node and "subnet" in sw.other_config:
            return netaddr.IPNetwork(sw.other_config["subnet"])
    return None


def join_address(nb: NbDb, node: str, spec: ClusterSpec) -> netaddr.IPNetwork:
    """The join-switch address of ``GR_<node>``: the one it has, else the lowest free one.

    Reusing the existing address keeps a rerun from renumbering a live gateway.
    """
    lrp_name = f"rtoj-{gateway_router(node)}"
    used: set[netaddr.IPAddress] = set()
    for lrp in nb.rows("Logical_Router_Port"):
        for net in lrp.networks:
            addr = netaddr.IPNetwork(net)
            if addr.ip in spec.join_subnet:
                if lrp.name == lrp_name:
                    return addr
                used.add(addr.ip)
    for n in range(2, spec.join_subnet.size - 1):
        ip = ipam.nth_host(spec.join_subnet, n)
        if ip not in used:
            return netaddr.IPNetwork(f"{ip}/{spec.join_subnet.prefixlen}")
    raise ipam.AddressError(f"join subnet {spec.join_subnet} is full")


@dataclass(frozen=True)
class GatewaySpec:
    node: str
    chassis: str
    physical_ip: netaddr.IPNetwork
    physical_mac: str
    default_gw: netaddr.IPAddress
    join_ip: netaddr.IPNetwork
    rampout_subnets: tuple[netaddr.IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        check_node_name(self.node)
        if self.default_gw not in self.physical_ip:
            raise ipam.AddressError(
                f"default gateway {self.default_gw} is not on the physical network "
                f"{self.physical_ip.cidr}"
            )


def gateway_commands(nb: NbDb, cluster: ClusterSpec, gw: GatewaySpec) -> list:
    """``GR_<node>`` on the node's chassis, linked to join and to ``ext_<node>``."""
    node = gw.node
    router = gateway_router(node)
    ids = owned("node", node, "gateway")
    ext_switch = f"ext_{node}"
    lbs = [
        nb.ensure("Load_Balancer", gateway_lb_name(node, p), protocol=p, options=LB_OPTIONS,
                  external_ids=owned("node", node, f"gateway-lb-{p}"))
        for p in PROTOCOLS
    ]
    cmds = [
        *lbs,
        nb.ensure(
            "Logical_Router", router, external_ids=ids, load_balancer=lbs,
            # lb_force_snat_ip: replies to NodePort traffic that OVN load-balanced
            # into the cluster must come back through this same gateway.
            options={"chassis": gw.chassis, "lb_force_snat_ip": str(gw.join_ip.ip)},
        ),
        *_router_link(
            nb, router=router, switch=JOIN_SWITCH, lrp=f"rtoj-{router}", lsp=f"jtor-{router}",
            address=gw.join_ip, ids=ids,
        ),
        nb.ensure("Logical_Switch", ext_switch, external_ids=ids),
        *_router_link(
            nb, router=router, switch=ext_switch, lrp=f"rtoe-{router}", lsp=f"etor-{router}",
            address=gw.physical_ip, mac=gw.physical_mac, ids=ids,
        ),
        nb.ensure(
            "Logical_Switch_Port", f"{PHYSNET}_{node}",
            parent=("Logical_Switch", ext_switch, "ports"), type="localnet",
            addresses=["unknown"], options={"network_name": PHYSNET}, external_ids=ids,
        ),
        _route(nb, router, "0.0.0.0/0", gw.default_gw, ids, port=f"rtoe-{router}"),
        _route(nb, router, str(cluster.cluster_subnets[0]), cluster.router_join_address.ip, ids),
        nb.ensure(
            "NAT", key={"type": "snat", "logical_ip": str(cluster.cluster_subnets[0])},
            parent=("Logical_Router", router, "nat"), external_ip=str(gw.physical_ip.ip),
            external_ids=ids,
        ),
    ]
    cmds += [
        _route(nb, router, str(net), cluster.router_join_address.ip, ids)
        for net in cluster.cluster_subnets[1:]
    ]
    cmds += [
        nb.ensure(
            "NAT", key={"type": "snat", "logical_ip": str(net)},
            parent=("Logical_Router", router, "nat"), external_ip=str(gw.physical_ip.ip),
            external_ids=ids,
        )
        for net in cluster.cluster_subnets[1:]
    ]
    # The lineage's choice: without rampout subnets this gateway is the cluster's
    # default exit; with them, only traffic from those subnets leaves through it.
    if gw.rampout_subnets:
        cmds += [
            _route(nb, CLUSTER_ROUTER, str(net), gw.join_ip.ip, ids, policy="src-ip")
            for net in gw.rampout_subnets
        ]
    else:
        cmds.append(
            _route(nb, CLUSTER_ROUTER, "0.0.0.0/0", gw.join_ip.ip,
                   owned("cluster", "cluster", "default-route", gateway=node))
        )
    # Rerun with other rampout subnets (or none): this gateway's routes from before go.
    wanted = {str(n) for n in gw.rampout_subnets}
    for route in _cluster_routes(nb):
        policy = route.policy[0] if route.policy else "dst-ip"
        ours = route.external_ids.get(OWNER) == node and route.external_ids.get(ROLE) == "gateway"
        stale_rampout = ours and policy == "src-ip" and route.ip_prefix not in wanted
        stale_default = (wanted and route.external_ids.get(ROLE) == "default-route"
                         and route.external_ids.get("gateway") == node)
        if stale_rampout or stale_default:
            cmds.append(nb.api.db_remove("Logical_Router", CLUSTER_ROUTER, "static_routes",
                                         route.uuid, if_exists=True))
    return cmds


def _cluster_routes(nb: NbDb) -> list:
    router = next((r for r in nb.rows("Logical_Router") if r.name == CLUSTER_ROUTER), None)
    return list(router.static_routes) if router is not None else []


def _route(
    nb: NbDb,
    router: str,
    prefix: str,
    nexthop: netaddr.IPAddress,
    ids: dict[str, str],
    *,
    port: str | None = None,
    policy: str = "dst-ip",
) -> object:
    return nb.ensure(
        "Logical_Router_Static_Route",
        key={"ip_prefix": prefix, "policy": [policy]},
        parent=("Logical_Router", router, "static_routes"),
        nexthop=str(nexthop),
        output_port=[port] if port else [],
        external_ids=ids,
    )


def validate_subnets(texts: Iterable[str], what: str) -> tuple[netaddr.IPNetwork, ...]:
    """Parse a comma-separated flag value into networks, refusing overlaps."""
    nets = tuple(ipam.parse_network(t, what) for t in texts if t.strip())
    ipam.check_disjoint((what, n) for n in nets)
    return nets
