"""The object store: one cluster-wide resourceVersion, watch history, and object lifecycle.

Everything runs under one lock, the way etcd serialises writes: every write takes the next
resourceVersion and appends exactly one event to the history, so resourceVersion N is the
N-th event and a watch or an exact list at N can be served from the history while N is
still inside the retained window. Stored objects are never mutated after commit (updates
build new dicts), so history entries can share them and serialised bytes are cached once.
"""

from __future__ import annotations

import base64
import bisect
import gc
import json
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import errors, validation
from .resources import ResourceType
from .selectors import Matcher

_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode

# How long a request for a resourceVersion newer than the store waits for it to appear;
# the apiserver's watch cache waits 3 s, then answers 504 "Too large resource version".
_FRESHNESS_WAIT = 3.0
_CRD_KEY = "customresourcedefinitions.apiextensions.k8s.io"
# The namespace lifecycle admission plugin refuses to delete these.
_UNDELETABLE_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})


def dumps(obj: Any) -> bytes:
    return _encode(obj).encode()


_stamp_cache: tuple[int, str] = (0, "")


def now_rfc3339(offset: float = 0.0) -> str:
    global _stamp_cache
    t = int(time.time() + offset)
    cached = _stamp_cache
    if cached[0] == t:
        return cached[1]
    text = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
    if not offset:
        _stamp_cache = (t, text)
    return text


def new_uid() -> str:
    h = os.urandom(16).hex()
    # RFC 4122 version 4, variant 10xx, like uuid.uuid4() but without the UUID object.
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-{h[20:]}"


class Stored:
    """One committed version of an object; `raw` is its JSON, computed once."""

    __slots__ = ("_raw", "obj")

    def __init__(self, obj: dict[str, Any], raw: bytes | None = None) -> None:
        self.obj = obj
        self._raw = raw

    @property
    def raw(self) -> bytes:
        if self._raw is None:
            self._raw = dumps(self.obj)
        return self._raw

    @property
    def labels(self) -> dict[str, str]:
        return self.obj["metadata"].get("labels") or {}


class Event:
    """A committed write. ADDED has no `old`, DELETED no `new`."""

    __slots__ = ("_del", "key", "new", "ns", "old", "rt", "rv")

    def __init__(self, rv: int, rt: str, key: str, ns: str,
                 new: Stored | None, old: Stored | None) -> None:
        self.rv, self.rt, self.key, self.ns, self.new, self.old = rv, rt, key, ns, new, old
        self._del: Stored | None = None

    @property
    def type(self) -> str:
        if self.old is None:
            return "ADDED"
        return "DELETED" if self.new is None else "MODIFIED"

    def deleted_view(self) -> Stored:
        """The previous object stamped with this event's resourceVersion, as watchers see a
        deletion (or an object leaving their selector)."""
        if self._del is None:
            assert self.old is not None
            obj = dict(self.old.obj)
            obj["metadata"] = dict(obj["metadata"], resourceVersion=str(self.rv))
            self._del = Stored(obj)
        return self._del


def object_key(ns: str, name: str) -> str:
    # Same order as etcd keys /registry/<resource>/<ns>/<name>, so lists and continue
    # tokens page the way a real apiserver does.
    return f"{ns}/{name}" if ns else name


def encode_continue(rv: int, start_key: str) -> str:
    # Same shape as the apiserver's token; "start" is the key just after the last one sent.
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": start_key + "\x00"})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, str]:
    try:
        pad = "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(token + pad))
        if data.get("v") != "meta.k8s.io/v1":
            raise ValueError("version")
        return int(data["rv"]), str(data["start"])
    except Exception as exc:  # any malformed token is the client's fault
        raise errors.bad_request(f"continue key is not valid: {exc}") from None


class Store:
    def __init__(self, *, watch_window: int = 10000, kubelet_delay: float | None = 0.0) -> None:
        self.lock = threading.Lock()
        self.cond = threading.Condition(self.lock)
        self.rv = 0
        self.watch_window = max(0, watch_window)
        self.kubelet_delay = kubelet_delay
        self.types: dict[str, ResourceType] = {}
        self.by_path: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[str, dict[str, Stored]] = {}
        self._sorted: dict[str, list[str] | None] = {}
        self.last_write: dict[str, int] = {}
        self.log: list[Event] = []
        self.log_start = 1          # rv of log[0]
        self.compacted = 0          # events at or below this rv are gone
        self._dirty_ns: set[str] = set()
        self._dirty_crd: set[str] = set()
        # Per-kind state (allocators), owned by the kinds module.
        self.state: dict[str, Any] = {}
        self.closed_types: set[str] = set()
        # Called (store lock held, any thread) after every commit: the server wakes watches.
        self.listeners: list[Callable[[], None]] = []
        # >0: gc.freeze() every this many writes (see ApiServer(gc_freeze=...)).
        self.freeze_every = 0
        self._writes = 0

    # ---- types --------------------------------------------------------------------------

    def add_type(self, rt: ResourceType) -> None:
        self.types[rt.key] = rt
        for v in rt.versions:
            self.by_path[(rt.group, v, rt.plural)] = rt
        self.objects.setdefault(rt.key, {})
        self._sorted.setdefault(rt.key, None)
        self.closed_types.discard(rt.key)

    def remove_type(self, key: str) -> None:
        rt = self.types.pop(key, None)
        if rt is None:
            return
        for v in rt.versions:
            self.by_path.pop((rt.group, v, rt.plural), None)
        self.objects.pop(key, None)
        self._sorted.pop(key, None)
        self.closed_types.add(key)
        self._notify()

    # ---- history ------------------------------------------------------------------------

    def oldest_available(self) -> int:
        """The oldest resourceVersion whose event is still retained."""
        return max(self.log_start, self.rv - self.watch_window + 1, self.compacted + 1)

    def too_old(self, rv: int) -> bool:
        return rv < self.rv and rv < self.oldest_available() - 1

    def compact(self) -> None:
        """Forget all history, as an etcd compaction at the current revision would."""
        with self.lock:
            self.compacted = self.rv
            self.log.clear()
            self.log_start = self.rv + 1

    def events_after(self, rv: int) -> list[Event] | None:
        """Events with resourceVersion > rv, or None if some were already discarded."""
        idx = rv + 1 - self.log_start
        if idx < 0:
            return None
        return self.log[idx:]

    def wait_for_rv(self, rv: int) -> None:
        """Block (lock held) until the store reached rv, or raise the apiserver's 504."""
        deadline = time.monotonic() + _FRESHNESS_WAIT
        while self.rv < rv:
            left = deadline - time.monotonic()
            if left <= 0:
                raise errors.too_large_rv()
            self.cond.wait(left)

    def _commit(self, rt: ResourceType, key: str, ns: str,
                new: Stored | None, old: Stored | None) -> None:
        # Caller already stamped new (if any) with self.rv.
        objs = self.objects[rt.key]
        if new is None:
            del objs[key]
            self._sorted[rt.key] = None
        else:
            if old is None:
                self._sorted[rt.key] = None
            objs[key] = new
        self.log.append(Event(self.rv, rt.key, key, ns, new, old))
        if self.freeze_every:
            self._writes += 1
            if self._writes % self.freeze_every == 0:
                # Stored objects are long-lived and acyclic: keep the cyclic GC from
                # rescanning them, which otherwise makes every write slower as the store grows.
                gc.freeze()
        self.last_write[rt.key] = self.rv
        if len(self.log) > 2 * self.watch_window + 1024:
            drop = len(self.log) - self.watch_window
            del self.log[:drop]
            self.log_start += drop
        self._notify()

    def _notify(self) -> None:
        self.cond.notify_all()
        for fn in self.listeners:
            fn()

    def _stamp(self, obj: dict[str, Any]) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)

    # ---- reads --------------------------------------------------------------------------

    def _check_type(self, rt: ResourceType) -> None:
        # A request may have resolved a custom type just before its CRD went away.
        if rt.key not in self.types:
            raise errors.ApiError(404, "NotFound",
                                  "the server could not find the requested resource", {})

    def get(self, rt: ResourceType, ns: str, name: str) -> Stored:
        with self.lock:
            self._check_type(rt)
            st = self.objects[rt.key].get(object_key(ns, name))
            if st is None:
                raise errors.not_found(rt.group, rt.plural, name)
            return st

    def _sorted_keys(self, rt: ResourceType) -> list[str]:
        keys = self._sorted.get(rt.key)
        if keys is None:
            keys = sorted(self.objects[rt.key])
            self._sorted[rt.key] = keys
        return keys

    def snapshot(self, rt: ResourceType, rv: int) -> tuple[dict[str, Stored], list[str]]:
        """Objects of rt as of rv (lock held), rolled back through the history."""
        cur = self.objects[rt.key]
        if rv >= self.rv or self.last_write.get(rt.key, 0) <= rv:
            return cur, self._sorted_keys(rt)
        if self.too_old(rv):
            raise errors.expired("The resourceVersion for the provided list is too old.")
        snap = dict(cur)
        for ev in reversed(self.log[rv + 1 - self.log_start:]):
            if ev.rt != rt.key:
                continue
            if ev.old is None:
                snap.pop(ev.key, None)
            else:
                snap[ev.key] = ev.old
        return snap, sorted(snap)

    def list(self, rt: ResourceType, ns: str, labels: Matcher | None, fields: Matcher | None,
             *, at: int | None, limit: int, start: str, min_rv: int = 0
             ) -> tuple[list[Stored], int, str | None, int | None]:
        """(items, list rv, continue token, remainingItemCount) for one page.

        `at` asks for an exact resourceVersion (continue tokens, resourceVersionMatch=Exact);
        otherwise the newest state is served once the store reached min_rv."""
        with self.lock:
            self._check_type(rt)
            if at is not None:
                if at > self.rv:
                    self.wait_for_rv(at)
                objs, keys = self.snapshot(rt, at)
                list_rv = at
            else:
                if min_rv > self.rv:
                    self.wait_for_rv(min_rv)
                objs, keys = self.objects[rt.key], self._sorted_keys(rt)
                list_rv = self.rv
            prefix = f"{ns}/" if ns and rt.namespaced else ""
            lo = bisect.bisect_left(keys, max(prefix, start)) if (prefix or start) else 0
            items: list[Stored] = []
            cont = None
            remaining = None
            i = lo
            n = len(keys)
            while i < n:
                k = keys[i]
                if prefix and not k.startswith(prefix):
                    break
                st = objs[k]
                i += 1
                if labels is not None and not labels(st.labels):
                    continue
                if fields is not None and not fields(rt.fields_of(st.obj)):
                    continue
                items.append(st)
                if limit and len(items) >= limit:
                    break
            if limit and len(items) >= limit and i < n and (
                    not prefix or keys[i].startswith(prefix)):
                cont = encode_continue(list_rv, keys[i - 1])
                if labels is None and fields is None:
                    end = (bisect.bisect_left(keys, prefix[:-1] + "0") if prefix else n)
                    remaining = end - i
            return items, list_rv, cont, remaining

    # ---- writes -------------------------------------------------------------------------

    def namespace_check(self, rt: ResourceType, ns: str, name: str) -> None:
        if not rt.namespaced:
            return
        st = self.objects["namespaces"].get(ns)
        if st is None:
            raise errors.not_found("", "namespaces", ns)
        if st.obj["metadata"].get("deletionTimestamp"):
            raise errors.ApiError(
                403, "Forbidden",
                f'{rt.key} "{name}" is forbidden: unable to create new content in namespace '
                f"{ns} because it is being terminated",
                {"name": name, "kind": rt.plural,
                 "causes": [{"reason": "NamespaceTerminating",
                             "message": f"namespace {ns} is being terminated",
                             "field": "metadata.namespace"}]})

    def create(self, rt: ResourceType, ns: str, body: dict[str, Any], *,
               dry_run: bool = False) -> Stored:
        with self.lock:
            self._check_type(rt)
            st = self._create(rt, ns, body, dry_run)
            self._run_controllers()
            return st

    def _create(self, rt: ResourceType, ns: str, body: dict[str, Any], dry_run: bool) -> Stored:
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        body["apiVersion"] = rt.api_version()
        body["kind"] = rt.kind
        if rt.namespaced:
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = self._generate_name(rt, ns, meta["generateName"])
        name = meta.get("name") or ""
        if self._crd_terminating(rt):
            raise errors.method_not_allowed(
                "create not allowed while custom resource definition is terminating")
        self.namespace_check(rt, ns, name)
        meta["uid"] = new_uid()
        meta["creationTimestamp"] = now_rfc3339()
        for k in ("deletionTimestamp", "deletionGracePeriodSeconds", "selfLink",
                  "managedFields"):
            meta.pop(k, None)
        if rt.generation:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        rt.strategy.prepare_create(self, rt, body)
        causes = validation.object_meta(meta, rt.name_check, builtin=rt.crd is None) if name else [
            errors.field_required("metadata.name", "name or generateName is required")]
        causes += rt.strategy.validate(self, rt, body, None)
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        key = object_key(ns, name)
        if key in self.objects[rt.key]:
            raise errors.already_exists(rt.group, rt.plural, name)
        rt.strategy.commit_create(self, rt, body)
        if dry_run:
            rt.strategy.release(self, rt, body)
            return Stored(body)
        self._stamp(body)
        st = Stored(body)
        self._commit(rt, key, ns, st, None)
        rt.strategy.committed(self, rt, body)
        return st

    def _generate_name(self, rt: ResourceType, ns: str, base: str) -> str:
        alphabet = "bcdfghjklmnpqrstvwxz2456789"
        for _ in range(8):
            raw = os.urandom(5)
            suffix = "".join(alphabet[b % len(alphabet)] for b in raw[:5])
            name = base[:58] + suffix
            if object_key(ns, name) not in self.objects[rt.key]:
                return name
        raise errors.already_exists(rt.group, rt.plural, base)

    def update(self, rt: ResourceType, ns: str, name: str, body: dict[str, Any], *,
               subresource: str = "", dry_run: bool = False) -> tuple[Stored, bool]:
        """Returns (object, created)."""
        with self.lock:
            self._check_type(rt)
            key = object_key(ns, name)
            cur = self.objects[rt.key].get(key)
            if cur is None:
                if rt.create_on_update and not subresource:
                    meta = body.get("metadata") or {}
                    meta.pop("resourceVersion", None)
                    st = self._create(rt, ns, body, dry_run)
                    self._run_controllers()
                    return st, True
                raise errors.not_found(rt.group, rt.plural, name)
            meta = body.get("metadata") or {}
            rv = meta.get("resourceVersion")
            if not rv:
                if not rt.unconditional_update:
                    raise errors.invalid(rt.kind, rt.group, name, [errors.field_invalid(
                        "metadata.resourceVersion", "0x0", "must be specified for an update")])
            elif rv != cur.obj["metadata"]["resourceVersion"]:
                raise errors.stale_conflict(rt.group, rt.plural, name)
            uid = meta.get("uid")
            if uid and uid != cur.obj["metadata"]["uid"]:
                raise errors.conflict(
                    rt.group, rt.plural, name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    f"{cur.obj['metadata']['uid']}")
            st = self._update(rt, key, ns, cur, body, subresource, dry_run)
            self._run_controllers()
            return st, False

    def patch(self, rt: ResourceType, ns: str, name: str,
              apply: Callable[[dict[str, Any]], dict[str, Any]], *,
              subresource: str = "", dry_run: bool = False, pure: bool = False) -> Stored:
        """Apply `apply` (a patch function) to the current object and store the result.

        `pure`: apply never edits its argument and returns new containers along every path
        it changes (a JSON merge patch)."""
        with self.lock:
            self._check_type(rt)
            key = object_key(ns, name)
            cur = self.objects[rt.key].get(key)
            if cur is None:
                raise errors.not_found(rt.group, rt.plural, name)
            if pure and not rt.strategy.edits_nested:
                # Neither the patch nor the strategy edits what they share with the stored
                # object, so skip the full copy; the result only shares immutable parts.
                body = apply(cur.obj)
            else:
                # Patch a private copy: strategies may then edit the result freely without
                # touching the stored object, which history and other readers share.
                body = apply(json.loads(cur.raw))
            if not isinstance(body, dict):
                raise errors.bad_request("patched object is not a JSON object")
            meta = body.get("metadata")
            if not isinstance(meta, dict):
                meta = body["metadata"] = {}
            if meta.get("name", name) != name:
                raise errors.bad_request(
                    f"the name of the object ({meta.get('name')}) does not match the name on "
                    f"the URL ({name})")
            rv = meta.get("resourceVersion")
            if rv and rv != cur.obj["metadata"]["resourceVersion"]:
                raise errors.stale_conflict(rt.group, rt.plural, name)
            uid = meta.get("uid")
            if uid and uid != cur.obj["metadata"]["uid"]:
                raise errors.conflict(
                    rt.group, rt.plural, name,
                    f"Precondition failed: UID in precondition: {uid}, UID in object meta: "
                    f"{cur.obj['metadata']['uid']}")
            st = self._update(rt, key, ns, cur, body, subresource, dry_run)
            self._run_controllers()
            return st

    def _update(self, rt: ResourceType, key: str, ns: str, cur: Stored, body: dict[str, Any],
                subresource: str, dry_run: bool) -> Stored:
        old = cur.obj
        om = old["metadata"]
        body["apiVersion"] = rt.api_version()
        body["kind"] = rt.kind
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = body["metadata"] = {}
        meta = body["metadata"] = dict(meta)
        for k in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp",
                  "deletionGracePeriodSeconds", "generation", "selfLink"):
            if k in om:
                meta[k] = om[k]
            else:
                meta.pop(k, None)
        meta.pop("managedFields", None)
        meta["resourceVersion"] = om["resourceVersion"]
        rt.strategy.prepare_update(self, rt, body, old, subresource)
        meta = body["metadata"]
        name = om["name"]
        causes = validation.object_meta(meta, rt.name_check, builtin=rt.crd is None)
        if om.get("deletionTimestamp"):
            added = [f for f in meta.get("finalizers") or [] if f not in (om.get("finalizers")
                                                                           or [])]
            if added:
                causes.append(errors.field_forbidden(
                    "metadata.finalizers",
                    "no new finalizers can be added if the object is being deleted, found new "
                    f"finalizers {added!r}"))
        causes += rt.strategy.validate(self, rt, body, old, subresource)
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        if rt.generation and subresource != "binding" and _spec_changed(rt, body, old):
            meta["generation"] = om.get("generation", 0) + 1
        if body == old:
            # Like etcd's GuaranteedUpdate: identical bytes are not written, no event.
            return cur
        if dry_run:
            return Stored(body)
        rt.strategy.commit_update(self, rt, body, old)
        self._stamp(body)
        st = Stored(body)
        self._commit(rt, key, ns, st, cur)
        rt.strategy.committed(self, rt, body)
        if (meta.get("deletionTimestamp") and not _pending_finalizers(rt, body)
                and not meta.get("deletionGracePeriodSeconds")):
            self._remove(rt, key, ns, st)
        return st

    def delete(self, rt: ResourceType, ns: str, name: str, *, grace: int | None = None,
               precondition_uid: str | None = None, precondition_rv: str | None = None,
               dry_run: bool = False) -> tuple[Stored, bool]:
        """Returns (object, deleted now). A False flag means finalizers or graceful
        termination keep the object around with deletionTimestamp set."""
        with self.lock:
            self._check_type(rt)
            key = object_key(ns, name)
            cur = self.objects[rt.key].get(key)
            if cur is None:
                raise errors.not_found(rt.group, rt.plural, name)
            m = cur.obj["metadata"]
            if rt.key == "namespaces" and name in _UNDELETABLE_NAMESPACES:
                raise errors.forbidden("", "namespaces", name,
                                       "this namespace may not be deleted")
            if precondition_uid and precondition_uid != m["uid"]:
                raise errors.conflict(
                    rt.group, rt.plural, name,
                    f"Precondition failed: UID in precondition: {precondition_uid}, UID in "
                    f"object meta: {m['uid']}")
            if precondition_rv and precondition_rv != m["resourceVersion"]:
                raise errors.conflict(
                    rt.group, rt.plural, name,
                    f"Precondition failed: ResourceVersion in precondition: {precondition_rv}, "
                    f"ResourceVersion in object meta: {m['resourceVersion']}")
            res = self._delete(rt, key, ns, cur, grace, dry_run)
            self._run_controllers()
            return res

    def _delete(self, rt: ResourceType, key: str, ns: str, cur: Stored, grace: int | None,
                dry_run: bool) -> tuple[Stored, bool]:
        obj = cur.obj
        m = obj["metadata"]
        secs = rt.strategy.grace_seconds(rt, obj, grace)
        if secs > 0:
            prev = m.get("deletionGracePeriodSeconds")
            if m.get("deletionTimestamp") and prev is not None and prev <= secs:
                return cur, False
            new = dict(obj)
            nm = new["metadata"] = dict(m)
            if not m.get("deletionTimestamp") and rt.generation:
                nm["generation"] = m.get("generation", 0) + 1
            nm["deletionTimestamp"] = now_rfc3339(secs)
            nm["deletionGracePeriodSeconds"] = secs
            if dry_run:
                return Stored(new), False
            self._stamp(new)
            st = Stored(new)
            self._commit(rt, key, ns, st, cur)
            self._kubelet(rt, key, m["uid"])
            return st, False
        if m.get("deletionTimestamp") and m.get("deletionGracePeriodSeconds"):
            # Ending a graceful deletion early (the kubelet's grace-0 delete) is itself a
            # write, as in the apiserver's updateForGracefulDeletionAndFinalizers.
            new = dict(obj)
            nm = new["metadata"] = dict(m, deletionGracePeriodSeconds=0,
                                        deletionTimestamp=now_rfc3339())
            if dry_run:
                return Stored(new), not _pending_finalizers(rt, new)
            prev = cur
            self._stamp(new)
            cur = Stored(new)
            self._commit(rt, key, ns, cur, prev)
            obj, m = new, nm
        if _pending_finalizers(rt, obj):
            if m.get("deletionTimestamp") and m.get("deletionGracePeriodSeconds") == 0:
                return cur, False
            new = dict(obj)
            nm = new["metadata"] = dict(m)
            if not m.get("deletionTimestamp"):
                if rt.generation:
                    nm["generation"] = m.get("generation", 0) + 1
                nm["deletionTimestamp"] = now_rfc3339()
            nm["deletionGracePeriodSeconds"] = 0
            if rt.key == "namespaces":
                new["status"] = dict(new.get("status") or {}, phase="Terminating")
            if dry_run:
                return Stored(new), False
            self._stamp(new)
            st = Stored(new)
            self._commit(rt, key, ns, st, cur)
            self._after_terminating(rt, st)
            return st, False
        if dry_run:
            return cur, True
        self._remove(rt, key, ns, cur)
        return cur, True

    def _remove(self, rt: ResourceType, key: str, ns: str, cur: Stored) -> None:
        self.rv += 1
        self._commit(rt, key, ns, None, cur)
        rt.strategy.release(self, rt, cur.obj)
        if ns and ns in self.objects["namespaces"]:
            nso = self.objects["namespaces"][ns].obj
            if nso["metadata"].get("deletionTimestamp"):
                self._dirty_ns.add(ns)
        if self._crd_terminating(rt):
            self._dirty_crd.add(rt.key)
        if rt.key in ("namespaces", _CRD_KEY):
            self._after_terminating(rt, cur)

    def _crd_terminating(self, rt: ResourceType) -> bool:
        if rt.crd is None:
            return False
        # rt.crd is the CRD as registered; its deletion state lives in the current object.
        st = self.objects.get(_CRD_KEY, {}).get(rt.key)
        return st is None or bool(st.obj["metadata"].get("deletionTimestamp"))

    def _after_terminating(self, rt: ResourceType, st: Stored) -> None:
        if rt.key == "namespaces":
            self._dirty_ns.add(st.obj["metadata"]["name"])
        elif rt.key == _CRD_KEY:
            self._dirty_crd.add(st.obj["metadata"]["name"])

    # ---- the controllers a cluster would run next to the apiserver ----------------------

    def _run_controllers(self) -> None:
        # Namespace lifecycle and CRD cleanup finish deletions the way their controllers
        # do; running them inline keeps the emulator deterministic for tests.
        while self._dirty_ns or self._dirty_crd:
            if self._dirty_ns:
                self._namespace_controller(self._dirty_ns.pop())
            if self._dirty_crd:
                self._crd_controller(self._dirty_crd.pop())

    def _namespace_controller(self, ns: str) -> None:
        nsrt = self.types["namespaces"]
        cur = self.objects["namespaces"].get(ns)
        if cur is None or not cur.obj["metadata"].get("deletionTimestamp"):
            return
        left = 0
        for rt in list(self.types.values()):
            if not rt.namespaced:
                continue
            prefix = ns + "/"
            for key in [k for k in self.objects[rt.key] if k.startswith(prefix)]:
                st = self.objects[rt.key].get(key)
                if st is None:
                    continue
                _, gone = self._delete(rt, key, ns, st, None, False)
                if not gone:
                    left += 1
        cur = self.objects["namespaces"].get(ns)
        if cur is None or left:
            return
        spec_fin = (cur.obj.get("spec") or {}).get("finalizers") or []
        if "kubernetes" in spec_fin:
            new = dict(cur.obj)
            new["metadata"] = dict(cur.obj["metadata"])
            new["spec"] = dict(cur.obj.get("spec") or {})
            new["spec"]["finalizers"] = [f for f in spec_fin if f != "kubernetes"]
            self._stamp(new)
            st = Stored(new)
            self._commit(nsrt, ns, "", st, cur)
            cur = st
        if not cur.obj["metadata"].get("finalizers") and not (
                (cur.obj.get("spec") or {}).get("finalizers")):
            self._remove(nsrt, ns, "", cur)

    def _crd_controller(self, name: str) -> None:
        crdrt = self.types[_CRD_KEY]
        cur = self.objects[crdrt.key].get(name)
        if cur is None or not cur.obj["metadata"].get("deletionTimestamp"):
            return
        rt = self.types.get(name)
        left = 0
        if rt is not None:
            for key in list(self.objects[rt.key]):
                st = self.objects[rt.key].get(key)
                if st is None:
                    continue
                ns = st.obj["metadata"].get("namespace", "")
                _, gone = self._delete(rt, key, ns, st, None, False)
                if not gone:
                    left += 1
        if left:
            return
        fins = cur.obj["metadata"].get("finalizers") or []
        cleanup = "customresourcecleanup.apiextensions.k8s.io"
        if cleanup in fins:
            new = dict(cur.obj)
            new["metadata"] = dict(cur.obj["metadata"])
            new["metadata"]["finalizers"] = [f for f in fins if f != cleanup]
            if not new["metadata"]["finalizers"]:
                del new["metadata"]["finalizers"]
            self._stamp(new)
            st = Stored(new)
            self._commit(crdrt, name, "", st, cur)
            cur = st
        if not cur.obj["metadata"].get("finalizers"):
            self._remove(crdrt, name, "", cur)

    def _kubelet(self, rt: ResourceType, key: str, uid: str) -> None:
        # The kubelet confirms a graceful pod deletion with a grace-0 delete once the
        # containers are gone; emulate that after kubelet_delay (None: no kubelet).
        if self.kubelet_delay is None:
            return
        if self.kubelet_delay <= 0:
            self._kubelet_finish(rt, key, uid)
            return
        t = threading.Timer(self.kubelet_delay, self._kubelet_timer, (rt, key, uid))
        t.daemon = True
        t.start()

    def _kubelet_timer(self, rt: ResourceType, key: str, uid: str) -> None:
        with self.lock:
            self._kubelet_finish(rt, key, uid)
            self._run_controllers()

    def _kubelet_finish(self, rt: ResourceType, key: str, uid: str) -> None:
        st = self.objects.get(rt.key, {}).get(key)
        if st is None or st.obj["metadata"]["uid"] != uid:
            return
        ns = st.obj["metadata"].get("namespace", "")
        self._delete(rt, key, ns, st, 0, False)


def _spec_changed(rt: ResourceType, new: dict[str, Any], old: dict[str, Any]) -> bool:
    skip = {"metadata", "status"} if "status" in rt.subresources else {"metadata"}
    keys = (set(new) | set(old)) - skip
    return any(new.get(k) != old.get(k) for k in keys)


def _pending_finalizers(rt: ResourceType, obj: dict[str, Any]) -> bool:
    if obj["metadata"].get("finalizers"):
        return True
    # Namespaces also wait for spec.finalizers (the namespace controller's "kubernetes").
    return rt.key == "namespaces" and bool((obj.get("spec") or {}).get("finalizers"))
