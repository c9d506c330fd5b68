"""A real OVS/OVN lab in a private directory: OVN central plus N nodes, each in a netns.

Layout (DIR is the lab directory)::

    host netns     NB + SB ovsdb-server (unix sockets in DIR/central), ovn-northd
    <p>-ul         "underlay": a Linux bridge <p>-br, subnet 172.30.0.0/24
    <p>-nodeN      ovsdb-server, ovs-vswitchd (userspace datapath), ovn-controller;
                   br-int (netdev), br-phy (netdev) holding the encap IP, with the
                   veth uplink <p>-ul whose peer <p>-nN sits on the underlay bridge
    <p>-pod-NAME   a lab "pod": eth0, the peer of <p>-XXXX, an OVS port on br-int

``<p>`` is a prefix derived from DIR (``ok8s`` + 6 hex digits), so several labs coexist
and ``down`` finds everything a lab made even after a crash: every resource is written
to DIR/lab.json as it is created, and ``down`` also sweeps whatever carries the prefix
or runs with DIR in its command line.

Geneve between nodes follows the facts measured on this machine (see DESIGN.md): the
encap IP sits on a netdev bridge with a veth uplink, one underlay ping warms the tunnel
neighbour cache, pods turn tx checksum offload off, ovn-controller stops with
``ovn-appctl exit``. Two more, found while building this: the NB/SB databases are
written with their NB_Global/SB_Global rows already in (ovn-controller 23.03
segfaults when it meets an SB without SB_Global, i.e. before northd's first run), and
"port up" means flows installed *and* ``--wait=hv`` sync, else the first packet to a
pod just bound on another node is sometimes lost.

Command line::

    python -m ovn_k8s.sandbox.lab up --dir DIR [--nodes N]
    python -m ovn_k8s.sandbox.lab status --dir DIR
    python -m ovn_k8s.sandbox.lab down --dir DIR

This module (and the rest of ovn_k8s.sandbox) may run ovs-vsctl/ip/ovn-appctl as
subprocesses; it always passes argument lists, never a shell.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pyroute2 import IPRoute, netns

from ovn_k8s.cni.links import tx_checksum_off

LOG = logging.getLogger(__name__)

PREFIX_BASE = "ok8s"
UNDERLAY_NET = ipaddress.ip_network("172.30.0.0/24")
UNDERLAY_MTU = 1500
POD_MTU = 1400  # leaves room for the geneve header on a 1500-byte underlay
STATE_FILE = "lab.json"

OVS_SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
NB_SCHEMA = Path("/usr/share/ovn/ovn-nb.ovsschema")
SB_SCHEMA = Path("/usr/share/ovn/ovn-sb.ovsschema")

DEBIAN_PACKAGES = (
    "openvswitch-switch",
    "ovn-central",
    "ovn-host",
    "iproute2",
    "iputils-ping",
    "ethtool",
)
# binary or schema -> the Debian package that ships it
REQUIRED: dict[str, str] = {
    "ovsdb-server": "openvswitch-switch",
    "ovs-vswitchd": "openvswitch-switch",
    "ovs-vsctl": "openvswitch-switch",
    "ovs-appctl": "openvswitch-common",
    "ovn-northd": "ovn-central",
    "ovn-controller": "ovn-host",
    "ovn-appctl": "ovn-common",
    "ovn-sbctl": "ovn-common",
    "ip": "iproute2",
    "ping": "iputils-ping",
    str(OVS_SCHEMA): "openvswitch-common",
    str(NB_SCHEMA): "ovn-common",
    str(SB_SCHEMA): "ovn-common",
}
INSTALL_COMMAND = "apt-get install -y " + " ".join(DEBIAN_PACKAGES)
_SEARCH_PATH = os.pathsep.join(
    [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"]
)

POLL = 0.01  # seconds between polls; every wait below also has a deadline
DAEMON_START_TIMEOUT = 10.0
STOP_TIMEOUT = 5.0

# The lab's pod server, on one port over TCP and UDP: echo one message per
# connection or datagram. Not http.server, which does reverse DNS before listen()
# and stalls in an isolated netns (DESIGN.md). Queries instead of an echo:
# "peer?" -> the source address it sees (proves SNAT), "name?" -> its own pod
# address (which backend a load balancer picked). argv: port, lab dir (only so the
# process can be found by the dir in its cmdline), the pod's address.
_TCP_SERVER = """
import select, socket, sys
port, me = int(sys.argv[1]), sys.argv[3]
t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port))
t.listen(64)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.bind(("0.0.0.0", port))
def answer(data, peer):
    if data == b"peer?\\n":
        return f"{peer[0]}\\n".encode()
    if data == b"name?\\n":
        return f"{me}\\n".encode()
    return data
print("ready", flush=True)
while True:
    ready, _, _ = select.select([t, u], [], [])
    if u in ready:
        data, peer = u.recvfrom(4096)
        u.sendto(answer(data, peer), peer)
    if t in ready:
        c, peer = t.accept()
        c.settimeout(5)
        try:
            c.sendall(answer(c.recv(4096), peer))
        except OSError:
            pass
        finally:
            c.close()
"""


class LabError(RuntimeError):
    """The lab could not be started, used or stopped."""


# --------------------------------------------------------------------------- helpers


def lab_prefix(directory: Path | str) -> str:
    """The name prefix of the lab living in ``directory`` (stable for a given path)."""
    path = str(Path(directory).resolve())
    return PREFIX_BASE + hashlib.sha1(path.encode()).hexdigest()[:6]


def _uuid() -> str:
    return str(uuid.uuid4())


def _ovsdb_map(d: dict[str, str]) -> list[Any]:
    return ["map", [[k, v] for k, v in sorted(d.items())]]


def _log_record(obj: Any) -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode() + b"\n"
    return b"OVSDB JSON %d %s\n" % (len(body), hashlib.sha1(body).hexdigest().encode()) + body


def write_db(path: Path, schema: Path, rows: dict[str, dict[str, dict[str, Any]]]) -> None:
    """Write a standalone OVSDB file holding ``schema`` and one transaction of ``rows``.

    The same bytes ``ovsdb-tool create`` + ``ovsdb-tool transact`` produce (the OVSDB
    log format: ``OVSDB JSON <length> <sha1>`` then the record), without starting two
    processes per database: rows are ``{table: {uuid: {column: value}}}`` in OVSDB's
    JSON notation (``["uuid", u]``, ``["set", [...]]``, ``["map", [[k, v], ...]]``).
    """
    txn: dict[str, Any] = {"_date": int(time.time() * 1000), **rows, "_is_diff": True}
    data = _log_record(json.loads(schema.read_text())) + _log_record(txn)
    with open(path, "wb") as f:
        f.write(data)


def read_db_log(path: Path, offset: int = 0) -> list[dict[str, Any]]:
    """The records of an OVSDB file (the log format :func:`write_db` writes) from byte
    ``offset``: what each transaction appended since a moment wrote."""
    data = path.read_bytes()[offset:]
    records, pos = [], 0
    while pos < len(data):
        header_end = data.index(b"\n", pos)
        length = int(data[pos:header_end].split()[2])
        records.append(json.loads(data[header_end + 1:header_end + 1 + length]))
        # ovsdb-server's length leaves out the newline after the record; write_db's
        # counts it.
        pos = header_end + 1 + length
        while data[pos:pos + 1] == b"\n":
            pos += 1
    return records


def _which(name: str) -> str | None:
    if name.startswith("/"):
        return name if os.path.exists(name) else None
    return shutil.which(name, path=_SEARCH_PATH)


def _binary(name: str) -> str:
    path = _which(name)
    if path is None:
        raise LabError(f"{name} not found; run: {INSTALL_COMMAND}")
    return path


def ensure_packages(install: bool | None = None) -> None:
    """Make sure the OVS/OVN binaries the lab runs are present.

    Missing ones are installed with apt-get when running as root (``install`` None or
    True); otherwise the error names the exact command to run.
    """
    missing = sorted({pkg for what, pkg in REQUIRED.items() if _which(what) is None})
    if not missing:
        return
    if install is None:
        install = os.geteuid() == 0
    if not install:
        raise LabError(
            f"missing Debian packages {', '.join(missing)}; run: sudo {INSTALL_COMMAND}"
        )
    LOG.warning("installing missing packages: %s", INSTALL_COMMAND)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", *DEBIAN_PACKAGES]
    if subprocess.run(cmd, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update"], env=env, check=False)
        if subprocess.run(cmd, env=env, check=False).returncode != 0:
            raise LabError(f"could not install packages; run: {INSTALL_COMMAND}")
    still = sorted(what for what in REQUIRED if _which(what) is None)
    if still:
        raise LabError(f"still missing after install: {', '.join(still)}")


def _run(
    argv: list[str],
    *,
    timeout: float = DAEMON_START_TIMEOUT,
    env: dict[str, str] | None = None,
    check: bool = True,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"{' '.join(argv)}: no answer within {timeout:g}s") from e
    if check and proc.returncode != 0:
        raise LabError(
            f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}"
        )
    return proc


def _ns_argv(netns: str | None, argv: list[str]) -> list[str]:
    return argv if netns is None else [_binary("ip"), "netns", "exec", netns, *argv]


def _wait(
    what: str, cond: Callable[[], Any], timeout: float, interval: float = POLL
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise LabError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll ``cond`` until it returns something true (returned); LabError on timeout.

    For tests and tools that wait on the lab: never sleep-then-assert.
    """
    return _wait(what, cond, timeout)


def pid_running(pid: int) -> bool:
    """True while ``pid`` runs (a zombie does not: init here may never reap orphans)."""
    return _pid_alive(pid)


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie (reaping our own children)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] not in (b"Z", b"X")


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _own_lineage() -> set[int]:
    """This process and its ancestors: never swept, even if DIR is in their cmdline."""
    pids = set()
    pid = os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
            pid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def _start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (tells reused pids apart)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _netns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a short-lived thread that has joined netns ``name``.

    setns() affects only the calling thread; the thread ends right after, so nothing
    else in the process changes namespace.
    """
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            netns.setns(name, flags=0)
            result["value"] = fn()
        except BaseException as e:  # handed to the caller below
            result["error"] = e

    t = threading.Thread(target=target, name=f"netns-{name}", daemon=True)
    t.start()
    t.join()
    if "error" in result:
        raise result["error"]
    return result.get("value")


def _ipr(netns_name: str | None = None) -> Any:
    return IPRoute(netns=netns_name) if netns_name else IPRoute()




# ------------------------------------------------------------------------ data classes


@dataclass
class Daemon:
    """One OVS/OVN daemon the lab launched with --detach."""

    name: str
    argv: list[str]
    pidfile: str
    ctl: str
    netns: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    pid: int | None = None

    def start(self) -> int:
        env = dict(os.environ, **self.env)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        argv = [_binary(self.argv[0]), *self.argv[1:]]
        _run(_ns_argv(self.netns, argv), env=env, timeout=DAEMON_START_TIMEOUT)
        self.pid = self.read_pid()
        if self.pid is None:
            raise LabError(f"{self.name} started but wrote no pid to {self.pidfile}")
        return self.pid

    def read_pid(self) -> int | None:
        try:
            return int(Path(self.pidfile).read_text().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        return self.pid is not None and _pid_alive(self.pid)

    @property
    def ctl_path(self) -> str:
        """The daemon's unixctl socket (for ``ovs-appctl -t``/``ovn-appctl -t``)."""
        return self.ctl.format(pid=self.pid)

    def appctl(self, *args: str, timeout: float = STOP_TIMEOUT, check: bool = True) -> str:
        tool = "ovn-appctl" if self.name.startswith("ovn") else "ovs-appctl"
        return _run(
            [_binary(tool), f"--timeout={max(1, int(timeout))}", "-t", self.ctl_path, *args],
            timeout=timeout + 1,
            check=check,
        ).stdout


@dataclass
class LabNode:
    """One lab node: a netns with its own Open_vSwitch db, vswitchd and ovn-controller."""

    name: str
    index: int
    netns: str
    rundir: Path
    ovs_remote: str
    encap_ip: str
    uplink: str
    underlay_port: str
    daemons: dict[str, Daemon] = field(default_factory=dict)

    @property
    def chassis(self) -> str:
        return self.name

    @property
    def env(self) -> dict[str, str]:
        d = str(self.rundir)
        return {
            "OVS_RUNDIR": d,
            "OVS_DBDIR": d,
            "OVS_LOGDIR": d,
            "OVS_SYSCONFDIR": d,
            "OVN_RUNDIR": d,
            "OVN_DBDIR": d,
            "OVN_LOGDIR": d,
            "OVN_SYSCONFDIR": d,
        }

    def vsctl(self, *args: str, timeout: float = 10.0) -> str:
        """Run ovs-vsctl against this node's database; returns stdout."""
        return _run(
            [_binary("ovs-vsctl"), f"--db={self.ovs_remote}",
             f"--timeout={max(1, math.ceil(timeout))}", *args],
            timeout=timeout + 2,
        ).stdout

    def exec(
        self,
        argv: list[str],
        timeout: float = 30.0,
        *,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside this node's netns (no shell), as a process on that host.

        The environment is ours plus the node's OVS/OVN directories plus ``env``;
        ``input`` goes to its stdin (a CNI plugin's network config, say).
        """
        return _run(_ns_argv(self.netns, argv), timeout=timeout,
                    env=dict(os.environ, **self.env, **(env or {})), check=False, input=input)


@dataclass
class LabPod:
    """A lab "pod": a netns whose eth0 is the peer of an OVS port on a node's br-int."""

    lab: Lab = field(repr=False, compare=False)
    node: str
    name: str
    netns: str
    port: str
    ip: str
    mac: str
    iface_id: str
    gateway: str | None = None
    servers: dict[int, int] = field(default_factory=dict)  # port -> server pid

    @property
    def address(self) -> str:
        """The pod's IP without prefix length."""
        return self.ip.split("/")[0]

    def exec(self, argv: list[str], timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the pod's netns (no shell)."""
        return _run(_ns_argv(self.netns, argv), timeout=timeout, check=False)

    def ping(self, ip: str, count: int = 1, timeout: float = 2.0) -> bool:
        """True if ``ip`` answers ``count`` ICMP echoes within ``timeout`` seconds."""
        argv = [_binary("ping"), "-n", "-q", "-c", str(count), "-i", "0.05",
                "-W", f"{timeout:g}", "-w", str(math.ceil(count * timeout)), ip]
        return self.exec(argv, timeout=count * timeout + 5).returncode == 0

    def tcp_check(self, ip: str, port: int, timeout: float = 2.0) -> bool:
        """Connect from the pod to ``ip:port``, send a line, expect it echoed back."""
        try:
            sock = netns.create_socket(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        except Exception as e:
            raise LabError(f"cannot open a socket in {self.netns}: {e}") from e
        payload = f"ovn-k8s lab {self.name} -> {ip}:{port}\n".encode()
        try:
            sock.settimeout(timeout)
            sock.connect((ip, port))
            sock.sendall(payload)
            got = b""
            while len(got) < len(payload):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                got += chunk
            return got == payload
        except OSError:
            return False
        finally:
            sock.close()

    def tcp_peer(self, ip: str, port: int, timeout: float = 2.0) -> str | None:
        """The source address a lab server at ``ip:port`` sees for our connection."""
        return self.tcp_query(ip, port, "peer?", timeout)

    def tcp_query(self, ip: str, port: int, query: str, timeout: float = 2.0) -> str | None:
        """Ask a lab server at ``ip:port`` over TCP ("peer?" or "name?"); None if no answer."""
        try:
            sock = netns.create_socket(self.netns, socket.AF_INET, socket.SOCK_STREAM)
        except Exception as e:
            raise LabError(f"cannot open a socket in {self.netns}: {e}") from e
        try:
            sock.settimeout(timeout)
            sock.connect((ip, port))
            sock.sendall(f"{query}\n".encode())
            return sock.recv(4096).decode().strip() or None
        except OSError:
            return None
        finally:
            sock.close()

    def udp_query(self, ip: str, port: int, query: str = "name?",
                  timeout: float = 2.0) -> str | None:
        """Ask a lab server at ``ip:port`` over UDP; None if no answer in time."""
        try:
            sock = netns.create_socket(self.netns, socket.AF_INET, socket.SOCK_DGRAM)
        except Exception as e:
            raise LabError(f"cannot open a socket in {self.netns}: {e}") from e
        try:
            sock.settimeout(timeout)
            sock.sendto(f"{query}\n".encode(), (ip, port))
            return sock.recv(4096).decode().strip() or None
        except OSError:
            return None
        finally:
            sock.close()

    def serve_tcp(self, port: int, timeout: float = 5.0) -> int:
        """Start the lab's echo server on ``port`` in the pod; returns its pid."""
        if port in self.servers and _pid_alive(self.servers[port]):
            return self.servers[port]
        server = [sys.executable, "-I", "-S", "-c", _TCP_SERVER, str(port), self.lab.dir_marker,
                  self.address]
        argv = _ns_argv(self.netns, server)
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lab._record_pid(f"tcp:{self.name}:{port}", proc.pid)
        self.lab._children[proc.pid] = proc  # reaped by _kill_and_wait / down
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        line = proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            proc.kill()
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            proc.wait(timeout=STOP_TIMEOUT)
            raise LabError(f"TCP server in {self.netns} on port {port} did not start: {err}")
        proc.stdout.close()
        if proc.stderr:
            proc.stderr.close()
        self.servers[port] = proc.pid
        self.lab._save_pod(self)
        return proc.pid

    def stop_tcp(self, port: int) -> None:
        pid = self.servers.pop(port, None)
        if pid is not None:
            _kill_and_wait([pid], STOP_TIMEOUT)
            self.lab._reap()
        self.lab._save_pod(self)

    def wait_up(self, timeout: float = 10.0) -> None:
        """Wait until ovn-controller has installed flows for this pod's port."""
        self.lab.node(self.node).vsctl(
            "wait-until", "Interface", self.port, "external_ids:ovn-installed=true",
            timeout=timeout,
        )

    def to_json(self) -> dict[str, Any]:
        d = {
            k: getattr(self, k)
            for k in ("node", "name", "netns", "port", "ip", "mac", "iface_id", "gateway")
        }
        d["servers"] = {str(k): v for k, v in self.servers.items()}
        return d


def _kill_and_wait(pids: list[int], timeout: float) -> list[int]:
    """SIGTERM ``pids``, wait up to ``timeout``, SIGKILL survivors; returns the killed."""
    alive = [p for p in pids if _pid_alive(p)]
    for p in alive:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _pid_alive(p)]
        if alive:
            time.sleep(POLL)
    for p in alive:
        LOG.warning("pid %d ignored SIGTERM for %gs, killing", p, timeout)
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    if alive:
        _wait("killed processes to go", lambda: not any(_pid_alive(p) for p in alive), timeout)
    return alive


# ------------------------------------------------------------------------------- lab


class Lab:
    """OVN central plus ``nodes`` OVS/OVN nodes, all real daemons, living in ``dir``.

    >>> with Lab(Path("/tmp/lab"), nodes=2) as lab:        # doctest: +SKIP
    ...     a = lab.add_pod("node1", "a", "10.0.0.5/24", "0a:58:0a:00:00:05")
    """

    def __init__(self, dir: Path | str, nodes: int = 2) -> None:
        if nodes < 1 or nodes > 200:
            raise ValueError("nodes must be between 1 and 200")
        self.dir = Path(dir).resolve()
        self.prefix = lab_prefix(self.dir)
        self.node_count = nodes
        self.central_dir = self.dir / "central"
        self.nb_remote = f"unix:{self.central_dir / 'nb.sock'}"
        self.sb_remote = f"unix:{self.central_dir / 'sb.sock'}"
        self.underlay_netns = f"{self.prefix}-ul"
        self.underlay_bridge = f"{self.prefix}-br"
        self.nodes: list[LabNode] = [self._make_node(i) for i in range(1, nodes + 1)]
        self.central: dict[str, Daemon] = self._make_central()
        self.pods: dict[str, LabPod] = {}
        self._lock = threading.RLock()
        self._state: dict[str, Any] = {}
        self.created_dir = False
        self.timings: dict[str, float] = {}
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        self._central_started = threading.Event()

    # -- naming --------------------------------------------------------------------

    @property
    def dir_marker(self) -> str:
        """``DIR/``: found in the command line of every process this lab starts."""
        return str(self.dir) + "/"

    def _make_node(self, i: int) -> LabNode:
        name = f"node{i}"
        rundir = self.dir / name
        return LabNode(
            name=name,
            index=i,
            netns=f"{self.prefix}-{name}",
            rundir=rundir,
            ovs_remote=f"unix:{rundir / 'db.sock'}",
            encap_ip=str(UNDERLAY_NET.network_address + 10 + i),
            uplink=f"{self.prefix}-ul",
            underlay_port=f"{self.prefix}-n{i}",
        )

    def _make_central(self) -> dict[str, Daemon]:
        c = self.central_dir
        d: dict[str, Daemon] = {}
        for db in ("nb", "sb"):
            d[db] = Daemon(
                name=f"ovsdb-server-{db}",
                argv=[
                    "ovsdb-server", str(c / f"{db}.db"),
                    f"--remote=punix:{c / f'{db}.sock'}",
                    f"--unixctl={c / f'{db}.ctl'}",
                    f"--pidfile={c / f'{db}.pid'}",
                    f"--log-file={c / f'{db}.log'}",
                    "--detach", "--no-chdir", "-vconsole:off",
                ],
                pidfile=str(c / f"{db}.pid"),
                ctl=str(c / f"{db}.ctl"),
            )
        d["northd"] = Daemon(
            name="ovn-northd",
            argv=[
                "ovn-northd",
                f"--ovnnb-db={self.nb_remote}",
                f"--ovnsb-db={self.sb_remote}",
                f"--unixctl={c / 'northd.ctl'}",
                f"--pidfile={c / 'northd.pid'}",
                f"--log-file={c / 'northd.log'}",
                "--detach", "--no-chdir", "-vconsole:off",
            ],
            pidfile=str(c / "northd.pid"),
            ctl=str(c / "northd.ctl"),
        )
        return d

    def _node_daemons(self, node: LabNode) -> dict[str, Daemon]:
        r = Path(node.rundir)
        common = ["--detach", "--no-chdir", "-vconsole:off"]
        return {
            "ovsdb-server": Daemon(
                name="ovsdb-server",
                argv=[
                    "ovsdb-server", str(r / "conf.db"),
                    f"--remote=punix:{r / 'db.sock'}",
                    f"--unixctl={r / 'ovsdb-server.ctl'}",
                    f"--pidfile={r / 'ovsdb-server.pid'}",
                    f"--log-file={r / 'ovsdb-server.log'}",
                    *common,
                ],
                pidfile=str(r / "ovsdb-server.pid"),
                ctl=str(r / "ovsdb-server.ctl"),
                netns=node.netns,
                env=node.env,
            ),
            "ovs-vswitchd": Daemon(
                name="ovs-vswitchd",
                argv=[
                    "ovs-vswitchd", node.ovs_remote,
                    f"--unixctl={r / 'ovs-vswitchd.ctl'}",
                    f"--pidfile={r / 'ovs-vswitchd.pid'}",
                    f"--log-file={r / 'ovs-vswitchd.log'}",
                    *common,
                ],
                pidfile=str(r / "ovs-vswitchd.pid"),
                ctl=str(r / "ovs-vswitchd.ctl"),
                netns=node.netns,
                env=node.env,
            ),
            "ovn-controller": Daemon(
                name="ovn-controller",
                argv=[
                    "ovn-controller", node.ovs_remote,
                    f"--pidfile={r / 'ovn-controller.pid'}",
                    f"--log-file={r / 'ovn-controller.log'}",
                    *common,
                ],
                pidfile=str(r / "ovn-controller.pid"),
                # ovn-controller 23.03 has no --unixctl: OVN_RUNDIR/ovn-controller.PID.ctl
                ctl=str(r / "ovn-controller.{pid}.ctl"),
                netns=node.netns,
                env=node.env,
            ),
        }

    def node(self, name: str | int | LabNode) -> LabNode:
        """A node by name ("node1"), 1-based index, or the node itself."""
        if isinstance(name, LabNode):
            return name
        for n in self.nodes:
            if name in (n.name, n.index):
                return n
        raise KeyError(f"no lab node {name!r}")

    # -- state file ----------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.dir / STATE_FILE

    def _save(self) -> None:
        with self._lock:
            self._state.update(
                {
                    "dir": str(self.dir),
                    "prefix": self.prefix,
                    "nodes_count": self.node_count,
                    "nb_remote": self.nb_remote,
                    "sb_remote": self.sb_remote,
                    "underlay": {
                        "netns": self.underlay_netns,
                        "bridge": self.underlay_bridge,
                        "subnet": str(UNDERLAY_NET),
                    },
                    "created_dir": self.created_dir,
                    "central": {k: asdict(v) for k, v in self.central.items()},
                    "nodes": [
                        {
                            "name": n.name,
                            "index": n.index,
                            "netns": n.netns,
                            "rundir": str(n.rundir),
                            "ovs_remote": n.ovs_remote,
                            "encap_ip": n.encap_ip,
                            "chassis": n.chassis,
                            "uplink": n.uplink,
                            "underlay_port": n.underlay_port,
                            "daemons": {k: asdict(v) for k, v in n.daemons.items()},
                        }
                        for n in self.nodes
                    ],
                    "pods": {k: p.to_json() for k, p in self.pods.items()},
                }
            )
            self._state.setdefault("resources", {"netns": [], "pids": {}, "paths": []})
            tmp = self.state_path.with_name(STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(self._state, indent=1, sort_keys=True))
            os.replace(tmp, self.state_path)

    def _record(self, kind: str, value: str) -> None:
        with self._lock:
            res = self._state.setdefault("resources", {"netns": [], "pids": {}, "paths": []})
            if value not in res[kind]:
                res[kind].append(value)
            self._save()

    def _record_pid(self, name: str, pid: int) -> None:
        with self._lock:
            res = self._state.setdefault("resources", {"netns": [], "pids": {}, "paths": []})
            res["pids"][name] = pid
            self._save()

    def _save_pod(self, pod: LabPod) -> None:
        with self._lock:
            self._save()

    def _mkdir(self, path: Path) -> None:
        rel = str(path.relative_to(self.dir))
        self._record("paths", rel)
        path.mkdir(parents=True, exist_ok=True)

    @classmethod
    def load(cls, dir: Path | str) -> Lab:
        """Rebuild the lab object of ``dir`` from DIR/lab.json (e.g. in another process).

        Without lab.json the object still knows the lab's prefix, so ``down`` can sweep.
        """
        path = Path(dir).resolve()
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except FileNotFoundError:
            return cls(path, nodes=1)
        except ValueError as e:
            LOG.warning("unreadable %s (%s): down will sweep by prefix", path / STATE_FILE, e)
            return cls(path, nodes=1)
        lab = cls(path, nodes=max(1, int(state.get("nodes_count", 1))))
        lab._state = state
        lab.created_dir = bool(state.get("created_dir"))
        for k, v in state.get("central", {}).items():
            lab.central[k] = Daemon(**v)
        for node, saved in zip(lab.nodes, state.get("nodes", []), strict=False):
            node.daemons = {k: Daemon(**v) for k, v in saved.get("daemons", {}).items()}
        for key, p in state.get("pods", {}).items():
            servers = {int(k): v for k, v in p.pop("servers", {}).items()}
            lab.pods[key] = LabPod(lab=lab, servers=servers, **p)
        return lab

    def owner_alive(self) -> bool:
        """True while the process that ran ``up`` still runs (a test session, say).

        A lab whose owner is gone was either left up on purpose (``up`` on the command
        line) or by a killed run; callers that only make labs in-process (the test
        fixtures) use this to sweep the latter.
        """
        pid = self._state.get("owner_pid")
        if not pid or not _pid_alive(int(pid)):
            return False
        return _start_time(int(pid)) == self._state.get("owner_start")

    def info(self) -> dict[str, Any]:
        """What a user needs to reach the lab (also in lab.json)."""
        return {
            "dir": str(self.dir),
            "prefix": self.prefix,
            "nb_remote": self.nb_remote,
            "sb_remote": self.sb_remote,
            "nodes": [
                {
                    "name": n.name,
                    "chassis": n.chassis,
                    "netns": n.netns,
                    "ovs_remote": n.ovs_remote,
                    "encap_ip": n.encap_ip,
                    "rundir": str(n.rundir),
                }
                for n in self.nodes
            ],
        }

    # -- up ------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self, timeout: float = 20.0) -> Lab:
        """Start central and every node; returns once tunnels are up and warm."""
        if os.geteuid() != 0:
            raise LabError("the lab needs root (network namespaces, veths, OVS daemons)")
        ensure_packages()
        t0 = time.monotonic()
        # A crashed earlier run of this very lab would collide on names: clear it.
        if self.state_path.exists() or self._leftovers():
            LOG.info("sweeping leftovers of an earlier lab in %s", self.dir)
            Lab.load(self.dir).down()
        self.created_dir = not self.dir.exists()
        self.dir.mkdir(parents=True, exist_ok=True)
        self._state = {
            "owner_pid": os.getpid(),
            "owner_start": _start_time(os.getpid()),
            "started": time.time(),
        }
        self._save()
        try:
            self._up(timeout)
        except BaseException:
            LOG.error("lab start failed; tearing down what was created")
            with contextlib.suppress(Exception):
                self.down()
            raise
        self.timings["up"] = time.monotonic() - t0
        return self

    def _up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        self._central_started.clear()
        self._make_underlay()
        errors: list[BaseException] = []

        def guarded(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
            def run() -> None:
                try:
                    fn(*args)
                except BaseException as e:
                    errors.append(e)

            return run

        threads = [threading.Thread(target=guarded(self._start_central), name="lab-central")]
        threads += [
            threading.Thread(target=guarded(self._start_node, n), name=f"lab-{n.name}")
            for n in self.nodes
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        if any(t.is_alive() for t in threads):
            raise LabError(f"lab start did not finish within {timeout:g}s")
        if errors:
            raise errors[0]
        self._wait_ready(max(1.0, deadline - time.monotonic()))
        self._save()

    def _make_underlay(self) -> None:
        self._record("netns", self.underlay_netns)
        netns.create(self.underlay_netns)
        with _ipr(self.underlay_netns) as ipr:
            ipr.link("set", index=1, state="up")
            ipr.link("add", ifname=self.underlay_bridge, kind="bridge")
            (idx,) = ipr.link_lookup(ifname=self.underlay_bridge)
            ipr.link("set", index=idx, state="up")

    def _start_central(self) -> None:
        self._mkdir(self.central_dir)
        # The global rows exist before anyone connects: ovn-controller 23.03 segfaults
        # (NULL SB_Global) when it reaches the SB before northd wrote that row, which
        # happened in ~3 of 4 parallel starts here. northd adopts these rows.
        write_db(self.central_dir / "nb.db", NB_SCHEMA, {"NB_Global": {_uuid(): {}}})
        write_db(self.central_dir / "sb.db", SB_SCHEMA, {"SB_Global": {_uuid(): {}}})
        # NB and SB start in parallel; northd retries its connections anyway.
        try:
            self._start_daemons(
                [self.central["nb"], self.central["sb"], self.central["northd"]], "central"
            )
        finally:
            self._central_started.set()

    def _start_daemons(self, daemons: list[Daemon], owner: str) -> None:
        errors: list[BaseException] = []

        def start(d: Daemon) -> None:
            try:
                pid = d.start()
                self._record_pid(f"{owner}:{d.name}", pid)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=start, args=(d,)) for d in daemons[1:]]
        for t in threads:
            t.start()
        start(daemons[0])
        for t in threads:
            t.join(DAEMON_START_TIMEOUT + 2)
        if errors:
            raise errors[0]
        self._save()

    def _start_node(self, node: LabNode) -> None:
        rundir = Path(node.rundir)
        self._mkdir(rundir)
        node.daemons = self._node_daemons(node)
        self._record("netns", node.netns)
        netns.create(node.netns)
        # Uplink veth: node end in the node netns, peer created directly in the underlay.
        with _ipr(node.netns) as ipr:
            ipr.link("set", index=1, state="up")
            ipr.link(
                "add",
                ifname=node.uplink,
                kind="veth",
                peer={"ifname": node.underlay_port, "net_ns_fd": self.underlay_netns},
            )
            (idx,) = ipr.link_lookup(ifname=node.uplink)
            ipr.link("set", index=idx, state="up", mtu=UNDERLAY_MTU)
        with _ipr(self.underlay_netns) as ipr:
            (br,) = ipr.link_lookup(ifname=self.underlay_bridge)
            (idx,) = ipr.link_lookup(ifname=node.underlay_port)
            ipr.link("set", index=idx, master=br, state="up", mtu=UNDERLAY_MTU)

        # Everything vswitchd and ovn-controller need is in conf.db before they start:
        # br-int exists before ovn-controller (DESIGN.md).
        write_db(rundir / "conf.db", OVS_SCHEMA, self._node_config(node))
        db = node.daemons["ovsdb-server"]
        self._record_pid(f"{node.name}:ovsdb-server", db.start())
        vs = node.daemons["ovs-vswitchd"]
        self._record_pid(f"{node.name}:ovs-vswitchd", vs.start())
        # vswitchd detaches once the bridges exist: give br-phy the encap IP.
        with _ipr(node.netns) as ipr:
            idx = _wait("br-phy in " + node.netns,
                        lambda: ipr.link_lookup(ifname="br-phy"), 5.0)[0]
            ipr.link("set", index=idx, state="up", mtu=UNDERLAY_MTU)
            ipr.addr("add", index=idx, address=node.encap_ip,
                     prefixlen=UNDERLAY_NET.prefixlen)
        # SB listening first: a refused first connect costs ovn-controller a 1 s backoff.
        self._central_started.wait(DAEMON_START_TIMEOUT)
        ctl = node.daemons["ovn-controller"]
        self._record_pid(f"{node.name}:ovn-controller", ctl.start())

    def _node_config(self, node: LabNode) -> dict[str, dict[str, dict[str, Any]]]:
        """conf.db rows: what ``ovs-vsctl init``, ``set Open_vSwitch .`` and ``add-br``
        would write (system-id, ovn-remote, encap, br-int, br-phy with the uplink)."""
        bridges: dict[str, dict[str, Any]] = {}
        ports: dict[str, dict[str, Any]] = {}
        ifaces: dict[str, dict[str, Any]] = {}

        def port(name: str, kind: str = "") -> list[str]:
            iface_id, port_id = _uuid(), _uuid()
            ifaces[iface_id] = {"name": name, **({"type": kind} if kind else {})}
            ports[port_id] = {"name": name, "interfaces": ["uuid", iface_id]}
            return ["uuid", port_id]

        def bridge(name: str, *extra_ports: str, **columns: Any) -> list[str]:
            br_id = _uuid()
            members = [port(name, "internal"), *(port(p) for p in extra_ports)]
            bridges[br_id] = {
                "name": name,
                "datapath_type": "netdev",
                "ports": ["set", members],
                "other_config": _ovsdb_map({"disable-in-band": "true"}),
                **columns,
            }
            return ["uuid", br_id]

        br_int = bridge("br-int", fail_mode="secure")
        br_phy = bridge("br-phy", node.uplink)
        external_ids = {
            "system-id": node.name,
            "hostname": node.name,
            "ovn-remote": self.sb_remote,
            "ovn-encap-type": "geneve",
            "ovn-encap-ip": node.encap_ip,
            "ovn-bridge-datapath-type": "netdev",
        }
        root = {"bridges": ["set", [br_int, br_phy]], "external_ids": _ovsdb_map(external_ids)}
        return {
            "Open_vSwitch": {_uuid(): root},
            "Bridge": bridges,
            "Port": ports,
            "Interface": ifaces,
        }

    def _wait_ready(self, timeout: float) -> None:
        """Chassis registered, full tunnel mesh, underlay neighbours learned."""
        deadline = time.monotonic() + timeout
        names = {n.name for n in self.nodes}
        sbctl = [_binary("ovn-sbctl"), f"--db={self.sb_remote}", "--timeout=2",
                 "--bare", "--columns=name", "list", "Chassis"]

        def chassis_up() -> bool:
            self._check_alive()
            out = _run(sbctl, check=False, timeout=3).stdout
            return names <= set(out.split())

        _wait("every chassis in the SB", chassis_up, max(0.5, deadline - time.monotonic()))
        if len(self.nodes) > 1:
            self._parallel(
                lambda n: self._wait_tunnels(n, deadline),
                self.nodes,
            )
            # The first tunnelled packet is dropped until the tunnel neighbour is
            # learned (DESIGN.md): one underlay ping per pair learns it both ways.
            pairs = [(a, b) for a in self.nodes for b in self.nodes if a.index < b.index]
            self._parallel(lambda ab: self._warm(*ab), pairs)

    def _check_alive(self) -> None:
        """Fail at once, naming the daemon and its last log lines, if one died."""
        for owner, daemons in [("central", self.central), *((n.name, n.daemons)
                                                            for n in self.nodes)]:
            for d in daemons.values():
                if d.pid is not None and not d.alive():
                    log = next((a.split("=", 1)[1] for a in d.argv
                                if a.startswith("--log-file=")), "")
                    try:
                        tail = "".join(Path(log).read_text().splitlines(True)[-5:])
                    except OSError:
                        tail = ""
                    raise LabError(f"{owner} {d.name} (pid {d.pid}) died; {log}:\n{tail}")

    def _wait_tunnels(self, node: LabNode, deadline: float) -> None:
        want = {n.encap_ip for n in self.nodes if n is not node}

        def tunnels() -> bool:
            self._check_alive()
            out = _run(
                [_binary("ovs-vsctl"), f"--db={node.ovs_remote}", "--timeout=2", "--bare",
                 "--columns=options", "find", "Interface", "type=geneve"],
                check=False, timeout=3,
            ).stdout
            have = set(re.findall(r'remote_ip="?([0-9.]+)', out))
            return want <= have

        _wait(f"geneve tunnels on {node.name}", tunnels, max(0.5, deadline - time.monotonic()))

    def _warm(self, a: LabNode, b: LabNode) -> None:
        argv = [_binary("ping"), "-n", "-q", "-c", "1", "-W", "1", b.encap_ip]
        for _ in range(5):
            if a.exec(argv, timeout=5).returncode == 0:
                return
        raise LabError(f"underlay ping {a.name} -> {b.name} ({b.encap_ip}) fails")

    @staticmethod
    def _parallel(fn: Callable[[Any], Any], items: list[Any]) -> None:
        errors: list[BaseException] = []

        def run(item: Any) -> None:
            try:
                fn(item)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=run, args=(i,)) for i in items]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    # -- pods ----------------------------------------------------------------------

    def add_pod(
        self,
        node: str | int | LabNode,
        name: str,
        ip: str,
        mac: str,
        *,
        gateway: str | None = None,
        iface_id: str | None = None,
        iface_id_ver: str | None = None,
        mtu: int = POD_MTU,
    ) -> LabPod:
        """Create pod ``name`` on ``node``: netns + veth on br-int with iface-id set.

        ``ip`` carries its prefix length ("10.0.0.5/24"); ``iface_id`` defaults to
        ``name``. ``iface_id_ver`` (the pod UID) must match the LSP's
        ``options:iface-id-ver`` when it has one, or ovn-controller will not bind it.
        The LSP is the caller's business; see :meth:`LabPod.wait_up`.
        """
        n = self.node(node)
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,40}", name):
            raise ValueError(f"bad lab pod name {name!r}")
        if name in self.pods:
            raise LabError(f"lab pod {name!r} exists")
        iface = ipaddress.ip_interface(ip)
        iface_id = iface_id or name
        port = self._pod_port_name(name)
        pod = LabPod(lab=self, node=n.name, name=name, netns=f"{self.prefix}-pod-{name}",
                     port=port, ip=str(iface), mac=mac, iface_id=iface_id, gateway=gateway)
        with self._lock:
            self.pods[name] = pod
        self._record("netns", pod.netns)
        try:
            netns.create(pod.netns)
            with _ipr(n.netns) as ipr:
                # Peer created directly in the pod netns (faster than a move, DESIGN.md).
                ipr.link("add", ifname=port, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": pod.netns})
                (idx,) = ipr.link_lookup(ifname=port)
                ipr.link("set", index=idx, state="up", mtu=mtu)
            with _ipr(pod.netns) as ipr:
                ipr.link("set", index=1, state="up")
                (idx,) = ipr.link_lookup(ifname="eth0")
                ipr.link("set", index=idx, address=mac, mtu=mtu)
                ipr.addr("add", index=idx, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
                ipr.link("set", index=idx, state="up")
                if gateway:
                    ipr.route("add", dst="0.0.0.0/0", gateway=gateway)
            _in_netns(pod.netns, lambda: tx_checksum_off("eth0"))
            n.vsctl(
                "--", "--may-exist", "add-port", "br-int", port,
                "--", "set", "Interface", port,
                f"external_ids:iface-id={iface_id}",
                f"external_ids:attached_mac={mac}",
                f"external_ids:ip_address={iface}",
                f"external_ids:sandbox={pod.netns}",
                *([f"external_ids:iface-id-ver={iface_id_ver}"] if iface_id_ver else []),
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.del_pod(name)
            raise
        self._save()
        return pod

    def add_external_host(
        self,
        node: str | int | LabNode,
        name: str,
        ip: str,
        *,
        nic: str = "eth1",
        node_ip: str | None = None,
        extra_ips: tuple[str, ...] = (),
        mtu: int = POD_MTU,
    ) -> LabPod:
        """A host on ``node``'s physical network: its own netns, cabled to a new NIC.

        The node gets ``nic`` (a veth; ``node_ip`` on it if given, as a NIC the host
        uses), the host gets eth0 with ``ip`` plus ``extra_ips`` on lo (addresses
        "beyond" it, to test routing via a default gateway). The host has no default
        route: a reply reaches only addresses on its own network, so a pod that gets
        an answer was SNATed to a physical address. Returned as a LabPod without an
        OVS port; ``del_pod`` removes it.
        """
        n = self.node(node)
        if name in self.pods:
            raise LabError(f"lab pod {name!r} exists")
        iface = ipaddress.ip_interface(ip)
        host = LabPod(lab=self, node=n.name, name=name, netns=f"{self.prefix}-ext-{name}",
                      port=nic, ip=str(iface), mac="", iface_id="")
        with self._lock:
            self.pods[name] = host
        self._record("netns", host.netns)
        try:
            netns.create(host.netns)
            with _ipr(n.netns) as ipr:
                ipr.link("add", ifname=nic, kind="veth",
                         peer={"ifname": "eth0", "net_ns_fd": host.netns})
                (idx,) = ipr.link_lookup(ifname=nic)
                ipr.link("set", index=idx, state="up", mtu=mtu)
                if node_ip:
                    node_if = ipaddress.ip_interface(node_ip)
                    ipr.addr("add", index=idx, address=str(node_if.ip),
                             prefixlen=node_if.network.prefixlen)
            with _ipr(host.netns) as ipr:
                ipr.link("set", index=1, state="up")
                (idx,) = ipr.link_lookup(ifname="eth0")
                ipr.link("set", index=idx, mtu=mtu, state="up")
                ipr.addr("add", index=idx, address=str(iface.ip),
                         prefixlen=iface.network.prefixlen)
                host.mac = ipr.get_links(idx)[0].get_attr("IFLA_ADDRESS")
                for extra in extra_ips:
                    e = ipaddress.ip_interface(extra)
                    ipr.addr("add", index=1, address=str(e.ip), prefixlen=e.network.prefixlen)
            # Both ends may carry traffic through the userspace datapath (DESIGN.md).
            _in_netns(host.netns, lambda: tx_checksum_off("eth0"))
            _in_netns(n.netns, lambda: tx_checksum_off(nic))
        except BaseException:
            with contextlib.suppress(Exception):
                self.del_pod(name)
            raise
        self._save()
        return host

    def connect_host(self) -> str:
        """Make an address of the host netns reachable from every node; returns it.

        Lets a server run in the test process (the Kubernetes API emulator, say) be
        reached by commands run on the nodes, as an API server is from real nodes.
        A bridge ``<prefix>-hb`` in the host netns holds the address (one /24 per lab,
        chosen so concurrent labs do not clash); each node gets ``hostlink``. Idempotent.
        """
        saved = self._state.get("host_link")
        if saved:
            return str(saved["host_ip"])
        bridge = f"{self.prefix}-hb"
        with _ipr() as ipr:
            used = {ipaddress.ip_interface(f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}").network
                    for a in ipr.get_addr(family=socket.AF_INET)}
            start = int(self.prefix[len(PREFIX_BASE):], 16)
            subnet = next(
                net for k in range(250)
                if not any((net := ipaddress.ip_network(f"10.254.{(start + k) % 250 + 1}.0/24"))
                           .overlaps(u) for u in used)
            )
            host_ip = subnet.network_address + 1
            ipr.link("add", ifname=bridge, kind="bridge")
            (br,) = ipr.link_lookup(ifname=bridge)
            ipr.addr("add", index=br, address=str(host_ip), prefixlen=subnet.prefixlen)
            ipr.link("set", index=br, state="up")
            for n in self.nodes:
                host_end = f"{self.prefix}-h{n.index}"
                ipr.link("add", ifname=host_end, kind="veth",
                         peer={"ifname": "hostlink", "net_ns_fd": n.netns})
                (idx,) = ipr.link_lookup(ifname=host_end)
                ipr.link("set", index=idx, master=br, state="up")
                with _ipr(n.netns) as nipr:
                    (nidx,) = nipr.link_lookup(ifname="hostlink")
                    nipr.addr("add", index=nidx, address=str(subnet.network_address + 10 + n.index),
                              prefixlen=subnet.prefixlen)
                    nipr.link("set", index=nidx, state="up")
        with self._lock:
            self._state["host_link"] = {"subnet": str(subnet), "host_ip": str(host_ip)}
            self._save()
        return str(host_ip)

    def route_to_host(self, ip: str) -> None:
        """Let every node reach ``ip``, an address of this machine, through the host link
        (delivered locally there, so no forwarding or NAT is needed). Idempotent."""
        via = self.connect_host()
        for n in self.nodes:
            with _ipr(n.netns) as ipr:
                ipr.route("replace", dst=f"{ip}/32", gateway=via)

    def _pod_port_name(self, name: str) -> str:
        used = {p.port for p in self.pods.values()}
        for salt in range(1000):
            h = hashlib.sha1(f"{name}/{salt}".encode()).hexdigest()[:4]
            port = f"{self.prefix}-{h}"  # 15 chars: the kernel's limit
            if port not in used:
                return port
        raise LabError("no free pod port name")

    def del_pod(self, pod: str | LabPod) -> None:
        """Remove a lab pod: its servers, OVS port, veth and netns."""
        name = pod.name if isinstance(pod, LabPod) else pod
        with self._lock:
            p = self.pods.get(name)
        if p is None:
            return
        _kill_and_wait(list(p.servers.values()), STOP_TIMEOUT)
        _kill_and_wait(_pids_in_netns({p.netns}), STOP_TIMEOUT)
        self._reap()
        n = self.node(p.node)
        with contextlib.suppress(LabError):
            n.vsctl("--if-exists", "del-port", "br-int", p.port)
        with contextlib.suppress(Exception), _ipr(n.netns) as ipr:
            idx = ipr.link_lookup(ifname=p.port)
            if idx:
                ipr.link("del", index=idx[0])
        if p.netns in netns.listnetns():
            netns.remove(p.netns)
        with self._lock:
            self.pods.pop(name, None)
            res = self._state.get("resources", {})
            if p.netns in res.get("netns", []):
                res["netns"].remove(p.netns)
            self._save()

    def _reap(self) -> None:
        for pid, proc in list(self._children.items()):
            if proc.poll() is not None:
                del self._children[pid]

    def wait_port_up(self, *iface_ids: str, timeout: float = 10.0, sync: bool = True) -> None:
        """Wait until the lab pods with these iface-ids can exchange packets.

        Each port's own node must have installed its flows (OVS Interface
        ``external_ids:ovn-installed``); with ``sync`` (default) every chassis must then
        also have caught up with the NB (``ovn-nbctl --wait=hv sync``), so the *other*
        nodes know where the ports are. Without that, the first packets towards a port
        bound a moment ago on another node are sometimes lost (an ARP retry: ~1 s).
        """
        deadline = time.monotonic() + timeout
        by_id = {p.iface_id: p for p in list(self.pods.values())}
        missing = [i for i in iface_ids if i not in by_id]
        if missing:
            raise KeyError(f"no lab pod with iface-id {missing}")
        for i in iface_ids:
            by_id[i].wait_up(max(0.5, deadline - time.monotonic()))
        if sync:
            self.sync(max(0.5, deadline - time.monotonic()))

    def sync(self, timeout: float = 10.0) -> None:
        """Wait until northd and every ovn-controller have processed the NB as it is now."""
        self.nbctl("--wait=hv", "sync", timeout=timeout)

    # -- central operations ---------------------------------------------------------

    def restart_nb(self, down_for: float = 0.0) -> None:
        """Stop the NB ovsdb-server and start it again on the same socket and db."""
        nb = self.central["nb"]
        if nb.pid is not None:
            _kill_and_wait([nb.pid], STOP_TIMEOUT)
        if down_for:
            time.sleep(down_for)
        self._record_pid("central:ovsdb-server-nb", nb.start())
        self._save()

    def stop_nb(self) -> None:
        """Stop the NB ovsdb-server (``start_nb`` brings it back)."""
        nb = self.central["nb"]
        if nb.pid is not None:
            _kill_and_wait([nb.pid], STOP_TIMEOUT)

    def start_nb(self) -> None:
        nb = self.central["nb"]
        self._record_pid("central:ovsdb-server-nb", nb.start())
        self._save()

    def nbctl(self, *args: str, timeout: float = 10.0) -> str:
        """ovn-nbctl against the lab's NB (for debugging and tests' assertions)."""
        return _run([_binary("ovn-nbctl"), f"--db={self.nb_remote}",
                     f"--timeout={max(1, math.ceil(timeout))}", *args], timeout=timeout + 2).stdout

    def sbctl(self, *args: str, timeout: float = 10.0) -> str:
        return _run([_binary("ovn-sbctl"), f"--db={self.sb_remote}",
                     f"--timeout={max(1, math.ceil(timeout))}", *args], timeout=timeout + 2).stdout

    # -- status ----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Which of the lab's daemons run, per owner; ``ok`` is True if all of them do."""
        out: dict[str, Any] = {"dir": str(self.dir), "prefix": self.prefix}
        out["central"] = {d.name: d.alive() for d in self.central.values()}
        out["nodes"] = {
            n.name: {d.name: d.alive() for d in n.daemons.values()} for n in self.nodes
        }
        flags = list(out["central"].values())
        for v in out["nodes"].values():
            flags += list(v.values()) or [False]
        out["ok"] = bool(flags) and all(flags)
        out["pods"] = sorted(self.pods)
        return out

    # -- down ------------------------------------------------------------------------

    def _lab_netns(self) -> set[str]:
        recorded = set(self._state.get("resources", {}).get("netns", []))
        present = {ns for ns in netns.listnetns() if ns.startswith(self.prefix + "-")}
        return present | (recorded & set(netns.listnetns()))

    def _lab_pids(self) -> set[int]:
        """Every live process of this lab: by DIR in its cmdline or by living in its netns."""
        skip = _own_lineage()
        found: set[int] = set()
        marker = self.dir_marker
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            if pid in skip:
                continue
            if any(marker in a for a in _cmdline(pid)) and _pid_alive(pid):
                found.add(pid)
        found |= _pids_in_netns(self._lab_netns()) - skip
        return found

    def _leftovers(self) -> bool:
        return bool(self._lab_netns()) or bool(self._lab_pids())

    def down(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop everything and remove every netns, link and file the lab made.

        Safe to call twice, after a failed ``up``, or from another process via
        :meth:`load`.
        """
        t0 = time.monotonic()
        # 1. ovn-controllers leave cleanly (removing their Chassis) while SB is up.
        ctls = [
            n.daemons["ovn-controller"] for n in self.nodes
            if "ovn-controller" in n.daemons and n.daemons["ovn-controller"].alive()
        ]

        def ctl_exit(d: Daemon) -> None:
            with contextlib.suppress(LabError):
                d.appctl("exit", timeout=2.0, check=False)
            with contextlib.suppress(LabError):
                _wait(f"{d.name} {d.pid} to exit", lambda: not d.alive(), 2.0)

        self._parallel(ctl_exit, ctls)
        # 2. Every other process: recorded ones, plus a sweep by dir and netns.
        pids = set(self._state.get("resources", {}).get("pids", {}).values())
        pids |= {p.pid for p in self.central.values() if p.pid}
        for n in self.nodes:
            pids |= {d.pid for d in n.daemons.values() if d.pid}
        for p in self.pods.values():
            pids |= set(p.servers.values())
        lab_pids = self._lab_pids()
        # A recorded pid is ours only if it still carries the dir or netns (pid reuse).
        pids = {p for p in pids if p in lab_pids} | lab_pids
        _kill_and_wait(sorted(pids), timeout)
        self._reap()
        # 3. Netns (their links go with them) after deleting vswitchd's leftover taps.
        nss = self._lab_netns()
        for ns in sorted(nss):
            with contextlib.suppress(Exception), _ipr(ns) as ipr:
                # Every netdev bridge leaves a tap, not only ours (nics-to-bridge's too).
                for link in ipr.link("dump"):
                    if link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND") == "tun":
                        with contextlib.suppress(Exception):
                            ipr.link("del", index=link["index"])
        for ns in sorted(nss):
            with contextlib.suppress(FileNotFoundError):
                netns.remove(ns)
        # 4. Links with the prefix in the host netns (none are made there; sweep anyway).
        with contextlib.suppress(Exception), _ipr() as ipr:
            for link in ipr.link("dump"):
                ifname = link.get("ifname") or ""
                if ifname.startswith(self.prefix):
                    with contextlib.suppress(Exception):
                        ipr.link("del", index=link["index"])
        # 5. Files: what the lab made in DIR, and DIR itself if the lab created it.
        paths = set(self._state.get("resources", {}).get("paths", []))
        if self.dir.is_dir():
            # Without a record (lab.json lost mid-crash) remove only what is plainly ours.
            for e in self.dir.iterdir():
                if (e.name == "central" and (e / "nb.db").exists()) or (
                    re.fullmatch(r"node\d+", e.name) and (e / "conf.db").exists()
                ):
                    paths.add(e.name)
        for rel in sorted(paths):
            p = self.dir / rel
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
        for f in (STATE_FILE, STATE_FILE + ".tmp"):
            with contextlib.suppress(FileNotFoundError):
                (self.dir / f).unlink()
        if self.created_dir:
            with contextlib.suppress(OSError):
                self.dir.rmdir()
        for d in self.central.values():
            d.pid = None
        for n in self.nodes:
            n.daemons = {}
        self.pods.clear()
        self._state = {}
        self.timings["down"] = time.monotonic() - t0


def _pids_in_netns(names: set[str]) -> set[int]:
    """Processes whose network namespace is one of the named netns."""
    if not names:
        return set()
    inodes = {i for i in (_netns_inode(f"/run/netns/{n}") for n in names) if i is not None}
    if not inodes:
        return set()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            ino = _netns_inode(f"/proc/{entry}/ns/net")
            if ino in inodes and _pid_alive(int(entry)):
                found.add(int(entry))
    return found


# ----------------------------------------------------------------------------- CLI


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ovn_k8s.sandbox.lab",
        description="Start or stop a real OVS/OVN lab (central + N nodes) in a directory.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start the lab and print how to reach it")
    up.add_argument("--dir", required=True, type=Path)
    up.add_argument("--nodes", type=int, default=2)
    for name, text in (("down", "stop the lab and remove everything it made"),
                       ("status", "show which daemons of the lab run")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--dir", required=True, type=Path)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(message)s")
    try:
        if args.command == "up":
            lab = Lab(args.dir, nodes=args.nodes).up()
            info = lab.info()
            info["up_seconds"] = round(lab.timings["up"], 3)
            print(json.dumps(info, indent=2))
            print(f"# stop with: {sys.executable} -m ovn_k8s.sandbox.lab down --dir {lab.dir}",
                  file=sys.stderr)
            return 0
        if args.command == "down":
            lab = Lab.load(args.dir)
            lab.down()
            print(f"lab in {lab.dir} is down ({lab.timings['down']:.2f}s)", file=sys.stderr)
            return 0
        st = Lab.load(args.dir).status()
        print(json.dumps(st, indent=2))
        return 0 if st["ok"] else 1
    except LabError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
