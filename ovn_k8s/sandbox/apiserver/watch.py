"""Serving one watch: initial state, history replay, live events, bookmarks, timeout.

Each watcher keeps a cursor (the last resourceVersion it has examined) into the store's
history and, when woken, takes every event after it in one slice, so a slow client gets
batches instead of one write per event, and nothing is delivered twice or out of order.
Event filtering follows the apiserver's cacheWatcher: with a selector, an object that
stops matching arrives as DELETED (its previous state) and one that starts matching as
ADDED.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from . import errors
from .rest import WatchSpec
from .store import Event, Store, Stored, dumps

if TYPE_CHECKING:
    from .server import _Notifier

_INITIAL_BATCH = 500
# Events rendered per write: bounds memory and latency for a watcher far behind.
_MAX_BATCH = 2000


class WatchStream:
    def __init__(self, store: Store, spec: WatchSpec, bookmark_interval: float,
                 notifier: _Notifier) -> None:
        self.store = store
        self.spec = spec
        self.bookmark_interval = bookmark_interval
        self.notifier = notifier
        self.dropped = False
        self.graceful = False
        # One timer for the next bookmark or the deadline, re-armed only when that time
        # changes, rather than a fresh timeout around every wait.
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._fut: asyncio.Future[None] | None = None

    def drop(self, graceful: bool) -> None:
        """Loop thread (test hook); the stream ends at its next wake-up."""
        self.dropped = True
        self.graceful = graceful
        self.notifier.poke()

    def _obj(self, st: Stored) -> bytes:
        rt = self.spec.rt
        if self.spec.version == rt.storage_version:
            return st.raw
        return dumps(dict(st.obj, apiVersion=rt.api_version(self.spec.version)))

    def _line(self, etype: bytes, st: Stored) -> bytes:
        return b'{"type":"' + etype + b'","object":' + self._obj(st) + b"}\n"

    def _matches(self, st: Stored) -> bool:
        spec = self.spec
        if spec.labels is not None and not spec.labels(st.labels):
            return False
        return spec.fields is None or spec.fields(spec.rt.fields_of(st.obj))

    def _bookmark(self, rv: int, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        rt = self.spec.rt
        obj = {"kind": rt.kind, "apiVersion": rt.api_version(self.spec.version),
               "metadata": meta}
        return b'{"type":"BOOKMARK","object":' + dumps(obj) + b"}\n"

    def _render(self, events: list[Event]) -> list[bytes]:
        spec = self.spec
        key = spec.rt.key
        ns = spec.namespace if spec.rt.namespaced else ""
        filtered = spec.labels is not None or spec.fields is not None
        out: list[bytes] = []
        for ev in events:
            if ev.rt != key or (ns and ev.ns != ns):
                continue
            if not filtered:
                if ev.new is None:
                    out.append(self._line(b"DELETED", ev.deleted_view()))
                else:
                    out.append(self._line(b"ADDED" if ev.old is None else b"MODIFIED", ev.new))
                continue
            new_ok = ev.new is not None and self._matches(ev.new)
            old_ok = ev.old is not None and self._matches(ev.old)
            if new_ok and ev.new is not None:
                out.append(self._line(b"MODIFIED" if old_ok else b"ADDED", ev.new))
            elif old_ok:
                out.append(self._line(b"DELETED", ev.deleted_view()))
        return out

    def _on_timer(self) -> None:
        self._timer = None
        if self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    async def _wait(self, gen: int, until: float, now: float) -> None:
        """Until a store write after notifier generation `gen`, or time `until`."""
        fut = self.notifier.waiter(gen)
        if fut is None:
            return
        if self._timer is None or self._timer_at != until:
            if self._timer is not None:
                self._timer.cancel()
            self._timer_at = until
            self._timer = self.notifier.loop.call_later(max(0.0, until - now), self._on_timer)
        self._fut = fut
        try:
            await fut
        finally:
            self._fut = None

    async def run(self, write: Callable[[bytes], Awaitable[None]],
                  alive: Callable[[], bool]) -> bool:
        """Stream until timeout, drop or client loss. Returns True if the stream ended
        cleanly (the caller then sends the final chunk), False to abort the connection."""
        try:
            return await self._run(write, alive)
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    async def _run(self, write: Callable[[bytes], Awaitable[None]],
                   alive: Callable[[], bool]) -> bool:
        spec = self.spec
        store = self.store
        if spec.error is not None:
            await write(b'{"type":"ERROR","object":' + dumps(spec.error.status()) + b"}\n")
            return True
        now = time.monotonic()
        deadline = now + spec.timeout
        next_bm = now + self.bookmark_interval if spec.bookmarks else float("inf")
        initial: list[Stored] = []
        with store.lock:
            if spec.start_rv is None:
                objs, keys = store.snapshot(spec.rt, store.rv)
                prefix = f"{spec.namespace}/" if spec.namespace and spec.rt.namespaced else ""
                initial = [objs[k] for k in keys
                           if (not prefix or k.startswith(prefix)) and self._matches(objs[k])]
                cursor = store.rv
            else:
                cursor = spec.start_rv
        for i in range(0, len(initial), _INITIAL_BATCH):
            await write(b"".join(self._line(b"ADDED", st)
                                 for st in initial[i:i + _INITIAL_BATCH]))
        if spec.initial_end_bookmark:
            await write(self._bookmark(cursor, initial_end=True))
        del initial
        while True:
            # Note the generation before reading history, so a write in between still
            # wakes us.
            gen = self.notifier.gen
            if self.dropped:
                return self.graceful
            if not alive():
                return False
            with store.lock:
                if spec.rt.key in store.closed_types:
                    return True
                events = store.events_after(cursor)
                if events:
                    events = events[:_MAX_BATCH]
                    cursor = events[-1].rv
            if events is None:
                # Fell out of the retained window: the apiserver closes such watchers; the
                # client re-watches from its last version and gets the 410 there.
                err = errors.expired(f"too old resource version: {cursor} "
                                     f"({store.oldest_available() - 1})")
                await write(b'{"type":"ERROR","object":' + dumps(err.status()) + b"}\n")
                return True
            chunks = self._render(events) if events else []
            now = time.monotonic()
            # The apiserver also sends a bookmark just before a watch times out, so the
            # client can resume from it without a relist.
            if now >= next_bm or (now >= deadline and spec.bookmarks):
                chunks.append(self._bookmark(cursor))
                next_bm = now + self.bookmark_interval
            if chunks:
                await write(b"".join(chunks))
            if now >= deadline:
                return True
            if not events:
                await self._wait(gen, min(deadline, next_bm), now)
