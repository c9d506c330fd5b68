"""The three patch formats the apiserver takes for non-apply PATCH requests.

- JSON Patch (RFC 6902), `application/json-patch+json`.
- JSON merge patch (RFC 7386), `application/merge-patch+json`.
- Strategic merge patch, `application/strategic-merge-patch+json`: merge patch plus list
  merging by key for the lists whose Go type declares `patchStrategy:"merge"`; the
  directives `$patch` (replace/delete/merge), `$deleteFromPrimitiveList/<f>`,
  `$setElementOrder/<f>` and `$retainKeys` are honoured. Which lists merge is described by a
  `MergeKeys` table per kind (see kinds.py); lists not in it are replaced, as for any list
  without a patch strategy.

All functions return new objects and never mutate their inputs: stored objects are shared
with watch history and must stay immutable.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from . import errors

# Path of field names (list indices elided) -> merge key, or "" for a primitive list that
# merges as a set (e.g. metadata.finalizers).
MergeKeys = Mapping[tuple[str, ...], str]


def _unprocessable(msg: str) -> errors.ApiError:
    return errors.ApiError(422, "UnprocessableEntity", msg)


# ---- RFC 7386 -------------------------------------------------------------------------------

def _copy(v: Any) -> Any:
    # Scalars are immutable: skip deepcopy's bookkeeping for the common case.
    return v if isinstance(v, (str, int, float, bool)) or v is None else copy.deepcopy(v)


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return _copy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            result[k] = merge_patch(result.get(k), v)
        else:
            result[k] = _copy(v)
    return result


# ---- RFC 6902 -------------------------------------------------------------------------------

def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _unprocessable(f"invalid JSON pointer: {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(container: list[Any], tok: str, allow_end: bool) -> int:
    if tok == "-" and allow_end:
        return len(container)
    if not tok.isdigit() or (tok != "0" and tok.startswith("0")):
        raise _unprocessable(f"invalid array index: {tok!r}")
    i = int(tok)
    if i > len(container) or (i == len(container) and not allow_end):
        raise _unprocessable(f"array index out of bounds: {i}")
    return i


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    cur = doc
    for tok in parts[:-1]:
        if isinstance(cur, dict):
            if tok not in cur:
                raise _unprocessable(
                    f"doc is missing path: \"{path}\": missing value")
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, False)]
        else:
            raise _unprocessable(f"doc is missing path: \"{path}\": missing value")
    return cur


def _get(doc: Any, path: str) -> Any:
    cur = doc
    for tok in _pointer(path):
        if isinstance(cur, dict) and tok in cur:
            cur = cur[tok]
        elif isinstance(cur, list):
            cur = cur[_index(cur, tok, False)]
        else:
            raise _unprocessable(f"doc is missing path: \"{path}\": missing value")
    return cur


def _add(doc: Any, path: str, value: Any) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    par = _parent(doc, parts, path)
    if isinstance(par, dict):
        par[parts[-1]] = value
    elif isinstance(par, list):
        par.insert(_index(par, parts[-1], True), value)
    else:
        raise _unprocessable(f"doc is missing path: \"{path}\": missing value")
    return doc


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise _unprocessable("cannot remove the whole document")
    par = _parent(doc, parts, path)
    if isinstance(par, dict):
        if parts[-1] not in par:
            raise _unprocessable(f"Unable to remove nonexistent key: {parts[-1]}: missing value")
        return par.pop(parts[-1])
    if isinstance(par, list):
        return par.pop(_index(par, parts[-1], False))
    raise _unprocessable(f"doc is missing path: \"{path}\": missing value")


def json_patch(target: Any, ops: Any) -> Any:
    if not isinstance(ops, list):
        raise errors.bad_request("json: cannot unmarshal object into Go value of type "
                                 "jsonpatch.Patch")
    doc = copy.deepcopy(target)
    for op in ops:
        if not isinstance(op, dict) or "op" not in op:
            raise errors.bad_request("invalid JSON patch operation")
        kind, path = op["op"], op.get("path")
        if not isinstance(path, str):
            raise _unprocessable(f"missing path in {kind} operation")
        if kind == "add":
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            _get(doc, path)
            if _pointer(path):
                _remove(doc, path)
            doc = _add(doc, path, copy.deepcopy(op.get("value")))
        elif kind in ("move", "copy"):
            src = op.get("from")
            if not isinstance(src, str):
                raise _unprocessable(f"missing from in {kind} operation")
            val = copy.deepcopy(_get(doc, src))
            if kind == "move":
                _remove(doc, src)
            doc = _add(doc, path, val)
        elif kind == "test":
            if _get(doc, path) != op.get("value"):
                raise _unprocessable(f"testing value {path} failed: test failed")
        else:
            raise _unprocessable(f"Unexpected kind: {kind}")
    return doc


# ---- strategic merge patch ------------------------------------------------------------------

_DIRECTIVE = "$patch"
_DELETE_PRIM = "$deleteFromPrimitiveList/"
_ORDER = "$setElementOrder/"
_RETAIN = "$retainKeys"


def strategic_merge_patch(target: Any, patch: Any, keys: MergeKeys) -> Any:
    if not isinstance(patch, dict):
        raise errors.bad_request("strategic merge patch must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch, (), keys)


def _smp_map(orig: dict[str, Any], patch: dict[str, Any], path: tuple[str, ...],
             keys: MergeKeys) -> Any:
    directive = patch.get(_DIRECTIVE)
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != _DIRECTIVE}
    if directive == "delete":
        return None
    if directive not in (None, "merge"):
        raise errors.bad_request(f"Unknown patch type: {directive}")
    result = dict(orig)
    orders: dict[str, list[Any]] = {}
    for k, v in patch.items():
        if k in (_DIRECTIVE, _RETAIN):
            continue
        if k.startswith(_ORDER):
            orders[k[len(_ORDER):]] = v if isinstance(v, list) else []
            continue
        if k.startswith(_DELETE_PRIM):
            field = k[len(_DELETE_PRIM):]
            if isinstance(result.get(field), list) and isinstance(v, list):
                drop = [x for x in v]
                result[field] = [x for x in result[field] if x not in drop]
            continue
        sub = (*path, k)
        if v is None:
            result.pop(k, None)
        elif isinstance(v, dict):
            cur = result.get(k)
            merged = _smp_map(cur if isinstance(cur, dict) else {}, v, sub, keys)
            if merged is None:
                result.pop(k, None)
            else:
                result[k] = merged
        elif isinstance(v, list) and sub in keys:
            cur = result.get(k)
            result[k] = _smp_list(cur if isinstance(cur, list) else [], v, sub, keys)
        else:
            result[k] = _copy(v)
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _reorder(result[field], order, keys.get((*path, field), ""))
    retain = patch.get(_RETAIN)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(orig: list[Any], patch: list[Any], path: tuple[str, ...],
              keys: MergeKeys) -> list[Any]:
    key = keys[path]
    for item in patch:
        if isinstance(item, dict) and item.get(_DIRECTIVE) == "replace" and len(item) == 1:
            return [copy.deepcopy(i) for i in patch if i is not item]
    if not key:
        # Primitive list merged as a set: union, original order first.
        out = list(orig)
        for item in patch:
            if item not in out:
                out.append(copy.deepcopy(item))
        return out
    out = [dict(i) if isinstance(i, dict) else i for i in orig]
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise errors.bad_request(f"map: {item} does not contain declared merge key: {key}")
        idx = next((n for n, cur in enumerate(out)
                    if isinstance(cur, dict) and cur.get(key) == item[key]), None)
        if item.get(_DIRECTIVE) == "delete":
            if idx is not None:
                out.pop(idx)
            continue
        if idx is None:
            out.append(_smp_map({}, item, path, keys))
        else:
            out[idx] = _smp_map(out[idx], item, path, keys)
    return out


def _reorder(items: list[Any], order: list[Any], key: str) -> list[Any]:
    def ident(item: Any) -> Any:
        return item.get(key) if key and isinstance(item, dict) else item

    wanted = [ident(o) if isinstance(o, dict) else o for o in order]
    ordered = sorted((i for i in items if ident(i) in wanted), key=lambda i: wanted.index(ident(i)))
    rest = [i for i in items if ident(i) not in wanted]
    return ordered + rest
