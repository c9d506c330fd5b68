#!/usr/bin/env python3
"""What the reflector costs: cold LIST into the cache and watch events, raw JSON dicts
versus the official client's model objects (the baseline), at 10k pods.

The API emulator runs in its own process; pods are created with the lean client of
bench/apiserver.py. Measured in this process:
- cold sync: Reflector.start() until has_synced() for all pods (paged by 500 and unpaged),
  wall time and this process's CPU; the cache's retained memory (tracemalloc, separate run);
- baseline: one list_pod_for_all_namespaces() deserialised into V1Pod models;
- watch replay from an old resourceVersion: the reflector's path (decode, cache, enqueue
  into a WorkQueue) versus kubernetes.watch.Watch (models), events/s and CPU per event;
- live: pods created at full speed by another process while a synced reflector follows;
  CPU per event here and the lag of the last event.

Run: .venv/bin/python bench/kube_reflector.py [--pods 10000]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import threading
import time
import tracemalloc
from pathlib import Path
from types import SimpleNamespace

from kubernetes import client, watch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apiserver import Server, get_json, lean_creates, machine, print_table

from ovn_k8s.kube import client as kclient
from ovn_k8s.kube.reflector import Reflector
from ovn_k8s.kube.workqueue import WorkQueue


def cpu() -> float:
    t = os.times()
    return t.user + t.system


def api_for(srv: Server) -> client.ApiClient:
    return kclient.api_client(kubeconfig=srv.kubeconfig, environ={})


def cold_sync(srv: Server, page_size: int) -> tuple[float, float, int]:
    api = api_for(srv)
    r = Reflector("pods", client.CoreV1Api(api).list_pod_for_all_namespaces,
                  page_size=page_size)
    c0, t0 = cpu(), time.perf_counter()
    r.start()
    r.wait_synced(300)
    dt, dc = time.perf_counter() - t0, cpu() - c0
    n = len(r)
    r.stop()
    api.close()
    return dt, dc, n


def cache_memory(srv: Server) -> float:
    api = api_for(srv)
    tracemalloc.start()
    r = Reflector("pods", client.CoreV1Api(api).list_pod_for_all_namespaces)
    r.start()
    r.wait_synced(300)
    r.stop()
    current, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    api.close()
    del r
    return current / 1e6


def model_list(srv: Server) -> tuple[float, float]:
    api = api_for(srv)
    v1 = client.CoreV1Api(api)
    v1.list_namespace()  # load the model classes outside the timing
    c0, t0 = cpu(), time.perf_counter()
    v1.list_pod_for_all_namespaces()
    dt, dc = time.perf_counter() - t0, cpu() - c0
    api.close()
    return dt, dc


def reflector_replay(srv: Server, rv: str, n: int) -> tuple[float, float]:
    """The watch path alone, from `rv`: decode each event, update the cache, enqueue."""
    api = api_for(srv)
    q = WorkQueue("bench")
    r: Reflector

    def handler(etype: str, key: str, obj: dict) -> None:
        q.add(key)
        if r.stats["events"] >= n:
            r.stop()  # cuts the stream; the watch below returns

    r = Reflector("pods", client.CoreV1Api(api).list_pod_for_all_namespaces, handler=handler)
    r._rv = rv  # skip the LIST: only the watch path is measured
    c0, t0 = time.thread_time(), time.perf_counter()
    r._watch()
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    got = r.stats["events"]
    api.close()
    return got / dt, dc / got * 1e6


def official_replay(srv: Server, rv: str, n: int) -> tuple[float, float]:
    api = api_for(srv)
    v1 = client.CoreV1Api(api)
    got = 0
    w = watch.Watch()
    c0, t0 = time.thread_time(), time.perf_counter()
    for _ in w.stream(v1.list_pod_for_all_namespaces, resource_version=rv, timeout_seconds=300):
        got += 1
        if got == n:
            w.stop()
    dt, dc = time.perf_counter() - t0, time.thread_time() - c0
    api.close()
    return got / dt, dc / got * 1e6


def _creator(port: int, token: str, n: int, prefix: str) -> None:
    fake = SimpleNamespace(port=port, token=token, cpu=lambda: 0.0)
    lean_creates(fake, n, 16, prefix)  # type: ignore[arg-type]


def live(srv: Server, n: int) -> tuple[float, float, float]:
    """(events/s seen, CPU us per event in this process, lag of the last event in ms)."""
    api = api_for(srv)
    last = threading.Event()
    prefix = "live-"

    def handler(etype: str, key: str, obj: dict) -> None:
        if key == f"default/{prefix}{n - 1}":
            last.set()

    r = Reflector("pods", client.CoreV1Api(api).list_pod_for_all_namespaces, handler=handler)
    r.start()
    r.wait_synced(300)
    before = r.stats["events"]
    ctx = mp.get_context("fork")
    p = ctx.Process(target=_creator, args=(srv.port, srv.token, n, prefix))
    c0, t0 = cpu(), time.perf_counter()
    p.start()
    p.join()
    t_written = time.perf_counter()
    last.wait(120)
    t_seen = time.perf_counter()
    dc = cpu() - c0
    events = r.stats["events"] - before
    r.stop()
    api.close()
    return events / (t_seen - t0), dc / max(events, 1) * 1e6, (t_seen - t_written) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", type=int, default=10000)
    args = ap.parse_args()
    n = args.pods
    srv = Server(window=3 * n + 10000)
    rows: list[tuple[str, str, str]] = []
    try:
        start_rv = str(get_json(srv, "/api/v1/pods?limit=1")["metadata"]["resourceVersion"])
        lean_creates(srv, n, 16, "p-")
        cold_sync(srv, 0)  # warm-up: imports, first connection, server caches
        for page in (500, 0):
            dt, dc, got = cold_sync(srv, page)
            how = f"{got} pods, {'pages of 500' if page else 'one GET'}"
            rows.append(("cold sync (dicts)", how, f"{dt * 1000:.0f} ms wall, "
                                                    f"{dc * 1000:.0f} ms CPU"))
        dt, dc = model_list(srv)
        rows.append(("list into models (baseline)", f"{n} pods, one GET, V1Pod objects",
                     f"{dt * 1000:.0f} ms wall, {dc * 1000:.0f} ms CPU"))
        rows.append(("cache memory", f"{n} pods as dicts (tracemalloc)",
                     f"{cache_memory(srv):.0f} MB"))
        rate, us = reflector_replay(srv, start_rv, n)
        rows.append(("watch replay", "reflector: decode + cache + enqueue",
                     f"{rate:,.0f} events/s, {us:.0f} us CPU/event"))
        m = min(n, 5000)
        rate, us = official_replay(srv, start_rv, m)
        rows.append(("watch replay (baseline)", f"kubernetes.watch.Watch, {m} events, models",
                     f"{rate:,.0f} events/s, {us:.0f} us CPU/event"))
        rate, us, lag = live(srv, n // 2)
        rows.append(("watch live", f"{n // 2} pods created by another process",
                     f"{rate:,.0f} events/s, {us:.0f} us CPU/event, last +{lag:.0f} ms"))
    finally:
        srv.stop()
    print(f"\nReflector benchmark — {machine()}\n")
    print_table(("what", "how", "result"), rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
