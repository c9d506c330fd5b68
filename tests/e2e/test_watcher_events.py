"""Which Kubernetes events the watcher acts on; its own environment, so that its
counters see only this module's objects."""

from __future__ import annotations

import time

import pytest
from watcher_env import lsp, make_node, make_pod, node_subnet, pod_network, wait_for, watcher_env


@pytest.fixture(scope="module")
def env():
    yield from watcher_env()


def test_updates_that_change_nothing_we_act_on_are_not_handled(env):
    """Our own annotation coming back, kubelet's status writes and label edits cost no
    handling; an update that makes a pod terminal does."""
    _, _, v1, watcher, nb = env
    names = [f"quiet-upd-{i}" for i in range(20)]
    make_node(v1, "node1")
    wait_for(lambda: node_subnet(v1, "node1") is not None, what="a subnet")
    wait_for(watcher.idle, what="the watcher to settle")
    before = watcher.status()["pods"]["batched_keys"]
    for name in names:
        make_pod(v1, name, "node1")
    wait_for(lambda: all(pod_network(v1, n) is not None for n in names), 30, "annotations")
    wait_for(watcher.idle, what="the watcher to settle")
    assert watcher.status()["pods"]["batched_keys"] - before == len(names)
    for name in names:
        v1.patch_namespaced_pod(name, "default", {"metadata": {"labels": {"tier": "x"}}})
        v1.patch_namespaced_pod_status(name, "default", {"status": {"phase": "Running"}})
    time.sleep(1.0)
    assert watcher.status()["pods"]["batched_keys"] - before == len(names)
    v1.patch_namespaced_pod_status(names[0], "default", {"status": {"phase": "Succeeded"}})
    wait_for(lambda: lsp(nb, names[0]) is None, what="the finished pod's port removed")
    assert lsp(nb, names[1]) is not None
