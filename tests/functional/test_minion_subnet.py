"""minion-init without --minion-switch-subnet: it waits for the watcher's node annotation."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator

import pytest
from conftest import new_lab_dir
from kubernetes import client
from overlay_cli import overlay, snapshot

from ovn_k8s import annotations, ovsdb
from ovn_k8s.sandbox.apiserver import ApiServer
from ovn_k8s.sandbox.lab import Lab

pytestmark = pytest.mark.lab

CLUSTER = "10.140.0.0/16"


@pytest.fixture(scope="module")
def kube_lab(tmp_path_factory) -> Iterator[tuple[Lab, ApiServer, client.CoreV1Api]]:
    """Master on node1; node2 knows the API server through external_ids, as in the lineage."""
    d = new_lab_dir("minionsubnet")
    d.rmdir()
    lab = Lab(d, nodes=2)
    srv = None
    try:
        lab.up()
        srv = ApiServer(host=lab.connect_host())
        srv.start()
        lab.node("node2").vsctl(
            "set", "Open_vSwitch", ".",
            f"external_ids:k8s-api-server={srv.url.removeprefix('http://')}",
            f"external_ids:k8s-api-token={srv.token}")
        overlay(lab, "node1", "master-init", "--cluster-ip-subnet", CLUSTER,
                "--master-switch-subnet", "10.140.1.0/24", "--node-name", "node1")
        yield lab, srv, client.CoreV1Api(srv.api_client())
    finally:
        if srv is not None:
            srv.stop()
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def minion_init(lab: Lab, tmp_path, node: str, timeout: float) -> object:
    cni = tmp_path / "cni"
    return overlay(lab, "node2", "minion-init", "--cluster-ip-subnet", CLUSTER,
                   "--node-name", node, "--subnet-timeout", str(timeout),
                   "--cni-conf-dir", str(cni / "net.d"), "--cni-bin-dir", str(cni / "bin"),
                   check=False)


def node_body(name: str, subnet: str | None = None) -> dict:
    meta: dict = {"name": name}
    if subnet:
        meta["annotations"] = {annotations.NODE_SUBNETS: json.dumps({"default": subnet})}
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta}


def test_waits_for_the_annotation(kube_lab, tmp_path):
    lab, _, v1 = kube_lab
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.setdefault("proc", minion_init(lab, tmp_path, "node2", 30)))
    runner.start()
    # The node registers first (kubelet), the watcher annotates it later.
    v1.create_node(node_body("node2"))
    time.sleep(0.5)
    v1.patch_node("node2", {"metadata": {"annotations": {
        annotations.NODE_SUBNETS: json.dumps({"default": "10.140.2.0/24"})}}})
    runner.join(60)
    proc = result["proc"]
    assert proc.returncode == 0, proc.stderr
    nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
    try:
        switch = next(s for s in nb.rows("Logical_Switch") if s.name == "node2")
        assert switch.other_config["subnet"] == "10.140.2.0/24"
    finally:
        nb.close()


def test_times_out_with_a_clear_error(kube_lab, tmp_path):
    lab, _, v1 = kube_lab
    v1.create_node(node_body("node3"))
    nb = ovsdb.NbDb(lab.nb_remote, timeout=10)
    try:
        before = snapshot(nb)
        proc = minion_init(lab, tmp_path, "node3", 1)
        assert proc.returncode == 1
        assert "no subnet for node node3 after 1s" in proc.stderr
        assert "has no k8s.ovn.org/node-subnets annotation yet" in proc.stderr
        assert snapshot(nb) == before
    finally:
        nb.close()


def test_malformed_annotation_is_refused(kube_lab, tmp_path):
    lab, _, v1 = kube_lab
    body = node_body("node4")
    body["metadata"]["annotations"] = {annotations.NODE_SUBNETS: "10.140.4.0/24"}
    v1.create_node(body)
    start = time.monotonic()
    proc = minion_init(lab, tmp_path, "node4", 30)
    assert proc.returncode == 1
    assert "node node4: k8s.ovn.org/node-subnets is not JSON" in proc.stderr
    assert time.monotonic() - start < 15, "a malformed annotation must fail at once"


def test_token_is_required_and_never_printed(kube_lab, tmp_path):
    lab, srv, _ = kube_lab
    lab.node("node2").vsctl("set", "Open_vSwitch", ".", "external_ids:k8s-api-token=wrong")
    try:
        proc = minion_init(lab, tmp_path, "node2", 5)
    finally:
        lab.node("node2").vsctl("set", "Open_vSwitch", ".",
                                f"external_ids:k8s-api-token={srv.token}")
    assert proc.returncode == 1
    assert "refused us (401" in proc.stderr
    assert "wrong" not in proc.stderr and srv.token not in proc.stderr
