"""What a pod's ``ovn`` annotation says about its network, and how the plugin gets it.

The annotation (DESIGN.md) carries the lineage's singular fields and, for dual stack,
lists; routes are ``{"dest": CIDR, "nextHop": IP}`` as ovn-kubernetes writes them
(``{"dst", "gw"}``, the CNI result's spelling, is accepted too).

Fetching sits behind :class:`AnnotationSource` so a node daemon holding a pod cache
can replace the per-call Kubernetes client later without touching the plugin.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ovn_k8s.cni.spec import INVALID_CONFIG, TRY_AGAIN_LATER, CniError, PodRef, Route

LOG = logging.getLogger(__name__)

POD_ANNOTATION = "ovn"
_MAC_RE_CHARS = set("0123456789abcdef:")

IpIface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IpAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class AnnotationError(ValueError):
    """The annotation is there but does not follow the contract."""


@dataclass(frozen=True)
class PodNetwork:
    """The pod's addresses, MAC, gateways and extra routes, validated."""

    mac: str
    ips: tuple[IpIface, ...]
    gateways: tuple[IpAddr, ...]
    routes: tuple[Route, ...]
    uid: str | None = None  # metadata.uid of the pod the annotation came from

    def gateway_for(self, ip: IpIface) -> IpAddr | None:
        return next((g for g in self.gateways if g in ip.network), None)


def _ip_iface(text: Any, what: str) -> IpIface:
    try:
        iface = ipaddress.ip_interface(text)
    except (ValueError, TypeError):
        raise AnnotationError(f"{what} {text!r} is not an address with a prefix length") \
            from None
    if "/" not in str(text):
        raise AnnotationError(f"{what} {text!r} has no prefix length")
    return iface


def _ip(text: Any, what: str) -> IpAddr:
    try:
        return ipaddress.ip_address(text)
    except (ValueError, TypeError):
        raise AnnotationError(f"{what} {text!r} is not an IP address") from None


def parse_annotation(raw: str, uid: str | None = None) -> PodNetwork:
    try:
        value = json.loads(raw)
    except ValueError:
        raise AnnotationError(f"annotation {POD_ANNOTATION!r} is not JSON: {raw!r}") from None
    if not isinstance(value, dict):
        raise AnnotationError(f"annotation {POD_ANNOTATION!r} is not a JSON object: {raw!r}")
    mac = value.get("mac_address")
    if (not isinstance(mac, str) or len(mac) != 17 or not set(mac.lower()) <= _MAC_RE_CHARS
            or mac.count(":") != 5):
        raise AnnotationError(f"mac_address {mac!r} is not a MAC address")
    raw_ips = value.get("ip_addresses") or ([value["ip_address"]] if value.get("ip_address")
                                            else [])
    if not isinstance(raw_ips, list) or not raw_ips:
        raise AnnotationError("the annotation has neither ip_address nor ip_addresses")
    ips = tuple(_ip_iface(t, "ip address") for t in raw_ips)
    raw_gws = value.get("gateway_ips") or ([value["gateway_ip"]] if value.get("gateway_ip")
                                           else [])
    if not isinstance(raw_gws, list):
        raise AnnotationError("gateway_ips is not a list")
    gateways = tuple(_ip(t, "gateway") for t in raw_gws)
    for gw in gateways:
        if not any(gw in ip.network for ip in ips):
            raise AnnotationError(f"gateway {gw} is on none of the pod's subnets")
    routes = []
    raw_routes = value.get("routes") or []
    if not isinstance(raw_routes, list):
        raise AnnotationError("routes is not a list")
    for r in raw_routes:
        if not isinstance(r, dict):
            raise AnnotationError(f"route {r!r} is not an object")
        dest = r.get("dest", r.get("dst"))
        hop = r.get("nextHop", r.get("gw"))
        try:
            net = ipaddress.ip_network(dest)
        except (ValueError, TypeError):
            raise AnnotationError(f"route destination {dest!r} is not a network") from None
        routes.append(Route(net, _ip(hop, "route next hop") if hop else None))
    return PodNetwork(mac.lower(), ips, gateways, tuple(routes), uid)


class AnnotationSource(Protocol):
    """Where the plugin gets a pod's network: Kubernetes now, a node daemon later."""

    def wait(self, pod: PodRef, timeout: float) -> PodNetwork:
        """The pod's network, waiting up to ``timeout`` s for the annotation.

        Raises CniError: TRY_AGAIN_LATER on timeout or API trouble (naming the pod and
        what was missing), INVALID_CONFIG for an annotation that breaks the contract.
        """
        ...


def network_from_pod(pod: PodRef, metadata: Mapping[str, Any]) -> tuple[PodNetwork | None, str]:
    """The network of a pod object (its metadata as a dict), or None and why not yet."""
    uid = metadata.get("uid")
    if pod.uid and uid and uid != pod.uid:
        return None, f"pod {pod} has uid {uid}, not {pod.uid} (an older pod of that name)"
    raw = (metadata.get("annotations") or {}).get(POD_ANNOTATION)
    if raw is None:
        return None, f"pod {pod} has no {POD_ANNOTATION!r} annotation yet"
    try:
        return parse_annotation(raw, uid), ""
    except AnnotationError as e:
        raise CniError(INVALID_CONFIG, f"pod {pod}: {e}") from None


class KubeAnnotationSource:
    """Reads the pod through the official client's ApiClient: list, then watch from there.

    Only the ApiClient (configuration, auth, TLS, connection pool) is used, with plain
    JSON in and out: the generated CoreV1Api module and its models cost ~1 s of imports
    here, more than everything else an ADD does. Imported on first use, not at module
    import: VERSION and DEL never need Kubernetes.
    """

    def __init__(self, kubeconfig: str | None, external_ids: Mapping[str, str]) -> None:
        self.kubeconfig = kubeconfig
        self.external_ids = external_ids

    def _api(self) -> Any:
        from ovn_k8s.config import ConfigError, Settings, read_config_file  # noqa: PLC0415
        from ovn_k8s.kube import client as kube_client  # noqa: PLC0415

        try:
            settings = Settings({"kubeconfig": self.kubeconfig}, read_config_file(None),
                                self.external_ids)
            return kube_client.api_client(settings)
        except ConfigError as e:
            raise CniError(INVALID_CONFIG, f"Kubernetes access: {e}") from None

    @staticmethod
    def _get(api: Any, pod: PodRef, query: list[tuple[str, str]], timeout: float) -> Any:
        """GET the pods of ``pod``'s namespace; the urllib3 response, not yet read."""
        method, url, headers, _, _ = api.param_serialize(
            "GET", "/api/v1/namespaces/{namespace}/pods",
            path_params={"namespace": pod.namespace}, query_params=query,
            header_params={"Accept": "application/json"}, auth_settings=["BearerToken"])
        resp = api.call_api(method, url, header_params=headers, _request_timeout=timeout)
        if resp.status != 200:
            raw = resp.response
            raw.drain_conn()
            raise _ApiStatus(resp.status, resp.reason)
        return resp.response

    def wait(self, pod: PodRef, timeout: float) -> PodNetwork:
        import urllib3  # noqa: PLC0415

        api = self._api()
        selector = ("fieldSelector", f"metadata.name={pod.name}")
        deadline = time.monotonic() + timeout
        why = f"pod {pod} not found"
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    body = json.loads(self._get(api, pod, [selector], remaining).data)
                    for item in body.get("items") or []:
                        found, why = network_from_pod(pod, item.get("metadata") or {})
                        if found is not None:
                            return found
                    # Watch from the list's version: nothing written in between is missed.
                    stream = self._get(api, pod, [
                        selector, ("watch", "true"),
                        ("resourceVersion", body["metadata"]["resourceVersion"]),
                        ("timeoutSeconds", str(max(1, int(remaining))))], remaining + 1)
                    try:
                        for line in stream:
                            if not line.strip():
                                continue
                            event = json.loads(line)
                            if event.get("type") == "ERROR":
                                break  # e.g. 410 Gone: list again
                            if event.get("type") not in ("ADDED", "MODIFIED"):
                                continue
                            found, why = network_from_pod(
                                pod, event["object"].get("metadata") or {})
                            if found is not None:
                                return found
                    finally:
                        stream.release_conn()
                except _ApiStatus as e:
                    if e.status in (401, 403):
                        raise CniError(TRY_AGAIN_LATER,
                                       f"the Kubernetes API refused us ({e.status} {e.reason})"
                                       ) from None
                    why = f"Kubernetes API error {e.status} {e.reason}"
                except (OSError, urllib3.exceptions.HTTPError, ValueError, KeyError) as e:
                    why = f"Kubernetes API unreachable or garbled: {type(e).__name__}"
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        finally:
            api.close()
        raise CniError(
            TRY_AGAIN_LATER,
            f"pod {pod}: no {POD_ANNOTATION!r} annotation after {timeout:g}s ({why})",
            details="the watcher (ovn-k8s-watcher) writes it when it has allocated the pod's "
                    "address; is it running?")


class _ApiStatus(Exception):
    def __init__(self, status: int, reason: str | None) -> None:
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
