"""Build an official-client `ApiClient` from the first source that is configured.

Order (DESIGN.md): an explicit kubeconfig file; the in-cluster service account (when
``KUBERNETES_SERVICE_HOST`` is set); the lineage settings ``k8s-api-server`` (``host:port``
meaning ``http://host:port``, or a full URL), ``k8s-api-token`` and ``k8s-ca-certificate``
(a file path, or the PEM text itself as the lineage stored it in external_ids).
TLS is verified unless the server URL is plain http. The token is never logged and never
put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from ovn_k8s.config import ConfigError, Settings

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubeConfigError(ConfigError):
    """The Kubernetes connection settings are missing or malformed."""


@dataclass(frozen=True)
class KubeConfig:
    """A resolved configuration and where it came from (for logs and `status`)."""

    configuration: k8s.Configuration
    source: str  # "kubeconfig <path>", "in-cluster", "external_ids"

    @property
    def host(self) -> str:
        return str(self.configuration.host)


def parse_api_server(value: str) -> str:
    """The API URL for a lineage ``k8s-api-server`` value: ``host:port`` is plain http
    (as the lineage used it), anything with a scheme is taken as a URL."""
    text = value.strip()
    if not text:
        raise KubeConfigError("k8s-api-server is empty")
    url = text if "://" in text else f"http://{text}"
    try:
        parts = urlsplit(url)
        port = parts.port  # raises ValueError on a non-numeric or out-of-range port
    except ValueError as e:
        raise KubeConfigError(f"k8s-api-server {text!r} is malformed: {e}") from None
    if parts.scheme not in ("http", "https"):
        raise KubeConfigError(f"k8s-api-server {text!r}: scheme must be http or https")
    if not parts.hostname:
        raise KubeConfigError(f"k8s-api-server {text!r} has no host")
    if "://" not in text and port is None:
        raise KubeConfigError(f"k8s-api-server {text!r}: expected host:port or a URL")
    if parts.query or parts.fragment or parts.username:
        raise KubeConfigError(f"k8s-api-server {text!r}: unexpected query, fragment or user")
    return url.rstrip("/")


def _ca_options(value: str) -> dict[str, str]:
    """The lineage stored the PEM text itself in external_ids (newlines escaped as \\n);
    newer set-ups give a path. Accept both."""
    text = value.replace("\\n", "\n").strip()
    if text.startswith("-----BEGIN"):
        return {"ca_cert_data": text}
    path = Path(text).expanduser()
    if not path.is_file():
        raise KubeConfigError(f"k8s-ca-certificate {str(path)!r} is not a readable file")
    if path.stat().st_size == 0:
        raise KubeConfigError(f"k8s-ca-certificate {str(path)!r} is empty")
    return {"ssl_ca_cert": str(path)}


def _from_kubeconfig(path: str) -> KubeConfig:
    p = Path(path).expanduser()
    if not p.is_file():
        raise KubeConfigError(f"--kubeconfig {str(p)!r} does not exist")
    cfg = k8s.Configuration()
    try:
        k8s_config.load_kube_config(config_file=str(p), client_configuration=cfg,
                                    persist_config=False)
    except (k8s_config.ConfigException, ValueError, TypeError, AttributeError) as e:
        # The loader's messages name fields, never their values.
        raise KubeConfigError(f"--kubeconfig {str(p)!r}: {e}") from None
    except Exception as e:  # yaml errors and the like: keep the type, not the text
        raise KubeConfigError(f"--kubeconfig {str(p)!r} is malformed ({type(e).__name__})") \
            from None
    return KubeConfig(cfg, f"kubeconfig {p}")


def _from_incluster(environ: Mapping[str, str], sa_dir: Path) -> KubeConfig:
    cfg = k8s.Configuration()
    loader = k8s_config.incluster_config.InClusterConfigLoader(
        token_filename=str(sa_dir / "token"), cert_filename=str(sa_dir / "ca.crt"),
        environ=environ)
    try:
        loader.load_and_set(cfg)
    except k8s_config.ConfigException as e:
        raise KubeConfigError(f"in-cluster config ({sa_dir}): {e}") from None
    return KubeConfig(cfg, "in-cluster")


def _from_settings(settings: Settings) -> KubeConfig | None:
    server = settings.get("k8s_api_server")
    if server is None or not server.strip():
        return None
    url = parse_api_server(server)
    cfg = k8s.Configuration(host=url)
    token = (settings.get("k8s_api_token") or "").strip().strip('"')
    if token:
        cfg.api_key = {"authorization": token}
        cfg.api_key_prefix = {"authorization": "Bearer"}
        if url.startswith("http://"):
            log.warning("k8s-api-server %s is plain http: the API token travels unencrypted",
                        url)
    ca = settings.get("k8s_ca_certificate")
    if ca and ca.strip():
        for k, v in _ca_options(ca).items():
            setattr(cfg, k, v)
    cfg.verify_ssl = True
    return KubeConfig(cfg, "external_ids")


def load(settings: Settings | None = None, *, kubeconfig: str | None = None,
         environ: Mapping[str, str] | None = None,
         service_account_dir: Path = SERVICE_ACCOUNT_DIR) -> KubeConfig:
    """Resolve the Kubernetes connection settings (see the module docstring for the order).

    `kubeconfig` wins; else a ``kubeconfig`` flag in `settings`; else in-cluster config when
    ``KUBERNETES_SERVICE_HOST`` is set in `environ`; else the lineage settings.
    Raises KubeConfigError (a ConfigError) when nothing is configured or a value is bad."""
    environ = os.environ if environ is None else environ
    settings = settings or Settings({})
    path = kubeconfig or settings.get("kubeconfig")
    if path:
        return _from_kubeconfig(path)
    if environ.get("KUBERNETES_SERVICE_HOST"):
        return _from_incluster(environ, service_account_dir)
    resolved = _from_settings(settings)
    if resolved is None:
        raise KubeConfigError(
            "no Kubernetes API configured: give --kubeconfig, run in a pod (in-cluster "
            "config), or set `ovs-vsctl set Open_vSwitch . external_ids:k8s-api-server=HOST:PORT` "
            "(with k8s-api-token and k8s-ca-certificate as needed)")
    return resolved


def api_client(settings: Settings | None = None, *, kubeconfig: str | None = None,
               environ: Mapping[str, str] | None = None,
               service_account_dir: Path = SERVICE_ACCOUNT_DIR,
               pool_maxsize: int | None = None) -> k8s.ApiClient:
    """An official-client ApiClient for the resolved configuration (see `load`).

    `pool_maxsize` raises urllib3's per-host connection limit: every reflector holds one
    connection for its watch, and handlers write concurrently."""
    resolved = load(settings, kubeconfig=kubeconfig, environ=environ,
                    service_account_dir=service_account_dir)
    if pool_maxsize is not None:
        resolved.configuration.connection_pool_maxsize = pool_maxsize
    # Our callers own retrying (reflector backoff, work-queue requeues) and log once per
    # outage; urllib3's own immediate retries would add a WARNING per attempt and delay
    # the error that starts our backoff.
    resolved.configuration.retries = 0
    log.info("Kubernetes API %s (from %s)", resolved.host, resolved.source)
    return k8s.ApiClient(resolved.configuration)


# How long request headers (credentials) are reused. The kubeconfig loader's refresh hook
# re-reads rotating tokens on every auth_settings() call, which cost a third of the
# watcher's CPU per annotation write; client-go re-reads a token file once a minute.
AUTH_TTL = 10.0
_auth_cache: weakref.WeakKeyDictionary[Any, tuple[float, str, dict[str, str]]] = (
    weakref.WeakKeyDictionary())
_auth_lock = threading.Lock()


def request_base(api: k8s.ApiClient) -> tuple[str, dict[str, str]]:
    """The API URL and the headers that authenticate a request, as the generated calls
    build them (refreshing rotating tokens), reused for ``AUTH_TTL`` seconds."""
    cfg = api.configuration
    now = time.monotonic()
    with _auth_lock:
        cached = _auth_cache.get(cfg)
        if cached is not None and now - cached[0] < AUTH_TTL:
            return cached[1], cached[2]
        headers = {"User-Agent": api.user_agent}
        for setting in cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"]] = setting["value"]
        _auth_cache[cfg] = (now, cfg.host, headers)
        return cfg.host, headers


def _send(api: k8s.ApiClient, method: str, path: str, body: Any = None,
          content_type: str | None = None, timeout: Any = 30.0) -> urllib3.BaseHTTPResponse:
    """One request through the client's own connection pool, TLS and credentials,
    skipping the generated API layer. Returns the unread response; an error status
    raises ApiException (with status, reason, headers and body) as the generated calls do.
    """
    host, auth = request_base(api)
    headers = {"Accept": "application/json", **auth}
    if content_type:
        headers["Content-Type"] = content_type
    data = None if body is None else json.dumps(body)
    manager = api.rest_client.pool_manager
    if isinstance(manager, urllib3.ProxyManager):
        resp = manager.request(method, host + path, body=data, headers=headers,
                               preload_content=False, timeout=timeout)
    else:
        # Straight to the host's connection pool: PoolManager's own URL parsing, pool
        # lookup and body encoding were a fifth of the CPU of each annotation write.
        # (Through a proxy, requests need ProxyManager's absolute URLs.)
        resp = manager.connection_from_url(host).urlopen(
            method, path, body=data, headers=headers, preload_content=False,
            timeout=timeout, retries=False, assert_same_host=False)
    if resp.status < 400:
        return resp
    try:
        data = resp.read()
    finally:
        resp.release_conn()
    if resp.status == 401:
        with _auth_lock:  # a rotated token: fetch it again on the next call
            _auth_cache.pop(api.configuration, None)
    error = ApiException(status=resp.status, reason=resp.reason)
    error.body = data.decode(errors="replace")
    error.headers = resp.headers
    raise error


def _request(api: k8s.ApiClient, method: str, path: str, body: Any = None,
             content_type: str | None = None, timeout: float = 30.0) -> bytes:
    """:func:`_send`, then the whole body."""
    resp = _send(api, method, path, body, content_type, timeout)
    try:
        return resp.read()
    finally:
        resp.release_conn()


class Lister:
    """GET (list or watch) one collection, called as the generated ``list_*`` methods are.

    The reflector only needs the raw response; the generated API classes it would take
    them from cost 22 MB and 0.5-1.7 s of the watcher's start to import (measured here,
    CoreV1Api and DiscoveryV1Api).
    """

    _PARAMS = {"watch": "watch", "resource_version": "resourceVersion",
               "allow_watch_bookmarks": "allowWatchBookmarks",
               "timeout_seconds": "timeoutSeconds", "limit": "limit", "_continue": "continue",
               "label_selector": "labelSelector", "field_selector": "fieldSelector"}

    def __init__(self, api: k8s.ApiClient, path: str) -> None:
        self.api = api
        self.path = path

    def __call__(self, *, _preload_content: bool = False, _request_timeout: Any = None,
                 **options: Any) -> urllib3.BaseHTTPResponse:
        if _preload_content:
            raise ValueError("Lister returns the raw response only")
        query = {}
        for name, value in options.items():
            if name not in self._PARAMS:
                raise TypeError(f"unknown list option {name!r}")
            if value is not None:
                query[self._PARAMS[name]] = str(value).lower() if isinstance(value, bool) \
                    else str(value)
        timeout = (urllib3.Timeout(connect=_request_timeout[0], read=_request_timeout[1])
                   if isinstance(_request_timeout, tuple) else _request_timeout)
        path = f"{self.path}?{urlencode(query)}" if query else self.path
        return _send(self.api, "GET", path, timeout=timeout)


def merge_patch(api: k8s.ApiClient, path: str, body: Any, timeout: float = 30.0) -> None:
    """JSON merge patch ``path`` (e.g. ``/api/v1/namespaces/ns/pods/name``).

    Skips the generated API layer: building and serialising its parameters costs as
    much CPU as the request itself (measured here: 0.68 -> 0.33 ms per pod annotation),
    and the watcher writes one per pod. Errors raise ApiException as the generated
    calls do.
    """
    _request(api, "PATCH", path, body, "application/merge-patch+json", timeout)


def serves(api: k8s.ApiClient, group_version: str, resource: str,
           timeout: float = 30.0) -> bool:
    """Whether the API server serves `resource` in `group_version` (``v1`` for core,
    else ``group/version``), by discovery. A group the server does not know is a 404
    (an older cluster): False. Other errors raise ApiException, for the caller to retry.
    """
    path = "/api/v1" if group_version == "v1" else f"/apis/{group_version}"
    try:
        data = _request(api, "GET", path, timeout=timeout)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return any(r.get("name") == resource for r in json.loads(data).get("resources") or ())
