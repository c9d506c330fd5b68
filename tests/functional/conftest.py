"""Fixtures for tests against the real OVS/OVN lab (ovn_k8s.sandbox.lab).

Every lab made here lives under one base directory, ``$TMPDIR/ovn-k8s-functional``,
and records the pid (and start time) of the session that made it. A session first
tears down labs whose session is gone (a run killed with SIGKILL, a crashed CI job),
so leftovers never pile up or collide with a new run.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ovn_k8s.sandbox.lab import Lab

LOG = logging.getLogger(__name__)

LAB_BASE = Path(tempfile.gettempdir()) / "ovn-k8s-functional"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("lab tests need root (network namespaces and OVS daemons)")


def sweep_stale_labs(base: Path = LAB_BASE) -> list[Path]:
    """Tear down labs under ``base`` whose owning test session no longer runs."""
    swept = []
    if not base.is_dir():
        return swept
    for d in sorted(base.iterdir()):
        if not d.is_dir():
            continue
        lab = Lab.load(d)
        if lab.owner_alive():
            continue  # another session, still running, uses it
        LOG.warning("tearing down stale lab %s", d)
        lab.down()
        shutil.rmtree(d, ignore_errors=True)
        swept.append(d)
    return swept


def new_lab_dir(name: str = "lab") -> Path:
    LAB_BASE.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=LAB_BASE))


@pytest.fixture(scope="session")
def lab() -> Iterator[Lab]:
    """OVN central + 2 nodes for the whole session; always torn down at the end."""
    _need_root()
    sweep_stale_labs()
    d = new_lab_dir("session")
    the_lab = Lab(d, nodes=2)
    try:
        the_lab.up()
        yield the_lab
    finally:
        the_lab.down()
        shutil.rmtree(d, ignore_errors=True)
        with contextlib.suppress(OSError):
            LAB_BASE.rmdir()  # only when no other session's lab is in it


@pytest.fixture
def lab_dir() -> Iterator[Path]:
    """A fresh, not yet existing directory under the lab base for a test's own lab.

    The lab creates it (so its ``down`` removes it). Whatever the test leaves up there
    is swept at teardown.
    """
    _need_root()
    d = new_lab_dir("test")
    d.rmdir()
    try:
        yield d
    finally:
        if d.exists():
            Lab.load(d).down()
            shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def make_pod(lab: Lab) -> Iterator[Callable[..., object]]:
    """``make_pod(node, name, ip, mac, **kw)`` on the session lab; pods go at teardown."""
    made: list[str] = []

    def make(*args: object, **kwargs: object) -> object:
        pod = lab.add_pod(*args, **kwargs)  # type: ignore[arg-type]
        made.append(pod.name)
        return pod

    yield make
    for name in made:
        lab.del_pod(name)
