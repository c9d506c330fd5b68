"""A stand-in EndpointSlice controller for the sandbox (the emulator runs no controllers).

For every service with a selector it keeps one slice, ``<service>-sandbox``, listing the
running pods that match, ready unless they are being deleted, with the service's
numeric target ports. Enough for the demo and the acceptance suite; the real controller
also splits slices, resolves named ports and tracks topology.

    python -m ovn_k8s.sandbox.endpoints --kubeconfig FILE
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from ovn_k8s.sandbox import termination

LOG = logging.getLogger("ovn_k8s.sandbox.endpoints")


def _matches(selector: dict[str, str], labels: dict[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def slice_for(svc: dict[str, Any], pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    spec = svc.get("spec") or {}
    selector = spec.get("selector")
    if not selector:
        return None
    meta = svc["metadata"]
    endpoints = []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        status = pod.get("status") or {}
        if (pod["metadata"]["namespace"] != meta["namespace"]
                or not _matches(selector, pod["metadata"].get("labels"))
                or status.get("phase") != "Running" or not status.get("podIP")):
            continue
        terminating = bool(pod["metadata"].get("deletionTimestamp"))
        endpoints.append({
            "addresses": [status["podIP"]],
            "conditions": {"ready": not terminating, "serving": True,
                           "terminating": terminating},
            "nodeName": (pod.get("spec") or {}).get("nodeName"),
            "targetRef": {"kind": "Pod", "name": pod["metadata"]["name"],
                          "namespace": meta["namespace"]},
        })
    ports = [{"name": p.get("name") or "", "port": p.get("targetPort") or p["port"],
              "protocol": p.get("protocol") or "TCP"}
             for p in spec.get("ports") or () if isinstance(p.get("targetPort", 0), int)]
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"{meta['name']}-sandbox", "namespace": meta["namespace"],
                     "labels": {"kubernetes.io/service-name": meta["name"],
                                "endpointslice.kubernetes.io/managed-by": "ovn-k8s-sandbox"}},
        "addressType": "IPv4", "endpoints": endpoints, "ports": ports,
    }


class Controller:
    def __init__(self, kubeconfig: str) -> None:
        from kubernetes import client  # noqa: PLC0415

        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
        from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415
        from ovn_k8s.kube.workqueue import WorkQueue  # noqa: PLC0415

        self.api = kube_client.api_client(kubeconfig=kubeconfig)
        self.dv1 = client.DiscoveryV1Api(self.api)
        self.queue = WorkQueue("endpoints")
        self.services = reflector_for(self.api, "services", handler=self._svc_event)
        self.pods = reflector_for(self.api, "pods", handler=self._pod_event)
        self.written: dict[str, Any] = {}

    def _svc_event(self, _etype: str, key: str, _obj: Any) -> None:
        self.queue.add(key)

    def _pod_event(self, _etype: str, _key: str, obj: Any) -> None:
        ns = obj["metadata"]["namespace"]
        for key, svc in self.services.items():
            if svc["metadata"]["namespace"] == ns and _matches(
                    (svc.get("spec") or {}).get("selector") or {"": "-"},
                    obj["metadata"].get("labels")):
                self.queue.add(key)

    def handle(self, key: str) -> None:
        from kubernetes.client.rest import ApiException  # noqa: PLC0415

        svc = self.services.get(key)
        namespace, _, name = key.partition("/")
        if svc is None:
            if self.written.pop(key, None) is not None:
                try:
                    self.dv1.delete_namespaced_endpoint_slice(f"{name}-sandbox", namespace)
                except ApiException as e:
                    if e.status != 404:
                        raise
            return
        body = slice_for(svc, [p for _, p in self.pods.items()])
        if body is None or body == self.written.get(key):
            return
        try:
            self.dv1.replace_namespaced_endpoint_slice(f"{name}-sandbox", namespace, body)
        except ApiException as e:
            if e.status != 404:
                raise
            self.dv1.create_namespaced_endpoint_slice(namespace, body)
        self.written[key] = body
        LOG.info("service %s: %d endpoints", key, len(body["endpoints"]))

    def run(self) -> None:
        self.pods.start()
        self.pods.wait_synced(60)
        self.services.start()
        self.queue.start(self.handle)
        termination().wait()
        self.services.stop()
        self.pods.stop()
        self.queue.shutdown()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ovn_k8s.sandbox.endpoints")
    p.add_argument("--kubeconfig", required=True)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Controller(args.kubeconfig).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
