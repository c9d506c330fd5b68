"""The emulator's HTTP/1.1 framing: reply heads, pipelined and split requests."""

import json
import socket

from ovn_k8s.sandbox.apiserver.rest import Response
from ovn_k8s.sandbox.apiserver.server import _head


def test_reply_heads():
    assert _head(Response(200, b"abc"), True) == (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Cache-Control: no-cache, private\r\nContent-Length: 3\r\n\r\n")
    # Built once per status and type: a second reply of another length must not reuse it.
    assert _head(Response(200, b"abcdef"), True).endswith(b"Content-Length: 6\r\n\r\n")
    assert _head(Response(429, b"{}", headers={"Retry-After": "1"}), False) == (
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        b"Cache-Control: no-cache, private\r\nContent-Length: 2\r\nRetry-After: 1\r\n"
        b"Connection: close\r\n\r\n")
    assert _head(Response(599, b"", "text/plain"), True).startswith(
        b"HTTP/1.1 599 Unknown\r\nContent-Type: text/plain\r\n")


def _read_replies(sock: socket.socket, n: int) -> list[dict]:
    buf = b""
    out = []
    while len(out) < n:
        data = sock.recv(65536)
        assert data
        buf += data
        while True:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = buf[:end].decode()
            length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
            if len(buf) < end + 4 + length:
                break
            assert head.startswith("HTTP/1.1 200 ")
            out.append(json.loads(buf[end + 4:end + 4 + length]))
            buf = buf[end + 4 + length:]
    return out


def test_pipelined_and_split_requests(srv):
    # Reads land in one buffer shared by all connections; each connection must still get
    # exactly its own bytes, whether several requests come in one read or one in pieces.
    auth = f"Authorization: Bearer {srv.token}\r\n"
    req = (f"GET /api/v1/namespaces/default HTTP/1.1\r\nHost: x\r\n{auth}\r\n").encode()
    a = socket.create_connection(("127.0.0.1", srv.port))
    b = socket.create_connection(("127.0.0.1", srv.port))
    try:
        a.sendall(req * 5)
        for i in range(0, len(req), 7):
            b.sendall(req[i:i + 7])
        b.sendall(b"GET /api/v1/namespaces/kube-system HTTP/1.1\r\n" + auth.encode() + b"\r\n")
        assert [r["metadata"]["name"] for r in _read_replies(a, 5)] == ["default"] * 5
        assert [r["metadata"]["name"] for r in _read_replies(b, 2)] == [
            "default", "kube-system"]
    finally:
        a.close()
        b.close()
