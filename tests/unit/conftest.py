"""Fixtures shared by the unit tests that talk to the API emulator over HTTP.

A module may define its own ``srv`` (other emulator options or scope); it then takes
precedence over this one.
"""

import pytest

from ovn_k8s.kube import client as kclient
from ovn_k8s.sandbox.apiserver import ApiServer


@pytest.fixture
def srv():
    with ApiServer(bookmark_interval=0.1) as s:
        yield s


@pytest.fixture
def api(srv, tmp_path):
    # As the watcher builds it: from a kubeconfig, through our client module.
    c = kclient.api_client(kubeconfig=srv.write_kubeconfig(tmp_path / "kubeconfig"), environ={})
    yield c
    c.close()
