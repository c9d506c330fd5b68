"""The whole system on one machine: lab, API emulator, set-up commands, daemons, demo.

`Sandbox.up()` runs the steps an operator would, in order, printing one line per step
with its time; a failing step is named, the tail of its log shown, and everything
started so far is torn down. Every process it starts names the sandbox directory on
its command line or lives in one of the lab's network namespaces, so `Lab.down` finds
and stops all of them (`down` works from any process, even after a crash).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from pyroute2 import IPRoute

from ovn_k8s.sandbox.kubelet import pod_netns_name
from ovn_k8s.sandbox.lab import Lab, LabError

BIN = Path(sys.executable).parent
CLUSTER_SUBNET = "10.128.0.0/14"
EXTERNAL_NET = ("172.31.0.1", "172.31.0.2", 24)  # external host, gateway node, prefix
GATEWAY_NIC = "eth1"
GATEWAY_BRIDGE = f"br{GATEWAY_NIC}"  # what nics-to-bridge makes of it
HELPER = "gateway-helper"
STATE_FILE = "sandbox.json"
DEMO_NAMESPACE = "demo"
NODE_PORT = 30080
START_TIMEOUT = 60.0


class SandboxError(LabError):
    """A step of `up` failed; the message names it."""


def _local_addresses() -> set[ipaddress.IPv4Address]:
    """This machine's IPv4 addresses (in our network namespace)."""
    with IPRoute() as ipr:
        return {ipaddress.ip_address(a.get_attr("IFA_ADDRESS"))
                for a in ipr.get_addr(family=socket.AF_INET)}


def _why(e: Exception) -> str:
    """A one-line reason; an ApiException's text carries headers and body."""
    status = getattr(e, "status", None)
    return f"HTTP {status} {getattr(e, 'reason', '')}".strip() if status else str(e)


def _kill_pidfile(path: Path) -> None:
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(path.read_text()), signal.SIGTERM)
    path.unlink(missing_ok=True)


class Sandbox:
    """With ``kubeconfig`` the sandbox uses that cluster's API server instead of starting
    the emulator, and `down` removes from it only what `up` created (recorded in
    ``STATE_FILE``: the demo namespace and the Node objects that did not exist)."""

    def __init__(self, directory: Path, nodes: int = 2,
                 out: Callable[[str], None] = print, kubeconfig: Path | None = None) -> None:
        self.dir = directory.resolve()
        self.node_count = nodes
        self.out = out
        self.lab = Lab(self.dir, nodes=nodes)
        self.t0 = time.monotonic()
        self.external = kubeconfig.resolve() if kubeconfig is not None else None
        self.created: dict[str, Any] = {"namespace": None, "nodes": []}

    @classmethod
    def load(cls, directory: Path, out: Callable[[str], None] = print) -> Sandbox:
        """The sandbox in ``directory`` as `up` left it (for status and down)."""
        sb = cls(directory, out=out)
        sb.lab = Lab.load(sb.dir)
        sb.node_count = len(sb.lab.nodes)
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((sb.dir / STATE_FILE).read_text())
            sb.external = Path(state["kubeconfig"]) if state.get("kubeconfig") else None
            sb.created = state.get("created") or sb.created
        return sb

    def _save_state(self) -> None:
        tmp = self.dir / f"{STATE_FILE}.tmp"
        tmp.write_text(json.dumps({"kubeconfig": str(self.external) if self.external else None,
                                   "created": self.created}, indent=2))
        tmp.replace(self.dir / STATE_FILE)

    # ---- paths -------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.external or self.dir / "kubeconfig"

    @property
    def helper_ctl(self) -> Path:
        """The gateway helper's unixctl socket (``ovs-appctl -t`` it)."""
        return self.dir / f"{HELPER}.ctl"

    def log(self, name: str) -> Path:
        return self.dir / f"{name}.log"

    def cni_dirs(self, node: str) -> tuple[Path, Path]:
        base = self.dir / f"cni-{node}"
        return base / "net.d", base / "bin"

    def api_url(self) -> str | None:
        try:
            return self._kube_config().host
        except Exception:  # only for display; the kubeconfig may be gone
            return None

    def _kube_config(self) -> Any:
        """The kubeconfig's current context, loaded as the official client loads it."""
        from kubernetes import client, config  # noqa: PLC0415

        cfg = client.Configuration()
        config.load_kube_config(config_file=str(self.kubeconfig), client_configuration=cfg)
        return cfg

    # ---- steps -------------------------------------------------------------------------

    @contextlib.contextmanager
    def step(self, what: str, *logs: str) -> Iterator[None]:
        """Report one step of `up` with its time; on failure name it, show its logs' tails."""
        start = time.monotonic()
        try:
            yield
        except Exception as e:
            tail = ""
            for log in logs:
                if self.log(log).exists():
                    lines = self.log(log).read_text(errors="replace").splitlines()[-10:]
                    tail += f"\n  --- {self.log(log)}:\n  " + "\n  ".join(lines)
            raise SandboxError(f"{what}: {e}{tail}") from e
        self.out(f"[{time.monotonic() - self.t0:6.2f}s] {what} "
                 f"({time.monotonic() - start:.2f}s)")

    def up(self) -> None:
        try:
            self._up()
        except BaseException:
            self.down()
            raise

    def _up(self) -> None:
        if self.external:
            # Before anything starts: a bad kubeconfig is the likeliest mistake.
            with self.step(f"Kubernetes API: kubeconfig {self.external}"):
                server = self._check_kubeconfig()
        with self.step(f"lab: OVN central and {self.node_count} nodes"):
            self.lab.up()
        self._save_state()
        if self.external:
            with self.step(f"lab nodes reach the API server {server}"):
                self._route_to_api(server)
        else:
            with self.step("Kubernetes API emulator", "apiserver"):
                self._start_apiserver()
        from kubernetes import client  # noqa: PLC0415

        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415

        api = kube_client.api_client(kubeconfig=str(self.kubeconfig))
        v1 = client.CoreV1Api(api)
        with self.step("nodes registered, node settings in Open_vSwitch external_ids"):
            self._configure_nodes(v1)
        with self.step("ovn-k8s-watcher", "watcher"):
            self._start_watcher()
        with self.step("ovn-k8s-overlay master-init and minion-init"):
            self._init_nodes(v1)
        gw = self.lab.nodes[-1].name
        with self.step(f"external host on {gw}'s NIC {GATEWAY_NIC}"):
            self._external_host(gw)
        with self.step(f"ovn-k8s-util nics-to-bridge {GATEWAY_NIC} on {gw}"):
            self._run_on(gw, "ovn-k8s-util", "nics-to-bridge", GATEWAY_NIC)
        with self.step(f"ovn-k8s-overlay gateway-init on {gw} (bridge {GATEWAY_BRIDGE})"):
            self._gateway(gw)
        with self.step(f"ovn-k8s-gateway-helper on {gw}", HELPER):
            self._start_gateway_helper(gw)
        kubelets = [f"kubelet-{n.name}" for n in self.lab.nodes]
        with self.step("CNI node daemons, stand-in kubelets, EndpointSlice controller",
                       "endpoints", *kubelets):
            self._start_node_agents()
        with self.step("demo: 3 web pods, a client, service web", "watcher", "endpoints",
                       *kubelets):
            self._demo(v1)
        api.close()

    def _spawn(self, argv: list[str], log: str, node: Any = None) -> int:
        """Start a daemon in the background (for ``node``: with its OVS env; the daemon
        joins the node's netns itself)."""
        env = dict(os.environ)
        if node is not None:
            env.update(node.env)
        with open(self.log(log), "ab") as f:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=f, stderr=f,
                                    start_new_session=True, env=env)
        (self.dir / f"{log}.pid").write_text(f"{proc.pid}\n")
        return proc.pid

    def _start_apiserver(self) -> None:
        host = self.lab.connect_host()
        self.kubeconfig.unlink(missing_ok=True)
        self._spawn([sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--host", host,
                     "--port", "0", "--kubeconfig", str(self.kubeconfig)], "apiserver")
        deadline = time.monotonic() + START_TIMEOUT
        while not self.kubeconfig.exists():
            if time.monotonic() > deadline:
                raise SandboxError("the API emulator did not listen in time")
            time.sleep(0.05)

    def _check_kubeconfig(self) -> str:
        """Check the given kubeconfig works and the lab can use its server; returns the
        server's address. Errors never carry the credentials."""
        from kubernetes import client, config  # noqa: PLC0415
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        path = self.kubeconfig
        if not path.is_file():
            raise SandboxError("no such file")
        try:
            cfg = self._kube_config()
        except yaml.YAMLError as e:
            # A YAML error quotes the offending line, which may hold the token.
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1})" if mark is not None else ""
            raise SandboxError(f"not YAML{where}") from None
        except (config.ConfigException, OSError, ValueError, TypeError, KeyError) as e:
            raise SandboxError(f"not a usable kubeconfig: {e}") from None
        host = urlsplit(cfg.host).hostname or ""
        try:
            server = ipaddress.ip_address(socket.gethostbyname(host))
        except (OSError, ValueError):
            raise SandboxError(f"cannot resolve the API server's host {host!r}") from None
        # The nodes live in their own network namespaces and reach this machine's own
        # addresses only (see _route_to_api).
        local = _local_addresses()
        if server.is_loopback or server not in local:
            raise SandboxError(
                f"the API server {cfg.host} is not on an address the lab's nodes can reach: "
                "use a server address of this machine other than loopback")
        cfg.retries = 0
        api = client.ApiClient(cfg)
        try:
            client.CoreV1Api(api).list_namespace(limit=1, _request_timeout=5)
        except client.ApiException as e:
            if e.status in (401, 403):
                raise SandboxError(f"the API server {cfg.host} refused the kubeconfig's "
                                   f"credentials (HTTP {e.status})") from None
            raise SandboxError(f"the API server {cfg.host} answered HTTP {e.status} "
                               f"{e.reason}") from None
        except HTTPError as e:
            reason = str(getattr(e, "reason", None) or e).split(">: ", 1)[-1]
            raise SandboxError(f"cannot reach the API server {cfg.host}: {reason}") from None
        finally:
            api.close()
        url = urlsplit(cfg.host)
        return f"{server}:{url.port or (80 if url.scheme == 'http' else 443)}"

    def _route_to_api(self, server: str) -> None:
        host, port = server.rsplit(":", 1)
        self.lab.route_to_host(host)
        from pyroute2 import netns  # noqa: PLC0415

        for node in self.lab.nodes:
            sock = netns.create_socket(node.netns, socket.AF_INET, socket.SOCK_STREAM)
            try:
                sock.settimeout(5)
                sock.connect((host, int(port)))
            except OSError as e:
                raise SandboxError(f"{node.name} cannot reach {server}: {e}") from None
            finally:
                sock.close()

    def _configure_nodes(self, v1: Any) -> None:
        from kubernetes.client import ApiException  # noqa: PLC0415

        cfg = self._kube_config()
        keys = cfg.api_key or {}
        # The key's name differs between client versions.
        token = (keys.get("BearerToken") or keys.get("authorization") or "").removeprefix(
            "Bearer ")
        settings = [f"external_ids:ovn-nb={self.lab.nb_remote}",
                    f"external_ids:k8s-api-server={cfg.host.removeprefix('http://')}"]
        if token:
            settings.append(f"external_ids:k8s-api-token={token}")
        if cfg.ssl_ca_cert:
            settings.append(f"external_ids:k8s-ca-certificate={cfg.ssl_ca_cert}")
        for node in self.lab.nodes:
            # The lineage's node settings, so the set-up commands and the CNI plugin
            # find OVN and Kubernetes the way operators configure them.
            node.vsctl("set", "Open_vSwitch", ".", *settings)
            try:
                v1.create_node({"metadata": {"name": node.name,
                                             "labels": {"kubernetes.io/hostname": node.name}}})
            except ApiException as e:
                # A cluster that already knows the node: use it, and leave it at `down`.
                if e.status != 409:
                    raise
                continue
            self.created["nodes"].append(node.name)
            self._save_state()

    def _start_watcher(self) -> None:
        proc = subprocess.run(
            [str(BIN / "ovn-k8s-watcher"), "--overlay", f"--cluster-ip-subnet={CLUSTER_SUBNET}",
             f"--nb={self.lab.nb_remote}", f"--kubeconfig={self.kubeconfig}",
             f"--pidfile={self.dir / 'watcher.pid'}", "--detach",
             f"--unixctl={self.dir / 'watcher.ctl'}", f"--log-file={self.log('watcher')}",
             "-vconsole:emer", "-vfile:info"],
            capture_output=True, text=True, timeout=START_TIMEOUT, check=False,
            env=dict(os.environ, OVS_RUNDIR=str(self.dir)))
        if proc.returncode != 0:
            raise SandboxError(proc.stderr.strip() or "the watcher did not start")

    def _run_on(self, node: str, *argv: str) -> None:
        proc = self.lab.node(node).exec([str(BIN / argv[0]), *argv[1:]], timeout=120)
        if proc.returncode != 0:
            raise SandboxError(proc.stderr.strip() or f"{argv[0]} failed on {node}")

    def _init_nodes(self, v1: Any) -> None:
        from ovn_k8s import annotations  # noqa: PLC0415

        first = self.lab.nodes[0].name
        deadline = time.monotonic() + START_TIMEOUT
        while (subnet := annotations.node_subnet(v1.read_node(first).metadata.annotations)) \
                is None:
            if time.monotonic() > deadline:
                raise SandboxError(f"the watcher gave {first} no subnet")
            time.sleep(0.05)
        self._run_on(first, "ovn-k8s-overlay", "master-init",
                     f"--cluster-ip-subnet={CLUSTER_SUBNET}",
                     f"--master-switch-subnet={subnet}", f"--node-name={first}")

        def minion_init(node: Any) -> None:
            conf, binary = self.cni_dirs(node.name)
            # No subnet given: minion-init waits for the one the watcher allocated.
            self._run_on(node.name, "ovn-k8s-overlay", "minion-init",
                         f"--cluster-ip-subnet={CLUSTER_SUBNET}", f"--node-name={node.name}",
                         f"--cni-conf-dir={conf}", f"--cni-bin-dir={binary}")

        # As on real nodes, all at once: each mostly waits for its subnet and OVN.
        Lab._parallel(minion_init, self.lab.nodes)

    def _external_host(self, node: str) -> None:
        host, mine, plen = EXTERNAL_NET
        # The node's own address sits on the NIC, as on a real host whose only NIC
        # the gateway then shares.
        if "outside" not in self.lab.pods:
            self.lab.add_external_host(node, "outside", f"{host}/{plen}", nic=GATEWAY_NIC,
                                       node_ip=f"{mine}/{plen}")

    def _gateway(self, node: str) -> None:
        host, mine, plen = EXTERNAL_NET
        self._run_on(node, "ovn-k8s-overlay", "gateway-init",
                     f"--cluster-ip-subnet={CLUSTER_SUBNET}",
                     f"--bridge-interface={GATEWAY_BRIDGE}",
                     f"--physical-ip={mine}/{plen}", f"--node-name={node}",
                     f"--default-gw={host}")

    def _start_gateway_helper(self, node: str) -> None:
        # It follows the services for NodePort flows, so it needs the API like the
        # node's other daemons; without its flows the NIC's traffic all goes to the host.
        self._run_on(node, "ovn-k8s-gateway-helper", f"--physical-bridge={GATEWAY_BRIDGE}",
                     f"--physical-interface={GATEWAY_NIC}", f"--kubeconfig={self.kubeconfig}",
                     f"--pidfile={self.dir / f'{HELPER}.pid'}", "--detach",
                     f"--unixctl={self.helper_ctl}", f"--log-file={self.log(HELPER)}",
                     "-vconsole:emer", "-vfile:info")

    def _start_cni_daemon(self, node: Any) -> None:
        name = f"cni-daemon-{node.name}"
        proc = node.exec(
            [str(BIN / "ovn-k8s-cni-overlay"), "daemon", f"--node-name={node.name}",
             f"--kubeconfig={self.kubeconfig}", f"--pidfile={self.dir / f'{name}.pid'}",
             "--detach", f"--unixctl={self.dir / f'{name}.ctl'}",
             f"--log-file={self.log(name)}", "-vconsole:emer", "-vfile:info"],
            timeout=START_TIMEOUT)
        if proc.returncode != 0:
            raise SandboxError(proc.stderr.strip() or f"CNI daemon on {node.name}")

    def _start_node_agents(self) -> None:
        # The CNI node daemons first, so the kubelets' plugin calls take the fast path
        # (the plugin falls back to doing the work itself without one).
        Lab._parallel(self._start_cni_daemon, self.lab.nodes)
        for node in self.lab.nodes:
            conf, binary = self.cni_dirs(node.name)
            self._spawn([sys.executable, "-m", "ovn_k8s.sandbox.kubelet", "--node", node.name,
                         "--kubeconfig", str(self.kubeconfig), "--cni-conf-dir", str(conf),
                         "--cni-bin-dir", str(binary),
                         "--netns-prefix", self.pod_netns_prefix,
                         "--node-netns", node.netns],
                        f"kubelet-{node.name}", node=node)
        self._spawn([sys.executable, "-m", "ovn_k8s.sandbox.endpoints",
                     "--kubeconfig", str(self.kubeconfig)], "endpoints")

    def _demo(self, v1: Any) -> None:
        from kubernetes.client import ApiException  # noqa: PLC0415

        try:
            v1.create_namespace({"metadata": {"name": DEMO_NAMESPACE}})
        except ApiException as e:
            if e.status == 409:
                raise SandboxError(f"namespace {DEMO_NAMESPACE} already exists; the sandbox "
                                   "makes its own and leaves that one alone") from None
            raise
        self.created["namespace"] = DEMO_NAMESPACE
        self._save_state()
        nodes = [n.name for n in self.lab.nodes]
        for i in range(3):
            self.create_pod(v1, f"web-{i}", nodes[i % len(nodes)], image="demo-http",
                            labels={"app": "web"})
        self.create_pod(v1, "client", nodes[0])
        v1.create_namespaced_service(DEMO_NAMESPACE, {
            "metadata": {"name": "web"},
            "spec": {"type": "NodePort", "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080,
                                "nodePort": NODE_PORT}]}})
        deadline = time.monotonic() + START_TIMEOUT
        while not self.demo_ready(v1):
            if time.monotonic() > deadline:
                raise SandboxError("the demo pods did not all start")
            time.sleep(0.1)

    @staticmethod
    def create_pod(v1: Any, name: str, node: str, *, image: str = "sleep",
                   labels: dict[str, str] | None = None) -> None:
        v1.create_namespaced_pod(DEMO_NAMESPACE, {
            "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "main", "image": image}]}})

    def demo_ready(self, v1: Any) -> bool:
        pods = v1.list_namespaced_pod(DEMO_NAMESPACE).items
        if len(pods) < 4 or any(p.status.phase != "Running" for p in pods):
            return False
        return len(self.service_backends()) == 3

    def service_backends(self) -> list[str]:
        """The backends NB holds for the demo service's ClusterIP."""
        from ovn_k8s import ovsdb, topology  # noqa: PLC0415

        nb = ovsdb.NbDb(self.lab.nb_remote, tables=["Load_Balancer"], timeout=10)
        try:
            lb = next((r for r in nb.rows("Load_Balancer")
                       if r.name == topology.cluster_lb_name("tcp")), None)
            for vip, backends in (lb.vips if lb is not None else {}).items():
                if vip.endswith(":80") and backends:
                    return backends.split(",")
            return []
        finally:
            nb.close()

    # ---- status and down ---------------------------------------------------------------

    def table(self) -> str:
        from kubernetes import client  # noqa: PLC0415

        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415

        api = kube_client.api_client(kubeconfig=str(self.kubeconfig))
        try:
            v1 = client.CoreV1Api(api)
            lines = [f"sandbox in {self.dir}",
                     f"  OVN NB {self.lab.nb_remote}   SB {self.lab.sb_remote}",
                     f"  Kubernetes API ({'given' if self.external else 'emulator'}) "
                     f"{self.api_url()}   "
                     f"kubeconfig {self.kubeconfig}", "  nodes:"]
            for n in v1.list_node().items:
                subnet = (n.metadata.annotations or {}).get("k8s.ovn.org/node-subnets", "")
                netns = self.lab.node(n.metadata.name).netns
                lines.append(f"    {n.metadata.name:<8} netns {netns}  "
                             f"{json.loads(subnet).get('default', '') if subnet else ''}")
            lines.append(f"  pods in namespace {DEMO_NAMESPACE}:")
            for p in v1.list_namespaced_pod(DEMO_NAMESPACE).items:
                lines.append(f"    {p.metadata.name:<8} {p.status.phase or 'Pending':<8} "
                             f"{p.status.pod_ip or '-':<14} on {p.spec.node_name}")
            svc = v1.read_namespaced_service("web", DEMO_NAMESPACE)
            gw_ip = EXTERNAL_NET[1]
            lines.append(f"  service web: ClusterIP {svc.spec.cluster_ip}:80, NodePort "
                         f"{gw_ip}:{NODE_PORT} (from the external host)")
            client_pod = v1.read_namespaced_pod("client", DEMO_NAMESPACE)
            netns = self.client_netns(client_pod.metadata.uid)
            lines += [
                "try:",
                f"  ip netns exec {netns} curl -s http://{svc.spec.cluster_ip}/",
                f"  ip netns exec {self.lab.pods['outside'].netns} curl -s "
                f"http://{gw_ip}:{NODE_PORT}/",
                f"  ovn-nbctl --db={self.lab.nb_remote} show",
                f"  ovs-appctl -t {self.dir / 'watcher.ctl'} status",
                f"  ovs-appctl -t {self.helper_ctl} gateway/flows   "
                f"(the gateway node's NIC {GATEWAY_NIC}, shared in {GATEWAY_BRIDGE})",
                f"  KUBECONFIG={self.kubeconfig} kubectl get pods -A   (if you have kubectl)",
                f"stop with: ovn-k8s-sandbox --dir {self.dir} down",
            ]
            return "\n".join(lines)
        finally:
            api.close()

    @property
    def pod_netns_prefix(self) -> str:
        return f"{self.lab.prefix}-p-"

    def client_netns(self, uid: str) -> str:
        """The netns the stand-in kubelet made for the pod with ``uid``."""
        return pod_netns_name(self.pod_netns_prefix, uid)

    def health(self) -> list[str]:
        """The names of the daemons that are not running."""
        status = self.lab.status()
        down = [f"central/{name}" for name, up in status["central"].items() if not up]
        for node, daemons in status["nodes"].items():
            down += [f"{node}/{name}" for name, up in daemons.items() if not up]
        names = [*([] if self.external else ["apiserver"]), "watcher", "endpoints", HELPER,
                 *[f"kubelet-{n.name}" for n in self.lab.nodes],
                 *[f"cni-daemon-{n.name}" for n in self.lab.nodes]]
        for name in names:
            try:
                os.kill(int((self.dir / f"{name}.pid").read_text()), 0)
            except (OSError, ValueError):
                down.append(name)
        return down

    def down(self) -> None:
        # The helper first: it would otherwise re-apply flows on a bridge going away.
        for ctl in (self.helper_ctl, self.dir / "watcher.ctl"):
            with contextlib.suppress(Exception):
                subprocess.run(["ovs-appctl", "-t", str(ctl), "exit"],
                               capture_output=True, timeout=10, check=False)
        # An external API server is not ours to stop (and has no pidfile here).
        for name in ("endpoints", "apiserver",
                     *[f"kubelet-{n.name}" for n in self.lab.nodes]):
            _kill_pidfile(self.dir / f"{name}.pid")
        if self.external:
            self._clean_cluster()
        self.lab.down()
        # What we wrote beside the lab's own files.
        for pattern in ("*.log", "*.pid", "*.ctl", "kubeconfig", "cni-*", f"{STATE_FILE}*"):
            for path in self.dir.glob(pattern):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.dir.rmdir()

    def _clean_cluster(self) -> None:
        """Remove from an external cluster what `up` created there, and nothing else."""
        from kubernetes import client  # noqa: PLC0415

        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415

        ns, nodes = self.created.get("namespace"), list(self.created.get("nodes") or ())
        if not ns and not nodes:
            return
        left = []
        try:
            api = kube_client.api_client(kubeconfig=str(self.kubeconfig))
        except Exception as e:  # down goes on with the local part
            self.out(f"warning: cannot reach the cluster ({_why(e)}); left there: "
                     f"{', '.join(filter(None, [ns and f'namespace {ns}', *nodes]))}")
            return
        v1 = client.CoreV1Api(api)

        def gone(call: Callable[[], Any]) -> bool:
            try:
                call()
            except client.ApiException as e:
                if e.status == 404:
                    return True
                raise
            return False

        try:
            if ns:
                try:
                    # Their kubelets are gone: nothing would confirm a graceful deletion.
                    for pod in v1.list_namespaced_pod(ns, _request_timeout=10).items:
                        gone(lambda p=pod: v1.delete_namespaced_pod(
                            p.metadata.name, ns, grace_period_seconds=0, _request_timeout=10))
                    gone(lambda: v1.delete_namespace(ns, _request_timeout=10))
                    deadline = time.monotonic() + 30
                    while not gone(lambda: v1.read_namespace(ns, _request_timeout=10)):
                        if time.monotonic() > deadline:
                            raise SandboxError("still terminating after 30s")
                        time.sleep(0.2)
                except Exception as e:
                    left.append(f"namespace {ns} ({_why(e)})")
            for node in nodes:
                try:
                    gone(lambda n=node: v1.delete_node(n, _request_timeout=10))
                except Exception as e:
                    left.append(f"node {node} ({_why(e)})")
        finally:
            api.close()
        if left:
            self.out("warning: could not remove from the cluster: " + "; ".join(left))
