"""The CNI protocol (spec 1.0.0, results also in 0.3.x/0.4.0): input, errors, results.

Standard library only: VERSION and every malformed-input error must answer without
importing netlink, OVSDB or Kubernetes code (kubelet runs one process per call).
Everything a caller passes in is checked here before the plugin touches the host.
"""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

CURRENT_VERSION = "1.0.0"
# 0.1.0/0.2.0 results have another shape (ip4/ip6); no runtime we target sends them.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
CHECK_MIN_VERSION = "0.4.0"
COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")

# Error codes from the spec; 100+ are ours.
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
CHECK_FAILED = 100
INTERNAL = 999  # libcni's ErrInternal, for errors we did not foresee

DEFAULT_MTU = 1400
DEFAULT_ANNOTATION_TIMEOUT = 30.0
DEFAULT_OVN_INSTALLED_TIMEOUT = 30.0
PRIMARY_IFNAME = "eth0"

IFNAMSIZ = 16
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
_K8S_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")

NS_GET_NSTYPE = 0xB703  # ioctl on a namespace fd, linux/nsfs.h
CLONE_NEWNET = 0x40000000


class CniError(Exception):
    """An error the runtime gets as ``{"code", "msg", "details"}`` on stdout."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str = CURRENT_VERSION) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def version_info() -> dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


@dataclass(frozen=True)
class Dns:
    nameservers: tuple[str, ...] = ()
    domain: str = ""
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.nameservers:
            out["nameservers"] = list(self.nameservers)
        if self.domain:
            out["domain"] = self.domain
        if self.search:
            out["search"] = list(self.search)
        if self.options:
            out["options"] = list(self.options)
        return out


@dataclass(frozen=True)
class NetConf:
    """The network config from stdin: the spec's fields plus ours (all optional).

    Ours: ``mtu``, ``kubeconfig``, ``logFile``, ``annotationTimeout`` (s),
    ``ovsRemote`` (default: the local ``$OVS_RUNDIR/db.sock``), ``waitOvnInstalled``,
    ``ovnInstalledTimeout`` (s), ``defaultRoute`` (default: only on ``eth0``, so a
    Multus secondary network leaves the pod's default route alone), ``daemonSocket``
    (the node daemon's socket; default ``$OVS_RUNDIR/ovn-k8s-cni.sock``).
    """

    cni_version: str
    name: str
    type: str
    raw: dict[str, Any]
    prev_result: dict[str, Any] | None = None
    dns: Dns = field(default_factory=Dns)
    mtu: int = DEFAULT_MTU
    kubeconfig: str | None = None
    log_file: str | None = None
    annotation_timeout: float = DEFAULT_ANNOTATION_TIMEOUT
    ovs_remote: str | None = None
    wait_ovn_installed: bool = False
    ovn_installed_timeout: float = DEFAULT_OVN_INSTALLED_TIMEOUT
    default_route: bool | None = None
    daemon_socket: str | None = None


@dataclass(frozen=True)
class PodRef:
    namespace: str
    name: str
    uid: str | None

    @property
    def iface_id(self) -> str:
        """The LSP name and OVS ``iface-id`` (DESIGN.md)."""
        return f"{self.namespace}_{self.name}"

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Request:
    command: str
    container_id: str
    netns: str | None
    ifname: str
    args: dict[str, str]
    path: tuple[str, ...]
    conf: NetConf | None  # None only for VERSION

    @property
    def pod(self) -> PodRef | None:
        ns, name = self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")
        if not ns or not name:
            return None
        return PodRef(ns, name, self.args.get("K8S_POD_UID") or None)

    @property
    def wants_default_route(self) -> bool:
        assert self.conf is not None
        if self.conf.default_route is not None:
            return self.conf.default_route
        return self.ifname == PRIMARY_IFNAME


def log_format(req: Request) -> str:
    """The ``logging`` format of a call's lines in its ``logFile``."""
    return (f"%(asctime)s %(process)d {req.command} {req.container_id[:12]} "
            "%(levelname)s %(name)s: %(message)s")


def open_log(path: str) -> TextIO:
    """The config's ``logFile``, for appending; CniError 7 if it cannot be opened."""
    try:
        return open(path, "a", encoding="utf-8")
    except OSError as e:
        raise CniError(INVALID_CONFIG, f"network config: logFile {path}: {e.strerror}") \
            from None


def work_bound(req: Request) -> float:
    """Seconds a call may take at most: its waits, plus a connection to an ``ovsRemote``."""
    assert req.conf is not None
    bound = req.conf.annotation_timeout + 10.0
    if req.conf.wait_ovn_installed:
        bound += req.conf.ovn_installed_timeout
    return bound


# ------------------------------------------------------------------- environment


def check_ifname(name: str) -> None:
    """The kernel's (and the spec's) rules for an interface name."""
    if not name:
        raise CniError(INVALID_ENVIRONMENT, "CNI_IFNAME is empty")
    if len(name.encode()) >= IFNAMSIZ:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_IFNAME {name!r} is longer than {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_IFNAME {name!r} is not a valid interface name "
                       "(no '/', ':', whitespace, '.' or '..')")


def check_container_id(cid: str) -> None:
    if not cid:
        raise CniError(INVALID_ENVIRONMENT, "CNI_CONTAINERID is empty")
    if not _NAME_RE.fullmatch(cid):
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_CONTAINERID {cid!r} must start with a letter or digit and hold "
                       "only letters, digits, '_', '.' and '-'")


def check_netns(path: str) -> None:
    """``path`` must be a network namespace (an nsfs file of type net), not just a file.

    A bind-mounted netns has the nsfs device of ``/proc/self/ns/net``; NS_GET_NSTYPE
    then tells a net namespace from a mount or pid one.
    """
    if not os.path.isabs(path):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path!r} is not an absolute path")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path} does not exist") from None
    except OSError as e:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path}: {e.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or st.st_dev != os.stat("/proc/self/ns/net").st_dev:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path} is not a network namespace")
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as e:
        if e.errno not in (errno.ENOTTY, errno.EINVAL):  # kernels before 4.11
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {path}: {e.strerror}") from None
        nstype = CLONE_NEWNET
    finally:
        os.close(fd)
    if nstype != CLONE_NEWNET:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_NETNS {path} is a namespace, but not a network namespace")


def parse_args(text: str) -> dict[str, str]:
    """``CNI_ARGS``: ``K1=V1;K2=V2``."""
    out: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise CniError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS: {part!r} is not KEY=VALUE", details=f"CNI_ARGS={text}")
        out[key] = value
    return out


def _check_pod_args(args: Mapping[str, str]) -> None:
    for key in ("K8S_POD_NAMESPACE", "K8S_POD_NAME"):
        value = args.get(key)
        if not value:
            raise CniError(INVALID_ENVIRONMENT,
                           f"CNI_ARGS has no {key}: the plugin wires Kubernetes pods only")
        if len(value) > 253 or not _K8S_NAME_RE.fullmatch(value):
            raise CniError(INVALID_ENVIRONMENT, f"CNI_ARGS {key}={value!r} is not a valid name")


# ------------------------------------------------------------------------ config


def _bad(msg: str) -> CniError:
    return CniError(INVALID_CONFIG, msg)


def _opt(raw: Mapping[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = raw.get(key)
    if value is None:
        return None
    # bool is an int in Python; a config saying "mtu": true is still wrong.
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,))):
        raise _bad(f"network config: {key!r} must be {what}, got {json.dumps(value)}")
    return value


def _seconds(raw: Mapping[str, Any], key: str, default: float) -> float:
    value = _opt(raw, key, (int, float), "a number of seconds")
    if value is None:
        return default
    if not 0 < value <= 3600:
        raise _bad(f"network config: {key!r} must be in (0, 3600] seconds, got {value}")
    return float(value)


def _strings(value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _bad(f"network config: {key!r} must be a list of strings")
    return tuple(value)


def _dns(raw: Any) -> Dns:
    if raw is None:
        return Dns()
    if not isinstance(raw, dict):
        raise _bad("network config: 'dns' must be an object")
    servers = _strings(raw.get("nameservers"), "dns.nameservers")
    for s in servers:
        try:
            ipaddress.ip_address(s)
        except ValueError:
            raise _bad(f"network config: dns nameserver {s!r} is not an IP address") from None
    domain = raw.get("domain") or ""
    if not isinstance(domain, str):
        raise _bad("network config: 'dns.domain' must be a string")
    return Dns(servers, domain, _strings(raw.get("search"), "dns.search"),
               _strings(raw.get("options"), "dns.options"))


def version_of(stdin: bytes | str) -> str:
    """The caller's cniVersion for an error reply, when the config says one we know."""
    try:
        version = json.loads(stdin).get("cniVersion")
    except (ValueError, AttributeError, UnicodeDecodeError):
        return CURRENT_VERSION
    return version if version in SUPPORTED_VERSIONS else CURRENT_VERSION


DAEMON_SOCKET_NAME = "ovn-k8s-cni.sock"


def daemon_socket(conf: NetConf | None, environ: Mapping[str, str]) -> str:
    """Where the node's CNI daemon listens: the config's ``daemonSocket``, else
    ``$OVS_RUNDIR/ovn-k8s-cni.sock`` (the daemon's default too)."""
    if conf is not None and conf.daemon_socket:
        return conf.daemon_socket
    return os.path.join(environ.get("OVS_RUNDIR") or "/var/run/openvswitch",
                        DAEMON_SOCKET_NAME)


def parse_config(data: bytes | str) -> NetConf:
    """The network config on stdin: a plugin's entry (a conflist's entry carries the
    list's ``cniVersion`` and ``name`` and maybe a ``prevResult``)."""
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CniError(DECODE_FAILURE, "network config on stdin is not valid JSON",
                       details=str(e)) from None
    if not isinstance(raw, dict):
        raise _bad(f"network config must be a JSON object, got {type(raw).__name__}")
    version = _opt(raw, "cniVersion", str, "a string")
    if not version:
        raise _bad("network config has no 'cniVersion'")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(INCOMPATIBLE_VERSION,
                       f"CNI version {version} is not supported",
                       details=f"supported: {', '.join(SUPPORTED_VERSIONS)}")
    name = _opt(raw, "name", str, "a string")
    if not name or not _NAME_RE.fullmatch(name):
        raise _bad("network config: 'name' is missing or not a valid network name")
    plugin_type = _opt(raw, "type", str, "a string")
    if not plugin_type:
        raise _bad("network config has no 'type'")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise _bad("network config: 'prevResult' must be an object")
    mtu = _opt(raw, "mtu", int, "an integer")
    if mtu is not None and not 576 <= mtu <= 65535:
        raise _bad(f"network config: 'mtu' {mtu} is not in 576..65535")
    remote = _opt(raw, "ovsRemote", str, "an OVSDB remote string")
    if remote is not None and not remote.startswith(("unix:", "tcp:", "ssl:")):
        raise _bad(f"network config: 'ovsRemote' {remote!r} is not unix:, tcp: or ssl:")
    return NetConf(
        cni_version=version,
        name=name,
        type=plugin_type,
        raw=raw,
        prev_result=prev,
        dns=_dns(raw.get("dns")),
        mtu=DEFAULT_MTU if mtu is None else mtu,
        kubeconfig=_opt(raw, "kubeconfig", str, "a file path"),
        log_file=_opt(raw, "logFile", str, "a file path"),
        annotation_timeout=_seconds(raw, "annotationTimeout", DEFAULT_ANNOTATION_TIMEOUT),
        ovs_remote=remote,
        wait_ovn_installed=bool(_opt(raw, "waitOvnInstalled", bool, "true or false")),
        ovn_installed_timeout=_seconds(raw, "ovnInstalledTimeout",
                                       DEFAULT_OVN_INSTALLED_TIMEOUT),
        default_route=_opt(raw, "defaultRoute", bool, "true or false"),
        daemon_socket=_opt(raw, "daemonSocket", str, "a socket path"),
    )


def parse_request(environ: Mapping[str, str], stdin: bytes | str) -> Request:
    """Everything the runtime handed us, checked; raises CniError on the first problem."""
    command = environ.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(INVALID_ENVIRONMENT,
                       f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}"
                       if command else "CNI_COMMAND is not set")
    if command == "VERSION":
        return Request(command, "", None, "", {}, (), None)
    cid = environ.get("CNI_CONTAINERID", "")
    check_container_id(cid)
    ifname = environ.get("CNI_IFNAME", "")
    check_ifname(ifname)
    args = parse_args(environ.get("CNI_ARGS", ""))
    netns = environ.get("CNI_NETNS") or None
    if command in ("ADD", "CHECK"):
        if netns is None:
            raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS is required for {command}")
        check_netns(netns)
        _check_pod_args(args)
    conf = parse_config(stdin)
    if command == "CHECK":
        if version_tuple(conf.cni_version) < version_tuple(CHECK_MIN_VERSION):
            raise CniError(INCOMPATIBLE_VERSION,
                           f"CNI version {conf.cni_version} does not allow CHECK")
        if conf.prev_result is None:
            raise _bad("CHECK needs 'prevResult' in the network config")
    path = tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p)
    return Request(command, cid, netns, ifname, args, path, conf)


# ----------------------------------------------------------------------- results


@dataclass(frozen=True)
class Interface:
    name: str
    mac: str
    sandbox: str | None = None


@dataclass(frozen=True)
class IpConfig:
    address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    interface: int


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Network | ipaddress.IPv6Network
    gw: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def build_result(
    cni_version: str,
    interfaces: list[Interface],
    ips: list[IpConfig],
    routes: list[Route],
    dns: Dns,
    prev_result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A result in ``cni_version``'s shape; ours appended to ``prev_result``'s, so a plugin
    chained before us keeps what it reported (interface indexes shift accordingly)."""
    prev = dict(prev_result or {})
    prev_ifaces = list(prev.get("interfaces") or [])
    base = len(prev_ifaces)
    out_ifaces = prev_ifaces + [
        {"name": i.name, "mac": i.mac, **({"sandbox": i.sandbox} if i.sandbox else {})}
        for i in interfaces
    ]
    out_ips = list(prev.get("ips") or [])
    for ip in ips:
        entry: dict[str, Any] = {}
        if version_tuple(cni_version) < (1, 0, 0):
            entry["version"] = str(ip.address.version)
        entry["address"] = str(ip.address)
        if ip.gateway is not None:
            entry["gateway"] = str(ip.gateway)
        entry["interface"] = base + ip.interface
        out_ips.append(entry)
    out_routes = list(prev.get("routes") or []) + [
        {"dst": str(r.dst), **({"gw": str(r.gw)} if r.gw is not None else {})} for r in routes
    ]
    result: dict[str, Any] = {"cniVersion": cni_version, "interfaces": out_ifaces,
                              "ips": out_ips}
    if out_routes:
        result["routes"] = out_routes
    merged_dns = {**(prev.get("dns") or {}), **dns.to_json()}
    if merged_dns:
        result["dns"] = merged_dns
    return result
