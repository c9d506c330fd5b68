"""The CNI daemon's pod cache and socket protocol, and the plugin front's fallback.

The cache is a real reflector on the Kubernetes API emulator; the socket is a real
unix socket served by the daemon's server. Calls that would touch the host (ADD,
DEL, CHECK on a node) are covered on the lab, in tests/functional/test_cni_daemon.py.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import threading
import time
from pathlib import Path

import pytest
from kubernetes import client

from ovn_k8s.cmd import cni as cni_cmd
from ovn_k8s.cni import server, spec, wire
from ovn_k8s.cni.spec import CniError, PodRef
from ovn_k8s.kube.reflector import reflector_for

REPO = Path(__file__).resolve().parents[2]

ANNOTATION = json.dumps({"ip_address": "10.128.1.5/24", "mac_address": "0a:58:0a:80:01:05",
                         "gateway_ip": "10.128.1.1"})


@pytest.fixture
def v1(api):
    return client.CoreV1Api(api), api


@pytest.fixture
def cache(v1):
    _, api = v1
    pods = reflector_for(api, "pods", list_kwargs={"field_selector": "spec.nodeName=node1"})
    source = server.CacheAnnotationSource(pods)
    pods.add_handler(source.notify)
    pods.start()
    assert pods.wait_synced(10)
    yield pods, source
    pods.stop()


def make_pod(v1api, name: str, node: str = "node1", annotate: bool = True) -> str:
    meta: dict = {"name": name, "namespace": "default"}
    if annotate:
        meta["annotations"] = {"ovn": ANNOTATION}
    return v1api.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "pause"}]},
    }).metadata.uid


def test_cache_returns_an_annotated_pod(v1, cache):
    v1api, _ = v1
    uid = make_pod(v1api, "a")
    _, source = cache
    net = source.wait(PodRef("default", "a", uid), 5)
    assert net.mac == "0a:58:0a:80:01:05"
    assert [str(ip) for ip in net.ips] == ["10.128.1.5/24"]


def test_cache_waits_for_a_late_annotation(v1, cache):
    v1api, _ = v1
    uid = make_pod(v1api, "late", annotate=False)
    _, source = cache
    got: dict = {}
    waiter = threading.Thread(target=lambda: got.setdefault(
        "net", source.wait(PodRef("default", "late", uid), 10)))
    waiter.start()
    v1api.patch_namespaced_pod("late", "default",
                               {"metadata": {"annotations": {"ovn": ANNOTATION}}})
    waiter.join(15)
    assert got["net"].mac == "0a:58:0a:80:01:05"


def test_cache_times_out_with_code_11_naming_the_pod(v1, cache):
    v1api, _ = v1
    uid = make_pod(v1api, "never", annotate=False)
    make_pod(v1api, "elsewhere", node="node2")
    pods, source = cache
    start = time.monotonic()
    with pytest.raises(CniError) as e:
        source.wait(PodRef("default", "never", uid), 0.5)
    assert 0.5 <= time.monotonic() - start < 3
    assert e.value.code == spec.TRY_AGAIN_LATER
    assert "pod default/never: no 'ovn' annotation after 0.5s" in e.value.msg
    assert "has no 'ovn' annotation yet" in e.value.msg
    # The field selector keeps other nodes' pods out of this node's cache.
    assert "default/elsewhere" not in pods
    with pytest.raises(CniError) as e:
        source.wait(PodRef("default", "elsewhere", None), 0.2)
    assert "not in this node's pod cache" in e.value.msg


def test_cache_rejects_an_older_pod_of_the_same_name(v1, cache):
    v1api, _ = v1
    make_pod(v1api, "old")
    _, source = cache
    with pytest.raises(CniError) as e:
        source.wait(PodRef("default", "old", "another-uid"), 0.3)
    assert "an older pod of that name" in e.value.msg


def _raw_call(path: str, data: bytes) -> bytes:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return s.makefile("rb").read()


def test_socket_is_private_and_answers_over_the_protocol(v1, cache, tmp_path):
    pods, source = cache
    path = str(tmp_path / spec.DAEMON_SOCKET_NAME)
    srv = server.serve(path, server.CniDaemon(None, pods, source))
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        answer = _raw_call(path, wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}"))
        assert answer == wire.answer(0, spec.version_info())
        # Bad input is answered by the daemon exactly as in-process (same code, msg),
        # through the front as the runtime runs it.
        for env, conf in (({"CNI_COMMAND": "ADD"}, "{"),
                          (_env("/proc/self/ns/net"), "{"),
                          (_env("/proc/self/ns/net"), '{"cniVersion": "1.0.0", "name": "n", '
                                                      '"type": "t", "mtu": true}'),
                          (_env("/nonexistent"), '{"cniVersion": "1.0.0", "name": "n", '
                                                 '"type": "t"}'),
                          (_env("/proc/self/ns/net"), '{"cniVersion": "9.9.9"}'),
                          (_env("/proc/self/ns/net"), '\udcff')):
            data = conf.encode("utf-8", "surrogateescape")
            status, out = cni_cmd.via_daemon({**env, "OVS_RUNDIR": str(tmp_path)}, data)
            assert (status, json.loads(out)) == cni_cmd.run(env, data)
            assert status == 1 and out.endswith(b"}\n") and out.count(b"\n") == 1
        # Garbage on the socket: the connection is dropped, the server keeps serving.
        for garbage in (b"not json", b"CNI1\0CNI_COMMAND=ADD", b"CNI1\0PATH=/x\0\0{}"):
            assert _raw_call(path, garbage) == b""
        status = server.CniDaemon.status(srv.cni)
        assert status["requests"] == {"VERSION-ok": 1, "ADD-error": 6}
        assert status["active"] == 0 and status["pods_synced"] is True
    finally:
        srv.shutdown()
        srv.server_close()


def test_wire_request_round_trip():
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "A=1;B=é", "CNI_NETNS": "/x=y", "CNI_IFNAME": "",
           "PATH": "/bin"}
    stdin = b'{"a": "\0 binary \xff"}'
    got_env, got_stdin = wire.decode_request(wire.encode_request(env, stdin))
    assert got_env == {k: v for k, v in env.items() if k.startswith("CNI_")}
    assert got_stdin == stdin
    assert wire.decode_request(wire.encode_request({}, b"")) == ({}, b"")


def _env(netns: str, **extra: str) -> dict[str, str]:
    return {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c" * 64, "CNI_NETNS": netns,
            "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin",
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p", **extra}


def test_front_falls_back_without_a_daemon(tmp_path):
    if not os.path.exists("/proc/self/ns/net"):
        pytest.fail("needs /proc")
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "ovn-k8s-cni-overlay"}
    # No socket file, and a stale socket file nobody listens on: both mean "no daemon".
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    for path in (tmp_path / "absent.sock", stale):
        data = json.dumps({**conf, "daemonSocket": str(path)}).encode()
        assert cni_cmd.via_daemon(_env("/proc/self/ns/net"), data) is None
    # VERSION never needs the daemon; without one, bad input is answered in-process.
    assert cni_cmd.via_daemon({"CNI_COMMAND": "VERSION"}, b"") is None
    assert cni_cmd.via_daemon({**_env("/proc/self/ns/net"), "OVS_RUNDIR": str(tmp_path)},
                              b"{") is None


def test_front_reports_code_11_when_the_daemon_drops_the_call(tmp_path):
    path = tmp_path / "mute.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def drop() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.close()  # as a daemon killed mid-call

    t = threading.Thread(target=drop)
    t.start()
    try:
        conf = {"cniVersion": "0.4.0", "name": "n", "type": "ovn-k8s-cni-overlay",
                "daemonSocket": str(path)}
        status, out = cni_cmd.via_daemon(_env("/proc/self/ns/net"), json.dumps(conf).encode())
    finally:
        t.join(5)
        listener.close()
    assert status == 1
    doc = json.loads(out)
    assert doc["code"] == spec.TRY_AGAIN_LATER and doc["cniVersion"] == "0.4.0"
    assert str(path) in doc["msg"]


def test_default_socket_follows_ovs_rundir():
    assert server.default_socket({"OVS_RUNDIR": "/x"}) == "/x/ovn-k8s-cni.sock"
    assert server.default_socket({}) == "/var/run/openvswitch/ovn-k8s-cni.sock"
    # The front's copy of the default (it does not import spec on its fast path).
    assert os.path.join(cni_cmd.DEFAULT_RUNDIR, cni_cmd.SOCKET_NAME) == server.default_socket({})


@pytest.mark.parametrize("flags", [[], ["-I", "-S"]])
def test_front_imports_only_the_stdlib(flags):
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    # What the import adds to what the interpreter (and site, if any) already loaded.
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); before = set(sys.modules); "
            "import ovn_k8s.cmd.cni; print(' '.join(sorted(set(sys.modules) - before)))")
    out = subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    added = set(out.split())
    assert {m for m in added if m.startswith("ovn_k8s")} == {
        "ovn_k8s", "ovn_k8s.cmd", "ovn_k8s.cmd.cni", "ovn_k8s.cni", "ovn_k8s.cni.wire"}
    assert not added & {"logging", "ipaddress", "dataclasses", "pyroute2", "ovs", "kubernetes",
                        "ovsdbapp", "urllib3", "socket", "typing", "json", "re", "enum", "os"}
