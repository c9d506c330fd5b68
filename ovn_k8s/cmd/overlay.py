"""`ovn-k8s-overlay master-init | minion-init | gateway-init`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ovn_k8s import config, ipam, overlay, ovsdb, topology
from ovn_k8s.cni import install as cni_install
from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.host.links import HostError


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cluster-ip-subnet", required=True,
                        help="the pods' network(s), comma-separated, e.g. 10.128.0.0/14")
    common.add_argument("--node-name", required=True, help="this node's Kubernetes name")
    common.add_argument("--nb", help="OVN NB remote (default: external_ids:ovn-nb)")
    common.add_argument("--ovs", help="local Open_vSwitch DB (default: $OVS_RUNDIR/db.sock)")
    common.add_argument("--config-file", type=Path,
                        help=f"settings file (default {config.DEFAULT_CONFIG_FILE} if present)")
    common.add_argument("--join-subnet", help="switch between routers (default 100.64.0.0/16)")
    common.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for a database (default 30)")
    common.add_argument("-v", "--verbose", action="store_true")

    node = argparse.ArgumentParser(add_help=False)
    node.add_argument("--mtu", type=int, help="management port MTU (default 1400)")

    parser = argparse.ArgumentParser(prog="ovn-k8s-overlay",
                                     description="Set up OVN for Kubernetes")
    sub = parser.add_subparsers(dest="command", required=True)
    master = sub.add_parser("master-init", parents=[common, node],
                            help="cluster router, join switch, load balancers, master node")
    master.add_argument("--master-switch-subnet", required=True, help="the master's node subnet")
    minion = sub.add_parser("minion-init", parents=[common, node],
                            help="node switch, management port, CNI config and plugin")
    minion.add_argument("--minion-switch-subnet",
                        help="this node's subnet (default: wait for the one ovn-k8s-watcher "
                             "allocates, in the Node's k8s.ovn.org/node-subnets annotation)")
    minion.add_argument("--kubeconfig", help="Kubernetes access when waiting for the subnet "
                                             "(default: in-cluster, then external_ids)")
    minion.add_argument("--subnet-timeout", type=float, default=300.0,
                        help="seconds to wait for the node subnet annotation (default 300)")
    minion.add_argument("--cni-conf-dir", help="default /etc/cni/net.d")
    minion.add_argument("--cni-bin-dir", help="default /opt/cni/bin")
    minion.add_argument("--cni-front",
                        help="the plugin kubelet runs: c (compiled here, forwards calls to the "
                             "node daemon in ~1 ms), python, or auto (default: c when a C "
                             "compiler is present)")
    gateway = sub.add_parser("gateway-init", parents=[common], help="GR_<node> and ext_<node>")
    phys = gateway.add_mutually_exclusive_group(required=True)
    phys.add_argument("--physical-interface", help="NIC mode: a NIC given to OVN whole")
    phys.add_argument("--bridge-interface", help="bridge mode: an OVS bridge sharing the NIC")
    gateway.add_argument("--physical-ip", required=True, help="this node's IP/prefix on the NIC")
    gateway.add_argument("--default-gw", required=True, help="next hop for external traffic")
    gateway.add_argument("--rampout-ip-subnets", default="",
                         help="only these comma-separated pod subnets leave through this gateway")
    return parser


def _run(args: argparse.Namespace) -> None:
    settings = config.Settings(vars(args), config.read_config_file(args.config_file))
    # Everything that can be checked without a database is checked first.
    cluster = topology.ClusterSpec(
        cluster_subnets=topology.validate_subnets(args.cluster_ip_subnet.split(","),
                                                  "--cluster-ip-subnet"),
        join_subnet=ipam.parse_network(settings.require("join_subnet"), "--join-subnet"),
    )
    topology.check_node_name(args.node_name)
    mtu = settings.integer("mtu", 576, 65535) if args.command != "gateway-init" else 0
    if args.command == "minion-init" and settings.require("cni_front") not in cni_install.FRONTS:
        raise ValueError(f"--cni-front must be one of {', '.join(cni_install.FRONTS)}")
    spec = None
    if args.command == "master-init":
        spec = overlay.NodeSpec(node=args.node_name, mtu=mtu, subnet=ipam.parse_network(
            args.master_switch_subnet, "--master-switch-subnet"))
    elif args.command == "minion-init":
        if args.minion_switch_subnet is not None:
            spec = overlay.NodeSpec(node=args.node_name, mtu=mtu, subnet=ipam.parse_network(
                args.minion_switch_subnet, "--minion-switch-subnet"))
        elif args.subnet_timeout <= 0:
            raise ValueError("--subnet-timeout must be positive")
    if args.command == "gateway-init":
        gw_spec = overlay.GatewayHostSpec(
            node=args.node_name,
            physical_ip=ipam.parse_interface_address(args.physical_ip, "--physical-ip"),
            default_gw=ipam.parse_address(args.default_gw, "--default-gw"),
            bridge=args.bridge_interface,
            nic=args.physical_interface,
            rampout_subnets=topology.validate_subnets(args.rampout_ip_subnets.split(","),
                                                      "--rampout-ip-subnets"),
        )

    ovs = ovsdb.connect_ovs(args.ovs or host_ovs.default_remote(), timeout=args.timeout)
    settings.external_ids = host_ovs.external_ids(ovs)
    if args.command == "minion-init" and spec is None:
        # Imported here: the client costs ~0.3 s, and only this path talks to Kubernetes.
        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415

        api = kube_client.api_client(settings, kubeconfig=args.kubeconfig)
        try:
            subnet = overlay.wait_node_subnet(api, args.node_name, args.subnet_timeout)
        finally:
            api.close()
        spec = overlay.NodeSpec(node=args.node_name, subnet=subnet, mtu=mtu)
    nb = ovsdb.connect_nb(settings.require("nb"), timeout=args.timeout)
    try:
        if args.command == "master-init":
            overlay.master_init(nb, ovs, cluster, spec)
        elif args.command == "minion-init":
            overlay.minion_init(
                nb, ovs, cluster, spec,
                cni_conf_dir=Path(settings.require("cni_conf_dir")),
                cni_bin_dir=Path(settings.require("cni_bin_dir")),
                cni_front=settings.require("cni_front"),
            )
        else:
            overlay.gateway_init(nb, ovs, cluster, gw_spec)
    finally:
        nb.close()
        ovs.close()


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        _run(args)
    except (ValueError, config.ConfigError, overlay.SetupError, HostError,
            ovsdb.OvsdbError, OSError, cni_install.InstallError) as e:
        sys.stderr.write(f"ovn-k8s-overlay {args.command}: error: {e}\n")
        sys.exit(1)
