import netaddr
import pytest

from ovn_k8s import ipam, topology


def test_mac_from_ip_is_0a58_plus_address_bytes():
    assert ipam.mac_from_ip("10.128.1.5") == "0a:58:0a:80:01:05"
    assert ipam.mac_from_ip(netaddr.IPAddress("192.168.255.2")) == "0a:58:c0:a8:ff:02"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10.128.0.0", "no prefix length"),
        ("10.128.0.1/14", "host bits set; did you mean 10.128.0.0/14"),
        ("10.300.0.0/16", "is not a CIDR"),
        ("fd00::/64", "is not IPv4"),
        ("", "is not a CIDR"),
        ("10.0.0.0/33", "is not a CIDR"),
    ],
)
def test_bad_networks_are_named(text, message):
    with pytest.raises(ipam.AddressError, match="--cluster-ip-subnet") as err:
        ipam.parse_network(text, "--cluster-ip-subnet")
    assert message in str(err.value)


def test_interface_address_needs_host_part():
    addr = ipam.parse_interface_address("10.33.74.138/24", "--physical-ip")
    assert (str(addr.ip), addr.prefixlen) == ("10.33.74.138", 24)
    for bad in ("10.33.74.0/24", "10.33.74.255/24", "10.33.74.138", "nonsense/24"):
        with pytest.raises(ipam.AddressError, match="--physical-ip"):
            ipam.parse_interface_address(bad, "--physical-ip")


def test_overlaps_refused():
    with pytest.raises(ipam.AddressError, match="overlaps"):
        topology.validate_subnets(["10.128.0.0/14", "10.129.0.0/16"], "--cluster-ip-subnet")
    with pytest.raises(ipam.AddressError, match="join subnet"):
        topology.ClusterSpec(cluster_subnets=(netaddr.IPNetwork("100.64.0.0/10"),))


def test_nth_host_bounds():
    net = netaddr.IPNetwork("10.1.2.0/24")
    assert str(ipam.nth_host(net, 1)) == "10.1.2.1"
    assert str(ipam.nth_host(net, 254)) == "10.1.2.254"
    with pytest.raises(ipam.AddressError):
        ipam.nth_host(net, 255)


@pytest.mark.parametrize("name", ["", "Node1", "node_1", "-node", "node-", "a" * 254, "no de"])
def test_node_names(name):
    with pytest.raises(ValueError, match="not a valid Kubernetes node name"):
        topology.check_node_name(name)


def test_good_node_names():
    for name in ("kube-master", "node1.example.com", "a", "k8s-minion-2"):
        assert topology.check_node_name(name) == name


def test_subnet_allocator_lowest_free_and_reserve():
    alloc = ipam.SubnetAllocator([netaddr.IPNetwork("10.128.0.0/22")], 24)
    alloc.reserve(netaddr.IPNetwork("10.128.1.0/24"))  # from an annotation at start
    assert alloc.allocate() == netaddr.IPNetwork("10.128.0.0/24")
    assert alloc.allocate() == netaddr.IPNetwork("10.128.2.0/24")
    alloc.release(netaddr.IPNetwork("10.128.0.0/24"))
    assert alloc.allocate() == netaddr.IPNetwork("10.128.0.0/24")
    assert alloc.allocate() == netaddr.IPNetwork("10.128.3.0/24")
    with pytest.raises(ipam.ExhaustedError, match=r"no free /24 left in 10\.128\.0\.0/22"):
        alloc.allocate()


def test_subnet_allocator_larger_reservation_blocks_all_its_parts():
    alloc = ipam.SubnetAllocator([netaddr.IPNetwork("10.128.0.0/22")], 24)
    assert alloc.reserve(netaddr.IPNetwork("10.128.0.0/23"))  # minion-init given a /23
    assert alloc.allocate() == netaddr.IPNetwork("10.128.2.0/24")
    # Another node claiming part of it is a conflict, and marks nothing.
    assert not alloc.reserve(netaddr.IPNetwork("10.128.1.0/24"))
    alloc.release(netaddr.IPNetwork("10.128.0.0/23"))
    assert alloc.reserve(netaddr.IPNetwork("10.128.1.0/24"))
    with pytest.raises(ipam.AddressError, match="not inside the cluster subnet"):
        alloc.reserve(netaddr.IPNetwork("10.200.0.0/24"))
    with pytest.raises(ipam.AddressError, match="host prefix /31"):
        ipam.SubnetAllocator([netaddr.IPNetwork("10.128.0.0/22")], 31)


def test_address_pool_skips_gateway_mgmt_and_broadcast():
    pool = ipam.AddressPool(netaddr.IPNetwork("10.128.1.0/29"))
    got = [str(pool.allocate()) for _ in range(4)]
    assert got == ["10.128.1.3", "10.128.1.4", "10.128.1.5", "10.128.1.6"]
    with pytest.raises(ipam.ExhaustedError, match=r"10\.128\.1\.0/29"):
        pool.allocate()
    pool.release(netaddr.IPAddress("10.128.1.4"))
    assert str(pool.allocate()) == "10.128.1.4"


def test_address_pool_reserve_detects_duplicates_and_is_honoured():
    pool = ipam.AddressPool(netaddr.IPNetwork("10.128.1.0/24"))
    assert pool.reserve(netaddr.IPAddress("10.128.1.3"))
    assert not pool.reserve(netaddr.IPAddress("10.128.1.3"))
    assert str(pool.allocate()) == "10.128.1.4"
    assert netaddr.IPAddress("10.128.1.3") in pool and len(pool) == 2
    with pytest.raises(ipam.AddressError, match="not in node subnet"):
        pool.reserve(netaddr.IPAddress("10.128.2.3"))
