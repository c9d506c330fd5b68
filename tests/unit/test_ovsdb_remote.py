"""Remote parsing and connect failures: no daemon needed."""

import time

import pytest

from ovn_k8s import ovsdb


@pytest.mark.parametrize(
    ("remote", "parts"),
    [
        ("unix:/run/ovn/ovnnb_db.sock", ["unix:/run/ovn/ovnnb_db.sock"]),
        ("tcp:10.0.0.1:6641", ["tcp:10.0.0.1:6641"]),
        (
            "ssl:10.0.0.1:6641, ssl:10.0.0.2:6641,ssl:10.0.0.3:6641",
            ["ssl:10.0.0.1:6641", "ssl:10.0.0.2:6641", "ssl:10.0.0.3:6641"],
        ),
        ("tcp:[fd00::1]:6641", ["tcp:[fd00::1]:6641"]),
    ],
)
def test_valid_remotes(remote, parts):
    assert ovsdb.validate_remote(remote) == parts


@pytest.mark.parametrize(
    "remote",
    ["", " , ", "10.0.0.1:6641", "tcp:10.0.0.1", "tcp:10.0.0.1:notaport", "tcp::6641",
     "ssl:10.0.0.1:70000", "unix:/a.sock,http://x"],
)
def test_invalid_remotes(remote):
    with pytest.raises(ValueError, match="OVSDB remote"):
        ovsdb.validate_remote(remote)


def test_ssl_remote_needs_files():
    with pytest.raises(ValueError, match="private key"):
        ovsdb.NbDb("ssl:127.0.0.1:6641", timeout=1)


def test_missing_socket_fails_clearly_within_timeout(tmp_path):
    remote = f"unix:{tmp_path}/ovnnb_db.sock"
    start = time.monotonic()
    with pytest.raises(ovsdb.OvsdbConnectError) as err:
        ovsdb.connect_nb(remote, timeout=1.5)
    elapsed = time.monotonic() - start
    assert remote in str(err.value)
    assert "OVN_Northbound" in str(err.value)
    assert elapsed < 1.5 + 1.0


def test_refused_tcp_fails_clearly_within_timeout():
    # Port 9 (discard) on loopback: nothing listens, so the kernel refuses at once
    # and the facade must keep retrying until its deadline, then name the remote.
    start = time.monotonic()
    with pytest.raises(ovsdb.OvsdbConnectError, match=r"tcp:127\.0\.0\.1:9\b"):
        ovsdb.connect_sb("tcp:127.0.0.1:9", timeout=1.0)
    elapsed = time.monotonic() - start
    assert 0.5 < elapsed < 2.0
