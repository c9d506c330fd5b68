"""`ovn-k8s-sandbox up|down|status`: the system on one machine.

Until the sandbox issue lands this brings up the lab alone (OVN central and N
nodes with real daemons), prints how to reach it, and tears it down again.
"""

import argparse
import sys
import time
from pathlib import Path

from ovn_k8s.sandbox.lab import Lab, LabError

DEFAULT_DIR = Path("/tmp/ovn-k8s-sandbox")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovn-k8s-sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="where the sandbox keeps its databases, sockets and logs "
                             "(default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start OVN central and the nodes")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    sub.add_parser("down", help="stop everything and remove what up made")
    sub.add_parser("status", help="show what is running")
    args = parser.parse_args(argv)
    if args.command == "up" and not 1 <= args.nodes <= 16:
        parser.error("--nodes must be between 1 and 16")
    return args


def _describe(lab: Lab) -> str:
    lines = [
        f"sandbox in {lab.dir}",
        f"  OVN NB: {lab.nb_remote}",
        f"  OVN SB: {lab.sb_remote}",
        "  node        netns                 encap IP      Open_vSwitch DB",
    ]
    for node in lab.nodes:
        lines.append(f"  {node.name:<11} {node.netns:<21} {node.encap_ip:<13} {node.ovs_remote}")
    nb_db = lab.nb_remote.removeprefix("unix:")
    first = lab.nodes[0]
    lines += [
        "try:",
        f"  ovn-nbctl --db={lab.nb_remote} show",
        f"  ovn-sbctl --db={lab.sb_remote} show",
        f"  ip netns exec {first.netns} ovs-vsctl --db={first.ovs_remote} show",
        f"stop with: ovn-k8s-sandbox --dir {lab.dir} down   (NB socket: {nb_db})",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        if args.command == "up":
            start = time.monotonic()
            lab = Lab(args.dir, nodes=args.nodes)
            lab.up()
            print(f"up in {time.monotonic() - start:.2f}s")
            print(_describe(lab))
        elif args.command == "down":
            if not (args.dir / "lab.json").exists():
                print(f"nothing to stop in {args.dir}")
                return
            Lab.load(args.dir).down()
            print(f"stopped; removed {args.dir}")
        else:
            if not (args.dir / "lab.json").exists():
                print(f"no sandbox in {args.dir}")
                sys.exit(1)
            print(_describe(Lab.load(args.dir)))
    except LabError as e:
        sys.exit(f"ovn-k8s-sandbox: {e}")
