#!/usr/bin/env python3
"""How fast is the Kubernetes API emulator? Pod creates/s and watch events/s.

The emulator runs in its own process (`python -m ovn_k8s.sandbox.apiserver`), as it does
for the sandbox, so clients and server do not share a GIL. Measured:

- creates/s with the official client, one thread (the baseline) and several threads;
- creates/s with a lean HTTP/1.1 client: one process, many keep-alive connections, one
  request in flight per connection (no pipelining), bodies pre-serialised;
- watch events/s delivered: replay (watchers start from an old resourceVersion and receive
  the backlog; every event JSON-decoded), live fan-out (50 watchers while pods are created
  at full speed; events counted off the wire), and the official client's
  kubernetes.watch.Watch (decodes into V1Pod models) as the baseline.

Run: .venv/bin/python bench/apiserver.py [--pods 10000] [--watchers 50]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import kubernetes
from kubernetes import client, watch

sys.path.insert(0, str(Path(__file__).parent))
from lab_startstop import machine as machine_info  # bench/lab_startstop.py

ROOT = Path(__file__).resolve().parents[1]

TARGET_CREATES = 2000
TARGET_EVENTS = 20000


def pod_body(name: str) -> dict:
    # Roughly what a deployment's pod looks like on the wire.
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "bench", "pod-template-hash": "7f9c"},
                         "annotations": {"kubernetes.io/psp": "restricted"}},
            "spec": {"containers": [{"name": "app", "image": "registry.local/app:1.2.3",
                                     "ports": [{"containerPort": 8080, "name": "http"}],
                                     "env": [{"name": "MODE", "value": "bench"}],
                                     "resources": {"requests": {"cpu": "10m",
                                                                "memory": "16Mi"}}}],
                     "nodeName": "node-1"}}


class Server:
    def __init__(self, window: int) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="apiserver-bench-")
        kc = os.path.join(self.dir.name, "kubeconfig")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ovn_k8s.sandbox.apiserver", "--port", "0",
             "--kubeconfig", kc, "--watch-window", str(window)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
        assert self.proc.stdout is not None
        self.url = self.proc.stdout.readline().decode().strip()
        self.port = int(self.url.rsplit(":", 1)[1])
        self.kubeconfig = kc
        text = Path(kc).read_text()
        self.token = text.split("token: ")[1].split("\n")[0].strip('"')

    def cpu(self) -> float:
        f = Path(f"/proc/{self.proc.pid}/stat").read_text().split()
        return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")

    def api(self) -> client.ApiClient:
        cfg = client.Configuration(host=self.url)
        cfg.api_key = {"authorization": self.token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        cfg.connection_pool_maxsize = 32
        return client.ApiClient(cfg)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


def request(srv: Server, method: str, path: str, body: bytes = b"") -> bytes:
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
            f"{srv.token}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
            "\r\n\r\n").encode() + body


def get_json(srv: Server, path: str) -> dict:
    c = http.client.HTTPConnection("127.0.0.1", srv.port)
    c.request("GET", path, headers={"Authorization": f"Bearer {srv.token}"})
    data = json.loads(c.getresponse().read())
    c.close()
    return data


def get_raw_size(srv: Server, path: str) -> int:
    c = http.client.HTTPConnection("127.0.0.1", srv.port)
    c.request("GET", path, headers={"Authorization": f"Bearer {srv.token}"})
    n = len(c.getresponse().read())
    c.close()
    return n


# ---- creates ----------------------------------------------------------------------------------

def official_creates(srv: Server, n: int, threads: int, prefix: str) -> float:
    api = srv.api()
    v1 = client.CoreV1Api(api)
    v1.list_namespace()  # warm up the client's models outside the timing
    per = n // threads

    def run(k: int) -> None:
        for i in range(per):
            v1.create_namespaced_pod("default", pod_body(f"{prefix}{k}-{i}"))

    t = time.perf_counter()
    ths = [threading.Thread(target=run, args=(k,)) for k in range(threads)]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    dt = time.perf_counter() - t
    api.close()
    return per * threads / dt


def _official_proc(url: str, token: str, n: int, prefix: str, start: mp.Event,
                   q: mp.Queue) -> None:
    cfg = client.Configuration(host=url)
    cfg.api_key = {"authorization": token}
    cfg.api_key_prefix = {"authorization": "Bearer"}
    with client.ApiClient(cfg) as api:
        v1 = client.CoreV1Api(api)
        v1.list_namespace()
        start.wait()
        for i in range(n):
            v1.create_namespaced_pod("default", pod_body(f"{prefix}{i}"))
    q.put(time.perf_counter())


def official_creates_procs(srv: Server, n: int, procs: int, prefix: str) -> float:
    """The official client in several processes, so its own GIL is not the limit."""
    start = mp.Event()
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_official_proc, args=(srv.url, srv.token, n // procs,
                                                   f"{prefix}{k}-", start, q))
          for k in range(procs)]
    for p in ps:
        p.start()
    time.sleep(3)  # model warm-up in every process, outside the timing
    t = time.perf_counter()
    start.set()
    ends = [q.get() for _ in ps]
    for p in ps:
        p.join()
    return (n // procs) * procs / (max(ends) - t)


def lean_creates(srv: Server, n: int, conns: int, prefix: str) -> tuple[float, float]:
    """(creates/s, server CPU microseconds per create)."""
    reqs = [request(srv, "POST", "/api/v1/namespaces/default/pods",
                    json.dumps(pod_body(f"{prefix}{i}")).encode()) for i in range(n)]
    it = iter(reqs)
    sel = selectors.DefaultSelector()
    bufs: dict[socket.socket, bytes] = {}
    socks = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", srv.port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(s)
    done = 0
    bad = 0
    cpu0 = srv.cpu()
    t = time.perf_counter()
    for s in socks:
        r = next(it, None)
        if r is not None:
            s.sendall(r)
            bufs[s] = b""
            sel.register(s, selectors.EVENT_READ)
    while done < n:
        for key, _ in sel.select():
            s = key.fileobj
            buf = bufs[s] + s.recv(262144)
            while True:
                i = buf.find(b"\r\n\r\n")
                if i < 0:
                    break
                head = buf[:i]
                length = int(head.split(b"Content-Length: ")[1].split(b"\r\n")[0])
                if len(buf) < i + 4 + length:
                    break
                if not head.startswith(b"HTTP/1.1 201"):
                    bad += 1
                buf = buf[i + 4 + length:]
                done += 1
                r = next(it, None)
                if r is not None:
                    s.sendall(r)
            bufs[s] = buf
    dt = time.perf_counter() - t
    cpu = srv.cpu() - cpu0
    for s in socks:
        s.close()
    if bad:
        raise SystemExit(f"{bad} creates failed")
    return n / dt, cpu / n * 1e6


# ---- watches ----------------------------------------------------------------------------------

def _open_watch(port: int, token: str, rv: str, timeout: int = 120) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"GET /api/v1/namespaces/default/pods?watch=true&resourceVersion={rv}"
               f"&timeoutSeconds={timeout} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
               f"{token}\r\n\r\n").encode())
    return s


class _Chunked:
    """Incremental chunked-transfer decoder that yields body bytes."""

    def __init__(self) -> None:
        self.buf = b""
        self.headers_done = False
        self.need = -1  # bytes left in the current chunk (+2 for its CRLF); -1: read size

    def feed(self, data: bytes) -> bytes:
        self.buf += data
        out = []
        if not self.headers_done:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return b""
            self.buf = self.buf[i + 4:]
            self.headers_done = True
        while True:
            if self.need < 0:
                i = self.buf.find(b"\r\n")
                if i < 0:
                    break
                size = int(self.buf[:i], 16)
                self.buf = self.buf[i + 2:]
                self.need = size + 2
                if size == 0:
                    break
            take = min(self.need, len(self.buf))
            out.append(self.buf[:take])
            self.buf = self.buf[take:]
            self.need -= take
            if self.need:
                break
            self.need = -1
        body = b"".join(out)
        # Chunk CRLFs were included in the data taken; the events themselves end in "\n"
        # and never contain "\r\n", so dropping CRLF pairs leaves only event text.
        return body.replace(b"\r\n", b"")


def _replay_watcher(port: int, token: str, rv: str, n: int, q: mp.Queue) -> None:
    s = _open_watch(port, token, rv)
    dec = _Chunked()
    got = 0
    pending = b""
    t = time.perf_counter()
    last_rv = 0
    while got < n:
        data = s.recv(1 << 20)
        if not data:
            break
        pending += dec.feed(data)
        *lines, pending = pending.split(b"\n")
        for line in lines[:n - got]:
            ev = json.loads(line)
            rv_now = int(ev["object"]["metadata"]["resourceVersion"])
            assert rv_now > last_rv, "out of order"
            last_rv = rv_now
            got += 1
    q.put((got, time.perf_counter() - t))
    s.close()


def replay_events(srv: Server, rv: str, n: int, watchers: int) -> tuple[float, float]:
    """Every watcher starts at rv and decodes n events. (events/s total, slowest seconds)"""
    q: mp.Queue = mp.Queue()
    ps = [mp.Process(target=_replay_watcher, args=(srv.port, srv.token, rv, n, q))
          for _ in range(watchers)]
    t = time.perf_counter()
    for p in ps:
        p.start()
    res = [q.get() for _ in ps]
    for p in ps:
        p.join()
    dt = time.perf_counter() - t
    assert all(r[0] == n for r in res), res
    return watchers * n / dt, dt


def _fanout_watchers(port: int, token: str, rv: str, n: int, watchers: int,
                     ready: mp.Event, q: mp.Queue) -> None:
    sel = selectors.DefaultSelector()
    state = {}
    for _ in range(watchers):
        s = _open_watch(port, token, rv)
        state[s] = [_Chunked(), 0]
        sel.register(s, selectors.EVENT_READ)
    ready.set()
    left = watchers
    t_first = None
    while left:
        for key, _ in sel.select():
            s = key.fileobj
            data = s.recv(1 << 20)
            if t_first is None:
                t_first = time.perf_counter()
            st = state[s]
            st[1] = min(n, st[1] + st[0].feed(data).count(b"\n"))
            if st[1] >= n or not data:
                sel.unregister(s)
                left -= 1
    q.put(([st[1] for st in state.values()], time.perf_counter(), t_first))


def fanout_events(srv: Server, n: int, watchers: int, prefix: str
                  ) -> tuple[float, float, float]:
    """Watchers follow live while n pods are created. (events/s, creates/s, lag seconds)"""
    rv = str(get_json(srv, "/api/v1/namespaces/default/pods?limit=1")["metadata"][
        "resourceVersion"])
    ready = mp.Event()
    q: mp.Queue = mp.Queue()
    p = mp.Process(target=_fanout_watchers, args=(srv.port, srv.token, rv, n, watchers, ready,
                                                  q))
    p.start()
    ready.wait()
    time.sleep(0.3)
    t = time.perf_counter()
    rate, _ = lean_creates(srv, n, 8, prefix)
    t_writes = time.perf_counter()
    counts, t_end, _ = q.get()
    p.join()
    assert all(c == n for c in counts), counts[:5]
    return watchers * n / (t_end - t), rate, t_end - t_writes


def official_watch(srv: Server, rv: str, n: int) -> float:
    api = srv.api()
    v1 = client.CoreV1Api(api)
    got = 0
    w = watch.Watch()
    t = time.perf_counter()
    for _ in w.stream(v1.list_namespaced_pod, "default", resource_version=rv,
                      timeout_seconds=120):
        got += 1
        if got == n:
            w.stop()
    dt = time.perf_counter() - t
    api.close()
    return n / dt


# ---- report -----------------------------------------------------------------------------------

def machine() -> str:
    m = machine_info()
    return f"{m['cpus']} CPUs, {m['cpu model']}, Linux {m['kernel']}, Python {m['python']}"


def print_table(heads: tuple[str, ...], rows: list) -> None:
    w = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    print(" | ".join(h.ljust(w[i]) for i, h in enumerate(heads)))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(" | ".join(c.ljust(w[i]) for i, c in enumerate(r)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10000, help="pods for the lean create run")
    ap.add_argument("--watchers", type=int, default=50, help="live fan-out watchers")
    ap.add_argument("--baseline-pods", type=int, default=1000)
    args = ap.parse_args()
    rows: list[tuple[str, str, str, str]] = []
    srv = Server(window=10 * args.pods + 10000)
    try:
        start_rv = str(get_json(srv, "/api/v1/namespaces/default/pods?limit=1")["metadata"][
            "resourceVersion"])
        base = official_creates(srv, args.baseline_pods, 1, "o1-")
        rows.append(("pod creates/s", "official client, 1 thread (baseline)", f"{base:,.0f}",
                     ""))
        multi = official_creates(srv, args.baseline_pods * 2, 8, "o8-")
        rows.append(("pod creates/s", "official client, 8 threads, 1 process", f"{multi:,.0f}",
                     ""))
        procs = official_creates_procs(srv, args.baseline_pods * 2, 4, "op-")
        rows.append(("pod creates/s", "official client, 4 processes x 1 thread",
                     f"{procs:,.0f}", ""))
        lean, cpu = lean_creates(srv, args.pods, 16, "l-")
        rows.append(("pod creates/s", "lean client: 16 keep-alive conns, 1 in flight each",
                     f"{lean:,.0f}", f">= {TARGET_CREATES} {'ok' if lean >= 2000 else 'MISS'}"))
        rows.append(("server CPU/create", "emulator process, same run", f"{cpu:,.0f} us", ""))
        total = int(get_json(srv, "/api/v1/namespaces/default/pods?limit=1")["metadata"][
            "remainingItemCount"]) + 1
        t = time.perf_counter()
        size = get_raw_size(srv, "/api/v1/namespaces/default/pods")
        rows.append(("list all pods", f"{total} pods, one GET ({size / 1e6:.0f} MB, not decoded)",
                     f"{(time.perf_counter() - t) * 1000:.0f} ms", ""))
        n = args.pods
        rep, _ = replay_events(srv, start_rv, n, 2)
        rows.append(("watch events/s", f"replay: 2 watchers x {n}, each event JSON-decoded",
                     f"{rep:,.0f}", f">= {TARGET_EVENTS} {'ok' if rep >= 20000 else 'MISS'}"))
        m = max(1000, args.pods // 5)
        fan, fan_creates, lag = fanout_events(srv, m, args.watchers, "f-")
        rows.append(("watch events/s", f"live: {args.watchers} watchers x {m} pods created",
                     f"{fan:,.0f}", f">= {TARGET_EVENTS} {'ok' if fan >= 20000 else 'MISS'}"))
        rows.append(("pod creates/s", f"during that fan-out ({args.watchers} watchers)",
                     f"{fan_creates:,.0f}", f"last event {lag * 1000:.0f} ms after last write"))
        ow = official_watch(srv, start_rv, min(n, 5000))
        rows.append(("watch events/s", "official kubernetes.watch.Watch, 1 watcher (baseline)",
                     f"{ow:,.0f}", ""))
    finally:
        srv.stop()

    print(f"\nKubernetes API emulator benchmark — {machine()}")
    print(f"client: kubernetes {kubernetes.__version__}; server: separate process\n")
    print_table(("what", "how", "result", "target"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
