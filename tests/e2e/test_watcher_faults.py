"""The watcher under faults: kill -9 mid-storm, lost watches and 410s, an NB restart."""

from __future__ import annotations

import threading
import time

import pytest
import urllib3
from kubernetes.client.rest import ApiException
from watcher_env import make_node, make_pod, wait_converged, wait_for, watcher_env

from ovn_k8s import translate


@pytest.fixture(scope="module")
def env():
    yield from watcher_env()


@pytest.fixture(scope="module")
def nodes(env):
    _, _, v1, _, _ = env
    # 4 nodes: kubelet's 110-pod default is far below a /24, but this storm is not.
    names = ("node1", "node2", "node3", "node4")
    for node in names:
        make_node(v1, node)
    return names


class Storm(threading.Thread):
    """Create ``count`` pods in the background, spread over ``nodes``.

    A create whose connection the emulator cut (dropped watches) is retried, as a
    controller would; 409 on the retry means the first one landed.
    """

    def __init__(self, v1, prefix: str, count: int, nodes) -> None:
        super().__init__()
        self.v1, self.prefix, self.count, self.nodes = v1, prefix, count, nodes
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            for i in range(self.count):
                self._create(f"{self.prefix}-{i}", self.nodes[i % len(self.nodes)])
        except BaseException as e:
            self.error = e

    def _create(self, name: str, node: str) -> None:
        for attempt in range(5):
            try:
                make_pod(self.v1, name, node)
                return
            except ApiException as e:
                if e.status == 409 and attempt:
                    return
                raise
            except urllib3.exceptions.HTTPError:
                time.sleep(0.1)
        raise AssertionError(f"could not create {name}")

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        assert self.error is None, f"pod storm failed: {self.error!r}"


def storm(v1, prefix: str, count: int, nodes) -> Storm:
    return Storm(v1, prefix, count, nodes)


def test_kill_9_mid_storm_then_restart(env, nodes):
    _, _, v1, watcher, nb = env
    creating = storm(v1, "k9", 500, nodes)
    wait_for(lambda: len(translate.owned_pod_ports(nb)) >= 120, 60, "some ports")
    watcher.kill()
    creating.join()
    # While it is down: pods go and come.
    for i in range(0, 40, 2):
        v1.delete_namespaced_pod(f"k9-{i}", "default", grace_period_seconds=0)
    for i in range(20):
        make_pod(v1, f"k9-late-{i}", nodes[i % len(nodes)])
    watcher.start()
    wait_converged(v1, nb)


def test_lost_watches_and_410(env, nodes):
    _, srv, v1, _, nb = env
    creating = storm(v1, "w410", 150, nodes)
    wait_for(lambda: any(k.startswith("default/w410-") for k in translate.owned_pod_ports(nb)),
             30, "the storm to start")
    srv.drop_watches()
    srv.compact()  # re-watching from the old version gets 410 Gone: relist and diff
    for i in range(0, 20, 2):
        v1.delete_namespaced_pod(f"k9-{i + 1}", "default", grace_period_seconds=0)
    srv.force_gone_next_watch(2)
    srv.drop_watches(graceful=True)
    creating.join()
    wait_converged(v1, nb)


def test_nb_restart_during_storm(env, nodes):
    lab, _, v1, _, nb = env
    creating = storm(v1, "nbr", 200, nodes)
    wait_for(lambda: any(k.startswith("default/nbr-") for k in translate.owned_pod_ports(nb)),
             30, "the storm to start")
    lab.restart_nb(down_for=1.0)
    creating.join()
    wait_converged(v1, nb, timeout=90)
