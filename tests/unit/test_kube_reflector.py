"""Reflectors against the API emulator: list+watch, bookmarks, 410 and relist, dropped
watches, outages, errors, prompt stop, custom resources, and feeding the work queue."""

import logging
import threading
import time

import pytest
from kubernetes import client

from ovn_k8s.kube.reflector import (
    ADDED,
    DELETED,
    MODIFIED,
    Reflector,
    custom_reflector,
    reflector_for,
)
from ovn_k8s.kube.workqueue import WorkQueue

FAST = {"backoff_initial": 0.02, "backoff_max": 0.2}


def wait_for(cond, timeout=10.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


class Recorder:
    """A handler that keeps (type, key, resourceVersion) of every event."""

    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, etype, key, obj):
        with self.lock:
            self.events.append((etype, key, obj["metadata"]["resourceVersion"]))

    def of(self, etype=None, key=None):
        with self.lock:
            return [e for e in self.events
                    if (etype is None or e[0] == etype) and (key is None or e[1] == key)]

    def wait(self, etype, key, timeout=10.0):
        wait_for(lambda: self.of(etype, key), timeout, f"{etype} {key}")


@pytest.fixture
def v1(api):
    return client.CoreV1Api(api)


@pytest.fixture
def reflectors():
    made = []
    yield made
    for r in made:
        r.stop()


def mkpod(v1, name, ns="default", node=None, labels=None):
    spec = {"containers": [{"name": "c", "image": "i:1"}]}
    if node:
        spec["nodeName"] = node
    return v1.create_namespaced_pod(ns, {"metadata": {"name": name, "labels": labels or {}},
                                         "spec": spec})


def start(reflectors, api, resource, rec=None, **kw):
    r = reflector_for(api, resource, handler=rec, **{**FAST, **kw})
    reflectors.append(r)
    r.start()
    assert r.wait_synced(10)
    return r


def kube_records(caplog, level):
    return [r for r in caplog.records
            if r.levelno == level and r.name.startswith("ovn_k8s.kube")]


def test_list_then_watch_converges(srv, api, v1, reflectors):
    v1.create_node({"metadata": {"name": "n1"}})
    for name in ("a", "b"):
        mkpod(v1, name, node="n1")
    pods, nodes = Recorder(), Recorder()
    idle = reflector_for(api, "pods")
    assert not idle.has_synced() and not idle.wait_synced(0.01) and len(idle) == 0
    rp = start(reflectors, api, "pods", pods)
    rn = start(reflectors, api, "nodes", nodes)
    assert sorted(e[1] for e in pods.of(ADDED)) == ["default/a", "default/b"]
    assert nodes.of() == [(ADDED, "n1", rn.get("n1")["metadata"]["resourceVersion"])]
    assert rp.get("default/a")["spec"]["nodeName"] == "n1"

    c = mkpod(v1, "c")
    v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.delete_namespaced_pod("b", "default", grace_period_seconds=0)
    v1.create_node({"metadata": {"name": "n2"}})
    pods.wait(ADDED, "default/c")
    pods.wait(MODIFIED, "default/a")
    wait_for(lambda: rp.get("default/b") is None, what="b gone from the cache")
    nodes.wait(ADDED, "n2")
    assert rp.get("default/c")["metadata"]["uid"] == c.metadata.uid
    assert rp.get("default/a")["metadata"]["labels"] == {"x": "1"}
    assert pods.of(DELETED, "default/b")
    assert sorted(rp.keys()) == ["default/a", "default/c"]
    assert sorted(rn.keys()) == ["n1", "n2"]
    assert rp.status()["objects"] == 2 and rp.status()["synced"]


def test_paged_list_and_selectors(api, v1, reflectors):
    for i in range(7):
        mkpod(v1, f"p{i}", labels={"app": "web" if i % 2 else "db"})
    rec = Recorder()
    r = start(reflectors, api, "pods", rec, page_size=2,
              list_kwargs={"label_selector": "app=web"})
    assert sorted(r.keys()) == ["default/p1", "default/p3", "default/p5"]
    # Leaving the selector arrives as a DELETED event.
    v1.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"app": "db"}}})
    rec.wait(DELETED, "default/p1")
    assert "default/p1" not in r


def test_bookmarks_only_advance_the_resource_version(srv, api, v1, reflectors):
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    listed = int(r.resource_version)
    for i in range(3):
        v1.create_node({"metadata": {"name": f"n{i}"}})  # other kinds move the global rv
    target = srv.resource_version
    wait_for(lambda: int(r.resource_version) >= target, what="bookmark to catch up")
    assert int(r.resource_version) > listed
    assert r.stats["bookmarks"] >= 1
    assert rec.of() == [] and len(r) == 0
    # The next watch starts from the bookmarked version: no replay, no 410.
    srv.compact()
    srv.drop_watches(graceful=True)
    mkpod(v1, "after")
    rec.wait(ADDED, "default/after")
    assert r.stats["relists"] == 0


def test_gone_relists_and_reports_what_was_missed(srv, api, v1, reflectors, caplog):
    for name in "abc":
        mkpod(v1, name)
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    last_a = r.get("default/a")
    # The watch is down (errors) while the world changes, and the history is compacted.
    srv.inject(errors=(503,), count=None, watch=True)
    srv.drop_watches()
    wait_for(lambda: r.stats["errors"] >= 1, what="the watch to fail")
    v1.delete_namespaced_pod("a", "default", grace_period_seconds=0)
    v1.patch_namespaced_pod("b", "default", {"metadata": {"labels": {"v": "2"}}})
    mkpod(v1, "d")
    srv.compact()
    srv.clear_injections()
    rec.wait(ADDED, "default/d")
    rec.wait(DELETED, "default/a")
    rec.wait(MODIFIED, "default/b")
    assert r.stats["relists"] == 1
    assert rec.of(DELETED, "default/a")[0][2] == last_a["metadata"]["resourceVersion"]
    assert len(rec.of(key="default/c")) == 1  # unchanged: only its first ADDED
    assert sorted(r.keys()) == ["default/b", "default/c", "default/d"]
    assert r.get("default/b")["metadata"]["labels"] == {"v": "2"}
    # The watch resumes from the relist: later changes still arrive, once.
    mkpod(v1, "e")
    rec.wait(ADDED, "default/e")
    assert len(rec.of(ADDED, "default/d")) == 1
    assert len(kube_records(caplog, logging.WARNING)) == 1


def test_forced_410_with_nothing_missed_reports_nothing(srv, api, v1, reflectors):
    mkpod(v1, "a")
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    srv.force_gone_next_watch()
    srv.drop_watches(graceful=True)
    wait_for(lambda: r.stats["relists"] == 1 and r.stats["lists"] == 2, what="relist")
    mkpod(v1, "b")
    rec.wait(ADDED, "default/b")
    assert [e[:2] for e in rec.of()] == [(ADDED, "default/a"), (ADDED, "default/b")]
    assert r.stats["errors"] == 0


def test_http_410_on_the_watch_request_relists(srv, api, v1, reflectors):
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    srv.inject(errors=(410,), count=1, watch=True)
    srv.drop_watches()
    wait_for(lambda: r.stats["relists"] == 1, what="relist")
    mkpod(v1, "x")
    rec.wait(ADDED, "default/x")
    assert r.stats["errors"] == 0 and r.stats["lists"] == 2


def test_dropped_watches_lose_and_duplicate_nothing(srv, api, v1, reflectors, caplog):
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    n = 150
    writer_done = threading.Event()

    def writer():
        with srv.api_client() as c:
            w = client.CoreV1Api(c)
            for i in range(n):
                mkpod(w, f"p{i:03d}")
                if i % 3 == 0:
                    w.patch_namespaced_pod(f"p{i:03d}", "default",
                                           {"metadata": {"labels": {"m": "1"}}})
        writer_done.set()

    t = threading.Thread(target=writer)
    t.start()
    drops = 0
    while not writer_done.is_set():
        seen = len(rec.of())
        # Cut the stream mid-flight, abruptly or as a server timeout, once events flow.
        wait_for(lambda s=seen: len(rec.of()) > s or writer_done.is_set(), what="progress")
        drops += srv.drop_watches(graceful=drops % 2 == 1)
    t.join(30)
    wait_for(lambda: len(rec.of(ADDED)) == n and len(rec.of(MODIFIED)) == n // 3,
             what="every event")
    added = [e[1] for e in rec.of(ADDED)]
    assert sorted(added) == [f"default/p{i:03d}" for i in range(n)]  # each exactly once
    assert len(rec.of(MODIFIED)) == n // 3
    rvs = [int(e[2]) for e in rec.of()]
    assert rvs == sorted(rvs) and len(set(rvs)) == len(rvs)  # in order, no replays
    assert drops >= 3 and r.stats["watches"] >= 3
    assert r.stats["relists"] == 0
    assert len(r) == n


def test_api_down_for_a_while_recovers_and_logs_once(srv, api, v1, reflectors, caplog):
    caplog.set_level(logging.INFO)
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    mkpod(v1, "before")
    rec.wait(ADDED, "default/before")
    srv.stop()
    wait_for(lambda: r.stats["errors"] >= 4, what="several failed reconnects")
    srv.start()
    mkpod(v1, "after")
    rec.wait(ADDED, "default/after")
    warnings = kube_records(caplog, logging.WARNING)
    assert len(warnings) == 1, [w.getMessage() for w in warnings]
    assert "unavailable" in warnings[0].getMessage()
    recovered = [x for x in kube_records(caplog, logging.INFO) if "reachable again" in
                 x.getMessage()]
    assert len(recovered) == 1
    # urllib3's own per-attempt retry warnings are switched off by our client.
    assert not [x for x in caplog.records if x.name.startswith("urllib3")
                and x.levelno >= logging.WARNING]
    assert [e[1] for e in rec.of(ADDED)] == ["default/before", "default/after"]
    assert r.status()["outage_since"] is None


@pytest.mark.parametrize("codes", [(500,), (429,), (500, 503, 429)])
def test_errors_on_list_are_retried(srv, api, v1, reflectors, caplog, codes):
    mkpod(v1, "a")
    srv.inject(errors=codes, count=3, path="/pods", watch=False)
    rec = Recorder()
    r = start(reflectors, api, "pods", rec, backoff_max=0.1)
    assert r.stats["errors"] == 3
    assert [e[:2] for e in rec.of()] == [(ADDED, "default/a")]
    assert len(kube_records(caplog, logging.WARNING)) == 1


def test_error_event_in_stream_backs_off_and_resumes(srv, api, v1, reflectors):
    rec = Recorder()
    r = start(reflectors, api, "pods", rec)
    srv.inject(errors=(500,), count=2, watch=True)
    srv.drop_watches()
    mkpod(v1, "x")
    rec.wait(ADDED, "default/x")
    assert r.stats["errors"] >= 1
    assert r.stats["relists"] == 0


def test_handler_exception_does_not_stop_the_reflector(api, v1, reflectors, caplog):
    got = []

    def handler(etype, key, obj):
        if key == "default/bad":
            raise ValueError("boom")
        got.append(key)

    r = start(reflectors, api, "pods", handler)
    mkpod(v1, "bad")
    mkpod(v1, "good")
    wait_for(lambda: "default/good" in got, what="good pod")
    assert "default/bad" in r  # the cache is right even if a handler is not
    assert r.stats["handler_errors"] == 1
    assert "boom" in caplog.text


def test_stop_is_prompt_while_watching_and_while_backing_off(srv, api, reflectors):
    r = start(reflectors, api, "nodes", watch_timeout=600)
    t0 = time.monotonic()
    r.stop()
    assert not r.running
    assert time.monotonic() - t0 < 2.0

    r2 = start(reflectors, api, "pods", backoff_initial=5.0, backoff_max=5.0)
    srv.stop()
    wait_for(lambda: r2.stats["errors"] >= 1, what="backoff")
    t0 = time.monotonic()
    r2.stop()
    assert not r2.running
    assert time.monotonic() - t0 < 2.0


def test_custom_resources(api, reflectors):
    ext = client.ApiextensionsV1Api(api)
    ext.create_custom_resource_definition({
        "metadata": {"name": "egressips.k8s.ovn.org"},
        "spec": {"group": "k8s.ovn.org", "scope": "Cluster",
                 "names": {"plural": "egressips", "singular": "egressip", "kind": "EgressIP"},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                     "openAPIV3Schema": {"type": "object",
                                         "x-kubernetes-preserve-unknown-fields": True}}}]}})
    co = client.CustomObjectsApi(api)
    body = {"apiVersion": "k8s.ovn.org/v1", "kind": "EgressIP", "metadata": {"name": "e1"},
            "spec": {"egressIPs": ["1.2.3.4"]}}
    co.create_cluster_custom_object("k8s.ovn.org", "v1", "egressips", body)
    rec = Recorder()
    r = custom_reflector(api, "k8s.ovn.org", "v1", "egressips", handler=rec, **FAST)
    reflectors.append(r)
    r.start()
    assert r.wait_synced(10)
    assert r.get("e1")["spec"]["egressIPs"] == ["1.2.3.4"]
    co.delete_cluster_custom_object("k8s.ovn.org", "v1", "egressips", "e1")
    rec.wait(DELETED, "e1")


def test_reflector_feeds_the_work_queue_with_coalesced_keys(api, v1, reflectors):
    """The intended wiring: events enqueue keys, handlers read the cache's latest state."""
    q = WorkQueue("pods")
    r = Reflector("pods", client.CoreV1Api(api).list_pod_for_all_namespaces,
                  handler=lambda etype, key, obj: q.add(key), **FAST)
    reflectors.append(r)
    seen: dict[str, list] = {}
    gate = threading.Event()

    def handle(key):
        assert gate.wait(10)
        obj = r.get(key)
        seen.setdefault(key, []).append(obj and obj["metadata"]["labels"].get("v"))

    r.start()
    assert r.wait_synced(10)
    q.start(handle)
    mkpod(v1, "a", labels={"v": "0"})
    for i in range(1, 6):
        v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"v": str(i)}}})
    wait_for(lambda: r.get("default/a")["metadata"]["labels"]["v"] == "5", what="cache")
    gate.set()
    assert q.wait_idle(10)
    # At most the first (already taken) and one coalesced run, which saw the latest state.
    assert 1 <= len(seen["default/a"]) <= 2
    assert seen["default/a"][-1] == "5"
    q.shutdown()


def test_unknown_resource_is_an_error(api):
    with pytest.raises(ValueError, match="unknown resource"):
        reflector_for(api, "gizmos")
