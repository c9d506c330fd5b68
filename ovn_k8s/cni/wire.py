"""The byte protocol between the plugin front (ovn_k8s.cmd.cni) and the node daemon.

Standard library only, and nothing heavier than ``os``: the front imports this on
every pod's call. No JSON on the front's side (importing ``json`` costs ~20 ms
here, through ``re`` and ``enum``): the request is ``CNI1\\0``, the call's ``CNI_*``
variables as ``NAME=VALUE\\0`` each, an empty field, then the config exactly as it
came on stdin. The daemon answers ``wait SECONDS\\n`` once it has checked the call
(how long the work may take: the config's timeouts), then ``exit STATUS\\n`` and the
bytes for the front's stdout.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

MAGIC = b"CNI1"


def encode_request(environ: Mapping[str, str], stdin: bytes) -> bytes:
    fields = [MAGIC] + [f"{k}={v}".encode("utf-8", "surrogateescape")
                        for k, v in environ.items() if k.startswith("CNI_")]
    return b"\0".join(fields) + b"\0\0" + stdin


def decode_request(data: bytes) -> tuple[dict[str, str], bytes]:
    """(CNI_* variables, stdin); ValueError if ``data`` is not a request."""
    if not data.startswith(MAGIC + b"\0"):
        raise ValueError("not a CNI1 request")
    env: dict[str, str] = {}
    pos = len(MAGIC) + 1
    while True:
        end = data.find(b"\0", pos)
        if end < 0:
            raise ValueError("request ends inside its variables")
        if end == pos:
            return env, data[end + 1:]
        name, sep, value = data[pos:end].decode("utf-8", "surrogateescape").partition("=")
        if not sep or not name.startswith("CNI_"):
            raise ValueError(f"bad variable {name!r} in the request")
        env[name] = value
        pos = end + 1


def wait_line(seconds: float) -> bytes:
    return f"wait {seconds:g}\n".encode()


def answer(status: int, doc: dict[str, Any] | None) -> bytes:
    """The answer's tail: exit status, then what the front prints (the JSON document)."""
    return f"exit {status}\n".encode() + stdout_bytes(doc)


def stdout_bytes(doc: dict[str, Any] | None) -> bytes:
    """What the plugin prints for a result or error document (nothing for None)."""
    if doc is None:
        return b""
    import json  # noqa: PLC0415

    return (json.dumps(doc) + "\n").encode()
