"""`python -m ovn_k8s.sandbox.apiserver --port PORT --kubeconfig PATH`: serve until SIGTERM."""

from __future__ import annotations

import argparse
import logging
import sys

from ovn_k8s.sandbox import termination

from .server import ApiServer


def _port_range(text: str) -> tuple[int, int]:
    lo, _, hi = text.partition("-")
    return int(lo), int(hi)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovn_k8s.sandbox.apiserver",
                                description="Kubernetes API emulator for tests and the sandbox")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port")
    p.add_argument("--kubeconfig", required=True,
                   help="written (mode 0600) once the server listens")
    p.add_argument("--token-file", help="read the bearer token from this file "
                                        "(default: a random token)")
    p.add_argument("--watch-window", type=int, default=10000,
                   help="events kept for watches from an old resourceVersion")
    p.add_argument("--service-cidr", default="10.96.0.0/16",
                   help="one CIDR, or two of different families for dual-stack")
    p.add_argument("--service-node-port-range", type=_port_range, default=(30000, 32767))
    p.add_argument("--bookmark-interval", type=float, default=60.0)
    p.add_argument("--kubelet-delay", type=float, default=0.0,
                   help="seconds before a gracefully deleted pod is removed; <0: never")
    p.add_argument("--no-endpoint-slices", action="store_true",
                   help="serve no discovery.k8s.io/v1 EndpointSlices (a cluster before 1.21)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = None
    if args.token_file:
        with open(args.token_file) as f:
            token = f.read().strip()
    srv = ApiServer(token, host=args.host, port=args.port, watch_window=args.watch_window,
                    service_cidr=args.service_cidr,
                    node_port_range=args.service_node_port_range,
                    bookmark_interval=args.bookmark_interval,
                    kubelet_delay=None if args.kubelet_delay < 0 else args.kubelet_delay,
                    gc_freeze=True, endpoint_slices=not args.no_endpoint_slices)
    done = termination()
    srv.start()
    srv.write_kubeconfig(args.kubeconfig)
    print(srv.url, flush=True)
    done.wait()
    srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
