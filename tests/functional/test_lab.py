"""The lab itself: real packets between pods on two nodes, and a clean ``down``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from ovn_k8s import ovsdb
from ovn_k8s.sandbox.lab import Lab, lab_prefix

pytestmark = pytest.mark.lab

REPO = Path(__file__).resolve().parents[2]


def _chassis_of(lab: Lab, iface_id: str) -> str:
    uuid = lab.sbctl("--bare", "--columns=chassis", "find", "Port_Binding",
                     f"logical_port={iface_id}").strip()
    return lab.sbctl("get", "Chassis", uuid, "name").strip().strip('"')


def test_ping_and_tcp_across_geneve(lab, make_pod):
    a = make_pod("node1", "lab-a", "10.99.0.5/24", "0a:58:0a:63:00:05", iface_id="lab_a")
    b = make_pod("node2", "lab-b", "10.99.0.6/24", "0a:58:0a:63:00:06", iface_id="lab_b")
    nb = ovsdb.connect_nb(lab.nb_remote, timeout=10.0)
    try:
        with nb.transaction() as txn:
            txn.add(nb.api.ls_add("lab-sw"))
            for pod in (a, b):
                txn.add(nb.api.lsp_add("lab-sw", pod.iface_id,
                                       addresses=[f"{pod.mac} {pod.address}"]))
        # Flows installed on each port's node, and every chassis caught up with NB.
        lab.wait_port_up("lab_a", "lab_b", timeout=10)
        # Bound on different chassis: the packets below must cross the geneve tunnel.
        assert _chassis_of(lab, "lab_a") == "node1"
        assert _chassis_of(lab, "lab_b") == "node2"

        # The very first packet must make it (the lab warms the tunnel neighbours).
        assert a.ping(b.address, count=1, timeout=2)
        assert b.ping(a.address, count=3, timeout=2)

        b.serve_tcp(8080)
        a.serve_tcp(9090)
        assert a.tcp_check(b.address, 8080)
        assert b.tcp_check(a.address, 9090)
        # Negative control: nothing listens there, so the check must fail.
        assert not a.tcp_check(b.address, 8081, timeout=1)
    finally:
        with nb.transaction() as txn:
            txn.add(nb.api.ls_del("lab-sw", if_exists=True))
        nb.close()


def _host_links(prefix: str) -> list[str]:
    with IPRoute() as ipr:
        return [n for n in (link.get("ifname") for link in ipr.link("dump"))
                if n and n.startswith(prefix)]


def _procs_with(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            if marker.encode() in cmd:
                found.append(f"{entry}: {cmd.decode(errors='replace')}")
    return found


def test_down_from_another_process_leaves_nothing(lab_dir):
    prefix = lab_prefix(lab_dir)
    lab = Lab(lab_dir, nodes=2)

    def failing_test() -> None:
        lab.up()
        pod = lab.add_pod("node2", "orphan", "10.98.0.5/24", "0a:58:0a:62:00:05")
        pod.serve_tcp(7070)
        raise RuntimeError("simulated failure midway; the lab is left up")

    with pytest.raises(RuntimeError, match="simulated failure"):
        failing_test()
    # Really up, with a pod and its server process, when the test "failed".
    state = json.loads((lab_dir / "lab.json").read_text())
    assert state["pods"]["orphan"]["servers"]
    assert _procs_with(str(lab_dir))
    assert [ns for ns in netns.listnetns() if ns.startswith(prefix)]

    down = subprocess.run(
        [sys.executable, "-m", "ovn_k8s.sandbox.lab", "down", "--dir", str(lab_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=30, check=False,
    )
    assert down.returncode == 0, down.stderr

    assert _procs_with(str(lab_dir)) == []
    pgrep = subprocess.run(["pgrep", "-af", str(lab_dir)], capture_output=True, text=True,
                           check=False)
    assert pgrep.stdout == ""
    assert [ns for ns in netns.listnetns() if ns.startswith(prefix)] == []
    assert _host_links(prefix) == []
    assert not lab_dir.exists(), sorted(p.name for p in lab_dir.rglob("*"))
