"""HTTP/1.1 front end: keep-alive connections, bearer-token auth, chunked watch streams,
and the test hooks (drop watches, forced 410, injected errors and latency, pause).

One asyncio loop on a thread of its own serves every connection. Ordinary requests are
handled inline (the store is in memory, so there is nothing to wait for): with the GIL,
one thread doing all the work beats a thread per connection handing the GIL around.
Only what really waits runs elsewhere: watches are coroutines woken after writes, and a
request for a resourceVersion the store has not reached yet waits on a worker thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hmac
import http
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote

from . import errors, kinds
from .rest import Api, Request, Response, WatchSpec, error_response
from .store import Store
from .watch import WatchStream

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

log = logging.getLogger(__name__)

_MAX_HEAD = 256 * 1024
_MAX_BODY = 64 * 1024 * 1024
# Stop reading from a client whose unprocessed input grows beyond this.
_READ_LIMIT = 4 * 1024 * 1024
# One receive buffer for every connection: the loop thread fills it and hands the bytes
# to one protocol before the next read, so nothing else can see it in between. Plain
# Protocols make asyncio allocate (and mostly throw away) 256 KiB per recv(), which
# cost more than parsing and answering a small request.
_RECV_SIZE = 256 * 1024


@dataclass
class _Injection:
    errors: tuple[int, ...]
    latency: float
    remaining: int | None
    methods: frozenset[str] | None
    path: str | None
    watch: bool | None
    served: int = 0

    def matches(self, req: Request) -> bool:
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.methods is not None and req.method not in self.methods:
            return False
        if self.path is not None and self.path not in req.path:
            return False
        if self.watch is not None:
            is_watch = ("/watch/" in req.path
                        or req.query.get("watch", "").lower() in ("true", "1"))
            if is_watch != self.watch:
                return False
        return True


class _Notifier:
    """Wakes watch coroutines after store writes, at most once per loop iteration.

    A generation counter and bare futures instead of an asyncio.Event plus
    asyncio.timeout() per wait: a watch is woken about once per write, so the per-wake
    objects (Event, Timeout, timer handle) were a visible share of a write's cost."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.gen = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._thread = threading.get_ident()

    def poke(self) -> None:
        """Any thread. A missed flag check only costs an extra wake-up, never a lost one:
        watchers read the history after noting the generation."""
        if self._scheduled:
            return
        self._scheduled = True
        if threading.get_ident() == self._thread:
            self.loop.call_soon(self._fire)
        else:
            with contextlib.suppress(RuntimeError):  # loop already closed
                self.loop.call_soon_threadsafe(self._fire)

    def _fire(self) -> None:
        self._scheduled = False
        self.gen += 1
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def waiter(self, gen: int) -> asyncio.Future[None] | None:
        """Loop thread. A future resolved by the next wake-up, or None if one came after
        generation `gen` (the caller must look at the history again)."""
        if self.gen != gen:
            return None
        fut = self.loop.create_future()
        self._waiters.append(fut)
        return fut


def _parse(buf: bytearray) -> tuple[Request, bool, int] | None:
    """One complete request from the front of buf: (request, keep-alive, bytes used)."""
    start = 0
    while buf[start:start + 2] == b"\r\n":
        start += 2
    end = buf.find(b"\r\n\r\n", start)
    if end < 0:
        if len(buf) > _MAX_HEAD:
            raise ValueError("request head too large")
        return None
    lines = bytes(buf[start:end]).decode("latin-1").split("\r\n")
    parts = lines[0].split()
    if len(parts) != 3:
        raise ValueError("bad request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for h in lines[1:]:
        k, _, v = h.partition(":")
        headers[k.strip().lower()] = v.strip()
    pos = end + 4
    if "chunked" in headers.get("transfer-encoding", "").lower():
        pieces = []
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0].strip() or b"0", 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n\r\n", eol)
                if buf[eol:eol + 4] == b"\r\n\r\n":
                    pos = eol + 4
                elif trailer_end < 0:
                    return None
                else:
                    pos = trailer_end + 4
                break
            if len(buf) < eol + 2 + size + 2:
                return None
            pieces.append(bytes(buf[eol + 2:eol + 2 + size]))
            pos = eol + 2 + size + 2
        body = b"".join(pieces)
    else:
        n = int(headers.get("content-length") or 0)
        if n > _MAX_BODY:
            raise ValueError("request body too large")
        if len(buf) < pos + n:
            return None
        body = bytes(buf[pos:pos + n])
        pos += n
    conn = headers.get("connection", "").lower()
    keep = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
    path, _, qs = target.partition("?")
    if "%" in path:
        path = unquote(path)
    return Request(method.upper(), path, qs, headers, body), keep, pos


# (status, content type) -> the head up to the Content-Length value: every
# ordinary reply has one of a handful of these, so build each once.
_HEAD_PREFIX: dict[tuple[int, str], bytes] = {}


def _head(resp: Response, keep: bool) -> bytes:
    key = (resp.status, resp.content_type)
    prefix = _HEAD_PREFIX.get(key)
    if prefix is None:
        try:
            phrase = http.HTTPStatus(resp.status).phrase
        except ValueError:
            phrase = "Unknown"
        prefix = (f"HTTP/1.1 {resp.status} {phrase}\r\nContent-Type: {resp.content_type}\r\n"
                  "Cache-Control: no-cache, private\r\nContent-Length: ").encode("latin-1")
        if len(_HEAD_PREFIX) < 256:
            _HEAD_PREFIX[key] = prefix
    extra = "".join(f"{k}: {v}\r\n" for k, v in resp.headers.items()) if resp.headers else ""
    if not keep:
        extra += "Connection: close\r\n"
    return b"%s%d\r\n%s\r\n" % (prefix, len(resp.body), extra.encode("latin-1"))


class _Conn(asyncio.BufferedProtocol):
    """One client connection: requests are answered in order; a watch owns it until done."""

    def __init__(self, srv: ApiServer) -> None:
        self.srv = srv
        self._recv = srv._recv
        self.loop = asyncio.get_running_loop()
        assert srv.notifier is not None
        self.notifier = srv.notifier
        self.buf = bytearray()
        self.busy = False          # a slow request or a watch is in progress
        self.closed = False
        self.transport: asyncio.Transport | None = None
        self._drain: asyncio.Future[None] | None = None
        self.watch: WatchStream | None = None
        # The running slow request or watch; asyncio only keeps weak references to tasks.
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.srv._conns.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.srv._conns.discard(self)
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self.watch is not None:
            self.notifier.poke()

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._recv

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._recv[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        self.buf += data
        if self.busy:
            if len(self.buf) > _READ_LIMIT and self.transport is not None:
                self.transport.pause_reading()
            return
        self._process()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    async def write(self, data: bytes) -> None:
        if self.closed or self.transport is None:
            raise ConnectionResetError("client went away")
        if not self.srv._unpaused.is_set():
            await self.srv._unpaused.wait()
        self.transport.write(data)
        if self._drain is not None and not self._drain.done():
            await self._drain

    def _process(self) -> None:
        srv = self.srv
        while not self.busy and not self.closed:
            try:
                parsed = _parse(self.buf)
            except ValueError:
                self._reply(Response(400, b"bad request", "text/plain"), False)
                return
            if parsed is None:
                if self.transport is not None:
                    self.transport.resume_reading()
                return
            req, keep, used = parsed
            del self.buf[:used]
            if srv._needs_slow_path(req):
                self.busy = True
                self._task = self.loop.create_task(self._slow(req, keep))
                return
            resp = srv._handle(req)
            if isinstance(resp, WatchSpec):
                self.busy = True
                self._task = self.loop.create_task(self._watch(resp, keep))
                return
            self._reply(resp, keep, req.method == "HEAD")

    def _reply(self, resp: Response, keep: bool, head_only: bool = False) -> None:
        if self.transport is None or self.closed:
            return
        log.debug("-> %d", resp.status)
        head = _head(resp, keep)
        self.transport.write(head if head_only else head + resp.body)
        if not keep:
            self.transport.close()
            self.closed = True

    def _resume(self) -> None:
        self.busy = False
        if self.buf:
            self._process()

    async def _slow(self, req: Request, keep: bool) -> None:
        srv = self.srv
        try:
            if not srv._unpaused.is_set():
                await srv._unpaused.wait()
            resp: Response | WatchSpec | None = None
            if srv._authorized(req):
                resp, latency = srv._injected(req)
                if latency:
                    await asyncio.sleep(latency)
            if resp is None:
                if srv._authorized(req):
                    # Waits for a future resourceVersion (up to 3 s) off the loop thread.
                    resp = await self.loop.run_in_executor(srv._pool, srv._dispatch, req)
                else:
                    resp = error_response(errors.unauthorized())
            if self.closed:
                return
            if isinstance(resp, WatchSpec):
                await self._watch(resp, keep)
                return
            self._reply(resp, keep, req.method == "HEAD")
            self._resume()
        except Exception:
            log.exception("%s %s failed", req.method, req.path)
            self.abort()

    async def _watch(self, spec: WatchSpec, keep: bool) -> None:
        srv = self.srv
        ws = WatchStream(srv.store, spec, srv.bookmark_interval, self.notifier)
        self.watch = ws
        srv._watches.add(ws)
        clean = False
        try:
            await self.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Cache-Control: no-cache, private\r\n"
                             b"Transfer-Encoding: chunked\r\n\r\n")

            async def chunk(data: bytes) -> None:
                await self.write(b"%x\r\n%s\r\n" % (len(data), data))

            clean = await ws.run(chunk, lambda: not self.closed)
            if clean and not self.closed:
                await self.write(b"0\r\n\r\n")
        except (ConnectionError, OSError):
            clean = False
        except Exception:
            log.exception("watch failed")
            clean = False
        finally:
            srv._watches.discard(ws)
            self.watch = None
        if not clean:
            self.abort()
        elif not keep:
            self._close()
        else:
            self._resume()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True


class ApiServer:
    """A Kubernetes API emulator on 127.0.0.1; see the package docstring."""

    def __init__(
        self,
        token: str | None = None,
        *,
        watch_window: int = 10000,
        service_cidr: str = "10.96.0.0/16",
        node_port_range: tuple[int, int] = (30000, 32767),
        host: str = "127.0.0.1",
        port: int = 0,
        bookmark_interval: float = 60.0,
        min_request_timeout: float = 1800.0,
        kubelet_delay: float | None = 0.0,
        gc_freeze: bool = False,
        endpoint_slices: bool = True,
    ) -> None:
        self.token = token or secrets.token_urlsafe(32)
        self._token = self.token.encode()
        # (method, path, watch, user agent) of every authorized request, when a test
        # sets a list.
        self.audit: list[tuple[str, str, str, str]] | None = None
        self.host = host
        self.port = port
        self.bookmark_interval = bookmark_interval
        self.store = Store(watch_window=watch_window, kubelet_delay=kubelet_delay)
        kinds.install(self.store, service_cidr=service_cidr, node_ports=node_port_range,
                      endpoint_slices=endpoint_slices)
        if gc_freeze:
            # Process-wide, so only for a process of its own (the command line does it).
            self.store.freeze_every = 5000
        self.api = Api(self.store, bookmark_interval=bookmark_interval,
                       min_request_timeout=min_request_timeout)
        self._hooks = threading.Lock()
        self._injections: list[_Injection] = []
        self._conns: set[_Conn] = set()
        self._watches: set[WatchStream] = set()
        self._paused = False
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        # Created by start(), one per run: a stopped loop cannot be restarted.
        self.loop: asyncio.AbstractEventLoop | None = None
        self.notifier: _Notifier | None = None
        self._unpaused = asyncio.Event()
        self._recv = memoryview(bytearray(_RECV_SIZE))

    # ---- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def resource_version(self) -> int:
        return self.store.rv

    def start(self) -> ApiServer:
        if self._thread is not None:
            return self
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,),
                                        name="apiserver-emulator", daemon=True)
        self._thread.start()
        started.wait()
        fut = asyncio.run_coroutine_threadsafe(self._listen(), self.loop)
        fut.result(10)
        log.info("apiserver emulator listening on %s", self.url)
        return self

    def _run(self, started: threading.Event) -> None:
        assert self.loop is not None
        asyncio.set_event_loop(self.loop)
        self._pool = concurrent.futures.ThreadPoolExecutor(8, "apiserver-wait")
        self.notifier = _Notifier(self.loop)
        self._unpaused = asyncio.Event()
        if not self._paused:
            self._unpaused.set()
        self.store.listeners = [self.notifier.poke]
        self.loop.call_soon(started.set)
        self.loop.run_forever()

    async def _listen(self) -> None:
        assert self.loop is not None
        self._server = await self.loop.create_server(
            lambda: _Conn(self), self.host, self.port, reuse_address=True, backlog=1024)
        # Keep the port across stop()/start() so clients and kubeconfigs stay valid.
        self.port = self._server.sockets[0].getsockname()[1]
        self.api.server_address = f"{self.host}:{self.port}"

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for ws in list(self._watches):
            ws.drop(graceful=False)
        for c in list(self._conns):
            c.abort()
        self._unpaused.set()  # let paused requests run into closed connections
        await asyncio.sleep(0)

    def stop(self) -> None:
        """Stop serving and cut every connection; the store survives a later start()."""
        if self._thread is None or self.loop is None:
            return
        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop).result(5)
        self.store.listeners = []
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self._thread = None
        self._server = None
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        for task in asyncio.all_tasks(self.loop):
            task.cancel()
        with contextlib.suppress(RuntimeError):
            self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()

    def __enter__(self) -> ApiServer:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def kubeconfig(self) -> str:
        return (
            "apiVersion: v1\n"
            "kind: Config\n"
            "clusters:\n"
            "- name: sandbox\n"
            "  cluster:\n"
            f'    server: "{self.url}"\n'
            "users:\n"
            "- name: sandbox\n"
            "  user:\n"
            f'    token: "{self.token}"\n'
            "contexts:\n"
            "- name: sandbox\n"
            "  context:\n"
            "    cluster: sandbox\n"
            "    user: sandbox\n"
            "    namespace: default\n"
            "current-context: sandbox\n"
        )

    def write_kubeconfig(self, path: str | os.PathLike[str]) -> str:
        """Write a kubeconfig (mode 0600: it holds the token) atomically; returns the path."""
        path = os.fspath(path)
        tmp = f"{path}.tmp.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self.kubeconfig())
        os.replace(tmp, path)
        return path

    def api_client(self) -> ApiClient:
        """An official-client ApiClient configured for this server."""
        from kubernetes import client  # noqa: PLC0415 - the server itself does not need it

        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(cfg)

    # ---- test hooks (any thread) --------------------------------------------------------

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run fn on the loop thread and return its result (directly if not running)."""
        if (self._thread is None or self.loop is None
                or threading.current_thread() is self._thread):
            return fn()

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def drop_watches(self, graceful: bool = False) -> int:
        """End every open watch: abruptly (connection cut, as on an apiserver crash) or
        gracefully (the stream ends normally, as on an apiserver timeout). Returns how many."""
        def drop() -> int:
            watches = list(self._watches)
            for w in watches:
                w.drop(graceful)
            return len(watches)

        return int(self._call(drop))

    def force_gone_next_watch(self, count: int = 1) -> None:
        """The next `count` watches that name a resourceVersion get a 410 ERROR event."""
        with self.api._hook_lock:
            self.api.force_gone += count

    def compact(self) -> None:
        """Discard all watch history: every older resourceVersion is now too old (410)
        for watches, exact lists and continue tokens."""
        self.store.compact()

    def inject(self, errors: Iterable[int] = (), *, latency: float = 0.0, count: int | None = 1,
               methods: Iterable[str] | None = None, path: str | None = None,
               watch: bool | None = None) -> None:
        """Fail or delay the next `count` matching requests (None: until cleared).

        Each one waits `latency` seconds, then (if `errors` is not empty) gets the next code
        of `errors` in turn, with the Status body and Retry-After header the apiserver sends
        for it (429 TooManyRequests, 500 InternalError, 503, 504 ...). Filters: HTTP
        `methods`, a substring of the URL `path`, and `watch` (True: watches only)."""
        inj = _Injection(tuple(errors), latency, count,
                         frozenset(m.upper() for m in methods) if methods else None, path, watch)
        with self._hooks:
            self._injections.append(inj)

    def clear_injections(self) -> None:
        with self._hooks:
            self._injections.clear()

    def pause(self) -> None:
        """Stop answering: requests and watch events wait until resume()."""
        self._paused = True
        self._call(self._unpaused.clear)

    def resume(self) -> None:
        self._paused = False
        self._call(self._unpaused.set)

    # ---- requests (loop thread) ---------------------------------------------------------

    def _needs_slow_path(self, req: Request) -> bool:
        if self._paused or self._injections:
            return True
        qs = req.query_string
        if "resourceVersion=" in qs:
            # Only a version the store has not reached yet can make a request wait.
            for k, v in parse_qsl(qs):
                if k == "resourceVersion":
                    return v.isdigit() and int(v) > self.store.rv
        return False

    def _authorized(self, req: Request) -> bool:
        scheme, _, cred = req.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(cred.strip().encode(),
                                                                 self._token)

    def _injected(self, req: Request) -> tuple[Response | None, float]:
        with self._hooks:
            inj = next((i for i in self._injections if i.matches(req)), None)
            if inj is None:
                return None, 0.0
            if inj.remaining is not None:
                inj.remaining -= 1
            code = inj.errors[inj.served % len(inj.errors)] if inj.errors else None
            inj.served += 1
            self._injections = [i for i in self._injections
                                if i.remaining is None or i.remaining > 0]
        return (error_response(errors.for_code(code)) if code else None), inj.latency

    def _dispatch(self, req: Request) -> Response | WatchSpec:
        try:
            return self.api.handle(req)
        except Exception as exc:  # a bug here must not look like a dead server
            log.exception("%s %s failed", req.method, req.path)
            return error_response(errors.internal(f"emulator error: {exc!r}"))

    def _handle(self, req: Request) -> Response | WatchSpec:
        if not self._authorized(req):
            return error_response(errors.unauthorized())
        if self.audit is not None:
            # What a client asked for, for tests that derive least-privilege RBAC.
            self.audit.append((req.method, req.path, req.query.get("watch", ""),
                               req.headers.get("user-agent", "")))
        return self._dispatch(req)

