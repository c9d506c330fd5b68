"""The OVSDB facade against the lab's real OVN NB, SB and node Open_vSwitch databases."""

import time

import netaddr
import pytest

from ovn_k8s import ovsdb, translate
from ovn_k8s.sandbox.lab import read_db_log

pytestmark = pytest.mark.lab


@pytest.fixture
def nb(lab):
    db = ovsdb.connect_nb(lab.nb_remote, timeout=10)
    yield db
    db.close()


def _names(db, table):
    return sorted(row.name for row in db.rows(table))


def test_switch_ports_and_lb_in_one_transaction(nb):
    api = nb.api
    with nb.transaction() as txn:
        # ls_lb_add cannot mutate a switch inserted in the same transaction (the IDL
        # row has no columns yet), so the new switch takes the new LB's command as a
        # reference: ovsdbapp resolves it to the row's UUID at commit.
        lb = txn.add(api.lb_add("facade-lb", "10.96.0.10:80", ["10.1.0.5:8080", "10.1.0.6:8080"]))
        txn.add(api.ls_add("facade-sw", load_balancer=[lb],
                           external_ids={"k8s.ovn.org/owner-type": "test"}))
        txn.add(api.lsp_add("facade-sw", "facade-p1", addresses=["0a:58:0a:01:00:05 10.1.0.5"]))
        txn.add(api.lsp_add("facade-sw", "facade-p2", addresses=["0a:58:0a:01:00:06 10.1.0.6"]))

    # Read back through a second, independent connection: the write really reached
    # the server, it is not only in our IDL cache.
    other = ovsdb.NbDb(nb.remote, timeout=10)
    try:
        sw = other.execute(other.api.ls_get("facade-sw"))[0]
        assert sorted(p.name for p in sw.ports) == ["facade-p1", "facade-p2"]
        assert sw.external_ids["k8s.ovn.org/owner-type"] == "test"
        assert [lb.name for lb in sw.load_balancer] == ["facade-lb"]
        assert sw.load_balancer[0].vips == {"10.96.0.10:80": "10.1.0.5:8080,10.1.0.6:8080"}
    finally:
        other.close()

    nb.execute(api.ls_del("facade-sw"), api.lb_del("facade-lb"))
    assert "facade-sw" not in _names(nb, "Logical_Switch")
    assert "facade-lb" not in _names(nb, "Load_Balancer")
    assert not [p for p in nb.rows("Logical_Switch_Port") if p.name.startswith("facade-")]


def test_map_get_reads_some_keys_as_row_attribute_would(nb):
    vips = {f"10.96.0.{i}:80": f"10.1.0.{i}:8080" for i in range(1, 200)}
    vips["[fd00::1]:80"] = "[fd00:1::5]:8080,[fd00:1::6]:8080"
    nb.execute(nb.api.db_create("Load_Balancer", name="map-get-lb", protocol="tcp",
                                vips=vips))
    try:
        row = next(r for r in nb.rows("Load_Balancer") if r.name == "map-get-lb")
        keys = ["10.96.0.7:80", "[fd00::1]:80", "10.96.0.250:80", ""]
        assert nb.map_get(row, "vips", keys) == {k: v for k, v in row.vips.items() if k in keys}
        assert nb.map_get(row, "vips", keys) == {"10.96.0.7:80": "10.1.0.7:8080",
                                                 "[fd00::1]:80": vips["[fd00::1]:80"]}
        nb.execute(nb.api.db_remove("Load_Balancer", "map-get-lb", "vips", "10.96.0.7:80"))
        assert nb.map_get(row, "vips", keys) == {"[fd00::1]:80": vips["[fd00::1]:80"]}
    finally:
        nb.execute(nb.api.lb_del("map-get-lb", if_exists=True))


def test_failed_transaction_changes_nothing(nb):
    with pytest.raises(ovsdb.OvsdbTransactionError, match="no-such-switch"):
        nb.execute(nb.api.ls_add("atomic-sw"), nb.api.lsp_add("no-such-switch", "p"))
    assert "atomic-sw" not in _names(nb, "Logical_Switch")


def test_shared_connection_per_remote(lab, nb):
    again = ovsdb.connect_nb(lab.nb_remote)
    try:
        assert again is nb
        with pytest.raises(ValueError, match="already open without tables"):
            ovsdb.connect_nb(lab.nb_remote, tables=["Logical_Switch", "DNS"])
    finally:
        again.close()
    # Still usable: the first close only dropped a reference.
    assert nb.execute(nb.api.ls_list())[0] is not None


def test_reconnects_after_nb_restart(lab, nb):
    nb.execute(nb.api.ls_add("before-restart"))
    lab.restart_nb()
    start = time.monotonic()
    nb.execute(nb.api.ls_add("after-restart"))
    assert time.monotonic() - start < nb.timeout
    assert {"before-restart", "after-restart"} <= set(_names(nb, "Logical_Switch"))
    nb.execute(nb.api.ls_del("before-restart"), nb.api.ls_del("after-restart"))


def test_raw_transact_writes_atomically_and_survives_a_restart(lab, nb):
    """NbDb.transact: bulk pod ports beside the IDL; a failed transaction writes
    nothing, and the raw connection comes back after the server restarts."""
    nb.execute(nb.api.ls_add("raw-sw"))
    ports = [translate.PodPort("ns", f"raw-{i}", f"uid-{i}", "raw-sw",
                               translate.pod_network_for(netaddr.IPAddress(f"10.9.0.{i + 2}"),
                                                         netaddr.IPNetwork("10.9.0.0/24")))
             for i in range(3)]
    switches = translate.lookup(nb, switches=["raw-sw"])[1]
    nb.transact(translate.new_pod_ports_ops(ports[:2], switches))
    assert nb.wait_replica(lambda: "ns_raw-1" in translate.lookup(nb, ["ns_raw-1"])[0], 5)
    sw = nb.api.lookup("Logical_Switch", "raw-sw")
    assert sorted(p.name for p in sw.ports) == ["ns_raw-0", "ns_raw-1"]
    rows = translate.lookup(nb, [p.lsp for p in ports])[0]
    assert all(translate.port_is_current(p, rows.get(p.lsp)) for p in ports[:2])
    assert "ns_raw-2" not in rows

    # A name that exists already: the whole transaction fails, ns_raw-2 is not made.
    with pytest.raises(ovsdb.OvsdbTransactionError, match="constraint violation"):
        nb.transact(translate.new_pod_ports_ops(ports[1:], switches))
    # A switch deleted after the ops were built: no port is left without a switch.
    ops = translate.new_pod_ports_ops(ports[2:], switches)
    nb.execute(nb.api.ls_add("raw-sw2"))
    nb.execute(nb.api.ls_del("raw-sw"))
    with pytest.raises(ovsdb.OvsdbTransactionError, match="timed out"):
        nb.transact(ops)
    nb.execute(nb.api.ls_list())
    assert not [p for p in nb.rows("Logical_Switch_Port") if p.name.startswith("ns_raw-")]

    lab.restart_nb()
    nb.execute(nb.api.ls_add("raw-sw3"))  # the IDL is back: the switch row to write to
    moved = translate.PodPort("ns", "raw-9", "uid-9", "raw-sw3", ports[0].network)
    nb.transact(translate.new_pod_ports_ops(
        [moved], translate.lookup(nb, switches=["raw-sw3"])[1]))
    assert nb.wait_replica(lambda: "ns_raw-9" in translate.lookup(nb, ["ns_raw-9"])[0], 5)
    nb.execute(nb.api.ls_del("raw-sw2"), nb.api.ls_del("raw-sw3"))


def test_new_pod_ports_are_not_written_again_by_northd(lab, nb):
    """ovn-northd sets `up` on every port whose value differs from what it computes:
    ports inserted with up=false (unclaimed) cost it no second NB transaction."""
    nb.execute(nb.api.ls_add("up-sw"))
    switches = translate.lookup(nb, switches=["up-sw"])[1]
    ports = [translate.PodPort("ns", f"up-{i}", f"uid-{i}", "up-sw",
                               translate.pod_network_for(netaddr.IPAddress(f"10.8.0.{i + 2}"),
                                                         netaddr.IPNetwork("10.8.0.0/24")))
             for i in range(3)]
    lab.sync()
    offset = (lab.central_dir / "nb.db").stat().st_size
    nb.transact(translate.new_pod_ports_ops(ports, switches))
    lab.sync()  # northd has processed them (and the nb_cfg bump is a record of its own)
    time.sleep(0.5)
    touched = [rows for record in read_db_log(lab.central_dir / "nb.db", offset)
               for table, rows in record.items() if table == "Logical_Switch_Port"]
    assert len(touched) == 1, touched  # ours, and nothing after it
    assert lab.nbctl("get", "Logical_Switch_Port", "ns_up-0", "up").strip() == "false"
    nb.execute(nb.api.ls_del("up-sw"))


def test_sb_and_node_ovs(lab):
    sb = ovsdb.connect_sb(lab.sb_remote)
    try:
        chassis = {c.name for c in sb.rows("Chassis")}
        assert {n.name for n in lab.nodes} <= chassis
    finally:
        sb.close()
    node = lab.nodes[0]
    ovs = ovsdb.connect_ovs(node.ovs_remote)
    try:
        bridges = ovs.execute(ovs.api.list_br())[0]
        assert "br-int" in bridges
        ovs.execute(ovs.api.add_br("facade-br", datapath_type="netdev"))
        assert "facade-br" in ovs.execute(ovs.api.list_br())[0]
        ovs.execute(ovs.api.del_br("facade-br"))
        assert "facade-br" not in ovs.execute(ovs.api.list_br())[0]
    finally:
        ovs.close()
