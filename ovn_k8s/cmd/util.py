"""`ovn-k8s-util nics-to-bridge NIC... | bridge-to-nics NIC-or-BRIDGE...`."""

from __future__ import annotations

import argparse
import logging
import sys

from ovn_k8s import ovsdb
from ovn_k8s.host import bridge
from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.host.links import HostError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ovn-k8s-util", description="Node network helpers")
    parser.add_argument("--ovs", help="local Open_vSwitch DB (default: $OVS_RUNDIR/db.sock)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the database (default 30)")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    n2b = sub.add_parser("nics-to-bridge",
                         help="move each NIC into an OVS bridge br<NIC> with its addresses")
    n2b.add_argument("interfaces", nargs="+", metavar="NIC")
    b2n = sub.add_parser("bridge-to-nics", help="undo nics-to-bridge")
    b2n.add_argument("interfaces", nargs="+", metavar="NIC_OR_BRIDGE")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        ovs = ovsdb.connect_ovs(args.ovs or host_ovs.default_remote(), timeout=args.timeout)
        try:
            for name in args.interfaces:
                if args.command == "nics-to-bridge":
                    print(f"{name} -> {bridge.nics_to_bridge(ovs, name)}")
                else:
                    print(f"{name} -> {bridge.bridge_to_nics(ovs, name)}")
        finally:
            ovs.close()
    except (ValueError, HostError, ovsdb.OvsdbError, OSError) as e:
        sys.stderr.write(f"ovn-k8s-util {args.command}: error: {e}\n")
        sys.exit(1)
