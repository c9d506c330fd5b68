"""The CNI plugin through its node daemon (`ovn-k8s-cni-overlay daemon`), on the lab.

The daemon runs detached in each node's netns, as the systemd unit runs it; the
plugin run per call (and to start the daemon) is the compiled front, as minion-init
installs it where a C compiler is (ovn_k8s.cni.install). The scenarios of test_cni.py
are reused as they are (their helpers and bodies), with the daemon up; the daemon's
``status`` counts prove the calls went through it and not the in-process fallback.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import test_cni as base
from test_cni import Cluster, cluster  # noqa: F401 - the module's fixture, reused

from ovn_k8s.cni import install
from ovn_k8s.sandbox.lab import Lab

pytestmark = pytest.mark.lab

NAME = "ovn-k8s-cni-overlay"
NODES = ("node1", "node2")


def appctl(lab: Lab, node: str, *args: str) -> str:
    proc = lab.node(node).exec(["ovs-appctl", "-t", NAME, *args], timeout=15)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def status(lab: Lab, node: str) -> dict:
    return json.loads(appctl(lab, node, "status"))


def pidfile(lab: Lab, node: str) -> Path:
    return Path(lab.node(node).env["OVS_RUNDIR"]) / f"{NAME}.pid"


def socket_path(lab: Lab, node: str) -> Path:
    return Path(lab.node(node).env["OVS_RUNDIR"]) / "ovn-k8s-cni.sock"


def start_daemon(c: Cluster, node: str, *flags: str) -> None:
    log = Path(c.log_file).with_name(f"daemon-{node}.log")
    proc = c.lab.node(node).exec(
        [base.PLUGIN, "daemon", "--node-name", node, "--kubeconfig", c.kubeconfig,
         "--pidfile", "--detach", "--no-chdir", f"--log-file={log}", "-vconsole:off",
         "-vfile:info", *flags], timeout=60)
    assert proc.returncode == 0, proc.stderr
    # --detach returns once the socket is bound and unixctl answers.
    wait_serving(c, node)


def wait_serving(c: Cluster, node: str, restarted: bool = False) -> None:
    deadline = time.monotonic() + 20
    # A monitor's restart gives no signal like --detach's: the new pidfile comes before
    # the socket is bound. "status" is served only once it is.
    while restarted and c.lab.node(node).exec(["ovs-appctl", "-t", NAME, "status"],
                                              timeout=15).returncode != 0:
        assert time.monotonic() < deadline, "the restarted daemon never served"
        time.sleep(0.05)
    assert socket_path(c.lab, node).is_socket()
    assert os.stat(socket_path(c.lab, node)).st_mode & 0o777 == 0o600
    while not status(c.lab, node)["pods_synced"]:
        assert time.monotonic() < deadline, "the daemon's pod cache never synced"
        time.sleep(0.05)


def stop_daemon(c: Cluster, node: str) -> None:
    path = pidfile(c.lab, node)
    if not path.exists():
        return
    pid = int(path.read_text().split()[0])
    if not os.path.exists(f"/proc/{pid}"):
        path.unlink()  # left by a killed daemon nobody restarted
        return
    if c.lab.node(node).exec(["ovs-appctl", "-t", NAME, "exit"], timeout=15).returncode:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"daemon {pid} did not exit"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def daemons(cluster: Cluster, tmp_path_factory) -> Iterator[Cluster]:  # noqa: F811
    top = tmp_path_factory.mktemp("cni")
    install.install(top / "net.d", top / "bin", base.MTU, front="c")
    launcher, base.PLUGIN = base.PLUGIN, str(top / "bin" / install.PLUGIN)
    try:
        for node in NODES:
            start_daemon(cluster, node)
        yield cluster
    finally:
        for node in NODES:
            stop_daemon(cluster, node)
        base.PLUGIN = launcher


def counts(c: Cluster, node: str) -> dict[str, int]:
    return status(c.lab, node)["requests"]


def test_add_ping_tcp_and_delete_through_the_daemon(daemons):
    c = daemons
    before = {n: counts(c, n) for n in NODES}
    base.test_add_on_two_nodes_then_ping_tcp_and_delete_twice(c)
    for node in NODES:
        after = counts(c, node)
        assert after.get("ADD-ok", 0) - before[node].get("ADD-ok", 0) == 1, after
        # DEL twice: both succeed, both through the daemon.
        assert after.get("DEL-ok", 0) - before[node].get("DEL-ok", 0) == 2, after


def test_del_then_add_again_at_once(daemons):
    """The daemon answers DEL once OVSDB has dropped the port, and leaves the veth
    (and its replica's catching up) until it has answered: an ADD of the same
    container straight after (over the socket from here, no process start in
    between) must wait for that, then wire the pod again."""
    from ovn_k8s.cmd import cni as front  # noqa: PLC0415

    c = daemons
    pod = base.new_pod(c, "node1")
    env = {"CNI_CONTAINERID": pod.container_id, "CNI_NETNS": pod.path, "CNI_IFNAME": "eth0",
           "CNI_PATH": "/opt/cni/bin",
           "CNI_ARGS": f"K8S_POD_NAMESPACE={c.namespace};K8S_POD_NAME={pod.name};"
                       f"K8S_POD_UID={pod.uid}", **c.lab.node("node1").env}
    conf = json.dumps(base.config(c)).encode()

    def call(command: str) -> dict | None:
        answer = front.via_daemon({**env, "CNI_COMMAND": command}, conf)
        assert answer is not None and answer[0] == 0, answer
        return json.loads(answer[1]) if answer[1] else None

    for _ in range(5):
        result = call("ADD")
        assert result is not None
        base.assert_pod_wired(c, pod, result)
        assert call("DEL") is None
        assert pod.host_end not in base.ovs_ports(c, "node1")
    base.assert_gone(c, pod)
    assert status(c.lab, "node1")["requests"].get("ADD-error", 0) == 0


def test_plugin_installed_from_a_container_works_while_the_daemon_runs(daemons, tmp_path):
    """The node DaemonSet installs the plugin from its container, so the host has no
    such Python: with the daemon up, ADD, CHECK and DEL work all the same."""
    c = daemons
    plugin = tmp_path / install.PLUGIN
    plugin.write_bytes(install.compiled_front(python="/nonexistent/bin/python3"))
    plugin.chmod(0o755)
    pod = base.new_pod(c, "node1")
    before = counts(c, "node1")
    status_, result, err = base.cni(c, pod, "ADD", plugin=str(plugin))
    assert status_ == 0, err
    base.assert_pod_wired(c, pod, result)
    status_, out, err = base.cni(c, pod, "CHECK", base.config(c, prevResult=result),
                                 plugin=str(plugin))
    assert (status_, out) == (0, None), err
    status_, out, err = base.cni(c, pod, "DEL", plugin=str(plugin))
    assert (status_, out) == (0, None), err
    base.assert_gone(c, pod)
    after = counts(c, "node1")
    for key in ("ADD-ok", "CHECK-ok", "DEL-ok"):
        assert after.get(key, 0) == before.get(key, 0) + 1, (key, after)


def test_annotation_arriving_late_through_the_cache(daemons):
    c = daemons
    before = counts(c, "node1").get("ADD-ok", 0)
    base.test_annotation_arriving_late(c)
    assert counts(c, "node1").get("ADD-ok", 0) == before + 1


def test_check_and_result_versions_through_the_daemon(daemons):
    base.test_check_passes_then_names_what_changed(daemons)
    for version in ("0.3.1", "0.4.0", "1.0.0"):
        base.test_result_per_spec_version(daemons, version)


def test_parallel_adds_through_the_daemon(daemons):
    base.test_parallel_adds_on_one_node(daemons)


def test_no_annotation_times_out_with_code_11_and_leaves_nothing(daemons):
    c = daemons
    pod = base.new_pod(c, "node2", annotate=False)
    links_before, ports_before = base.node_links(c, "node2"), base.ovs_ports(c, "node2")
    # Another pod's ADD is not held up by the one waiting.
    other = base.new_pod(c, "node2")
    done: dict = {}
    waiter = threading.Thread(target=lambda: done.setdefault(
        "r", base.cni(c, pod, "ADD", base.config(c, annotationTimeout=3))))
    start = time.monotonic()
    waiter.start()
    try:
        base.assert_pod_wired(c, other, base.add(c, other))
        assert waiter.is_alive(), done
    finally:
        waiter.join(30)
    assert time.monotonic() - start < 15
    status_, out, _ = done["r"]
    assert status_ == 1 and out["code"] == 11, out
    assert f"pod {c.namespace}/{pod.name}: no 'ovn' annotation after 3s" in out["msg"]
    assert "has no 'ovn' annotation yet" in out["msg"]
    base.delete(c, other)
    assert base.node_links(c, "node2") == links_before
    assert base.ovs_ports(c, "node2") == ports_before
    assert base.pod_links(pod) == {"lo"}
    assert counts(c, "node2").get("ADD-error", 0) >= 1
    log = Path(c.log_file).with_name("daemon-node2.log").read_text()
    assert c.srv.token not in log


def test_killed_daemon_falls_back_in_process(daemons):
    c = daemons
    pid = int(pidfile(c.lab, "node1").read_text().split()[0])
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    # The stale socket file stays: connecting to it is refused, the plugin works alone.
    assert socket_path(c.lab, "node1").exists()
    try:
        pod = base.new_pod(c, "node1")
        base.assert_pod_wired(c, pod, base.add(c, pod))
        assert f"ADD {c.namespace}/{pod.name}" in Path(c.log_file).read_text()
        base.delete(c, pod)
        base.assert_gone(c, pod)
    finally:
        pidfile(c.lab, "node1").unlink(missing_ok=True)
        start_daemon(c, "node1")
    pod = base.new_pod(c, "node1")
    base.assert_pod_wired(c, pod, base.add(c, pod))
    assert counts(c, "node1").get("ADD-ok") == 1  # the restarted daemon's
    base.delete(c, pod)


def test_status_and_socket_option(daemons):
    c = daemons
    st = status(c.lab, "node2")
    assert st["pods_synced"] is True
    assert st["active"] == 0
    assert st["pods_cached"] >= 1
    assert set(st["requests"]) <= {"ADD-ok", "ADD-error", "DEL-ok", "DEL-error",
                                   "CHECK-ok", "CHECK-error"}
    # A daemonSocket in the config that nothing listens on: the plugin works alone.
    pod = base.new_pod(c, "node2")
    before = counts(c, "node2")
    result = base.add(c, pod, daemonSocket=str(socket_path(c.lab, "node2")) + ".none")
    base.assert_pod_wired(c, pod, result)
    assert counts(c, "node2") == before
    base.delete(c, pod)


def test_request_log_file_gets_the_calls_lines(daemons, tmp_path):
    c = daemons
    pod = base.new_pod(c, "node1")
    log = tmp_path / "this-call.log"
    before = counts(c, "node1").get("ADD-ok", 0)
    base.assert_pod_wired(c, pod, base.add(c, pod, logFile=str(log)))
    assert counts(c, "node1").get("ADD-ok", 0) == before + 1
    lines = log.read_text().splitlines()
    # The plugin process's format: pid, command, container id, level, logger.
    assert any(f" ADD {pod.container_id[:12]} INFO ovn_k8s.cni.plugin: ADD "
               f"{c.namespace}/{pod.name}: eth0" in line for line in lines), lines
    assert c.srv.token not in log.read_text()
    # A logFile that cannot be opened: code 7 from the daemon, as in-process, nothing made.
    other = base.new_pod(c, "node1")
    status_, out, _ = base.cni(c, other, "ADD", base.config(c, logFile=str(tmp_path / "no" / "x")))
    assert status_ == 1 and out["code"] == 7 and "logFile" in out["msg"], out
    assert base.pod_links(other) == {"lo"}
    base.delete(c, pod)


def test_other_ovs_remote_is_honoured(daemons):
    """A config naming another Open_vSwitch database than the daemon's: the port is
    written there (node2's database, from node1's daemon), and an unreachable one
    gets code 11 naming it, as in-process."""
    c = daemons
    pod = base.new_pod(c, "node1")
    node2_db = f"unix:{c.lab.node('node2').env['OVS_RUNDIR']}/db.sock"
    before = counts(c, "node1")
    status_, result, err = base.cni(c, pod, "ADD", base.config(c, ovsRemote=node2_db))
    assert status_ == 0, (result, err)
    assert counts(c, "node1").get("ADD-ok", 0) == before.get("ADD-ok", 0) + 1
    assert pod.host_end in base.ovs_ports(c, "node2")
    assert pod.host_end not in base.ovs_ports(c, "node1")
    assert base.iface_ids(c, "node2", pod.host_end)["iface-id"] == f"{c.namespace}_{pod.name}"
    status_, out, err = base.cni(c, pod, "DEL", base.config(c, ovsRemote=node2_db))
    assert (status_, out) == (0, None), err
    assert pod.host_end not in base.ovs_ports(c, "node2")
    assert pod.host_end not in base.node_links(c, "node1")
    base.test_del_with_ovs_unreachable_asks_to_try_again(c, Path(c.log_file).parent)
    assert counts(c, "node1").get("DEL-error", 0) == before.get("DEL-error", 0) + 1


def test_other_kubeconfig_is_honoured(daemons, tmp_path):
    """A config naming another kubeconfig than the daemon's: the pod is read with it
    (here a refused token: code 11 from the API), not from the daemon's cache."""
    before = counts(daemons, "node1").get("ADD-error", 0)
    base.test_refused_token_fails_fast_and_is_never_shown(daemons, tmp_path)
    assert counts(daemons, "node1").get("ADD-error", 0) == before + 1
    # The same file as the daemon's, spelled differently: the cache serves it.
    pod = base.new_pod(daemons, "node1")
    spelled = str(Path(daemons.kubeconfig).parent / "." / Path(daemons.kubeconfig).name)
    base.assert_pod_wired(daemons, pod, base.add(daemons, pod, kubeconfig=spelled))
    base.delete(daemons, pod)


def _parent(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while os.path.exists(f"/proc/{pid}"):
        assert time.monotonic() < deadline, f"process {pid} is still there"
        time.sleep(0.05)


def test_monitor_restarts_a_killed_daemon_and_exit_stops_it(daemons):
    c = daemons
    stop_daemon(c, "node1")
    start_daemon(c, "node1", "--monitor")
    try:
        child = int(pidfile(c.lab, "node1").read_text().split()[0])
        monitor = _parent(child)
        assert "daemon" in Path(f"/proc/{monitor}/cmdline").read_text()
        os.kill(child, signal.SIGKILL)
        _wait_gone(child)
        deadline = time.monotonic() + 20
        while True:
            text = pidfile(c.lab, "node1").read_text() if pidfile(c.lab, "node1").exists() else ""
            if text and int(text.split()[0]) != child and os.path.exists(
                    f"/proc/{int(text.split()[0])}"):
                break
            assert time.monotonic() < deadline, "the monitor did not restart the daemon"
            time.sleep(0.1)
        restarted = int(text.split()[0])
        assert _parent(restarted) == monitor
        wait_serving(c, "node1", restarted=True)
        pod = base.new_pod(c, "node1")
        base.assert_pod_wired(c, pod, base.add(c, pod))
        assert counts(c, "node1").get("ADD-ok") == 1  # the restarted daemon's
        base.delete(c, pod)
        base.assert_gone(c, pod)
        appctl(c.lab, "node1", "exit")
        _wait_gone(restarted)
        _wait_gone(monitor)
        assert not pidfile(c.lab, "node1").exists()
    finally:
        stop_daemon(c, "node1")
        start_daemon(c, "node1")
