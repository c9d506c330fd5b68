"""The compiled CNI front (ovn_k8s/cni/front.c) against the Python one.

Both are installed as ovn_k8s.cni.install writes them and run as processes, the way
a runtime runs the plugin; the node daemon is a unix socket served by this test,
which records the request and answers (or fails) as told. Calls that touch a node
go through the real daemon on the lab, in tests/functional/test_cni_daemon.py.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ovn_k8s.cmd import cni as cni_cmd
from ovn_k8s.cni import install, spec, wire

FRONTS = ("c", "python")
CONF = {"cniVersion": "0.4.0", "name": "n", "type": install.PLUGIN}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> dict[str, Path]:
    """Each front, installed as minion-init installs it."""
    got = {}
    for front in FRONTS:
        top = tmp_path_factory.mktemp(front)
        install.install(top / "net.d", top / "bin", 1400, front=front)
        got[front] = top / "bin" / install.PLUGIN
    assert got["c"].read_bytes().startswith(b"\x7fELF")
    # No site, no .pth files, no editable-install finder: it loads the site itself
    # when it has work to do.
    assert got["python"].read_text().splitlines()[0] == f"#!{sys.executable} -IS"
    return got


class Daemon:
    """A unix socket that takes one call per connection and answers it with
    ``reply(request)``: byte chunks to send and seconds to pause, or None to drop the
    connection once the request is in."""

    def __init__(self, path: Path, reply: Callable[[bytes], list[bytes | float] | None]) -> None:
        self.path = path
        self.reply = reply
        self.requests: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                request = conn.makefile("rb").read()
                self.requests.append(request)
                for item in self.reply(request) or ():
                    if isinstance(item, float):
                        time.sleep(item)
                    else:
                        conn.sendall(item)

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def daemons(tmp_path) -> Iterator[Callable[..., Daemon]]:
    made: list[Daemon] = []

    def make(path: Path, reply: Callable[[bytes], list[bytes | float] | None]) -> Daemon:
        made.append(Daemon(path, reply))
        return made[-1]

    yield make
    for d in made:
        d.close()


def call_env(tmp_path: Path, command: str = "ADD", **extra: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OVS_RUNDIR": str(tmp_path),
            "CNI_COMMAND": command, "CNI_CONTAINERID": "c" * 64,
            "CNI_NETNS": "/proc/self/ns/net", "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
            **extra}


def run(plugin: Path, env: dict[str, str], stdin: bytes,
        args: tuple[str, ...] = ()) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([str(plugin), *args], input=stdin, env=env, capture_output=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("front", FRONTS)
def test_forwards_the_call_and_prints_the_answer(plugins, daemons, tmp_path, front):
    result = {"cniVersion": "0.4.0", "interfaces": [{"name": "eth0"}], "é": "\u00e9"}
    answer = wire.answer(0, result)
    # The answer in pieces, the wait line on its own: the front must put them together.
    d = daemons(tmp_path / spec.DAEMON_SOCKET_NAME,
                lambda _: [b"wait 3", 0.05, b"0\n", 0.05, answer[:7], 0.05, answer[7:]])
    env = call_env(tmp_path, CNI_ARGS="A=1;B=\u00e9", OTHER="not sent")
    stdin = json.dumps(CONF).encode() + b"\n\0binary\xff"
    proc = run(plugins[front], env, stdin)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == wire.stdout_bytes(result)
    assert d.requests == [wire.encode_request(env, stdin)]
    assert wire.decode_request(d.requests[0]) == (
        {k: v for k, v in env.items() if k.startswith("CNI_")}, stdin)


@pytest.mark.parametrize("front", FRONTS)
def test_passes_on_the_daemons_error_and_exit_status(plugins, daemons, tmp_path, front):
    err = spec.CniError(spec.INVALID_CONFIG, "bad", details="why").to_json("0.4.0")
    daemons(tmp_path / spec.DAEMON_SOCKET_NAME, lambda _: [wire.answer(1, err)])
    proc = run(plugins[front], call_env(tmp_path, "DEL"), json.dumps(CONF).encode())
    assert (proc.returncode, json.loads(proc.stdout)) == (1, err)


@pytest.mark.parametrize("front", FRONTS)
def test_the_config_names_the_socket_as_pythons_json_reads_it(plugins, daemons, tmp_path,
                                                               front):
    default = daemons(tmp_path / spec.DAEMON_SOCKET_NAME, lambda _: [wire.answer(0, None)])
    named = daemons(tmp_path / "named.sock", lambda _: [wire.answer(0, None)])
    other = str(tmp_path / "other.sock")
    path = str(named.path)
    escaped = json.dumps(path).replace("/", "\\/")  # only Python can tell: the C front execs it
    cases = {
        json.dumps({**CONF, "daemonSocket": path}): named,
        '{"daemonSocket" : ' + escaped + ', "cniVersion": "0.4.0"}': named,
        json.dumps({**CONF, "args": {"daemonSocket": other}}): default,  # not top level
        json.dumps({**CONF, "daemonSocket": other})[:-1] + f', "daemonSocket": "{path}"}}': named,
        json.dumps({**CONF, "daemonSocket": ""}): default,
        json.dumps({**CONF, "daemonSocket": 5}): default,
        json.dumps([{"daemonSocket": path}]): default,
        '{"daemonSocket": "' + path + '", ': default,  # not JSON at all
    }
    for conf, daemon in cases.items():
        before = {d: len(d.requests) for d in (default, named)}
        proc = run(plugins[front], call_env(tmp_path, "CHECK"), conf.encode())
        assert proc.returncode == 0, (conf, proc.stdout, proc.stderr)
        got = {d: len(d.requests) - before[d] for d in (default, named)}
        assert got == {default: daemon is default, named: daemon is named}, conf
        assert daemon.requests[-1].endswith(conf.encode())


@pytest.mark.parametrize("front", FRONTS)
def test_without_a_daemon_the_python_plugin_does_the_work(plugins, tmp_path, front):
    """No socket, or a stale one: the call is answered in-process, stdin intact."""
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    for conf in ({**CONF, "daemonSocket": str(stale)}, CONF):
        env = call_env(tmp_path, CNI_NETNS=str(tmp_path / "none"))
        proc = run(plugins[front], env, json.dumps(conf).encode())
        assert proc.returncode == 1, proc.stderr
        doc = json.loads(proc.stdout)
        assert doc["code"] == spec.INVALID_ENVIRONMENT and doc["cniVersion"] == "0.4.0"
        assert str(tmp_path / "none") in doc["msg"] + doc.get("details", "")
    proc = run(plugins[front], {"PATH": "/bin", "CNI_COMMAND": "VERSION"}, b"{}")
    assert (proc.returncode, json.loads(proc.stdout)) == (0, spec.version_info())
    proc = run(plugins[front], {"PATH": "/bin"}, b"", ("--help",))
    assert proc.returncode == 0 and proc.stdout.decode() == cni_cmd.USAGE


@pytest.mark.parametrize("front", FRONTS)
def test_a_dropped_call_is_error_11_naming_the_socket(plugins, daemons, tmp_path, front):
    d = daemons(tmp_path / spec.DAEMON_SOCKET_NAME, lambda _: None)
    # Larger than a pipe holds: the C front replays all of it to Python, which must
    # parse it whole to find the version below.
    stdin = json.dumps({**CONF, "pad": "x" * 300_000}).encode()
    proc = run(plugins[front], call_env(tmp_path), stdin)
    assert d.requests == [wire.encode_request(call_env(tmp_path), stdin)]  # never a second try
    assert proc.returncode == 1, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["code"] == spec.TRY_AGAIN_LATER and doc["cniVersion"] == "0.4.0"
    assert doc["msg"] == f"the node's CNI daemon ({d.path}) did not answer"
    assert doc["details"] == "ValueError: no exit status in the answer (0 bytes)"


@pytest.fixture(scope="module")
def without_python(tmp_path_factory) -> Path:
    """The C front installed from somewhere this host does not have (the node
    DaemonSet writes it from its container into the host's CNI bin directory)."""
    path = tmp_path_factory.mktemp("nopython") / install.PLUGIN
    path.write_bytes(install.compiled_front(python="/nonexistent/bin/python3"))
    path.chmod(0o755)
    return path


def test_c_front_needs_no_python_while_the_daemon_runs(without_python, daemons, tmp_path):
    result = {"cniVersion": "1.0.0", "interfaces": []}
    daemons(tmp_path / spec.DAEMON_SOCKET_NAME, lambda _: [wire.answer(0, result)])
    proc = run(without_python, call_env(tmp_path), json.dumps(CONF).encode())
    assert (proc.returncode, json.loads(proc.stdout)) == (0, result)
    proc = run(without_python, {"CNI_COMMAND": "VERSION"}, b"{}")
    assert (proc.returncode, proc.stdout) == (0, wire.stdout_bytes(spec.version_info()))


def test_c_front_without_daemon_or_python_asks_to_try_again(without_python, daemons,
                                                              tmp_path):
    sock = tmp_path / spec.DAEMON_SOCKET_NAME
    stdin = json.dumps({**CONF, "cniVersion": "0.3.1"}).encode()
    proc = run(without_python, call_env(tmp_path, "DEL"), stdin)
    assert proc.returncode == 1
    assert json.loads(proc.stdout) == {
        "cniVersion": "0.3.1", "code": spec.TRY_AGAIN_LATER,
        "msg": f"no CNI daemon accepts calls on {sock}; and this host cannot run the plugin's "
               "Python (/nonexistent/bin/python3: No such file or directory)"}
    assert b"cannot run /nonexistent/bin/python3" in proc.stderr
    # A daemon that drops the call: said too, and the version falls back as spec's does.
    daemons(sock, lambda _: None)
    proc = run(without_python, call_env(tmp_path), b'{"cniVersion": "9.9", "name": "x\\"}')
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["cniVersion"], doc["code"]) == (1, spec.CURRENT_VERSION, 11)
    assert doc["msg"].startswith(f"the node's CNI daemon ({sock}) did not answer (ValueError: "
                                 "no exit status in the answer (0 bytes)); and this host")
    proc = run(without_python, {}, b"", ("--help",))
    assert (proc.returncode, proc.stdout) == (1, b"")
    assert b"cannot run /nonexistent/bin/python3" in proc.stderr


@pytest.fixture(scope="module")
def quick_c_front(tmp_path_factory) -> Path:
    """The C front with 0.5 s bounds instead of 10 s and 30 s."""
    saved = cni_cmd.CHECK_TIMEOUT, cni_cmd.DAEMON_MARGIN
    cni_cmd.CHECK_TIMEOUT, cni_cmd.DAEMON_MARGIN = 0.5, 0.5
    try:
        data = install.compiled_front()
    finally:
        cni_cmd.CHECK_TIMEOUT, cni_cmd.DAEMON_MARGIN = saved
    path = tmp_path_factory.mktemp("quick") / install.PLUGIN
    path.write_bytes(data)
    path.chmod(0o755)
    return path


def test_c_front_gives_up_on_a_silent_daemon_after_its_bound(quick_c_front, daemons, tmp_path):
    stdin = json.dumps(CONF).encode()
    daemons(tmp_path / spec.DAEMON_SOCKET_NAME, lambda _: [2.0])
    start = time.monotonic()
    proc = run(quick_c_front, call_env(tmp_path), stdin)
    assert 0.5 <= time.monotonic() - start < 1.9
    doc = json.loads(proc.stdout)
    assert (proc.returncode, doc["code"]) == (1, spec.TRY_AGAIN_LATER)
    assert doc["details"] == "TimeoutError: timed out"


def test_c_front_waits_as_long_as_the_daemon_says(quick_c_front, daemons, tmp_path):
    # Answered 1.2 s after "wait 1": past the 0.5 s check bound, within 1 s + margin.
    daemons(tmp_path / spec.DAEMON_SOCKET_NAME,
            lambda _: [wire.wait_line(1), 1.2, wire.answer(0, None)])
    proc = run(quick_c_front, call_env(tmp_path), json.dumps(CONF).encode())
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, b"", b"")


def test_c_front_builds_without_warnings_and_the_same_each_time(caplog):
    with caplog.at_level(logging.WARNING, logger=install.__name__):
        first = install.compiled_front()
    assert caplog.records == []
    assert first.startswith(b"\x7fELF")
    assert install.compiled_front() == first


def test_install_is_idempotent_and_picks_the_front(tmp_path, monkeypatch):
    conf_dir, bin_dir = tmp_path / "net.d", tmp_path / "bin"
    assert install.install(conf_dir, bin_dir, 1400) == [conf_dir / install.CONFLIST,
                                                         bin_dir / install.PLUGIN]
    assert (bin_dir / install.PLUGIN).read_bytes().startswith(b"\x7fELF")  # auto, cc here
    assert install.install(conf_dir, bin_dir, 1400) == []
    assert install.install(conf_dir, bin_dir, 1400, front="python") == [bin_dir / install.PLUGIN]
    assert (bin_dir / install.PLUGIN).read_bytes().startswith(b"#!")
    # No compiler: auto settles for the Python front; asking for C fails, writing nothing.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert install.install(conf_dir, bin_dir, 1400) == []
    with pytest.raises(install.InstallError, match="no C compiler"):
        install.install(tmp_path / "c" / "net.d", tmp_path / "c" / "bin", 1400, front="c")
    assert not (tmp_path / "c").exists()
    with pytest.raises(install.InstallError, match="unknown CNI front"):
        install.install(conf_dir, bin_dir, 1400, front="go")
