"""`ovn-k8s-cni-overlay`: the CNI plugin kubelet (or the container runtime) runs per call.

The runtime passes the call in CNI_* variables and the network config on stdin, and
reads one JSON document from stdout: the result, the version info, or an error
``{"code", "msg", "details"}`` (with a non-zero exit). Nothing else may go to stdout;
logs go to the config's ``logFile``, warnings also to stderr.

With a node daemon listening (`ovn-k8s-cni-overlay daemon`, see ovn_k8s.cni.server)
this process only forwards the call over the daemon's unix socket and copies the
answer to stdout; the daemon checks it with the same code (ovn_k8s.cni.spec) before
touching the host. Every millisecond this process spends starting is paid per pod,
so that path imports only ``posix``, ``sys`` and ``_socket``: not even ``os`` (~4 ms
of a ~17 ms start here, with ``-S``) or ``json`` (~20 ms, through ``re`` and ``enum``).
The plugin installed for the runtime (ovn_k8s.cni.install) is, where a C compiler
is, a compiled front (ovn_k8s/cni/front.c) that forwards the call the same way and
execs this module for everything else; otherwise a script that starts Python with
``-I -S`` (no site, no .pth files, no editable-install finder); the site is loaded
only when this process does the work itself. Without a daemon (no socket, or nobody
accepting on it) it checks the call and does the work itself, with the same results
and error codes.

The socket protocol is in ovn_k8s.cni.wire.
"""

from __future__ import annotations

# The C module under `socket`: the forwarding path needs only its socket type, and the
# Python wrapper (enum, selectors) costs ~5 ms per pod. Likewise `typing` (~4 ms).
import _socket as socket
import posix
import sys

from ovn_k8s.cni import wire

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from ovn_k8s.cni import spec

# `logging` costs ~5-10 ms of imports: loaded only when this process does the work.
LOGGER = "ovn_k8s.cni"
# Must match spec.daemon_socket (tests/unit/test_cni_front.py checks), kept here so
# the forwarding path need not import spec.
DEFAULT_RUNDIR = "/var/run/openvswitch"
SOCKET_NAME = "ovn-k8s-cni.sock"
# Seconds beyond the daemon's own bound before the front stops waiting for it.
DAEMON_MARGIN = 30.0
# Until the daemon has checked the call and named its bound.
CHECK_TIMEOUT = 10.0
CONNECT_TIMEOUT = 2.0
# The compiled front (ovn_k8s/cni/front.c) runs this process with this argument, the
# socket and what went wrong, when the daemon took a call and did not answer it.
DAEMON_FAILED = "daemon-failed"


def _full_python() -> None:
    """Load the site (venv site-packages, .pth files) a ``-S`` start skipped."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site  # noqa: PLC0415

        site.main()


def _version_of(stdin: bytes | str) -> str:
    from ovn_k8s.cni import spec  # noqa: PLC0415

    return spec.version_of(stdin)


def _socket_path(environ: Mapping[str, str], stdin: bytes) -> str:
    # Only a config naming daemonSocket pays for json.
    if b'"daemonSocket"' in stdin:
        import json  # noqa: PLC0415

        try:
            conf = json.loads(stdin)
        except ValueError:  # UnicodeDecodeError too: the daemon reports it
            conf = None
        path = conf.get("daemonSocket") if isinstance(conf, dict) else None
        if isinstance(path, str) and path:
            return path
    rundir = environ.get("OVS_RUNDIR") or DEFAULT_RUNDIR
    return rundir + SOCKET_NAME if rundir.endswith("/") else f"{rundir}/{SOCKET_NAME}"


def via_daemon(environ: Mapping[str, str], stdin: bytes) -> tuple[int, bytes] | None:
    """The call answered by the node daemon: (exit status, bytes for stdout), or None
    when no daemon takes it.

    VERSION is answered here. Once the daemon has the request, failing to hear back
    is error 11, never a second attempt in-process: the daemon may have done half the
    work (and undoes it), and kubelet retries."""
    if environ.get("CNI_COMMAND") not in ("ADD", "DEL", "CHECK"):
        return None
    path = _socket_path(environ, stdin)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None  # absent, refused, stale: do the work ourselves
        try:
            sock.settimeout(CHECK_TIMEOUT)
            sock.sendall(wire.encode_request(environ, stdin))
            sock.shutdown(socket.SHUT_WR)
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
                if data.startswith(b"wait ") and b"\n" in data:
                    line, _, data = data.partition(b"\n")
                    sock.settimeout(float(line[5:]) + DAEMON_MARGIN)
            line, _, out = data.partition(b"\n")
            if not line.startswith(b"exit "):
                raise ValueError(f"no exit status in the answer ({len(data)} bytes)")
            return int(line[5:]), out
        except (OSError, ValueError) as e:
            return daemon_failed(path, f"{type(e).__name__}: {e}", stdin)
    finally:
        sock.close()


def daemon_failed(path: str, details: str, stdin: bytes) -> tuple[int, bytes]:
    """Error 11 (exit status, bytes for stdout): the daemon on ``path`` took the call
    and did not answer it."""
    from ovn_k8s.cni import spec  # noqa: PLC0415

    err = spec.CniError(spec.TRY_AGAIN_LATER, f"the node's CNI daemon ({path}) did not answer",
                        details=details)
    return 1, wire.stdout_bytes(err.to_json(spec.version_of(stdin)))


def _setup_logging(req: spec.Request) -> None:
    import logging  # noqa: PLC0415

    from ovn_k8s.cni import spec  # noqa: PLC0415

    root = logging.getLogger()
    root.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    root.addHandler(stderr)
    path = req.conf.log_file if req.conf else None
    if path:
        handler = logging.StreamHandler(spec.open_log(path))
        handler.setFormatter(logging.Formatter(spec.log_format(req)))
        root.addHandler(handler)
    # Connection chatter from the OVS library is not the runtime's business.
    logging.getLogger("ovsdbapp").setLevel(logging.WARNING)


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One plugin call: (exit status, JSON document for stdout or None)."""
    from ovn_k8s.cni import spec  # noqa: PLC0415

    try:
        req = spec.parse_request(environ, stdin)
        if req.command == "VERSION":
            return 0, spec.version_info()
        _setup_logging(req)
        from ovn_k8s.cni import plugin  # noqa: PLC0415 - heavy; not for VERSION/bad input

        if req.command == "ADD":
            return 0, plugin.add(req)
        if req.command == "DEL":
            plugin.delete(req)
        else:
            plugin.check(req)
        return 0, None
    except spec.CniError as e:
        import logging  # noqa: PLC0415

        logging.getLogger(LOGGER).error("%s: %s%s", environ.get("CNI_COMMAND", "?"), e.msg,
                                        f" ({e.details})" if e.details else "")
        return 1, e.to_json(_version_of(stdin))
    except Exception as e:
        import logging  # noqa: PLC0415

        logging.getLogger(LOGGER).exception("unexpected error")
        err = spec.CniError(spec.INTERNAL, f"{type(e).__name__}: {e}")
        return 1, err.to_json(_version_of(stdin))


USAGE = """usage: ovn-k8s-cni-overlay   (run by the container runtime, not by hand)
       ovn-k8s-cni-overlay daemon --node-name NAME [--kubeconfig F] [--socket PATH]
                           [--pidfile --detach --log-file -vconsole:LVL ...]

A CNI plugin (spec 1.0.0; results also as 0.3.x and 0.4.0). The call comes in
CNI_COMMAND (ADD, DEL, CHECK, VERSION), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID) and CNI_PATH, the network
config on stdin; the answer is JSON on stdout. Config keys beyond the spec's: mtu,
kubeconfig, logFile, annotationTimeout, ovsRemote, waitOvnInstalled,
ovnInstalledTimeout, defaultRoute, daemonSocket. When the node daemon listens on
daemonSocket (default $OVS_RUNDIR/ovn-k8s-cni.sock) calls go through it.
"""


def _environ() -> dict[str, str]:
    """``os.environ``'s contents, as it decodes them, without importing ``os``."""
    return {k.decode("utf-8", "surrogateescape"): v.decode("utf-8", "surrogateescape")
            for k, v in posix.environ.items()}


def main() -> None:
    # A runtime never passes arguments: one selects the daemon.
    if sys.argv[1:2] == ["daemon"]:
        _full_python()
        from ovn_k8s.cni import server  # noqa: PLC0415

        server.main(sys.argv[2:])
        return
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    # Read even for VERSION: a runtime writing the config to a closed pipe would fail.
    # Without CNI_COMMAND nobody is feeding stdin: do not block on it.
    environ = _environ()
    data = sys.stdin.buffer.read() if environ.get("CNI_COMMAND") else b""
    if len(sys.argv) == 4 and sys.argv[1] == DAEMON_FAILED:
        answer: tuple[int, bytes] | None = daemon_failed(sys.argv[2], sys.argv[3], data)
    else:
        answer = via_daemon(environ, data)
    if answer is None:
        _full_python()
        status, doc = run(environ, data)
        answer = status, wire.stdout_bytes(doc)
    status, out = answer
    if out:
        sys.stdout.buffer.write(out)
    sys.stdout.flush()
    # Skip interpreter teardown: the OVSDB connection thread would otherwise be joined
    # and module finalisation adds tens of ms to every pod.
    if "logging" in sys.modules:
        sys.modules["logging"].shutdown()
    posix._exit(status)
