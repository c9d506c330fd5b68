"""The node's CNI daemon: `ovn-k8s-cni-overlay daemon --node-name NAME [flags]`.

A plugin process per pod pays ~1 s of imports (pyroute2, ovsdbapp, the Kubernetes
client) for ~30 ms of work. The daemon (kuryr-kubernetes' design) pays them once and
keeps warm what every call needs: the local Open_vSwitch connection and a cache of
this node's pods (a reflector with ``spec.nodeName=NAME``), so ADD reads the pod's
annotation from memory. The plugin front (`ovn_k8s.cmd.cni`) sends each call over a
unix socket as one JSON document ``{"env": {...}, "config": "<stdin>"}`` and gets
back ``{"status": N, "result": {...} | null}``. A thread per connection: one pod
waiting for its annotation never holds up another.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ovn_k8s.cni import spec
from ovn_k8s.cni.podnet import POD_ANNOTATION, PodNetwork, network_from_pod
from ovn_k8s.cni.spec import CniError, PodRef

LOG = logging.getLogger("ovn_k8s.cni.daemon")
NAME = "ovn-k8s-cni-overlay"
SOCKET_NAME = spec.DAEMON_SOCKET_NAME
# A request must arrive whole this quickly; the work itself has its own bounds.
READ_TIMEOUT = 10.0
MAX_REQUEST = 1 << 20


def default_socket(environ: Mapping[str, str] | None = None) -> str:
    return spec.daemon_socket(None, os.environ if environ is None else environ)


class CacheAnnotationSource:
    """Pod annotations from the daemon's reflector cache, waiting on its events."""

    def __init__(self, pods: Any) -> None:
        self._pods = pods
        self._changed = threading.Condition()

    def notify(self, *_event: object) -> None:
        """Reflector handler: wake every waiter to look at the cache again."""
        with self._changed:
            self._changed.notify_all()

    def wait(self, pod: PodRef, timeout: float) -> PodNetwork:
        deadline = time.monotonic() + timeout
        why = f"pod {pod} is not in this node's pod cache"
        with self._changed:
            while True:
                obj = self._pods.get(f"{pod.namespace}/{pod.name}")
                if obj is not None:
                    found, why = network_from_pod(pod, obj.get("metadata") or {})
                    if found is not None:
                        return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                # Events notify; the cap only bounds a missed wake-up (a relist swap).
                self._changed.wait(min(remaining, 1.0))
        if not self._pods.has_synced():
            why += "; the pod cache has not listed pods yet (Kubernetes API unreachable?)"
        raise CniError(
            spec.TRY_AGAIN_LATER,
            f"pod {pod}: no {POD_ANNOTATION!r} annotation after {timeout:g}s ({why})",
            details="the watcher (ovn-k8s-watcher) writes it when it has allocated the pod's "
                    "address; is it running?")


class CniDaemon:
    """Runs plugin calls in-process against the warm handles."""

    def __init__(self, ovs: Any, pods: Any, source: CacheAnnotationSource) -> None:
        self.ovs = ovs
        self.pods = pods
        self.source = source
        self.counts: Counter[str] = Counter()
        self.active = 0
        self._lock = threading.Lock()

    def handle(self, environ: Mapping[str, str], stdin: str) -> tuple[int, dict[str, Any] | None]:
        """One plugin call: (exit status, JSON document for stdout or None)."""
        from ovn_k8s.cni import plugin  # noqa: PLC0415 - loaded once, before serving

        command = environ.get("CNI_COMMAND", "?")
        with self._lock:
            self.active += 1
        try:
            req = spec.parse_request(environ, stdin)
            if req.command == "VERSION":
                status, doc = 0, spec.version_info()
            elif req.command == "ADD":
                doc = plugin.add(req, lambda _r, _o: self.source, ovs=self.ovs)
                status = 0
            elif req.command == "DEL":
                plugin.delete(req, ovs=self.ovs)
                status, doc = 0, None
            else:
                plugin.check(req, lambda _r, _o: self.source, ovs=self.ovs)
                status, doc = 0, None
        except CniError as e:
            LOG.error("%s: %s%s", command, e.msg, f" ({e.details})" if e.details else "")
            status, doc = 1, e.to_json(spec.version_of(stdin))
        except Exception as e:
            LOG.exception("%s: unexpected error", command)
            err = CniError(spec.INTERNAL, f"{type(e).__name__}: {e}")
            status, doc = 1, err.to_json(spec.version_of(stdin))
        finally:
            with self._lock:
                self.active -= 1
        # Keyed by known commands only: a caller's garbage must not grow the counters.
        kind = command if command in ("ADD", "DEL", "CHECK", "VERSION") else "invalid"
        with self._lock:
            self.counts[f"{kind}-{'ok' if status == 0 else 'error'}"] += 1
        return status, doc

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
            active = self.active
        return {"requests": counts, "active": active, "pods_cached": len(self.pods),
                "pods_synced": self.pods.has_synced()}


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.settimeout(READ_TIMEOUT)
        try:
            data = bytearray()
            while chunk := sock.recv(65536):
                data += chunk
                if len(data) > MAX_REQUEST:
                    raise ValueError("request too large")
            msg = json.loads(data)
            env, stdin = msg["env"], msg["config"]
            if not isinstance(env, dict) or not isinstance(stdin, str):
                raise ValueError("env must be an object and config a string")
        except (OSError, ValueError, KeyError, TypeError) as e:
            LOG.warning("bad request on the CNI socket: %s", e)
            return
        status, doc = self.server.cni.handle({str(k): str(v) for k, v in env.items()}, stdin)
        try:
            sock.settimeout(READ_TIMEOUT)
            sock.sendall(json.dumps({"status": status, "result": doc}).encode())
        except OSError as e:
            # The front gave up (its own timeout): it has already answered the runtime.
            LOG.warning("could not answer %s: %s", env.get("CNI_COMMAND"), e)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    cni: CniDaemon


def serve(path: str, cni: CniDaemon) -> _Server:
    """Bind ``path`` (mode 0600, replacing a stale socket) and serve on a thread."""
    with_dir = Path(path).parent
    with_dir.mkdir(parents=True, exist_ok=True)
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    old = os.umask(0o177)  # never world-connectable, not even for an instant
    try:
        server = _Server(path, _Handler)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    server.cni = cni
    threading.Thread(target=server.serve_forever, name="cni-socket", daemon=True).start()
    return server


def _parser() -> argparse.ArgumentParser:
    from ovn_k8s import daemon  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog=f"{NAME} daemon",
                                     description="the node's CNI daemon (warm handles)")
    parser.add_argument("--node-name", required=True, help="this node's Kubernetes name")
    parser.add_argument("--kubeconfig", help="Kubernetes access (default: in-cluster, then "
                                             "Open_vSwitch external_ids k8s-api-*)")
    parser.add_argument("--socket", help=f"listening socket (default $OVS_RUNDIR/{SOCKET_NAME})")
    parser.add_argument("--ovs", help="local Open_vSwitch DB (default: $OVS_RUNDIR/db.sock)")
    parser.add_argument("--config-file", type=Path, help="settings file")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the database at start (default 30)")
    daemon.add_args(parser)
    return parser


def main(argv: list[str]) -> None:
    """`ovn-k8s-cni-overlay daemon ...`"""
    from ovn_k8s import config, daemon, ovsdb  # noqa: PLC0415
    from ovn_k8s.cni import plugin  # noqa: F401, PLC0415 - warm the imports before serving
    from ovn_k8s.host import ovs as host_ovs  # noqa: PLC0415
    from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
    from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415

    args = _parser().parse_args(argv)
    path = args.socket or default_socket()
    d = daemon.Daemon(args, NAME)
    d.start()
    pods = None
    try:
        ovs = ovsdb.connect_ovs(args.ovs or host_ovs.default_remote(), timeout=args.timeout)
        settings = config.Settings(vars(args), config.read_config_file(args.config_file),
                                   host_ovs.external_ids(ovs))
        api = kube_client.api_client(settings, kubeconfig=args.kubeconfig)
        pods = reflector_for(api, "pods", list_kwargs={
            "field_selector": f"spec.nodeName={args.node_name}"})
        source = CacheAnnotationSource(pods)
        pods.add_handler(source.notify)
        pods.start()
        cni = CniDaemon(ovs, pods, source)
        server = serve(path, cni)
    except (ovsdb.OvsdbError, config.ConfigError, OSError, ValueError) as e:
        LOG.error("%s", e)
        if pods is not None:
            pods.stop()
        sys.exit(f"{NAME} daemon: error: {e}")

    d.register("status", "", 0, 0,
               lambda conn, _argv: conn.reply(json.dumps(cni.status(), sort_keys=True)))
    d.ready()
    LOG.info("serving CNI calls for node %s on %s", args.node_name, path)
    d.wait()
    server.shutdown()
    server.server_close()
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    pods.stop()
    ovs.close()
