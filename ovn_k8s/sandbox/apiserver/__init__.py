"""A Kubernetes API emulator that the official clients talk to over real HTTP.

No kube-apiserver can run on the development machines, so tests and the sandbox use this
instead. Where it and a real apiserver could disagree it follows the real one: code that
passes against it must work against a cluster.

Running it:
    python -m ovn_k8s.sandbox.apiserver --port 0 --kubeconfig /tmp/kubeconfig
(writes the kubeconfig once listening, serves until SIGTERM), or in-process:

    with ApiServer() as srv:                  # 127.0.0.1, a free port
        v1 = kubernetes.client.CoreV1Api(srv.api_client())
        srv.write_kubeconfig(path)            # mode 0600, holds the bearer token

`ApiServer(token=None, *, watch_window=10000, service_cidr="10.96.0.0/16",
node_port_range=(30000, 32767), host="127.0.0.1", port=0, bookmark_interval=60.0,
min_request_timeout=1800.0, kubelet_delay=0.0, gc_freeze=False, endpoint_slices=True)`:
- `token=None` picks a random one (`srv.token`). Every request needs
  `Authorization: Bearer <token>`, else 401 (the token is never logged).
- `watch_window`: how many events (all kinds together) stay available for watches,
  exact lists and continue tokens from an older resourceVersion; older ones get 410.
- `bookmark_interval`: seconds between BOOKMARK events (the apiserver: about a minute).
- `min_request_timeout`: a watch without timeoutSeconds ends after a random time in
  [min, 2*min), as on the apiserver.
- `kubelet_delay`: seconds until a gracefully deleted pod on a node is removed, as the
  kubelet confirms it; None: never (a dead node), the pod stays Terminating.
- `service_cidr`: as kube-apiserver's `--service-cluster-ip-range`, one CIDR or two of
  different families ("10.96.0.0/16,fd00:10:96::/112": dual-stack, the first family is
  primary); services get `ipFamilies`/`clusterIPs` from `ipFamilyPolicy` as there.
- `endpoint_slices=False` plays a cluster older than 1.21: discovery.k8s.io/v1 is not
  in discovery and its paths are 404 (core/v1 Endpoints are served either way).
- `gc_freeze`: keep the cyclic GC off stored objects (process-wide; the command line sets
  it) so writes stay fast with tens of thousands of objects.
`srv.url`, `srv.port`, `srv.resource_version`, `srv.store` (direct access for tests),
`srv.kubeconfig()` (the text), `srv.api_client()` (an official-client `ApiClient`),
`start()`, `stop()` (the store survives; `start()` again serves it on the same port, like
an apiserver restart) and use as a context manager.

Test hooks (all thread-safe):
- `drop_watches(graceful=False) -> int`: end every open watch. Abrupt: the connection is
  cut mid-stream (apiserver crash); graceful: the chunked stream ends normally (timeout).
- `force_gone_next_watch(count=1)`: the next watches that name a resourceVersion get an
  ERROR event with a 410 Expired Status, as when the version left the watch cache.
- `compact()`: drop all history; older versions become 410 for watches, exact lists and
  continue tokens (an etcd compaction).
- `inject(errors=(500, 429), latency=0.0, count=1, methods=None, path=None, watch=None)`:
  the next `count` matching requests (None: until `clear_injections()`) wait `latency`
  seconds and then fail with the next code from `errors`, with the apiserver's Status body
  and Retry-After where it sends one.
- `pause()` / `resume()`: requests and watch deliveries hang until resumed.

Resources: core/v1 namespaces, nodes, pods (+status, binding), services (+status),
endpoints, configmaps, events; discovery.k8s.io/v1 endpointslices; networking.k8s.io/v1
networkpolicies; coordination.k8s.io/v1 leases; apiextensions.k8s.io/v1
customresourcedefinitions and the custom resources they define.

Semantics emulated: one cluster-wide resourceVersion; uid, creationTimestamp, generation;
409 AlreadyExists / Conflict, 404 NotFound and 422 Invalid with Status bodies; optimistic
concurrency; no-op writes do not bump resourceVersion; finalizers and deletionTimestamp;
graceful pod deletion (a kubelet confirms after `kubelet_delay` seconds, None = never, as
with a dead node); namespace and CRD cleanup as their controllers do; status subresource;
pods/binding; ClusterIP (single and dual-stack) and NodePort allocation; label and field
selectors (also in watches: objects leaving a selector arrive as DELETED); JSON patch,
merge patch and strategic merge patch; list with limit/continue (consistent snapshots from
history) and resourceVersion/resourceVersionMatch; watch from a version, bookmarks,
sendInitialEvents, timeoutSeconds, 410 Expired; CRDs with structural-schema pruning,
defaulting and validation, served versions, status subresource and selectableFields;
discovery (/version, /api, /apis, group-version resource lists).
Not emulated: server-side apply (415) and metadata.managedFields; unknown fields of
built-in kinds are kept rather than dropped (no fieldValidation=Strict errors or
warnings); protobuf/YAML/CBOR bodies, Table output, RBAC,
admission webhooks, CEL validation rules, garbage collection of ownerReferences
(propagationPolicy is accepted and ignored), controllers other than those above (no
scheduler, no endpoints controller), per-version CRD schemas (the storage version's
schema applies) and conversion webhooks.
"""

from .server import ApiServer

__all__ = ["ApiServer"]
