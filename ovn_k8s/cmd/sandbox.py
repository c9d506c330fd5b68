"""`ovn-k8s-sandbox up|down|status`: the whole system on one machine.

`up` starts OVN central and N nodes (real daemons, network namespaces), the
Kubernetes API emulator (unless --kubeconfig names a cluster's), runs
master-init/minion-init/gateway-init (bridge mode, with the gateway helper), the
watcher, a stand-in kubelet per node that calls the CNI plugin, and a demo service;
`status` shows it and which daemon is down; `down` removes everything `up` made.
"""

import argparse
import sys
from pathlib import Path

from ovn_k8s.sandbox.lab import LabError
from ovn_k8s.sandbox.system import Sandbox

DEFAULT_DIR = Path("/tmp/ovn-k8s-sandbox")


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="ovn-k8s-sandbox", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR,
                        help="where the sandbox keeps its databases, sockets and logs "
                             "(default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start everything and a demo")
    up.add_argument("--nodes", type=int, default=2, help="number of nodes (default 2)")
    up.add_argument("--kubeconfig", type=Path,
                    help="use this cluster's API server instead of starting the emulator "
                         "(its server must be an address of this machine); down removes "
                         "only what up created there")
    sub.add_parser("down", help="stop everything and remove what up made")
    sub.add_parser("status", help="show the sandbox and which daemons run")
    args = parser.parse_args(argv)
    if args.command == "up" and not 1 <= args.nodes <= 16:
        parser.error("--nodes must be between 1 and 16")
    return args


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        if args.command == "up":
            sandbox = Sandbox(args.dir, nodes=args.nodes, kubeconfig=args.kubeconfig)
            sandbox.up()
            print(sandbox.table())
        elif args.command == "down":
            if not (args.dir / "lab.json").exists():
                print(f"nothing to stop in {args.dir}")
                return
            Sandbox.load(args.dir).down()
            print(f"stopped; removed {args.dir}")
        else:
            if not (args.dir / "lab.json").exists():
                print(f"no sandbox in {args.dir}")
                sys.exit(1)
            sandbox = Sandbox.load(args.dir)
            print(sandbox.table())
            down = sandbox.health()
            if down:
                print("not running: " + ", ".join(down))
                sys.exit(1)
            print("all daemons running")
    except LabError as e:
        sys.exit(f"ovn-k8s-sandbox: {e}")
