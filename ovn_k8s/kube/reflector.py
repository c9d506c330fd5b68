"""A reflector: LIST a resource into a local cache, then WATCH it from the list's version.

One thread per resource. The cache maps ``namespace/name`` (``name`` when cluster-scoped)
to the object as a plain dict decoded from the API's JSON. We ask the official client for
the raw response (``_preload_content=False``) and decode it ourselves: building client
model objects costs several times the JSON decoding itself (bench/kube_reflector.py
measures both), and at 10k pods that is the difference between a start-up of well under a
second and several seconds, and between a few and tens of MB. Handlers use dict access
(``obj["metadata"]["name"]``), the same shape as the API documents and `kubectl -o json`.
Objects in the cache are shared: treat them as read-only.

Recovery, as client-go does it:
- a watch that ends normally (server timeout) is re-opened from the last resourceVersion;
- BOOKMARK events only advance that version;
- 410 Gone (an ERROR event or an HTTP 410) means the version left the watch window: LIST
  again and diff against the cache, reporting the adds, updates and deletes it missed;
- a broken stream is re-opened at once from the last version (nothing is lost: the server
  replays what followed it); API errors (connection refused, 5xx, 429, a second broken
  stream in a row) back off exponentially with jitter (tenacity), honouring Retry-After.
One WARNING when an outage starts and one INFO when it ends, not one per retry.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_random_exponential,
)

from ovn_k8s.kube.client import Lister

log = logging.getLogger(__name__)

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"

Obj = dict[str, Any]
Handler = Callable[[str, str, Obj], None]


class WatchError(Exception):
    """The server ended a watch with an ERROR event other than 410 Gone."""


class _Gone(Exception):
    """The resourceVersion we hold is too old: relist."""


def object_key(obj: Mapping[str, Any]) -> str:
    """``namespace/name``, or ``name`` for cluster-scoped objects (client-go's key)."""
    md = obj["metadata"]
    ns = md.get("namespace")
    return f"{ns}/{md['name']}" if ns else str(md["name"])


def _describe(exc: BaseException) -> str:
    """A one-line reason for logs; ApiException's str() carries whole bodies and headers."""
    if isinstance(exc, ApiException):
        return f"HTTP {exc.status} {exc.reason or ''}".strip()
    if isinstance(exc, urllib3.exceptions.MaxRetryError) and exc.reason is not None:
        return f"{type(exc.reason).__name__}: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _lines(resp: urllib3.BaseHTTPResponse) -> Iterator[bytes]:
    """Newline-delimited JSON events from a chunked watch body, as chunks arrive."""
    parts: list[bytes] = []
    for chunk in resp.stream(None):
        start = 0
        while True:
            i = chunk.find(b"\n", start)
            if i < 0:
                if start < len(chunk):
                    parts.append(chunk[start:])
                break
            if parts:
                parts.append(chunk[start:i])
                line = b"".join(parts)
                parts = []
            else:
                line = chunk[start:i]
            start = i + 1
            if line.strip():
                yield line
    if parts and b"".join(parts).strip():
        yield b"".join(parts)


class Reflector:
    """LIST+WATCH one resource into a cache and tell handlers what changed.

    `list_fn` is an official-client list method that takes ``watch``; `list_args` its
    positional arguments (e.g. group, version, plural for custom objects) and
    `list_kwargs` extra query options (label_selector, field_selector). Handlers are
    called on the reflector thread as ``handler(event_type, key, obj)`` after the cache
    holds the change; for DELETED, `obj` is the last state seen. They should be quick
    (enqueue the key) and read the current state later with `get(key)`. `transform`,
    like client-go's informer transforms, trims each object before it is cached
    (it must keep ``metadata.name``, ``namespace`` and ``resourceVersion``).
    """

    def __init__(
        self,
        name: str,
        list_fn: Callable[..., Any],
        *list_args: Any,
        handler: Handler | None = None,
        list_kwargs: Mapping[str, Any] | None = None,
        watch_timeout: int = 300,
        page_size: int = 500,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        connect_timeout: float = 10.0,
        list_timeout: float = 120.0,
        transform: Callable[[Obj], Obj] | None = None,
    ) -> None:
        self.name = name
        self._transform = transform
        self._list_fn = list_fn
        self._list_args = list_args
        self._list_kwargs = dict(list_kwargs or {})
        self._handlers: list[Handler] = [handler] if handler else []
        self._watch_timeout = watch_timeout
        self._page_size = page_size
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._connect_timeout = connect_timeout
        self._list_timeout = list_timeout

        # Written only by the reflector thread; a relist swaps in a whole new dict, so
        # readers on other threads never see a half-built cache and need no lock.
        self._cache: dict[str, Obj] = {}
        self._rv: str | None = None
        self._synced = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._resp: urllib3.BaseHTTPResponse | None = None
        self._resp_lock = threading.Lock()
        self._short_streams = 0  # consecutive watches that ended at once with nothing
        self._outage_since: float | None = None
        self._outage_failures = 0
        self.last_sync: float | None = None  # wall-clock time of the last completed LIST
        self.stats: dict[str, int] = dict.fromkeys(
            ("lists", "relists", "watches", "events", "bookmarks", "stream_breaks", "errors",
             "handler_errors"), 0)
        self._retrying = Retrying(
            retry=retry_if_exception_type(Exception),
            wait=self._wait,
            stop=stop_when_event_set(self._stopping),
            sleep=self._sleep,
            before_sleep=self._on_failure,
            reraise=False,
        )

    # ---- public -----------------------------------------------------------------------

    def add_handler(self, handler: Handler) -> None:
        """Add a handler; before start(), so it sees the initial LIST as ADDED events."""
        self._handlers.append(handler)

    def start(self) -> Reflector:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=f"reflector-{self.name}",
                                            daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """End the thread: wakes a backoff sleep and cuts the open watch or LIST response.
        A request still waiting for its response headers is only bounded by the connect
        and `list_timeout`s; the thread is a daemon, and stop() returns after `timeout`."""
        self._stopping.set()
        with self._resp_lock:
            resp = self._resp
        if resp is not None:
            self._cut(resp)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> Reflector:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def get(self, key: str) -> Obj | None:
        """The current cached object for `key`, or None (deleted or never seen)."""
        return self._cache.get(key)

    def keys(self) -> list[str]:
        return list(self._cache)

    def items(self) -> list[tuple[str, Obj]]:
        return list(self._cache.items())

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    @property
    def resource_version(self) -> str | None:
        return self._rv

    def has_synced(self) -> bool:
        """True once the first LIST is in the cache and its ADDED events were handed out."""
        return self._synced.is_set()

    def wait_synced(self, timeout: float | None = None) -> bool:
        return self._synced.wait(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, Any]:
        """For the daemon's `status` command."""
        return {"objects": len(self._cache), "synced": self.has_synced(),
                "resource_version": self._rv, "last_sync": self.last_sync,
                "outage_since": self._outage_since, **self.stats}

    # ---- the loop ---------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._retrying(self._cycle)
            except RetryError:
                pass  # stopping during a backoff
            except Exception:  # a bug in our own code: keep the cache alive, back off
                log.exception("%s: reflector loop failed", self.name)
                self._stopping.wait(self._backoff_max)
        log.debug("%s: reflector stopped", self.name)

    def _cycle(self) -> None:
        """One LIST (when needed) and one WATCH. Returns to re-watch at once; raises to
        back off (API errors)."""
        if self._stopping.is_set():
            return
        try:
            if self._rv is None:
                self._relist()
            self._watch()
        except _Gone:
            self._gone()
        except ApiException as e:
            if e.status != 410:
                raise
            self._gone()

    def _gone(self) -> None:
        log.info("%s: resourceVersion %s expired (410 Gone), relisting", self.name, self._rv)
        self._rv = None
        self.stats["relists"] += 1

    def _sleep(self, seconds: float) -> None:
        self._stopping.wait(seconds)

    def _wait(self, state: RetryCallState) -> float:
        delay = wait_random_exponential(multiplier=self._backoff_initial, max=self._backoff_max,
                                        min=self._backoff_initial / 2)(state)
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, ApiException) and exc.headers:
            after = exc.headers.get("Retry-After")
            if after and after.isdigit():
                delay = max(delay, min(float(after), self._backoff_max))
        return float(delay)

    def _on_failure(self, state: RetryCallState) -> None:
        if self._stopping.is_set():
            return
        exc = state.outcome.exception() if state.outcome else None
        self.stats["errors"] += 1
        self._outage_failures += 1
        if self._outage_since is None:
            self._outage_since = time.time()
            log.warning("%s: Kubernetes API unavailable (%s); retrying with backoff",
                        self.name, _describe(exc) if exc else "?")
        else:
            log.debug("%s: retry %d failed: %s", self.name, self._outage_failures,
                      _describe(exc) if exc else "?")

    def _healthy(self) -> None:
        if self._outage_since is not None:
            log.info("%s: Kubernetes API reachable again after %.1f s (%d failed attempts)",
                     self.name, time.time() - self._outage_since, self._outage_failures)
            self._outage_since = None
            self._outage_failures = 0

    def _notify(self, etype: str, key: str, obj: Obj) -> None:
        for h in self._handlers:
            try:
                h(etype, key, obj)
            except Exception:
                self.stats["handler_errors"] += 1
                log.exception("%s: handler failed on %s %s", self.name, etype, key)

    @staticmethod
    def _cut(resp: urllib3.BaseHTTPResponse) -> None:
        """Unblock a read on another thread: shutdown() interrupts recv, close() does not."""
        try:
            resp.shutdown()
        except Exception:
            log.debug("shutting down a watch response failed", exc_info=True)

    # ---- LIST -------------------------------------------------------------------------

    def _list_pages(self, page_size: int) -> tuple[list[Obj], str]:
        items: list[Obj] = []
        rv = ""
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = dict(self._list_kwargs)
            if page_size:
                kwargs["limit"] = page_size
            if token:
                kwargs["_continue"] = token
            resp = self._list_fn(*self._list_args, _preload_content=False,
                                 _request_timeout=(self._connect_timeout, self._list_timeout),
                                 **kwargs)
            with self._resp_lock:
                self._resp = resp  # so that stop() can cut a long read short
            try:
                if self._stopping.is_set():
                    self._cut(resp)
                body = json.loads(resp.data)
            finally:
                with self._resp_lock:
                    self._resp = None
                resp.release_conn()
            items.extend(body.get("items") or ())
            md = body.get("metadata") or {}
            if not rv:  # pages after the first are served from the first one's snapshot
                rv = md.get("resourceVersion", "")
            token = md.get("continue")
            if not token:
                return items, rv

    def _relist(self) -> None:
        try:
            items, rv = self._list_pages(self._page_size)
        except ApiException as e:
            if e.status != 410 or not self._page_size:
                raise
            # The continue token outlived the server's history: one unpaged LIST instead.
            items, rv = self._list_pages(0)
        self._healthy()
        new: dict[str, Obj] = {}
        for obj in items:
            new[object_key(obj)] = self._transform(obj) if self._transform else obj
        old = self._cache
        self._cache = new
        self._rv = rv
        self.last_sync = time.time()
        self.stats["lists"] += 1
        first = not self._synced.is_set()
        changes = 0
        # Deletes first: a handler that frees resources (IPs) makes room for the adds.
        for key, obj in old.items():
            if key not in new:
                changes += 1
                self._notify(DELETED, key, obj)
        for key, obj in new.items():
            prev = old.get(key)
            if prev is None:
                changes += 1
                self._notify(ADDED, key, obj)
            elif (prev["metadata"].get("resourceVersion")
                  != obj["metadata"].get("resourceVersion")):
                changes += 1
                self._notify(MODIFIED, key, obj)
        if first:
            log.info("%s: listed %d objects at resourceVersion %s", self.name, len(new), rv)
            self._synced.set()
        else:
            log.info("%s: relisted %d objects at resourceVersion %s, %d changes missed",
                     self.name, len(new), rv, changes)

    # ---- WATCH ------------------------------------------------------------------------

    def _watch(self) -> None:
        # Jittered like client-go, so many reflectors do not re-watch in lockstep.
        timeout = int(self._watch_timeout * (1 + random.random()))
        resp = self._list_fn(
            *self._list_args, watch=True, resource_version=self._rv,
            allow_watch_bookmarks=True, timeout_seconds=timeout, _preload_content=False,
            # The read timeout catches a silently dead connection; the server ends a
            # healthy watch by itself after `timeout`.
            _request_timeout=(self._connect_timeout, timeout + 30), **self._list_kwargs)
        with self._resp_lock:
            self._resp = resp
        if self._stopping.is_set():
            self._cut(resp)
        self.stats["watches"] += 1
        self._healthy()
        opened = time.monotonic()
        delivered = 0  # events and bookmarks: proof the stream was alive
        try:
            for line in _lines(resp):
                if self._stopping.is_set():
                    return
                ev = json.loads(line)
                etype = ev.get("type")
                obj = ev.get("object") or {}
                if etype == "ERROR":
                    if obj.get("code") == 410:
                        raise _Gone
                    raise WatchError(f"{obj.get('code')} {obj.get('reason')}: "
                                     f"{obj.get('message')}")
                rv = (obj.get("metadata") or {}).get("resourceVersion")
                delivered += 1
                if etype == "BOOKMARK":
                    self.stats["bookmarks"] += 1
                    if rv:
                        self._rv = rv
                    continue
                key = object_key(obj)
                if self._transform:
                    obj = self._transform(obj)
                if etype == DELETED:
                    self._cache.pop(key, None)
                else:
                    self._cache[key] = obj
                if rv:
                    self._rv = rv
                self.stats["events"] += 1
                self._notify(etype, key, obj)
            self._check_short(delivered, opened, None)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._stopping.is_set():
                return
            self.stats["stream_breaks"] += 1
            self._check_short(delivered, opened, e)
            log.debug("%s: watch stream broke (%s); re-watching from %s", self.name,
                      _describe(e), self._rv)
        finally:
            with self._resp_lock:
                self._resp = None
            resp.close()
            resp.release_conn()


    def _check_short(self, delivered: int, opened: float, exc: Exception | None) -> None:
        """One stream that ends at once is normal (a drop, a restart); a second in a row
        means the server keeps ending them: back off instead of spinning (client-go's
        "very short watch")."""
        if delivered or time.monotonic() - opened >= 1.0:
            self._short_streams = 0
            return
        self._short_streams += 1
        if self._short_streams >= 2:
            self._short_streams = 0
            if exc is not None:
                raise exc
            raise WatchError("watch ended twice in a row at once, with no events")


# The resources the watcher follows, by the name used in logs and `status`: their
# collections across all namespaces.
_PATHS: dict[str, str] = {
    "pods": "/api/v1/pods",
    "nodes": "/api/v1/nodes",
    "namespaces": "/api/v1/namespaces",
    "services": "/api/v1/services",
    "endpoints": "/api/v1/endpoints",
    "endpointslices": "/apis/discovery.k8s.io/v1/endpointslices",
    "networkpolicies": "/apis/networking.k8s.io/v1/networkpolicies",
}


def reflector_for(api_client: k8s.ApiClient, resource: str, **kwargs: Any) -> Reflector:
    """A Reflector for one of `RESOURCES` (pods, nodes, services, endpointslices, ...)."""
    try:
        path = _PATHS[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}; known: {sorted(_PATHS)}") from None
    return Reflector(resource, Lister(api_client, path), **kwargs)


def custom_reflector(api_client: k8s.ApiClient, group: str, version: str, plural: str,
                     **kwargs: Any) -> Reflector:
    """A Reflector for a custom resource, across all namespaces."""
    return Reflector(f"{plural}.{group}", Lister(api_client, f"/apis/{group}/{version}/{plural}"),
                     **kwargs)


RESOURCES = tuple(_PATHS)
