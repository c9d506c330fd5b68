"""The CNI's annotation fetch against the Kubernetes API emulator (in-process, no root)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
from kubernetes import client

from ovn_k8s.cni import spec
from ovn_k8s.cni.podnet import KubeAnnotationSource
from ovn_k8s.sandbox.apiserver import ApiServer

NS = "cni"
ANNOTATION = json.dumps({"ip_address": "10.128.1.5/24", "mac_address": "0a:58:0a:80:01:05",
                         "gateway_ip": "10.128.1.1"})


@pytest.fixture
def api(tmp_path) -> Iterator[tuple[ApiServer, client.CoreV1Api, KubeAnnotationSource]]:
    with ApiServer() as srv:
        v1 = client.CoreV1Api(srv.api_client())
        v1.create_namespace({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}})
        source = KubeAnnotationSource(srv.write_kubeconfig(tmp_path / "kubeconfig"), {})
        yield srv, v1, source


def make_pod(v1: client.CoreV1Api, name: str, annotated: bool = True) -> spec.PodRef:
    meta: dict = {"name": name}
    if annotated:
        meta["annotations"] = {"ovn": ANNOTATION}
    pod = v1.create_namespaced_pod(NS, {"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                                        "spec": {"containers": [{"name": "c", "image": "x"}]}})
    return spec.PodRef(NS, name, pod.metadata.uid)


def annotate_later(v1: client.CoreV1Api, name: str, delay: float) -> threading.Thread:
    def run() -> None:
        time.sleep(delay)  # lets the source list, find nothing and start watching
        v1.patch_namespaced_pod(name, NS, {"metadata": {"annotations": {"ovn": ANNOTATION}}})

    t = threading.Thread(target=run)
    t.start()
    return t


def test_present_annotation(api):
    _, v1, source = api
    pod = make_pod(v1, "a")
    net = source.wait(pod, 5)
    assert net.mac == "0a:58:0a:80:01:05" and net.uid == pod.uid


def test_late_annotation_arrives_through_the_watch(api):
    _, v1, source = api
    pod = make_pod(v1, "b", annotated=False)
    t = annotate_later(v1, "b", 0.5)
    start = time.monotonic()
    net = source.wait(pod, 10)
    t.join()
    assert str(net.ips[0]) == "10.128.1.5/24"
    assert time.monotonic() - start < 5


def test_gone_watch_relists(api):
    srv, v1, source = api
    pod = make_pod(v1, "c", annotated=False)
    srv.force_gone_next_watch()
    t = annotate_later(v1, "c", 0.5)
    assert source.wait(pod, 10).mac == "0a:58:0a:80:01:05"
    t.join()


def test_api_errors_are_retried_until_the_deadline(api):
    srv, v1, source = api
    pod = make_pod(v1, "d")
    srv.inject(errors=(500, 503), count=2, methods=["GET"])
    assert source.wait(pod, 10).mac == "0a:58:0a:80:01:05"


def test_timeout_names_the_pod_and_what_is_missing(api):
    _, v1, source = api
    pod = make_pod(v1, "e", annotated=False)
    start = time.monotonic()
    with pytest.raises(spec.CniError) as info:
        source.wait(pod, 1)
    assert 0.9 < time.monotonic() - start < 4
    assert info.value.code == spec.TRY_AGAIN_LATER
    assert info.value.msg == (f"pod {NS}/e: no 'ovn' annotation after 1s "
                              f"(pod {NS}/e has no 'ovn' annotation yet)")


def test_older_pod_of_the_same_name_is_not_used(api):
    _, v1, source = api
    make_pod(v1, "f")
    with pytest.raises(spec.CniError) as info:
        source.wait(spec.PodRef(NS, "f", "another-uid"), 1)
    assert "not another-uid (an older pod of that name)" in info.value.msg


def test_missing_pod(api):
    _, _, source = api
    with pytest.raises(spec.CniError) as info:
        source.wait(spec.PodRef(NS, "nope", None), 0.5)
    assert f"(pod {NS}/nope not found)" in info.value.msg


def test_refused_token_fails_at_once(api, tmp_path):
    srv, v1, _ = api
    pod = make_pod(v1, "g")
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text(srv.kubeconfig().replace(srv.token, "not-the-token"))
    start = time.monotonic()
    with pytest.raises(spec.CniError) as info:
        KubeAnnotationSource(str(bad), {}).wait(pod, 10)
    assert time.monotonic() - start < 3
    assert "refused us (401" in info.value.msg and "not-the-token" not in str(info.value.msg)


def test_malformed_annotation_fails_at_once(api):
    _, v1, source = api
    pod = make_pod(v1, "h", annotated=False)
    v1.patch_namespaced_pod("h", NS, {"metadata": {"annotations": {"ovn": "10.128.1.5/24"}}})
    with pytest.raises(spec.CniError) as info:
        source.wait(pod, 10)
    assert info.value.code == spec.INVALID_CONFIG and f"pod {NS}/h" in info.value.msg


def test_settings_from_external_ids(api):
    srv, v1, _ = api
    pod = make_pod(v1, "i")
    source = KubeAnnotationSource(None, {"k8s-api-server": srv.url.removeprefix("http://"),
                                         "k8s-api-token": srv.token})
    assert source.wait(pod, 5).mac == "0a:58:0a:80:01:05"
