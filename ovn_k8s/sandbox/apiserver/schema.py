"""Structural-schema handling for custom resources: pruning, defaulting, validation.

A real apiserver drops fields a CRD's openAPIV3Schema does not declare (unless
x-kubernetes-preserve-unknown-fields), fills `default`s and rejects type/enum/range
violations with 422. Code that stores undeclared fields would silently lose them on a
cluster, so the emulator does the same. Not covered: CEL rules (x-kubernetes-validations),
`format` checks and conversion webhooks.
"""

from __future__ import annotations

import copy
import re
from typing import Any

from . import errors

_DROP = object()
_ROOT_KEEP = ("apiVersion", "kind", "metadata")


def _type_of(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int):
        return "integer"
    if isinstance(v, float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def apply_schema(obj: dict[str, Any], schema: dict[str, Any]
                 ) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Return (pruned and defaulted object, validation causes)."""
    causes: list[tuple[str, str, str]] = []
    rest = {k: v for k, v in obj.items() if k not in _ROOT_KEEP}
    out = _walk(rest, schema, "", causes)
    if out is _DROP or not isinstance(out, dict):
        out = {}
    for k in _ROOT_KEEP:
        if k in obj:
            out[k] = obj[k]
    return out, causes


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _walk(value: Any, sch: dict[str, Any], path: str, causes: list[tuple[str, str, str]]
          ) -> Any:
    if value is None:
        return None if sch.get("nullable") else _DROP
    want = sch.get("type")
    got = _type_of(value)
    if sch.get("x-kubernetes-int-or-string"):
        if got not in ("integer", "string"):
            causes.append(errors.field_invalid(
                path, value, f"{path} in body must be of type integer-or-string: \"{got}\""))
        return value
    if want and want != got and not (want == "number" and got == "integer"):
        causes.append(errors.field_invalid(
            path, got, f"{path} in body must be of type {want}: \"{got}\""))
        return value
    if "enum" in sch and value not in sch["enum"]:
        causes.append(errors.field_unsupported(path, value, [str(e) for e in sch["enum"]]))
    if got == "object":
        return _object(value, sch, path, causes)
    if got == "array":
        items = sch.get("items")
        out = []
        for i, v in enumerate(value):
            r = _walk(v, items, f"{path}[{i}]", causes) if isinstance(items, dict) else v
            if r is not _DROP:
                out.append(r)
        if "minItems" in sch and len(out) < sch["minItems"]:
            causes.append(errors.field_invalid(
                path, len(out), f"{path} in body should have at least {sch['minItems']} items"))
        if "maxItems" in sch and len(out) > sch["maxItems"]:
            causes.append((path, "FieldValueTooMany",
                           f"{path}: Too many: {len(out)}: must have at most "
                           f"{sch['maxItems']} items"))
        lt = sch.get("x-kubernetes-list-type")
        if lt == "set":
            for i, v in enumerate(out):
                if v in out[:i]:
                    causes.append(errors.field_duplicate(f"{path}[{i}]", v))
        elif lt == "map":
            keys = sch.get("x-kubernetes-list-map-keys") or []
            seen: list[tuple[Any, ...]] = []
            for i, v in enumerate(out):
                if isinstance(v, dict):
                    ident = tuple(v.get(k) for k in keys)
                    if ident in seen:
                        causes.append(errors.field_duplicate(f"{path}[{i}]", v))
                    seen.append(ident)
        return out
    if got == "string":
        if "minLength" in sch and len(value) < sch["minLength"]:
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be at least {sch['minLength']} chars long"))
        if "maxLength" in sch and len(value) > sch["maxLength"]:
            causes.append((path, "FieldValueTooLong",
                           f"{path}: Too long: may not be more than {sch['maxLength']} bytes"))
        if "pattern" in sch and not re.search(sch["pattern"], value):
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should match '{sch['pattern']}'"))
    if got in ("integer", "number"):
        lo, hi = sch.get("minimum"), sch.get("maximum")
        if lo is not None and (value < lo or (sch.get("exclusiveMinimum") and value == lo)):
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be greater than or equal to {lo}"))
        if hi is not None and (value > hi or (sch.get("exclusiveMaximum") and value == hi)):
            causes.append(errors.field_invalid(
                path, value, f"{path} in body should be less than or equal to {hi}"))
    return value


def _object(value: dict[str, Any], sch: dict[str, Any], path: str,
            causes: list[tuple[str, str, str]]) -> dict[str, Any]:
    props = sch.get("properties") or {}
    addl = sch.get("additionalProperties")
    keep_unknown = bool(sch.get("x-kubernetes-preserve-unknown-fields")) or addl is True
    embedded = bool(sch.get("x-kubernetes-embedded-resource"))
    out: dict[str, Any] = {}
    for k, v in value.items():
        sub = _join(path, k)
        if k in props:
            r = _walk(v, props[k], sub, causes)
        elif isinstance(addl, dict):
            r = _walk(v, addl, sub, causes)
        elif keep_unknown or (embedded and k in _ROOT_KEEP):
            r = v
        else:
            continue  # pruned, as the apiserver does for undeclared fields
        if r is not _DROP:
            out[k] = r
    for k, ps in props.items():
        if k not in out and isinstance(ps, dict) and "default" in ps:
            out[k] = _walk(copy.deepcopy(ps["default"]), ps, _join(path, k), causes)
    for r in sch.get("required") or []:
        if r not in out:
            causes.append(errors.field_required(_join(path, r)))
    if "minProperties" in sch and len(out) < sch["minProperties"]:
        causes.append(errors.field_invalid(
            path, len(out), f"{path} in body should have at least {sch['minProperties']} "
                            "properties"))
    if "maxProperties" in sch and len(out) > sch["maxProperties"]:
        causes.append(errors.field_invalid(
            path, len(out), f"{path} in body should have at most {sch['maxProperties']} "
                            "properties"))
    return out
