"""The node's CNI daemon: `ovn-k8s-cni-overlay daemon --node-name NAME [flags]`.

A plugin process per pod pays ~1 s of imports (pyroute2, ovsdbapp, the Kubernetes
client) for ~30 ms of work. The daemon (kuryr-kubernetes' design) pays them once and
keeps warm what every call needs: the local Open_vSwitch connection, a netlink
socket, and a cache of this node's pods (a reflector with ``spec.nodeName=NAME``),
so ADD reads the pod's annotation from memory. The plugin front (`ovn_k8s.cmd.cni`)
sends each call over a unix socket (protocol in ovn_k8s.cni.wire). A thread per
connection: one pod waiting for its annotation never holds up another.

Each call is done as the plugin process would have done it with the same config:
``mtu``, ``annotationTimeout``, ``defaultRoute``, ``waitOvnInstalled``, ``dns`` are
read per call; its log lines also go to its ``logFile``; an ``ovsRemote`` other than
the daemon's own gets a connection of its own, opened by the first call naming it
and kept (the process's shared one per remote); a ``kubeconfig`` naming another file
than the daemon's is read per call, the annotation fetched with it from the API (as
the plugin process does: a second pod cache per kubeconfig would be a second watch
of every pod on the node for what is a misconfiguration or a test).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import socket
import socketserver
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from ovn_k8s.cni import spec, wire
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


class RequestLogs(logging.Handler):
    """Writes the log records of a thread serving a call to that call's ``logFile``,
    in the plugin process's format (the daemon's own log gets them too)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self._current = threading.local()

    @contextlib.contextmanager
    def to(self, req: spec.Request) -> Iterator[None]:
        path = req.conf.log_file if req.conf else None
        if not path:
            yield
            return
        stream = spec.open_log(path)
        self._current.target = (stream, logging.Formatter(spec.log_format(req)))
        try:
            yield
        finally:
            self._current.target = None
            stream.close()

    def emit(self, record: logging.LogRecord) -> None:
        target = getattr(self._current, "target", None)
        # The plugin process keeps the OVS library's connection chatter out too.
        if target is None or (record.name.startswith("ovsdbapp")
                              and record.levelno < logging.WARNING):
            return
        stream, fmt = target
        try:
            stream.write(fmt.format(record) + "\n")
            stream.flush()
        except Exception:
            self.handleError(record)


class CniDaemon:
    """Runs plugin calls in-process against the warm handles."""

    def __init__(self, ovs: Any, pods: Any, source: CacheAnnotationSource,
                 kubeconfig: str | None = None) -> None:
        self.ovs = ovs
        self.pods = pods
        self.source = source
        self.kubeconfig = kubeconfig
        self.logs = RequestLogs()
        logging.getLogger().addHandler(self.logs)
        self.counts: Counter[str] = Counter()
        self.active = 0
        self._lock = threading.Lock()

    def close(self) -> None:
        logging.getLogger().removeHandler(self.logs)

    def handle(self, environ: Mapping[str, str], stdin: bytes | str,
               checked: Callable[[float], None] | None = None
               ) -> tuple[int, dict[str, Any] | None]:
        """One plugin call: (exit status, JSON document for stdout or None).

        ``checked(seconds)`` is called once the call is valid, with how long its work
        may take."""
        command = environ.get("CNI_COMMAND", "?")
        with self._lock:
            self.active += 1
        try:
            status, doc = self._answer(command, stdin,
                                       lambda: self._checked(environ, stdin, checked))
        finally:
            with self._lock:
                self.active -= 1
        # Keyed by known commands only: a caller's garbage must not grow the counters.
        kind = command if command in ("ADD", "DEL", "CHECK", "VERSION") else "invalid"
        with self._lock:
            self.counts[f"{kind}-{'ok' if status == 0 else 'error'}"] += 1
        return status, doc

    def _checked(self, environ: Mapping[str, str], stdin: bytes | str,
                 checked: Callable[[float], None] | None
                 ) -> tuple[int, dict[str, Any] | None]:
        req = spec.parse_request(environ, stdin)
        if req.command == "VERSION":
            return 0, spec.version_info()
        if checked is not None:
            checked(spec.work_bound(req))
        with self.logs.to(req):
            return self._answer(req.command, stdin, lambda: self._run(req))

    def _run(self, req: spec.Request) -> tuple[int, dict[str, Any] | None]:
        from ovn_k8s.cni import plugin  # noqa: PLC0415 - loaded once, before serving

        assert req.conf is not None
        ovs = self.ovs
        if req.conf.ovs_remote and req.conf.ovs_remote != self.ovs.remote:
            ovs = plugin.connect_ovs(req)
        if req.conf.kubeconfig and not _same_file(req.conf.kubeconfig, self.kubeconfig):
            source = plugin.default_source
        else:
            def source(_r: spec.Request, _o: Any) -> CacheAnnotationSource:
                return self.source
        if req.command == "ADD":
            return 0, plugin.add(req, source, ovs=ovs)
        if req.command == "DEL":
            plugin.delete(req, ovs=ovs, background=True)
        else:
            plugin.check(req, source, ovs=ovs)
        return 0, None

    @staticmethod
    def _answer(command: str, stdin: bytes | str,
                fn: Callable[[], tuple[int, dict[str, Any] | None]]
                ) -> tuple[int, dict[str, Any] | None]:
        try:
            return fn()
        except CniError as e:
            LOG.error("%s: %s%s", command, e.msg, f" ({e.details})" if e.details else "")
            return 1, e.to_json(spec.version_of(stdin))
        except Exception as e:
            LOG.exception("%s: unexpected error", command)
            err = CniError(spec.INTERNAL, f"{type(e).__name__}: {e}")
            return 1, err.to_json(spec.version_of(stdin))

    def status(self) -> dict[str, Any]:
        with self._lock:
            counts = dict(self.counts)
            active = self.active
        return {"requests": counts, "active": active, "pods_cached": len(self.pods),
                "pods_synced": self.pods.has_synced()}


def _same_file(a: str, b: str | None) -> bool:
    return b is not None and os.path.realpath(a) == os.path.realpath(b)


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
            env, stdin = wire.decode_request(bytes(data))
        except (OSError, ValueError) as e:
            LOG.warning("bad request on the CNI socket: %s", e)
            return
        from ovn_k8s.cni import links  # noqa: PLC0415 - loaded before serving

        try:
            # What a call defers (DEL's veth deletion) runs once its answer is out:
            # the end of the stream is the front's sign that the answer is whole.
            with links.deferring():
                status, doc = self.server.cni.handle(
                    env, stdin, lambda seconds: sock.sendall(wire.wait_line(seconds)))
                sock.sendall(wire.answer(status, doc))
                sock.shutdown(socket.SHUT_WR)
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
    from ovn_k8s.cni import links, plugin  # noqa: F401, PLC0415 - warm the imports first
    from ovn_k8s.host import ovs as host_ovs  # noqa: PLC0415
    from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
    from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415

    args = _parser().parse_args(argv)
    path = args.socket or default_socket()
    # With --monitor, back after an OOM kill too: pods cannot start while it is away
    # (the plugin falls back to the slow in-process path).
    d = daemon.Daemon(args, NAME, restart_on_sigkill=True)
    d.start()
    pods = None
    try:
        ovs = ovsdb.connect_ovs(args.ovs or host_ovs.default_remote(), timeout=args.timeout)
        links.keep_host_socket()
        settings = config.Settings(vars(args), config.read_config_file(args.config_file),
                                   host_ovs.external_ids(ovs))
        api = kube_client.api_client(settings, kubeconfig=args.kubeconfig)
        pods = reflector_for(api, "pods", list_kwargs={
            "field_selector": f"spec.nodeName={args.node_name}"})
        source = CacheAnnotationSource(pods)
        pods.add_handler(source.notify)
        pods.start()
        cni = CniDaemon(ovs, pods, source, args.kubeconfig)
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
    if not links.settle_all(10.0):
        LOG.warning("exiting with veth deletions still running")
    pods.stop()
    ovs.close()
