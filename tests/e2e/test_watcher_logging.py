"""The watcher's log levels: ``-v``/``vlog/set`` decide what is written, and records no
destination would write are not even built (the Python loggers' level follows vlog)."""

from __future__ import annotations

import pytest
from watcher_env import lb_vips, wait_for, watcher_env

from ovn_k8s import topology

TCP_LB = topology.cluster_lb_name("tcp")


@pytest.fixture(scope="module")
def env():
    yield from watcher_env(nodes=1)


def debug_lines(log: str) -> int:
    return sum(" | DBG | " in line for line in log.splitlines())


def service_written(env, name: str) -> None:
    _, _, v1, _, nb = env
    svc = v1.create_namespaced_service("default", {"metadata": {"name": name}, "spec": {
        "ports": [{"port": 80, "protocol": "TCP"}]}})
    wait_for(lambda: f"{svc.spec.cluster_ip}:80" in lb_vips(nb, TCP_LB), what=f"{name}'s VIP")


def test_vlog_set_moves_what_is_logged(env):
    _, _, _, watcher, _ = env  # started with -vfile:info
    service_written(env, "quiet")
    assert debug_lines(watcher.log()) == 0
    watcher.appctl("vlog/set", "file:dbg")
    service_written(env, "chatty")  # ovsdbapp logs the transaction's commands at debug
    wait_for(lambda: debug_lines(watcher.log()) > 0, what="debug lines after vlog/set")
    watcher.appctl("vlog/set", "file:info")
    before = debug_lines(watcher.log())
    service_written(env, "quiet-again")
    assert debug_lines(watcher.log()) == before
