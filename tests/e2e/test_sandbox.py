"""The sandbox as a user drives it: `tools/sandbox [--dir D] up|status|down`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config
from pyroute2 import netns

from ovn_k8s import ovsdb
from ovn_k8s.sandbox.lab import Lab, lab_prefix

TOP = Path(__file__).resolve().parents[2]
SANDBOX = TOP / "tools" / "sandbox"


def sandbox(directory: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(SANDBOX), "--dir", str(directory), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)


def processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and int(entry) != os.getpid():
            pids.append(int(entry))
    return pids


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's zombie may linger: init here does not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


@pytest.fixture
def sandbox_dir() -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("the sandbox needs root (network namespaces and OVS daemons)")
    base = Path(tempfile.mkdtemp(prefix="ovn-k8s-e2e-"))
    directory = base / "sandbox"
    yield directory
    # Whatever the test did, leave nothing running.
    Lab.load(directory).down()
    for pid in processes_naming(str(directory)):
        os.kill(pid, signal.SIGKILL)
    shutil.rmtree(base, ignore_errors=True)


def test_up_status_down(sandbox_dir: Path) -> None:
    up = sandbox(sandbox_dir, "up")
    assert up.returncode == 0, up.stderr
    assert "Kubernetes API (emulator): http://127.0.0.1:" in up.stdout
    prefix = lab_prefix(sandbox_dir)

    # What `up` printed is reachable: the API emulator through the kubeconfig with
    # the official client, OVN NB through the facade, both chassis registered in SB.
    api = config.new_client_from_config(str(sandbox_dir / "kubeconfig"))
    try:
        names = [ns.metadata.name for ns in client.CoreV1Api(api).list_namespace().items]
        assert "default" in names
    finally:
        api.close()
    lab = Lab.load(sandbox_dir)
    sb = ovsdb.SbDb(lab.sb_remote, timeout=10)
    try:
        assert sorted(c.name for c in sb.rows("Chassis")) == ["node1", "node2"]
    finally:
        sb.close()
    assert (sandbox_dir / "kubeconfig").stat().st_mode & 0o077 == 0, "token readable by others"

    status = sandbox(sandbox_dir, "status")
    assert status.returncode == 0, status.stdout + status.stderr
    assert "all daemons running" in status.stdout

    # A dead daemon shows in status, by node and name, with a failing exit code.
    controller = lab.node("node1").daemons["ovn-controller"]
    os.kill(controller.read_pid(), signal.SIGKILL)
    status = sandbox(sandbox_dir, "status")
    assert status.returncode == 1
    assert "node1/ovn-controller" in status.stdout

    down = sandbox(sandbox_dir, "down")
    assert down.returncode == 0, down.stderr
    assert not sandbox_dir.exists()
    assert processes_naming(str(sandbox_dir)) == []
    assert [ns for ns in netns.listnetns() if ns.startswith(prefix)] == []

    # Stopping twice is fine; status of nothing says so and fails.
    again = sandbox(sandbox_dir, "down")
    assert again.returncode == 0 and "nothing to stop" in again.stdout
    gone = sandbox(sandbox_dir, "status")
    assert gone.returncode == 1 and "no sandbox" in gone.stdout


def test_up_twice_replaces_the_first(sandbox_dir: Path) -> None:
    first = sandbox(sandbox_dir, "up", "--nodes", "1")
    assert first.returncode == 0, first.stderr
    old_apiserver = int((sandbox_dir / "apiserver.pid").read_text())

    second = sandbox(sandbox_dir, "up", "--nodes", "1")
    assert second.returncode == 0, second.stderr
    assert int((sandbox_dir / "apiserver.pid").read_text()) != old_apiserver
    assert not running(old_apiserver), "first API emulator left running"
    assert sandbox(sandbox_dir, "status").returncode == 0


def test_bad_flags_change_nothing(sandbox_dir: Path) -> None:
    bad = sandbox(sandbox_dir, "up", "--nodes", "0")
    assert bad.returncode == 2
    assert "--nodes must be between 1 and 16" in bad.stderr
    assert not sandbox_dir.exists()
