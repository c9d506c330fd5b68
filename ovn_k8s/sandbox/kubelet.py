"""A stand-in kubelet for the sandbox: pods bound to its node become network namespaces.

It does what kubelet does for networking, and only that: for each pod scheduled to its
node it makes a netns, calls the installed CNI plugin exactly as kubelet does (CNI_*
variables, the network config on stdin), starts the pod's "container" (the sandbox's
images: ``demo-http`` answers HTTP on 8080 with the pod's name and address, anything
else just sleeps), and reports ``status.phase=Running`` with the pod IP. When the pod
is gone it stops the process, calls DEL and removes the netns. Run in the node's netns:

    python -m ovn_k8s.sandbox.kubelet --node NODE --kubeconfig FILE --cni-conf-dir DIR
        --cni-bin-dir DIR --netns-prefix PREFIX [--node-netns NETNS]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ovn_k8s.sandbox import termination

LOG = logging.getLogger("ovn_k8s.sandbox.kubelet")

# The demo container: a tiny HTTP server (not http.server: it does reverse DNS before
# listen() and stalls in an isolated netns). argv: pod name, pod address.
HTTP_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64)
body = f"hello from {sys.argv[1]} at {sys.argv[2]}\\n".encode()
while True:
    c, _ = s.accept()
    try:
        c.settimeout(2); c.recv(4096)
        c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Type: text/plain\\r\\nContent-Length: "
                  + str(len(body)).encode() + b"\\r\\n\\r\\n" + body)
    except OSError:
        pass
    finally:
        c.close()
"""


def pod_netns_name(prefix: str, uid: str) -> str:
    """The netns a pod gets: stable per pod UID, short enough for any tool."""
    return f"{prefix}{hashlib.sha1(uid.encode()).hexdigest()[:8]}"


class Kubelet:
    def __init__(self, args: argparse.Namespace) -> None:
        from kubernetes import client  # noqa: PLC0415

        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
        from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415
        from ovn_k8s.kube.workqueue import WorkQueue  # noqa: PLC0415

        self.args = args
        self.api = kube_client.api_client(kubeconfig=args.kubeconfig)
        self.v1 = client.CoreV1Api(self.api)
        self.conflist = json.loads(
            (Path(args.cni_conf_dir) / "10-ovn-k8s.conflist").read_text())
        self.plugin = Path(args.cni_bin_dir) / self.conflist["plugins"][0]["type"]
        self.pods = reflector_for(self.api, "pods", handler=self._event, list_kwargs={
            "field_selector": f"spec.nodeName={args.node}"})
        self.queue = WorkQueue(f"kubelet-{args.node}")
        self.running: dict[str, dict[str, Any]] = {}  # pod key -> netns, uid, pid
        self.lock = threading.Lock()

    def _event(self, _etype: str, key: str, _obj: Any) -> None:
        self.queue.add(key)

    def register(self) -> None:
        """Create this node's Node object, as kubelet registers itself."""
        from kubernetes.client.rest import ApiException  # noqa: PLC0415

        try:
            self.v1.create_node({"metadata": {"name": self.args.node,
                                              "labels": {"kubernetes.io/hostname":
                                                         self.args.node}}})
        except ApiException as e:
            if e.status != 409:
                raise

    def run(self) -> None:
        self.register()
        self.pods.start()
        self.queue.start(self.handle, workers=4)
        termination().wait()
        self.pods.stop()
        self.queue.shutdown()

    # ---- one pod --------------------------------------------------------------------

    def handle(self, key: str) -> None:
        pod = self.pods.get(key)
        with self.lock:
            have = self.running.get(key)
        if pod is None or (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            if have is not None:
                self._stop(key, have)
            return
        uid = pod["metadata"]["uid"]
        if have is not None and have["uid"] != uid:
            self._stop(key, have)
            have = None
        if have is None and not (pod.get("spec") or {}).get("hostNetwork"):
            self._start(key, pod)

    def _cni(self, command: str, pod: dict[str, Any] | None, key: str, uid: str,
             netns: str) -> dict[str, Any]:
        namespace, _, name = key.partition("/")
        env = dict(os.environ, CNI_COMMAND=command, CNI_CONTAINERID=uid,
                   CNI_NETNS=f"/var/run/netns/{netns}", CNI_IFNAME="eth0",
                   CNI_PATH=self.args.cni_bin_dir,
                   CNI_ARGS=f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};"
                            f"K8S_POD_NAME={name};K8S_POD_UID={uid}")
        # A conflist's plugin gets its entry with the list's name and version, as
        # libcni passes it.
        conf = dict(self.conflist["plugins"][0], name=self.conflist["name"],
                    cniVersion=self.conflist["cniVersion"])
        proc = subprocess.run([str(self.plugin)], input=json.dumps(conf).encode(), env=env,
                              capture_output=True, timeout=120, check=False)
        out = json.loads(proc.stdout or b"{}")
        if proc.returncode != 0:
            raise RuntimeError(f"CNI {command} {key}: {out.get('msg')} {out.get('details', '')}")
        return out

    def _start(self, key: str, pod: dict[str, Any]) -> None:
        from pyroute2 import netns as pr_netns  # noqa: PLC0415

        uid = pod["metadata"]["uid"]
        netns = pod_netns_name(self.args.netns_prefix, uid)
        if netns not in pr_netns.listnetns():
            pr_netns.create(netns)
        try:
            result = self._cni("ADD", pod, key, uid, netns)
        except Exception:
            with contextlib.suppress(Exception):
                pr_netns.remove(netns)
            raise
        ip = result["ips"][0]["address"].split("/")[0]
        image = ((pod.get("spec") or {}).get("containers") or [{}])[0].get("image", "")
        argv = (["ip", "netns", "exec", netns, sys.executable, "-I", "-S", "-c", HTTP_SERVER,
                 pod["metadata"]["name"], ip, self.args.kubeconfig]
                if image == "demo-http" else
                ["ip", "netns", "exec", netns, "sleep", "infinity"])
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        with self.lock:
            self.running[key] = {"netns": netns, "uid": uid, "pid": proc.pid, "proc": proc}
        namespace, _, name = key.partition("/")
        self.v1.patch_namespaced_pod_status(name, namespace, {"status": {
            "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True"}]}})
        LOG.info("pod %s running in %s at %s", key, netns, ip)

    def _stop(self, key: str, have: dict[str, Any]) -> None:
        from pyroute2 import netns as pr_netns  # noqa: PLC0415

        proc = have.get("proc")
        if proc is not None:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.wait(5)
        self._cni("DEL", None, key, have["uid"], have["netns"])
        with contextlib.suppress(FileNotFoundError):
            pr_netns.remove(have["netns"])
        with self.lock:
            self.running.pop(key, None)
        LOG.info("pod %s gone: removed %s", key, have["netns"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovn_k8s.sandbox.kubelet")
    p.add_argument("--node", required=True)
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--cni-conf-dir", required=True)
    p.add_argument("--cni-bin-dir", required=True)
    p.add_argument("--netns-prefix", required=True)
    p.add_argument("--node-netns", help="join this netns first (the node's host network)")
    args = p.parse_args(argv)
    if args.node_netns:
        from pyroute2 import netns  # noqa: PLC0415

        # setns() here, before any thread, rather than `ip netns exec`: that also
        # unshares the mount namespace, and the pod netns we create would then be
        # mounted where nobody else (the CNI runtime's peers, `ip netns exec`) sees it.
        netns.setns(args.node_netns, flags=0)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Kubelet(args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
