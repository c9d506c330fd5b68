"""Label and field selectors, parsed and matched the way apimachinery does.

Label selectors: `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`,
`k>1`, `k<1`, joined by commas (AND). `!=` and `notin` also match objects without the key.
Field selectors: `f=v`, `f==v`, `f!=v` joined by commas, with `\\,` `\\=` `\\\\` escapes;
only the fields a resource declares are accepted, as on a real apiserver.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import errors, validation

# A compiled selector: given labels (or fields), does the object match?
Matcher = Callable[[Mapping[str, str]], bool]


def _lex(text: str) -> list[tuple[str, str]]:
    toks: list[tuple[str, str]] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        two = text[i:i + 2]
        if two in ("==", "!="):
            toks.append(("op", two))
            i += 2
            continue
        if c in "=<>":
            toks.append(("op", c))
            i += 1
            continue
        if c == "!":
            toks.append(("not", c))
            i += 1
            continue
        if c in "(),":
            toks.append((c, c))
            i += 1
            continue
        j = i
        while j < n and not text[j].isspace() and text[j] not in "=!<>(),":
            j += 1
        word = text[i:j]
        if word in ("in", "notin"):
            toks.append(("op", word))
        else:
            toks.append(("id", word))
        i = j
    return toks


def _bad(text: str, why: str) -> errors.ApiError:
    return errors.bad_request(f"unable to parse requirement: {why} (selector {text!r})")


def parse_labels(text: str | None) -> Matcher | None:
    """Compile a label selector; None (match everything) for an empty one."""
    if not text or not text.strip():
        return None
    toks = _lex(text)
    reqs: list[Matcher] = []
    pos = 0

    def take(kind: str | None = None) -> tuple[str, str]:
        nonlocal pos
        if pos >= len(toks):
            raise _bad(text, "unexpected end of selector")
        tok = toks[pos]
        if kind and tok[0] != kind:
            raise _bad(text, f"found '{tok[1]}', expected: {kind}")
        pos += 1
        return tok

    while pos < len(toks):
        negate = False
        if toks[pos][0] == "not":
            negate = True
            pos += 1
        key = take("id")[1]
        if why := validation.qualified_name(key):
            raise _bad(text, f"key: Invalid value: {key!r}: {why}")
        if negate or pos >= len(toks) or toks[pos][0] == ",":
            reqs.append(_not_exists(key) if negate else _exists(key))
        else:
            op = take("op")[1]
            if op in ("in", "notin"):
                take("(")
                vals: set[str] = set()
                while True:
                    t = take()
                    if t[0] == "id":
                        vals.add(t[1])
                        t = take()
                    if t[0] == ")":
                        break
                    if t[0] != ",":
                        raise _bad(text, f"found '{t[1]}', expected: ',' or ')'")
                if not vals:
                    raise _bad(text, "for 'in', 'notin' operators, values set can't be empty")
                for v in vals:
                    if why := validation.label_value(v):
                        raise _bad(text, f"values: Invalid value: {v!r}: {why}")
                reqs.append(_in(key, frozenset(vals)) if op == "in"
                            else _notin(key, frozenset(vals)))
            else:
                val = ""
                if pos < len(toks) and toks[pos][0] == "id":
                    val = take()[1]
                if op in ("<", ">"):
                    try:
                        num = int(val)
                    except ValueError:
                        raise _bad(text, f"for 'Gt', 'Lt' operators, the value must be an "
                                         f"integer, got {val!r}") from None
                    reqs.append(_gt(key, num) if op == ">" else _lt(key, num))
                else:
                    if why := validation.label_value(val):
                        raise _bad(text, f"values: Invalid value: {val!r}: {why}")
                    reqs.append(_ne(key, val) if op == "!=" else _eq(key, val))
        if pos < len(toks):
            take(",")
            if pos >= len(toks):
                raise _bad(text, "found '', expected: identifier after ','")
    if len(reqs) == 1:
        return reqs[0]
    return lambda labels: all(r(labels) for r in reqs)


def _exists(k: str) -> Matcher:
    return lambda lb: k in lb


def _not_exists(k: str) -> Matcher:
    return lambda lb: k not in lb


def _eq(k: str, v: str) -> Matcher:
    return lambda lb: lb.get(k) == v


def _ne(k: str, v: str) -> Matcher:
    return lambda lb: lb.get(k) != v


def _in(k: str, vs: frozenset[str]) -> Matcher:
    return lambda lb: k in lb and lb[k] in vs


def _notin(k: str, vs: frozenset[str]) -> Matcher:
    return lambda lb: k not in lb or lb[k] not in vs


def _num(v: str | None) -> int | None:
    try:
        return int(v) if v is not None else None
    except ValueError:
        return None


def _gt(k: str, n: int) -> Matcher:
    return lambda lb: (x := _num(lb.get(k))) is not None and x > n


def _lt(k: str, n: int) -> Matcher:
    return lambda lb: (x := _num(lb.get(k))) is not None and x < n


def _split_escaped(text: str, sep: str) -> list[str]:
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _unescape(s: str) -> str:
    out, i = [], 0
    while i < len(s):
        if s[i] == "\\" and i + 1 < len(s):
            if s[i + 1] not in "\\,=":
                raise errors.bad_request(f"invalid field selector: invalid escape sequence: {s!r}")
            out.append(s[i + 1])
            i += 2
        else:
            out.append(s[i])
            i += 1
    return "".join(out)


def parse_fields(text: str | None, allowed: frozenset[str] | set[str]) -> Matcher | None:
    """Compile a field selector over the fields `allowed` for the resource."""
    if not text or not text.strip():
        return None
    reqs: list[tuple[str, str, bool]] = []
    for term in _split_escaped(text, ","):
        if not term:
            continue
        for op, negated in (("!=", True), ("==", False), ("=", False)):
            idx = _find_unescaped(term, op)
            if idx >= 0:
                field = term[:idx].strip()
                value = _unescape(term[idx + len(op):])
                neg = negated
                break
        else:
            raise errors.bad_request(
                f"invalid field selector: invalid selector: '{text}'; can't understand '{term}'")
        if field not in allowed:
            raise errors.bad_request(f'field label not supported: {field}')
        reqs.append((field, value, neg))
    if not reqs:
        return None

    def match(fields: Mapping[str, str]) -> bool:
        for f, v, neg in reqs:
            if (fields.get(f, "") == v) == neg:
                return False
        return True

    return match


def _find_unescaped(term: str, op: str) -> int:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        if term.startswith(op, i):
            # "!=" must not be read as "=" preceded by "!".
            if op == "=" and i > 0 and term[i - 1] == "!":
                return -1
            return i
        i += 1
    return -1


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """The string form of a dotted path in obj, as field selectors compare it."""
    cur: Any = obj
    for part in path.split("."):
        if not isinstance(cur, Mapping):
            return ""
        cur = cur.get(part)
        if cur is None:
            return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    if isinstance(cur, (dict, list)):
        return ""
    return str(cur)
