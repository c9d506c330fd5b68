"""Pods: an address from the node's subnet, a logical switch port, the ``ovn`` annotation.

A pod is wired when it is scheduled (``spec.nodeName``), not ``hostNetwork`` and not
terminal. Its address comes from, in order: its ``ovn`` annotation (a pod keeps its
addresses across our restarts), the port we already made for this pod UID (a crash
between the NB commit and the annotation), else the lowest free address of its node.

Work comes in batches from the queue: one look at the NB replica for the whole batch,
one raw insert transaction for its new ports and one ovsdbapp transaction for ports
that change or go, then the annotations, written in parallel in the background. A
pod's address is released only after the transaction that deleted its port, so it is
never in two ports at once. Updates that change nothing a pod's wiring depends on
(kubelet's status writes, our own annotation coming back) are not queued at all.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import netaddr

from ovn_k8s import annotations, ipam, translate
from ovn_k8s.ovsdb import NbDb

LOG = logging.getLogger(__name__)

TERMINAL_PHASES = ("Succeeded", "Failed")


@dataclass(frozen=True)
class Held:
    """The address a pod (one UID) holds in its node's pool."""

    uid: str
    node: str
    ip: netaddr.IPAddress


def _fingerprint(pod: dict[str, Any]) -> tuple[Any, ...]:
    """What a pod's wiring depends on; an update that leaves it alone needs no work."""
    meta = pod["metadata"]
    return (meta.get("uid"), (pod.get("spec") or {}).get("nodeName"), is_wired(pod),
            (meta.get("annotations") or {}).get(annotations.POD_NETWORK))


def trim(pod: dict[str, Any]) -> dict[str, Any]:
    """The part of a pod this handler reads: what the watcher caches of every pod.

    A real pod carries its containers, status conditions and managedFields, several
    KB each; across 10k pods that alone would exceed the watcher's memory target.
    """
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    ours = (meta.get("annotations") or {}).get(annotations.POD_NETWORK)
    return {
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid", "resourceVersion")
                     if k in meta} | ({"annotations": {annotations.POD_NETWORK: ours}}
                                      if ours is not None else {}),
        "spec": {k: spec[k] for k in ("nodeName", "hostNetwork") if k in spec},
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def is_wired(pod: dict[str, Any] | None) -> bool:
    if pod is None:
        return False
    spec = pod.get("spec") or {}
    phase = (pod.get("status") or {}).get("phase")
    return bool(spec.get("nodeName")) and not spec.get("hostNetwork") and (
        phase not in TERMINAL_PHASES)


class PodHandler:
    def __init__(
        self,
        nb: NbDb,
        cache: Any,
        patch_pod: Callable[[str, str, dict[str, Any]], Any],
        subnet_of: Callable[[str], netaddr.IPNetwork | None],
        *,
        patch_workers: int = 8,
        retry: Callable[[str], Any] = lambda key: None,
    ) -> None:
        self.nb = nb
        self.cache = cache
        self.patch_pod = patch_pod
        self.subnet_of = subnet_of
        self.retry = retry
        self._pools: dict[str, ipam.AddressPool] = {}
        self._held: dict[str, Held] = {}
        self._reported: set[tuple[str, str]] = set()
        # key -> the fingerprint of the state last brought into NB and the annotation.
        self._settled: dict[str, tuple[Any, ...]] = {}
        self._patcher = ThreadPoolExecutor(patch_workers, thread_name_prefix="annotate")
        self._lock = threading.Lock()  # the pools are also read by status()
        self.counters = {"ports_created": 0, "ports_updated": 0, "ports_deleted": 0, "annotated": 0,
                         "transactions": 0, "transaction_ms": 0, "batches": 0,
                         "batched_keys": 0}

    def close(self) -> None:
        self._patcher.shutdown(wait=True)

    def _report_once(self, key: str, message: str, level: int = logging.ERROR) -> None:
        if (key, message) not in self._reported:
            self._reported.add((key, message))
            LOG.log(level, "pod %s: %s", key, message)

    def _pool(self, node: str) -> ipam.AddressPool | None:
        subnet = self.subnet_of(node)
        if subnet is None:
            return None
        pool = self._pools.get(node)
        if pool is None or pool.subnet != subnet:
            pool = self._pools[node] = ipam.AddressPool(subnet)
        return pool

    def _hold(self, key: str, held: Held) -> bool:
        """Reserve ``held.ip`` for ``key``; False if another pod holds it."""
        current = self._held.get(key)
        if current == held:
            return True
        pool = self._pool(held.node)
        if pool is None or held.ip not in pool.subnet:
            return False
        if current is not None and (current.node, current.ip) == (held.node, held.ip):
            self._held[key] = held  # the same address, now for another UID
            return True
        if not pool.reserve(held.ip):
            return False  # every reservation is some key's: another pod has it
        self._release(key)
        self._held[key] = held
        return True

    def _release(self, key: str) -> None:
        held = self._held.pop(key, None)
        if held is not None:
            pool = self._pools.get(held.node)
            if pool is not None and held.ip in pool.subnet:
                pool.release(held.ip)

    # ---- start-up ----------------------------------------------------------------------

    def startup(self) -> list[str]:
        """Reserve every address in use; returns the keys of stale ports (no such pod).

        Annotated addresses are reserved first, completed pods included (their key
        is queued and releases them), then the addresses of ports whose annotation
        never got written.
        """
        ports = translate.owned_pod_ports(self.nb)
        for key, pod in self.cache.items():
            node = (pod.get("spec") or {}).get("nodeName")
            if not node:
                continue
            try:
                net = annotations.pod_network((pod.get("metadata") or {}).get("annotations"))
            except annotations.AnnotationError as e:
                self._report_once(key, f"{e}; it will get a new one")
                continue
            if net is not None and not self._hold(key, Held(pod["metadata"]["uid"], node,
                                                            net.ip.ip)):
                self._report_once(key, f"its address {net.ip.ip} is not free on node {node}")
        for key, row in ports.items():
            pod = self.cache.get(key)
            if pod is None or key in self._held:
                continue
            node = row.options.get("requested-chassis")
            ip = translate.port_address(row)
            uid = row.external_ids.get(translate.UID)
            if node and ip is not None and uid == pod["metadata"].get("uid"):
                self._hold(key, Held(uid, node, ip))
        return sorted(k for k in ports if k not in self.cache)

    # ---- events ------------------------------------------------------------------------

    def needs_work(self, etype: str, key: str, pod: dict[str, Any] | None) -> bool:
        """False for an update that changes nothing we act on.

        Most pod updates are status (kubelet) or our own annotation coming back; each
        would otherwise cost a full plan and an NB comparison. Adds and deletes always
        go through, and so does everything about a pod whose last handling failed.
        """
        if etype != "MODIFIED" or pod is None:
            return True
        return self._settled.get(key) != _fingerprint(pod)

    def handle_batch(self, keys: list[str]) -> list[str]:
        """Bring every pod of ``keys`` to its wanted state; returns the keys that failed.

        New ports go in one raw insert transaction (the bulk of a pod storm, and the
        IDL's transaction objects would cost twice the CPU); changed and deleted ones
        in one ovsdbapp transaction.
        """
        cmds: list[Any] = []
        in_txn: list[str] = []
        new_ports: list[translate.PodPort] = []
        inserted: list[str] = []
        patches: list[tuple[str, dict[str, Any], str]] = []
        release_after: list[str] = []
        failed: list[str] = []
        new_holds: list[str] = []
        settled: dict[str, tuple[Any, ...]] = {}
        pods = {key: self.cache.get(key) for key in keys}
        names = {key: translate.lsp_name(*key.split("/", 1)) for key in keys}
        rows, switches = translate.lookup(
            self.nb, names.values(),
            {pod["spec"]["nodeName"] for pod in pods.values() if is_wired(pod)})
        for key in keys:
            self._settled.pop(key, None)
            pod, row = pods[key], rows.get(names[key])
            if not is_wired(pod):
                self._plan_removal(key, pod, row, cmds, in_txn, release_after)
                continue
            try:
                plan = self._plan_port(key, pod, switches, new_holds)
            except ipam.AddressError as e:
                self._report_once(key, str(e))
                failed.append(key)
                continue
            if plan is None:
                failed.append(key)
                continue
            port, annotation = plan
            if row is None:
                new_ports.append(port)
                inserted.append(key)
            elif not translate.port_is_current(port, row):
                cmds.append(translate.EnsurePodPort(self.nb.api, port))
                in_txn.append(key)
                self.counters["ports_updated"] += 1
            fingerprint = _fingerprint(pod)
            if annotation is not None:
                patches.append((key, pod, annotation))
                fingerprint = (*fingerprint[:3], annotation)  # as its echo will show it
            settled[key] = fingerprint
        self.counters["batches"] += 1
        self.counters["batched_keys"] += len(keys)
        if cmds and not self._commit(in_txn, new_holds, lambda: self.nb.execute(*cmds)):
            failed += in_txn
        if new_ports:
            if self._commit(inserted, new_holds, lambda: self._insert(new_ports, switches)):
                self.counters["ports_created"] += len(new_ports)
            else:
                failed += inserted
        failed_set = set(failed)
        for key in release_after:
            if key not in failed_set:
                self._release(key)
        for key in set(settled) - failed_set:
            self._settled[key] = settled[key]
        self._annotate([p for p in patches if p[0] not in failed_set])
        return failed

    def _commit(self, keys: list[str], new_holds: list[str], run: Callable[[], Any]) -> bool:
        """Run one NB transaction for ``keys``; on failure free what they were given."""
        try:
            t0 = time.monotonic()
            run()
            self.counters["transaction_ms"] += round((time.monotonic() - t0) * 1000)
            self.counters["transactions"] += 1
            return True
        except Exception as e:
            LOG.error("NB transaction for %d pods failed: %s", len(keys), e)
            in_txn = set(keys)
            for key in new_holds:
                if key in in_txn:
                    self._release(key)
            return False

    def _insert(self, ports: list[translate.PodPort], switches: dict[str, Any]) -> None:
        self.nb.transact(translate.new_pod_ports_ops(ports, switches))
        # Read back before the next batch plans: a key handled again must find its
        # port, not insert a second one.
        last = ports[-1].lsp
        if not self.nb.wait_replica(lambda: bool(translate.lookup(self.nb, [last])[0])):
            LOG.warning("NB replica has not caught up with %d new ports", len(ports))

    def _plan_removal(self, key: str, pod: dict[str, Any] | None, row: Any, cmds: list[Any],
                      in_txn: list[str], release_after: list[str]) -> None:
        uid = pod["metadata"]["uid"] if pod is not None else None
        if row is not None and (uid is None or row.external_ids.get(translate.UID) == uid):
            cmds.append(translate.DeletePodPort(self.nb.api, row.name, uid))
            in_txn.append(key)
            self.counters["ports_deleted"] += 1
        if key in self._held and (uid is None or self._held[key].uid == uid):
            release_after.append(key)

    def _plan_port(self, key: str, pod: dict[str, Any], switches: dict[str, Any],
                   new_holds: list[str]) -> tuple[translate.PodPort, str | None] | None:
        meta = pod["metadata"]
        uid, node = meta["uid"], pod["spec"]["nodeName"]
        subnet = self.subnet_of(node)
        if subnet is None:
            # Usual at start-up (the node's event is handled after its pods'); an
            # unknown node stays here, and is reported once.
            self._report_once(key, f"node {node} has no subnet (yet); waiting", logging.INFO)
            return None
        if node not in switches:
            self._report_once(key, f"node {node} has no switch (yet); waiting", logging.INFO)
            return None
        current = (meta.get("annotations") or {}).get(annotations.POD_NETWORK)
        try:
            net = annotations.pod_network(meta.get("annotations"))
        except annotations.AnnotationError as e:
            self._report_once(key, f"{e}; giving it a new one")
            net = None
        if net is not None and net.ip.ip not in subnet:
            self._report_once(key, f"its address {net.ip} is outside node {node}'s subnet "
                                   f"{subnet}; giving it a new one")
            net = None
        if net is not None:
            if not self._hold(key, Held(uid, node, net.ip.ip)):
                self._report_once(key, f"its address {net.ip.ip} belongs to another pod")
                return None
        else:
            held = self._held.get(key)
            if held is None or held.uid != uid or held.node != node:
                pool = self._pool(node)
                assert pool is not None
                ip = pool.allocate()
                self._release(key)
                self._held[key] = Held(uid, node, ip)
                new_holds.append(key)
            net = translate.pod_network_for(self._held[key].ip, subnet)
        port = translate.PodPort(meta["namespace"], meta["name"], uid, node, net)
        wanted = net.to_json()
        return port, (wanted if current != wanted else None)

    def _annotate(self, patches: list[tuple[str, dict[str, Any], str]]) -> None:
        """Write the annotations in the background; a failed one retries its key.

        Not waiting for them lets the next batch's NB transaction overlap this
        batch's API writes. A key handled again before its write lands plans the
        same address (it is held) and writes the same value: harmless.
        """
        for key, pod, value in patches:
            meta = pod["metadata"]
            future = self._patcher.submit(
                self.patch_pod, meta["namespace"], meta["name"],
                {"metadata": {"annotations": {annotations.POD_NETWORK: value}}})
            future.add_done_callback(lambda f, key=key: self._annotated(key, f))

    def _annotated(self, key: str, future: Any) -> None:
        error = future.exception()
        if error is None:
            self.counters["annotated"] += 1
            return
        self._settled.pop(key, None)
        status = getattr(error, "status", None)
        if status == 404:
            return  # deleted meanwhile: its DELETED event cleans up
        LOG.warning("pod %s: writing the %s annotation failed (%s); retrying", key,
                    annotations.POD_NETWORK, status or error)
        self.retry(key)

    def status(self) -> dict[str, Any]:
        return {"pods_with_address": len(self._held), **self.counters}
