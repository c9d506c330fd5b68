"""`ovn-k8s-cni-overlay`: the CNI plugin kubelet (or the container runtime) runs per call.

The runtime passes the call in CNI_* variables and the network config on stdin, and
reads one JSON document from stdout: the result, the version info, or an error
``{"code", "msg", "details"}`` (with a non-zero exit). Nothing else may go to stdout;
logs go to the config's ``logFile``, warnings also to stderr.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

from ovn_k8s.cni import spec

LOG = logging.getLogger("ovn_k8s.cni")


def _version_of(stdin: bytes) -> str:
    """The caller's cniVersion for an error reply, when the config says one we know."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return spec.CURRENT_VERSION
    return version if version in spec.SUPPORTED_VERSIONS else spec.CURRENT_VERSION


def _setup_logging(req: spec.Request) -> None:
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setLevel(logging.WARNING)
    root.addHandler(stderr)
    path = req.conf.log_file if req.conf else None
    if path:
        try:
            handler = logging.FileHandler(path)
        except OSError as e:
            raise spec.CniError(spec.INVALID_CONFIG, f"network config: logFile {path}: "
                                f"{e.strerror}") from None
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(process)d {req.command} {req.container_id[:12]} "
            "%(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    # Connection chatter from the OVS library is not the runtime's business.
    logging.getLogger("ovsdbapp").setLevel(logging.WARNING)


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """One plugin call: (exit status, JSON document for stdout or None)."""
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
        LOG.error("%s: %s%s", environ.get("CNI_COMMAND", "?"), e.msg,
                  f" ({e.details})" if e.details else "")
        return 1, e.to_json(_version_of(stdin))
    except Exception as e:
        LOG.exception("unexpected error")
        err = spec.CniError(spec.INTERNAL, f"{type(e).__name__}: {e}")
        return 1, err.to_json(_version_of(stdin))


USAGE = """usage: ovn-k8s-cni-overlay   (run by the container runtime, not by hand)

A CNI plugin (spec 1.0.0; results also as 0.3.x and 0.4.0). The call comes in
CNI_COMMAND (ADD, DEL, CHECK, VERSION), CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,
CNI_ARGS (K8S_POD_NAMESPACE, K8S_POD_NAME, K8S_POD_UID) and CNI_PATH, the network
config on stdin; the answer is JSON on stdout. Config keys beyond the spec's: mtu,
kubeconfig, logFile, annotationTimeout, ovsRemote, waitOvnInstalled,
ovnInstalledTimeout, defaultRoute.
"""


def main() -> None:
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        sys.stdout.write(USAGE)
        sys.exit(0)
    # Read even for VERSION: a runtime writing the config to a closed pipe would fail.
    # Without CNI_COMMAND nobody is feeding stdin: do not block on it.
    data = sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") else b""
    status, doc = run(os.environ, data)
    if doc is not None:
        sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()
    # Skip interpreter teardown: the OVSDB connection thread would otherwise be joined
    # and module finalisation adds tens of ms to every pod.
    logging.shutdown()
    os._exit(status)
