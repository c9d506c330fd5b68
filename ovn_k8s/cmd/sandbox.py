"""`ovn-k8s-sandbox up|down|status`: the system on one machine.

Brings up the lab (OVN central and N nodes with real daemons) and the Kubernetes
API emulator, prints how to reach them, and tears everything down again. The
watcher and the CNI plugin join as their issues land.
"""

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from ovn_k8s.sandbox.lab import Lab, LabError

DEFAULT_DIR = Path("/tmp/ovn-k8s-sandbox")
APISERVER_START_TIMEOUT = 15.0


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


def _apiserver_paths(directory: Path) -> tuple[Path, Path, Path]:
    return directory / "kubeconfig", directory / "apiserver.pid", directory / "apiserver.log"


def _start_apiserver(directory: Path) -> str:
    """Run the API emulator as a detached process; returns its URL.

    Its command line names DIR (the kubeconfig path), so `Lab.down` finds and stops
    it with the lab's own daemons even when apiserver.pid is lost.
    """
    kubeconfig, pidfile, logfile = _apiserver_paths(directory)
    kubeconfig.unlink(missing_ok=True)
    with open(logfile, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--port", "0",
             "--kubeconfig", str(kubeconfig)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    pidfile.write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + APISERVER_START_TIMEOUT
    while not kubeconfig.exists():
        if proc.poll() is not None:
            raise LabError(f"API emulator exited with {proc.returncode}; see {logfile}")
        if time.monotonic() > deadline:
            proc.kill()
            raise LabError(f"API emulator did not listen within "
                           f"{APISERVER_START_TIMEOUT:.0f}s; see {logfile}")
        time.sleep(0.05)
    return _apiserver_url(directory) or "?"


def _apiserver_url(directory: Path) -> str | None:
    kubeconfig = _apiserver_paths(directory)[0]
    try:
        return yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError):
        return None


def _apiserver_alive(directory: Path) -> bool:
    try:
        pid = int(_apiserver_paths(directory)[1].read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return False
    return True


def _stop_apiserver(directory: Path) -> None:
    """SIGTERM the emulator and remove its files, so `Lab.down` can remove DIR."""
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(_apiserver_paths(directory)[1].read_text()), signal.SIGTERM)
    for path in _apiserver_paths(directory):
        path.unlink(missing_ok=True)


def _describe(lab: Lab) -> str:
    kubeconfig = _apiserver_paths(lab.dir)[0]
    lines = [
        f"sandbox in {lab.dir}",
        f"  OVN NB: {lab.nb_remote}",
        f"  OVN SB: {lab.sb_remote}",
        f"  Kubernetes API (emulator): {_apiserver_url(lab.dir)}  kubeconfig {kubeconfig}",
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


def _print_health(lab: Lab) -> None:
    """Which daemons run; exits 1 when any is down so scripts can check."""
    status = lab.status()
    down = [f"central/{name}" for name, up in status["central"].items() if not up]
    for node, daemons in status["nodes"].items():
        down += [f"{node}/{name}" for name, up in daemons.items() if not up]
    if not _apiserver_alive(lab.dir):
        down.append("apiserver")
    if down:
        print("not running: " + ", ".join(down))
        sys.exit(1)
    print("all daemons running")


def main(argv: list[str] | None = None) -> None:
    args = _parse(argv)
    try:
        if args.command == "up":
            start = time.monotonic()
            lab = Lab(args.dir, nodes=args.nodes)
            lab.up()
            try:
                _start_apiserver(lab.dir)
            except BaseException:
                lab.down()
                raise
            print(f"up in {time.monotonic() - start:.2f}s")
            print(_describe(lab))
        elif args.command == "down":
            if not (args.dir / "lab.json").exists():
                print(f"nothing to stop in {args.dir}")
                return
            _stop_apiserver(args.dir)
            Lab.load(args.dir).down()
            print(f"stopped; removed {args.dir}")
        else:
            if not (args.dir / "lab.json").exists():
                print(f"no sandbox in {args.dir}")
                sys.exit(1)
            lab = Lab.load(args.dir)
            print(_describe(lab))
            _print_health(lab)
    except LabError as e:
        sys.exit(f"ovn-k8s-sandbox: {e}")
