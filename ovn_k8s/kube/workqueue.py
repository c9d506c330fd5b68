"""A keyed work queue, in the manner of client-go's rate-limited workqueue.

The queue holds keys, not events: adding a key that is already waiting is a no-op, so a
burst of updates to one object is handled once, and the handler reads the object's current
state from the reflector cache. A key is handed to at most one worker at a time; adding it
while it is being processed marks it dirty, and it is queued again when `done()`.
A failed key is requeued after a per-key exponential delay (capped) and counted; it is
never dropped, and `forget()` (on success) resets its delay.

`get_batch(n)` returns at once with whatever is waiting (at least one key), so a lone event
is handled immediately while, under load, keys pile up during a slow commit and the next
call takes many of them for one NB transaction.

The requeue delay is computed here rather than with tenacity: tenacity drives a blocking
retry loop around one call, whereas a failed key must leave the worker free for other keys
until its delay expires.
"""

from __future__ import annotations

import collections
import heapq
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

log = logging.getLogger(__name__)

KeyHandler = Callable[[str], None]
# Takes the keys of one batch; returns the keys that failed (None or empty: all succeeded).
# Raising means the whole batch failed.
BatchHandler = Callable[[list[str]], Iterable[str] | None]


class WorkQueue:
    """Keys waiting for work; see the module docstring for the guarantees."""

    def __init__(self, name: str = "queue", *, base_delay: float = 0.05,
                 max_delay: float = 30.0, jitter: float = 0.1) -> None:
        self.name = name
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self._cond = threading.Condition()
        self._queue: collections.deque[str] = collections.deque()
        self._dirty: set[str] = set()        # waiting to be handed out (in _queue or not)
        self._processing: set[str] = set()   # handed out, not done yet
        self._delayed: list[tuple[float, int, str]] = []  # heap of (due, seq, key)
        self._seq = 0
        self._failures: dict[str, int] = {}
        self._shutting_down = False
        self._drain = False
        self._workers: list[threading.Thread] = []
        self.counters: dict[str, int] = dict.fromkeys(
            ("added", "coalesced", "processed", "failed", "retries"), 0)

    # ---- producer side ----------------------------------------------------------------

    def add(self, key: str) -> None:
        """Queue `key` unless it is already waiting. Ignored after shutdown()."""
        with self._cond:
            self._add_locked(key)

    def _add_locked(self, key: str) -> None:
        if self._shutting_down:
            return
        if key in self._dirty:
            self.counters["coalesced"] += 1
            return
        self.counters["added"] += 1
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._cond.notify()

    def add_after(self, key: str, delay: float) -> None:
        """Queue `key` once `delay` seconds have passed."""
        if delay <= 0:
            self.add(key)
            return
        with self._cond:
            if self._shutting_down:
                return
            self._seq += 1
            heapq.heappush(self._delayed, (time.monotonic() + delay, self._seq, key))
            # A worker may be sleeping until a later deadline: let it recompute.
            self._cond.notify()

    def delay_for(self, failures: int) -> float:
        """The requeue delay after `failures` consecutive failures of one key."""
        delay = min(self.base_delay * (2 ** max(0, failures - 1)), self.max_delay)
        return delay * (1 + self.jitter * random.random())

    def retry(self, key: str) -> float:
        """Count a failure of `key` and requeue it after its backoff; returns the delay."""
        with self._cond:
            n = self._failures.get(key, 0) + 1
            self._failures[key] = n
            self.counters["failed"] += 1
            self.counters["retries"] += 1
        delay = self.delay_for(n)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """`key` succeeded: its next failure starts the backoff from the beginning."""
        with self._cond:
            self._failures.pop(key, None)

    def failures(self, key: str) -> int:
        return self._failures.get(key, 0)

    # ---- consumer side ----------------------------------------------------------------

    def _promote_due(self, now: float) -> None:
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._add_locked(key)

    def get_batch(self, max_items: int = 1, timeout: float | None = None) -> list[str]:
        """Up to `max_items` waiting keys, marked as being processed; waits for the first
        one, never for more. Empty on timeout or once shut down (after the queue drains,
        if shutdown asked for draining). Call done(key) for each key returned."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                self._promote_due(now)
                if self._queue and not (self._shutting_down and not self._drain):
                    break
                if self._shutting_down:
                    return []
                wait = None if deadline is None else deadline - now
                if self._delayed:
                    due = self._delayed[0][0] - now
                    wait = due if wait is None else min(wait, due)
                if wait is not None and wait <= 0:
                    if deadline is not None and now >= deadline:
                        return []
                    continue
                self._cond.wait(wait)
            batch: list[str] = []
            while self._queue and len(batch) < max_items:
                key = self._queue.popleft()
                self._dirty.discard(key)
                self._processing.add(key)
                batch.append(key)
            return batch

    def get(self, timeout: float | None = None) -> str | None:
        """One key (see get_batch), or None on timeout or shutdown."""
        batch = self.get_batch(1, timeout)
        return batch[0] if batch else None

    def done(self, key: str) -> None:
        """Processing of `key` finished; if it was added meanwhile, queue it again."""
        with self._cond:
            self._processing.discard(key)
            if key in self._dirty:
                self._queue.append(key)
                self._cond.notify()
            elif not self._processing and not self._queue:
                self._cond.notify_all()  # wake wait_idle()

    # ---- introspection ----------------------------------------------------------------

    def depth(self) -> int:
        """Keys ready to be handed out (not counting delayed retries)."""
        with self._cond:
            return len(self._queue)

    def __len__(self) -> int:
        return self.depth()

    def status(self) -> dict[str, Any]:
        with self._cond:
            return {"depth": len(self._queue), "processing": len(self._processing),
                    "delayed": len(self._delayed), "failing_keys": len(self._failures),
                    **self.counters}

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until nothing is queued, delayed or being processed (tests, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._queue or self._processing or self._delayed:
                now = time.monotonic()
                if deadline is not None and now >= deadline:
                    return False
                self._promote_due(now)
                wait = 0.05 if deadline is None else min(0.05, deadline - now)
                self._cond.wait(wait)
            return True

    # ---- workers ----------------------------------------------------------------------

    def start(self, handler: KeyHandler | None = None, *, batch_handler: BatchHandler | None
              = None, workers: int = 1, max_batch: int = 100,
              min_interval: float = 0.0) -> WorkQueue:
        """Run `workers` threads that take keys and call `handler(key)` (one key at a time)
        or `batch_handler(keys)` (up to `max_batch` keys). A raised exception fails the key
        (or the whole batch) and is logged; the worker carries on. With `min_interval`,
        a worker starts batches at most that often: a lone key after a quiet spell goes
        at once, a stream of them is gathered into fewer, larger batches."""
        if (handler is None) == (batch_handler is None):
            raise ValueError("give exactly one of handler and batch_handler")
        for i in range(workers):
            t = threading.Thread(target=self._work,
                                 args=(handler, batch_handler, max_batch, min_interval),
                                 name=f"{self.name}-worker-{i}", daemon=True)
            self._workers.append(t)
            t.start()
        return self

    def _work(self, handler: KeyHandler | None, batch_handler: BatchHandler | None,
              max_batch: int, min_interval: float = 0.0) -> None:
        started = 0.0
        while True:
            pause = started + min_interval - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            keys = self.get_batch(max_batch if batch_handler else 1)
            if not keys:
                return
            started = time.monotonic()
            failed: set[str]
            try:
                if batch_handler is not None:
                    failed = set(batch_handler(keys) or ())
                else:
                    assert handler is not None
                    handler(keys[0])
                    failed = set()
            except Exception:
                log.exception("%s: handler failed on %s", self.name,
                              keys[0] if len(keys) == 1 else f"{len(keys)} keys")
                failed = set(keys)
            for key in keys:
                if key in failed:
                    delay = self.retry(key)
                    log.debug("%s: %s failed %d times, retrying in %.2f s", self.name, key,
                              self.failures(key), delay)
                else:
                    self.forget(key)
                    with self._cond:
                        self.counters["processed"] += 1
                self.done(key)

    def shutdown(self, drain: bool = False, timeout: float | None = 10.0) -> None:
        """Stop the workers: after what they hold now, or after the ready keys too when
        `drain` (delayed retries are not waited for). New adds are ignored."""
        with self._cond:
            self._drain = drain
            self._shutting_down = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self._workers:
            if t is threading.current_thread():
                continue
            t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        self._workers = [t for t in self._workers if t.is_alive()]
