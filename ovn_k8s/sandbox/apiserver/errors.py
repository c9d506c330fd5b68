"""API errors as the apiserver reports them: an HTTP code plus a metav1.Status body.

Clients (client-go, the Python client, kubectl) key their behaviour on `reason` and `code`
(e.g. `IsNotFound`, `IsConflict`, `IsResourceExpired`), so those follow
k8s.io/apimachinery/pkg/api/errors exactly; messages follow its wording closely enough
for humans and for tests that grep them.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error that becomes a `Status` response (or an ERROR watch event)."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        details: dict[str, Any] | None = None,
        metadata: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.metadata = metadata or {}
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        st: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": self.metadata,
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            st["details"] = self.details
        return st


def _gr(group: str, plural: str) -> str:
    # "pods" for core, "customresourcedefinitions.apiextensions.k8s.io" otherwise.
    return f"{plural}.{group}" if group else plural


def _details(group: str, plural: str, name: str) -> dict[str, Any]:
    d: dict[str, Any] = {"name": name, "kind": plural}
    if group:
        d["group"] = group
    return d


def not_found(group: str, plural: str, name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{_gr(group, plural)} "{name}" not found',
                    _details(group, plural, name))


def already_exists(group: str, plural: str, name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{_gr(group, plural)} "{name}" already exists',
                    _details(group, plural, name))


def conflict(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(
        409, "Conflict",
        f'Operation cannot be fulfilled on {_gr(group, plural)} "{name}": {why}',
        _details(group, plural, name))


def stale_conflict(group: str, plural: str, name: str) -> ApiError:
    return conflict(group, plural, name,
                    "the object has been modified; please apply your changes to the latest "
                    "version and try again")


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    """422 Invalid; causes are (field, reason, message) with reason e.g. FieldValueInvalid."""
    qual = f"{kind}.{group}" if group else kind
    msgs = "; ".join(m for _, _, m in causes)
    if len(causes) > 1:
        msgs = "[" + ", ".join(m for _, _, m in causes) + "]"
    d: dict[str, Any] = {
        "name": name, "kind": kind,
        "causes": [{"reason": r, "message": m, "field": f} for f, r, m in causes],
    }
    if group:
        d["group"] = group
    return ApiError(422, "Invalid", f'{qual} "{name}" is invalid: {msgs}', d)


def field_invalid(field: str, value: Any, why: str) -> tuple[str, str, str]:
    return (field, "FieldValueInvalid", f"{field}: Invalid value: {_fmt(value)}: {why}")


def field_required(field: str, why: str = "") -> tuple[str, str, str]:
    return (field, "FieldValueRequired", f"{field}: Required value" + (f": {why}" if why else ""))


def field_forbidden(field: str, why: str) -> tuple[str, str, str]:
    return (field, "FieldValueForbidden", f"{field}: Forbidden: {why}")


def field_unsupported(field: str, value: Any, allowed: list[str]) -> tuple[str, str, str]:
    vals = ", ".join(f'"{a}"' for a in allowed)
    return (field, "FieldValueNotSupported",
            f"{field}: Unsupported value: {_fmt(value)}: supported values: {vals}")


def field_duplicate(field: str, value: Any) -> tuple[str, str, str]:
    return (field, "FieldValueDuplicate", f"{field}: Duplicate value: {_fmt(value)}")


def _fmt(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def expired(message: str, cont: str | None = None) -> ApiError:
    meta = {"continue": cont} if cont else None
    return ApiError(410, "Expired", message, metadata=meta)


def gone(message: str) -> ApiError:
    return ApiError(410, "Gone", message)


def method_not_allowed(message: str = "the server does not allow this method on the requested "
                       "resource") -> ApiError:
    return ApiError(405, "MethodNotAllowed", message)


def unsupported_media(ctype: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415, "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}")


def not_acceptable(accepted: list[str]) -> ApiError:
    return ApiError(406, "NotAcceptable",
                    f"only the following media types are accepted: {', '.join(accepted)}")


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def forbidden(group: str, plural: str, name: str, why: str) -> ApiError:
    return ApiError(403, "Forbidden", f'{_gr(group, plural)} "{name}" is forbidden: {why}',
                    _details(group, plural, name))


def too_many_requests(retry_after: int = 1) -> ApiError:
    return ApiError(429, "TooManyRequests", "Too many requests, please try again later.",
                    {"retryAfterSeconds": retry_after}, headers={"Retry-After": str(retry_after)})


def internal(message: str = "an error on the server (\"\") has prevented the request "
             "from succeeding") -> ApiError:
    return ApiError(500, "InternalError", message,
                    {"causes": [{"message": message}], "retryAfterSeconds": 1})


def service_unavailable() -> ApiError:
    return ApiError(503, "ServiceUnavailable", "the server is currently unable to handle the "
                    "request", {"retryAfterSeconds": 1}, headers={"Retry-After": "1"})


def timeout(message: str, retry_after: int = 1) -> ApiError:
    return ApiError(504, "Timeout", message, {"retryAfterSeconds": retry_after})


def too_large_rv() -> ApiError:
    return ApiError(504, "Timeout", "Timeout: Too large resource version",
                    {"causes": [{"reason": "ResourceVersionTooLarge",
                                 "message": "Too large resource version"}],
                     "retryAfterSeconds": 1})


def for_code(code: int) -> ApiError:
    """An injected failure with the body the apiserver sends for that code."""
    if code == 429:
        return too_many_requests()
    if code == 503:
        return service_unavailable()
    if code == 504:
        return timeout("the server was unable to return a response in the time allotted")
    if code == 500:
        return internal()
    if code == 410:
        return gone("injected")
    if code == 409:
        return ApiError(409, "Conflict", "injected conflict")
    return ApiError(code, "InternalError" if code >= 500 else "BadRequest", f"injected {code}")
