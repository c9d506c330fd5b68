"""`ovn-k8s-watcher --overlay --cluster-ip-subnet=CIDR [--nb REMOTE] [daemon flags]`.

Keeps OVN in step with the cluster's nodes and pods (see ovn_k8s.watcher).
`ovs-appctl -t ovn-k8s-watcher status|exit|vlog/set ...` talks to it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ovn_k8s import config, daemon, ipam, ovsdb, topology
from ovn_k8s.host import ovs as host_ovs

LOG = logging.getLogger("ovn_k8s.watcher")
NAME = "ovn-k8s-watcher"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n")[0])
    p.add_argument("--overlay", action="store_true",
                   help="overlay mode (the lineage's flag; the only mode there is)")
    p.add_argument("--cluster-ip-subnet",
                   help="the pods' network(s), comma-separated (or cluster_ip_subnet in the "
                        "config file)")
    p.add_argument("--host-prefix", type=int,
                   help="prefix length of each node's subnet (default 24)")
    p.add_argument("--join-subnet", help="switch between routers (default 100.64.0.0/16)")
    p.add_argument("--sync-mode", choices=("repair", "log"),
                   help="at start, repair drift (default) or only report it")
    p.add_argument("--nb", help="OVN NB remote (default: external_ids:ovn-nb)")
    p.add_argument("--ovs", help="local Open_vSwitch DB for external_ids "
                                 "(default: $OVS_RUNDIR/db.sock; skipped when unreachable)")
    p.add_argument("--kubeconfig", help="Kubernetes access (default: in-cluster, then "
                                        "external_ids k8s-api-server/-token/-ca-certificate)")
    p.add_argument("--config-file", type=Path,
                   help=f"settings file (default {config.DEFAULT_CONFIG_FILE} if present)")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for NB and for the first lists (default 60)")
    daemon.add_args(p)
    return p


def _external_ids(remote: str | None) -> dict[str, str]:
    """The lineage's node settings, when this host has an Open_vSwitch DB at all."""
    remote = remote or host_ovs.default_remote()
    if remote.startswith("unix:") and not Path(remote[5:]).exists():
        return {}
    ovs = ovsdb.connect_ovs(remote, timeout=5)
    try:
        return host_ovs.external_ids(ovs)
    finally:
        ovs.close()


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        # Everything that can be refused is refused before forking, on the terminal.
        settings = config.Settings(vars(args), config.read_config_file(args.config_file))
        subnets = settings.require("cluster_ip_subnet")
        cluster = topology.ClusterSpec(
            cluster_subnets=topology.validate_subnets(subnets.split(","), "--cluster-ip-subnet"),
            join_subnet=ipam.parse_network(settings.require("join_subnet"), "--join-subnet"),
        )
        host_prefix = settings.integer("host_prefix", 1, 30)
        ipam.SubnetAllocator(cluster.cluster_subnets, host_prefix)  # checks the prefix fits
        sync_mode = settings.get("sync_mode") or "repair"
        if sync_mode not in ("repair", "log"):
            raise config.ConfigError(f"sync_mode {sync_mode!r}: use repair or log")
    except (ValueError, config.ConfigError) as e:
        sys.exit(f"{NAME}: error: {e}")

    d = daemon.Daemon(args, NAME)
    d.start()
    # Imported after forking: the client is heavy, and threads must not predate fork.
    from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
    from ovn_k8s.watcher import Watcher  # noqa: PLC0415

    try:
        settings.external_ids = _external_ids(args.ovs)
        nb = ovsdb.connect_nb(settings.require("nb"), timeout=args.timeout)
        api = kube_client.api_client(settings, kubeconfig=args.kubeconfig, pool_maxsize=32)
        watcher = Watcher(api, nb, cluster, host_prefix=host_prefix, sync_mode=sync_mode)
        watcher.start(timeout=args.timeout)
        daemon.release_free_memory()  # the start-up's lists and NB dump are garbage now
    except (ValueError, config.ConfigError, ovsdb.OvsdbError, TimeoutError, OSError) as e:
        LOG.error("%s", e)
        sys.exit(f"{NAME}: error: {e}")

    d.register("status", "", 0, 0,
               lambda conn, _argv: conn.reply(json.dumps(watcher.status(), sort_keys=True,
                                                         default=str)))
    d.ready()
    d.wait()
    LOG.info("exiting")
    watcher.stop()
    nb.close()
