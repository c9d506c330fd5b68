"""Name, label and annotation checks from k8s.io/apimachinery/pkg/util/validation.

They are cheap and they catch what a real apiserver would refuse (upper-case names,
label values with spaces, ...), so code that passes here does not fail later on a cluster.
"""

from __future__ import annotations

import re
from typing import Any

from . import errors

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(
    r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

_TOTAL_ANNOTATION_SIZE = 256 * 1024


def dns1123_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character")
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.match(value):
        return ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character")
    return None


def path_segment_name(value: str) -> str | None:
    # Custom resources only need to be usable as a URL path segment.
    if value in (".", ".."):
        return f"may not be '{value}'"
    if "/" in value or "%" in value:
        return "may not contain '/' or '%'"
    return None


def qualified_name(value: str) -> str | None:
    """A label or annotation key: optional DNS-subdomain prefix, '/', a name of <= 63 chars."""
    prefix, sep, name = value.rpartition("/")
    if sep:
        if not prefix:
            return "prefix part must be non-empty"
        if dns1123_subdomain(prefix):
            return "prefix part " + (dns1123_subdomain(prefix) or "")
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character")
    return None


def label_value(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


def object_meta(meta: dict[str, Any], name_check: Any, *, builtin: bool = True
                ) -> list[tuple[str, str, str]]:
    """Checks common to every object; name_check is one of the name validators (or None).

    Built-in kinds also refuse unqualified finalizer names that are not standard ones;
    custom resources only get a warning for those on a real apiserver."""
    causes: list[tuple[str, str, str]] = []
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        causes.append(errors.field_required("metadata.name", "name or generateName is required"))
    elif name_check is not None and (why := name_check(name)):
        causes.append(errors.field_invalid("metadata.name", name, why))
    labels = meta.get("labels")
    if labels is not None:
        if not isinstance(labels, dict):
            causes.append(errors.field_invalid("metadata.labels", labels, "must be a map"))
        else:
            for k, v in labels.items():
                if why := qualified_name(k):
                    causes.append(errors.field_invalid("metadata.labels", k, why))
                if not isinstance(v, str):
                    causes.append(errors.field_invalid(f"metadata.labels.{k}", v,
                                                       "must be a string"))
                elif why := label_value(v):
                    causes.append(errors.field_invalid("metadata.labels", v, why))
    ann = meta.get("annotations")
    if ann is not None:
        if not isinstance(ann, dict):
            causes.append(errors.field_invalid("metadata.annotations", ann, "must be a map"))
        else:
            size = 0
            for k, v in ann.items():
                if why := qualified_name(k.lower()):
                    causes.append(errors.field_invalid("metadata.annotations", k, why))
                if not isinstance(v, str):
                    causes.append(errors.field_invalid(f"metadata.annotations.{k}", v,
                                                       "must be a string"))
                else:
                    size += len(k) + len(v)
            if size > _TOTAL_ANNOTATION_SIZE:
                causes.append(("metadata.annotations", "FieldValueTooLong",
                               "metadata.annotations: Too long: must have at most 262144 bytes"))
    fins = meta.get("finalizers")
    if fins is not None:
        if not isinstance(fins, list) or not all(isinstance(f, str) for f in fins):
            causes.append(errors.field_invalid("metadata.finalizers", fins,
                                               "must be a list of strings"))
        elif "orphan" in fins and "foregroundDeletion" in fins:
            causes.append(errors.field_invalid(
                "metadata.finalizers", fins,
                "finalizer orphan and foregroundDeletion cannot be both set"))
        else:
            for i, f in enumerate(fins):
                if why := qualified_name(f):
                    causes.append(errors.field_invalid(f"metadata.finalizers[{i}]", f, why))
                elif builtin and "/" not in f and f not in _STANDARD_FINALIZERS:
                    causes.append(errors.field_invalid(
                        f"metadata.finalizers[{i}]", f,
                        "name is neither a standard finalizer name nor is it fully qualified"))
    return causes


# Finalizers the apiserver accepts without a domain prefix.
_STANDARD_FINALIZERS = {"kubernetes", "orphan", "foregroundDeletion",
                        "customresourcecleanup.apiextensions.k8s.io"}
