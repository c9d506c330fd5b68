"""REST routing: URL + verb + query -> store operation -> JSON response (or a watch).

Paths follow the apiserver: /api/v1/..., /apis/<group>/<version>/..., namespaced
(`namespaces/<ns>/<plural>[/<name>[/<sub>]]`) and cluster-scoped (`<plural>[/<name>]`),
the deprecated `/watch/` prefix, and discovery (/version, /api, /apis, group and
group-version documents).
"""

from __future__ import annotations

import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from . import errors, kinds, patch, selectors
from .resources import ResourceType
from .store import Store, Stored, decode_continue, dumps, encode_continue

JSON = "application/json"
_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
                "application/strategic-merge-patch+json", "application/apply-patch+yaml",
                "application/apply-patch+cbor"]
_CR_PATCH_TYPES = ["application/json-patch+json", "application/merge-patch+json",
                   "application/apply-patch+yaml", "application/apply-patch+cbor"]
_VERSION = {
    "major": "1", "minor": "34", "emulationMajor": "1", "emulationMinor": "34",
    "minCompatibilityMajor": "1", "minCompatibilityMinor": "33",
    "gitVersion": "v1.34.0-ovn-k8s-sandbox", "gitCommit": "0" * 40,
    "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
    "compiler": "gc", "platform": "linux/amd64",
}


@dataclass
class Request:
    method: str
    path: str
    query_string: str
    headers: dict[str, str]
    body: bytes = b""
    _query: dict[str, str] | None = None

    @property
    def query(self) -> dict[str, str]:
        if self._query is None:
            q: dict[str, str] = {}
            if not self.query_string:
                # Most requests have none; parse_qsl costs more than the rest of routing.
                self._query = q
                return q
            for k, v in parse_qsl(self.query_string, keep_blank_values=True):
                q.setdefault(k, v)  # like Go's url.Values.Get: the first value wins
            self._query = q
        return self._query


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = JSON
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class WatchSpec:
    """A validated watch request; server.py streams it with watch.py."""

    rt: ResourceType
    version: str
    namespace: str
    labels: selectors.Matcher | None
    fields: selectors.Matcher | None
    start_rv: int | None       # None: begin with the current state as ADDED events
    bookmarks: bool
    initial_end_bookmark: bool  # sendInitialEvents=true: mark the end of the initial state
    timeout: float
    error: errors.ApiError | None = None   # an ERROR event to send instead (410)


def error_response(err: errors.ApiError) -> Response:
    return Response(err.code, dumps(err.status()), headers=dict(err.headers))


def _parse_json(body: bytes, what: str) -> Any:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.bad_request(f"the object provided is unrecognized (must be of type "
                                 f"{what}): couldn't get version/kind; json parse error: {exc}"
                                 ) from None


def _bool(q: dict[str, str], key: str) -> bool | None:
    v = q.get(key)
    if v is None:
        return None
    if v.lower() in ("true", "1"):
        return True
    if v.lower() in ("false", "0", ""):
        return False
    raise errors.bad_request(f"invalid value for {key}: {v!r}")


def _int(q: dict[str, str], key: str) -> int | None:
    v = q.get(key)
    if v is None or v == "":
        return None
    try:
        return int(v)
    except ValueError:
        raise errors.bad_request(f"invalid value for {key}: {v!r}") from None


def _rv(text: str, what: str = "resourceVersion") -> int:
    try:
        rv = int(text)
        if rv < 0:
            raise ValueError
        return rv
    except ValueError:
        raise errors.bad_request(f"invalid {what}: {text!r}") from None


def _list_options_invalid(causes: list[tuple[str, str, str]]) -> errors.ApiError:
    return errors.invalid("ListOptions", "meta.k8s.io", "", causes)


class Api:
    def __init__(self, store: Store, *, bookmark_interval: float = 60.0,
                 min_request_timeout: float = 1800.0, server_address: str = "") -> None:
        self.store = store
        self.bookmark_interval = bookmark_interval
        self.min_request_timeout = min_request_timeout
        self.server_address = server_address
        self.force_gone = 0
        self._hook_lock = threading.Lock()

    # ---- entry --------------------------------------------------------------------------

    def handle(self, req: Request) -> Response | WatchSpec:
        try:
            return self._route(req)
        except errors.ApiError as e:
            return error_response(e)

    def _route(self, req: Request) -> Response | WatchSpec:
        parts = [p for p in req.path.split("/") if p]
        if not parts:
            return self._ok({"paths": sorted(self._paths())})
        head = parts[0]
        if head in ("healthz", "livez", "readyz"):
            return Response(200, b"ok", "text/plain; charset=utf-8")
        if head == "version" and len(parts) == 1:
            return self._ok(_VERSION)
        if head == "api":
            if len(parts) == 1:
                return self._ok({"kind": "APIVersions", "versions": ["v1"],
                                 "serverAddressByClientCIDRs": [
                                     {"clientCIDR": "0.0.0.0/0",
                                      "serverAddress": self.server_address}]})
            if parts[1] != "v1":
                raise self._no_route()
            if len(parts) == 2:
                return self._ok(self._resource_list("", "v1"))
            return self._resource(req, "", "v1", parts[2:])
        if head == "apis":
            if len(parts) == 1:
                return self._ok({"kind": "APIGroupList", "apiVersion": "v1",
                                 "groups": self._groups()})
            group = parts[1]
            if len(parts) == 2:
                for g in self._groups():
                    if g["name"] == group:
                        return self._ok(dict(g, kind="APIGroup", apiVersion="v1"))
                raise self._no_route()
            version = parts[2]
            if not any(rt.group == group and version in rt.versions
                       for rt in self.store.types.values()):
                raise self._no_route()
            if len(parts) == 3:
                return self._ok(self._resource_list(group, version))
            return self._resource(req, group, version, parts[3:])
        raise self._no_route()

    @staticmethod
    def _no_route() -> errors.ApiError:
        return errors.ApiError(404, "NotFound", "the server could not find the requested "
                                                "resource", {})

    @staticmethod
    def _ok(doc: Any, status: int = 200) -> Response:
        return Response(status, dumps(doc))

    # ---- discovery ----------------------------------------------------------------------

    def _paths(self) -> set[str]:
        paths = {"/api", "/api/v1", "/apis", "/version", "/healthz", "/livez", "/readyz"}
        for rt in self.store.types.values():
            if rt.group:
                paths.add(f"/apis/{rt.group}")
                for v in rt.versions:
                    paths.add(f"/apis/{rt.group}/{v}")
        return paths

    def _groups(self) -> list[dict[str, Any]]:
        groups: dict[str, list[str]] = {}
        for rt in self.store.types.values():
            if not rt.group:
                continue
            vs = groups.setdefault(rt.group, [])
            for v in rt.versions:
                if v not in vs:
                    vs.append(v)
        out = []
        for g, vs in groups.items():
            vs.sort(key=kinds._version_priority)
            gvs = [{"groupVersion": f"{g}/{v}", "version": v} for v in vs]
            out.append({"name": g, "versions": gvs, "preferredVersion": gvs[0]})
        return out

    def _resource_list(self, group: str, version: str) -> dict[str, Any]:
        res: list[dict[str, Any]] = []
        for rt in self.store.types.values():
            if rt.group != group or version not in rt.versions:
                continue
            r: dict[str, Any] = {"name": rt.plural, "singularName": rt.singular,
                                 "namespaced": rt.namespaced, "kind": rt.kind,
                                 "verbs": list(rt.verbs)}
            if rt.short_names:
                r["shortNames"] = list(rt.short_names)
            if rt.categories:
                r["categories"] = list(rt.categories)
            res.append(r)
            if "status" in rt.subresources:
                res.append({"name": f"{rt.plural}/status", "singularName": "",
                            "namespaced": rt.namespaced, "kind": rt.kind,
                            "verbs": ["get", "patch", "update"]})
            if "finalize" in rt.subresources:
                res.append({"name": f"{rt.plural}/finalize", "singularName": "",
                            "namespaced": rt.namespaced, "kind": rt.kind, "verbs": ["update"]})
            if "binding" in rt.subresources:
                res.append({"name": f"{rt.plural}/binding", "singularName": "",
                            "namespaced": rt.namespaced, "kind": "Binding",
                            "verbs": ["create"]})
        return {"kind": "APIResourceList", "apiVersion": "v1",
                "groupVersion": f"{group}/{version}" if group else version, "resources": res}

    # ---- resources ----------------------------------------------------------------------

    def _resource(self, req: Request, group: str, version: str, rest: list[str]
                  ) -> Response | WatchSpec:
        watch_path = False
        if rest[0] == "watch":
            watch_path = True
            rest = rest[1:]
            if not rest:
                raise self._no_route()
        ns = ""
        if rest[0] == "namespaces" and len(rest) >= 3 and not (
                len(rest) == 3 and rest[2] in ("status", "finalize")):
            ns, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise self._no_route()
        plural = rest[0]
        name = rest[1] if len(rest) > 1 else ""
        sub = rest[2] if len(rest) > 2 else ""
        if not group and plural == "bindings" and ns and not name and req.method == "POST":
            # The older form of pods/binding: the pod is named by the Binding itself.
            body = _parse_json(req.body, "Binding")
            pod = ((body or {}).get("metadata") or {}).get("name") or ""
            return self._bind(self.store.types["pods"], ns, pod, req, self._dry_run(req.query))
        rt = self.store.by_path.get((group, version, plural))
        if rt is None or (ns and not rt.namespaced):
            raise self._no_route()
        if sub and sub not in rt.subresources:
            raise self._no_route()
        m = req.method
        q = req.query
        if watch_path or (m == "GET" and not name and _bool(q, "watch")):
            if m != "GET":
                raise errors.method_not_allowed()
            if name:
                # /watch/.../<name> is a watch with fieldSelector=metadata.name=<name>.
                q = dict(q, fieldSelector=f"metadata.name={name}")
            return self._watch(rt, version, ns, q)
        if rt.namespaced and name and not ns:
            raise self._no_route()
        dry_run = self._dry_run(q)
        if m == "GET":
            if name:
                if sub == "binding":
                    raise errors.method_not_allowed()
                return self._object(rt, version, self.store.get(rt, ns, name))
            return self._list(rt, version, ns, q)
        if m == "POST":
            if name and sub == "binding":
                return self._bind(rt, ns, name, req, dry_run)
            if name or sub:
                raise errors.method_not_allowed()
            if rt.namespaced and not ns:
                raise errors.method_not_allowed()
            body = self._body(req, rt, version)
            meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            if rt.namespaced and meta.get("namespace") not in (None, "", ns):
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            st = self.store.create(rt, ns, body, dry_run=dry_run)
            return self._object(rt, version, st, 201)
        if m == "PUT":
            if not name or sub == "binding":
                raise errors.method_not_allowed()
            body = self._body(req, rt, version)
            meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
            if meta.get("name") != name:
                raise errors.bad_request(
                    f"the name of the object ({meta.get('name') or ''}) does not match the name "
                    f"on the URL ({name})")
            if rt.namespaced and meta.get("namespace") not in (None, "", ns):
                raise errors.bad_request("the namespace of the provided object does not match "
                                         "the namespace sent on the request")
            st, created = self.store.update(rt, ns, name, body, subresource=sub,
                                            dry_run=dry_run)
            return self._object(rt, version, st, 201 if created else 200)
        if m == "PATCH":
            if not name or sub == "binding":
                raise errors.method_not_allowed()
            fn, pure = self._patch_fn(req, rt, version)
            st = self.store.patch(rt, ns, name, fn, subresource=sub, dry_run=dry_run,
                                  pure=pure)
            return self._object(rt, version, st)
        if m == "DELETE":
            if sub:
                raise errors.method_not_allowed()
            opts = self._delete_options(req)
            if not name:
                if rt.namespaced and not ns:
                    # deletecollection exists on namespaced paths only.
                    raise errors.method_not_allowed()
                return self._delete_collection(rt, version, ns, q, opts, dry_run)
            st, gone = self.store.delete(
                rt, ns, name, grace=opts.get("gracePeriodSeconds"),
                precondition_uid=(opts.get("preconditions") or {}).get("uid"),
                precondition_rv=(opts.get("preconditions") or {}).get("resourceVersion"),
                dry_run=dry_run)
            if gone and not rt.return_deleted:
                return self._ok(self._success(rt, st.obj))
            return self._object(rt, version, st)
        raise errors.method_not_allowed()

    @staticmethod
    def _success(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        details: dict[str, Any] = {"name": obj["metadata"]["name"], "kind": rt.plural,
                                   "uid": obj["metadata"]["uid"]}
        if rt.group:
            details["group"] = rt.group
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": details}

    @staticmethod
    def _dry_run(q: dict[str, str]) -> bool:
        v = q.get("dryRun")
        if v is None or v == "":
            return False
        if v != "All":
            raise errors.bad_request(f"Invalid dryRun value {v!r}: valid values are All")
        return True

    def _body(self, req: Request, rt: ResourceType, version: str) -> dict[str, Any]:
        ctype = req.headers.get("content-type", JSON).split(";")[0].strip().lower()
        if ctype not in (JSON, "", "*/*"):
            raise errors.unsupported_media(ctype, [JSON, "application/yaml",
                                                   "application/vnd.kubernetes.protobuf"])
        body = _parse_json(req.body, rt.kind)
        if not isinstance(body, dict):
            raise errors.bad_request(f"the object provided is unrecognized (must be of type "
                                     f"{rt.kind})")
        kind, av = body.get("kind"), body.get("apiVersion")
        if (kind and kind != rt.kind) or (av and av not in {rt.api_version(v)
                                                              for v in rt.versions}):
            raise errors.bad_request(
                f"the object provided is unrecognized (must be of type {rt.kind}): "
                f"{kind or '?'} in version {av or '?'}")
        return body

    def _patch_fn(self, req: Request, rt: ResourceType, version: str) -> tuple[Any, bool]:
        """The patch as a function of the current object, and whether it is pure (see
        Store.patch)."""
        ctype = req.headers.get("content-type", "").split(";")[0].strip().lower()
        allowed = _PATCH_TYPES if rt.merge_keys is not None else _CR_PATCH_TYPES
        if ctype not in allowed or ctype.startswith("application/apply-patch"):
            # Server-side apply is not emulated; say so the way a server lacking it would.
            raise errors.unsupported_media(ctype, [t for t in allowed
                                                   if not t.startswith("application/apply")])
        doc = _parse_json(req.body, rt.kind)
        if ctype == "application/json-patch+json":
            return (lambda cur: patch.json_patch(cur, doc)), False
        if not isinstance(doc, dict):
            raise errors.bad_request("patch body must be a JSON object")
        if ctype == "application/merge-patch+json":
            return (lambda cur: patch.merge_patch(cur, doc)), True
        keys = rt.merge_keys or {}
        return (lambda cur: patch.strategic_merge_patch(cur, doc, keys)), False

    def _bind(self, rt: ResourceType, ns: str, name: str, req: Request,
              dry_run: bool) -> Response:
        body = _parse_json(req.body, "Binding")
        target = (body or {}).get("target") or {}
        node = target.get("name")
        if not node:
            raise errors.invalid("Binding", "", name, [errors.field_required("target.name")])
        self.store.patch(rt, ns, name, lambda cur: kinds.bind_pod(cur, node, name),
                         subresource="binding", dry_run=dry_run)
        return self._ok({"kind": "Status", "apiVersion": "v1", "metadata": {},
                         "status": "Success", "code": 201}, 201)

    def _delete_options(self, req: Request) -> dict[str, Any]:
        opts: dict[str, Any] = {}
        if req.body.strip():
            body = _parse_json(req.body, "DeleteOptions")
            if isinstance(body, dict):
                opts.update(body)
        q = req.query
        g = _int(q, "gracePeriodSeconds")
        if g is not None:
            opts["gracePeriodSeconds"] = g
        if q.get("propagationPolicy"):
            opts["propagationPolicy"] = q["propagationPolicy"]
        pp = opts.get("propagationPolicy")
        if pp not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid("DeleteOptions", "meta.k8s.io", "", [errors.field_unsupported(
                "propagationPolicy", pp, ["Background", "Foreground", "Orphan"])])
        return opts

    def _delete_collection(self, rt: ResourceType, version: str, ns: str, q: dict[str, str],
                           opts: dict[str, Any], dry_run: bool) -> Response:
        labels = selectors.parse_labels(q.get("labelSelector"))
        fields = selectors.parse_fields(q.get("fieldSelector"), rt.field_labels)
        items, _, _, _ = self.store.list(rt, ns, labels, fields, at=None, limit=0, start="")
        deleted: list[Stored] = []
        for st in items:
            m = st.obj["metadata"]
            try:
                got, _ = self.store.delete(rt, m.get("namespace", ""), m["name"],
                                           grace=opts.get("gracePeriodSeconds"),
                                           dry_run=dry_run)
            except errors.ApiError as e:
                if e.code == 404:
                    continue
                raise
            deleted.append(got)
        return self._list_response(rt, version, deleted, self.store.rv, None, None)

    # ---- reads --------------------------------------------------------------------------

    def _convert(self, rt: ResourceType, version: str, st: Stored) -> bytes:
        if version == rt.storage_version:
            return st.raw
        # Custom resources with conversion strategy None: only apiVersion changes.
        return dumps(dict(st.obj, apiVersion=rt.api_version(version)))

    def _object(self, rt: ResourceType, version: str, st: Stored, status: int = 200
                ) -> Response:
        return Response(status, self._convert(rt, version, st))

    def _list_response(self, rt: ResourceType, version: str, items: list[Stored], rv: int,
                       cont: str | None, remaining: int | None) -> Response:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if cont:
            meta["continue"] = cont
        if remaining is not None:
            meta["remainingItemCount"] = remaining
        head = dumps({"kind": rt.list_kind, "apiVersion": rt.api_version(version),
                      "metadata": meta})
        body = b"".join((head[:-1], b',"items":[',
                         b",".join(self._convert(rt, version, st) for st in items), b"]}"))
        return Response(200, body)

    def _list(self, rt: ResourceType, version: str, ns: str, q: dict[str, str]) -> Response:
        labels = selectors.parse_labels(q.get("labelSelector"))
        fields = selectors.parse_fields(q.get("fieldSelector"), rt.field_labels)
        limit = _int(q, "limit") or 0
        limit = max(limit, 0)
        rv_s = q.get("resourceVersion", "")
        match = q.get("resourceVersionMatch", "")
        cont = q.get("continue", "")
        causes: list[tuple[str, str, str]] = []
        if match and match not in ("NotOlderThan", "Exact"):
            causes.append(errors.field_unsupported("resourceVersionMatch", match,
                                                   ["Exact", "NotOlderThan"]))
        if match and not rv_s:
            causes.append(errors.field_forbidden(
                "resourceVersionMatch", "resourceVersionMatch is forbidden unless "
                                        "resourceVersion is provided"))
        if match and cont:
            causes.append(errors.field_forbidden(
                "resourceVersionMatch", "resourceVersionMatch is forbidden when continue is "
                                        "provided"))
        if match == "Exact" and rv_s == "0":
            causes.append(errors.field_forbidden(
                "resourceVersionMatch", 'resourceVersionMatch "exact" is forbidden for '
                                        'resourceVersion "0"'))
        if causes:
            raise _list_options_invalid(causes)
        if cont:
            if rv_s not in ("", "0"):
                raise errors.bad_request("specifying resource version is not allowed when "
                                         "using continue")
            at, start = decode_continue(cont)
            at_opt: int | None = at
            if at < 0:
                # An "inconsistent" token handed out with a 410: continue at the newest state.
                at_opt = None
            else:
                with self.store.lock:
                    too_old = self.store.too_old(at)
                if too_old:
                    raise errors.expired(
                        "The provided continue parameter is too old to display a consistent "
                        "list result. You can start a new list without the continue parameter, "
                        "or use the continue token in this response to retrieve the remainder "
                        "of the results. Continuing with the provided token results in an "
                        "inconsistent list - objects that were created, modified, or deleted "
                        "between the time the first chunk was returned and now may show up in "
                        "the list.", encode_continue(-1, start.rstrip("\x00")))
            items, list_rv, nxt, remaining = self.store.list(
                rt, ns, labels, fields, at=at_opt, limit=limit, start=start)
            return self._list_response(rt, version, items, list_rv, nxt, remaining)
        at_opt = None
        min_rv = 0
        if rv_s and rv_s != "0":
            rv = _rv(rv_s)
            if match == "Exact" or (not match and limit):
                at_opt = rv
            else:
                min_rv = rv
        items, list_rv, nxt, remaining = self.store.list(
            rt, ns, labels, fields, at=at_opt, limit=limit, start="", min_rv=min_rv)
        return self._list_response(rt, version, items, list_rv, nxt, remaining)

    def _watch(self, rt: ResourceType, version: str, ns: str, q: dict[str, str]) -> WatchSpec:
        labels = selectors.parse_labels(q.get("labelSelector"))
        fields = selectors.parse_fields(q.get("fieldSelector"), rt.field_labels)
        rv_s = q.get("resourceVersion", "")
        match = q.get("resourceVersionMatch", "")
        send_initial = _bool(q, "sendInitialEvents")
        bookmarks = bool(_bool(q, "allowWatchBookmarks"))
        causes: list[tuple[str, str, str]] = []
        if send_initial is not None:
            if match != "NotOlderThan":
                causes.append(errors.field_forbidden(
                    "resourceVersionMatch", "sendInitialEvents requires setting "
                                            "resourceVersionMatch to NotOlderThan"))
            if send_initial and not bookmarks:
                causes.append(errors.field_forbidden(
                    "allowWatchBookmarks", "allowWatchBookmarks must be set to true when "
                                           "sendInitialEvents is set to true"))
        elif match:
            causes.append(errors.field_forbidden(
                "resourceVersionMatch", "resourceVersionMatch is forbidden for watch unless "
                                        "sendInitialEvents is provided"))
        if causes:
            raise _list_options_invalid(causes)
        timeout = _int(q, "timeoutSeconds")
        if timeout is None or timeout <= 0:
            # Like the apiserver: a random timeout in [min, 2*min) when the client sets none.
            secs = self.min_request_timeout * (1 + random.random())
        else:
            secs = float(timeout)
        spec = WatchSpec(rt, version, ns, labels, fields, None, bookmarks, False, secs)
        if send_initial:
            if rv_s and rv_s != "0":
                with self.store.lock:
                    self.store.wait_for_rv(_rv(rv_s))
            spec.initial_end_bookmark = True
            return spec
        if rv_s in ("", "0"):
            if send_initial is False:
                with self.store.lock:
                    spec.start_rv = self.store.rv
            return spec
        rv = _rv(rv_s)
        with self._hook_lock:
            forced = self.force_gone > 0
            if forced:
                self.force_gone -= 1
        if forced:
            spec.error = errors.expired(f"too old resource version: {rv} ({rv + 1})")
            return spec
        with self.store.lock:
            if rv > self.store.rv:
                self.store.wait_for_rv(rv)
            if self.store.too_old(rv):
                spec.error = errors.expired(
                    f"too old resource version: {rv} ({self.store.oldest_available() - 1})")
        spec.start_rv = rv
        return spec
