"""Watches on the API emulator: from a version, initial state, bookmarks, timeouts, 410 and
relist, selectors, the test hooks, and many concurrent watchers."""

import http.client
import json
import threading
import time
import urllib.parse

import pytest
import urllib3
from kubernetes import client, watch

from ovn_k8s.sandbox.apiserver import ApiServer


@pytest.fixture
def srv():
    with ApiServer(bookmark_interval=0.3) as s:
        yield s


@pytest.fixture
def v1(srv):
    with srv.api_client() as c:
        yield client.CoreV1Api(c)


def mkpod(v1, name, ns="default", labels=None):
    return v1.create_namespaced_pod(ns, {
        "metadata": {"name": name, "labels": labels or {}},
        "spec": {"containers": [{"name": "c", "image": "i:1"}]}})


class RawWatch:
    """A watch read straight off the wire: one JSON event per line of a chunked body."""

    def __init__(self, srv, path, timeout=10, **query):
        q = {"watch": "true", **{k: str(v).lower() if isinstance(v, bool) else str(v)
                                 for k, v in query.items()}}
        self.conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout)
        self.conn.request("GET", f"{path}?{urllib.parse.urlencode(q)}",
                          headers={"Authorization": f"Bearer {srv.token}"})
        self.resp = self.conn.getresponse()
        assert self.resp.status == 200, self.resp.read()
        assert self.resp.getheader("Transfer-Encoding") == "chunked"

    def next(self):
        line = self.resp.readline()
        return json.loads(line) if line else None

    def take(self, n):
        return [self.next() for _ in range(n)]

    def close(self):
        self.conn.close()


def summary(events):
    return [(e["type"], e["object"]["metadata"].get("name"),
             e["object"]["metadata"]["resourceVersion"]) for e in events]


def test_watch_from_version_with_official_watch(v1):
    start = v1.list_namespaced_pod("default").metadata.resource_version
    a = mkpod(v1, "a")
    m = v1.patch_namespaced_pod("a", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.delete_namespaced_pod("a", "default")
    w = watch.Watch()
    got = []
    for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=start,
                       timeout_seconds=5):
        got.append((ev["type"], ev["object"].metadata.name,
                    ev["object"].metadata.resource_version))
        if len(got) == 3:
            w.stop()
    assert [g[0] for g in got] == ["ADDED", "MODIFIED", "DELETED"]
    assert got[0][2] == a.metadata.resource_version
    assert got[1][2] == m.metadata.resource_version
    assert int(got[2][2]) > int(got[1][2])  # a deletion carries its own version
    assert w.resource_version == got[2][2]


def test_bound_pod_deletion_is_seen_as_terminating_then_deleted(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    v1.create_namespaced_pod("default", {"metadata": {"name": "p"}, "spec": {
        "nodeName": "n1", "containers": [{"name": "c", "image": "i"}]}})
    v1.delete_namespaced_pod("p", "default")  # the emulated kubelet confirms at once
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    evs = rw.take(4)
    assert [e["type"] for e in evs] == ["ADDED", "MODIFIED", "MODIFIED", "DELETED"]
    assert evs[1]["object"]["metadata"]["deletionGracePeriodSeconds"] == 30
    assert evs[3]["object"]["metadata"]["deletionGracePeriodSeconds"] == 0
    rw.close()


def test_server_restart_cuts_watches_and_keeps_state(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    srv.stop()
    try:
        assert rw.next() is None  # the stream is cut
    except (http.client.HTTPException, ConnectionError):
        pass
    srv.start()
    mkpod(v1, "after-restart")
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    assert rw.next()["object"]["metadata"]["name"] == "after-restart"
    rw.close()


def test_watch_without_version_starts_with_current_state(srv, v1):
    mkpod(v1, "a")
    mkpod(v1, "b")
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods")
    first = rw.take(2)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in first] == [
        ("ADDED", "a"), ("ADDED", "b")]
    mkpod(v1, "c")
    assert rw.next()["object"]["metadata"]["name"] == "c"
    rw.close()


def test_watch_scope_namespace_and_kind(srv, v1):
    rv = v1.list_pod_for_all_namespaces().metadata.resource_version
    v1.create_namespace({"metadata": {"name": "other"}})
    ns_watch = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    all_watch = RawWatch(srv, "/api/v1/pods", resourceVersion=rv)
    mkpod(v1, "x", ns="other")
    v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    mkpod(v1, "y")
    assert summary([ns_watch.next()])[0][:2] == ("ADDED", "y")
    assert [e["object"]["metadata"]["name"] for e in all_watch.take(2)] == ["x", "y"]
    ns_watch.close()
    all_watch.close()


def test_legacy_watch_path_and_single_object(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/watch/namespaces/default/pods/b", resourceVersion=rv)
    mkpod(v1, "a")
    mkpod(v1, "b")
    ev = rw.next()
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "b")
    rw.close()


def test_bookmarks(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv,
                  allowWatchBookmarks=True)
    cm = v1.create_namespaced_config_map("default", {"metadata": {"name": "cm"}})
    ev = rw.next()
    assert ev["type"] == "BOOKMARK"
    assert ev["object"]["kind"] == "Pod" and ev["object"]["apiVersion"] == "v1"
    # Unrelated writes still move the bookmark forward.
    assert int(ev["object"]["metadata"]["resourceVersion"]) >= int(cm.metadata.resource_version)
    rw.close()
    # The official Watch records the bookmark's version for its own resumption.
    w = watch.Watch()
    for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=rv,
                       allow_watch_bookmarks=True, timeout_seconds=5):
        assert ev["type"] == "BOOKMARK"
        w.stop()
    assert int(w.resource_version) >= int(cm.metadata.resource_version)


def test_no_bookmarks_unless_asked(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv,
                  timeoutSeconds=1)
    assert rw.next() is None  # the stream just ends at the timeout
    rw.close()


def test_timeout_ends_stream_with_a_bookmark():
    with ApiServer(bookmark_interval=60) as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        rv = v1.list_namespaced_pod("default").metadata.resource_version
        t = time.monotonic()
        rw = RawWatch(s, "/api/v1/namespaces/default/pods", resourceVersion=rv,
                      timeoutSeconds=1, allowWatchBookmarks=True)
        ev = rw.next()
        assert ev["type"] == "BOOKMARK"
        assert rw.next() is None
        assert 0.9 <= time.monotonic() - t < 3
        rw.close()


def test_send_initial_events(srv, v1):
    mkpod(v1, "a")
    mkpod(v1, "b")
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", sendInitialEvents=True,
                  resourceVersionMatch="NotOlderThan", allowWatchBookmarks=True)
    evs = rw.take(3)
    assert [e["type"] for e in evs] == ["ADDED", "ADDED", "BOOKMARK"]
    assert evs[2]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    mkpod(v1, "c")
    nxt = rw.next()
    while nxt["type"] == "BOOKMARK":
        nxt = rw.next()
    assert nxt["object"]["metadata"]["name"] == "c"
    rw.close()
    with pytest.raises(client.ApiException) as e:
        v1.list_namespaced_pod("default", watch=True, send_initial_events=True,
                               resource_version_match="NotOlderThan")
    assert e.value.status == 422


def test_label_selector_transitions(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv,
                  labelSelector="app=web")
    mkpod(v1, "p", labels={"app": "db"})
    v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "web"}}})
    v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"x": "1"}}})
    v1.patch_namespaced_pod("p", "default", {"metadata": {"labels": {"app": "db"}}})
    v1.delete_namespaced_pod("p", "default")
    mkpod(v1, "end", labels={"app": "web"})
    evs = rw.take(4)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in evs] == [
        ("ADDED", "p"), ("MODIFIED", "p"), ("DELETED", "p"), ("ADDED", "end")]
    # Leaving the selector shows the last matching state, at the version of the change.
    assert evs[2]["object"]["metadata"]["labels"]["app"] == "web"
    assert int(evs[2]["object"]["metadata"]["resourceVersion"]) > int(
        evs[1]["object"]["metadata"]["resourceVersion"])
    rw.close()


def test_field_selector_watch_sees_binding(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/pods", resourceVersion=rv, fieldSelector="spec.nodeName=n1")
    mkpod(v1, "p")
    v1.create_namespaced_pod_binding("p", "default", {
        "metadata": {"name": "p"}, "target": {"kind": "Node", "name": "n1"}},
        _preload_content=False)
    ev = rw.next()
    assert (ev["type"], ev["object"]["spec"]["nodeName"]) == ("ADDED", "n1")
    rw.close()


def test_watch_from_future_version_waits_for_it(srv, v1):
    rv = int(v1.list_namespaced_pod("default").metadata.resource_version)
    threading.Timer(0.3, mkpod, (v1, "later")).start()
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv + 1)
    mkpod(v1, "after")
    assert rw.next()["object"]["metadata"]["name"] == "after"
    rw.close()


# ---- 410 and relist ---------------------------------------------------------------------------

def test_too_old_version_gets_410_error_event():
    with ApiServer(watch_window=5) as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        old = v1.list_namespaced_config_map("default").metadata.resource_version
        for i in range(10):
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        rw = RawWatch(s, "/api/v1/namespaces/default/configmaps", resourceVersion=old)
        ev = rw.next()
        assert ev["type"] == "ERROR"
        st = ev["object"]
        assert (st["kind"], st["code"], st["reason"]) == ("Status", 410, "Expired")
        assert st["message"].startswith(f"too old resource version: {old} (")
        assert rw.next() is None
        rw.close()
        # The official Watch retries once from the same version, then raises 410.
        with pytest.raises(client.ApiException) as e:
            for _ in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                          resource_version=old):
                pass
        assert e.value.status == 410


def test_relist_after_410_loses_nothing():
    """The reflector pattern: list, watch, on 410 relist and watch from the new list."""
    with ApiServer(watch_window=3) as s, s.api_client() as c:
        v1 = client.CoreV1Api(c)
        cache = {}
        lst = v1.list_namespaced_config_map("default")
        cache.update({x.metadata.name: x.metadata.resource_version for x in lst.items})
        rv = lst.metadata.resource_version
        for i in range(8):  # more than the window while "disconnected"
            v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"}})
        relists = 0
        while True:
            try:
                for ev in watch.Watch().stream(v1.list_namespaced_config_map, "default",
                                               resource_version=rv, timeout_seconds=1):
                    cache[ev["object"].metadata.name] = ev["object"].metadata.resource_version
                    rv = ev["object"].metadata.resource_version
                break
            except client.ApiException as e:
                assert e.status == 410
                relists += 1
                lst = v1.list_namespaced_config_map("default")
                cache = {x.metadata.name: x.metadata.resource_version for x in lst.items}
                rv = lst.metadata.resource_version
        assert relists == 1
        assert sorted(cache) == [f"c{i}" for i in range(8)]


def test_force_gone_and_compact(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    srv.force_gone_next_watch()
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    assert rw.next()["object"]["code"] == 410
    rw.close()
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    mkpod(v1, "a")
    assert rw.next()["type"] == "ADDED"
    rw.close()
    srv.compact()
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
    assert rw.next()["object"]["reason"] == "Expired"
    rw.close()
    # Watching from the newest version is fine right after a compaction.
    now = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=now)
    mkpod(v1, "b")
    assert rw.next()["object"]["metadata"]["name"] == "b"
    rw.close()


# ---- hooks: drops, pause, injected failures ---------------------------------------------------

def test_drop_watches_abrupt(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    errors = []
    started = threading.Event()

    def run():
        try:
            for _ in watch.Watch().stream(v1.list_namespaced_pod, "default", resource_version=rv):
                pass
        except (urllib3.exceptions.ProtocolError, client.ApiException) as e:
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    deadline = time.monotonic() + 5
    while not srv._watches and time.monotonic() < deadline:
        time.sleep(0.01)
    started.set()
    assert srv.drop_watches() == 1
    t.join(5)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], urllib3.exceptions.ProtocolError)


def test_drop_watches_graceful_resumes_without_loss(srv, v1):
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    seen = []
    w = watch.Watch()

    def run():
        for ev in w.stream(v1.list_namespaced_pod, "default", resource_version=rv):
            seen.append(ev["object"].metadata.name)
            if len(seen) == 4:
                w.stop()

    t = threading.Thread(target=run)
    t.start()
    mkpod(v1, "a")
    mkpod(v1, "b")
    deadline = time.monotonic() + 5
    while len(seen) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.drop_watches(graceful=True) == 1
    mkpod(v1, "c")   # written while the client reconnects
    mkpod(v1, "d")
    t.join(5)
    assert seen == ["a", "b", "c", "d"]


def test_pause_and_resume(srv, v1):
    srv.pause()
    with pytest.raises((urllib3.exceptions.ReadTimeoutError, urllib3.exceptions.MaxRetryError)):
        v1.list_namespace(_request_timeout=0.3)
    done = []
    t = threading.Thread(target=lambda: done.append(v1.list_namespace(_request_timeout=5)))
    t.start()
    time.sleep(0.2)
    assert not done
    srv.resume()
    t.join(5)
    assert done and done[0].items


def test_injected_errors_and_latency(srv, v1):
    srv.inject([500, 429], count=2, methods=["POST"])
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
    assert e.value.status == 500
    assert json.loads(e.value.body)["reason"] == "InternalError"
    with pytest.raises(client.ApiException) as e:
        v1.create_namespaced_config_map("default", {"metadata": {"name": "x"}})
    assert e.value.status == 429
    assert e.value.headers["Retry-After"] == "1"
    assert json.loads(e.value.body)["details"]["retryAfterSeconds"] == 1
    v1.create_namespaced_config_map("default", {"metadata": {"name": "x"}})  # count used up
    srv.inject(latency=0.3, count=1)
    t = time.monotonic()
    v1.list_namespace()
    assert time.monotonic() - t >= 0.3
    srv.inject([500], count=None, methods=["DELETE"], path="/configmaps")
    assert len(v1.list_namespaced_config_map("default").items) == 1
    for _ in range(2):
        with pytest.raises(client.ApiException) as e:
            v1.delete_namespaced_config_map("x", "default")
        assert e.value.status == 500
    srv.clear_injections()
    v1.delete_namespaced_config_map("x", "default")
    srv.inject([500], watch=True)
    v1.list_namespace()
    with pytest.raises(client.ApiException) as e:
        v1.list_namespace(watch=True, timeout_seconds=1)
    assert e.value.status == 500


def test_reads_retry_after_429(srv, v1):
    # urllib3 (under the official client) retries idempotent requests answered 429 or 503
    # with Retry-After, as it would against a real apiserver shedding load.
    srv.inject([429], count=1)
    t = time.monotonic()
    assert v1.list_namespace().items
    assert time.monotonic() - t >= 0.9


# ---- scale ------------------------------------------------------------------------------------

def test_fifty_watchers_get_every_event_once_in_order(srv):
    with srv.api_client() as c:
        v1 = client.CoreV1Api(c)
        rv = v1.list_namespaced_config_map("default").metadata.resource_version
    results: dict[int, list] = {}
    ready = threading.Barrier(51)

    def watcher(i):
        with srv.api_client() as c:
            api = client.CoreV1Api(c)
            out = []
            w = watch.Watch()
            ready.wait()
            for ev in w.stream(api.list_namespaced_config_map, "default", resource_version=rv,
                               deserialize=False, timeout_seconds=30):
                meta = ev["object"]["metadata"]
                out.append((ev["type"], meta["name"], meta["resourceVersion"]))
                if ev["type"] == "DELETED" and meta["name"] == "last":
                    w.stop()
            results[i] = out

    threads = [threading.Thread(target=watcher, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    ready.wait()
    expected = []
    for i in range(40):
        o = v1.create_namespaced_config_map("default", {"metadata": {"name": f"c{i}"},
                                                        "data": {"v": "0"}})
        expected.append(("ADDED", o.metadata.name, o.metadata.resource_version))
        if i % 2:
            o = v1.patch_namespaced_config_map(f"c{i}", "default", {"data": {"v": "1"}})
            expected.append(("MODIFIED", o.metadata.name, o.metadata.resource_version))
    v1.create_namespaced_config_map("default", {"metadata": {"name": "last"}})
    v1.delete_namespaced_config_map("last", "default")
    for t in threads:
        t.join(30)
    assert len(results) == 50
    for out in results.values():
        assert out[:len(expected)] == expected
        assert [e[0] for e in out[len(expected):]] == ["ADDED", "DELETED"]
        rvs = [int(e[2]) for e in out]
        assert rvs == sorted(set(rvs))


def test_each_event_carries_its_own_write_as_the_reply_did(srv, v1):
    # A write is serialised once and those bytes serve the reply and every watch: each
    # event must still be that write's object, not a later one.
    mkpod(v1, "shared")
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    watches = [RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv)
               for _ in range(2)]
    pool = urllib3.HTTPConnectionPool("127.0.0.1", srv.port, maxsize=1)
    replies = []
    for i in range(20):
        r = pool.request("PATCH", "/api/v1/namespaces/default/pods/shared",
                         body=json.dumps({"metadata": {"annotations": {"ovn": str(i)}}}),
                         headers={"Authorization": f"Bearer {srv.token}",
                                  "Content-Type": "application/merge-patch+json"})
        assert r.status == 200
        replies.append(json.loads(r.data))
    for rw in watches:
        events = rw.take(20)
        assert [e["type"] for e in events] == ["MODIFIED"] * 20
        assert [e["object"] for e in events] == replies
        assert [e["object"]["metadata"]["annotations"]["ovn"] for e in events] == [
            str(i) for i in range(20)]
        rw.close()
    pool.close()


def test_bookmarks_keep_coming_between_writes(srv, v1):
    # One timer per watch, re-armed after each bookmark: writes in between must neither
    # stop the bookmarks nor be held back by them.
    rv = v1.list_namespaced_pod("default").metadata.resource_version
    rw = RawWatch(srv, "/api/v1/namespaces/default/pods", resourceVersion=rv,
                  allowWatchBookmarks=True)
    t = time.monotonic()
    assert rw.next()["type"] == "BOOKMARK"
    mkpod(v1, "between")
    ev = rw.next()
    while ev["type"] == "BOOKMARK":
        ev = rw.next()
    assert (ev["type"], ev["object"]["metadata"]["name"]) == ("ADDED", "between")
    assert rw.next()["type"] == "BOOKMARK"
    assert rw.next()["type"] == "BOOKMARK"
    assert time.monotonic() - t < 5
    rw.close()
