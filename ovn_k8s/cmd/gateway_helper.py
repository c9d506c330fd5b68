"""`ovn-k8s-gateway-helper --physical-bridge=BR --physical-interface=NIC [daemon flags]`.

Keeps the flows that let the host and OVN's gateway router share NIC on BR
(see ovn_k8s.host.gateway_flows). NodePorts follow the cluster's services when
Kubernetes settings are configured.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from ovn_k8s import config, daemon, ovsdb
from ovn_k8s.host import ovs as host_ovs
from ovn_k8s.host.gateway_helper import GatewayHelper, service_nodeports
from ovn_k8s.host.links import HostError, link_mac

LOG = logging.getLogger("ovn_k8s.gateway_helper")
NAME = "ovn-k8s-gateway-helper"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=NAME, description=__doc__.split("\n")[0])
    parser.add_argument("--physical-bridge", required=True,
                        help="the OVS bridge holding the NIC (made by nics-to-bridge)")
    parser.add_argument("--physical-interface", required=True, help="the NIC in that bridge")
    parser.add_argument("--ovs", help="local Open_vSwitch DB (default: $OVS_RUNDIR/db.sock)")
    parser.add_argument("--resync-interval", type=float, default=30.0,
                        help="seconds between full re-applications of the flows (default 30)")
    parser.add_argument("--timeout", type=float, default=30.0,
                        help="seconds to wait for the database and the service list at start "
                             "(default 30)")
    parser.add_argument("--kubeconfig", help="Kubernetes access for NodePorts (default: "
                                             "in-cluster, then Open_vSwitch external_ids)")
    parser.add_argument("--config-file", type=Path,
                        help=f"settings file (default {config.DEFAULT_CONFIG_FILE} if present)")
    daemon.add_args(parser)
    return parser


def _watch_services(settings: config.Settings, kubeconfig: str | None,
                    helper: GatewayHelper) -> Any:
    """A started services reflector that re-triggers the flows, or None without an API."""
    # Imported here: the client costs ~0.3 s and is optional for this daemon.
    from ovn_k8s.kube import client as kube_client  # noqa: PLC0415
    from ovn_k8s.kube.reflector import reflector_for  # noqa: PLC0415

    if not (kubeconfig or settings.get("k8s_api_server")
            or os.environ.get("KUBERNETES_SERVICE_HOST")):
        LOG.warning("no Kubernetes API configured: NodePort traffic stays with the host")
        return None
    api = kube_client.api_client(settings, kubeconfig=kubeconfig)
    return reflector_for(api, "services", handler=lambda *_: helper.trigger()).start()


def main(argv: list[str] | None = None) -> None:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.resync_interval <= 0:
        parser.error("--resync-interval must be positive")
    # Checked before forking, so a typo is reported on the terminal, not in a log.
    for dev in (args.physical_bridge, args.physical_interface):
        try:
            link_mac(dev)
        except HostError as e:
            sys.exit(f"{NAME}: error: {e}")

    d = daemon.Daemon(args, NAME)
    d.start()
    services = None
    try:
        ovs = ovsdb.connect_ovs(args.ovs or host_ovs.default_remote(), timeout=args.timeout)
        settings = config.Settings(vars(args), config.read_config_file(args.config_file),
                                   host_ovs.external_ids(ovs))
        helper = GatewayHelper(ovs, args.physical_bridge, args.physical_interface,
                               resync_interval=args.resync_interval)
        services = _watch_services(settings, args.kubeconfig, helper)
        if services is not None:
            helper.nodeports = lambda: service_nodeports(obj for _, obj in services.items())
            # NodePort flows from a half-read service list would drop the rest's traffic.
            if not services.wait_synced(args.timeout):
                raise HostError(f"could not list services within {args.timeout:g}s")
        # The first sync runs before we report ready: a bridge that is not an OVS
        # bridge, or a NIC not in it, fails the start (and a --detach parent with it).
        helper.sync(force=True)
    except (HostError, ovsdb.OvsdbError, config.ConfigError, ValueError) as e:
        LOG.error("%s", e)
        if services is not None:
            services.stop()
        sys.exit(f"{NAME}: error: {e}")

    d.register("gateway/flows", "", 0, 0,
               lambda conn, _argv: conn.reply("\n".join(helper.applied or ())))
    d.register("gateway/resync", "", 0, 0,
               lambda conn, _argv: (helper.resync(), conn.reply(None)))
    d.register("status", "", 0, 0,
               lambda conn, _argv: conn.reply(json.dumps(helper.status(), sort_keys=True)))
    worker = threading.Thread(target=helper.run, name="flows", daemon=True)
    worker.start()
    d.ready()
    LOG.info("keeping shared-NIC flows on %s (NIC %s)", args.physical_bridge,
             args.physical_interface)
    d.wait()
    if services is not None:
        services.stop()
    helper.stop()
    worker.join(timeout=5)
    ovs.close()
