"""The keyed work queue: coalescing, one worker per key, retries with backoff, batches."""

import itertools
import threading
import time

import pytest

from ovn_k8s.kube.workqueue import WorkQueue


def wait_for(cond, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


@pytest.fixture
def q():
    queue = WorkQueue("test", base_delay=0.02, max_delay=0.2)
    yield queue
    queue.shutdown(timeout=5)


def test_adds_of_one_key_coalesce(q):
    for _ in range(100):
        q.add("default/a")
    q.add("default/b")
    assert q.depth() == 2
    seen = []
    q.start(seen.append)
    assert q.wait_idle(5)
    assert sorted(seen) == ["default/a", "default/b"]
    st = q.status()
    assert st["processed"] == 2
    assert st["coalesced"] == 99
    assert st["depth"] == 0


def test_one_worker_per_key_and_readded_key_runs_again(q):
    """Four workers, a key re-added while it is being handled: never two at once for one
    key, and the re-add is handled after the first run ends."""
    running: dict[str, int] = {}
    overlap = []
    calls: list[str] = []
    lock = threading.Lock()
    entered = threading.Event()
    release = threading.Event()

    def handler(key):
        with lock:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlap.append(key)
            calls.append(key)
            first = key == "k" and calls.count("k") == 1
        if first:
            entered.set()
            assert release.wait(5)
        else:
            time.sleep(0.001)
        with lock:
            running[key] -= 1

    q.start(handler, workers=4)
    q.add("k")
    assert entered.wait(5)
    for _ in range(10):
        q.add("k")          # coalesce into one more run, after the current one
    for i in range(50):
        q.add(f"other-{i}")  # other keys still flow while "k" is held
    wait_for(lambda: sum(c.startswith("other-") for c in calls) == 50, what="other keys")
    assert calls.count("k") == 1
    release.set()
    assert q.wait_idle(5)
    assert calls.count("k") == 2
    assert overlap == []


def test_per_key_serialisation_under_contention(q):
    active: set[str] = set()
    lock = threading.Lock()
    violations = []
    done = []

    def handler(key):
        with lock:
            if key in active:
                violations.append(key)
            active.add(key)
        time.sleep(0.0005)
        with lock:
            active.discard(key)
            done.append(key)

    q.start(handler, workers=4)
    for _ in range(200):
        for k in ("a", "b", "c"):
            q.add(k)
    assert q.wait_idle(10)
    assert violations == []
    assert set(done) == {"a", "b", "c"}


def test_failures_retry_with_growing_backoff_then_succeed(q):
    attempts: list[float] = []

    def handler(key):
        attempts.append(time.monotonic())
        if len(attempts) <= 3:
            raise RuntimeError("NB not reachable")

    q.start(handler)
    q.add("default/p")
    wait_for(lambda: len(attempts) == 4, what="4 attempts")
    assert q.wait_idle(5)
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    # Lower bounds only: a loaded machine can make a gap longer, never shorter.
    for gap, minimum in zip(gaps, (0.02, 0.04, 0.08), strict=True):
        assert gap >= minimum * 0.95
    st = q.status()
    assert (st["failed"], st["retries"], st["processed"]) == (3, 3, 1)
    assert q.failures("default/p") == 0  # forgotten after the success


def test_backoff_is_capped_and_never_gives_up():
    q = WorkQueue(base_delay=0.01, max_delay=0.05, jitter=0.0)
    assert [q.delay_for(n) for n in (1, 2, 3, 4, 10, 100)] == [0.01, 0.02, 0.04, 0.05, 0.05, 0.05]
    q.shutdown()


def test_raising_handler_does_not_stop_other_keys(q, caplog):
    handled = []

    def handler(key):
        if key == "bad":
            raise ValueError("malformed annotation")
        handled.append(key)

    q.start(handler, workers=1)
    q.add("bad")
    for i in range(20):
        q.add(f"good-{i}")
    wait_for(lambda: len(handled) == 20, what="good keys")
    wait_for(lambda: q.failures("bad") >= 2, what="bad key retried")
    assert q.status()["failed"] >= 2
    assert "malformed annotation" in caplog.text


def test_lone_key_goes_at_once_and_backlog_comes_in_batches(q):
    batches: list[list[str]] = []
    gate = threading.Event()

    def handler(keys):
        batches.append(list(keys))
        if len(batches) == 1:
            assert gate.wait(5)  # a slow NB commit while more pods arrive

    q.start(batch_handler=handler, max_batch=30)
    q.add("lone")
    wait_for(lambda: len(batches) == 1, what="first batch")
    assert batches[0] == ["lone"]  # not held back waiting for company
    for i in range(70):
        q.add(f"p{i}")
    gate.set()
    assert q.wait_idle(5)
    rest = batches[1:]
    assert [len(b) for b in rest] == [30, 30, 10]
    assert sorted(k for b in rest for k in b) == sorted(f"p{i}" for i in range(70))


def test_min_interval_gathers_a_stream_but_not_a_lone_key(q):
    """Keys arriving one by one every 5 ms are handled in batches no closer than the
    interval; a key after a quiet spell goes at once."""
    starts: list[float] = []
    batches: list[list[str]] = []

    def handler(keys):
        starts.append(time.monotonic())
        batches.append(list(keys))

    q.start(batch_handler=handler, max_batch=100, min_interval=0.1)
    added = time.monotonic()
    q.add("lone")
    wait_for(lambda: batches, what="the lone key")
    assert batches[0] == ["lone"] and starts[0] - added < 0.05
    time.sleep(0.15)
    for i in range(40):  # a 200 ms stream
        q.add(f"s{i}")
        time.sleep(0.005)
    assert q.wait_idle(5)
    stream = batches[1:]
    assert sorted(k for b in stream for k in b) == sorted(f"s{i}" for i in range(40))
    assert 2 <= len(stream) <= 4, [len(b) for b in stream]
    gaps = [b - a for a, b in itertools.pairwise(starts[1:])]
    assert all(g >= 0.099 for g in gaps), gaps


def test_batch_handler_partial_failure_retries_only_failed_keys(q):
    seen: list[str] = []
    failed_once: set[str] = set()

    def handler(keys):
        seen.extend(keys)
        bad = [k for k in keys if k.endswith("7") and k not in failed_once]
        failed_once.update(bad)
        return bad

    for i in range(10):
        q.add(f"p{i}")
    q.start(batch_handler=handler, max_batch=10)
    assert q.wait_idle(5)
    assert seen.count("p7") == 2
    assert all(seen.count(f"p{i}") == 1 for i in range(10) if i != 7)
    st = q.status()
    assert (st["processed"], st["failed"]) == (10, 1)


def test_get_batch_manual_api_and_timeout():
    q = WorkQueue()
    assert q.get_batch(5, timeout=0.01) == []
    for k in "abc":
        q.add(k)
    got = q.get_batch(2)
    assert got == ["a", "b"]
    q.add("a")  # while "a" is processing: not handed out again until done
    assert q.get_batch(5) == ["c"]
    assert q.get(timeout=0.01) is None
    q.done("a")
    assert q.get(timeout=1) == "a"
    q.shutdown()


def test_add_after_wakes_a_waiting_worker():
    q = WorkQueue()
    t0 = time.monotonic()
    q.add_after("x", 0.05)
    assert q.get(timeout=5) == "x"
    assert time.monotonic() - t0 >= 0.045
    q.shutdown()


def test_shutdown_stops_workers_and_unblocks_getters():
    q = WorkQueue()
    got = []
    t = threading.Thread(target=lambda: got.append(q.get_batch(10)))
    t.start()
    q.start(lambda k: None, workers=3)
    q.shutdown(timeout=5)
    t.join(5)
    assert not t.is_alive()
    assert got == [[]]
    assert not any(w.is_alive() for w in q._workers)
    q.add("late")  # ignored, not an error
    assert q.depth() == 0


@pytest.mark.parametrize(("drain", "expected"), [(True, list("01234")), (False, ["0"])])
def test_shutdown_with_or_without_drain(drain, expected):
    q = WorkQueue()
    seen = []
    entered, gate = threading.Event(), threading.Event()

    def handler(key):
        seen.append(key)
        if key == "0":
            entered.set()
            assert gate.wait(5)

    q.start(handler)
    q.add("0")
    assert entered.wait(5)
    for k in "1234":
        q.add(k)
    t = threading.Thread(target=q.shutdown, kwargs={"drain": drain})
    t.start()
    wait_for(lambda: q._shutting_down, what="shutdown begun")
    gate.set()
    t.join(5)
    assert not t.is_alive()
    assert seen == expected
